"""The embedded default: a generated arithmetic task and a tiny reference/aligned pair built on CPU.

Importing the package registers the task as the benchmark ``"tiny"`` and stays light: the pair build
(which needs transformers) is imported on first use of one of its names.
"""

from typing import Any

from thinkctl.tiny.benchmark import load_tiny
from thinkctl.tiny.task import TinyProblem, generate_problems, long_trace, short_trace

_BUILD_NAMES = ("TinyBuildConfig", "TinyPair", "build_tiny_pair", "default_tiny_dir")


def __getattr__(name: str) -> Any:
    if name in _BUILD_NAMES:
        from thinkctl.tiny import build

        return getattr(build, name)
    raise AttributeError(f"module 'thinkctl.tiny' has no attribute {name!r}")


__all__ = [*_BUILD_NAMES, "TinyProblem", "generate_problems", "load_tiny", "long_trace", "short_trace"]

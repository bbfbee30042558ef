"""Per-request λ inside vLLM: a V1 logits processor that fills a per-batch λ table read by the model.

Why this shape. vLLM 0.32 gives a model's ``forward``/``compute_logits`` no per-request information,
and the only supported extension point that sees each request's ``SamplingParams`` is a V1 logits
processor (:class:`vllm.v1.sample.logits_processor.LogitsProcessor`). A processor cannot do the
fusion itself: it receives logits already shaped ``(num_reqs, vocab)`` — the sampler, the built-in
processors (min_tokens, logit_bias), logprobs and structured output all assume that shape, so
packing both streams' logits into a ``2·vocab`` row is not an option. But the processor's
``update_state`` is called *before* every forward pass (``InputBatch.refresh_metadata`` runs at the
end of ``GPUModelRunner._update_states``, which the CPU runner inherits), with the batch index and
params of each added request and every move/swap of the persistent batch. So the processor keeps
``λ[batch_index]`` current in a :class:`LambdaTable`, and the model's ``compute_logits`` — whose rows
are the requests in that same persistent-batch order — reads the table and calls
:func:`thinkctl.fusion.fuse_logits`. Everything downstream sees ordinary fused logits.

Processor and model meet through a process-local registry keyed by ``VllmConfig.instance_id``: both
are built by the same model runner from the same config, in the worker process.

Requests choose λ with ``SamplingParams(extra_args={"thinkctl_lambda": x})`` offline, or
``"vllm_xargs": {"thinkctl_lambda": x}`` in an OpenAI-compatible request body; without it the
checkpoint's default applies. ``validate_params`` runs at request admission in the front end, so an
invalid λ is refused before it reaches the engine (HTTP 400 from the server).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from thinkctl.errors import InvalidLambdaError
from thinkctl.fusion import validate_lambda
from thinkctl.vllm_plugin import LAMBDA_KEY, PROCESSOR_FQCN

if TYPE_CHECKING:
    from vllm.config import VllmConfig

log = logging.getLogger(__name__)


#: the config sections that mark a thinkctl dual-stream model, each with a ``default_lambda``
DUAL_STREAM_SECTIONS = ("inra", "thinkctl_fusion")


def default_lambda(hf_config: Any) -> float | None:
    """The checkpoint's default λ, or None when the config is not a thinkctl dual-stream model."""
    for name in DUAL_STREAM_SECTIONS:
        section = getattr(hf_config, name, None)
        if isinstance(section, dict):
            return validate_lambda(section.get("default_lambda", 1.0 if name == "inra" else 0.0))
    return None


def request_lambda(params: SamplingParams, default: float) -> float:
    """λ of one request: its ``extra_args[LAMBDA_KEY]`` when given, else ``default``."""
    extra = params.extra_args or {}
    if LAMBDA_KEY not in extra:
        return default
    return validate_lambda(extra[LAMBDA_KEY])


@dataclass
class LambdaTable:
    """λ of each row of the persistent batch, plus the batch size it was last updated for.

    ``updated`` stays False while no λ processor has seen a batch (an engine started without it):
    every row then gets the checkpoint default.
    """

    default: float
    values: torch.Tensor
    batch_size: int = 0
    updated: bool = False

    def rows(self, n: int) -> torch.Tensor | float:
        """λ for ``n`` logits rows: per-row values when they describe the current batch.

        Any other row count comes from vLLM's dummy and profiling runs, whose output is discarded;
        they get the default so the forward stays well-defined.
        """
        if self.updated and n == self.batch_size:
            return self.values[:n].clone()
        return self.default


_TABLES: dict[str, LambdaTable] = {}


def processor_installed(vllm_config: VllmConfig) -> bool:
    """Whether the engine was started with the λ processor among its ``logits_processors``."""
    names = {p if isinstance(p, str) else f"{p.__module__}:{p.__qualname__}" for p in vllm_config.model_config.logits_processors or ()}
    return f"{__name__}:{ThinkctlLambdaProcessor.__name__}" in names


def lambda_table(vllm_config: VllmConfig) -> LambdaTable | None:
    """The λ table of this engine (created on first use), or None for a model that is not dual-stream."""
    default = default_lambda(vllm_config.model_config.hf_config)
    if default is None:
        return None
    key = vllm_config.instance_id
    if key not in _TABLES:
        if not processor_installed(vllm_config):
            log.warning(
                "the λ logits processor is not installed: every request gets default λ=%s and %r is ignored; "
                "start vLLM with logits_processors=[%r] (thinkctl serve and the vllm backend do)",
                default, LAMBDA_KEY, PROCESSOR_FQCN,
            )
        size = vllm_config.scheduler_config.max_num_seqs
        _TABLES[key] = LambdaTable(default, torch.full((size,), default, dtype=torch.float32))
    return _TABLES[key]


class ThinkctlLambdaProcessor(LogitsProcessor):
    """Tracks each request's λ by persistent-batch index; the fusion itself happens in the model.

    ``apply`` returns the logits unchanged, which is why the processor declares itself argmax
    invariant: vLLM may then skip it in greedy batches, and nothing is lost.
    """

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        try:
            request_lambda(sampling_params, 0.0)
        except InvalidLambdaError as e:
            raise ValueError(f"{LAMBDA_KEY}: {e}") from None

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self.table = lambda_table(vllm_config)

    def is_argmax_invariant(self) -> bool:
        return True

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        table = self.table
        if table is None:
            return
        table.updated = True
        if batch_update is None:
            return
        values = table.values
        for index, params, _, _ in batch_update.added:
            values[index] = request_lambda(params, table.default)
        for a, b, direction in batch_update.moved:
            if direction == MoveDirectionality.SWAP:
                values[a], values[b] = values[b].clone(), values[a].clone()
            else:
                values[b] = values[a]
        table.batch_size = batch_update.batch_size

"""Per-request λ inside vLLM: a logits processor records each request's λ in a table the model reads.

Why this shape. vLLM 0.32 gives a model's ``forward``/``compute_logits`` no per-request information,
and the only supported extension point that sees each request's ``SamplingParams`` is a logits
processor. A processor cannot do the fusion itself: it receives logits already shaped
``(rows, vocab)`` — the sampler, the built-in processors (min_tokens, logit_bias, penalties),
logprobs and structured output all assume that shape, so packing both streams' logits into a
``2·vocab`` row is not an option. So the processor keeps each request's λ in a :class:`LambdaTable`
and the model's ``compute_logits`` reads one λ per logits row and calls
:func:`thinkctl.fusion.fuse_logits`. Everything downstream sees ordinary fused logits.

vLLM 0.32 has two model runners, with different processor interfaces, and picks one at start:
Model Runner V2 wherever Triton works (every CUDA machine), V1 otherwise (the CPU build, or
``VLLM_USE_V2_MODEL_RUNNER=0``). :class:`ThinkctlLambdaProcessor` implements both interfaces, so
the one class name passed as ``logits_processors`` works under whichever runner vLLM chose:

* **V1** (:class:`vllm.v1.sample.logits_processor.LogitsProcessor`): ``update_state`` runs *before*
  every forward pass with the batch index and params of each added request and every move/swap of
  the persistent batch, whose order is the order of ``compute_logits`` rows. The table holds
  ``λ[batch index]``.
* **V2** (:class:`vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`): requests live in
  recycled *slots* and ``add_request(slot, params)`` is called once per request; logits rows are
  not requests and are reordered every step. The table holds ``λ[slot]`` (staged on the host, copied
  to the device in ``apply_staged_writes``), and the model's V2 ``ModelState``
  (:mod:`thinkctl.vllm_plugin.runner_v2`) records each step's row → slot map before the forward pass,
  so ``compute_logits`` gathers ``λ[row_slots]``. V2 calls processors only after
  ``compute_logits``, which is why the map comes from the model state and not from ``apply``.

Processor and model meet through a process-local registry keyed by ``VllmConfig.instance_id``: both
are built by the same model runner from the same config, in the worker process.

Requests choose λ with ``SamplingParams(extra_args={"thinkctl_lambda": x})`` offline, or
``"vllm_xargs": {"thinkctl_lambda": x}`` in an OpenAI-compatible request body; without it the
checkpoint's default applies. ``validate_params`` runs at request admission in the front end (under
either runner), so an invalid λ is refused before it reaches the engine (HTTP 400 from the server).

Prompt logprobs are not per request: both runners score prompt tokens through ``compute_logits`` in
chunks of their own (up to 1,024 rows, several requests' prompts mixed, no row → request map), so
those rows get the checkpoint default. A request that asks for prompt logprobs *and* names a λ is
therefore refused at admission rather than answered at the wrong λ (see :func:`check_prompt_logprobs`).

Nothing here synchronises the host with the device per step: λ values are staged on the host and
copied with vLLM's ``async_tensor_h2d`` (a pinned staging buffer, ``non_blocking``) only when a request
was added or moved, and ``compute_logits`` only indexes device tensors.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from vllm import SamplingParams
from vllm.utils.torch_utils import async_tensor_h2d
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor

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


def check_prompt_logprobs(params: SamplingParams) -> None:
    """Refuse prompt logprobs at a request-chosen λ: vLLM scores prompts without a row → request map
    (see the module docstring), so they would silently come at the checkpoint's default λ."""
    if params.prompt_logprobs is not None and LAMBDA_KEY in (params.extra_args or {}):
        raise InvalidLambdaError(
            f"prompt_logprobs are computed at the model's default λ (vLLM scores prompts in chunks that carry no "
            f"request's λ), so they cannot be combined with {LAMBDA_KEY}: send the request without {LAMBDA_KEY} "
            "to get prompt logprobs at the default, or without prompt_logprobs (and echo) to sample at your λ"
        )


def request_lambda(params: SamplingParams, default: float) -> float:
    """λ of one request: its ``extra_args[LAMBDA_KEY]`` when given, else ``default``."""
    extra = params.extra_args or {}
    if LAMBDA_KEY not in extra:
        return default
    return validate_lambda(extra[LAMBDA_KEY])


class LambdaTable:
    """λ of every request the engine runs, and the way ``compute_logits`` finds the λ of each row.

    ``values`` is indexed by persistent-batch row (V1) or by request slot (V2, after
    :meth:`use_slots`). ``updated`` stays False while no λ processor has seen a request (an engine
    started without it): every row then gets the checkpoint default.
    """

    def __init__(self, default: float, size: int) -> None:
        self.default = default
        self.values = torch.full((size,), default, dtype=torch.float32)
        self.updated = False
        #: V1: this batch's values on the runner's device (refreshed only when the batch changes)
        self.device: torch.device = torch.device("cpu")
        self.batch_values: torch.Tensor | None = None
        #: V2: ``values`` on the runner's device, and this step's request slot of each logits row
        self.slot_values: torch.Tensor | None = None
        self.row_slots: torch.Tensor | None = None
        self._dirty = False

    def use_slots(self, num_slots: int, device: torch.device) -> None:
        """Switch to V2 indexing: one value per request slot, mirrored on ``device``."""
        self.values = torch.full((num_slots,), self.default, dtype=torch.float32)
        self.slot_values = self.values.to(device)

    def set_batch(self, batch_size: int) -> None:
        """V1: the persistent batch changed; mirror its first ``batch_size`` values on the device."""
        self.batch_values = async_tensor_h2d(self.values[:batch_size], self.device)

    def set_slot(self, slot: int, lam: float) -> None:
        self.values[slot] = lam
        self.updated = self._dirty = True

    def flush(self) -> None:
        """Copy staged slot values to the device (V2 calls this once per step before the forward)."""
        if self._dirty and self.slot_values is not None:
            async_tensor_h2d(self.values, out=self.slot_values)
            self._dirty = False

    def rows(self, n: int) -> torch.Tensor | float:
        """λ for ``n`` logits rows: per-row values when they describe the current batch.

        Any other row count comes from vLLM's dummy and profiling runs, whose output is discarded, and
        from prompt-logprob chunks (requests that chose a λ cannot ask for those, see
        :func:`check_prompt_logprobs`); they get the default so the forward stays well-defined.
        """
        if not self.updated:
            return self.default
        if self.slot_values is not None:
            slots = self.row_slots
            if slots is not None and slots.shape[0] == n:
                return self.slot_values[slots.to(self.slot_values.device, torch.long)]
            return self.default
        if self.batch_values is not None and self.batch_values.shape[0] == n:
            return self.batch_values
        return self.default


_TABLES: dict[str, LambdaTable] = {}


def lambda_model_state_cls() -> type:
    """Model Runner V2's ``get_model_state_cls`` hook for the dual-stream models.

    V2 reorders logits rows every step; its model state records each step's row → request-slot map
    before the forward pass (see :mod:`thinkctl.vllm_plugin.runner_v2`, imported only when V2 asks).
    """
    from thinkctl.vllm_plugin.runner_v2 import LambdaModelState

    return LambdaModelState


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
        _TABLES[key] = LambdaTable(default, vllm_config.scheduler_config.max_num_seqs)
    return _TABLES[key]


class ThinkctlLambdaProcessor(V1LogitsProcessor, V2LogitsProcessor):
    """Records each request's λ for the model; the fusion itself happens in ``compute_logits``.

    Implements the V1 and the V2 processor interface (see the module docstring): vLLM constructs it
    as ``(vllm_config, device, is_pin_memory)`` under V1 and ``(vllm_config, req_states)`` under V2.
    ``apply`` returns the logits unchanged, which is why the processor declares itself argmax
    invariant (V1: vLLM may skip it in greedy batches) and modifies no request (V2 ``add_request``
    returns False): nothing is lost either way.
    """

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        try:
            request_lambda(sampling_params, 0.0)
            check_prompt_logprobs(sampling_params)
        except InvalidLambdaError as e:
            raise ValueError(f"{LAMBDA_KEY}: {e}") from None

    def __init__(self, vllm_config: VllmConfig, *runner_args: Any) -> None:
        self.table = lambda_table(vllm_config)
        v2 = len(runner_args) == 1 and isinstance(runner_args[0], LogitsProcRequestState)
        if v2 and self.table is not None:
            req_states: LogitsProcRequestState = runner_args[0]
            self.table.use_slots(req_states.max_num_reqs, req_states.device)
        elif self.table is not None and runner_args and runner_args[0] is not None:
            self.table.device = torch.device(runner_args[0])  # V1: (vllm_config, device, is_pin_memory)

    # ------------------------------------------------------------ shared

    def apply(self, logits: torch.Tensor, ctx: LogitsContext | None = None) -> torch.Tensor:
        return logits

    # ------------------------------------------------------------ V1 interface

    def is_argmax_invariant(self) -> bool:
        return True

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
        table.set_batch(batch_update.batch_size)

    # ------------------------------------------------------------ V2 interface

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        if self.table is not None:
            self.table.set_slot(req_idx, request_lambda(sampling_params, self.table.default))
        return False

    def apply_staged_writes(self) -> None:
        if self.table is not None:
            self.table.flush()

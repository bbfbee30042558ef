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

A request may also carry a λ schedule (``extra_args={"thinkctl_schedule": {...}}``): its λ then
follows its thinking tokens so far, step by step, and its ``</think>`` logit may get the bias ramp
(:mod:`thinkctl.vllm_plugin.schedule`, which keeps the count under either runner). The table then
evaluates the schedule's formula per row in :meth:`LambdaTable.rows` and the model applies
:meth:`LambdaTable.constrain` to the fused logits.

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

from thinkctl.errors import ConfigError, InvalidLambdaError
from thinkctl.fusion import validate_lambda
from thinkctl.vllm_plugin import LAMBDA_KEY, PROCESSOR_FQCN, SCHEDULE_KEY
from thinkctl.vllm_plugin.schedule import RowSchedule, ScheduleState, parse_schedule

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
    chosen = [key for key in (LAMBDA_KEY, SCHEDULE_KEY) if key in (params.extra_args or {})]
    if params.prompt_logprobs is not None and chosen:
        raise InvalidLambdaError(
            f"prompt_logprobs are computed at the model's default λ (vLLM scores prompts in chunks that carry no "
            f"request's λ), so they cannot be combined with {chosen[0]}: send the request without {chosen[0]} "
            "to get prompt logprobs at the default, or without prompt_logprobs (and echo) to sample at your λ"
        )


def request_schedule(params: SamplingParams) -> RowSchedule | None:
    """The λ schedule of one request: its ``extra_args[SCHEDULE_KEY]`` when given, else None."""
    extra = params.extra_args or {}
    return parse_schedule(extra[SCHEDULE_KEY]) if SCHEDULE_KEY in extra else None


def think_markers(vllm_config: VllmConfig) -> tuple[int, int] | None:
    """The ``<think>``/``</think>`` ids of the engine's reasoning config, when each is one token."""
    reasoning = getattr(vllm_config, "reasoning_config", None)
    start = getattr(reasoning, "reasoning_start_token_ids", None) or []
    end = getattr(reasoning, "reasoning_end_token_ids", None) or []
    return (start[0], end[0]) if len(start) == 1 and len(end) == 1 else None


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
        #: the requests' λ schedules and think-block counts (set by the λ processor), and whether any
        #: request of the current batch (V1) or of any slot (V2) has one
        self.schedules: ScheduleState | None = None
        self.scheduling = False

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
        if not self._current(n):
            return self.default
        if self.slot_values is not None:
            assert self.row_slots is not None
            base = self.slot_values[self.row_slots.to(self.slot_values.device, torch.long)]
            return self.schedules.lambdas(base, self.row_slots) if self.scheduling and self.schedules else base
        assert self.batch_values is not None
        return self.schedules.lambdas(self.batch_values) if self.scheduling and self.schedules else self.batch_values

    def _current(self, n: int) -> bool:
        """Whether ``n`` logits rows are this step's batch (see :meth:`rows` for the other counts)."""
        if not self.updated:
            return False
        if self.slot_values is not None:
            return self.row_slots is not None and self.row_slots.shape[0] == n
        return self.batch_values is not None and self.batch_values.shape[0] == n

    def constrain(self, logits: torch.Tensor) -> torch.Tensor:
        """Fused logits with the schedules' ``</think>`` bias and thinking floor (unchanged without schedules)."""
        if not self.scheduling or self.schedules is None or not self._current(logits.shape[0]):
            return logits
        return self.schedules.constrain(logits, self.row_slots if self.slot_values is not None else None)


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
        except InvalidLambdaError as e:
            raise ValueError(f"{LAMBDA_KEY}: {e}") from None
        try:
            request_schedule(sampling_params)
        except (ConfigError, InvalidLambdaError) as e:
            raise ValueError(f"{SCHEDULE_KEY}: {e}") from None
        try:
            check_prompt_logprobs(sampling_params)
        except InvalidLambdaError as e:
            raise ValueError(f"{LAMBDA_KEY}: {e}") from None

    def __init__(self, vllm_config: VllmConfig, *runner_args: Any) -> None:
        self.table = lambda_table(vllm_config)
        self.req_states: LogitsProcRequestState | None = None
        v2 = len(runner_args) == 1 and isinstance(runner_args[0], LogitsProcRequestState)
        if self.table is None:
            return
        if v2:
            self.req_states = runner_args[0]
            self.table.use_slots(self.req_states.max_num_reqs, self.req_states.device)
            self.schedules = ScheduleState(self.req_states.max_num_reqs, think_markers(vllm_config), self.req_states.device)
            self.schedules.use_slots()
        else:
            if runner_args and runner_args[0] is not None:
                self.table.device = torch.device(runner_args[0])  # V1: (vllm_config, device, is_pin_memory)
            self.schedules = ScheduleState(self.table.values.shape[0], think_markers(vllm_config), self.table.device)
        self.table.schedules = self.schedules
        self._settings_changed = False

    def _schedule(self, params: SamplingParams) -> RowSchedule | None:
        """The request's schedule, or None (with the reason logged) where this engine has no think markers."""
        schedule = request_schedule(params)
        if schedule is not None and self.schedules.markers is None:
            log.error("%s ignored: the engine has no reasoning config naming single-token <think>/</think> markers "
                      "(start it with a reasoning parser, e.g. --reasoning-parser thinkctl)", SCHEDULE_KEY)
            return None
        return schedule

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
        schedules = self.schedules
        if batch_update is not None:
            values = table.values
            for index in batch_update.removed:
                schedules.set(index, None)
            for index, params, prompt, outputs in batch_update.added:
                values[index] = request_lambda(params, table.default)
                schedules.set(index, self._schedule(params), sorted(params.all_stop_token_ids))
                schedules.add_row(index, prompt, outputs)
            for a, b, direction in batch_update.moved:
                swap = direction == MoveDirectionality.SWAP
                if swap:
                    values[a], values[b] = values[b].clone(), values[a].clone()
                else:
                    values[b] = values[a]
                schedules.move_row(a, b, swap)
            table.set_batch(batch_update.batch_size)
        batch_size = 0 if table.batch_values is None else table.batch_values.shape[0]
        table.scheduling = bool(schedules.active[:batch_size].any())
        if table.scheduling:
            schedules.catch_up(batch_size)
            schedules.mirror_batch(batch_size, changed=batch_update is not None)

    # ------------------------------------------------------------ V2 interface

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        if self.table is not None:
            self.table.set_slot(req_idx, request_lambda(sampling_params, self.table.default))
            schedule = self._schedule(sampling_params)
            if schedule is not None or self.schedules.active[req_idx]:
                self.schedules.set(req_idx, schedule, sorted(sampling_params.all_stop_token_ids))
                self._settings_changed = True
            if schedule is not None:
                self.schedules.fresh.append(req_idx)
        return False

    def apply_staged_writes(self) -> None:
        table = self.table
        if table is None:
            return
        table.flush()
        table.scheduling = self.schedules.any_active
        if table.scheduling:
            assert self.req_states is not None
            rs = self.req_states
            self.schedules.advance_slots(rs.all_token_ids.gpu, rs.prompt_len.gpu, rs.total_len.gpu, self._settings_changed)
            self._settings_changed = False

"""λ schedules inside vLLM: each request's λ (or its ``</think>`` logit) follows its thinking tokens so far.

A request asks for a schedule with ``extra_args={"thinkctl_schedule": {...}}`` (``vllm_xargs`` over
HTTP; :func:`parse_schedule` lists the keys). The formulas are :mod:`thinkctl.schedules`', the ones
the transformers backend evaluates; what this module adds is the measurement, each row's thinking
tokens so far, kept where the runner keeps its rows, and the per-row settings as tensors, so a batch
of requests with different controls, budgets and λ is one vectorised evaluation per step:

* **V1** (persistent batch, the CPU runner): the λ processor's ``update_state`` runs before every
  step with the batch's moves and each added request's prompt and live output-token list. The count
  advances on the host by the tokens the runner appended since the last step (one per decoding row,
  :func:`thinkctl.schedules.think_step` on CPU tensors) and goes to the device with one non-blocking
  copy per step; λ is computed there.
* **V2** (request slots, every GPU): the count lives on the device, one value per slot. When a
  request is added its slot is scanned once over the committed tokens the runner holds
  (``req_states.all_token_ids``, the prompt and any output before a preemption), and each later step
  advances every slot by its newest committed token: device tensors only, no host sync.

The model's ``compute_logits`` takes λ per row from :meth:`LambdaTable.rows
<thinkctl.vllm_plugin.lam.LambdaTable.rows>` (which calls :meth:`ScheduleState.lambdas`) and, after
fusion, :meth:`ScheduleState.constrain` adds the ``</think>`` bias ramp and the thinking floor (target
mode's (1 − tol)·N) and the hard cap, the backstop, as :class:`thinkctl.decoding.ThinkingControl`
does (:func:`parse_schedule` says why the cap is the schedule's and not vLLM's ``thinking_token_budget``).

Rows of a request without a schedule keep their λ; every row of the model is handled in the same
tensors, so nothing here branches on a row on the host per step.
"""

from __future__ import annotations

import json

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from thinkctl.errors import ConfigError
from thinkctl.fusion import validate_lambda
from thinkctl.schedules import (
    CONTROL_CODES, SCHEDULE_DEFAULTS, bias_ramp_between, biased_close_logit, schedule_constants, scheduled_lambda, think_step,
)

#: the columns of a row's settings (one float32 tensor per engine, one row per request index)
COLUMNS = ("code", "budget", "fast_lambda", "ramp_start", "ramp_span", "target_onset", "target_width", "bias_begin",
           "bias_length", "bias_margin", "floor", "cap")
COL = {name: i for i, name in enumerate(COLUMNS)}
#: the divisors, set to 1 on rows without a schedule
UNSCHEDULED = [COL[name] for name in ("budget", "ramp_span", "target_width", "bias_length")]
#: keys of a request's ``thinkctl_schedule`` (see :func:`parse_schedule`)
SCHEDULE_KEYS = frozenset({"control", "budget", "fast_lambda", "ramp_start", "ramp_end", "target_tolerance", "bias_margin", "floor", "cap"})
#: the most tokens a request's floor holds back (``</think>`` and its stop tokens; more are refused)
MAX_HELD_BACK = 8


@dataclass(frozen=True)
class RowSchedule:
    """One request's schedule, validated: control, B (soft, bias) or N (target), and the settings."""

    control: str
    budget: int
    fast_lambda: float
    ramp_start: float
    ramp_end: float
    target_tolerance: float
    bias_margin: float
    floor: int
    cap: int

    def row(self) -> list[float]:
        """The :data:`COLUMNS` of this request, the derived ones computed in double as the scalar formulas do."""
        values = {"code": float(CONTROL_CODES[self.control]), "budget": float(self.budget), "fast_lambda": self.fast_lambda,
                  "ramp_start": self.ramp_start, "bias_margin": self.bias_margin, "floor": float(self.floor),
                  "cap": float(self.cap),
                  **schedule_constants(float(self.budget), self.ramp_start, self.ramp_end, self.target_tolerance)}
        return [values[name] for name in COLUMNS]


def _positive_int(spec: Mapping[str, Any], key: str, minimum: int) -> int:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"thinkctl_schedule.{key} must be an integer ≥ {minimum}, got {value!r}")
    return value


def _fraction(spec: Mapping[str, Any], key: str) -> float:
    value = spec.get(key, SCHEDULE_DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"thinkctl_schedule.{key} must be a finite number, got {value!r}")
    return float(value)


def parse_schedule(spec: Any) -> RowSchedule:
    """A request's ``thinkctl_schedule``: ``{"control": "soft"|"bias"|"target", "budget": B or N, ...}``, as an
    object or encoded as a JSON string (what :func:`thinkctl.rollout.vllm.schedule_extra_args` and ``serve`` send:
    the OpenAI server accepts only flat ``vllm_xargs`` values).

    Optional keys, defaults as in :class:`thinkctl.sampling.ScheduleConfig`: ``fast_lambda``,
    ``ramp_start``, ``ramp_end`` (soft), ``bias_margin`` (bias), ``target_tolerance`` (target) and
    ``floor``, the thinking tokens before which ``</think>`` and the stop tokens are held back (default
    ⌊(1 − tol)·N⌋ for target, else 0), and ``cap``, the thinking tokens at which ``</think>`` is forced
    (default B for soft and bias, ⌈(1 + tol)·N⌉ for target; 0: none).

    The cap is the schedule's own rather than vLLM's ``thinking_token_budget`` because the two counts
    differ after a stray ``<think>`` inside the block (vLLM counts it and keeps counting, thinkctl's
    count skips it), and a schedule must stop where its own count, the one its λ follows, says.
    """
    if isinstance(spec, str):  # how requests carry it (vllm_xargs values are flat); an object works offline too
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ConfigError(f"thinkctl_schedule is not valid JSON ({e.msg} at position {e.pos}): {spec!r}") from None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"thinkctl_schedule must be an object with control and budget, got {spec!r}")
    unknown = set(spec) - SCHEDULE_KEYS
    if unknown:
        raise ConfigError(f"unknown thinkctl_schedule keys {sorted(unknown)}; known: {sorted(SCHEDULE_KEYS)}")
    control = spec.get("control")
    if control not in CONTROL_CODES:
        raise ConfigError(f"thinkctl_schedule.control must be one of {sorted(CONTROL_CODES)}, got {control!r} "
                          "(the hard cap alone is vLLM's thinking_token_budget)")
    if "budget" not in spec:
        raise ConfigError("thinkctl_schedule.budget is required: the budget B (soft, bias) or the target N (target)")
    budget = _positive_int(spec, "budget", 1)
    start, end, tol = _fraction(spec, "ramp_start"), _fraction(spec, "ramp_end"), _fraction(spec, "target_tolerance")
    if not 0 <= start < end <= 1:
        raise ConfigError(f"thinkctl_schedule.ramp_start and ramp_end must satisfy 0 ≤ ramp_start < ramp_end ≤ 1, got {start} and {end}")
    if not 0 < tol < 1:
        raise ConfigError(f"thinkctl_schedule.target_tolerance must be in (0, 1), got {tol}")
    default_floor = math.floor((1 - tol) * budget) if control == "target" else 0
    floor = _positive_int(spec, "floor", 0) if "floor" in spec else default_floor
    default_cap = math.ceil((1 + tol) * budget) if control == "target" else budget
    cap = _positive_int(spec, "cap", 0) if "cap" in spec else default_cap
    if cap and floor > cap:
        raise ConfigError(f"thinkctl_schedule.floor ({floor}) is above its cap ({cap})")
    fast = validate_lambda(spec.get("fast_lambda", SCHEDULE_DEFAULTS["fast_lambda"]))
    return RowSchedule(control, budget, fast, start, end, tol, _fraction(spec, "bias_margin"), floor, cap)


def held_back_ids(close_id: int, stop_ids: Sequence[int]) -> list[int]:
    """The tokens a floor holds back, padded to :data:`MAX_HELD_BACK` with ``</think>`` (a repeat is harmless)."""
    ids = [close_id, *sorted(set(stop_ids) - {close_id})]
    if len(ids) > MAX_HELD_BACK:
        raise ConfigError(f"a thinking floor holds back at most {MAX_HELD_BACK - 1} stop tokens, the request has {len(ids) - 1}")
    return ids + [close_id] * (MAX_HELD_BACK - len(ids))


def prompt_opens_block(prompt: Sequence[int], markers: tuple[int, int]) -> bool:
    """Whether the prompt ends inside an open think block (its last ``<think>`` is never closed)."""
    open_id, close_id = markers
    last = {t: i for i, t in enumerate(prompt) if t in markers}
    return last.get(open_id, -1) > last.get(close_id, -1)


def cold_scan(
    tokens: torch.Tensor, prompt_len: torch.Tensor, total_len: torch.Tensor, markers: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(inside, closed, count)`` of rows after their committed tokens, vectorised over a token window.

    ``tokens[r, :total_len[r]]`` is row r's sequence, the prompt its first ``prompt_len[r]``. The
    result is what :func:`thinkctl.schedules.think_step` gives token by token from the prompt's end
    (the block is open at the start when the prompt opened it): the first block's start, its first
    close after that, and the tokens between them that are not a stray ``<think>``.
    """
    open_id, close_id = markers
    n = tokens.shape[1]
    pos = torch.arange(n, device=tokens.device).unsqueeze(0)
    plen, tlen = prompt_len.long().unsqueeze(1), total_len.long().unsqueeze(1)
    is_open, is_close = tokens == open_id, tokens == close_id
    in_prompt, in_output = pos < plen, (pos >= plen) & (pos < tlen)
    minus, big = torch.full_like(pos, -1), torch.full_like(pos, n + 1)
    opened = torch.where(in_prompt & is_open, pos, minus).amax(1) > torch.where(in_prompt & is_close, pos, minus).amax(1)
    first_open = torch.where(in_output & is_open, pos, big).amin(1)
    start = torch.where(opened, plen.squeeze(1), first_open + 1).unsqueeze(1)
    first_close = torch.where(in_output & is_close & (pos >= start), pos, big).amin(1)
    closed = first_close <= n
    end = torch.minimum(first_close.unsqueeze(1), tlen)
    count = (in_output & (pos >= start) & (pos < end) & ~is_open).sum(1)
    inside = (start.squeeze(1) <= tlen.squeeze(1)) & ~closed
    return inside, closed, count


class ScheduleState:
    """Every request index's schedule settings and think-block state (V1: batch rows; V2: slots).

    ``settings`` (host, float32, :data:`COLUMNS`) and ``held`` (the floor's token ids) are staged on
    the host when requests arrive; the think state ``inside``/``closed``/``count`` lives on the host
    under V1 and on the device under V2 (see the module docstring). ``active`` says on the host which
    indices hold a scheduled request, so an engine whose requests have none does no work per step.
    """

    def __init__(self, size: int, markers: tuple[int, int] | None, device: torch.device) -> None:
        self.size, self.markers, self.device = size, markers, device
        self.settings = torch.zeros(size, len(COLUMNS), dtype=torch.float32)
        self.settings[:, UNSCHEDULED] = 1.0  # rows without a schedule: finite formulas (see scheduled_lambda)
        self.held = torch.zeros(size, MAX_HELD_BACK, dtype=torch.long)
        self.active = np.zeros(size, dtype=bool)
        self.inside = torch.zeros(size, dtype=torch.bool)
        self.closed = torch.zeros(size, dtype=torch.bool)
        self.count = torch.zeros(size, dtype=torch.long)
        #: the device copies the model reads: V1 the batch's rows, V2 every slot
        self.dev_settings: torch.Tensor | None = None
        self.dev_held: torch.Tensor | None = None
        self.dev_state: torch.Tensor | None = None  # V1: [rows, 2] (count, inside)
        # V1: each row's live output-token list and how many of its tokens the count has seen
        self.outputs: list[list[int] | None] = [None] * size
        self.seen = [0] * size
        # V2: slots to scan from scratch, the committed length each slot was last advanced to
        self.fresh: list[int] = []
        self.scanned: torch.Tensor | None = None

    def set(self, index: int, schedule: RowSchedule | None, stop_ids: Sequence[int] = ()) -> None:
        """Stage the request at ``index``'s settings (None: no schedule, its λ stays the request's)."""
        self.active[index] = schedule is not None
        if schedule is None:
            self.settings[index] = 0.0
            self.settings[index, UNSCHEDULED] = 1.0
            return
        assert self.markers is not None  # the λ processor refuses schedules without think markers
        self.settings[index] = torch.tensor(schedule.row())
        self.held[index] = torch.tensor(held_back_ids(self.markers[1], stop_ids))

    @property
    def any_active(self) -> bool:
        return bool(self.active.any())

    # ------------------------------------------------------------ V1: the host count

    def add_row(self, index: int, prompt: Sequence[int] | None, outputs: list[int]) -> None:
        """V1: a request entered batch row ``index``; the count starts at its prompt's end."""
        opened = self.markers is not None and prompt is not None and prompt_opens_block(prompt, self.markers)
        self.inside[index], self.closed[index], self.count[index] = opened, False, 0
        self.outputs[index], self.seen[index] = outputs, 0

    def move_row(self, a: int, b: int, swap: bool) -> None:
        """V1: batch row ``a`` moved to ``b`` (or the two swapped)."""
        for t in (self.settings, self.held, self.inside, self.closed, self.count):
            if swap:
                t[[a, b]] = t[[b, a]]
            else:
                t[b] = t[a]
        for lst in (self.outputs, self.seen, self.active):
            if swap:
                lst[a], lst[b] = lst[b], lst[a]
            else:
                lst[b] = lst[a]

    def catch_up(self, batch_size: int) -> None:
        """V1: advance each scheduled row's count by the tokens the runner appended since the last step.

        Normally one per decoding row. A ``-1`` is a placeholder of async scheduling (V1 on a GPU, not
        the CPU runner) for a token not yet on the host: the count waits for it, one step behind.
        """
        rows = [r for r in range(batch_size) if self.active[r] and self.outputs[r] is not None]
        pending = {}
        for r in rows:
            out, seen = self.outputs[r], self.seen[r]
            new = out[seen:]
            if -1 in new:
                new = new[: new.index(-1)]
            if new:
                pending[r] = new
                self.seen[r] = seen + len(new)
        if not pending or self.markers is None:
            return
        index = torch.tensor(list(pending))
        for j in range(max(len(v) for v in pending.values())):
            tokens = torch.tensor([v[j] if j < len(v) else -1 for v in pending.values()])
            valid = torch.tensor([j < len(v) for v in pending.values()])
            inside, closed, count, _ = think_step(self.inside[index], self.closed[index], self.count[index], tokens,
                                                  self.markers, valid)
            self.inside[index], self.closed[index], self.count[index] = inside, closed, count

    def mirror_batch(self, batch_size: int, changed: bool) -> None:
        """V1: copy this step's count (and, when the batch changed, the settings) of the batch's rows to the device."""
        from vllm.utils.torch_utils import async_tensor_h2d

        if changed or self.dev_settings is None or self.dev_settings.shape[0] != batch_size:
            self.dev_settings = async_tensor_h2d(self.settings[:batch_size], self.device)
            self.dev_held = async_tensor_h2d(self.held[:batch_size], self.device)
        state = torch.stack([self.count[:batch_size], self.inside[:batch_size].long()], dim=1)
        self.dev_state = async_tensor_h2d(state, self.device)

    # ------------------------------------------------------------ V2: the device count

    def use_slots(self) -> None:
        """V2: the think state moves to the device, one value per slot."""
        self.inside, self.closed, self.count = (t.to(self.device) for t in (self.inside, self.closed, self.count))
        self.scanned = torch.zeros(self.size, dtype=torch.long, device=self.device)
        self.dev_settings, self.dev_held = self.settings.to(self.device), self.held.to(self.device)

    def advance_slots(self, all_token_ids: torch.Tensor, prompt_len: torch.Tensor, total_len: torch.Tensor,
                      settings_changed: bool) -> None:
        """V2, once per step before the forward: new requests' slots scanned, every slot advanced by its newest token."""
        from vllm.utils.torch_utils import async_tensor_h2d

        assert self.scanned is not None and self.markers is not None
        if settings_changed:
            async_tensor_h2d(self.settings, out=self.dev_settings)
            async_tensor_h2d(self.held, out=self.dev_held)
        tlen = total_len[: self.size].long()
        if self.fresh:
            idx = async_tensor_h2d(self.fresh, self.device, torch.long)
            self.fresh.clear()
            inside, closed, count = cold_scan(all_token_ids[idx], prompt_len[idx], tlen[idx], self.markers)
            self.inside[idx], self.closed[idx], self.count[idx], self.scanned[idx] = inside, closed, count, tlen[idx]
        new = tlen > self.scanned
        slots = torch.arange(self.size, device=self.device)
        newest = all_token_ids[slots, (tlen - 1).clamp(min=0)].long()
        self.inside, self.closed, self.count, _ = think_step(self.inside, self.closed, self.count, newest, self.markers, new)
        self.scanned = torch.where(new, tlen, self.scanned)

    # ------------------------------------------------------------ the model's side

    def _rows(self, row_slots: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(settings, held, count, inside) per logits row: V1 the mirrored batch, V2 gathered by slot."""
        if row_slots is None:
            assert self.dev_settings is not None and self.dev_held is not None and self.dev_state is not None
            return self.dev_settings, self.dev_held, self.dev_state[:, 0], self.dev_state[:, 1].bool()
        assert self.dev_settings is not None and self.dev_held is not None
        s = row_slots.to(self.device, torch.long)
        return self.dev_settings[s], self.dev_held[s], self.count[s], self.inside[s]

    def lambdas(self, base: torch.Tensor, row_slots: torch.Tensor | None = None) -> torch.Tensor:
        """λ per logits row: the schedule's formula of the row's count, ``base`` (the request's λ) on other rows.

        A closed block's count no longer moves, so its λ stays the one thinking ended with, as in
        :meth:`thinkctl.decoding.ThinkingControl.lambdas`.
        """
        st, _, count, _ = self._rows(row_slots)
        c = {name: st[:, i] for name, i in COL.items()}
        return scheduled_lambda(c["code"], count, base, c["budget"], c["fast_lambda"], c["ramp_start"], c["ramp_span"],
                                c["target_onset"], c["target_width"])

    def constrain(self, logits: torch.Tensor, row_slots: torch.Tensor | None = None) -> torch.Tensor:
        """Fused logits with the ``</think>`` bias ramp (bias rows), the floor and the cap, in place.

        As :meth:`thinkctl.decoding.ThinkingControl.constrain`: the bias on rows inside their block;
        at the cap every token but ``</think>`` to −inf (``</think>`` to 0); below the floor ``</think>``
        and the request's stop tokens to −inf.
        """
        assert self.markers is not None
        close_id = self.markers[1]
        st, held, count, inside = self._rows(row_slots)
        is_bias = (st[:, COL["code"]] == CONTROL_CODES["bias"]) & inside
        ramp = bias_ramp_between(count, st[:, COL["bias_begin"]], st[:, COL["bias_length"]]).to(logits.dtype) * is_bias
        logits[:, close_id] = biased_close_logit(logits[:, close_id], logits.max(dim=-1).values, ramp, st[:, COL["bias_margin"]])
        cap = st[:, COL["cap"]]
        at_cap = (inside & (cap > 0) & (count >= cap)).unsqueeze(1)
        logits.masked_fill_(at_cap, -math.inf)
        logits[:, close_id] = torch.where(at_cap.squeeze(1), torch.zeros_like(logits[:, close_id]), logits[:, close_id])
        hold = (inside & (count < st[:, COL["floor"]])).unsqueeze(1)
        logits.scatter_(1, held, torch.where(hold, logits.new_full(held.shape, -math.inf), logits.gather(1, held)))
        return logits

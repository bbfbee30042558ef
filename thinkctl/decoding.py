"""Fused generation from two logit streams, each with its own KV cache (DeRa-style decoding).

A *stream* is anything called like a Hugging Face causal LM::

    out = stream(input_ids=..., attention_mask=..., position_ids=..., past_key_values=...,
                 use_cache=True, logits_to_keep=1)
    out.logits, out.past_key_values

Two separate models are two streams; an InRa model exposes its adapter path and its original path as
two streams over shared weights. At every step the next-token distribution is
``softmax(fuse_logits(z_aligned, z_ref, λ) / T)`` with λ per sequence. Streams whose weight is zero for
every live sequence are not run at all, so λ = 0 costs exactly one forward pass of the reference.

Finished sequences are dropped from the batch and from both caches as soon as they stop, so a batch of
short and long thinkers costs what its live rows cost, not ``batch × longest``.

A :class:`ThinkingControl` composes with λ: λ sets how the model wants to think, the control sets hard
limits on the think block (a budget after which ``</think>`` is forced, so the answer still follows, and
a floor below which ``</think>`` and end-of-text are held back).

A :class:`LambdaSchedule` closes the loop: a row's λ (or its ``</think>`` logit) follows the row's
thinking tokens so far and its budget or target, step by step, with λ as the actuator. The formulas
are the pure functions of :mod:`thinkctl.schedules` (:func:`soft_budget_lambda`, :func:`target_lambda`,
:func:`bias_ramp`, :func:`biased_close_logit`, the count's :func:`think_step`), which the vLLM plugin
evaluates too; a row's λ freezes when its think block closes, so the answer is written at the λ
thinking ended with. Both streams stay live while any row's λ may still change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from thinkctl.batch import positions
from thinkctl.errors import ConfigError
from thinkctl.fusion import fuse_logits, validate_lambda
from thinkctl.sampling import SamplingConfig, ScheduleConfig
from thinkctl.schedules import bias_ramp, biased_close_logit, soft_budget_lambda, target_lambda, think_step


class LogitStream(Protocol):
    """A callable with the Hugging Face causal-LM forward signature (see module docstring)."""

    def __call__(self, **kwargs: Any) -> Any: ...


@dataclass
class GenerationResult:
    """Generated tokens per input row (prompt excluded, stop token included) and why each ended.

    ``thinking_forced`` says per row whether a thinking budget closed the think block (None when no
    :class:`ThinkingControl` was given); ``lambdas`` holds per row the λ that produced each of its
    tokens (None unless a :class:`LambdaSchedule` moved λ).
    """

    token_ids: list[list[int]]
    finish_reasons: list[str]
    thinking_forced: list[bool] | None = None
    lambdas: list[list[float]] | None = None


def lambda_for_length(curve: Mapping[float, float], tokens: float) -> float:
    """The λ whose mean thinking is ``tokens`` on a calibrated λ → mean-thinking-tokens curve.

    The curve is read in λ order and interpolated linearly on the first segment that brackets the
    target; a target outside the curve's range gets the λ of the end nearest to it (the dial goes no
    further than it was measured).
    """
    points = sorted((validate_lambda(lam), float(t)) for lam, t in curve.items())
    if not points:
        raise ConfigError("the length model has no points: calibrate it on a λ sweep")
    for (a, ta), (b, tb) in zip(points, points[1:]):
        if min(ta, tb) <= tokens <= max(ta, tb):
            return a if ta == tb else a + (tokens - ta) * (b - a) / (tb - ta)
    return min(points, key=lambda p: abs(p[1] - tokens))[0]


class LambdaSchedule:
    """One request's control during decoding, per row: λ from the thinking tokens so far, or the bias.

    ``base`` holds each row's request λ (λ₀); ``config`` is the control (:class:`ScheduleConfig`),
    ``budget`` its B (soft, bias) or N (target). Rows are dropped with :meth:`select` as they finish.
    """

    def __init__(self, config: ScheduleConfig, budget: int, base: torch.Tensor) -> None:
        if config.control not in ("soft", "bias", "target"):
            raise ValueError(f"no λ schedule for control {config.control!r}")
        self.config, self.budget, self.base = config, float(budget), base.clone()
        self.fast = config.value("fast_lambda")

    @property
    def moves_lambda(self) -> bool:
        return self.config.control != "bias" and bool((self.base != self.fast).any())

    def lambdas(self, count: torch.Tensor) -> torch.Tensor:
        """λ per row at ``count`` thinking tokens so far."""
        c = self.config
        if c.control == "soft":
            return soft_budget_lambda(count, self.budget, self.base, self.fast, c.value("ramp_start"), c.value("ramp_end"))
        if c.control == "target":
            return target_lambda(count, self.budget, self.base, self.fast, c.value("target_tolerance"))
        return self.base

    def bias(self, logits: torch.Tensor, count: torch.Tensor, inside: torch.Tensor, close_id: int) -> torch.Tensor:
        """``logits`` with the ``</think>`` nudge on rows inside their block (bias control only)."""
        if self.config.control != "bias":
            return logits
        ramp = bias_ramp(count, self.budget).to(logits.dtype) * inside
        if not bool((ramp > 0).any()):
            return logits
        logits = logits.clone()
        logits[:, close_id] = biased_close_logit(logits[:, close_id], logits.max(dim=-1).values, ramp,
                                                 self.config.value("bias_margin"))
        return logits

    def select(self, keep: torch.Tensor) -> None:
        self.base = self.base[keep]


class ThinkingControl:
    """Each row's place in its first think block, to force ``</think>`` at a budget or hold it back below a floor.

    Counting matches :func:`thinkctl.thinking.count_thinking_tokens`: the tokens strictly inside the
    first block, from the first response token when the prompt opened the block (``inside``), a stray
    ``<think>`` inside it not counted. So a budget of B yields exactly B thinking tokens by that count,
    then ``</think>``. A ``schedule`` moves each row's λ (or its ``</think>`` logit) with that count.
    """

    def __init__(
        self,
        markers: tuple[int, int],
        inside: Sequence[bool],
        max_tokens: int | None,
        min_tokens: int | None,
        stop_token_ids: Sequence[int],
        device: torch.device | str = "cpu",
        schedule: LambdaSchedule | None = None,
    ) -> None:
        self.open_id, self.close_id = markers
        self.max_tokens, self.min_tokens = max_tokens, min_tokens
        self.schedule = schedule
        self.held_back = torch.as_tensor([self.close_id, *stop_token_ids], device=device)
        self.inside = torch.as_tensor(list(inside), dtype=torch.bool, device=device)
        self.closed = torch.zeros_like(self.inside)
        self.count = torch.zeros(self.inside.shape, dtype=torch.long, device=device)
        self.at_budget = torch.zeros_like(self.inside)

    def lambdas(self, current: torch.Tensor) -> torch.Tensor:
        """Each row's λ for this step: the schedule's until its think block closes, then frozen."""
        if self.schedule is None or not self.schedule.moves_lambda:
            return current
        return torch.where(self.closed, current, self.schedule.lambdas(self.count).to(current.dtype))

    def lambda_may_change(self) -> bool:
        """Whether some row's λ may still move (its think block has not closed)."""
        return self.schedule is not None and self.schedule.moves_lambda and not bool(self.closed.all())

    def constrain(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with the bias ramp, the budget and the floor applied (a new tensor when anything changes)."""
        if self.schedule is not None:
            logits = self.schedule.bias(logits, self.count, self.inside, self.close_id)
        self.at_budget = self.inside & (self.count >= self.max_tokens) if self.max_tokens is not None else torch.zeros_like(self.inside)
        below = self.inside & (self.count < self.min_tokens) if self.min_tokens else torch.zeros_like(self.inside)
        if not bool(self.at_budget.any() | below.any()):
            return logits
        logits = logits.clone()
        logits[self.at_budget] = float("-inf")
        logits[self.at_budget, self.close_id] = 0.0
        logits[below.nonzero().unsqueeze(-1), self.held_back] = float("-inf")
        return logits

    def advance(self, tokens: torch.Tensor) -> torch.Tensor:
        """Account for the tokens just chosen; returns which rows had ``</think>`` forced this step."""
        self.inside, self.closed, self.count, _ = think_step(self.inside, self.closed, self.count, tokens,
                                                             (self.open_id, self.close_id))
        return self.at_budget

    def select(self, keep: torch.Tensor) -> None:
        self.inside, self.closed, self.count = self.inside[keep], self.closed[keep], self.count[keep]
        if self.schedule is not None:
            self.schedule.select(keep)


class _StreamState:
    """One stream's cache plus the logits of its last step."""

    def __init__(self, stream: LogitStream) -> None:
        self.stream = stream
        self.cache: Any = None
        self.logits: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> None:
        out = self.stream(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = out.past_key_values
        self.logits = out.logits[:, -1, :].float()

    def select(self, keep: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.batch_select_indices(keep)
        if self.logits is not None:
            self.logits = self.logits[keep]


def sample_next(
    logits: torch.Tensor, sampling: SamplingConfig, generators: Sequence[torch.Generator] | None = None
) -> torch.Tensor:
    """Pick one token per row: argmax when greedy, else temperature + nucleus (top-p) sampling.

    Each row draws from its own generator (one per row, in row order), so what a row samples depends
    on its seed alone, not on which other rows share the batch or in what order.
    """
    if sampling.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > sampling.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    if len(generators) != probs.shape[0]:
        raise ValueError(f"got {len(generators)} generators for {probs.shape[0]} rows")
    return torch.cat([torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generators)])


@torch.no_grad()
def fused_generate(
    ref: LogitStream,
    aligned: LogitStream | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    lam: float | Sequence[float] | torch.Tensor,
    sampling: SamplingConfig,
    stop_token_ids: Sequence[int],
    thinking: ThinkingControl | None = None,
    seeds: Sequence[int] | None = None,
) -> GenerationResult:
    """Generate from ``λ·z_aligned + (1−λ)·z_ref`` for a left-padded batch of prompts.

    ``aligned`` may be None only when every λ is 0 (plain decoding of ``ref``). ``lam`` is one float
    or one value per row; ``thinking`` (one state per row) bounds the think block and, with a
    schedule, moves λ per row and step. When sampling, row ``i`` draws from its own generator seeded
    with ``seeds[i]`` (default: ``sampling.seed + i``), so a sequence's draws do not depend on its batch.
    Returns tokens per row in input order.
    """
    batch = input_ids.shape[0]
    device = input_ids.device
    lams = torch.as_tensor(lam, dtype=torch.float32, device=device)
    lams = lams.expand(batch).clone() if lams.dim() == 0 else lams.clone()
    if lams.shape != (batch,):
        raise ValueError(f"got {lams.numel()} λ values for a batch of {batch}")
    if aligned is None and bool((lams != 0).any()):
        raise ValueError("λ ≠ 0 needs an aligned stream; only a reference was given")
    if aligned is None and thinking is not None and thinking.lambda_may_change():
        raise ValueError("a λ schedule moves λ away from 0 and needs an aligned stream; only a reference was given")
    trace: list[list[float]] | None = [[] for _ in range(batch)] if thinking is not None and thinking.lambda_may_change() else None
    stop = torch.as_tensor(list(stop_token_ids), device=device)
    generators: list[torch.Generator] = []
    if not sampling.greedy:
        seeds = [sampling.derive(i).seed for i in range(batch)] if seeds is None else list(seeds)
        if len(seeds) != batch:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}")
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    streams = {"ref": _StreamState(ref)}
    if aligned is not None:
        streams["aligned"] = _StreamState(aligned)

    def needed() -> list[str]:
        varying = thinking is not None and thinking.lambda_may_change()
        names = []
        if varying or bool((lams != 1).any()):
            names.append("ref")
        if "aligned" in streams and (varying or bool((lams != 0).any())):
            names.append("aligned")
        return names

    live = needed()
    mask = attention_mask.clone()
    pos = positions(mask)
    for name in live:
        streams[name].forward(input_ids, mask, pos)

    rows = torch.arange(batch, device=device)
    out_tokens: list[list[int]] = [[] for _ in range(batch)]
    finish = ["length"] * batch
    forced = [False] * batch
    last_pos = pos[:, -1]
    for step in range(sampling.max_new_tokens):
        if thinking is not None:
            lams = thinking.lambdas(lams)
        z_ref = streams["ref"].logits if "ref" in live else None
        z_al = streams["aligned"].logits if "aligned" in live else None
        if z_ref is None:
            logits = z_al
        elif z_al is None:
            logits = z_ref
        else:
            logits = fuse_logits(z_al, z_ref, lams)
        assert logits is not None
        if thinking is not None:
            logits = thinking.constrain(logits)
        next_tokens = sample_next(logits, sampling, [generators[i] for i in rows.tolist()] if generators else None)
        if thinking is not None:
            for i in rows[thinking.advance(next_tokens)].tolist():
                forced[i] = True
        for i, tok in zip(rows.tolist(), next_tokens.tolist()):
            out_tokens[i].append(tok)
        if trace is not None:
            for i, lam_i in zip(rows.tolist(), lams.tolist()):
                trace[i].append(lam_i)
        done = torch.isin(next_tokens, stop)
        for i in rows[done].tolist():
            finish[i] = "stop"
        if step == sampling.max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(-1)
            rows, lams, mask, last_pos, next_tokens = rows[keep], lams[keep], mask[keep], last_pos[keep], next_tokens[keep]
            for name in live:
                streams[name].select(keep)
            if thinking is not None:
                thinking.select(keep)
            live = [name for name in live if name in needed()]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        last_pos = last_pos + 1
        for name in live:
            streams[name].forward(next_tokens.unsqueeze(-1), mask, last_pos.unsqueeze(-1))
    return GenerationResult(out_tokens, finish, forced if thinking is not None else None, trace)

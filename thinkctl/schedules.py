"""The closed-loop thinking controls' formulas, shared by every engine that decodes with them.

A control reads one measurement per row, the thinking tokens so far, and sets λ (soft budget, target
mode) or the ``</think>`` logit (the bias ramp). The formulas are pure torch functions of that count,
so the transformers backend (:mod:`thinkctl.decoding`) and the vLLM plugin
(:mod:`thinkctl.vllm_plugin.schedule`) evaluate the same expressions on the device, one value per row,
with per-row settings as tensors or one setting as a float. :func:`think_step` is the one definition of
how the count moves with each token. Tested in float64 (tests/test_control.py).
"""

from __future__ import annotations

import math
from typing import Union

import torch

#: a setting of a formula: one float for every row, or a tensor with one value per row
Real = Union[torch.Tensor, float]

#: the controls that act while a model thinks (``hard``: the budget alone; see :class:`thinkctl.sampling.ScheduleConfig`)
CONTROLS = ("hard", "soft", "bias", "target")
#: the documented defaults of a schedule's settings (:class:`thinkctl.sampling.ScheduleConfig` fields left at None)
SCHEDULE_DEFAULTS = {"fast_lambda": 1.0, "ramp_start": 0.3, "ramp_end": 0.7, "bias_margin": 0.25, "target_tolerance": 0.15}
#: per-row control codes of engines that keep the settings of many requests in one tensor (0: no schedule)
CONTROL_CODES = {"soft": 1, "bias": 2, "target": 3}




def _real(count: torch.Tensor) -> torch.Tensor:
    """Token counts as floats: float64 counts stay float64 (the reference tests), integers become float32."""
    return count if count.is_floating_point() else count.float()


def soft_budget_lambda(
    count: torch.Tensor, budget: Real, lam: Real, fast: Real, start: Real, end: Real
) -> torch.Tensor:
    """Soft budget: λ(t) = λ₀ + (λ_f − λ₀)·clip((t/B − start)/(end − start), 0, 1).

    The shape is a linear ramp with two plateaus, chosen for three reasons. Below ``start``·B the
    request's λ is untouched, so a row that would end well inside its budget thinks exactly as it
    would without one (a soft budget costs easy problems nothing). Between ``start``·B and ``end``·B
    λ moves continuously, a few hundredths per token, so the model drifts into its fast style within
    the step it is on instead of being cut mid-step (the failure of the hard cap). From ``end``·B to
    B it thinks fully fast: that last (1 − end)·B is room for the fast style to wrap up (defaults 0.3
    and 0.7 leave 30% of B, about the tiny default's fast floor of ~15 tokens at B = 50) before the
    hard cap at B, the backstop, acts. A linear ramp also keeps λ at any step a formula one can state.
    """
    return lam + (fast - lam) * ramp_progress(count, budget, start, end - start)


def ramp_progress(count: torch.Tensor, budget: Real, start: Real, span: Real) -> torch.Tensor:
    """The soft budget's progress clip((t/B − start)/span, 0, 1), span = end − start.

    Split out with the span as an argument so that an engine holding per-row settings as float32
    tensors can pass the span computed in double on the host, as Python computes ``end - start``
    for the transformers backend: both then round the same numbers and agree bit for bit.
    """
    return ((_real(count) / budget - start) / span).clamp(0.0, 1.0)


def target_lambda(count: torch.Tensor, target: Real, lam: Real, fast: Real, tolerance: Real) -> torch.Tensor:
    """Target mode: proportional feedback on the tokens so far against the plan of landing on N.

    The start λ₀ is planned to end near N (from a calibrated length model), so a row still thinking
    at (1 − tol)·N is on plan and one still thinking later runs late. The error is the relative
    lateness e(t) = max(t/N − (1 − tol), 0) and the correction is proportional to it,
    λ(t) = λ₀ + K·e(t) with gain K = (λ_f − λ₀)/(2·tol), saturating at λ_f: a row reaches its fast
    style at (1 + tol)·N, where the hard cap forces ``</think>``. Before a row closes, "not closed
    yet" is all decoding observes of it, which is why the correction acts on lateness; the other
    side, a row that would close early, is held back by the floor at (1 − tol)·N
    (:attr:`thinkctl.sampling.SamplingConfig.thinking_floor`).
    """
    return lam + (fast - lam) * target_gain(count, target, 1.0 - tolerance, 2.0 * tolerance)


def target_gain(count: torch.Tensor, target: Real, onset: Real, width: Real) -> torch.Tensor:
    """Target mode's share of the way to λ_f: clip(max(t/N − onset, 0)/width, ·, 1), onset = 1 − tol,
    width = 2·tol (passed in for the reason :func:`ramp_progress` gives)."""
    lateness = (_real(count) / target - onset).clamp(min=0.0)
    return (lateness / width).clamp(max=1.0)


#: the last fraction of the budget over which the ``</think>`` bias ramps (vLLM PR #45727)
BIAS_WINDOW = 0.3
#: steepness of the bias ramp's sigmoid over its window
BIAS_STEEPNESS = 10.0


def bias_ramp(count: torch.Tensor, budget: Real, window: float = BIAS_WINDOW, steepness: float = BIAS_STEEPNESS) -> torch.Tensor:
    """The ``</think>`` bias ramp r(t) ∈ [0, 1]: 0 before the last ``window`` of the budget, then a
    sigmoid over it, rescaled to run from exactly 0 at (1 − window)·B to exactly 1 at B:
    r = (σ(k(u − ½)) − σ(−k/2)) / (σ(k/2) − σ(−k/2)), u = (t − (1 − window)·B)/(window·B)."""
    return bias_ramp_between(count, (1.0 - window) * budget, window * budget, steepness)


def bias_ramp_between(count: torch.Tensor, begin: Real, length: Real, steepness: float = BIAS_STEEPNESS) -> torch.Tensor:
    """:func:`bias_ramp` over [begin, begin + length] tokens (begin = (1 − window)·B, length = window·B,
    passed in for the reason :func:`ramp_progress` gives)."""
    u = ((_real(count) - begin) / length).clamp(0.0, 1.0)
    lo, hi = 1.0 / (1.0 + math.exp(steepness / 2)), 1.0 / (1.0 + math.exp(-steepness / 2))
    return (torch.sigmoid(steepness * (u - 0.5)) - lo) / (hi - lo)


def biased_close_logit(close: torch.Tensor, top: torch.Tensor, ramp: torch.Tensor, margin: Real) -> torch.Tensor:
    """vLLM PR #45727's nudge: the ``</think>`` logit pulled a fraction ``ramp`` of the way to the
    winning logit less ``margin``, never lowered: max(z_end, z_end + r·((z_top − margin) − z_end))."""
    return torch.maximum(close, close + ramp * ((top - margin) - close))


def schedule_constants(budget: float, ramp_start: float, ramp_end: float, tolerance: float,
                       window: float = BIAS_WINDOW) -> dict[str, float]:
    """The numbers the formulas derive from a schedule's settings, computed in double exactly as the
    scalar formulas compute them: the per-row form of :func:`soft_budget_lambda`, :func:`target_lambda`
    and :func:`bias_ramp` (:func:`scheduled_lambda`, :func:`bias_ramp_between`) takes these."""
    return {"ramp_span": ramp_end - ramp_start, "target_onset": 1.0 - tolerance, "target_width": 2.0 * tolerance,
            "bias_begin": (1.0 - window) * budget, "bias_length": window * budget}


def scheduled_lambda(
    code: torch.Tensor, count: torch.Tensor, base: torch.Tensor, budget: Real, fast: Real,
    ramp_start: Real, ramp_span: Real, target_onset: Real, target_width: Real,
) -> torch.Tensor:
    """λ per row for rows of mixed controls (:data:`CONTROL_CODES`): the soft-budget formula on soft
    rows, the target formula on target rows, ``base`` (the request's λ) on every other row.

    ``budget`` is B for soft rows and N for target rows; rows without a schedule need nonzero
    ``budget``, ``ramp_span`` and ``target_width`` only so that the formulas they do not use stay
    finite. The derived settings are :func:`schedule_constants`'.
    """
    soft = base + (fast - base) * ramp_progress(count, budget, ramp_start, ramp_span)
    target = base + (fast - base) * target_gain(count, budget, target_onset, target_width)
    return torch.where(code == CONTROL_CODES["soft"], soft, torch.where(code == CONTROL_CODES["target"], target, base))


def think_step(
    inside: torch.Tensor, closed: torch.Tensor, count: torch.Tensor, tokens: torch.Tensor, markers: tuple[int, int],
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's place in its first think block after one more token: ``(inside, closed, count, closing)``.

    The count is :func:`thinkctl.thinking.count_thinking_tokens`'s: tokens strictly inside the first
    block, a stray ``<think>`` inside it not counted, nothing after it closes. ``valid`` marks the rows
    that have a token this step (engines that catch up on several tokens per row pass it); the others
    are left as they are.
    """
    open_id, close_id = markers
    if valid is not None:
        inside_now = inside & valid
        closing = inside_now & (tokens == close_id)
        opening = valid & ~inside & ~closed & (tokens == open_id)
    else:
        inside_now = inside
        closing = inside & (tokens == close_id)
        opening = ~inside & ~closed & (tokens == open_id)
    count = count + (inside_now & ~closing & (tokens != open_id)).to(count.dtype)
    return (inside & ~closing) | opening, closed | closing, count, closing

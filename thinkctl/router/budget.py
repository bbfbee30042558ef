"""Budget mode: choose a λ per query to maximise expected accuracy under a mean thinking-token budget.

This is a multiple-choice knapsack: each query picks one option (a λ) with a predicted P(correct)
(value) and a predicted thinking length (cost), and the mean cost must stay within the budget. The
greedy solution walks each query's upper concave hull of (tokens, P) from its cheapest option and
always buys the upgrade with the best accuracy gained per token, which is the exact optimum of the
Lagrangian relaxation; a last pass spends whatever slack is left on the best option that still fits.
The predicted mean never exceeds the budget: an upgrade that would is never taken.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from thinkctl.errors import ConfigError


@dataclass(frozen=True)
class BudgetAllocation:
    """The chosen λ-grid index per query and what the predictions say the choice achieves."""

    choice: np.ndarray
    predicted_accuracy: float
    predicted_mean_tokens: float
    budget: float


def efficient_hull(p: np.ndarray, tokens: np.ndarray) -> list[int]:
    """Option indices on the upper concave hull of (tokens, P), cheapest first.

    Options that cost more without raising P are dominated and dropped; of the rest, one lying under
    the chord of its neighbours is never the best use of a marginal token and is dropped too.
    """
    order = np.lexsort((-p, tokens))
    frontier: list[int] = []
    for j in order:
        if not frontier or p[j] > p[frontier[-1]]:
            frontier.append(int(j))
    hull: list[int] = []
    for j in frontier:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (p[b] - p[a]) * (tokens[j] - tokens[b]) <= (p[j] - p[b]) * (tokens[b] - tokens[a]):
                hull.pop()
            else:
                break
        hull.append(j)
    return hull


def allocate_budget(p: np.ndarray, tokens: np.ndarray, budget: float) -> BudgetAllocation:
    """Pick one option per row of ``p``/``tokens`` (queries × λ) with mean predicted tokens ≤ ``budget``."""
    p = np.asarray(p, dtype=np.float64)
    tokens = np.asarray(tokens, dtype=np.float64)
    if p.shape != tokens.shape or p.ndim != 2 or p.shape[0] == 0:
        raise ConfigError(f"budget allocation needs two equal (queries × λ) arrays, got {p.shape} and {tokens.shape}")
    if not np.isfinite(budget) or budget < 0:
        raise ConfigError(f"the thinking-token budget must be a finite non-negative number, got {budget}")
    n = len(p)
    cap = budget * n * (1 + 1e-12)
    hulls = [efficient_hull(p[i], tokens[i]) for i in range(n)]
    choice = np.array([h[0] for h in hulls])
    total = float(tokens[np.arange(n), choice].sum())
    if total > cap:
        raise ConfigError(
            f"a budget of {budget:g} thinking tokens per query is below the cheapest possible allocation "
            f"({total / n:.1f} predicted tokens per query, every query at its shortest-thinking λ); raise the budget"
        )
    heap: list[tuple[float, int, int]] = []

    def push(i: int, k: int) -> None:
        if k + 1 < len(hulls[i]):
            a, b = hulls[i][k], hulls[i][k + 1]
            heapq.heappush(heap, (-(p[i, b] - p[i, a]) / max(tokens[i, b] - tokens[i, a], 1e-12), i, k))

    for i in range(n):
        push(i, 0)
    while heap:
        _, i, k = heapq.heappop(heap)
        nxt = hulls[i][k + 1]
        extra = tokens[i, nxt] - tokens[i, choice[i]]
        if total + extra <= cap:
            choice[i] = nxt
            total += extra
            push(i, k + 1)
    for i in np.argsort(-(p.max(1) - p[np.arange(n), choice])):
        fits = np.flatnonzero(tokens[i] - tokens[i, choice[i]] + total <= cap)
        best = fits[np.argmax(p[i, fits])]
        if p[i, best] > p[i, choice[i]]:
            total += tokens[i, best] - tokens[i, choice[i]]
            choice[i] = best
    rows = np.arange(n)
    return BudgetAllocation(choice, float(p[rows, choice].mean()), float(tokens[rows, choice].mean()), float(budget))

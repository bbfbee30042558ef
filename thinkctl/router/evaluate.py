"""Evaluate a router on held-out queries by lookup, against every fixed λ at equal mean thinking tokens.

A held-out sweep ran every λ of the grid on the same queries, so the outcome of any per-query λ
choice can be read off it without generating again. Each routing policy (the threshold rule, and the
budget mode at each fixed λ's own mean token count) becomes a point (mean thinking tokens, accuracy)
compared with the fixed-λ frontier interpolated at the same mean tokens; its looked-up records are
returned with ``method = "routed"`` and a ``route_point`` label ("logistic threshold=0.5", "bins budget=48.6")
so reports can plot them.

Next to them stands the **oracle**: per query the cheapest λ whose answer was right (the cheapest λ
overall when none was). No router can beat it on the same sweep, so it is the ceiling routing is
measured against, and its records (``route_point = "oracle"``) are plotted with the policies.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from thinkctl.errors import ConfigError, DataFormatError
from thinkctl.records import SampleRecord
from thinkctl.router.budget import allocate_budget
from thinkctl.router.policy import Router, _as_frame, select_sweep, sweep_table
from thinkctl.stats import oracle_choice

log = logging.getLogger(__name__)


@dataclass
class RouteEvaluation:
    """``fixed``: one row per λ; ``table``: one row per routing policy; ``records``: looked-up routed records
    (:class:`thinkctl.records.SampleRecord` dicts with ``method = "routed"`` and the policy's ``route_point``)."""

    fixed: pd.DataFrame
    table: pd.DataFrame
    records: list[dict[str, Any]]
    oracle: dict[str, float]

    def to_markdown(self) -> str:
        lines = ["| policy | mean λ | predicted think tok | mean think tok | accuracy % | fixed-λ accuracy % at same tokens | Δ pp |",
                 "|---|---|---|---|---|---|---|"]
        for r in self.table.itertuples(index=False):
            lines.append(f"| {r.policy} | {r.mean_lam:.2f} | {r.predicted_mean_tokens:.1f} | {r.mean_thinking_tokens:.1f} | "
                         f"{100 * r.accuracy:.1f} | {100 * r.fixed_accuracy_at_tokens:.1f} | {100 * r.gain:+.1f} |")
        fixed = ["| fixed λ | mean think tok | accuracy % |", "|---|---|---|"]
        fixed += [f"| {r.lam:g} | {r.mean_thinking_tokens:.1f} | {100 * r.accuracy:.1f} |" for r in self.fixed.itertuples(index=False)]
        o = self.oracle
        ceiling = (f"Oracle (cheapest right λ per query, the ceiling of any router on this sweep): {100 * o['accuracy']:.1f}% at "
                   f"{o['mean_thinking_tokens']:.1f} thinking tokens, {100 * o['gain']:+.1f} pp over the fixed-λ frontier there.")
        return "\n".join(fixed) + "\n\n" + "\n".join(lines) + "\n\n" + ceiling + "\n"


def fixed_frontier_accuracy(fixed: pd.DataFrame, tokens: float) -> float:
    """Accuracy of the fixed-λ Pareto frontier at ``tokens`` mean thinking tokens (linear, clamped at the ends).

    Mixing two fixed λ across queries reaches any point on the segment between them, so the frontier
    — not just the nearest λ — is the fair baseline for a routed point.
    """
    pts = fixed.sort_values(["mean_thinking_tokens", "accuracy"], ascending=[True, False])
    xs, ys = [], []
    for x, y in zip(pts["mean_thinking_tokens"], pts["accuracy"]):
        if not ys or y > ys[-1]:
            xs.append(float(x))
            ys.append(float(y))
    return float(np.interp(tokens, xs, ys))


def default_budgets(fixed_tokens: Iterable[float], per_gap: int = 3, min_gap: float = 1.0) -> list[float]:
    """Every fixed λ's mean thinking tokens (to 0.1 token, as policies are labelled), and ``per_gap``
    evenly spaced budgets inside each gap of at least ``min_gap`` tokens between consecutive ones.

    At a fixed λ's own token count that λ is on the frontier by definition; between two of them the
    frontier is their mixture, which routes queries at random. That is where knowing which queries
    need the long thinking pays, so the routed curve is traced there too.
    """
    levels = sorted({round(float(t), 1) for t in fixed_tokens})
    budgets = list(levels)
    for a, b in zip(levels, levels[1:]):
        if b - a >= min_gap:
            budgets += [a + (b - a) * k / (per_gap + 1) for k in range(1, per_gap + 1)]
    return sorted(budgets)


def evaluate_routing(
    router: Router,
    records: pd.DataFrame | Iterable[Mapping[str, Any]],
    *,
    questions: Mapping[str, str] | None = None,
    signals: Mapping[str, Mapping[str, float]] | None = None,
    method: str | None = None,
    benchmark: str | None = None,
    budgets: Iterable[float] | None = None,
) -> RouteEvaluation:
    """Route every held-out query, look its outcome up, and compare with fixed λ (see module docstring).

    ``budgets`` defaults to :func:`default_budgets`: each fixed λ's mean thinking tokens on these
    queries and points between them, where the frontier is a mixture of two fixed λ and a router has
    the most room to beat it.
    """
    df = _as_frame(records)
    if method is None and router.meta.get("method") in set(df["method"]):
        method = router.meta["method"]  # the method the router was fitted on, when the held-out sweep has it
    df = select_sweep(df, method, benchmark)
    table = sweep_table(df, questions=questions, signals=signals)
    missing = [lam for lam in router.lambdas if lam not in table.lambdas]
    if missing:
        raise DataFormatError(f"the held-out sweep has no records at λ {missing} of the router's grid {router.lambdas}")
    cols = [table.lambdas.index(lam) for lam in router.lambdas]
    complete = (table.count[:, cols] > 0).all(1)
    if not complete.any():
        raise DataFormatError("no held-out problem was run at every λ of the router's grid; lookup needs all of them")
    if not complete.all():
        log.warning("%d held-out problems lack some λ of the grid and are left out", int((~complete).sum()))
    ids = [pid for pid, ok in zip(table.problem_ids, complete) if ok]
    correct, tokens = table.correct[complete][:, cols], table.tokens[complete][:, cols]
    feats = [f for f, ok in zip(table.features, complete) if ok]
    fixed = pd.DataFrame({"lam": router.lambdas, "mean_thinking_tokens": tokens.mean(0), "accuracy": correct.mean(0)})

    p, t = router.predict(feats)
    choices: list[tuple[str, np.ndarray, float]] = []
    choice = router.choose(p, t)
    kind = router.estimator.kind
    choices.append((f"{kind} threshold={router.threshold:g}", choice, float(t[np.arange(len(ids)), choice].mean())))
    if budgets is None:
        budgets = default_budgets(fixed["mean_thinking_tokens"])
    for budget in sorted(set(budgets)):
        try:
            alloc = allocate_budget(p, t, budget)
        except ConfigError as e:
            log.info("budget %.1f skipped: %s", budget, e)
            continue
        choices.append((f"{kind} budget={budget:.1f}", alloc.choice, alloc.predicted_mean_tokens))

    by_key: dict[tuple[str, float], list[SampleRecord]] = defaultdict(list)
    for row in df.to_dict("records"):
        record = SampleRecord.from_dict(row)
        by_key[(record.problem_id, record.lam)].append(record)
    rows, routed = [], []
    rows_idx = np.arange(len(ids))
    best = oracle_choice(correct, tokens)
    oracle_tokens = float(tokens[rows_idx, best].mean())
    oracle = {"accuracy": float(correct[rows_idx, best].mean()), "mean_thinking_tokens": oracle_tokens,
              "fixed_accuracy_at_tokens": fixed_frontier_accuracy(fixed, oracle_tokens)}
    oracle["gain"] = oracle["accuracy"] - oracle["fixed_accuracy_at_tokens"]
    for pid, j in zip(ids, best):
        routed += [replace(r, method="routed", route_point="oracle", route_estimator="oracle").to_dict()
                   for r in by_key[(pid, router.lambdas[j])]]
    for label, choice, predicted in choices:
        acc = float(correct[rows_idx, choice].mean())
        mean_tokens = float(tokens[rows_idx, choice].mean())
        base = fixed_frontier_accuracy(fixed, mean_tokens)
        rows.append({"policy": label, "mean_lam": float(np.mean(np.asarray(router.lambdas)[choice])),
                     "predicted_mean_tokens": predicted, "mean_thinking_tokens": mean_tokens, "accuracy": acc,
                     "fixed_accuracy_at_tokens": base, "gain": acc - base})
        for pid, j in zip(ids, choice):
            for r in by_key[(pid, router.lambdas[j])]:
                routed.append(replace(r, method="routed", route_point=label, route_estimator=kind).to_dict())
    return RouteEvaluation(fixed, pd.DataFrame(rows), routed, oracle)

"""Does a tiny-world build have the trade-off the toolkit is demonstrated on? Checked from a λ sweep.

A build on another CPU, thread count or seed trains along another floating-point path, so the pair a
user builds is never bit-for-bit the documented one. What must hold on every build is the *shape*:
the free region, the cliff, the hard levels falling first. :func:`check_shape` states each of those as
a pass/fail line with its numbers, measured on the user's own sweep (the demo's), so a build that
deviates says so instead of silently contradicting the README. The same function is what the slow
tests assert, so the documented criteria and the tested ones cannot drift apart.

λ = 0 is the reference alone and λ = 1 the aligned model alone, so the per-level criteria of the two
models are read off the same sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from thinkctl.records import aggregate, points_down, within_points

#: the λ the checks read; the demo's default grid holds them all
SHAPE_LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


@dataclass(frozen=True)
class ShapeCheck:
    """One criterion of the world's shape, with the figures it was judged on."""

    name: str
    passed: bool
    detail: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "passed", bool(self.passed))  # a numpy bool from pandas would not serialise

    def line(self) -> str:
        return f"{'✓' if self.passed else '✗'} {self.name}: {self.detail}"


def missing_lambdas(records: pd.DataFrame) -> list[float]:
    """The λ of :data:`SHAPE_LAMBDAS` the records lack (the shape check needs all of them)."""
    present = set(records["lam"].astype(float))
    return [lam for lam in SHAPE_LAMBDAS if lam not in present]


def largest_free_cut(accuracy: pd.Series, thinking: pd.Series, within_pts: float = 1.0) -> tuple[float, float] | None:
    """(λ, % less thinking than λ 0) of the λ in (0, 1) that thinks least while within ``within_pts`` of λ 0's
    accuracy (percent, indexed by λ); None when no λ in (0, 1) stays that close."""
    close = [lam for lam in thinking.index if 0 < lam < 1 and within_points(accuracy[lam], accuracy[0.0], within_pts)]
    if not close:
        return None
    best = min(close, key=thinking.__getitem__)
    return best, 100 * (1 - thinking[best] / thinking[0.0])


def knee_tokens(records: pd.DataFrame, within_pts: float = 1.0) -> float:
    """Mean thinking tokens at the knee of one λ sweep: those of the λ in (0, 1) that thinks least within
    ``within_pts`` of λ 0's accuracy (:func:`largest_free_cut`). The free region ends there: past it, accuracy starts
    to fall, hardest problems first (the shape check's "first λ > 2 points down").

    This is TrRa's target "at the knee" (``realign --target-tokens``). A fixed share of the reference's
    length is not: greedy reference decoding checks twice or three times depending on the build, and half of a
    two-check reference (seed 1 of check version 2: 59 of 117 tokens) lies below the unchecked careful pass, past
    the knee, where a student reaching it must cut into the careful steps. Measure it on problems the student will
    not be graded on (``measure_build.sh`` uses the train-split sweep).
    """
    runs = records[["benchmark", "method", "model"]].drop_duplicates()
    if len(runs) > 1:
        raise ValueError(f"the knee is read off one λ sweep; these records hold {len(runs)} "
                         f"(benchmark, method, model): {runs.to_dict('records')}; pass one sweep's records")
    overall = _table(records, ["lam"])
    if 0.0 not in overall.index or not any(0 < lam < 1 for lam in overall.index):
        raise ValueError(f"the knee needs λ 0 (the reference) and λ in (0, 1); the sweep has λ {sorted(overall.index)}: "
                         "sweep the demo's grid, or give --target-tokens yourself")
    acc, think = 100 * overall["accuracy"], overall["mean_thinking_tokens"]
    free = largest_free_cut(acc, think, within_pts)
    if free is None:
        raise ValueError(f"no λ in (0, 1) stays within {within_pts} points of λ 0 ({acc.round(1).to_dict()}): the sweep "
                         "has no free region, so no knee; give --target-tokens yourself (TARGET_TOKENS for measure_build.sh)")
    return float(think[free[0]])


def _table(records: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return aggregate(records, by).set_index(by)


def check_shape(records: pd.DataFrame) -> list[ShapeCheck]:
    """The tiny world's done-means, judged on one fused sweep's records (greedy, held-out problems).

    * reference (λ 0) ≥ 95% on levels 1–4 and ≥ 90% on level 5; aligned (λ 1) ≥ 95% on level 1 and
      ≤ 60% on level 5; on level 1 the reference thinks ≥ 3× as long as the aligned model;
    * thinking falls with λ on [0, 1] (a plateau may rise by at most 1%);
    * free region: some λ in (0, 1) thinks ≥ 40% less than λ 0 within 1 point;
    * cliff: λ 1 is ≥ 15 points below λ 0, and level 5 loses more there than level 1 (hard first);
    * no half-fused dip: accuracy is non-increasing in λ on [0, 1.5] within 2 points.
    """
    missing = missing_lambdas(records)
    if missing:
        raise ValueError(f"the shape check needs results at λ {missing}; sweep the demo's grid")
    overall = _table(records, ["lam"])
    acc, think = 100 * overall["accuracy"], overall["mean_thinking_tokens"]
    by_level = _table(records, ["lam", "level"])
    lacc = 100 * by_level["accuracy"]
    levels = sorted(by_level.loc[0.0].index)
    first, last = levels[0], levels[-1]
    checks = []

    ref = {lv: lacc[(0.0, lv)] for lv in levels}
    floor = {lv: 90.0 if lv == last else 95.0 for lv in levels}
    checks.append(ShapeCheck(
        "reference right at every level", all(ref[lv] >= floor[lv] for lv in levels),
        "λ 0 by level " + " / ".join(f"{ref[lv]:.1f}" for lv in levels) + f" % (≥ 95, level {last} ≥ 90)"))
    al1, al5 = lacc[(1.0, first)], lacc[(1.0, last)]
    checks.append(ShapeCheck(
        "aligned fast and right only on easy problems", al1 >= 95 and al5 <= 60,
        f"λ 1 level {first} {al1:.1f}% (≥ 95), level {last} {al5:.1f}% (≤ 60)"))
    t_ref, t_al = by_level["mean_thinking_tokens"][(0.0, first)], by_level["mean_thinking_tokens"][(1.0, first)]
    checks.append(ShapeCheck(
        "reference over-thinks easy problems", t_ref >= 3 * t_al,
        f"level {first}: {t_ref:.1f} vs {t_al:.1f} thinking tokens ({t_ref / max(t_al, 1e-9):.1f}×, ≥ 3×)"))

    dial = [lam for lam in overall.index if 0.0 <= lam <= 1.0]
    rises = [(a, b) for a, b in zip(dial, dial[1:]) if think[b] > 1.01 * think[a]]
    checks.append(ShapeCheck(
        "thinking falls with λ on [0, 1]", not rises,
        " → ".join(f"{think[lam]:.1f}" for lam in dial) + " tokens" + (f"; rises at λ {rises}" if rises else "")))

    free = largest_free_cut(acc, think)
    found = free is not None and free[1] >= 40
    if found:
        best = free[0]
        detail = f"λ {best:g} thinks {free[1]:.1f}% less at {acc[best] - acc[0.0]:+.1f} points"
    else:
        cut = {lam: 100 * (1 - think[lam] / think[0.0]) for lam in dial if 0 < lam < 1}
        detail = "no λ in (0, 1) cuts ≥ 40% within 1 point; " + ", ".join(
            f"λ {lam:g}: −{c:.1f}% at {acc[lam] - acc[0.0]:+.1f}" for lam, c in cut.items())
    checks.append(ShapeCheck("free region", found, detail))

    drop = points_down(acc[1.0], acc[0.0])
    hard, easy = points_down(lacc[(1.0, last)], lacc[(0.0, last)]), points_down(lacc[(1.0, first)], lacc[(0.0, first)])
    falls = next((lam for lam in overall.index if lam > 0 and not within_points(acc[lam], acc[0.0], 2)), None)
    checks.append(ShapeCheck(
        "cliff, hard problems first", drop >= 15 and hard > easy,
        f"λ 1 is {drop:.1f} points below λ 0 (≥ 15); level {last} loses {hard:.1f}, level {first} {easy:.1f}; "
        f"accuracy starts to fall (first λ > 2 points down) at λ {falls if falls is None else f'{falls:g}'}"))

    grid = [lam for lam in overall.index if 0.0 <= lam <= 1.5]
    dips = [(a, b) for i, a in enumerate(grid) for b in grid[i + 1:] if not within_points(acc[a], acc[b], 2)]
    checks.append(ShapeCheck(
        "no half-fused dip", not dips,
        " → ".join(f"{acc[lam]:.1f}" for lam in grid) + " % on λ " + "/".join(f"{lam:g}" for lam in grid)
        + (f"; a larger λ beats a smaller one by > 2 points at {dips[:3]}" if dips else "")))
    return checks


def format_shape(checks: list[ShapeCheck]) -> str:
    """The checks as the lines ``thinkctl demo`` prints, with a verdict."""
    ok = all(c.passed for c in checks)
    head = ("Shape of this build: as documented." if ok else
            "Shape of this build: differs from the documented world (see ✗ below; README 'The tiny default on your machine').")
    return "\n".join([head, *(f"  {c.line()}" for c in checks)])

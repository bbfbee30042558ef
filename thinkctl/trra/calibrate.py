"""Calibrating λ to a thinking-length budget: which fusion weight thinks ``N`` tokens on average?

Mean thinking length falls as λ rises on the range that matters (the reference thinks longest at
λ = 0), but not necessarily everywhere: far past λ = 1 extrapolation can degenerate. So the search
measures a small λ grid first, takes the first adjacent pair of grid points whose lengths straddle the
target (the monotone part), and refines inside it by interpolation, falling back to bisection when
interpolation would land too near an end, lands on a plateau (the end it replaces had the same length, within
the tolerance below) or has moved the same end twice in a row. A λ *meets* the target when it thinks within a tolerance of N
(``rel_tol``, 5% by default); refinement stops at the first that does. The search then walks down towards λ 0: it
probes halfway to the nearest smaller λ that thinks too long, keeps the probe while it still meets the target, and
stops at the first probe that does not. The answer is the smallest λ found that meets the target: the least
realignment that reaches the length, not the λ closest to N. Accuracy falls with λ past the free region, while a
distilled student's length drifts from its teacher's anyway (up to 4% on the tiny world), so the smaller λ is the
better teacher. Tiny world: on a plateau (λ 0.25 to 0.75 think the same) the walk takes λ 0.25,
whose student was 1.0 point above the one at the grid's λ 0.5 (seed 0, learning rate 2e-4); where λ 0.25 thinks 4% over N and λ 0.5
1% under (seed 2), it takes λ 0.25 too. On a sloped curve the walk stops at the first probe outside the tolerance,
often the first (one measurement), and may end anywhere inside it: pass a smaller ``rel_tol`` to land closer to N.
Only λ up to the bracket's upper end count (past it, extrapolation can think long again); a target that a grid λ
meets without being bracketed is met all the same. Each measurement is a sweep at one λ on the calibration
split with the run's own sampling (and samples per problem), recorded through :func:`thinkctl.sweep.run_sweep`, so a
rerun reuses every λ already measured.

A target outside what the searched λ range achieves is reported, not silently clamped:
:class:`CalibrationError` says which side it falls off and carries the closest λ found.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from thinkctl.data import PLAIN, Problem
from thinkctl.errors import ConfigError, ThinkctlError
from thinkctl.prompts import PromptConfig
from thinkctl.rollout.base import RolloutBackend
from thinkctl.sampling import SamplingConfig

log = logging.getLogger(__name__)

DEFAULT_GRID = (0.0, 0.5, 1.0, 1.5)
#: a λ meets a target of N thinking tokens when it thinks within this share of N
DEFAULT_TOLERANCE = 0.05
#: recorded with each calibration; a saved one from another method is measured again (its sweeps are reused)
CALIBRATION_METHOD = "bracket+walk-within-tolerance"


@dataclass(frozen=True)
class LengthPoint:
    """One measured λ: mean thinking tokens and accuracy over ``n`` calibration problems."""

    lam: float
    mean_thinking_tokens: float
    accuracy: float
    n: int


@dataclass
class CalibrationResult:
    """The chosen λ, every point measured (sorted by λ), whether the target was bracketed, and the tolerance within
    which a λ met it."""

    target_tokens: float
    lam: float
    mean_thinking_tokens: float
    accuracy: float
    reachable: bool
    points: list[LengthPoint] = field(default_factory=list)
    method: str = CALIBRATION_METHOD
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def relative_error(self) -> float:
        return abs(self.mean_thinking_tokens - self.target_tokens) / self.target_tokens

    def to_dict(self) -> dict:
        return {**asdict(self), "relative_error": self.relative_error}

    @classmethod
    def from_dict(cls, data: dict) -> CalibrationResult:
        data = {k: v for k, v in data.items() if k != "relative_error"}
        data["points"] = [LengthPoint(**p) for p in data.get("points", [])]
        data.setdefault("method", "bracket")  # saved before any walk
        data.setdefault("tolerance", 0.03)  # the tolerance of those versions
        return cls(**data)


class CalibrationError(ThinkctlError):
    """The target length is outside what the searched λ range achieves; ``result`` holds the closest λ."""

    def __init__(self, message: str, result: CalibrationResult) -> None:
        super().__init__(message)
        self.result = result


def _closest(points: Sequence[LengthPoint], target: float) -> LengthPoint:
    return min(points, key=lambda p: (abs(p.mean_thinking_tokens - target), abs(p.lam)))


def calibrate_lambda(
    measure: Callable[[float], LengthPoint],
    target_tokens: float,
    grid: Sequence[float] = DEFAULT_GRID,
    max_refinements: int = 6,
    rel_tol: float = DEFAULT_TOLERANCE,
) -> CalibrationResult:
    """The smallest λ found whose measured mean thinking length is within ``rel_tol`` of ``target_tokens``, or, when
    none is, the λ closest to it (see module docstring).

    ``measure(λ)`` runs the decoding at λ and returns its :class:`LengthPoint`. Refinement stops when a point is
    within ``rel_tol`` of the target and the walk down ends, or after ``max_refinements`` measurements beyond the
    grid in all.
    Raises :class:`CalibrationError` when no two grid neighbours straddle the target and no grid λ meets it.
    """
    if target_tokens <= 0:
        raise ConfigError(f"target thinking tokens must be positive, got {target_tokens}")
    if not 0 < rel_tol < 1:
        raise ConfigError(f"the length tolerance is a share of the target in (0, 1), got {rel_tol}")
    grid = sorted(float(lam) for lam in grid)
    measured: dict[float, LengthPoint] = {}

    def at(lam: float) -> LengthPoint:
        lam = round(lam, 3)
        if lam not in measured:
            measured[lam] = measure(lam)
            log.info("calibration λ=%g: %.1f thinking tokens, accuracy %.3f", lam, measured[lam].mean_thinking_tokens, measured[lam].accuracy)
        return measured[lam]

    def meets(p: LengthPoint) -> bool:
        return abs(p.mean_thinking_tokens - target_tokens) <= rel_tol * target_tokens

    def result(reachable: bool, best: LengthPoint | None = None) -> CalibrationResult:
        best = best or _closest(list(measured.values()), target_tokens)
        points = [measured[k] for k in sorted(measured)]
        return CalibrationResult(target_tokens, best.lam, best.mean_thinking_tokens, best.accuracy, reachable, points,
                                 tolerance=rel_tol)

    points = [at(lam) for lam in grid]
    n_grid = len(measured)  # grid points may coincide once rounded
    bracket = next(
        ((a, b) for a, b in zip(points, points[1:])
         if (a.mean_thinking_tokens - target_tokens) * (b.mean_thinking_tokens - target_tokens) <= 0),
        None,
    )
    if bracket is None and not any(map(meets, points)):
        res = result(reachable=False)
        lengths = [p.mean_thinking_tokens for p in points]
        side = "longer than the longest" if target_tokens > max(lengths) else "shorter than the shortest"
        raise CalibrationError(
            f"target of {target_tokens:g} thinking tokens is {side} mean length measured for λ in "
            f"[{grid[0]:g}, {grid[-1]:g}] ({min(lengths):.1f}–{max(lengths):.1f} tokens); closest: "
            f"λ={res.lam:g} at {res.mean_thinking_tokens:.1f} tokens. Widen the λ grid or choose a reachable target.",
            res,
        )
    # hits past the bracket (a length that rises again under extrapolation) are not the monotone part: left out
    upper = bracket[1].lam if bracket is not None else grid[-1]
    if bracket is not None:
        lo, hi = bracket
        last_moved, bisect = None, False
        for _ in range(max_refinements):
            if meets(lo) or meets(hi):
                break
            span = hi.mean_thinking_tokens - lo.mean_thinking_tokens
            frac = (target_tokens - lo.mean_thinking_tokens) / span if span else 0.5
            if bisect or not 0.1 <= frac <= 0.9:
                frac = 0.5
            mid = at(lo.lam + frac * (hi.lam - lo.lam))
            if mid.lam in (lo.lam, hi.lam):
                break
            moved = "hi" if (lo.mean_thinking_tokens - target_tokens) * (mid.mean_thinking_tokens - target_tokens) <= 0 else "lo"
            replaced = hi if moved == "hi" else lo
            # Length curves have plateaus (a style that stops changing over a λ range): interpolation towards a
            # plateau keeps landing on it, moving one end by a sliver at the same length. Bisect after such a step,
            # or after the same end moved twice in a row.
            flat = abs(mid.mean_thinking_tokens - replaced.mean_thinking_tokens) <= rel_tol * target_tokens
            bisect = flat or moved == last_moved
            last_moved = None if bisect else moved
            if moved == "hi":
                hi = mid
            else:
                lo = mid

    monotone = [p for p in measured.values() if p.lam <= upper]
    hits = [p for p in monotone if meets(p)]
    if not hits:
        return result(reachable=True, best=_closest(monotone, target_tokens))
    # Walk down (module docstring): halfway to the nearest smaller λ that thinks too long, while the probe meets the target.
    best = min(hits, key=lambda p: p.lam)
    while len(measured) - n_grid < max_refinements:
        longer = [p for p in measured.values() if p.lam < best.lam and p.mean_thinking_tokens > (1 + rel_tol) * target_tokens]
        if not longer:
            break
        probe = at((max(longer, key=lambda p: p.lam).lam + best.lam) / 2)
        if probe.lam == best.lam or not meets(probe):
            break
        best = probe
    if best.lam <= 0:
        log.warning("λ=%g (the reference, or longer) already thinks within %g%% of %g tokens: distilling towards it "
                    "shortens nothing", best.lam, 100 * rel_tol, target_tokens)
    return result(reachable=True, best=best)


def backend_measure(
    backend: RolloutBackend, problems: Sequence[Problem], sampling: SamplingConfig, out_dir: str | Path, benchmark: str,
    n_samples: int = 1,
    prompt: PromptConfig = PLAIN,
) -> Callable[[float], LengthPoint]:
    """``measure(λ)`` for :func:`calibrate_lambda`: a resumable sweep at λ into ``out_dir/results.jsonl``,
    ``n_samples`` per problem (the mean length and accuracy average over all of them), asked with ``prompt``."""
    from thinkctl.records import aggregate, load_records
    from thinkctl.sweep import run_sweep

    def measure(lam: float) -> LengthPoint:
        path = run_sweep(backend, problems, [lam], sampling, out_dir, benchmark=benchmark, method="calibration",
                         n_samples=n_samples, prompt=prompt, summarize=False)
        df = load_records([path])
        ids = {p.id for p in problems}
        mine = (df["lam"] == lam) & (df["method"] == "calibration") & df["problem_id"].isin(ids) & (df["sample"] < n_samples)
        row = aggregate(df[mine], ["lam"]).iloc[0]
        return LengthPoint(lam, float(row["mean_thinking_tokens"]), float(row["accuracy"]), int(row["n"]))

    return measure

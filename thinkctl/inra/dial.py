"""Sweeping an InRa checkpoint's λ dial and checking that it behaves like a dial.

The sweep is the ordinary :func:`thinkctl.sweep.run_sweep` over an HF backend whose reference stream
is the original path and whose aligned stream is the adapter path (``method="inra"`` in the records),
so InRa results sit in the same tables and plots as fused-pair results.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thinkctl.errors import ConfigError
from thinkctl.inra.checkpoint import open_inra_backend
from thinkctl.io import atomic_write_json, atomic_write_text
from thinkctl.records import points_down
from thinkctl.sweep import SweepConfig, run_sweep_config

DIAL_LAMBDAS = (0.0, 0.25, 0.5, 1.0, 1.5)


def run_inra_sweep(cfg: SweepConfig, inra_path: str | Path, out_dir: str | Path) -> Path:
    """Run the sweep described by ``cfg`` over the InRa checkpoint at ``inra_path`` (method ``"inra"``)."""
    return run_sweep_config(cfg, lambda: open_inra_backend(inra_path, cfg.backend), out_dir, method="inra", model=str(inra_path),
                            models={"inra": str(inra_path)})


def _falls_on_the_dial(thinking: dict[float, float]) -> bool:
    """Strictly falling at every step up to λ = 1, the dial's range between the two paths."""
    lams = sorted(lam for lam in thinking if lam <= 1.0)
    return all(thinking[a] > thinking[b] for a, b in zip(lams, lams[1:]))


def _rise_past_one_pct(thinking: dict[float, float]) -> float | None:
    """How much more than at the largest λ ≤ 1 (the fast path's floor) the most any λ > 1 thinks, in %; None without
    a λ > 1. Extrapolating past the fast path leaves nothing to cut: the floor, a few % either way."""
    inside = [lam for lam in thinking if lam <= 1.0]
    past = [thinking[lam] for lam in thinking if lam > 1.0]
    if not inside or not past or not thinking[max(inside)]:
        return None
    return 100.0 * (max(past) / thinking[max(inside)] - 1)


def dial_check(summary: Any, lambdas: Sequence[float] = DIAL_LAMBDAS, min_reduction_pct: float = 40.0,
               max_accuracy_drop_pts: float = 2.0, cliff_drop_pts: float = 10.0) -> dict[str, Any]:
    """Whether a sweep summary (``thinkctl.report.summarize`` of one benchmark+method) is a working dial.

    A dial: mean thinking tokens fall strictly at every step of ``lambdas`` up to λ = 1, the range between the
    two paths, and some λ thinks at least ``min_reduction_pct`` % less than λ = 0 with accuracy at most
    ``max_accuracy_drop_pts`` points lower (the free region; the largest such reduction is reported). Past λ = 1
    extrapolation leaves nothing to cut (the fast path's style is the floor) and may think a few % longer (the
    tiny world's AVX2-kernel build: +5.8% at λ 1.5): how much is reported, not judged, as is the cliff, the first λ
    whose accuracy is more than ``cliff_drop_pts`` below λ = 0's (None when the grid never falls that far).
    """
    rows = {float(r["lam"]): r for r in summary.to_dict("records")}
    missing = [lam for lam in lambdas if lam not in rows]
    if missing:
        raise ConfigError(f"the sweep has no results at λ {missing}")
    thinking = {lam: float(rows[lam]["mean_thinking_tokens"]) for lam in lambdas}
    accuracy = {lam: 100.0 * float(rows[lam]["accuracy"]) for lam in lambdas}
    reduction = {lam: 100.0 * (1 - thinking[lam] / thinking[0.0]) if thinking[0.0] else 0.0 for lam in lambdas}
    drop = {lam: points_down(accuracy[lam], accuracy[0.0]) for lam in lambdas}
    free = [lam for lam in lambdas if drop[lam] <= max_accuracy_drop_pts]
    best = max(free, key=reduction.__getitem__)
    result = {
        "lambdas": list(lambdas),
        "mean_thinking_tokens": thinking,
        "accuracy_pct": accuracy,
        "n": {lam: int(rows[lam]["n"]) for lam in lambdas},
        "monotone": _falls_on_the_dial(thinking),
        "rise_past_one_pct": _rise_past_one_pct(thinking),
        "free_lambda": best,
        "free_reduction_pct": reduction[best],
        "free_accuracy_drop_pts": drop[best],
        "cliff_drop_pts": cliff_drop_pts,
        "cliff_lambda": next((lam for lam in sorted(lambdas) if drop[lam] > cliff_drop_pts), None),
    }
    result["passed"] = result["monotone"] and reduction[best] >= min_reduction_pct
    return result


def _rise_text(rise: float | None) -> str:
    return "not measured" if rise is None else f"{rise:+.1f}% on λ 1's thinking"


def write_dial_report(check: dict[str, Any], out_dir: str | Path, title: str = "InRa dial") -> Path:
    """``dial.json`` and a short ``dial.md`` table next to the sweep results."""
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "dial.json", check)
    lines = [f"# {title}", "", "| λ | n | accuracy % | mean thinking tokens |", "|---|---|---|---|"]
    for lam in check["lambdas"]:
        lines.append(f"| {lam} | {check['n'][lam]} | {check['accuracy_pct'][lam]:.1f} | {check['mean_thinking_tokens'][lam]:.1f} |")
    lines += [
        "",
        f"monotone up to λ 1: {check['monotone']}; past λ 1: {_rise_text(check['rise_past_one_pct'])}; "
        f"largest free cut: λ={check['free_lambda']} thinks {check['free_reduction_pct']:.1f}% less than λ=0 at "
        f"{-check['free_accuracy_drop_pts']:+.1f} pts; cliff (> {check['cliff_drop_pts']:g} pts lost) at λ={check['cliff_lambda']}; "
        f"passed: {check['passed']}",
    ]
    return atomic_write_text(out_dir / "dial.md", "\n".join(lines) + "\n")

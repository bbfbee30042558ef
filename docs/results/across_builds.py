"""The tiny world's figures across builds: each as the seed-0 value with the range over every build.

A build on another seed, thread count or CPU trains along another floating-point path, so one build's
figure is a sample. This reads the run directories ``measure_build.sh`` left (one per build) and writes
one table: a row per figure, a column per build, and ``seed 0 [min–max]``.

    python docs/results/across_builds.py "seed 0, 1 thread=runs/s0t1" "seed 1, 1 thread=runs/s1t1" ... \\
        --out docs/results/tiny-builds.md

The first build named is the documented one. Figures a build lacks (the router, TrRa and InRa runs are
made on some builds only) are left blank and out of the range. ``--include`` carries builds over from an
earlier table's ``.json`` (builds made on another machine, whose run directories are not here), after
the ones named.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd

from thinkctl.records import aggregate, load_records
from thinkctl.tiny.shape import check_shape, largest_free_cut


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def build_figures(runs: Path) -> dict[str, float]:
    """Every figure of one build's runs, by name (percentages in points, tokens in tokens)."""
    fig: dict[str, float] = {}
    info = _json(runs / "build_info.json")
    if info:
        fig["build: train minutes (3 stages)"] = sum(info[m].get("train_seconds", 0) for m in ("solver", "reference", "aligned") if m in info) / 60
        for model in ("reference", "aligned"):
            for level, row in sorted(info[model]["held_out"]["by_level"].items()):
                fig[f"{model} accuracy, level {level} %"] = 100 * row["accuracy"]
    demo = runs / "demo" / "results.jsonl"
    if demo.is_file():
        records = load_records([demo])
        overall = aggregate(records, ["lam"]).set_index("lam")
        for lam, row in overall.iterrows():
            fig[f"demo λ {lam:g}: accuracy %"] = 100 * row["accuracy"]
            fig[f"demo λ {lam:g}: thinking tokens"] = row["mean_thinking_tokens"]
        levels = aggregate(records, ["lam", "level"]).set_index(["lam", "level"])
        fig["level 1 thinking, reference ÷ aligned"] = (levels.loc[(0.0, 1), "mean_thinking_tokens"]
                                                        / levels.loc[(1.0, 1), "mean_thinking_tokens"])
        acc = 100 * overall["accuracy"]
        fig["cliff: λ 0 − λ 1 accuracy, points"] = acc[0.0] - acc[1.0]
        free = largest_free_cut(acc, overall["mean_thinking_tokens"])
        if free is not None:
            fig["free region: largest cut within 1 point, %"] = free[1]
        checks = check_shape(records)
        fig["shape checks passed (of %d)" % len(checks)] = sum(c.passed for c in checks)
    for estimator in ("logistic", "bins"):
        table = runs / f"routed-{estimator}" / "route_eval.csv"
        if table.is_file():
            t = pd.read_csv(table)
            threshold = t["policy"].str.contains("threshold")
            fig[f"router ({estimator}) threshold: gain over fixed-λ frontier, points"] = 100 * t.loc[threshold, "gain"].min()
            fig[f"router ({estimator}) best budget policy: gain, points"] = 100 * t.loc[~threshold, "gain"].max()
    oracle = _json(runs / "routed-logistic" / "route_oracle.json")
    if oracle:
        fig["oracle λ per problem: accuracy %"] = 100 * oracle["accuracy"]
        fig["oracle λ per problem: thinking tokens"] = oracle["mean_thinking_tokens"]
    trra = _json(runs / "trra" / "report.json")
    if trra:
        rows = {r["model"].split(" (")[0]: r for r in trra["rows"]}
        student, ref = rows["TrRa student"], rows["reference"]
        fig["TrRa: calibrated λ"] = trra["lambda"]
        fig["TrRa: target thinking tokens"] = trra.get("target_tokens") or math.nan
        fig["TrRa: student thinking tokens"] = student["mean_thinking_tokens"]
        fig["TrRa: student reduction vs reference, %"] = student["reduction_pct_vs_reference"]
        fig["TrRa: student − reference accuracy, points"] = 100 * (student["accuracy"] - ref["accuracy"])
    dial = _json(runs / "inra" / "sweep" / "dial.json")
    if dial:
        fig["InRa: largest free cut (≤ 2 points), %"] = dial["free_reduction_pct"]
        fig["InRa: its accuracy change, points"] = -dial["free_accuracy_drop_pts"]
        fig["InRa: free λ"] = dial["free_lambda"]
    return fig


def table(builds: dict[str, dict[str, float]]) -> str:
    """Markdown: a row per figure, a column per build, then the first build's value with the range."""
    names = list(dict.fromkeys(name for fig in builds.values() for name in fig))
    labels = list(builds)
    lines = ["| figure | " + " | ".join(labels) + f" | {labels[0]} [range] |", "|---" * (len(labels) + 2) + "|"]
    for name in names:
        values = [builds[label].get(name, math.nan) for label in labels]
        present = [v for v in values if not math.isnan(v)]
        fmt = "g" if name.endswith(" λ") else ".1f"  # a λ as given (0.25), every other figure to one decimal
        cells = ["" if math.isnan(v) else f"{v:{fmt}}" for v in values]
        first = cells[0] or "–"
        span = f"[{min(present):{fmt}}–{max(present):{fmt}}]" if len(present) > 1 else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {first} {span} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("builds", nargs="+", help="LABEL=RUNS_DIR, the documented build first")
    parser.add_argument("--out", required=True, help="markdown file to write (a .json with the same stem too)")
    parser.add_argument("--include", help="an earlier table's .json: its builds are added after the named ones")
    args = parser.parse_args()
    builds = {}
    for spec in args.builds:
        label, _, path = spec.partition("=")
        if not Path(path).is_dir():
            parser.error(f"{spec!r}: {path} is not a run directory (LABEL=RUNS_DIR)")
        builds[label] = build_figures(Path(path))
    if args.include:
        for label, figures in json.loads(Path(args.include).read_text(encoding="utf-8")).items():
            builds.setdefault(label, figures)
    out = Path(args.out)
    out.write_text(table(builds), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(builds, indent=1, default=float), encoding="utf-8")
    print(out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()

"""TrRa runs side by side on the same held-out problems: one table of students, reference and oracle, by level.

Each ``thinkctl realign`` run evaluates its own students, but the question a user asks is comparative: does
the adaptive student think less than single-λ TrRa's at equal accuracy, does round 2 of iterated TrRa cut
more than round 1, how far is each from the per-problem oracle? :func:`compare_runs` reads the runs'
``report.json`` files (single rounds and iterated summaries), refuses runs evaluated on other problems or
another decoding (their ``run.json`` eval settings must agree), and lines up the reference once, every
round's student, the adaptive run's oracle and any rows the caller adds (the router over the fused pair, which
lives above this package), with accuracy and thinking per difficulty level.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from thinkctl.errors import ConfigError, DataFormatError
from thinkctl.records import aggregate

ORACLE = "oracle (cheapest right λ per problem)"


def record_figures(records: Any) -> dict[str, Any]:
    """Accuracy, mean thinking and the share cut off by the token limit of a frame of sample records, overall and
    by difficulty level: the figures of every row of a realign report."""
    levels = aggregate(records.dropna(subset=["level"]), ["level"]).itertuples() if "level" in records else ()
    by_level = {str(int(r.level)): {"n": int(r.n), "accuracy": float(r.accuracy), "mean_thinking_tokens": float(r.mean_thinking_tokens)}
                for r in levels}
    overall = aggregate(records.assign(_all=0), ["_all"]).iloc[0]
    return {"n": int(overall["n"]), "accuracy": float(overall["accuracy"]),
            "mean_thinking_tokens": float(overall["mean_thinking_tokens"]), "hit_limit": float(overall["hit_limit"]),
            "by_level": by_level}


def _rounds(run: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(round directory, round report) of a realign run: itself, or each ``round-k`` of an iterated one."""
    path = run / "report.json"
    if not path.is_file():
        raise ConfigError(f"{run} has no report.json: finish the run with `thinkctl realign ... --out {run}` first")
    report = json.loads(path.read_text(encoding="utf-8"))
    if "rounds" in report:
        return [(run / f"round-{k}", r) for k, r in enumerate(report["rounds"], start=1)]
    return [(run, report)]


def _eval_settings(round_dir: Path) -> dict[str, Any]:
    settings = json.loads((round_dir / "run.json").read_text(encoding="utf-8"))["settings"]["eval"]
    return {k: settings[k] for k in ("benchmark", "split", "problems_sha256", "n_samples", "sampling")}


def levels_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines (after a blank one) of accuracy % / mean thinking tokens by level, a row per report row;
    none when no row has levels."""
    levels = sorted({lv for r in rows for lv in r.get("by_level", {})}, key=int)
    if not levels:
        return []
    lines = ["", "| model | " + " | ".join(f"L{lv} acc % / think" for lv in levels) + " |", "|---|" + "---|" * len(levels)]
    for r in rows:
        cells = [r.get("by_level", {}).get(lv) for lv in levels]
        lines.append(f"| {r['model']} | " + " | ".join(
            "" if c is None else f"{100 * c['accuracy']:.1f} / {c['mean_thinking_tokens']:.1f}" for c in cells) + " |")
    return lines


def compare_runs(runs: Mapping[str, str | Path], extra_rows: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The rows of every run in ``runs`` (name → run directory), the reference once and ``extra_rows`` last.

    Each row is a report row (``model``, ``accuracy``, ``mean_thinking_tokens``, ``by_level``, ...) with
    ``reduction_pct_vs_reference`` recomputed against the first run's reference, and ``run`` naming its source.
    """
    if not runs:
        raise ConfigError("compare_runs: name at least one realign run")
    rows: list[dict[str, Any]] = []
    first: tuple[str, dict[str, Any]] | None = None
    for name, run in runs.items():
        rounds = _rounds(Path(run))
        for k, (round_dir, report) in enumerate(rounds, start=1):
            settings = _eval_settings(round_dir)
            if first is None:
                first = (name, settings)
                rows.append({**report["rows"][0], "run": name})
            elif settings != first[1]:
                differ = sorted(key for key in settings if settings[key] != first[1][key])
                raise DataFormatError(f"run {name!r} ({round_dir}) was evaluated differently from {first[0]!r} "
                                      f"(eval {', '.join(differ)}): compare runs on the same held-out problems and decoding")
            label = name if len(rounds) == 1 else f"{name}, round {k}"
            for row in report["rows"]:
                if "student" in row["model"] or row["model"] == ORACLE:
                    rows.append({**row, "model": f"{row['model']} ({label}, λ={report['lambda']:g})", "run": name})
    rows += [dict(r) for r in extra_rows]
    base = rows[0]["mean_thinking_tokens"]
    for row in rows:
        row["reduction_pct_vs_reference"] = 100.0 * (1.0 - row["mean_thinking_tokens"] / base) if base else 0.0
    return {"runs": {name: str(path) for name, path in runs.items()}, "eval": first[1] if first else None, "rows": rows}


def comparison_markdown(comparison: dict[str, Any]) -> str:
    """The comparison as Markdown: one table overall, one by level (accuracy % / mean thinking tokens)."""
    rows = comparison["rows"]
    ref = rows[0]
    lines = ["| model | n | accuracy % | Δ vs reference (points) | mean thinking tokens | reduction vs reference % |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['n']} | {100 * r['accuracy']:.1f} | {100 * (r['accuracy'] - ref['accuracy']):+.1f} | "
                     f"{r['mean_thinking_tokens']:.1f} | {r['reduction_pct_vs_reference']:.1f} |")
    lines += levels_table(rows)
    ev = comparison["eval"]
    lines += ["", f"Held-out: {ev['benchmark']} {ev['split']} (problems {ev['problems_sha256']}), {ev['n_samples']} "
                  f"sample(s) per problem, the same for every row."]
    return "\n".join(lines) + "\n"

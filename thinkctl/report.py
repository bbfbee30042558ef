"""Summaries of graded records (pandas), written atomically as CSV and Markdown, and plots (matplotlib).

A summary row is one (benchmark, method, λ): sample count, accuracy, mean and median thinking tokens,
mean total tokens, and the thinking-token reduction against λ = 0 of the same benchmark and method.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from thinkctl.errors import DataFormatError
from thinkctl.io import atomic_write_text, iter_jsonl

REQUIRED_FIELDS = ("benchmark", "method", "problem_id", "lam", "correct", "thinking_tokens", "total_tokens")


def load_records(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Read per-sample records from JSONL files (or run directories holding ``results.jsonl``)."""
    frames = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            path = path / "results.jsonl"
        rows = list(iter_jsonl(path))
        if not rows:
            raise DataFormatError(f"{path} has no records")
        for i, row in enumerate(rows, start=1):
            missing = [f for f in REQUIRED_FIELDS if f not in row]
            if missing:
                raise DataFormatError(f"{path}: record {i} lacks field(s) {missing}")
        frames.append(pd.DataFrame(rows))
    if not frames:
        raise DataFormatError("no result files given")
    df = pd.concat(frames, ignore_index=True)
    df["lam"] = df["lam"].astype(float)
    df["correct"] = df["correct"].astype(bool)
    return df


def summarize(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (benchmark, method, λ) with accuracy and token statistics (see module docstring)."""
    grouped = records.groupby(["benchmark", "method", "lam"], sort=True)
    summary = grouped.agg(
        n=("correct", "size"),
        accuracy=("correct", "mean"),
        mean_thinking_tokens=("thinking_tokens", "mean"),
        median_thinking_tokens=("thinking_tokens", "median"),
        mean_total_tokens=("total_tokens", "mean"),
    ).reset_index()
    base = summary[summary["lam"] == 0.0].set_index(["benchmark", "method"])["mean_thinking_tokens"]
    keys = pd.MultiIndex.from_frame(summary[["benchmark", "method"]])
    baseline = base.reindex(keys).to_numpy()
    summary["token_reduction_pct"] = 100.0 * (1.0 - summary["mean_thinking_tokens"].to_numpy() / baseline)
    return summary


def to_markdown(summary: pd.DataFrame) -> str:
    """A Markdown table (no tabulate dependency) with accuracy in percent and tokens rounded."""
    cols = ["benchmark", "method", "lam", "n", "accuracy", "mean_thinking_tokens", "median_thinking_tokens",
            "mean_total_tokens", "token_reduction_pct"]
    header = ["benchmark", "method", "λ", "n", "accuracy %", "mean think tok", "median think tok",
              "mean total tok", "reduction vs λ=0 %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary[cols].itertuples(index=False):
        reduction = "" if pd.isna(row.token_reduction_pct) else f"{row.token_reduction_pct:.1f}"
        lines.append(
            f"| {row.benchmark} | {row.method} | {row.lam:g} | {row.n} | {100 * row.accuracy:.1f} | "
            f"{row.mean_thinking_tokens:.1f} | {row.median_thinking_tokens:.1f} | {row.mean_total_tokens:.1f} | {reduction} |"
        )
    return "\n".join(lines) + "\n"


def write_summary(summary: pd.DataFrame, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Atomically write ``summary.csv`` and ``summary.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    csv_path = atomic_write_text(out_dir / "summary.csv", summary.to_csv(index=False))
    md_path = atomic_write_text(out_dir / "summary.md", to_markdown(summary))
    return csv_path, md_path


def plot_sweep(summary: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Accuracy and mean thinking tokens against λ, one line per benchmark/method, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax_acc, ax_tok) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for (benchmark, method), group in summary.groupby(["benchmark", "method"]):
        group = group.sort_values("lam")
        label = f"{benchmark} / {method}"
        ax_acc.plot(group["lam"], 100 * group["accuracy"], marker="o", label=label)
        ax_tok.plot(group["lam"], group["mean_thinking_tokens"], marker="o", label=label)
    ax_acc.set(xlabel="λ (0 = reference, 1 = aligned)", ylabel="accuracy (%)", title="Accuracy vs λ", ylim=(0, 100))
    ax_tok.set(xlabel="λ (0 = reference, 1 = aligned)", ylabel="mean thinking tokens", title="Thinking length vs λ")
    for ax in (ax_acc, ax_tok):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path

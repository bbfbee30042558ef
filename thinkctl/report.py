"""Summaries of graded records (pandas), written atomically as CSV and Markdown, and plots (matplotlib).

Records are read with :func:`thinkctl.records.load_records` and grouped with
:func:`thinkctl.records.aggregate`; this module decides only what to group by and how to show it.

A summary row is one (benchmark, method, λ): sample count, accuracy, mean and median thinking tokens,
mean total tokens, and the thinking-token reduction against λ = 0 of the same benchmark and method.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from thinkctl.io import atomic_write_text
from thinkctl.records import aggregate, load_records, record_files

def summarize(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (benchmark, method, λ) with accuracy and token statistics (see module docstring)."""
    summary = aggregate(records, ["benchmark", "method", "lam"])
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
    plt = _pyplot()
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
    return _savefig(fig, Path(path))


# ---------------------------------------------------------------- multi-run reports (accuracy/length trade-offs)

#: figure files written by :func:`build_report`
PARETO_PNG, LENGTHS_PNG, LEVELS_PNG = "pareto.png", "token_lengths.png", "accuracy_by_level.png"
METHOD_ORDER = ("fused", "routed", "student", "inra", "plain")
THINK_LABEL = "mean thinking tokens per query"


def point_label(method: str, lam: float, route_point: object) -> str:
    """The name of one trade-off point: ``λ=0.5`` for fixed-λ methods, the routing policy for routed ones."""
    if method == "routed" and isinstance(route_point, str):
        return route_point
    return f"λ={lam:g}"


def point_summary(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (benchmark, method, point) — a fixed λ, or a routing policy (its records mix λ values)."""
    df = records.assign(
        point=[point_label(m, lam, rp) for m, lam, rp in zip(records["method"], records["lam"], records["route_point"])],
        lam_key=records["lam"].where(records["method"] != "routed"),
    )
    keys = ["benchmark", "method", "point"]
    lam = df.groupby(keys, sort=False).agg(lam=("lam_key", "first"), mean_lam=("lam", "mean")).reset_index()
    summary = aggregate(df, keys, sort=False).merge(lam, on=keys)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    summary["_m"] = summary["method"].map(lambda m: order.get(m, len(order)))
    return summary.sort_values(["benchmark", "_m", "method", "lam", "mean_thinking_tokens"]).drop(columns="_m").reset_index(drop=True)


def _methods(df: pd.DataFrame) -> list[str]:
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(df["method"].unique(), key=lambda m: (order.get(m, len(order)), m))


def _savefig(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(points: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Accuracy against mean thinking tokens, one panel per benchmark and one line per method.

    Fixed-λ methods are lines through their λ points (labelled with λ); routed points are the budget
    policies (a line) and the threshold policy (a star). Up and to the left is better.
    """
    plt = _pyplot()
    benchmarks = sorted(points["benchmark"].unique())
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(6.2 * len(benchmarks), 4.8), constrained_layout=True, squeeze=False)
    for ax, benchmark in zip(axes[0], benchmarks):
        sub = points[points["benchmark"] == benchmark]
        for method in _methods(sub):
            g = sub[sub["method"] == method]
            if method == "routed":
                is_budget = g["point"].str.contains("budget=")
                for estimator, line in g[is_budget].groupby(g["point"].str.split(" ").str[0]):
                    line = line.sort_values("mean_thinking_tokens")
                    ax.plot(line["mean_thinking_tokens"], 100 * line["accuracy"], "D-", ms=5,
                            color="black" if estimator == "logistic" else "dimgray", label=f"routed, {estimator} (budget mode)")
                for row in g[~is_budget].itertuples():
                    color = "crimson" if row.point.startswith("logistic") else "darkorange"
                    ax.plot(row.mean_thinking_tokens, 100 * row.accuracy, "*", color=color, ms=15, label=f"routed ({row.point})")
                continue
            g = g.sort_values("lam")
            (line,) = ax.plot(g["mean_thinking_tokens"], 100 * g["accuracy"], "o-", label=f"{method} (fixed λ)")
            for row in g.itertuples():
                ax.annotate(f"{row.lam:g}", (row.mean_thinking_tokens, 100 * row.accuracy), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=line.get_color())
        ax.set(xlabel=THINK_LABEL, ylabel="accuracy (%)", title=f"{benchmark}: accuracy vs thinking (labels: λ)",
               ylim=(-3, 103))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return _savefig(fig, Path(path))


def plot_token_lengths(records: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Box plots of per-sample thinking tokens per λ, one panel per (benchmark, fixed-λ method)."""
    plt = _pyplot()
    fixed = records[records["method"] != "routed"]
    panels = [(b, m) for b in sorted(fixed["benchmark"].unique()) for m in _methods(fixed[fixed["benchmark"] == b])]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), constrained_layout=True, squeeze=False)
    for ax, (benchmark, method) in zip(axes.flat, panels):
        g = fixed[(fixed["benchmark"] == benchmark) & (fixed["method"] == method)]
        lams = sorted(g["lam"].unique())
        ax.boxplot([g.loc[g["lam"] == lam, "thinking_tokens"].to_numpy() for lam in lams],
                   tick_labels=[f"{lam:g}" for lam in lams], showmeans=True)
        ax.set(xlabel="λ (0 = reference, 1 = aligned)", ylabel="thinking tokens per response",
               title=f"{benchmark} / {method}: thinking length by λ")
        ax.grid(alpha=0.3, axis="y")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    return _savefig(fig, Path(path))


def plot_accuracy_by_level(records: pd.DataFrame, path: str | os.PathLike[str]) -> Path | None:
    """Accuracy per difficulty level, one panel per benchmark: a line per λ of its main method, routed in black.

    Returns None (and writes nothing) when no record has a level.
    """
    df = records[pd.to_numeric(records["level"], errors="coerce").notna()]
    if df.empty:
        return None
    plt = _pyplot()
    df = df.assign(level=df["level"].astype(int))
    benchmarks = sorted(df["benchmark"].unique())
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(6 * len(benchmarks), 4.4), constrained_layout=True, squeeze=False)
    for ax, benchmark in zip(axes[0], benchmarks):
        sub = df[df["benchmark"] == benchmark]
        fixed = sub[sub["method"] != "routed"]
        if len(fixed):
            main = max(_methods(fixed), key=lambda m: fixed.loc[fixed["method"] == m, "lam"].nunique())
            g = fixed[fixed["method"] == main]
            lams = sorted(g["lam"].unique())
            cmap = plt.get_cmap("viridis")
            for k, lam in enumerate(lams):
                acc = g[g["lam"] == lam].groupby("level")["correct"].mean()
                ax.plot(acc.index, 100 * acc.to_numpy(), "o-", color=cmap(k / max(len(lams) - 1, 1)), label=f"{main} λ={lam:g}")
        routed = sub[(sub["method"] == "routed") & ~sub["route_point"].astype(str).str.contains("budget=")]
        for point, g in routed.groupby("route_point"):
            acc = g.groupby("level")["correct"].mean()
            color = "crimson" if str(point).startswith("logistic") else "darkorange"
            ax.plot(acc.index, 100 * acc.to_numpy(), "*--", color=color, ms=12, label=f"routed ({point})")
        ax.set(xlabel="difficulty level", ylabel="accuracy (%)", title=f"{benchmark}: accuracy by difficulty", ylim=(-3, 103))
        ax.set_xticks(sorted(sub["level"].unique()))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    return _savefig(fig, Path(path))


def _report_tables(records: pd.DataFrame) -> dict[str, list[tuple[str, pd.DataFrame]]]:
    """Per benchmark: the trade-off table (one row per method and λ / routing policy) and accuracy by level."""
    points = point_summary(records)
    fixed = records[records["method"] != "routed"]
    reduction = (
        summarize(fixed).set_index(["benchmark", "method", "lam"])["token_reduction_pct"] if len(fixed) else pd.Series(dtype=float)
    )
    out: dict[str, list[tuple[str, pd.DataFrame]]] = {}
    for benchmark in sorted(points["benchmark"].unique()):
        p = points[points["benchmark"] == benchmark]
        table = pd.DataFrame({
            "method": p["method"],
            "λ / policy": p["point"],
            "n": p["n"],
            "accuracy %": (100 * p["accuracy"]).round(1),
            "mean thinking tokens": p["mean_thinking_tokens"].round(1),
            "median thinking tokens": p["median_thinking_tokens"].round(1),
            "mean λ": p["mean_lam"].round(2),
            "thinking reduction vs λ=0 %": [
                round(float(reduction.get((benchmark, m, lam), float("nan"))), 1) if m != "routed" else float("nan")
                for m, lam in zip(p["method"], p["lam"])
            ],
        })
        tables = [("Accuracy and thinking length per method and λ", table)]
        sub = records[(records["benchmark"] == benchmark) & pd.to_numeric(records["level"], errors="coerce").notna()]
        if len(sub):
            sub = sub.assign(level=sub["level"].astype(int), point=[
                f"{m} {point_label(m, lam, rp)}" for m, lam, rp in zip(sub["method"], sub["lam"], sub["route_point"])])
            by_level = 100 * sub.pivot_table(index="point", columns="level", values="correct", aggfunc="mean", sort=False)
            by_level = by_level[sorted(by_level.columns)].round(1)
            by_level.columns = [f"level {c} acc %" for c in by_level.columns]
            tables.append(("Accuracy (%) by difficulty level", by_level.reset_index().rename(columns={"point": "method λ / policy"})))
        out[benchmark] = tables
    return out


def _md_table(df: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        return "" if isinstance(v, float) and pd.isna(v) else f"{v:g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def build_report(
    run_dirs_or_files: Iterable[str | os.PathLike[str]], out_dir: str | os.PathLike[str], title: str = "thinkctl report"
) -> Path:
    """Gather sweep, student, InRa and routed records into ``report.md``/``report.html`` plus PNG plots.

    Accepts run directories (their ``results.jsonl``, and ``routed.jsonl`` when ``route eval`` wrote
    one) and JSONL files. Returns the path of ``report.md``; ``report.html`` and the figures sit beside it.
    """
    import html

    paths = record_files(run_dirs_or_files)
    records = load_records(paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    points = point_summary(records)
    atomic_write_text(out_dir / "points.csv", points.to_csv(index=False))
    figures = [("Accuracy vs thinking tokens (Pareto)", plot_pareto(points, out_dir / PARETO_PNG)),
               ("Thinking-token distribution per λ", plot_token_lengths(records, out_dir / LENGTHS_PNG))]
    levels = plot_accuracy_by_level(records, out_dir / LEVELS_PNG)
    if levels is not None:
        figures.append(("Accuracy by difficulty level", levels))
    tables = _report_tables(records)

    sources = ", ".join(f"`{p}`" for p in paths)
    md = [f"# {title}", "", f"{len(records)} records from {sources}.", "",
          "Thinking tokens are the tokens inside `<think>…</think>` (all generated tokens when thinking never closed). "
          "λ = 0 is the reference model, λ = 1 the aligned model; routed rows mix λ per query.", ""]
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{len(records)} records from {html.escape(', '.join(map(str, paths)))}.</p>"]
    for benchmark, items in tables.items():
        md += [f"## {benchmark}", ""]
        body.append(f"<h2>{html.escape(benchmark)}</h2>")
        for caption, df in items:
            md += [f"### {caption}", "", _md_table(df), ""]
            body += [f"<h3>{html.escape(caption)}</h3>", df.to_html(index=False, na_rep="", border=0, classes="t")]
    md += ["## Figures", ""]
    body.append("<h2>Figures</h2>")
    for caption, fig in figures:
        md += [f"### {caption}", "", f"![{caption}]({fig.name})", ""]
        body += [f"<h3>{html.escape(caption)}</h3>", f'<img src="{html.escape(fig.name)}" alt="{html.escape(caption)}">']
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table.t{border-collapse:collapse;margin:1em 0}"
             ".t td,.t th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    atomic_write_text(out_dir / "report.html", page)
    return atomic_write_text(out_dir / "report.md", "\n".join(md))

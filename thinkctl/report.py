"""Summaries of graded records (pandas), written atomically as CSV and Markdown, and plots (matplotlib).

Records are read with :func:`thinkctl.records.load_records` and grouped with
:func:`thinkctl.records.aggregate`; this module decides what to group by, what to compare against and
how to show it.

A summary row is one group of samples (a benchmark, method and λ, or a routing policy): sample count,
accuracy, token statistics, the share of samples that hit the token limit, and two things that make
the numbers trustworthy on real benchmarks:

* **accuracy is avg@k with a 95% interval**: each problem's k samples are averaged, then problems are
  resampled (:func:`thinkctl.stats.bootstrap_mean`), so a 30-problem benchmark shows how little a few
  points mean;
* **thinking reduction is against the reference on the same problems**: the reference is the model
  as it is, i.e. the fused pair at λ = 0 of the same benchmark (for an InRa dial its own λ = 0, the
  base); TrRa students and routed policies are measured against it too, never against themselves.
  Per-problem means are compared on the problems both have, so a partial run cannot flatter a method.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from thinkctl.io import atomic_write_text
from thinkctl.records import BASE_AT_ZERO, aggregate, load_records, model_key, record_files
from thinkctl.stats import bootstrap_mean

#: methods whose λ = 0 is a reference model as it is (a pair's reference, an InRa checkpoint's base)
REFERENCE_METHODS = ("fused", "inra", "plain")


def reference_records(records: pd.DataFrame, benchmark: str, method: str, model: str, bases: Iterable[object],
                      models: Iterable[str] = ()) -> tuple[str, pd.DataFrame]:
    """The records a group's thinking reduction is measured against, and their name (``fused λ=0``).

    ``records`` carry a ``model_key`` column (:func:`thinkctl.records.model_key`). A group whose records name their
    ``base`` (a pair's reference, the reference a TrRa student was distilled from) is measured against that model's
    λ = 0, whichever run recorded it: a student against its base is the paper's headline reduction. Without a base
    (records written before thinkctl kept one), a dial (fused, inra, plain) is measured against its own λ = 0, and
    any other method (a TrRa student, routed policies) against the λ = 0 of the dial it came from when the records
    say so (routed records keep the swept ``model``), else the fused pair's λ = 0 of the same benchmark.
    """
    zero = records[(records["benchmark"] == benchmark) & (records["lam"] == 0.0) & records["method"].isin(REFERENCE_METHODS)
                   & records["control"].isna()]  # a budget's or a schedule's λ = 0 records are not the model as it is
    base = next((b for b in bases if isinstance(b, str) and b), None)
    if base is not None:
        same = zero[zero["model_key"] == base]
        candidates = [same[same["method"] == method], same[same["method"] == "fused"], same]
    elif method in REFERENCE_METHODS:
        own = zero[zero["method"] == method]
        candidates = [own[own["model_key"] == model], own]
    else:
        candidates = [zero[zero["model"].isin(set(models))], zero[zero["method"] == "fused"], zero]
    ref = next((c for c in candidates if len(c)), zero.iloc[:0] if base is not None else zero)
    if not len(ref):
        return "", ref
    return f"{ref['method'].iat[0]} λ=0" + (f" of {base}" if base is not None else ""), ref


def _per_group(records: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Per group: problems, samples per problem (k, the fewest), the avg@k accuracy interval, and the
    thinking reduction vs the reference (see module docstring)."""
    rows = []
    for key, g in records.groupby(list(keys), sort=False, dropna=False):
        per_problem = g.groupby("problem_id").agg(correct=("correct", "mean"), k=("correct", "size"),
                                                  thinking=("thinking_tokens", "mean"))
        ci = bootstrap_mean(per_problem["correct"].to_numpy())
        label, ref = reference_records(records, g["benchmark"].iat[0], g["method"].iat[0], g["model_key"].iat[0],
                                       g["base"].unique(), g["model"].unique())
        base = ref.groupby("problem_id")["thinking_tokens"].mean()
        shared = per_problem.index.intersection(base.index)
        base_mean = base[shared].mean() if len(shared) else float("nan")
        reduction = 100.0 * (1.0 - per_problem.loc[shared, "thinking"].mean() / base_mean) if base_mean else float("nan")
        rows.append((*key, len(per_problem), int(per_problem["k"].min()), ci.mean, ci.low, ci.high, reduction, label,
                     len(shared)))
    columns = [*keys, "problems", "k", "avg_at_k", "accuracy_low", "accuracy_high", "token_reduction_pct", "reference",
               "shared_problems"]
    return pd.DataFrame(rows, columns=columns)


def group_summary(records: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """:func:`thinkctl.records.aggregate` per group of ``keys``, with intervals and reductions (module
    docstring); ``accuracy`` is avg@k (the per-sample mean whenever every problem has k samples)."""
    if "model_key" not in records:
        records = records.assign(model_key=model_key(records))
    extra = _per_group(records, keys)
    summary = aggregate(records, keys, sort=False).merge(extra, on=list(keys), how="left")
    return summary.assign(accuracy=summary.pop("avg_at_k"))


def summarize(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (benchmark, method, λ) with accuracy and token statistics (see module docstring)."""
    keys = ["benchmark", "method", "lam"]
    return group_summary(records, keys).sort_values(keys).reset_index(drop=True)


def _interval(low: float, high: float) -> str:
    return "" if pd.isna(low) else f"[{100 * low:.1f}, {100 * high:.1f}]"


def _reference_cell(reference: str, shared: int) -> str:
    return f"{reference} ({shared} problems)" if reference else "none in these records"


def to_markdown(summary: pd.DataFrame) -> str:
    """A Markdown table (no tabulate dependency) with accuracy in percent and tokens rounded."""
    header = ["benchmark", "method", "λ", "n", "accuracy %", "mean think tok", "median think tok", "mean total tok",
              "hit limit %", "problems × k", "avg@k 95% CI", "reduction vs reference %", "reference (shared problems)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary.itertuples(index=False):
        reduction = "" if pd.isna(row.token_reduction_pct) else f"{row.token_reduction_pct:.1f}"
        lines.append(
            f"| {row.benchmark} | {row.method} | {row.lam:g} | {row.n} | {100 * row.accuracy:.1f} | "
            f"{row.mean_thinking_tokens:.1f} | {row.median_thinking_tokens:.1f} | {row.mean_total_tokens:.1f} | "
            f"{100 * row.hit_limit:.1f} | {row.problems} × {row.k} | {_interval(row.accuracy_low, row.accuracy_high)} | "
            f"{reduction} | {_reference_cell(row.reference, row.shared_problems)} |"
        )
    return "\n".join(lines) + "\n"


def write_summary(summary: pd.DataFrame, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Atomically write ``summary.csv`` and ``summary.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    csv_path = atomic_write_text(out_dir / "summary.csv", summary.to_csv(index=False))
    md_path = atomic_write_text(out_dir / "summary.md", to_markdown(summary))
    return csv_path, md_path


def accuracy_limits(lows: Iterable[float], highs: Iterable[float], min_span: float = 10.0) -> tuple[float, float]:
    """A y range (in %) fitted to accuracy intervals (fractions): every interval inside with a margin,
    at least ``min_span`` points tall, never past 0–100 by more than the marker's margin.

    A fixed 0–100 axis flattens the differences that matter: when every point lies between 93 and
    100%, the plot should span 93–100, not 0–100.
    """
    lo, hi = 100 * np.nanmin(list(lows)), 100 * np.nanmax(list(highs))
    pad = max(hi - lo, min_span) * 0.1
    bottom, top = max(lo - pad, -1.0), min(hi + pad, 101.0)
    if top - bottom < min_span:  # widen towards whichever side has room
        bottom, top = (max(top - min_span, -1.0), top) if top >= 100 else (bottom, min(bottom + min_span, 101.0))
    return bottom, top


def _errorbar(ax, x, rows: pd.DataFrame, fmt: str, **kwargs):
    """Accuracy (%) with its avg@k interval as error bars; returns the line."""
    acc = 100 * rows["accuracy"].to_numpy()
    yerr = np.vstack([acc - 100 * rows["accuracy_low"].to_numpy(), 100 * rows["accuracy_high"].to_numpy() - acc])
    container = ax.errorbar(x, acc, yerr=np.nan_to_num(yerr), fmt=fmt, capsize=3, elinewidth=1, **kwargs)
    return container.lines[0]


def plot_sweep(summary: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Accuracy (with 95% intervals), mean thinking tokens and the share of samples that hit the token
    limit against λ, one line per benchmark/method, saved as PNG."""
    plt = _pyplot()
    fig, (ax_acc, ax_tok, ax_cut) = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    for (benchmark, method), group in summary.groupby(["benchmark", "method"]):
        group = group.sort_values("lam")
        label = f"{benchmark} / {method}"
        _errorbar(ax_acc, group["lam"], group, "o-", label=label)
        ax_tok.plot(group["lam"], group["mean_thinking_tokens"], marker="o", label=label)
        ax_cut.plot(group["lam"], 100 * group["hit_limit"], marker="o", label=label)
    ax_acc.set(xlabel="λ (0 = reference, 1 = aligned)", ylabel="accuracy (%), avg@k with 95% CI", title="Accuracy vs λ",
               ylim=accuracy_limits(summary["accuracy_low"], summary["accuracy_high"]))
    ax_tok.set(xlabel="λ (0 = reference, 1 = aligned)", ylabel="mean thinking tokens", title="Thinking length vs λ")
    ax_cut.set(xlabel="λ (0 = reference, 1 = aligned)", ylabel="samples that hit the token limit (%)",
               title="Cut off by max_new_tokens", ylim=(-2, max(10.0, 100 * summary["hit_limit"].max() * 1.15)))
    for ax in (ax_acc, ax_tok, ax_cut):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _savefig(fig, Path(path))


def place_labels(
    anchors: Sequence[tuple[float, float]], sizes: Sequence[tuple[float, float]], gap: float = 5.0, marker: float = 4.0
) -> list[tuple[float, float] | None]:
    """Offsets for labels next to points so that no two labels overlap and none covers a marker.

    ``anchors`` are the points and ``sizes`` the labels' (width, height), all in one unit (points on
    the figure). Each label tries the four corners around its point, then above and below; a label
    that fits nowhere gets None and is left out: a crowded plot shows fewer labels, never a smear.
    """
    boxes = [(x - marker, y - marker, x + marker, y + marker) for x, y in anchors]
    offsets: list[tuple[float, float] | None] = []
    for (x, y), (w, h) in zip(anchors, sizes):
        tries = [(gap, gap), (gap, -gap - h), (-gap - w, gap), (-gap - w, -gap - h), (-w / 2, gap + 2), (-w / 2, -gap - h - 2)]
        for dx, dy in tries:
            box = (x + dx, y + dy, x + dx + w, y + dy + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
                boxes.append(box)
                offsets.append((dx, dy))
                break
        else:
            offsets.append(None)
    return offsets


def _label_points(ax, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str], colors: Sequence[str], fontsize: float = 7) -> None:
    """Annotate points with :func:`place_labels`' offsets (the axes' layout must be final: limits set, drawn once)."""
    to_points = 72.0 / ax.figure.dpi
    anchors = [tuple(v * to_points for v in ax.transData.transform((x, y))) for x, y in zip(xs, ys)]
    sizes = [(0.62 * fontsize * len(t) + 1, fontsize) for t in texts]
    for (x, y), text, color, offset in zip(zip(xs, ys), texts, colors, place_labels(anchors, sizes)):
        if offset is not None:
            ax.annotate(text, (x, y), textcoords="offset points", xytext=offset, fontsize=fontsize, color=color,
                        va="bottom", ha="left")


# ---------------------------------------------------------------- multi-run reports (accuracy/length trade-offs)

#: figure files written by :func:`build_report`
PARETO_PNG, LENGTHS_PNG, LEVELS_PNG = "pareto.png", "token_lengths.png", "accuracy_by_level.png"
METHOD_ORDER = ("fused", "routed", "student", "inra", "plain")
THINK_LABEL = "mean thinking tokens per query"


def point_label(method: str, lam: float, route_point: object, control: object = None, budget: object = None) -> str:
    """The name of one trade-off point: ``λ=0.5`` for fixed-λ methods, the routing policy for routed ones,
    the control and its budget (``soft B=50``, ``target N=60``) for records a thinking control acted on."""
    if method == "routed" and isinstance(route_point, str):
        return route_point
    if isinstance(control, str):
        shown = "?" if budget is None or pd.isna(budget) else f"{budget:g}"
        return f"{control} {'N' if control == 'target' else 'B'}={shown} (λ={lam:g})"
    return f"λ={lam:g}"


def _point_labels(records: pd.DataFrame) -> list[str]:
    return [point_label(m, lam, rp, c, b) for m, lam, rp, c, b in zip(
        records["method"], records["lam"], records["route_point"], records["control"], records["thinking_budget"])]


def point_summary(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (benchmark, method, model, point) — a fixed λ, or a routing policy (its records mix λ values) —
    with the statistics of :func:`group_summary`. Models are kept apart by :func:`thinkctl.records.model_key`: the
    students of two rounds are two rows, the reference their pairs share is one."""
    df = records.assign(
        point=_point_labels(records),
        lam_key=records["lam"].where(records["method"] != "routed"),
        model_key=model_key(records),
    )
    keys = ["benchmark", "method", "model_key", "point"]
    lam = df.groupby(keys, sort=False, dropna=False).agg(
        lam=("lam_key", "first"), mean_lam=("lam", "mean"), base=("base", "first"), model=("model", "first"),
        control=("control", "first")).reset_index()
    summary = group_summary(df, keys).merge(lam, on=keys)
    summary["line"] = _lines(summary)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    summary["_m"] = summary["method"].map(lambda m: order.get(m, len(order)))
    return summary.sort_values(["benchmark", "_m", "method", "line", "lam", "mean_thinking_tokens"]).drop(columns="_m").reset_index(drop=True)


def _lines(points: pd.DataFrame) -> pd.Series:
    """The dial each point belongs to: its model, except that a pair's λ = 0 (its reference alone) joins the pair's
    line when only one pair of the benchmark has that reference; with several it stays one shared point."""
    line = points["model_key"].copy()
    for i, row in points[points["method"].isin(BASE_AT_ZERO) & (points["lam"] == 0.0)].iterrows():
        pairs = points[(points["benchmark"] == row["benchmark"]) & (points["method"] == row["method"])
                       & (points["base"] == row["model_key"]) & (points["model_key"] != row["model_key"])]["model_key"].unique()
        if len(pairs) == 1:
            line[i] = pairs[0]
    return line


def shows_models(points: pd.DataFrame) -> bool:
    """Whether tables need a model column: more than one dial (:func:`_lines`) per method somewhere."""
    return bool((points.groupby(["benchmark", "method"])["line"].nunique() > 1).any())


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

    Fixed-λ methods are lines through their λ points (labelled with λ where a label fits); routed
    points are the budget policies (a line) and the threshold policy (a star). Every point carries its
    avg@k 95% interval, and the accuracy axis is fitted to them. Up and to the left is better.
    """
    plt = _pyplot()
    benchmarks = sorted(points["benchmark"].unique())
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(6.2 * len(benchmarks), 4.8), constrained_layout=True, squeeze=False)
    labels: list[tuple[object, pd.DataFrame, str]] = []
    for ax, benchmark in zip(axes[0], benchmarks):
        sub = points[points["benchmark"] == benchmark]
        for method in _methods(sub):
            g = sub[sub["method"] == method]
            if method == "routed":
                is_budget = g["point"].str.contains("budget=")
                for estimator, line in g[is_budget].groupby(g["point"].str.split(" ").str[0]):
                    line = line.sort_values("mean_thinking_tokens")
                    _errorbar(ax, line["mean_thinking_tokens"], line, "D-", ms=5,
                              color="black" if estimator == "logistic" else "dimgray", label=f"routed, {estimator} (budget mode)")
                for _, row in g[~is_budget].iterrows():
                    if row["point"] == "oracle":  # cheapest right λ per query: the ceiling, not a policy
                        _errorbar(ax, [row["mean_thinking_tokens"]], row.to_frame().T, "P", color="forestgreen", ms=12,
                                  label="oracle λ per query (ceiling)")
                        continue
                    color = "crimson" if row["point"].startswith("logistic") else "darkorange"
                    _errorbar(ax, [row["mean_thinking_tokens"]], row.to_frame().T, "*", color=color, ms=15,
                              label=f"routed ({row['point']})")
                continue
            for control, line in g[g["control"].notna()].groupby("control"):
                line = line.sort_values("mean_thinking_tokens")
                _errorbar(ax, line["mean_thinking_tokens"], line, "s--", ms=4, label=f"{method}, {control} control (budgets)")
            g = g[g["control"].isna()]
            if g.empty:
                continue
            dials = list(g.groupby("line", sort=False))
            shared = g[(g["lam"] == 0.0) & (g["line"] == g["model_key"]) & g["model_key"].isin(g["base"])]
            for name, d in dials:
                if len(dials) > 1 and name in set(shared["model_key"]):
                    continue  # a reference several pairs share: drawn at the start of each of their lines
                d = pd.concat([shared[shared["model_key"].isin(d["base"])], d]).drop_duplicates("point").sort_values("lam")
                tag = f"{method} (fixed λ)" if len(dials) == 1 else f"{method}: {name}"
                line = _errorbar(ax, d["mean_thinking_tokens"], d, "o-", label=tag)
                labels.append((ax, d, line.get_color()))
        ax.set(xlabel=THINK_LABEL, ylabel="accuracy (%), avg@k with 95% CI",
               title=f"{benchmark}: accuracy vs thinking (labels: λ)",
               ylim=accuracy_limits(sub["accuracy_low"], sub["accuracy_high"]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.draw_without_rendering()  # final layout first: labels are placed in figure points
    for ax in axes[0]:
        mine = [(g, color) for a, g, color in labels if a is ax]
        _label_points(ax, [x for g, _ in mine for x in g["mean_thinking_tokens"]], [100 * y for g, _ in mine for y in g["accuracy"]],
                      [f"{lam:g}" for g, _ in mine for lam in g["lam"]], [color for g, color in mine for _ in range(len(g))])
    return _savefig(fig, Path(path))


def plot_token_lengths(records: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Box plots of per-sample thinking tokens per λ, one panel per (benchmark, fixed-λ method); a λ
    whose samples hit the token limit says how many under its tick (those lengths are the cap, not a choice)."""
    plt = _pyplot()
    fixed = records[(records["method"] != "routed") & records["control"].isna()]
    panels = [(b, m) for b in sorted(fixed["benchmark"].unique()) for m in _methods(fixed[fixed["benchmark"] == b])]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), constrained_layout=True, squeeze=False)
    for ax, (benchmark, method) in zip(axes.flat, panels):
        g = fixed[(fixed["benchmark"] == benchmark) & (fixed["method"] == method)]
        lams = sorted(g["lam"].unique())
        cut = {lam: 100 * (g.loc[g["lam"] == lam, "finish_reason"] == "length").mean() for lam in lams}
        ax.boxplot([g.loc[g["lam"] == lam, "thinking_tokens"].to_numpy() for lam in lams], showmeans=True,
                   tick_labels=[f"{lam:g}" + (f"\n{cut[lam]:.2g}% cut" if cut[lam] else "") for lam in lams])
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
        fixed = sub[(sub["method"] != "routed") & sub["control"].isna()]
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


# ---------------------------------------------------------------- anytime curves (accuracy vs thinking budget per control)

ANYTIME_PNG = "anytime.png"
#: the order curves are listed in: budget controls first, then the references they are measured against
CURVE_ORDER = ("hard", "bias", "soft", "target", "fixed")


def area_under_curve(budgets: Sequence[float], accuracies: Sequence[float], lo: float, hi: float) -> float:
    """The mean of a piecewise-linear accuracy curve over the budget range [lo, hi]: ∫ acc db / (hi − lo).

    Normalised by the range, so it is an accuracy (1 = right at every budget) and curves over one range
    compare directly; NaN when the points do not span the range (the curve is not known over all of it).
    """
    x, y = np.asarray(budgets, dtype=np.float64), np.asarray(accuracies, dtype=np.float64)
    order = np.argsort(x)
    x, y = x[order], y[order]
    if not len(x) or x[0] > lo or x[-1] < hi:
        return float("nan")
    if hi == lo:
        return float(np.interp(lo, x, y))
    grid = np.unique(np.concatenate([[lo, hi], x[(x > lo) & (x < hi)]]))
    return float(np.trapezoid(np.interp(grid, x, y), grid) / (hi - lo))


def _route_budget(point: object) -> float:
    text = str(point)
    return float(text.split("budget=")[1].split()[0]) if "budget=" in text else float("nan")


def anytime_points(records: pd.DataFrame) -> pd.DataFrame:
    """Accuracy against thinking budget: one row per (benchmark, curve, budget).

    Curves: each thinking control at its budgets (target mode at its targets); ``fixed``, the envelope
    of the fixed-λ dial, at each budget the most accurate λ whose mean thinking fits in it (an oracle
    that picks λ per budget on the test set itself, accuracy 0 where no λ fits); and ``router``, the
    routed budget-mode policies at their mean budget. Each point keeps its avg@k 95% interval.
    """
    controlled = records[records["control"].notna()]
    columns = ["benchmark", "curve", "budget", "lam", "n", "accuracy", "accuracy_low", "accuracy_high", "mean_thinking_tokens"]
    if controlled.empty:
        return pd.DataFrame(columns=columns)
    parts = []
    several = controlled.groupby("benchmark")["method"].nunique().to_dict()
    for (benchmark, method, control, budget), g in controlled.groupby(
            ["benchmark", "method", "control", "thinking_budget"], sort=False):
        row = group_summary(g, ["benchmark"]).iloc[0]
        curve = f"{control} ({method})" if several[benchmark] > 1 else control
        parts.append({**row[columns[4:]].to_dict(), "benchmark": benchmark, "curve": curve, "budget": float(budget),
                      "lam": float(g["lam"].iat[0])})
    grid = controlled.groupby("benchmark")["thinking_budget"].unique()
    fixed = records[records["control"].isna() & records["method"].isin(REFERENCE_METHODS)]
    for (benchmark, method), g in fixed.groupby(["benchmark", "method"]):
        if benchmark not in grid.index:
            continue
        per_lam = group_summary(g, ["lam"])
        for budget in sorted(grid[benchmark]):
            fits = per_lam[per_lam["mean_thinking_tokens"] <= budget]
            best = fits.sort_values(["accuracy", "mean_thinking_tokens"], ascending=[False, True]).head(1)
            row = ({k: best[k].iat[0] for k in columns[3:]} if len(best) else
                   {"lam": float("nan"), "n": 0, "accuracy": 0.0, "accuracy_low": float("nan"),
                    "accuracy_high": float("nan"), "mean_thinking_tokens": float("nan")})
            curve = f"fixed ({method})" if several.get(benchmark, 1) > 1 or fixed["method"].nunique() > 1 else "fixed"
            parts.append({**row, "benchmark": benchmark, "curve": curve, "budget": float(budget)})
    routed = records[(records["method"] == "routed") & records["route_point"].astype(str).str.contains("budget=")]
    for (benchmark, point), g in routed.groupby(["benchmark", "route_point"]):
        row = group_summary(g, ["benchmark"]).iloc[0]
        parts.append({**row[columns[4:]].to_dict(), "benchmark": benchmark, "curve": f"router ({str(point).split()[0]})",
                      "budget": _route_budget(point), "lam": float(g["lam"].mean())})
    out = pd.DataFrame(parts, columns=columns)
    order = {c: i for i, c in enumerate(CURVE_ORDER)}
    out["_c"] = out["curve"].map(lambda c: order.get(c.split()[0], len(order)))
    return out.sort_values(["benchmark", "_c", "curve", "budget"]).drop(columns="_c").reset_index(drop=True)


def anytime_areas(points: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark and curve, the area under accuracy vs budget over the benchmark's control budget
    range, normalised by the range (:func:`area_under_curve`)."""
    rows = []
    for benchmark, sub in points.groupby("benchmark", sort=False):
        controls = sub[~sub["curve"].str.startswith(("fixed", "router"))]
        lo, hi = controls["budget"].min(), controls["budget"].max()
        for curve, g in sub.groupby("curve", sort=False):
            rows.append({"benchmark": benchmark, "curve": curve, "budget range": f"{lo:g}–{hi:g}", "points": len(g),
                         "area (mean accuracy %)": round(100 * area_under_curve(g["budget"], g["accuracy"], lo, hi), 1),
                         "per-prompt router": curve.startswith("router")})
    return pd.DataFrame(rows)


def plot_anytime(points: pd.DataFrame, areas: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Accuracy (with 95% intervals) against thinking budget, one panel per benchmark, one line per control;
    each legend entry carries the curve's area (mean accuracy over the budget range)."""
    plt = _pyplot()
    benchmarks = list(points["benchmark"].unique())
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(6.2 * len(benchmarks), 4.8), constrained_layout=True, squeeze=False)
    for ax, benchmark in zip(axes[0], benchmarks):
        sub = points[points["benchmark"] == benchmark]
        area = areas[areas["benchmark"] == benchmark].set_index("curve")["area (mean accuracy %)"]
        for curve, g in sub.groupby("curve", sort=False):
            g = g.sort_values("budget")
            style = "D:" if curve.startswith("router") else "o--" if curve.startswith("fixed") else "o-"
            _errorbar(ax, g["budget"], g, style, ms=5, label=f"{curve} (area {area.get(curve, float('nan')):.1f})")
        ax.set(xlabel="thinking budget (tokens; target mode: its target; router: its mean budget)",
               ylabel="accuracy (%), avg@k with 95% CI", title=f"{benchmark}: anytime accuracy per control",
               ylim=accuracy_limits(sub["accuracy_low"].fillna(sub["accuracy"]), sub["accuracy_high"].fillna(sub["accuracy"])))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return _savefig(fig, Path(path))


def _accuracy_cell(row: pd.Series) -> str:
    return f"{100 * row['accuracy']:.1f} {_interval(row['accuracy_low'], row['accuracy_high'])}".strip()


def _report_tables(points: pd.DataFrame, records: pd.DataFrame) -> dict[str, list[tuple[str, pd.DataFrame]]]:
    """Per benchmark: the trade-off table (one row per method and λ / routing policy) and accuracy by level."""
    out: dict[str, list[tuple[str, pd.DataFrame]]] = {}
    for benchmark in sorted(points["benchmark"].unique()):
        p = points[points["benchmark"] == benchmark]
        table = pd.DataFrame({
            "method": p["method"],
            **({"model": p["model_key"]} if shows_models(points) else {}),
            "λ / policy": p["point"],
            "problems × k": [f"{n} × {k}" for n, k in zip(p["problems"], p["k"])],
            "accuracy % (avg@k)": (100 * p["accuracy"]).round(1),
            "95% CI": [_interval(lo, hi) for lo, hi in zip(p["accuracy_low"], p["accuracy_high"])],
            "mean thinking tokens": p["mean_thinking_tokens"].round(1),
            "median thinking tokens": p["median_thinking_tokens"].round(1),
            "hit limit %": (100 * p["hit_limit"]).round(1),
            "mean λ": p["mean_lam"].round(2),
            "thinking reduction vs reference %": p["token_reduction_pct"].round(1),
            "reference (shared problems)": [_reference_cell(r, n) for r, n in zip(p["reference"], p["shared_problems"])],
        })
        tables = [("Accuracy and thinking length per method and λ", table)]
        sub = records[(records["benchmark"] == benchmark) & pd.to_numeric(records["level"], errors="coerce").notna()]
        if len(sub):
            named = model_key(sub) if shows_models(points) else pd.Series("", index=sub.index)
            sub = sub.assign(level=sub["level"].astype(int), point=[
                f"{m} {p}" + (f" ({k})" if k else "") for m, p, k in zip(sub["method"], _point_labels(sub), named)])
            by_level = 100 * sub.pivot_table(index="point", columns="level", values="correct", aggfunc="mean", sort=False)
            by_level = by_level[sorted(by_level.columns)].round(1)
            by_level.columns = [f"level {c} acc %" for c in by_level.columns]
            tables.append(("Accuracy (%) by difficulty level", by_level.reset_index().rename(columns={"point": "method λ / policy"})))
        out[benchmark] = tables
    return out


def across_benchmarks(points: pd.DataFrame) -> pd.DataFrame:
    """One row per method and λ / policy: each benchmark's avg@k accuracy [95% CI], thinking reduction
    vs its reference and share of samples that hit the token limit (a reduction measured on capped
    lengths is no reduction), then the mean of the reductions over the benchmarks that have one (the
    headline number of papers that report several benchmarks)."""
    benchmarks = sorted(points["benchmark"].unique())
    rows = []
    models = shows_models(points)
    for (method, model, point), g in points.groupby(["method", "model_key", "point"], sort=False, dropna=False):
        by_benchmark = g.set_index("benchmark")
        row: dict[str, object] = {"method": method, **({"model": model} if models else {}), "λ / policy": point}
        for b in benchmarks:
            has = b in by_benchmark.index
            row[f"{b} accuracy %"] = _accuracy_cell(by_benchmark.loc[b]) if has else ""
            row[f"{b} reduction %"] = round(float(by_benchmark.loc[b, "token_reduction_pct"]), 1) if has else float("nan")
            row[f"{b} hit limit %"] = round(100 * float(by_benchmark.loc[b, "hit_limit"]), 1) if has else float("nan")
        reductions = g["token_reduction_pct"].dropna()
        row["mean reduction %"] = round(float(reductions.mean()), 1) if len(reductions) else float("nan")
        row["over benchmarks"] = len(reductions)
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(df: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        return "" if isinstance(v, float) and pd.isna(v) else f"{v:g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _relative_to(path: Path, out_dir: Path) -> str:
    """``path`` as seen from ``out_dir`` (where the report lies), so a report names its inputs the same on every
    machine it is copied to instead of leaking the absolute paths of the one it was made on."""
    try:
        return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return path.name


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
    sections = _report_tables(points, records)
    if len(sections) > 1:
        sections = {"All benchmarks": [("Accuracy and thinking reduction per benchmark, and the mean reduction",
                                        across_benchmarks(points))], **sections}
    anytime = anytime_points(records)
    if len(anytime):
        areas = anytime_areas(anytime)
        atomic_write_text(out_dir / "anytime.csv", anytime.to_csv(index=False))
        figures.insert(1, ("Anytime curves: accuracy vs thinking budget per control", plot_anytime(anytime, areas, out_dir / ANYTIME_PNG)))
        table = anytime.assign(**{
            "accuracy %": (100 * anytime["accuracy"]).round(1),
            "95% CI": [_interval(lo, hi) for lo, hi in zip(anytime["accuracy_low"], anytime["accuracy_high"])],
            "mean thinking tokens": anytime["mean_thinking_tokens"].round(1), "λ": anytime["lam"].round(3),
        })[["benchmark", "curve", "budget", "λ", "n", "accuracy %", "95% CI", "mean thinking tokens"]]
        sections = {"Anytime curves": [
            ("Area under accuracy vs thinking budget: the mean accuracy over the control budget range (trapezoids "
             "between budgets, divided by the range; blank where a curve does not span it)", areas),
            ("Accuracy vs thinking budget per control (fixed: the most accurate fixed λ whose mean thinking fits the "
             "budget, 0 where none does)", table)], **sections}

    shown = [_relative_to(p, out_dir) for p in paths]
    sources = ", ".join(f"`{p}`" for p in shown)
    intro = ("Accuracy is avg@k: each problem's k samples are averaged, then the problems; the 95% interval resamples "
             "problems (bootstrap). Thinking reduction is against the reference, on the problems both have: the fused "
             "pair at λ = 0 of the same benchmark (for an InRa dial its own λ = 0, the base model), for every method, "
             "TrRa students and routed policies included; the last column names it. Thinking tokens are the tokens "
             "inside `<think>…</think>`; a response whose thinking never closed has no answer (graded incorrect). "
             "'hit limit %' is the share of samples cut off by max_new_tokens: where it is high, a mean length is the "
             "cap in disguise. λ = 0 is the reference model, λ = 1 the aligned model; routed rows mix λ per query.")
    md = [f"# {title}", "", f"{len(records)} records from {sources}.", "", intro, ""]
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{len(records)} records from {html.escape(', '.join(shown))}.</p>",
            f"<p>{html.escape(intro).replace('`', '')}</p>"]
    for heading, items in sections.items():
        md += [f"## {heading}", ""]
        body.append(f"<h2>{html.escape(heading)}</h2>")
        for caption, df in items:
            md += [f"### {caption}", "", markdown_table(df), ""]
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

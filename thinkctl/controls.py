"""Thinking controls side by side: each (control, budget) of a control grid as its own run, and one summary.

``thinkctl sweep --controls hard,soft,bias,target,fixed --budgets 20,50,130 --out DIR`` runs every
budgeted control at every budget (target mode at every target) as an ordinary single-control sweep in
``DIR/<control>-<budget>/``, and the fixed-λ grid in ``DIR/fixed/``. Each sub-run is a plain run
directory: its own ``run.json`` (its control and budget are part of its sampling settings), records
keyed as always, resumed as always, so a killed comparison resumes where it stopped and a finished
(control, budget) is never redone. ``DIR/summary.csv`` then has one row per (control, budget, λ):
accuracy with its interval, mean thinking tokens, the share the hard backstop forced, the share over
budget and (target mode) within ±15% of the target, and the mean λ thinking ended with.

The controls' settings are resolved here once: ``fast_lambda`` defaults to the effort table's ``low``
when ``control_effort`` names one, and target mode's start λ is read off the table's calibrated
λ → thinking-tokens curve (:func:`thinkctl.decoding.lambda_for_length`), else ``control_lambda``.
``control_effort: calibrate`` makes the table first: the λ grid on the benchmark's *train* split (same
limit) in ``DIR/calibration/``, so target mode is calibrated on other problems than it is scored on.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from thinkctl.decoding import lambda_for_length
from thinkctl.effort import EffortTable, effort_from_sweep, load_effort
from thinkctl.errors import ConfigError
from thinkctl.io import atomic_write_text
from thinkctl.records import load_records
from thinkctl.report import group_summary, markdown_table
from thinkctl.rollout import RolloutBackend
from thinkctl.runs import RESULTS_FILE, PendingRun, prepare_run
from thinkctl.sampling import SamplingConfig
from thinkctl.sweep import SweepConfig, run_settings, run_sweep, write_sweep_summary

log = logging.getLogger(__name__)

#: the order controls are listed in, in summaries and reports
CONTROL_ORDER = ("hard", "bias", "soft", "target", "fixed")
#: the band a target-mode response counts as landed in, as a fraction of its target
TARGET_BAND = 0.15
#: ``control_effort`` value that calibrates the length model on the train split first
CALIBRATE = "calibrate"


@dataclass(frozen=True)
class LengthModel:
    """What a calibrated effort table tells the controls: the fast λ (its ``low``) and λ → mean thinking."""

    fast_lambda: float | None
    curve: dict[float, float] | None

    @classmethod
    def load(cls, spec: str | None) -> LengthModel:
        """From ``control_effort`` (level=λ pairs, a table file or a sweep to calibrate on); empty without one."""
        if spec is None:
            return cls(None, None)
        if spec == CALIBRATE:
            raise ConfigError(f"control_effort: {CALIBRATE} is run by the control sweep (thinkctl sweep --controls); "
                              "elsewhere give level=λ pairs, an effort table (.json) or a sweep run directory")
        return cls.from_table(load_effort(spec))

    @classmethod
    def from_table(cls, table: EffortTable) -> LengthModel:
        curve = table.meta.get("curve")
        return cls(table.levels.get("low"), {float(k): float(v) for k, v in curve.items()} if curve else None)

    def start_lambda(self, target: int, fallback: float) -> float:
        """Target mode's start λ: where the curve predicts ``target`` thinking tokens, else ``fallback``."""
        if self.curve is None:
            return fallback
        return round(lambda_for_length(self.curve, target), 4)


def resolve_control(sampling: SamplingConfig, lam: float, model: LengthModel) -> tuple[SamplingConfig, float]:
    """``sampling`` with ``fast_lambda`` filled from the length model, and the request λ (target: its start λ)."""
    schedule = sampling.schedule
    if schedule.control is None:
        return sampling, lam
    if schedule.fast_lambda is None and model.fast_lambda is not None:
        schedule = dataclasses.replace(schedule, fast_lambda=model.fast_lambda)
    if schedule.thinking_target is not None:
        lam = model.start_lambda(schedule.thinking_target, lam)
    return dataclasses.replace(sampling, schedule=schedule), lam


@dataclass(frozen=True)
class ControlRun:
    """One cell of a control grid: the control, its budget (None: the fixed-λ grid) and the sweep it runs."""

    control: str
    budget: int | None
    cfg: SweepConfig

    @property
    def name(self) -> str:
        """The sub-run directory: ``<control>-<budget>``, or ``fixed``."""
        return "fixed" if self.budget is None else f"{self.control}-{self.budget}"


def control_runs(cfg: SweepConfig, model: LengthModel | None = None) -> list[ControlRun]:
    """Every (control, budget) of ``cfg``'s control grid as a single-control sweep config."""
    model = model or LengthModel.load(None if cfg.control_effort == CALIBRATE else cfg.control_effort)
    plain = dataclasses.replace(cfg, controls=[], budgets=[], targets=None)
    runs = []
    for control in cfg.controls:
        if control == "fixed":
            runs.append(ControlRun(control, None, plain))
            continue
        for budget in (cfg.targets or cfg.budgets) if control == "target" else cfg.budgets:
            schedule = dataclasses.replace(cfg.sampling.schedule, control=control,
                                           thinking_target=budget if control == "target" else None)
            sampling = dataclasses.replace(cfg.sampling, schedule=schedule,
                                           max_thinking_tokens=None if control == "target" else budget)
            sampling, lam = resolve_control(sampling, cfg.control_lambda, model)
            runs.append(ControlRun(control, budget, dataclasses.replace(plain, sampling=sampling, lambdas=[lam])))
    return runs


def run_control_sweep(
    cfg: SweepConfig,
    open_backend: Callable[[], RolloutBackend],
    out_dir: str | Path,
    *,
    method: str,
    model: str,
    models: Mapping[str, str] | None = None,
    overwrite: bool = False,
    base: str | None = None,
) -> Path:
    """Run ``cfg``'s control grid into ``out_dir`` (see module docstring); returns ``out_dir/summary.csv``.

    ``base`` is the records' reference model, as for :func:`thinkctl.sweep.run_sweep`.

    Every sub-run's settings are checked against its ``run.json`` before the models load, then one
    backend serves all of them.
    """
    if not cfg.controls:
        raise ConfigError("no controls to compare: set controls, e.g. hard,soft,fixed")
    out_dir = Path(out_dir)
    models = models or {"model": model}
    opened: list[RolloutBackend] = []

    def run(sub: SweepConfig, sub_dir: Path, problems: Mapping[str, list], pending: PendingRun) -> None:
        if not opened:
            opened.append(open_backend())
        pending.start()  # nothing is written before the backend has opened (a failed start leaves the directory as it was)
        for name, benchmark_problems in problems.items():
            run_sweep(opened[0], benchmark_problems, sub.lambdas, sub.sampling, sub_dir, benchmark=name, method=method,
                      model=model, n_samples=sub.n_samples, chunk_size=sub.chunk_size, prompt=sub.prompt, summarize=False,
                      base=base)
        write_sweep_summary(sub_dir)

    try:
        length_model = None
        if cfg.control_effort == CALIBRATE:
            calibration = dataclasses.replace(cfg, split="train", controls=[], budgets=[], targets=None, control_effort=None)
            problems = calibration.problems()
            if len(problems) != 1:
                raise ConfigError(f"control_effort: {CALIBRATE} calibrates on one benchmark, got {sorted(problems)}")
            settings, context = run_settings(calibration, problems, models, method=method, model=model)
            pending = prepare_run(out_dir / "calibration", settings, context, overwrite=overwrite)
            run(calibration, out_dir / "calibration", problems, pending)
            length_model = LengthModel.from_table(effort_from_sweep(out_dir / "calibration", method=method))
        problems = cfg.problems()
        runs = control_runs(cfg, length_model)
        pendings = []
        for sub in runs:
            settings, context = run_settings(sub.cfg, problems, models, method=method, model=model)
            pendings.append(prepare_run(out_dir / sub.name, settings, context, overwrite=overwrite))
        for sub, pending in zip(runs, pendings):
            run(sub.cfg, out_dir / sub.name, problems, pending)
    finally:
        for backend in opened:
            backend.close()
    return write_control_summary(out_dir, [out_dir / sub.name for sub in runs])


def control_label(records: pd.DataFrame) -> pd.Series:
    """Each record's control: the one it records, ``fixed`` where λ alone acted."""
    return records["control"].fillna("fixed").astype(str)


def control_summary(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (benchmark, method, control, budget, λ); see the module docstring for the columns."""
    df = records.assign(control=control_label(records), budget=pd.to_numeric(records["thinking_budget"], errors="coerce"))
    keys = ["benchmark", "method", "control", "budget", "lam"]
    budget = df["budget"]
    extra = df.assign(
        _forced=df["thinking_forced"].fillna(False).astype(bool),
        _over=(df["thinking_tokens"] > budget).where(budget.notna()),
        _within=((df["thinking_tokens"] - budget).abs() <= TARGET_BAND * budget).where(df["control"] == "target"),
        _final=pd.to_numeric(df["final_lam"], errors="coerce").fillna(df["lam"]),
    ).groupby(keys, sort=False, dropna=False).agg(
        forced=("_forced", "mean"), over_budget=("_over", "mean"), within_15pct=("_within", "mean"),
        mean_final_lam=("_final", "mean"),
    ).reset_index()
    summary = group_summary(df, keys).merge(extra, on=keys, how="left")
    order = {c: i for i, c in enumerate(CONTROL_ORDER)}
    summary = summary.assign(_c=summary["control"].map(lambda c: order.get(c, len(order))))
    summary = summary.sort_values(["benchmark", "method", "_c", "budget", "lam"]).drop(columns="_c")
    first = ["control", "budget", "benchmark", "method", "lam", "n", "accuracy", "accuracy_low", "accuracy_high",
             "mean_thinking_tokens"]
    return summary[first + [c for c in summary.columns if c not in first]].reset_index(drop=True)


def _markdown(summary: pd.DataFrame) -> str:
    table = pd.DataFrame({
        "control": summary["control"], "budget": summary["budget"].map(lambda b: "" if pd.isna(b) else f"{b:g}"),
        "benchmark": summary["benchmark"], "λ": summary["lam"].map("{:g}".format), "n": summary["n"],
        "accuracy %": (100 * summary["accuracy"]).round(1),
        "95% CI": [f"[{100 * lo:.1f}, {100 * hi:.1f}]" for lo, hi in zip(summary["accuracy_low"], summary["accuracy_high"])],
        "mean think tok": summary["mean_thinking_tokens"].round(1),
        "forced %": (100 * summary["forced"]).round(1), "over budget %": (100 * summary["over_budget"]).round(1),
        "within ±15% of target %": (100 * summary["within_15pct"]).round(1),
        "mean final λ": summary["mean_final_lam"].round(3),
    })
    return markdown_table(table) + "\n"


def write_control_summary(out_dir: str | Path, run_dirs: list[Path]) -> Path:
    """``summary.csv`` and ``summary.md`` over the sub-runs' records, written atomically into ``out_dir``."""
    out_dir = Path(out_dir)
    summary = control_summary(load_records([d / RESULTS_FILE for d in run_dirs]))
    atomic_write_text(out_dir / "summary.md", _markdown(summary))
    return atomic_write_text(out_dir / "summary.csv", summary.to_csv(index=False))

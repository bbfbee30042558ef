"""``thinkctl realign``: calibrate λ → generate teacher data → distil a student → evaluate → report.

Every stage leaves its result in the run directory and is skipped (or resumed) on a rerun:

* ``calibration/results.jsonl`` + ``calibration.json``  λ for ``--target-tokens`` (per-λ sweeps reused);
* ``distill_data.jsonl``    fused-teacher responses at λ (appended per chunk, resumed per problem);
* ``eval/results.jsonl``    greedy held-out records: reference (method "fused", λ=0), fused teacher
  (method "fused", λ) and student (method "student"), resumable like any sweep;
* ``student/``              Trainer checkpoints, resumed; ``student/final`` the distilled model;
* ``report.json`` / ``report.md``  accuracy, mean thinking tokens and reduction vs the reference,
  written atomically at the end.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from thinkctl.config import build, group, lambda_grid_option, lambda_option, option, recipe_values
from thinkctl.data import benchmark_name, load_benchmark
from thinkctl.errors import ConfigError
from thinkctl.io import atomic_write_json, atomic_write_text
from thinkctl.rollout import BackendConfig
from thinkctl.sampling import SamplingConfig
from thinkctl.trra.calibrate import DEFAULT_GRID, CalibrationError, CalibrationResult, backend_measure, calibrate_lambda
from thinkctl.trra.data import generate_distillation_data, load_distillation_jsonl
from thinkctl.trra.trainer import TrRaConfig, train_trra

log = logging.getLogger(__name__)


@dataclass
class RealignConfig:
    """The ``realign:`` section of a recipe: the pair, how λ is chosen, and the data/eval splits.

    The sampling seed also picks the problems of generated benchmarks (tiny) for training and evaluation.
    """

    reference: str = option("", "reference (slow thinker); leave reference and aligned empty for the tiny default pair", flag="--ref")
    aligned: str = option("", "aligned (fast thinker) model")
    lambda_: float | None = lambda_option(None, "fusion weight λ of the teacher", exclusive="goal")
    target_tokens: float | None = option(None, "calibrate λ to this mean thinking length", exclusive="goal")
    lambda_grid: list[float] = lambda_grid_option(DEFAULT_GRID, "calibration grid, e.g. 0,0.5,1,1.5")
    calibration_refinements: int = option(6, "extra λ measured inside the bracketing grid interval")
    train_benchmark: str = option("tiny", "benchmark whose problems the teacher answers for distillation")
    train_split: str | None = option("train", "its split")
    train_limit: int | None = option(256, "problems to generate distillation data on")
    data_path: str | None = option(None, "distil on this JSONL of {prompt|question, response} instead of teacher rollouts",
                                   flag="--data")
    only_correct: bool = option(True, "distil only on teacher responses verified correct")
    calib_benchmark: str = option("tiny", "benchmark of the calibration split")
    calib_split: str | None = option("train", "its split")
    calib_limit: int | None = option(64, "problems in the calibration split")
    calib_seed: int = option(1, "seed drawing the calibration problems")
    eval_benchmark: str = option("tiny", "held-out benchmark reference, teacher and student are compared on")
    eval_split: str | None = option("test", "its split")
    eval_limit: int | None = option(100, "held-out problems to evaluate on")
    sampling: SamplingConfig = group(SamplingConfig)
    backend: BackendConfig = group(lambda: BackendConfig(batch_size=32))

    def __post_init__(self) -> None:
        if (self.lambda_ is None) == (self.target_tokens is None):
            raise ConfigError("realign: give exactly one of --lambda and --target-tokens")
        if self.target_tokens is not None and self.target_tokens <= 0:
            raise ConfigError(f"realign: target_tokens must be positive, got {self.target_tokens}")

    @property
    def eval_sampling(self) -> SamplingConfig:
        """Evaluation is always greedy, so reference, teacher and student compare on one footing."""
        return replace(self.sampling, temperature=0.0, top_p=1.0)


def _resolve_pair(cfg: RealignConfig) -> tuple[str, str]:
    """The configured pair, or the tiny default (built on first use) when neither model is named."""
    if cfg.reference and cfg.aligned:
        return str(Path(cfg.reference).expanduser()), str(Path(cfg.aligned).expanduser())
    if cfg.reference or cfg.aligned:
        raise ConfigError("realign: give both --ref and --aligned, or neither for the tiny default pair")
    from thinkctl.tiny import build_tiny_pair, default_tiny_dir

    pair = build_tiny_pair(default_tiny_dir())
    return str(pair.reference), str(pair.aligned)


def _calibrate(cfg: RealignConfig, backend: Any, out_dir: Path) -> CalibrationResult:
    path = out_dir / "calibration.json"
    if path.is_file():
        saved = CalibrationResult.from_dict(json.loads(path.read_text()))
        if saved.target_tokens == cfg.target_tokens and saved.reachable:
            log.info("reusing calibration λ=%g from %s", saved.lam, path)
            return saved
    problems = load_benchmark(cfg.calib_benchmark, cfg.calib_split, cfg.calib_limit, cfg.calib_seed)
    measure = backend_measure(backend, problems, cfg.eval_sampling, out_dir / "calibration", benchmark_name(cfg.calib_benchmark))
    try:
        result = calibrate_lambda(measure, float(cfg.target_tokens), cfg.lambda_grid, cfg.calibration_refinements)
    except CalibrationError as e:
        atomic_write_json(path, e.result.to_dict())
        raise
    atomic_write_json(path, result.to_dict())
    return result


def _summary_rows(results: Path, lam: float) -> list[dict[str, Any]]:
    from thinkctl.report import load_records, summarize

    summary = summarize(load_records([results]))
    fused = summary[summary["method"] == "fused"].set_index("lam")
    student = summary[summary["method"] == "student"].iloc[0]
    rows = [("reference (λ=0)", fused.loc[0.0]), (f"fused teacher (λ={lam:g})", fused.loc[lam]), ("TrRa student", student)]
    base = float(fused.loc[0.0]["mean_thinking_tokens"])
    return [
        {
            "model": name, "n": int(row["n"]), "accuracy": float(row["accuracy"]),
            "mean_thinking_tokens": float(row["mean_thinking_tokens"]),
            "reduction_pct_vs_reference": 100.0 * (1.0 - float(row["mean_thinking_tokens"]) / base) if base else 0.0,
        }
        for name, row in rows
    ]


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# TrRa realignment report", "", f"- reference: `{report['reference']}`", f"- aligned: `{report['aligned']}`",
             f"- λ: {report['lambda']:g}" + (" (calibrated)" if report["calibration"] else " (given)")]
    cal = report["calibration"]
    if cal:
        lines.append(f"- target thinking tokens: {cal['target_tokens']:g}; teacher at λ on the calibration split: "
                     f"{cal['mean_thinking_tokens']:.1f} tokens, accuracy {100 * cal['accuracy']:.1f}%")
    lines += [f"- student: `{report['student']}`", f"- held-out: {report['eval_benchmark']} ({report['rows'][0]['n']} problems, greedy)", "",
              "| model | accuracy % | mean thinking tokens | reduction vs reference % |", "|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['model']} | {100 * row['accuracy']:.1f} | {row['mean_thinking_tokens']:.1f} | {row['reduction_pct_vs_reference']:.1f} |")
    return "\n".join(lines) + "\n"


def run_realign(cfg: RealignConfig, train: TrRaConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run (or resume) every stage into ``out_dir``; returns the report also written as ``report.json``."""
    from thinkctl.sweep import run_sweep

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reference, aligned = _resolve_pair(cfg)
    atomic_write_json(out_dir / "realign_config.json", {"realign": asdict(cfg), "trra": asdict(train)})
    eval_problems = load_benchmark(cfg.eval_benchmark, cfg.eval_split, cfg.eval_limit, cfg.sampling.seed)
    eval_bench = benchmark_name(cfg.eval_benchmark)
    eval_path = out_dir / "eval"

    backend = cfg.backend.open(reference, aligned)
    try:
        calibration = _calibrate(cfg, backend, out_dir) if cfg.target_tokens is not None else None
        lam = calibration.lam if calibration is not None else float(cfg.lambda_)
        log.info("distilling at λ=%g", lam)
        if cfg.data_path:
            examples = load_distillation_jsonl(cfg.data_path, backend.tokenizer)
        else:
            problems = load_benchmark(cfg.train_benchmark, cfg.train_split, cfg.train_limit, cfg.sampling.seed)
            examples = generate_distillation_data(backend, problems, lam, cfg.sampling, out_dir / "distill_data.jsonl", only_correct=cfg.only_correct)
        run_sweep(backend, eval_problems, sorted({0.0, lam}), cfg.eval_sampling, eval_path, benchmark=eval_bench,
                  method="fused", model=f"{reference} + {aligned}", summarize=False)
    finally:
        backend.close()

    train = replace(train, output_dir=str(out_dir / "student"), lambda_=lam)
    student_path = train_trra(train, reference, aligned, examples)

    student = cfg.backend.open(str(student_path))
    try:
        run_sweep(student, eval_problems, [0.0], cfg.eval_sampling, eval_path, benchmark=eval_bench, method="student",
                  model=str(student_path), summarize=False)
    finally:
        student.close()

    report = {
        "reference": reference, "aligned": aligned, "student": str(student_path), "lambda": lam,
        "target_tokens": cfg.target_tokens, "calibration": calibration.to_dict() if calibration else None,
        "eval_benchmark": eval_bench, "n_train_examples": len(examples), "rows": _summary_rows(eval_path / "results.jsonl", lam),
    }
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", _markdown(report))
    return report


def load_realign_configs(
    recipe: str | None, realign: dict[str, Any] | None = None, trra: dict[str, Any] | None = None
) -> tuple[RealignConfig, TrRaConfig]:
    """The ``realign:`` and ``trra:`` sections of ``recipe`` with non-None overrides applied.

    λ and target length are alternatives: one given as an override replaces the other from the recipe.
    """
    where = recipe or "options"
    configs = []
    for cls, name, overrides in ((RealignConfig, "realign", realign), (TrRaConfig, "trra", trra)):
        values = recipe_values(cls, recipe, name)
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        if cls is RealignConfig and given.keys() & {"lambda_", "target_tokens"}:
            values.pop("lambda_", None)
            values.pop("target_tokens", None)
        configs.append(build(cls, {**values, **given}, f"{where} [{name}]"))
    return configs[0], configs[1]

"""``thinkctl realign``: calibrate λ → teacher data → distil a student → evaluate → report, in rounds.

Every stage leaves its result in the run directory and is skipped (or resumed) on a rerun:

* ``calibration/results.jsonl`` + ``calibration.json``  λ for ``--target-tokens`` (per-λ sweeps reused);
* ``distill_data.jsonl``    fused-teacher responses at λ (appended per chunk, resumed per problem), unless
  the student distils on an existing trace dataset (``data``: hub name or local file, the paper's setting);
* ``eval/results.jsonl``    held-out records, ``n_samples`` per problem with the recipe's sampling: reference
  (method "fused", λ=0), fused teacher (method "fused", λ) and student (method "student"), resumable like any sweep;
* ``student/``              Trainer checkpoints, resumed; ``student/final`` the distilled model;
* ``report.json`` / ``report.md``  accuracy, mean thinking tokens, reduction vs the reference and the share
  of samples cut off by ``max_new_tokens``, written atomically at the end;
* ``run.json``              the settings every stage's work was made under (:data:`WORK` sections: teacher, data,
  student, eval). A rerun compares the sections its stage depends on and refuses any difference, naming each
  (``--lambda 2`` after a λ = 1.5 run, another ``--max-steps``, trace file or ``--max-new-tokens``); with
  ``--overwrite`` the work of the first differing section and every later one moves into ``replaced-<time>/``
  (with a trace dataset, a new ``max_new_tokens`` for the evaluation keeps the student). The same settings resume.

Each stage checks its inputs (the trace file, one vocabulary for the pair and the student, a trained student
for ``--stage eval``) before any model loads, and opens the rollout backend only to generate.

**Iterated TrRa** (``--iterations K`` or a ``lambdas_per_round`` list): round 1 distils towards (reference R,
aligned A) at its λ; round k ≥ 2 towards (R, the student of round k−1) at its own λ, every round's student
starting again from R. Each round is a run directory ``OUT/round-k/`` as above; ``OUT/report.md`` sums them up.

**Stages** (``--stage``): ``all`` runs everything in one process. On a cluster the generating stages and
training run apart: ``data`` (calibration and teacher data, with vLLM's tensor/data parallelism) and ``eval``
run as one process; ``train`` is the one to run under ``accelerate launch`` (every process trains; it reads
what ``data`` left and generates nothing).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from thinkctl.cards import trra_card, write_card
from thinkctl.config import build, group, lambda_grid_option, lambda_option, option, recipe_values
from thinkctl.data import benchmark_name, load_benchmark
from thinkctl.errors import ConfigError
from thinkctl.fusion import parse_lambda, validate_lambda
from thinkctl.io import atomic_write_json, atomic_write_text
from thinkctl.models import check_same_vocab, file_fingerprint, load_tokenizer
from thinkctl.prompts import PromptConfig
from thinkctl.rollout import BackendConfig, RolloutBackend
from thinkctl.runs import open_staged_run
from thinkctl.sampling import SamplingConfig
from thinkctl.training import FINAL_DIR, TraceConfig, consumed_rows, launched_processes
from thinkctl.trra.adaptive import (
    CHOICES_FILE, DEFAULT_ADAPTIVE_GRID, check_adaptive_options, generate_adaptive_data, policy_caps, teacher_grid,
)
from thinkctl.trra.calibrate import (
    CALIBRATION_METHOD,
    DEFAULT_GRID,
    DEFAULT_TOLERANCE,
    CalibrationError,
    CalibrationResult,
    backend_measure,
    calibrate_lambda,
)
from thinkctl.trra.compare import ORACLE, levels_table, record_figures
from thinkctl.trra.data import DistillExample, from_traces, generate_distillation_data
from thinkctl.trra.trainer import FINAL_MARKER, TrRaConfig, final_student_path, is_trained, train_trra

log = logging.getLogger(__name__)

STAGES = ("all", "data", "train", "eval")
#: the adaptive teacher's responses at every λ it tried (see :mod:`thinkctl.trra.adaptive`)
ADAPTIVE_DATA = "adaptive_data.jsonl"
#: how recipes mark a model the user must name (recipes/r1-distill-qwen-7b-trra.yaml)
PLACEHOLDER = "SET-ME"
_GOALS = ("lambda_", "target_tokens", "lambdas_per_round")


def _lambda_list(text: str) -> list[float]:
    return [parse_lambda(p.strip()) for p in text.split(",") if p.strip()]


def _check_lambda_list(values: Any) -> list[float]:
    return [validate_lambda(v) for v in values]


@dataclass
class RealignConfig:
    """The ``realign:`` section of a recipe: the pair, how λ is chosen, the rounds, the data and the splits.

    The sampling and prompt settings are used for the teacher's responses, the calibration and the evaluation
    alike (R1-style models loop under greedy decoding: their recipes sample at T=0.7, top-p 0.95, several
    samples per problem, with DeepSeek's math instruction). The sampling seed also picks the problems of
    generated benchmarks (tiny).
    """

    reference: str = option("", "reference (slow thinker); leave reference and aligned empty for the tiny default pair", flag="--ref")
    aligned: str = option("", "aligned (fast thinker) model")
    lambda_: float | None = lambda_option(None, "fusion weight λ of the teacher (every round)", exclusive="goal")
    target_tokens: float | None = option(None, "calibrate λ to this mean thinking length (every round)", exclusive="goal")
    lambdas_per_round: list[float] = option(
        default_factory=list, help="λ of each round, e.g. 1.5,2 (the paper's iterated TrRa); sets the number of rounds",
        parse=_lambda_list, check=_check_lambda_list, exclusive="goal",
    )
    iterations: int | None = option(None, "TrRa rounds; round k ≥ 2 takes round k−1's student as its aligned model "
                                          "(default 1, or the length of lambdas_per_round)")
    adaptive: bool = option(False, "adaptive teacher: each training problem at the λ of adaptive_grid with its shortest "
                                   "verified-right answer (capped by --lambda, or by the λ --target-tokens calibrates)")
    adaptive_grid: list[float] = lambda_grid_option(DEFAULT_ADAPTIVE_GRID, "λ the adaptive teacher chooses from per problem")
    adaptive_policy: str = option("", "router policy (thinkctl route fit) whose λ for each prompt caps that problem's grid: "
                                      "the teacher thinks as the policy says, longer only where that answer is wrong")
    adaptive_samples: int = option(1, "samples per problem and λ the adaptive teacher is verified on")
    adaptive_min_correct: float = option(0.5, "share of a λ's samples that must be right for the adaptive teacher to take it")
    lambda_grid: list[float] = lambda_grid_option(DEFAULT_GRID, "calibration grid, e.g. 0,0.5,1,1.5")
    calibration_refinements: int = option(6, "extra λ measured inside the bracketing grid interval")
    calibration_tolerance: float = option(DEFAULT_TOLERANCE, "share of --target-tokens within which a λ meets it; calibration "
                                                        "takes the smallest λ found that does (the least realignment)")
    train_benchmark: str = option("tiny", "benchmark whose problems the teacher answers for distillation")
    train_split: str | None = option("train", "its split")
    train_limit: int | None = option(256, "problems to generate distillation data on")
    traces: TraceConfig = group(TraceConfig)
    only_correct: bool = option(True, "distil only on teacher responses verified correct")
    calib_benchmark: str = option("tiny", "benchmark of the calibration split")
    calib_split: str | None = option("train", "its split")
    calib_limit: int | None = option(64, "problems in the calibration split")
    calib_seed: int = option(1, "seed drawing the calibration problems")
    eval_benchmark: str = option("tiny", "held-out benchmark reference, teacher and student are compared on")
    eval_split: str | None = option("test", "its split")
    eval_limit: int | None = option(100, "held-out problems to evaluate on")
    n_samples: int = option(1, "samples per problem in calibration and evaluation (averaged, as in sweeps)")
    sampling: SamplingConfig = group(SamplingConfig)
    prompt: PromptConfig = group(PromptConfig)
    backend: BackendConfig = group(lambda: BackendConfig(batch_size=32))

    def __post_init__(self) -> None:
        goals = [g for g in _GOALS if getattr(self, g) not in (None, [])]
        if len(goals) > 1 or (not goals and not self.adaptive):
            raise ConfigError("realign: give exactly one of --lambda, --target-tokens and --lambdas-per-round (with "
                              "--adaptive at most one: it caps the adaptive teacher's grid)")
        check_adaptive_options(self.adaptive_samples, self.adaptive_min_correct)
        if self.adaptive_policy and not self.adaptive:
            raise ConfigError("realign: adaptive_policy caps the adaptive teacher's λ per problem: set adaptive too")
        if self.adaptive and self.traces.data:
            raise ConfigError("realign: --adaptive chooses the teacher's λ per problem from its own verified answers; it "
                              "cannot distil on a trace dataset (--data): drop one of them")
        if self.target_tokens is not None and self.target_tokens <= 0:
            raise ConfigError(f"realign: target_tokens must be positive, got {self.target_tokens}")
        if not 0 < self.calibration_tolerance < 1:
            raise ConfigError(f"realign: calibration_tolerance is a share of target_tokens in (0, 1), got {self.calibration_tolerance}")
        if self.iterations is not None and self.iterations < 1:
            raise ConfigError(f"realign: iterations must be ≥ 1, got {self.iterations}")
        if self.lambdas_per_round and self.iterations not in (None, len(self.lambdas_per_round)):
            raise ConfigError(f"realign: iterations={self.iterations} but lambdas_per_round has "
                              f"{len(self.lambdas_per_round)} values (one per round)")
        if self.n_samples < 1:
            raise ConfigError(f"realign: n_samples must be ≥ 1, got {self.n_samples}")
        for key in ("reference", "aligned"):
            if getattr(self, key).startswith(PLACEHOLDER):
                raise ConfigError(f"realign: `{key}` is still the recipe's placeholder {getattr(self, key)!r}: set it in "
                                  f"the recipe or with --{'ref' if key == 'reference' else key} (a hub name or path)")

    def round_lambdas(self) -> list[float | None]:
        """λ of each round (with ``adaptive``: the cap of its grid); None where it is calibrated to ``target_tokens``."""
        if self.lambdas_per_round:
            return list(self.lambdas_per_round)
        if self.adaptive and self.lambda_ is None and self.target_tokens is None:
            return [max(self.adaptive_grid)] * (self.iterations or 1)
        return [self.lambda_] * (self.iterations or 1)

    def decoding(self) -> str:
        """How calibration and evaluation decode, for reports."""
        if self.sampling.greedy:
            return "greedy"
        return f"T={self.sampling.temperature:g}, top-p {self.sampling.top_p:g}, {self.n_samples} sample(s) per problem"


def _resolve_pair(cfg: RealignConfig) -> tuple[str, str]:
    """The configured pair, or the tiny default (built on first use) when neither model is named."""
    if cfg.reference and cfg.aligned:
        return str(Path(cfg.reference).expanduser()), str(Path(cfg.aligned).expanduser())
    if cfg.reference or cfg.aligned:
        raise ConfigError("realign: give both --ref and --aligned, or neither for the tiny default pair")
    from thinkctl.tiny import build_tiny_pair, default_tiny_dir

    pair = build_tiny_pair(default_tiny_dir())
    return str(pair.reference), str(pair.aligned)


def _saved_calibration(cfg: RealignConfig, out_dir: Path) -> CalibrationResult | None:
    """The calibration a previous run saved for this target (its settings are checked by ``run.json``), if any."""
    path = out_dir / "calibration.json"
    if path.is_file():
        saved = CalibrationResult.from_dict(json.loads(path.read_text()))
        if (saved.target_tokens == cfg.target_tokens and saved.reachable and saved.method == CALIBRATION_METHOD
                and saved.tolerance == cfg.calibration_tolerance):
            log.info("reusing calibration λ=%g from %s", saved.lam, path)
            return saved
    return None


def _calibrate(cfg: RealignConfig, backend: RolloutBackend | None, out_dir: Path) -> CalibrationResult:
    """λ for ``target_tokens``: the saved calibration, or a new one (which needs a backend)."""
    path = out_dir / "calibration.json"
    saved = _saved_calibration(cfg, out_dir)
    if saved is not None:
        return saved
    if backend is None:
        raise ConfigError(f"λ for {cfg.target_tokens:g} thinking tokens is not calibrated in {out_dir} yet: "
                          "run `thinkctl realign --stage data` first")
    problems = load_benchmark(cfg.calib_benchmark, cfg.calib_split, cfg.calib_limit, cfg.calib_seed)
    measure = backend_measure(backend, problems, cfg.sampling, out_dir / "calibration", benchmark_name(cfg.calib_benchmark),
                              cfg.n_samples, cfg.prompt)
    try:
        result = calibrate_lambda(measure, float(cfg.target_tokens), cfg.lambda_grid, cfg.calibration_refinements,
                                  rel_tol=cfg.calibration_tolerance)
    except CalibrationError as e:
        atomic_write_json(path, e.result.to_dict())
        raise
    atomic_write_json(path, result.to_dict())
    return result


def _examples(cfg: RealignConfig, train: TrRaConfig, backend: RolloutBackend | None, reference: str, lam: float,
              out_dir: Path) -> list[DistillExample]:
    """The distillation data: the trace dataset's first rows, as many as training consumes, or the fused teacher's
    responses at λ (with ``adaptive``: at each problem's own λ up to λ), cached."""
    if cfg.traces.data:
        tokenizer = backend.tokenizer if backend is not None else load_tokenizer(reference)
        return from_traces(cfg.traces.load(tokenizer, consumed_rows(train.training)))
    problems = load_benchmark(cfg.train_benchmark, cfg.train_split, cfg.train_limit, cfg.sampling.seed)
    if cfg.adaptive:
        caps = policy_caps(cfg.adaptive_policy, problems, lam) if cfg.adaptive_policy else None
        return generate_adaptive_data(
            backend, problems, teacher_grid(cfg.adaptive_grid, lam), cfg.sampling, out_dir / ADAPTIVE_DATA, caps=caps,
            n_samples=cfg.adaptive_samples, min_correct=cfg.adaptive_min_correct, only_correct=cfg.only_correct,
            prompt=cfg.prompt,
        ).examples
    return generate_distillation_data(backend, problems, lam, cfg.sampling, out_dir / "distill_data.jsonl",
                                      only_correct=cfg.only_correct, prompt=cfg.prompt)


def _oracle(fused: Any) -> Any:
    """The records of the per-problem oracle over the fused grid: for each problem the λ of fewest mean thinking
    tokens among those with a right answer (the fewest overall when none is right), the ceiling of adaptive TrRa."""
    import numpy as np

    from thinkctl.stats import oracle_choice

    grid = sorted(fused["lam"].unique())
    table = fused.groupby(["problem_id", "lam"]).agg(correct=("correct", "mean"), tokens=("thinking_tokens", "mean"))
    correct = table["correct"].unstack("lam").reindex(columns=grid)
    complete = correct.notna().all(1)
    tokens = table["tokens"].unstack("lam").reindex(columns=grid)[complete]
    choice = oracle_choice(correct[complete].to_numpy() > 0, tokens.to_numpy())
    chosen = {pid: grid[j] for pid, j in zip(tokens.index, choice)}
    return fused[[chosen.get(pid) == lam for pid, lam in zip(fused["problem_id"], fused["lam"])]]


def _summary_rows(results: Path, lam: float, adaptive: bool = False) -> list[dict[str, Any]]:
    """Report rows: the reference, the fused teacher at every evaluated λ (λ and, for adaptive data, the grid),
    the oracle over that grid (adaptive) and the student, each with its figures by level."""
    from thinkctl.report import load_records

    records = load_records([results])
    fused = records[records["method"] == "fused"]
    rows: list[tuple[str, Any]] = [("reference (λ=0)", fused[fused["lam"] == 0.0])]
    rows += [(f"fused teacher (λ={x:g})", fused[fused["lam"] == x]) for x in sorted(fused["lam"].unique()) if x != 0.0]
    if adaptive:
        rows.append((ORACLE, _oracle(fused)))
    rows.append(("adaptive TrRa student" if adaptive else "TrRa student", records[records["method"] == "student"]))
    figures = [(name, record_figures(df)) for name, df in rows]
    base = figures[0][1]["mean_thinking_tokens"]
    return [{"model": name, **f, "reduction_pct_vs_reference": 100.0 * (1.0 - f["mean_thinking_tokens"] / base) if base else 0.0}
            for name, f in figures]


def student_row(report: dict[str, Any]) -> dict[str, Any]:
    """The student's row of a round's report."""
    return next(r for r in report["rows"] if "student" in r["model"])


def _choices_lines(choices: dict[str, Any] | None) -> list[str]:
    """The adaptive teacher's λ histogram by level (problems per chosen λ)."""
    if not choices:
        return []
    hist = choices["histogram_by_level"]
    keys = sorted({k for h in hist.values() for k in h}, key=lambda k: (k == "none", float(k) if k != "none" else 0.0))
    mean = "none right" if choices["mean_lambda"] is None else f"{choices['mean_lambda']:.3f}"
    lines = ["", f"Adaptive teacher, problems per chosen λ (grid {choices['grid']}, mean λ {mean}, "
                 f"{choices['n_examples']} training examples):", "",
             "| level | " + " | ".join(f"λ={k}" for k in keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {level} | " + " | ".join(str(h.get(k, 0)) for k in keys) + " |" for level, h in hist.items()]
    return lines


def _table(rows: list[dict[str, Any]], first: str) -> list[str]:
    lines = [f"| {first} | accuracy % | mean thinking tokens | reduction vs reference % | hit limit % |", "|---|---|---|---|---|"]
    return lines + [f"| {r['model']} | {100 * r['accuracy']:.1f} | {r['mean_thinking_tokens']:.1f} | "
                    f"{r['reduction_pct_vs_reference']:.1f} | {100 * r['hit_limit']:.1f} |" for r in rows]


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# TrRa realignment report", "", f"- reference: `{report['reference']}`", f"- aligned: `{report['aligned']}`",
             f"- λ: {report['lambda']:g}" + (" (calibrated)" if report["calibration"] else " (given)")]
    cal = report["calibration"]
    if cal:
        lines.append(f"- target thinking tokens: {cal['target_tokens']:g}; teacher at λ on the calibration split: "
                     f"{cal['mean_thinking_tokens']:.1f} tokens, accuracy {100 * cal['accuracy']:.1f}%")
    lines += [f"- student: `{report['student']}`",
              f"- held-out: {report['eval_benchmark']} ({report['rows'][0]['n']} samples, {report['decoding']}, at most "
              f"{report['max_new_tokens']} new tokens)", ""]
    note = ("\n'hit limit %' is the share of samples cut off by max_new_tokens: where it is high, a mean thinking length "
            "is the cap in disguise.\n")
    body = _table(report["rows"], "model") + levels_table(report["rows"]) + _choices_lines(report.get("teacher_choices"))
    return "\n".join(lines + body) + "\n" + note


def _rounds_markdown(summary: dict[str, Any]) -> str:
    lines = ["# Iterated TrRa report", "", f"- reference (every round): `{summary['reference']}`",
             f"- round 1 aligned: `{summary['aligned']}`; round k ≥ 2 aligned: the student of round k−1", ""]
    rows = [summary["rounds"][0]["rows"][0]] + [
        {**student_row(r), "model": f"round {k} student (λ={r['lambda']:g}, aligned `{r['aligned']}`)"}
        for k, r in enumerate(summary["rounds"], start=1)
    ]
    body = _table(rows, "model") + levels_table(rows)
    return "\n".join(lines + body) + "\n\nEach round's own report: `round-k/report.md`.\n"


#: what a round directory holds, per settings section, in the order its stages build on each other
#: (see :func:`thinkctl.runs.open_staged_run`)
WORK = {
    "teacher": ("calibration", "calibration.json"),
    "data": ("distill_data.jsonl", ADAPTIVE_DATA, CHOICES_FILE),
    "student": ("student",),
    "eval": ("eval", "report.json", "report.md"),
}
#: the settings sections each stage depends on: it compares them with the round's record and adds them to it
STAGE_SECTIONS = {"data": ("teacher", "data"), "train": ("teacher", "data", "student"), "eval": tuple(WORK), "all": tuple(WORK)}


def round_settings(cfg: RealignConfig, train: TrRaConfig, reference: str, aligned: str, lam: float | None,
                   eval_problems: list[Any]) -> dict[str, dict[str, Any]]:
    """The compared settings of one round, by :data:`WORK` section.

    Each section holds what its stage's work depends on: the pair by identity (:func:`thinkctl.models.model_identity`)
    and λ or its calibration; the training data (a trace file by content, or what the teacher answered and how);
    the student's training settings (but where and how often it saves and logs); the held-out evaluation. Sampling,
    prompt and engine enter where they are used: a student distilled on a trace dataset stays valid under a new
    ``max_new_tokens`` for the evaluation, one distilled on the teacher's responses does not.
    """
    from thinkctl.models import model_identity
    from thinkctl.sweep import problems_digest

    backend = cfg.backend.resolved()
    asked = {"sampling": asdict(cfg.sampling), "prompt": {"template": cfg.prompt.template, "system_prompt": cfg.prompt.system_prompt},
             "engine": backend.engine, "dtype": backend.dtype, "device": backend.device.split(":")[0]}
    calibration = None if lam is not None else {
        "target_tokens": cfg.target_tokens, "lambda_grid": list(cfg.lambda_grid), "refinements": cfg.calibration_refinements,
        "tolerance": cfg.calibration_tolerance,
        "benchmark": cfg.calib_benchmark, "split": cfg.calib_split, "limit": cfg.calib_limit, "seed": cfg.calib_seed,
        "n_samples": cfg.n_samples, **asked,
    }
    teacher = {"reference": model_identity(reference), "aligned": model_identity(aligned), "lambda": lam, "calibration": calibration}
    if cfg.adaptive:
        teacher["adaptive"] = {"grid": teacher_grid(cfg.adaptive_grid, lam), "samples": cfg.adaptive_samples,
                               "min_correct": cfg.adaptive_min_correct}
        if cfg.adaptive_policy:
            teacher["adaptive"]["policy"] = file_fingerprint(Path(cfg.adaptive_policy).expanduser())  # checked to exist
    data = {"traces": cfg.traces.identity()} if cfg.traces.data else {
        "benchmark": cfg.train_benchmark, "split": cfg.train_split, "limit": cfg.train_limit, "only_correct": cfg.only_correct, **asked}
    values = asdict(train)
    # λ (and whether it is per example, which teacher.adaptive implies) is the teacher's, compared there
    student = {**{k: v for k, v in values.items() if k not in ("training", "lambda_", "lambda_per_example")},
               "training": train.training.compared()}
    evaluation = {"benchmark": benchmark_name(cfg.eval_benchmark), "split": cfg.eval_split, "limit": cfg.eval_limit,
                  "n_problems": len(eval_problems), "problems_sha256": problems_digest(eval_problems),
                  "n_samples": cfg.n_samples, **asked}
    return {"teacher": teacher, "data": data, "student": student, "eval": evaluation}


def _check_inputs(cfg: RealignConfig, train: TrRaConfig, reference: str, aligned: str, stage: str) -> None:
    """What a stage needs, checked before anything loads or generates: the trace file or router policy, one
    vocabulary for the pair (and the student), and for ``--stage eval`` a trained student."""
    cfg.traces.check()
    if cfg.adaptive_policy:
        from thinkctl.router.policy import Router

        Router.load(Path(cfg.adaptive_policy).expanduser())
    tokenizer = load_tokenizer(reference)
    check_same_vocab(tokenizer, load_tokenizer(aligned))
    if stage == "eval":
        if not is_trained(train):
            raise ConfigError(f"no trained student in {final_student_path(train)}: run `thinkctl realign --stage train` "
                              "first (with the same settings)")
        check_same_vocab(tokenizer, load_tokenizer(str(final_student_path(train))), names=("reference", "student"))


@contextlib.contextmanager
def _record_lock(train: TrRaConfig, stage: str) -> Iterator[bool]:
    """Whether this process writes the round's record; under ``accelerate launch`` the main process checks (and
    moves aside, with ``--overwrite``) first and the others compare after it."""
    if stage != "train" or launched_processes() == 1:
        yield True
        return
    args = train.training_arguments()
    with args.main_process_first(local=False, desc="realign run settings"):
        yield args.process_index == 0


def _teacher_choices(out_dir: Path) -> dict[str, Any] | None:
    """The adaptive teacher's λ histogram by level, as the data stage saved it (without the per-problem list)."""
    path = out_dir / CHOICES_FILE
    if not path.is_file():
        return None
    return {k: v for k, v in json.loads(path.read_text()).items() if k != "choices"}


def _run_round(cfg: RealignConfig, train: TrRaConfig, reference: str, aligned: str, lam: float | None, out_dir: Path,
               stage: str, overwrite: bool = False) -> dict[str, Any] | None:
    """One TrRa round (see the module docstring) into ``out_dir``; its report, or None when ``stage`` stops early.

    The stage's inputs are checked and its settings compared with the round's ``run.json`` before any model loads;
    the rollout backend is opened only when something is to be generated.
    """
    from thinkctl.sweep import run_sweep

    evaluate = stage in ("all", "eval")
    train = replace(train, training=replace(train.training, output_dir=str(out_dir / "student")))
    eval_problems = load_benchmark(cfg.eval_benchmark, cfg.eval_split, cfg.eval_limit, cfg.sampling.seed) if evaluate else []
    _check_inputs(cfg, train, reference, aligned, stage)
    settings = round_settings(cfg, train, reference, aligned, lam, eval_problems)
    context = {"realign": asdict(cfg), "trra": asdict(train), "reference": reference, "aligned": aligned}
    with _record_lock(train, stage) as write:
        open_staged_run(out_dir, {s: settings[s] for s in STAGE_SECTIONS[stage]}, context, work=WORK, overwrite=overwrite,
                        write=write)
    eval_bench, eval_path = benchmark_name(cfg.eval_benchmark), out_dir / "eval"
    sweep = dict(benchmark=eval_bench, n_samples=cfg.n_samples, prompt=cfg.prompt, summarize=False)

    calibration = _saved_calibration(cfg, out_dir) if lam is None else None
    generates_data = stage in ("all", "data") and not cfg.traces.data
    needs_examples = stage in ("all", "train") or generates_data
    opens = stage != "train" and (evaluate or generates_data or (lam is None and calibration is None))
    backend = cfg.backend.open(reference, aligned) if opens else None
    try:
        if lam is None:
            calibration = calibration or _calibrate(cfg, backend, out_dir)
            lam = calibration.lam
        log.info("round %s: distilling towards %s + %s at λ=%g", out_dir.name, reference, aligned, lam)
        examples = _examples(cfg, train, backend, reference, lam, out_dir) if needs_examples else []
        if evaluate:
            grid = set(teacher_grid(cfg.adaptive_grid, lam)) if cfg.adaptive else set()
            run_sweep(backend, eval_problems, sorted({0.0, lam} | grid), cfg.sampling, eval_path, method="fused",
                      model=f"{reference} + {aligned}", base=reference, **sweep)
    finally:
        if backend is not None:
            backend.close()
    if stage == "data":
        return None

    train = replace(train, lambda_=lam, lambda_per_example=cfg.adaptive)
    student_path = final_student_path(train) if stage == "eval" else train_trra(train, reference, aligned, examples)
    if stage == "train":
        return None

    student = cfg.backend.open(str(student_path))
    try:
        run_sweep(student, eval_problems, [0.0], cfg.sampling, eval_path, method="student", model=str(student_path),
                  base=reference, **sweep)
    finally:
        student.close()
    report = {
        "reference": reference, "aligned": aligned, "student": str(student_path), "lambda": lam,
        "target_tokens": cfg.target_tokens, "calibration": calibration.to_dict() if calibration else None,
        "eval_benchmark": eval_bench, "decoding": cfg.decoding(), "max_new_tokens": cfg.sampling.max_new_tokens,
        "n_train_examples": len(examples) if stage == "all" else None,
        "rows": _summary_rows(eval_path / "results.jsonl", lam, cfg.adaptive),
        "adaptive": cfg.adaptive,
        "teacher_choices": _teacher_choices(out_dir) if cfg.adaptive else None,
    }
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", _markdown(report))
    table = "\n".join(_table(report["rows"], "model")) + f"\n\nHeld-out: {eval_bench}, {report['rows'][0]['n']} samples, {cfg.decoding()}."
    write_card(student_path, trra_card(student_path, reference, aligned, lam, table, adaptive=cfg.adaptive))
    return report


def run_realign(cfg: RealignConfig, train: TrRaConfig, out_dir: str | Path, stage: str = "all",
                overwrite: bool = False) -> dict[str, Any] | None:
    """Run (or resume) ``stage`` of every round into ``out_dir``; returns the report (also ``report.json``), or
    None when the stage ends before evaluation.

    Each round directory records its settings (``run.json``); a rerun under other ones is refused with each
    difference named, unless ``overwrite`` moves the work they invalidate aside (:func:`thinkctl.runs.open_staged_run`).
    """
    if stage not in STAGES:
        raise ConfigError(f"realign: stage must be one of {list(STAGES)}, got {stage!r}")
    if stage != "train" and launched_processes() > 1:
        raise ConfigError(f"realign --stage {stage} generates with one engine: run it as one process (vLLM's tensor/data "
                          "parallelism spreads it over GPUs); only --stage train runs under accelerate launch")
    out_dir = Path(out_dir)
    reference, aligned = _resolve_pair(cfg)
    lambdas = cfg.round_lambdas()
    if len(lambdas) == 1:
        return _run_round(cfg, train, reference, aligned, lambdas[0], out_dir, stage, overwrite)
    reports = []
    for k, lam in enumerate(lambdas, start=1):
        if k > 1 and stage == "data" and not Path(aligned, FINAL_MARKER).is_file():
            log.info("round %d needs round %d's student (%s): run --stage train, then --stage data again", k, k - 1, aligned)
            return None
        reports.append(_run_round(cfg, train, reference, aligned, lam, out_dir / f"round-{k}", stage, overwrite))
        aligned = str(out_dir / f"round-{k}" / "student" / FINAL_DIR)
    if stage in ("data", "train"):
        return None
    summary = {"reference": reference, "aligned": reports[0]["aligned"], "rounds": reports}
    atomic_write_json(out_dir / "report.json", summary)
    atomic_write_text(out_dir / "report.md", _rounds_markdown(summary))
    return summary


def load_realign_configs(
    recipe: str | None, realign: dict[str, Any] | None = None, trra: dict[str, Any] | None = None
) -> tuple[RealignConfig, TrRaConfig]:
    """The ``realign:`` and ``trra:`` sections of ``recipe`` with non-None overrides applied.

    λ, target length and per-round λ are alternatives: one given as an override replaces the others from the recipe.
    """
    where = recipe or "options"
    configs = []
    for cls, name, overrides in ((RealignConfig, "realign", realign), (TrRaConfig, "trra", trra)):
        values = recipe_values(cls, recipe, name)
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        if cls is RealignConfig and given.keys() & set(_GOALS):
            for goal in _GOALS:
                values.pop(goal, None)
        configs.append(build(cls, {**values, **given}, f"{where} [{name}]"))
    return configs[0], configs[1]

"""λ grid × benchmarks → graded per-sample records, resumable, plus a summary table and plot.

Records are appended to ``results.jsonl`` one chunk at a time, so a killed sweep loses at most the
chunk in flight, and Ctrl-C, SIGTERM or SIGHUP not even that (the samples finished before are saved);
a rerun reads what is there, skips every (benchmark, method, problem, λ, sample) key already recorded and generates
only the rest. A run directory records the settings that produced it (``run.json``,
:mod:`thinkctl.runs`), and a rerun under other settings is refused rather than mixed in. The summary
files are rewritten atomically at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from thinkctl.config import group, lambda_grid_option, lambda_option, option
from thinkctl.data import PLAIN, Problem, benchmark_name, load_benchmark, render_prompt
from thinkctl.errors import ConfigError, Interrupted
from thinkctl.io import append_jsonl, drop_partial_tail
from thinkctl.models import model_identity
from thinkctl.prompts import PromptConfig
from thinkctl.records import RecordKey, graded_record, read_records
from thinkctl.rollout import BackendConfig, RolloutBackend
from thinkctl.runs import RESULTS_FILE, prepare_run
from thinkctl.sampling import SamplingConfig
from thinkctl.thinking import prompt_opens_thinking

log = logging.getLogger(__name__)


def _benchmark_list(value: str | Sequence[str]) -> list[str]:
    """One benchmark or several: ``math500``, ``aime24,aime25`` (a flag), or a YAML list."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(v).strip() for v in items if str(v).strip()]
    if not names:
        raise ConfigError("benchmark: give at least one benchmark")
    return names


def _control_list(value: str | Sequence[str]) -> list[str]:
    """A control grid such as ``hard,soft,fixed`` (a flag) or a YAML list; each known, none twice."""
    from thinkctl.sampling import CONTROLS

    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(v).strip() for v in items if str(v).strip()]
    known = (*CONTROLS, "fixed")
    bad = [n for n in names if n not in known]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"controls: each of {', '.join(known)} at most once, got {names}")
    return names


def _budget_list(value: str | Sequence[object]) -> list[int]:
    """A budget (or target) grid: positive integers without repeats, ``20,50,130`` or a YAML list."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for v in items:
        if isinstance(v, str) and not v.strip():
            continue
        try:
            n = int(v) if not isinstance(v, bool) and float(v) == int(float(v)) else None
        except (TypeError, ValueError):
            n = None
        if n is None or n < 1:
            raise ConfigError(f"budget and target grids hold positive whole numbers of thinking tokens, got {v!r}")
        out.append(n)
    if len(set(out)) != len(out):
        raise ConfigError(f"the grid {out} lists a value twice")
    return out


@dataclass
class SweepConfig:
    """What to sweep: the ``sweep:`` section of a recipe, and the flags of ``thinkctl sweep``/``demo``.

    The sampling seed also picks the problems of a generated benchmark (tiny), so one ``seed``
    reproduces a whole run.
    """

    benchmark: list[str] = option(
        default_factory=lambda: ["tiny"],
        help="one or more (comma-separated) of tiny | math500 | gsm8k | aime24 | aime25 | a .jsonl/.json/.parquet "
             "file or a directory of them | NAME=PATH (local files recorded as NAME)",
        parse=_benchmark_list, check=_benchmark_list,
    )
    split: str | None = option(None, "dataset split (hub benchmarks; tiny: train|test)")
    limit: int | None = option(None, "problems per benchmark: a fixed prefix (tiny: how many are generated); "
                                     "default: the whole benchmark (tiny: 200)")
    lambdas: list[float] = lambda_grid_option((0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5), "comma-separated λ grid, e.g. 0,0.5,1,1.5")
    n_samples: int = option(1, "samples per problem and λ (avg@k accuracy over them)")
    chunk_size: int = option(64, "prompts per generation call; each call's records are saved as soon as it is graded")
    controls: list[str] = option(default_factory=list, parse=_control_list, check=_control_list,
                                 help="compare controls side by side, each (control, budget) in its own OUT/<control>-<budget>/: "
                                      "comma-separated of hard, soft, bias, target (over the budget/target grid) and fixed "
                                      "(the λ grid, in OUT/fixed/); OUT/summary.csv has a row per (control, budget)")
    budgets: list[int] = option(default_factory=list, parse=_budget_list, check=_budget_list,
                                help="thinking-budget grid of the hard, soft and bias controls, e.g. 20,50,130")
    targets: list[int] | None = option(None, parse=_budget_list, check=_budget_list,
                                       help="target grid (thinking tokens) of the target control (default: the budget grid)")
    control_lambda: float = lambda_option(0.0, "the request λ of the hard, soft and bias controls (and target's start λ "
                                               "where no length model is given)")
    control_effort: str | None = option(None, "effort table for the controls (level=λ pairs, .json, or a sweep run dir to "
                                              "calibrate on): its `low` is the default fast_lambda, its calibrated λ → "
                                              "thinking curve picks target mode's start λ")
    sampling: SamplingConfig = group(SamplingConfig)
    prompt: PromptConfig = group(PromptConfig)
    backend: BackendConfig = group(BackendConfig)

    def __post_init__(self) -> None:
        self.benchmark = _benchmark_list(self.benchmark)
        for name in ("n_samples", "chunk_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be at least 1 (leave it out for the whole benchmark), got {self.limit}")
        if self.controls:
            if self.sampling.control is not None:
                raise ConfigError("controls runs each control at each budget itself: leave control, max_thinking_tokens and "
                                  "thinking_target unset next to it")
            if not self.budgets and set(self.controls) - {"fixed"} - ({"target"} if self.targets else set()):
                raise ConfigError(f"controls {self.controls} need a budget grid: set budgets, e.g. 20,50,130")

    def problems(self) -> dict[str, list[Problem]]:
        """Each benchmark's problems under the name its records carry."""
        out: dict[str, list[Problem]] = {}
        for spec in self.benchmark:
            name = benchmark_name(spec)
            if name in out:
                raise ConfigError(f"benchmark {name!r} is given twice")
            out[name] = load_benchmark(spec, split=self.split, limit=self.limit, seed=self.sampling.seed)
        return out


def completed_keys(results_path: Path) -> set[RecordKey]:
    """Keys already in a results file, after cutting a half-written last line left by a crash."""
    if not results_path.exists():
        return set()
    if drop_partial_tail(results_path):
        log.warning("dropped a partial last line from %s (an interrupted write)", results_path)
    return {r.key for r in read_records(results_path)} if results_path.stat().st_size else set()


def run_sweep(
    backend: RolloutBackend,
    problems: Sequence[Problem],
    lambdas: Sequence[float],
    sampling: SamplingConfig,
    out_dir: str | Path,
    *,
    benchmark: str,
    method: str = "fused",
    model: str = "",
    n_samples: int = 1,
    chunk_size: int = 64,
    prompt: PromptConfig = PLAIN,
    summarize: bool = True,
    base: str | None = None,
) -> Path:
    """Generate and grade every (problem, λ, sample) not yet in ``out_dir/results.jsonl``.

    When sampling, each sample is drawn with its own seed, a hash of the run's seed and its key
    (benchmark, problem id, λ, sample index; :meth:`SamplingConfig.seed_for`), so a resumed run or
    one extended to more samples gives exactly the records of one uninterrupted run. Work is sent to
    the backend in chunks of ``chunk_size`` prompts that may mix λ values, so the backend batches
    across the grid; each chunk's records are appended as soon as it is graded. On Ctrl-C (SIGTERM,
    SIGHUP) the completions the backend finished are graded and saved too, and :class:`Interrupted`
    says where. ``base`` is the records' reference model (see
    :class:`thinkctl.records.SampleRecord`). Returns the path of the results file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS_FILE
    done = completed_keys(results_path)
    todo = [
        (problem, float(lam), s)
        for lam in lambdas
        for s in range(n_samples)
        for problem in problems
        if (benchmark, method, problem.id, float(lam), s) not in done
    ]
    here = sum(1 for key in done if key[:2] == (benchmark, method))
    if here:
        log.info("resuming %s/%s in %s: %d samples done, %d to go", benchmark, method, results_path, here, len(todo))
    tokenizer = backend.tokenizer
    prompts = {p.id: render_prompt(tokenizer, p.question, prompt) for p in problems}

    def save(work: Sequence[tuple[Problem, float, int]], completions: Sequence[Any]) -> None:
        records = [
            graded_record(problem, completion, tokenizer, benchmark=benchmark, method=method, model=model, sample=s,
                          opened=prompt_opens_thinking(prompts[problem.id]), base=base)
            for (problem, _, s), completion in zip(work, completions)
        ]
        append_jsonl(results_path, [r.to_dict() for r in records])

    saved = 0
    with tqdm(total=len(todo), desc=f"sweep {benchmark}/{method}", unit="sample") as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            try:
                completions = backend.generate(
                    [prompts[p.id] for p, _, _ in chunk], [lam for _, lam, _ in chunk], sampling,
                    seeds=[sampling.seed_for(benchmark, p.id, lam, s) for p, lam, s in chunk],
                )
            except KeyboardInterrupt as e:
                finished = sorted(getattr(e, "completed", {}).items())
                save([chunk[i] for i, _ in finished], [c for _, c in finished])
                saved += len(finished)
                raise Interrupted(
                    f"interrupted: {len(done) + saved} samples are saved in {results_path} "
                    f"({len(todo) - saved} of {benchmark}/{method} to go); rerun the same command to resume"
                ) from None
            save(chunk, completions)
            saved += len(chunk)
            bar.update(len(chunk))
    if summarize:
        write_sweep_summary(out_dir)
    return results_path


def write_sweep_summary(out_dir: str | Path) -> None:
    """``summary.csv``/``summary.md`` and ``sweep.png`` of the records in ``out_dir``, written atomically."""
    from thinkctl.records import load_records
    from thinkctl.report import plot_sweep, summarize as summarize_records, write_summary

    out_dir = Path(out_dir)
    summary = summarize_records(load_records([out_dir / RESULTS_FILE]))
    write_summary(summary, out_dir)
    plot_sweep(summary, out_dir / "sweep.png")


def problems_digest(problems: Sequence[Problem]) -> str:
    """A short hash of a benchmark's problems (ids, questions, answers): the same name over other data differs."""
    digest = hashlib.sha256()
    for p in problems:
        digest.update(f"{p.id}\x1f{p.question}\x1f{p.answer}\x1e".encode())
    return digest.hexdigest()[:16]


def run_settings(
    cfg: SweepConfig, problems: Mapping[str, Sequence[Problem]], models: Mapping[str, str], *, method: str, model: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (compared settings, recorded context) of a sweep, as :func:`thinkctl.runs.prepare_run` takes them.

    ``models`` maps each model's role (reference, aligned, inra) to its hub name or path.
    """
    backend = cfg.backend.resolved()
    settings = {
        "method": method,
        "models": {role: model_identity(source) for role, source in models.items()},
        "engine": backend.engine,
        "dtype": backend.dtype,
        "device": backend.device.split(":")[0],
        "sampling": dataclasses.asdict(cfg.sampling),
        "prompt": {"template": cfg.prompt.template, "system_prompt": cfg.prompt.system_prompt},
        "benchmarks": {
            name: {"split": cfg.split, "limit": cfg.limit, "n_problems": len(ps), "problems_sha256": problems_digest(ps)}
            for name, ps in problems.items()
        },
    }
    context = {
        "model": model, "models": dict(models), "benchmark_specs": list(cfg.benchmark), "device": backend.device,
        "batch_size": backend.batch_size, "chunk_size": cfg.chunk_size, "prompt_template": cfg.prompt.prompt_template,
        "lambdas": list(cfg.lambdas), "n_samples": cfg.n_samples,
    }
    return settings, context


def run_sweep_config(
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
    """The sweep ``cfg`` describes into ``out_dir``, on the backend ``open_backend()`` returns.

    The benchmarks are loaded and the run's settings checked against the directory's ``run.json``
    before the models, so a wrong benchmark or a mismatched resume fails before a long model load;
    ``models`` (role → name or path; default: ``model`` itself) are what the settings identify.
    Nothing is written to ``out_dir`` (and ``--overwrite`` moves nothing) until the backend has opened:
    a run that fails to start leaves the directory as it was. The backend is closed at the end.
    ``base`` is the records' reference model (see :class:`thinkctl.records.SampleRecord`).
    """
    problems = cfg.problems()
    settings, context = run_settings(cfg, problems, models or {"model": model}, method=method, model=model)
    run = prepare_run(out_dir, settings, context, overwrite=overwrite)
    backend = open_backend()
    try:
        run.start()
        for name, benchmark_problems in problems.items():
            run_sweep(backend, benchmark_problems, cfg.lambdas, cfg.sampling, out_dir, benchmark=name, method=method,
                      model=model, n_samples=cfg.n_samples, chunk_size=cfg.chunk_size, prompt=cfg.prompt, summarize=False,
                      base=base)
    finally:
        backend.close()
    write_sweep_summary(out_dir)
    return Path(out_dir) / RESULTS_FILE


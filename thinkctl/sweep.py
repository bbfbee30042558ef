"""λ grid × benchmark → graded per-sample records, resumable, plus a summary table and plot.

Records are appended to ``results.jsonl`` one batch at a time, so a killed sweep loses at most the
batch in flight; a rerun reads what is there, skips every (benchmark, method, problem, λ, sample) key
already recorded and generates only the rest. The summary files are rewritten atomically at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from thinkctl.config import group, lambda_grid_option, option
from thinkctl.data import Problem, benchmark_name, load_benchmark, render_prompt
from thinkctl.io import append_jsonl, drop_partial_tail
from thinkctl.records import RecordKey, graded_record, read_records
from thinkctl.rollout import BackendConfig, RolloutBackend
from thinkctl.sampling import SamplingConfig
from thinkctl.thinking import prompt_opens_thinking

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"


@dataclass
class SweepConfig:
    """What to sweep: the ``sweep:`` section of a recipe, and the flags of ``thinkctl sweep``/``demo``.

    The sampling seed also picks the problems of a generated benchmark (tiny), so one ``seed``
    reproduces a whole run.
    """

    benchmark: str = option("tiny", "tiny | math500 | gsm8k | aime | path to a .jsonl/.json/.parquet file")
    split: str | None = option(None, "dataset split (hub benchmarks; tiny: train|test)")
    limit: int | None = option(100, "number of problems (a fixed prefix; tiny: how many are generated)")
    lambdas: list[float] = lambda_grid_option((0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5), "comma-separated λ grid, e.g. 0,0.5,1,1.5")
    n_samples: int = option(1, "samples per problem and λ")
    sampling: SamplingConfig = group(SamplingConfig)
    backend: BackendConfig = group(BackendConfig)

    def problems(self) -> list[Problem]:
        return load_benchmark(self.benchmark, split=self.split, limit=self.limit, seed=self.sampling.seed)


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
    summarize: bool = True,
) -> Path:
    """Generate and grade every (problem, λ, sample) not yet in ``out_dir/results.jsonl``.

    Work is sent to the backend in chunks of ``chunk_size`` prompts that may mix λ values, so the
    backend batches across the grid; each chunk's records are appended as soon as it is graded.
    Returns the path of the results file.
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
    if len(done):
        log.info("resuming %s: %d samples done, %d to go", results_path, len(done), len(todo))
    tokenizer = backend.tokenizer
    prompts = {p.id: render_prompt(tokenizer, p.question) for p in problems}
    with tqdm(total=len(todo), desc=f"sweep {benchmark}/{method}", unit="sample") as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            completions = backend.generate([prompts[p.id] for p, _, _ in chunk], [lam for _, lam, _ in chunk], sampling.derive(start))
            records = [
                graded_record(problem, completion, tokenizer, benchmark=benchmark, method=method, model=model, sample=s,
                              opened=prompt_opens_thinking(prompts[problem.id]))
                for (problem, _, s), completion in zip(chunk, completions)
            ]
            append_jsonl(results_path, [r.to_dict() for r in records])
            bar.update(len(chunk))
    if summarize:
        from thinkctl.records import load_records
        from thinkctl.report import plot_sweep, summarize as summarize_records, write_summary

        summary = summarize_records(load_records([results_path]))
        write_summary(summary, out_dir)
        plot_sweep(summary, out_dir / "sweep.png")
    return results_path


def run_sweep_config(
    cfg: SweepConfig, open_backend: Callable[[], RolloutBackend], out_dir: str | Path, *, method: str, model: str
) -> Path:
    """The sweep ``cfg`` describes into ``out_dir``, on the backend ``open_backend()`` returns.

    The benchmark is loaded before the models, so a wrong benchmark fails before a long model load;
    the backend is closed at the end.
    """
    problems = cfg.problems()
    backend = open_backend()
    try:
        return run_sweep(backend, problems, cfg.lambdas, cfg.sampling, out_dir, benchmark=benchmark_name(cfg.benchmark),
                         method=method, model=model, n_samples=cfg.n_samples)
    finally:
        backend.close()

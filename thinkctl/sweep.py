"""λ grid × benchmark → graded per-sample records, resumable, plus a summary table and plot.

Records are appended to ``results.jsonl`` one batch at a time, so a killed sweep loses at most the
batch in flight; a rerun reads what is there, skips every (benchmark, method, problem, λ, sample) key
already recorded and generates only the rest. The summary files are rewritten atomically at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from thinkctl.data import Problem, render_prompt
from thinkctl.errors import ConfigError
from thinkctl.fusion import validate_lambda_grid
from thinkctl.grading import grade
from thinkctl.io import append_jsonl, drop_partial_tail, iter_jsonl
from thinkctl.rollout.base import RolloutBackend, SamplingConfig

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"


@dataclass
class SweepConfig:
    """What to sweep (the ``sweep:`` section of a recipe; CLI flags override it)."""

    benchmark: str = "tiny"
    split: str | None = None
    limit: int | None = 100
    lambdas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5])
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    n_samples: int = 1
    batch_size: int = 16
    engine: str = "hf"
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.lambdas = validate_lambda_grid(self.lambdas)

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.max_new_tokens, self.temperature, self.top_p, self.seed)

RecordKey = tuple[str, str, str, float, int]


def record_key(record: dict[str, Any]) -> RecordKey:
    """The identity of a per-sample record; a resumed sweep never writes a key twice."""
    return (record["benchmark"], record["method"], str(record["problem_id"]), float(record["lam"]), int(record["sample"]))


def completed_keys(results_path: Path) -> set[RecordKey]:
    """Keys already in a results file, after cutting a half-written last line left by a crash."""
    if not results_path.exists():
        return set()
    if drop_partial_tail(results_path):
        log.warning("dropped a partial last line from %s (an interrupted write)", results_path)
    return {record_key(r) for r in iter_jsonl(results_path)}


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
    lambdas = validate_lambda_grid(lambdas)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS_FILE
    done = completed_keys(results_path)
    todo = [
        (problem, lam, s)
        for lam in lambdas
        for s in range(n_samples)
        for problem in problems
        if (benchmark, method, problem.id, lam, s) not in done
    ]
    if len(done):
        log.info("resuming %s: %d samples done, %d to go", results_path, len(done), len(todo))
    tokenizer = backend.tokenizer
    prompts = {p.id: render_prompt(tokenizer, p.question) for p in problems}
    with tqdm(total=len(todo), desc=f"sweep {benchmark}/{method}", unit="sample") as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            chunk_sampling = replace(sampling, seed=sampling.seed + start) if not sampling.greedy else sampling
            completions = backend.generate([prompts[p.id] for p, _, _ in chunk], [lam for _, lam, _ in chunk], chunk_sampling)
            records = []
            for (problem, lam, s), completion in zip(chunk, completions):
                record = {"benchmark": benchmark, "method": method, "model": model, "sample": s}
                record.update(grade(problem, completion, tokenizer))
                record["lam"] = lam
                records.append(record)
            append_jsonl(results_path, records)
            bar.update(len(chunk))
    if summarize:
        from thinkctl.report import load_records, plot_sweep, summarize as summarize_records, write_summary

        summary = summarize_records(load_records([results_path]))
        write_summary(summary, out_dir)
        plot_sweep(summary, out_dir / "sweep.png")
    return results_path


def run_sweep_config(cfg: SweepConfig, reference: str, aligned: str | None, out_dir: str | Path) -> Path:
    """Load the benchmark and backend named by ``cfg`` and run the sweep into ``out_dir``."""
    from thinkctl.data import benchmark_name, load_benchmark
    from thinkctl.rollout import make_backend

    if aligned is None and any(lam != 0 for lam in cfg.lambdas):
        raise ConfigError(f"λ grid {cfg.lambdas} needs an aligned model (--aligned); without one only λ=0 is defined")
    problems = load_benchmark(cfg.benchmark, split=cfg.split, limit=cfg.limit, seed=cfg.seed)
    backend = make_backend(cfg.engine, reference, aligned, dtype=cfg.dtype, device=cfg.device, batch_size=cfg.batch_size)
    try:
        return run_sweep(
            backend, problems, cfg.lambdas, cfg.sampling, out_dir,
            benchmark=benchmark_name(cfg.benchmark),
            method="fused" if aligned else "plain", model=reference if aligned is None else f"{reference} + {aligned}",
            n_samples=cfg.n_samples,
        )
    finally:
        backend.close()

"""Adaptive teacher data: every training problem answered by the fused teacher at its own λ.

Single-λ TrRa gives the student one length policy for every problem: at a λ that is free on easy
problems the hard ones lose, at a λ safe for the hard ones the easy ones keep thinking they do not need.
Here each problem gets **the λ of its shortest verified-right answer**, and the student is distilled towards
the fused teacher at each sequence's own λ (:func:`thinkctl.losses.chunked_fused_kd_loss` takes one λ per
row). The student thus learns *which* problems need long thinking from the problems themselves, as
length-rewarded RL does (DLER, Laser, SelfBudgeter), by distillation.

Why shortest rather than largest λ: thinking falls with λ in steps, not smoothly (the tiny default's λ 0.25,
0.5 and 0.75 write the same careful steps on easy problems, and λ 0.75 only miscopies more), so past the
length a problem needs a larger λ buys no tokens, only risk. Answers within :data:`~thinkctl.router.policy.TOKEN_TIE`
of the shortest right one tie, and the smallest λ of those wins: the most careful teacher at that length.

Every problem is asked at every λ of its grid (the grid's λ up to a cap: the goal's λ, and per problem the λ a
router policy picks for its prompt, when one is given: the issue's "router policy's λ for that prompt": the
router's choice from the query's features, the tiny world's level among them, which its prompt shows),
``n_samples`` times; a λ counts as right when at least
``min_correct`` of its samples are. Responses are appended to a JSONL cache one chunk at a time, seeded per
problem, λ and sample, and the choices are a pure function of the cache (:func:`choose_lambda`), so an
interrupted data stage resumes where it stopped and keeps the choices an uninterrupted one makes.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from thinkctl.data import PLAIN, Problem
from thinkctl.errors import ConfigError
from thinkctl.fusion import validate_lambda
from thinkctl.io import append_jsonl, atomic_write_json
from thinkctl.prompts import PromptConfig
from thinkctl.rollout.base import RolloutBackend
from thinkctl.router.policy import TOKEN_TIE
from thinkctl.sampling import SamplingConfig
from thinkctl.trra.data import DistillExample, load_cache, teacher_examples

log = logging.getLogger(__name__)

#: the default grid: the reference, three fused points and the aligned model
DEFAULT_ADAPTIVE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
CHOICES_FILE = "adaptive_choices.json"


def teacher_grid(grid: Sequence[float], cap: float | None = None) -> list[float]:
    """The λ the teacher may use, largest first: ``grid`` bounded above by ``cap`` (which joins the grid).

    The cap is how a length goal composes with adaptive data: ``--target-tokens N`` calibrates the λ whose
    mean thinking is N and no problem is answered beyond it; only where the shorter answer is wrong does the
    teacher think longer.
    """
    values = {float(validate_lambda(g)) for g in grid}
    if cap is not None:
        values = {g for g in values if g < cap} | {float(cap)}
    if not values:
        raise ConfigError("adaptive_grid: give at least one λ")
    return sorted(values, reverse=True)


def check_adaptive_options(n_samples: int, min_correct: float) -> None:
    """Raise :class:`ConfigError` for fewer than one sample per λ or a right-share outside (0, 1]."""
    if n_samples < 1:
        raise ConfigError(f"adaptive_samples must be ≥ 1, got {n_samples}")
    if not 0.0 < min_correct <= 1.0:
        raise ConfigError(f"adaptive_min_correct must be in (0, 1], got {min_correct}")


def policy_caps(policy: str | Path, problems: Sequence[Problem], cap: float | None = None) -> dict[str, float]:
    """Per problem the λ a router policy (``thinkctl route fit``) picks for its prompt, at most ``cap``."""
    from thinkctl.router.policy import Router

    router = Router.load(Path(policy).expanduser())
    caps = {p.id: router.route(p.question, level=p.level) for p in problems}
    return {pid: lam if cap is None else min(lam, cap) for pid, lam in caps.items()}


def choose_lambda(outcomes: Mapping[float, Sequence[tuple[bool, int]]], min_correct: float,
                  tie: float = TOKEN_TIE) -> float | None:
    """The λ of the shortest right answer, or None when no λ is right.

    ``outcomes`` maps λ to its samples' (correct, thinking tokens). A λ is right when at least ``min_correct``
    of its samples are; its length is the mean thinking of its right samples. Lengths within ``tie`` (relative)
    of the shortest tie, won by the smallest λ.
    """
    right = {}
    for lam, samples in outcomes.items():
        good = [tokens for correct, tokens in samples if correct]
        if samples and len(good) >= min_correct * len(samples):
            right[lam] = sum(good) / len(good)
    if not right:
        return None
    shortest = min(right.values())
    return min(lam for lam, tokens in right.items() if tokens <= shortest * (1 + tie))


@dataclass
class AdaptiveData:
    """What the adaptive teacher chose: the examples to distil on and, per problem, its λ (None: none right)."""

    examples: list[DistillExample]
    choices: dict[str, float | None]
    levels: dict[str, int | None]
    grid: list[float]
    generated: int

    def histogram(self) -> dict[str, dict[str, int]]:
        """Problems per chosen λ, by difficulty level (``"all"`` too; ``"none"`` where no λ was right)."""
        out: dict[str, Counter[str]] = defaultdict(Counter)
        for pid, lam in self.choices.items():
            key = "none" if lam is None else f"{lam:g}"
            level = self.levels.get(pid)
            out["all"][key] += 1
            out["unknown" if level is None else str(level)][key] += 1
        return {level: dict(sorted(c.items())) for level, c in sorted(out.items())}

    def mean_lambda(self) -> float | None:
        chosen = [lam for lam in self.choices.values() if lam is not None]
        return sum(chosen) / len(chosen) if chosen else None

    def to_dict(self) -> dict[str, Any]:
        return {"grid": self.grid, "generated": self.generated, "n_examples": len(self.examples),
                "mean_lambda": self.mean_lambda(), "histogram_by_level": self.histogram(), "choices": self.choices}


def _read_cache(path: Path, grid: Sequence[float]) -> list[DistillExample]:
    cached = load_cache(path)
    other = {ex.lam for ex in cached} - set(grid)
    if other:
        raise ConfigError(f"{path} holds responses at λ {sorted(other)} outside the teacher's grid {sorted(grid)}: "
                          "use another output directory, or delete the file to regenerate")
    return cached


def _seed_key(problem: Problem, lam: float, sample: int) -> tuple[str | float | int, ...]:
    # the first sample draws what single-λ TrRa's teacher draws for this problem at this λ
    return (problem.id, lam) if sample == 0 else (problem.id, lam, sample)


def generate_adaptive_data(
    backend: RolloutBackend | None,
    problems: Sequence[Problem],
    grid: Sequence[float],
    sampling: SamplingConfig,
    path: str | Path,
    *,
    caps: Mapping[str, float] | None = None,
    n_samples: int = 1,
    min_correct: float = 0.5,
    only_correct: bool = True,
    chunk_size: int = 64,
    prompt: PromptConfig = PLAIN,
) -> AdaptiveData:
    """Every problem at every λ of ``grid`` (up to its own cap in ``caps``), cached at ``path``, and each
    problem's choice (see the module docstring).

    Returns the right responses at each problem's chosen λ; a problem no λ gets right is left out with
    ``only_correct``, and otherwise answered by its smallest λ's responses (the reference's way, when 0 is in
    the grid). Without a backend the cache must already hold every response (``--stage train``).
    """
    check_adaptive_options(n_samples, min_correct)
    grid = teacher_grid(grid)
    own = {p.id: teacher_grid(grid, caps[p.id]) if caps is not None else grid for p in problems}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lams = sorted({lam for g in own.values() for lam in g}, reverse=True)
    cached = _read_cache(path, lams)
    by_problem: dict[str, dict[float, list[DistillExample]]] = defaultdict(lambda: defaultdict(list))
    for ex in cached:
        by_problem[ex.problem_id][ex.lam].append(ex)
    todo = [(p, lam, k) for lam in lams for p in problems if lam in own[p.id]
            for k in range(n_samples) if k not in {ex.sample for ex in by_problem[p.id][lam]}]
    if todo and backend is None:
        raise ConfigError(f"{len(todo)} adaptive teacher responses are not in {path} yet: run "
                          "`thinkctl realign --stage data` first")
    with tqdm(total=len(todo), desc="adaptive teacher", unit="response", disable=not todo) as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            seeds = [sampling.seed_for(*_seed_key(p, lam, k)) for p, lam, k in chunk]
            new = teacher_examples(backend, [p for p, _, _ in chunk], [lam for _, lam, _ in chunk], sampling, seeds,
                                   prompt, samples=[k for _, _, k in chunk])
            append_jsonl(path, [asdict(ex) for ex in new])
            for ex in new:
                by_problem[ex.problem_id][ex.lam].append(ex)
            bar.update(len(chunk))

    choices: dict[str, float | None] = {}
    examples: list[DistillExample] = []
    for p in problems:
        asked = {lam: exs for lam, exs in by_problem[p.id].items() if lam in own[p.id]}
        # an answer cut off by max_new_tokens is not trained on, so it cannot make its λ right either
        usable = {x: [(bool(ex.correct) and ex.finish_reason == "stop", int(ex.thinking_tokens or 0)) for ex in exs]
                  for x, exs in asked.items()}
        lam = choose_lambda(usable, min_correct)
        choices[p.id] = lam
        if lam is not None:
            examples += [ex for ex in asked[lam] if ex.correct and ex.finish_reason == "stop"]
        elif not only_correct:
            examples += asked[own[p.id][-1]]
    data = AdaptiveData(examples, choices, {p.id: p.level for p in problems}, grid, len(todo))
    log.info("adaptive teacher: %d problems, mean λ %s, %d examples; by λ: %s", len(problems),
             "n/a" if data.mean_lambda() is None else f"{data.mean_lambda():.3f}", len(examples), data.histogram()["all"])
    if not examples:
        raise ConfigError(f"no distillation examples left from {path}: no λ of {grid} answered any problem right "
                          "(set only_correct: false to distil on the smallest λ's responses)")
    atomic_write_json(path.parent / CHOICES_FILE, data.to_dict())
    return data

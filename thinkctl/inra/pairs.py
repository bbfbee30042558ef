"""Training data for the InRa adapter: thinking-length preference pairs and distillation sequences.

Both are built from rollouts of the models themselves (no external data), graded with
:mod:`thinkctl.grading`, and cached as JSONL so a resumed training run does not regenerate them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinkctl.data import Problem, render_prompt
from thinkctl.grading import grade
from thinkctl.io import atomic_write_text, read_jsonl
from thinkctl.rollout.base import RolloutBackend
from thinkctl.sampling import SamplingConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rollout:
    """One graded response to a prompt (token ids are the response only, stop token included)."""

    prompt: str
    token_ids: list[int]
    correct: bool
    thinking_tokens: int
    finish_reason: str


def preference_pair(rollouts: Sequence[Rollout]) -> tuple[Rollout, Rollout] | None:
    """(chosen, rejected) for one prompt's rollouts, or None when no pair teaches anything.

    Correct beats incorrect, and among correct responses the one that thinks least beats the one that
    thinks most. Chosen is always the shortest-thinking correct response; rejected is the
    longest-thinking correct one when it thinks strictly longer, else an incorrect one (the longest, so
    "think less" is never rewarded by rejecting a short wrong answer). Responses cut off by the token
    limit count as incorrect.
    """
    correct = sorted((r for r in rollouts if r.correct and r.finish_reason == "stop"), key=lambda r: r.thinking_tokens)
    wrong = sorted((r for r in rollouts if not (r.correct and r.finish_reason == "stop")), key=lambda r: r.thinking_tokens)
    if not correct:
        return None
    chosen = correct[0]
    if correct[-1].thinking_tokens > chosen.thinking_tokens:
        return chosen, correct[-1]
    if wrong:
        return chosen, wrong[-1]
    return None


def collect_rollouts(
    backend: RolloutBackend,
    problems: Sequence[Problem],
    lambdas: Sequence[float],
    n_samples: int,
    sampling: SamplingConfig,
    tokenizer: Any,
) -> list[list[Rollout]]:
    """``n_samples`` graded rollouts per problem and λ, grouped per problem (all λ together)."""
    prompts = [render_prompt(tokenizer, p.question) for p in problems]
    groups: list[list[Rollout]] = [[] for _ in problems]
    for lam in lambdas:
        for s in range(n_samples):
            for i, completion in enumerate(backend.generate(prompts, lam, sampling.derive(1000 * s))):
                graded = grade(completion, problems[i].answer, tokenizer)
                groups[i].append(
                    Rollout(prompts[i], list(completion.token_ids), graded.correct, graded.thinking_tokens, completion.finish_reason)
                )
    return groups


def save_rollouts(path: Path, groups: Sequence[Sequence[Rollout]]) -> None:
    """Write rollouts as JSONL (one line per rollout, with its group index), atomically."""

    lines = [json.dumps({"group": g, **r.__dict__}) for g, group in enumerate(groups) for r in group]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def load_rollouts(path: Path) -> list[list[Rollout]]:
    groups: dict[int, list[Rollout]] = {}
    for rec in read_jsonl(path):
        g = rec.pop("group")
        groups.setdefault(g, []).append(Rollout(**rec))
    return [groups[g] for g in sorted(groups)]

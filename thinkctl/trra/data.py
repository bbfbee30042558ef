"""Distillation data for TrRa: responses of the fused teacher at λ (on-policy) or an existing trace dataset.

Generated responses are appended to a JSONL cache one chunk of prompts at a time, so an interrupted
generation resumes where it stopped and a resumed ``realign`` run never regenerates them. The cache
keeps every response with its grade; ``only_correct`` filters when reading, so changing the filter
does not need a new generation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from thinkctl.batch import Example, encode, encode_text
from thinkctl.data import PLAIN, Problem, render_prompt
from thinkctl.errors import ConfigError
from thinkctl.grading import grade
from thinkctl.io import append_jsonl, drop_partial_tail, iter_jsonl
from thinkctl.prompts import PromptConfig
from thinkctl.rollout.base import RolloutBackend
from thinkctl.sampling import SamplingConfig
from thinkctl.training import Trace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillExample:
    """One prompt (already rendered with the chat template) and the response to distil on.

    ``token_ids`` are the response tokens exactly as the teacher generated them (stop token included);
    they are None for user-supplied text, which is tokenized and closed with EOS instead. ``lam`` is the
    teacher's λ for this response (adaptive data: its problem's own); ``sample`` its index among the problem's
    samples at that λ.
    """

    prompt: str
    response: str
    token_ids: list[int] | None = None
    problem_id: str = ""
    lam: float | None = None
    correct: bool | None = None
    thinking_tokens: int | None = None
    finish_reason: str = "stop"
    sample: int = 0


def load_cache(path: Path) -> list[DistillExample]:
    """The teacher responses a cache file holds (none when it does not exist), without a line an interrupted
    write left half done."""
    if not path.exists():
        return []
    if drop_partial_tail(path):
        log.warning("dropped a partial last line from %s (an interrupted write)", path)
    return [DistillExample(**rec) for rec in iter_jsonl(path)]


def teacher_examples(
    backend: RolloutBackend,
    problems: Sequence[Problem],
    lam: float | Sequence[float],
    sampling: SamplingConfig,
    seeds: Sequence[int],
    prompt: PromptConfig = PLAIN,
    samples: Sequence[int] | None = None,
) -> list[DistillExample]:
    """The fused teacher's graded responses to ``problems`` in one backend call: at ``lam`` (or one λ per
    problem), each seeded by ``seeds``; ``samples`` are their indices among a problem's samples (default 0)."""
    prompts = [render_prompt(backend.tokenizer, p.question, prompt) for p in problems]
    completions = backend.generate(prompts, lam, sampling, seeds=seeds)
    lams = [lam] * len(problems) if isinstance(lam, (int, float)) else list(lam)
    out = []
    for problem, rendered, completion, row_lam, k in zip(problems, prompts, completions, lams, samples or [0] * len(problems)):
        graded = grade(completion, problem.answer, backend.tokenizer)
        out.append(DistillExample(
            prompt=rendered, response=completion.text, token_ids=list(completion.token_ids), problem_id=problem.id,
            lam=row_lam, correct=graded.correct, thinking_tokens=graded.thinking_tokens,
            finish_reason=completion.finish_reason, sample=k,
        ))
    return out


def _read_cache(path: Path, lam: float) -> list[DistillExample]:
    examples = load_cache(path)
    other = {ex.lam for ex in examples} - {lam}
    if other:
        raise ConfigError(
            f"{path} holds responses generated at λ={sorted(other)}, not λ={lam}: "
            "use another output directory, or delete the file to regenerate"
        )
    return examples


def generate_distillation_data(
    backend: RolloutBackend | None,
    problems: Sequence[Problem],
    lam: float,
    sampling: SamplingConfig,
    path: str | Path,
    *,
    only_correct: bool = False,
    chunk_size: int = 64,
    prompt: PromptConfig = PLAIN,
) -> list[DistillExample]:
    """Responses of the fused teacher at ``lam`` to every problem asked with ``prompt``, cached (and resumed) at ``path``.

    With ``only_correct`` only responses that the verifier grades correct and that stopped on their
    own (not cut off by ``max_new_tokens``) are returned. Without a backend the cache must be complete
    (the training stage of a distributed run reads what the data stage generated).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cached = _read_cache(path, lam)
    done = {ex.problem_id for ex in cached}
    todo = [p for p in problems if p.id not in done]
    if cached:
        log.info("distillation data %s: %d cached, %d to generate", path, len(cached), len(todo))
    if todo and backend is None:
        raise ConfigError(f"{len(todo)} problems have no teacher response in {path} yet: run `thinkctl realign --stage data` first")
    with tqdm(total=len(todo), desc=f"teacher responses λ={lam:g}", unit="prompt", disable=not todo) as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            # seeded by problem, so a resumed cache draws what an uninterrupted one would have
            new = teacher_examples(backend, chunk, lam, sampling, [sampling.seed_for(p.id, lam) for p in chunk], prompt)
            append_jsonl(path, [asdict(ex) for ex in new])
            cached.extend(new)
            bar.update(len(chunk))
    wanted = {p.id for p in problems}
    examples = [ex for ex in cached if ex.problem_id in wanted]
    if only_correct:
        examples = [ex for ex in examples if ex.correct and ex.finish_reason == "stop"]
        log.info("kept %d of %d teacher responses (verified correct)", len(examples), len(wanted))
    if not examples:
        hint = " after keeping only verified-correct responses (set only_correct: false to distil on all)" if only_correct else ""
        raise ConfigError(f"no distillation examples left from {path}{hint}")
    return examples


def from_traces(traces: Sequence[Trace]) -> list[DistillExample]:
    """Distillation examples from an existing trace dataset (see :class:`thinkctl.training.TraceConfig`)."""
    return [DistillExample(prompt=t.prompt, response=t.response, problem_id=t.id) for t in traces]


def encode_example(tokenizer: Any, example: DistillExample, max_length: int) -> Example:
    """Prompt + response token ids (truncated to ``max_length``) and the prompt length, for :func:`thinkctl.batch.collate`.

    A teacher response is trained on exactly the tokens it generated; user text is tokenized and closed with EOS.
    """
    if example.token_ids is None:
        return encode_text(tokenizer, example.prompt, example.response, max_length)
    return encode(tokenizer, example.prompt, example.token_ids, max_length)

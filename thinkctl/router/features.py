"""Query features a router can read before any generation, plus the model's own uncertainty signal.

Text features are cheap proxies for how much reasoning a question needs: its length, how many numbers
it carries and how many operation words it uses (on the tiny task every operation is one clause with
one operation verb, so ``n_op_words`` counts its steps). ``level`` is used when the benchmark grades
difficulty (MATH-500 levels 1–5, tiny = number of operations). :func:`prompt_entropy` adds the
reference model's own signal: how unsure it is over the prompt or its first few generated tokens.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

#: every feature a router may use, in the order policies store them
FEATURE_NAMES = ("level", "n_chars", "n_numbers", "n_op_words", "entropy")
#: features computed from the question text (the rest come from the record or from a model)
TEXT_FEATURES = ("n_chars", "n_numbers", "n_op_words")

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_OP_WORDS = re.compile(
    r"\b(more|buys|finds|gets|wins|gives|loses|sells|away|plus|minus|times|sum|difference|product|quotient|"
    r"divided|multiplied|twice|half|each|total|remaining|left|per|square|root|increase|decrease)\b",
    re.IGNORECASE,
)


def text_features(question: str) -> dict[str, float]:
    """Length, number count and operation-word count of a question."""
    return {
        "n_chars": float(len(question)),
        "n_numbers": float(len(_NUMBER.findall(question))),
        "n_op_words": float(len(_OP_WORDS.findall(question))),
    }


def query_features(question: str | None = None, level: int | None = None, **signals: float | None) -> dict[str, float]:
    """All features known for one query; unknown ones are simply absent (the router imputes them)."""
    unknown = sorted(set(signals) - set(FEATURE_NAMES))
    if unknown:
        from thinkctl.errors import ConfigError

        raise ConfigError(f"unknown router signal(s) {unknown}; known features are {list(FEATURE_NAMES)}")
    feats: dict[str, float] = {}
    if question is not None:
        feats.update(text_features(question))
    if level is not None:
        feats["level"] = float(level)
    for name, value in signals.items():
        if value is not None and math.isfinite(float(value)):
            feats[name] = float(value)
    return feats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) over the last dim, computed in float64."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def prompt_entropy(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    *,
    gen_tokens: int = 0,
    batch_size: int = 16,
) -> list[float]:
    """Mean next-token entropy of ``model`` per question: over the prompt, or its first ``gen_tokens``.

    With ``gen_tokens == 0`` the signal costs one forward pass over the rendered prompt (how surprised
    the model is by the question). With ``gen_tokens = k`` the model greedily writes its first k
    tokens and the entropy of those choices is averaged: a reasoning model that hesitates at the start
    of its thinking tends to think long. Either way it is far cheaper than a full rollout.
    """
    from thinkctl.data import render_prompt

    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[float] = []
    try:
        for start in range(0, len(questions), batch_size):
            prompts = [render_prompt(tokenizer, q) for q in questions[start : start + batch_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            if gen_tokens == 0:
                logits = model(**enc).logits[:, :-1]
                mask = enc["attention_mask"][:, 1:].bool() & enc["attention_mask"][:, :-1].bool()
                ent = entropy_from_logits(logits)
                out.extend(((ent * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist())
            else:
                gen = model.generate(
                    **enc, max_new_tokens=gen_tokens, do_sample=False, output_scores=True,
                    return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
                )
                ent = torch.stack([entropy_from_logits(s) for s in gen.scores], dim=1)
                out.extend(ent.mean(1).tolist())
    finally:
        tokenizer.padding_side = old_side
    return out


def feature_matrix(
    rows: Sequence[Mapping[str, float]], names: Sequence[str], mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Standardised features; a missing value becomes the training mean (0 after standardising)."""
    X = np.zeros((len(rows), len(names)), dtype=np.float64)
    for i, row in enumerate(rows):
        for j, name in enumerate(names):
            if name in row:
                X[i, j] = (row[name] - mean[j]) / std[j]
    return X

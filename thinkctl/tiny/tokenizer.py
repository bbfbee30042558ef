"""A byte-level BPE tokenizer trained locally on the tiny task, built as a real ``Qwen2Tokenizer``.

The merges are learnt here, but the normalizer and pre-tokenizer are Qwen2's own (single digits,
byte-level), and the object *is* a ``Qwen2Tokenizer``. That matters: ``AutoTokenizer`` reloads any
checkpoint whose config says ``model_type: qwen2`` as a ``Qwen2Tokenizer``, which rebuilds its
pre-tokenizer from Qwen2's defaults. A tokenizer trained with another pre-tokenizer would then
tokenize differently after the save/load round trip than during training, and the saved models
would read garbage. Single-digit numbers are also what real Qwen models see, so arithmetic is learnt
the same way.

``<think>``/``</think>`` are ordinary (non-special) added tokens, as in R1-Distill, so decoding
with ``skip_special_tokens`` keeps them for thinking-token counts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from thinkctl.tiny.task import (
    ORDINALS,
    THINK_CLOSE,
    THINK_OPEN,
    TinyProblem,
    clause,
    equation_check,
    generate_problems,
    long_trace,
    short_trace,
)

EOS, USER, ASSISTANT = "<|endoftext|>", "<|user|>", "<|assistant|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}" + EOS + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def _paired_steps(problem: TinyProblem) -> str:
    """The fast pass of task version 5: operations two at a time, restated (``First and second, they buy
    8 more and lose 3: 12 + 8 - 3 = 17.``); a lone last operation as one careful step."""
    parts = [f"Start with {problem.start}."]
    for i in range(0, problem.level, 2):
        if i + 1 == problem.level:
            parts.append(f"{clause(problem, i)}: {problem.steps[i].equation}.")
            continue
        a, b = problem.steps[i], problem.steps[i + 1]
        parts.append(f"{ORDINALS[i]} and {ORDINALS[i + 1].lower()}, they {a.sentence} and {b.sentence}: "
                     f"{a.before} {a.op} {a.operand} {b.op} {b.operand} = {b.after}.")
    return " ".join(parts)


def _corpus(n_problems: int, seed: int) -> Iterator[str]:
    """Questions with a short and a long trace each: a fixed corpus, like a real model's tokenizer.

    It is deliberately not rebuilt from the current traces: the merges (and so every token id) stay
    those of task version 5 (:func:`_paired_steps`, :func:`~thinkctl.tiny.task.equation_check`), so a change to a trace
    changes what the models learn and nothing else. Merges learnt from another corpus change the ids
    every stage trains on, and in trial builds that alone moved the reference's accuracy by tens of
    points.
    """
    rng = random.Random(seed)
    for p in generate_problems(n_problems, seed=seed, split="train"):
        yield p.question
        yield short_trace(p, rng, steps=_paired_steps)
        yield long_trace(p, rng, check=equation_check)


def _train_bpe(vocab_size: int, seed: int, n_problems: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn BPE merges under Qwen2's exact normalizer and pre-tokenizer; return vocab and merges."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, USER, ASSISTANT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(n_problems, seed), trainer=trainer)
    merges = [tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    return tok.get_vocab(), merges


def build_tokenizer(vocab_size: int = 512, seed: int = 0, n_problems: int = 2000) -> Qwen2Tokenizer:
    """Train the merges on generated problems and traces; wrap them in a ``Qwen2Tokenizer``."""
    vocab, merges = _train_bpe(vocab_size, seed, n_problems)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=None,
        additional_special_tokens=[USER, ASSISTANT],
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    tokenizer.add_tokens([THINK_OPEN, THINK_CLOSE])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer

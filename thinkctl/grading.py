"""Answer extraction, verifier grading with math-verify, and thinking-token counting.

Thinking tokens are the tokens between ``<think>`` and ``</think>``; when a chat template opens the
think block in the prompt (as DeepSeek-R1's does) the response starts inside it, so counting runs from
the first response token. A response that never closes the block is all thinking (and usually ran out
of tokens: its finish reason says so).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from thinkctl.data import Problem
    from thinkctl.rollout.base import Completion

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_GSM8K_ANSWER = re.compile(r"####\s*([^\n]+)")
VERIFY_TIMEOUT_S = 5


def extract_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` in ``text``, braces balanced; None when absent."""
    start = text.rfind("\\boxed")
    while start != -1:
        i = start + len("\\boxed")
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j].strip()
            return None
        start = text.rfind("\\boxed", 0, start)
    return None


def final_answer_text(text: str) -> str:
    """The part of a response after the think block (the whole text if the block never closed)."""
    return text.rsplit(THINK_CLOSE, 1)[1] if THINK_CLOSE in text else text


def extract_answer(text: str) -> str | None:
    r"""The final answer: the last ``\boxed{}`` after thinking, else a GSM8K ``#### x`` line."""
    tail = final_answer_text(text)
    boxed = extract_boxed(tail)
    if boxed is not None:
        return boxed
    match = _GSM8K_ANSWER.findall(tail)
    return match[-1].strip().replace(",", "") if match else None


def _timeout() -> int | None:
    """math-verify's timeouts use SIGALRM, which only the main thread may set; elsewhere run without."""
    return VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(expr: str) -> list[Any]:
    return parse(
        f"${expr}$",
        extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
        parsing_timeout=_timeout(),
    )


def is_correct(answer: str | None, gold: str) -> bool:
    """math-verify equivalence of an extracted answer and the gold answer (1/2 == 0.5 == \\frac{1}{2})."""
    if answer is None or not answer.strip():
        return False
    gold_parsed, pred_parsed = _parse(gold), _parse(answer)
    if not gold_parsed or not pred_parsed:
        return answer.strip() == gold.strip()
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=_timeout()))


def count_thinking_tokens(token_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens inside the think block of a response (see module docstring)."""
    vocab = tokenizer.get_vocab()
    open_id, close_id = vocab.get(THINK_OPEN), vocab.get(THINK_CLOSE)
    ids = list(token_ids)
    start = ids.index(open_id) + 1 if open_id is not None and open_id in ids else 0
    end = ids.index(close_id, start) if close_id is not None and close_id in ids[start:] else len(ids)
    if end == len(ids) and ids and ids[-1] in _special_ids(tokenizer):
        end -= 1
    return max(end - start, 0)


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    return set(tokenizer.all_special_ids)


def grade(problem: Problem, completion: Completion, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The per-sample record fields that depend on the response (see ``thinkctl.sweep`` for the rest)."""
    answer = extract_answer(completion.text)
    return {
        "problem_id": problem.id,
        "level": problem.level,
        "lam": completion.lam,
        "response": completion.text,
        "answer": answer,
        "gold": problem.answer,
        "correct": is_correct(answer, problem.answer),
        "thinking_tokens": count_thinking_tokens(completion.token_ids, tokenizer),
        "total_tokens": completion.num_tokens,
        "finish_reason": completion.finish_reason,
    }

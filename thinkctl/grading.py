"""Verifier grading with math-verify, and thinking-token counting.

Thinking tokens are the tokens between ``<think>`` and ``</think>``; when a chat template opens the
think block in the prompt (as DeepSeek-R1's does) the response starts inside it, so counting runs from
the first response token. A response that never closes the block is all thinking (and usually ran out
of tokens: its finish reason says so).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from thinkctl.answers import THINK_CLOSE, THINK_OPEN, extract_answer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from thinkctl.rollout.base import Completion

VERIFY_TIMEOUT_S = 5


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


@dataclass(frozen=True)
class Grade:
    """What grading says about one response: its extracted answer, whether it is right, how long it thought."""

    answer: str | None
    correct: bool
    thinking_tokens: int


def grade(completion: Completion, gold: str, tokenizer: PreTrainedTokenizerBase) -> Grade:
    """Extract the answer of ``completion``, verify it against ``gold`` and count its thinking tokens."""
    answer = extract_answer(completion.text)
    return Grade(answer, is_correct(answer, gold), count_thinking_tokens(completion.token_ids, tokenizer))

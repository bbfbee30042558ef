"""Verifier grading with math-verify: a response's final answer against the gold one, and its thinking length."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from thinkctl.answers import extract_answer
from thinkctl.thinking import count_thinking_tokens, thinking_closed

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


@dataclass(frozen=True)
class Grade:
    """What grading says about one response: its extracted answer, whether it is right, how long it
    thought, and whether its think block closed (None: it had none)."""

    answer: str | None
    correct: bool
    thinking_tokens: int
    thinking_closed: bool | None = None


def grade(completion: Completion, gold: str, tokenizer: PreTrainedTokenizerBase, opened: bool = False) -> Grade:
    """Extract the answer of ``completion``, verify it against ``gold`` and count its thinking tokens.

    ``opened``: the prompt opened the think block (:func:`thinkctl.thinking.prompt_opens_thinking`);
    a response whose block never closed has no answer and is graded incorrect.
    """
    answer = extract_answer(completion.text, opened)
    return Grade(answer, is_correct(answer, gold), count_thinking_tokens(completion.token_ids, tokenizer, opened),
                 thinking_closed(completion.text, opened))

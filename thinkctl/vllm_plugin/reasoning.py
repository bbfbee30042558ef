"""The ``thinkctl`` reasoning parser: R1-style ``<think>`` blocks, thinking counted as thinkctl counts it.

vLLM's ``deepseek_r1`` parser already splits ``<think>…</think>`` from the answer (also when the
chat template opens the block in the prompt, as R1's does) and names the start/end strings the
thinking-token budget forces. What it does not do is count reasoning tokens the way thinkctl's
sweeps, router and reports do: it counts only tokens between a ``<think>`` and a ``</think>`` of the
response, so a response whose block was opened by the prompt reports 0. Usage figures that disagree
with the records a user calibrated on would be useless for budgeting, so this parser reports
``usage.completion_tokens_details.reasoning_tokens`` with :func:`thinkctl.grading.count_thinking_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vllm.reasoning.deepseek_r1_reasoning_parser import DeepSeekR1ReasoningParser

from thinkctl.thinking import THINK_CLOSE, THINK_OPEN, count_thinking_tokens


def tokenizer_thinks(tokenizer: Any) -> bool:
    """Whether ``<think>`` and ``</think>`` are each one token of ``tokenizer``.

    The reasoning parser looks the markers up in the vocabulary and the thinking budget encodes them,
    so both must hold; a tokenizer that merely lists them in its vocabulary but splits the text
    (a pre-tokenizer that breaks on ``<``) cannot be budgeted.
    """
    vocab = tokenizer.get_vocab()
    return all(t in vocab and tokenizer.encode(t, add_special_tokens=False) == [vocab[t]] for t in (THINK_OPEN, THINK_CLOSE))


class ThinkctlReasoningParser(DeepSeekR1ReasoningParser):
    """``deepseek_r1`` splitting, with reasoning tokens counted by thinkctl's grader."""

    def count_reasoning_tokens(self, token_ids: Sequence[int]) -> int:
        return count_thinking_tokens(token_ids, self.model_tokenizer)

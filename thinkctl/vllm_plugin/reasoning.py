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

from vllm.reasoning.deepseek_r1_reasoning_parser import DeepSeekR1ReasoningParser

from thinkctl.thinking import count_thinking_tokens


class ThinkctlReasoningParser(DeepSeekR1ReasoningParser):
    """``deepseek_r1`` splitting, with reasoning tokens counted by thinkctl's grader."""

    def count_reasoning_tokens(self, token_ids: Sequence[int]) -> int:
        return count_thinking_tokens(token_ids, self.model_tokenizer)

"""The think block: its markers, and how many tokens a response spends inside it.

Thinking tokens are the tokens between ``<think>`` and ``</think>``; when a chat template opens the
think block in the prompt (as DeepSeek-R1's does) the response starts inside it, so counting runs from
the first response token. A response that never closes the block is all thinking (and usually ran out
of tokens: its finish reason says so).

This sits at the bottom of the package because everything that reports thinking (the grader, the vLLM
reasoning parser and the server's usage numbers) must count it the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def think_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int] | None:
    """The ids of ``<think>`` and ``</think>`` when each is one token of ``tokenizer``, else None.

    Controlling thinking while decoding (a budget that forces ``</think>``, a floor that holds it back,
    vLLM's reasoning parser) needs the markers as single tokens; a tokenizer that merely lists them in
    its vocabulary but splits the text (a pre-tokenizer that breaks on ``<``) cannot be controlled.
    """
    vocab = tokenizer.get_vocab()
    if all(t in vocab and tokenizer.encode(t, add_special_tokens=False) == [vocab[t]] for t in (THINK_OPEN, THINK_CLOSE)):
        return vocab[THINK_OPEN], vocab[THINK_CLOSE]
    return None


def opens_thinking(prompt_ids: Sequence[int], markers: tuple[int, int]) -> bool:
    """Whether a prompt leaves a think block open, so the response starts inside it (R1's template)."""
    open_id, close_id = markers
    ids = list(prompt_ids)
    last_open = max((i for i, t in enumerate(ids) if t == open_id), default=-1)
    last_close = max((i for i, t in enumerate(ids) if t == close_id), default=-1)
    return last_open > last_close


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

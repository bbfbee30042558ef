"""The think block: its markers, where it starts, and how many tokens a response spends inside it.

Thinking tokens are the tokens between ``<think>`` and ``</think>``. When a chat template opens the
think block in the prompt (as DeepSeek-R1's does, ending the prompt with ``<think>\\n``) the response
starts inside it, so counting runs from the first response token; otherwise it starts after the
response's first ``<think>``. Either way a later ``<think>`` inside the block (models sometimes emit
one mid-thought) neither restarts the count nor counts as thinking: the block is one block until its
first ``</think>``. A response that never closes the block is all thinking (and usually ran out of
tokens: its finish reason says so); it has no final answer (:mod:`thinkctl.answers`).

Whether the prompt opened the block is a fact about the prompt, so callers that know the prompt
(sweeps) say so with ``opened``; callers that see only the response (the vLLM reasoning parser, the
server's usage numbers) leave it ``None``, which reads a response without any ``<think>`` as opened by
its prompt.

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


def prompt_opens_thinking(prompt: str) -> bool:
    """Whether a rendered prompt ends inside an open think block (its last ``<think>`` is never closed)."""
    return prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE)


def count_thinking_tokens(
    token_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase, opened: bool | None = None
) -> int:
    """Tokens inside the think block of a response; ``opened``: the prompt opened it (see module docstring)."""
    vocab = tokenizer.get_vocab()
    open_id, close_id = vocab.get(THINK_OPEN), vocab.get(THINK_CLOSE)
    ids = list(token_ids)
    if opened is None:
        opened = open_id is None or open_id not in ids
    start = 0 if opened else ids.index(open_id) + 1 if open_id is not None and open_id in ids else 0
    end = ids.index(close_id, start) if close_id is not None and close_id in ids[start:] else len(ids)
    if end == len(ids) and ids and ids[-1] in _special_ids(tokenizer):
        end -= 1
    return sum(1 for t in ids[start:end] if t != open_id)


def thinking_closed(text: str, opened: bool = False) -> bool | None:
    """Whether the response ``text`` closed its think block: None when it had none (no marker, and the
    prompt opened none), False when the block opened (in the prompt or the response) and never closed."""
    if THINK_CLOSE in text:
        return True
    return False if opened or THINK_OPEN in text else None


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    return set(tokenizer.all_special_ids)


def prompt_thinking_tail(prompt_ids: Sequence[int], open_id: int, close_id: int) -> int | None:
    """Tokens the prompt already put inside an open think block (those after its last ``<think>``), or
    None when the prompt leaves no block open. R1-Distill's generation prompt ends ``<think>\\n``: 1.

    vLLM's ``thinking_token_budget`` counts every token after the last think-start, the prompt's
    included (``_init_state_entry`` in vllm/v1/sample/thinking_budget_state.py; the V2 kernel in
    vllm/v1/worker/gpu/sample/thinking_budget.py scans prompt and output alike), while thinkctl counts
    thinking in the response (:func:`count_thinking_tokens`). :func:`engine_thinking_budget` converts.
    """
    ids = list(prompt_ids)
    last_open = max((i for i, t in enumerate(ids) if t == open_id), default=-1)
    last_close = max((i for i, t in enumerate(ids) if t == close_id), default=-1)
    return len(ids) - last_open - 1 if last_open > last_close else None


def engine_thinking_budget(budget: int, tail: int | None) -> int:
    """The ``thinking_token_budget`` to give vLLM for ``budget`` thinking tokens of the response, after a
    prompt whose open think block already holds ``tail`` tokens (see :func:`prompt_thinking_tail`)."""
    return budget + (tail or 0)


def budget_forced(response_ids: Sequence[int], engine_budget: int, tail: int | None, open_id: int, close_id: int) -> bool:
    """Whether vLLM forced the response's first ``</think>``: it came when vLLM's count reached its budget.

    vLLM counts the tokens after the last think-start seen so far (prompt and response), and from the
    moment that count reaches ``engine_budget`` the next token is forced to ``</think>``. ``tail`` is the
    prompt's :func:`prompt_thinking_tail` (None: the prompt opened no block).
    """
    ids = list(response_ids)
    if close_id not in ids:
        return False
    close = ids.index(close_id)
    opens = [i for i in range(close) if ids[i] == open_id]
    if opens:
        count = close - opens[-1] - 1
    elif tail is not None:
        count = tail + close
    else:
        return False
    return count >= engine_budget

"""Final answers out of text: a model's response, or a dataset's reference solution.

Both sides of grading read answers the same way (the last ``\\boxed{}``, else GSM8K's ``#### x``
line), so they live here once, below the data loaders and the grader that use them.

A response's answer is what follows its think block, which ends at its first ``</think>`` (where
:mod:`thinkctl.thinking` stops counting thinking tokens, and where a thinking budget closes it). A box
inside the block is a thought, not an answer, and a response whose block never closed (cut off by the token limit, usually) has no answer
at all: grading a ``\\boxed{}`` found mid-thought would credit a guess the model had not committed to.
"""

from __future__ import annotations

import re

from thinkctl.thinking import THINK_CLOSE, thinking_closed

_GSM8K_ANSWER = re.compile(r"####\s*([^\n]+)")


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


def extract_gsm8k(text: str) -> str | None:
    """The last GSM8K-style ``#### x`` answer in ``text`` (thousands separators dropped); None when absent."""
    match = _GSM8K_ANSWER.findall(text)
    return match[-1].strip().replace(",", "") if match else None


def final_answer_text(text: str, opened: bool = False) -> str | None:
    """The part of a response after its think block: the whole text when it has no block, None when
    the block never closed. ``opened``: the prompt opened the block (R1's template)."""
    closed = thinking_closed(text, opened)
    if closed is None:
        return text
    return text.split(THINK_CLOSE, 1)[1] if closed else None  # the block ends at its first `</think>`, as counted


def extract_answer(text: str, opened: bool = False) -> str | None:
    r"""A response's final answer: the last ``\boxed{}`` after thinking, else a GSM8K ``#### x`` line;
    None when there is neither, or the thinking never closed (see module docstring)."""
    tail = final_answer_text(text, opened)
    if tail is None:
        return None
    boxed = extract_boxed(tail)
    return boxed if boxed is not None else extract_gsm8k(tail)


def gold_answer(raw: str, from_solution: bool = False) -> str:
    """A dataset's answer field reduced to its final answer: GSM8K's ``#### x``, or a worked
    solution's ``\\boxed{}`` (``from_solution``, MATH's ``solution`` field); otherwise the text itself."""
    gsm8k = extract_gsm8k(raw)
    if gsm8k is not None:
        return gsm8k
    boxed = extract_boxed(raw) if from_solution else None
    return boxed if boxed is not None else raw.strip()

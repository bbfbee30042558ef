"""Final answers out of text: a model's response, or a dataset's reference solution.

Both sides of grading read answers the same way (the last ``\\boxed{}``, else GSM8K's ``#### x``
line), so they live here once, below the data loaders and the grader that use them.
"""

from __future__ import annotations

import re

from thinkctl.thinking import THINK_CLOSE

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


def final_answer_text(text: str) -> str:
    """The part of a response after the think block (the whole text if the block never closed)."""
    return text.rsplit(THINK_CLOSE, 1)[1] if THINK_CLOSE in text else text


def extract_answer(text: str) -> str | None:
    r"""A response's final answer: the last ``\boxed{}`` after thinking, else a GSM8K ``#### x`` line."""
    tail = final_answer_text(text)
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

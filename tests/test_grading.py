"""Answer extraction, math-verify equivalence, and thinking-token counting."""

import pytest

from thinkctl.answers import extract_answer, extract_boxed
from thinkctl.grading import grade, is_correct
from thinkctl.rollout.base import Completion
from thinkctl.thinking import count_thinking_tokens, prompt_opens_thinking, thinking_closed


def test_extract_boxed_balances_braces_and_takes_the_last() -> None:
    assert extract_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed {42}") == "42"
    assert extract_boxed("no box") is None
    assert extract_boxed(r"\boxed{unclosed") is None


def test_extract_answer_ignores_boxes_inside_thinking() -> None:
    text = r"<think> maybe \boxed{3}? no. </think> The answer is \boxed{4}."
    assert extract_answer(text) == "4"
    assert extract_answer(r"<think> \boxed{3} </think> I give up") is None


def test_a_response_whose_thinking_never_closed_has_no_answer() -> None:
    cut_off = r"<think> so far it looks like \boxed{4}, but let me check"
    assert extract_answer(cut_off) is None and thinking_closed(cut_off) is False
    # R1's template opens the block in the prompt: the response has no <think> of its own
    assert extract_answer(r"it looks like \boxed{4}, but", opened=True) is None
    assert extract_answer(r"fine. </think> \boxed{4}", opened=True) == "4"
    # a model that does not think at all: the whole response is the answer
    assert extract_answer(r"\boxed{4}") == "4" and thinking_closed(r"\boxed{4}") is None
    assert prompt_opens_thinking("<|User|>q<|Assistant|><think>\n")
    assert not prompt_opens_thinking("<|user|>q<|assistant|>") and not prompt_opens_thinking("<think>a</think> q")


def test_unclosed_thinking_is_graded_incorrect(word_tokenizer) -> None:
    text = r"<think> 1 + 2 = 3 \boxed{ 3 }"
    ids = word_tokenizer(text, add_special_tokens=False)["input_ids"]
    result = grade(Completion(text=text.replace("{ ", "{").replace(" }", "}"), token_ids=ids, finish_reason="length", lam=0.0),
                   "3", word_tokenizer)
    assert (result.answer, result.correct, result.thinking_closed) == (None, False, False)


def test_gsm8k_form() -> None:
    assert extract_answer("Natalia sold 48 + 24 = 72 clips.\n#### 1,072") == "1072"


@pytest.mark.parametrize(
    "pred,gold,ok",
    [
        ("0.5", "1/2", True),
        (r"\frac{1}{2}", "0.5", True),
        (r"\dfrac{1}{2}", r"\frac12", True),
        ("72", "72", True),
        ("72.0", "72", True),
        ("71", "72", False),
        (r"2\sqrt{2}", r"\sqrt{8}", True),
        (None, "1", False),
        ("", "1", False),
    ],
)
def test_is_correct_accepts_equivalent_forms(pred, gold, ok) -> None:
    assert is_correct(pred, gold) is ok


def test_count_thinking_tokens(word_tokenizer) -> None:
    enc = lambda s: word_tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert count_thinking_tokens(enc("<think> 1 + 2 = 3 </think> the answer is 3 <|endoftext|>"), word_tokenizer) == 5
    # an R1-style template opens the block in the prompt: count from the first response token
    assert count_thinking_tokens(enc("1 + 2 = 3 </think> 3"), word_tokenizer) == 5
    # never closed: everything but the final EOS is thinking
    assert count_thinking_tokens(enc("<think> 1 + 2 <|endoftext|>"), word_tokenizer) == 3
    assert count_thinking_tokens(enc("<think> 1 + 2 + 3"), word_tokenizer) == 5


def test_a_stray_think_token_neither_restarts_nor_counts(word_tokenizer) -> None:
    enc = lambda s: word_tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert count_thinking_tokens(enc("<think> 1 + 2 <think> = 3 </think> 3"), word_tokenizer) == 5
    # the prompt opened the block: the response's own <think> mid-thought is a stray one
    assert count_thinking_tokens(enc("1 + 2 <think> = 3 </think> 3"), word_tokenizer, opened=True) == 5
    assert count_thinking_tokens(enc("1 + 2 <think> <think> = 3 <|endoftext|>"), word_tokenizer, opened=True) == 5
    # a prompt that did not open one: thinking starts at the response's first <think>
    assert count_thinking_tokens(enc("the answer <think> 1 + 2 </think> 3"), word_tokenizer, opened=False) == 3


def test_the_answer_follows_the_first_close_where_thinking_is_counted_to(word_tokenizer) -> None:
    text = "<think> 2 + 2 </think> the answer is \\boxed{4} . </think> 5"
    assert extract_answer(text) == "4"  # a stray `</think>` after the answer does not hide it
    ids = word_tokenizer(text.replace("{4}", "{ 4 }"), add_special_tokens=False)["input_ids"]
    assert count_thinking_tokens(ids, word_tokenizer) == 3  # `2 + 2`: the block ends at the first `</think>` too
    assert extract_answer("\\boxed{7} wait </think> \\boxed{8}", opened=True) == "8"

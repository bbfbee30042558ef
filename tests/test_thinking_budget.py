"""Thinking budgets and floors on the transformers backend: plain, fused-pair and InRa models.

The budget check is shared with the vLLM tests (``tests.conftest_vllm.check_budgets``), so both engines
are held to one definition: after B thinking tokens ``</think>`` is forced and an answer follows, and
nothing before the budget acts changes.
"""

from __future__ import annotations

import pytest

from tests.conftest_vllm import TAIL_PROMPTS, THINK_CLOSE, THINK_PROMPTS, budget_runs, check_budgets, save_random_model, write_inra_checkpoint
from thinkctl.data import Problem
from thinkctl.errors import ConfigError
from thinkctl.inra import make_inra_backend
from thinkctl.records import load_records
from thinkctl.rollout.hf import HFBackend
from thinkctl.sampling import SamplingConfig
from thinkctl.sweep import run_sweep


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget_models")
    base = save_random_model(root / "base", seed=0)
    return {"base": base, "aligned": save_random_model(root / "aligned", seed=1),
            "inra": write_inra_checkpoint(base, root / "inra", perturb=0.2)}


def test_budget_plain(ckpts):
    backend = HFBackend.from_paths(str(ckpts["base"]))
    check_budgets(budget_runs(backend, 0.0), backend.tokenizer)
    check_budgets(budget_runs(backend, 0.0, TAIL_PROMPTS), backend.tokenizer)  # the vLLM tests hold vLLM to the same


def test_thinking_tail_and_when_vllm_forced_the_end():
    """vLLM's budget counts the tokens after the last ``<think>``, prompt included (ids: 2 = <think>, 3 = </think>)."""
    from thinkctl.thinking import budget_forced, engine_thinking_budget, prompt_thinking_tail

    assert prompt_thinking_tail([5, 2, 9], 2, 3) == 1  # "... <think>\\n"
    assert prompt_thinking_tail([5, 2], 2, 3) == 0
    assert prompt_thinking_tail([2, 9, 3, 5], 2, 3) is None and prompt_thinking_tail([5], 2, 3) is None
    assert engine_thinking_budget(4, 1) == 5 and engine_thinking_budget(4, None) == 4
    # prompt tail 1, budget 2 → vLLM budget 3: </think> after two response tokens was forced
    assert budget_forced([7, 8, 3, 9], 3, 1, 2, 3)
    assert not budget_forced([7, 3, 9], 3, 1, 2, 3), "closed after one token: the model's own choice"
    assert not budget_forced([7, 8, 9], 3, 1, 2, 3), "never closed (length or EOS): nothing was forced"
    # the prompt opened no block: the count starts after the response's <think>
    assert budget_forced([2, 7, 8, 3], 2, None, 2, 3) and not budget_forced([7, 8, 3], 2, None, 2, 3)


def test_budget_fused_pair_with_mixed_lambdas(ckpts):
    backend = HFBackend.from_paths(str(ckpts["base"]), str(ckpts["aligned"]))
    check_budgets(budget_runs(backend, [1.0, 0.0, 0.5, -0.5]), backend.tokenizer)


def test_budget_inra(ckpts):
    backend = make_inra_backend(ckpts["inra"])
    check_budgets(budget_runs(backend, [0.0, 1.0, 0.5, 1.5]), backend.tokenizer)


def test_floor_holds_back_the_end_of_thinking(ckpts):
    """Below the floor neither ``</think>`` nor end-of-text can be chosen; above it decoding is free again."""
    backend = HFBackend.from_paths(str(ckpts["base"]))
    free = backend.generate(THINK_PROMPTS, 0.0, SamplingConfig(max_new_tokens=24))
    early = [c for c in free if next((j for j, t in enumerate(c.token_ids) if t in (THINK_CLOSE, 0)), 99) < 6]
    assert early, "some free runs should end their thinking within 6 tokens for the floor to matter"
    floored = backend.generate(THINK_PROMPTS, 0.0, SamplingConfig(max_new_tokens=24, min_thinking_tokens=6))
    for c in floored:
        end = next((j for j, t in enumerate(c.token_ids) if t in (THINK_CLOSE, 0)), len(c.token_ids))
        assert end >= 6, c.token_ids  # the prompt opened the block: the first 6 response tokens are all thinking
    both = backend.generate(THINK_PROMPTS, 0.0, SamplingConfig(max_new_tokens=24, min_thinking_tokens=3, max_thinking_tokens=3))
    assert all(c.token_ids.index(THINK_CLOSE) == 3 for c in both), "min = max pins thinking to exactly that length"


def test_bounds_need_single_token_markers_and_valid_values():
    from tests.conftest import WORDS, make_random_lm, make_word_tokenizer

    no_close = make_word_tokenizer([w for w in WORDS if w != "</think>"])  # "</think>" would be <unk>
    backend = HFBackend(make_random_lm(vocab_size=len(no_close)), None, no_close)
    for bound in ({"max_thinking_tokens": 2}, {"min_thinking_tokens": 2}):
        with pytest.raises(ConfigError, match="single tokens"):
            backend.generate(["1 + 2 = <think>"], 0.0, SamplingConfig(max_new_tokens=4, **bound))
    assert backend.generate(["1 + 2 = <think>"], 0.0, SamplingConfig(max_new_tokens=4))[0].meta == {}
    with pytest.raises(ConfigError, match="non-negative integer"):
        SamplingConfig(max_thinking_tokens=-1)
    with pytest.raises(ConfigError, match="non-negative integer"):
        SamplingConfig(min_thinking_tokens=1.5)
    with pytest.raises(ConfigError, match="above max_thinking_tokens"):
        SamplingConfig(min_thinking_tokens=5, max_thinking_tokens=2)


def test_sweep_records_say_when_the_budget_forced_the_end(ckpts, tmp_path):
    backend = HFBackend.from_paths(str(ckpts["base"]))
    problems = [Problem(f"p{i}", p.removesuffix(" = <think>"), "3") for i, p in enumerate(THINK_PROMPTS)]
    backend.tokenizer.chat_template = None  # render the bare question; the template is not what is under test
    results = run_sweep(backend, problems, [0.0], SamplingConfig(max_new_tokens=24, max_thinking_tokens=2), tmp_path,
                        benchmark="t", summarize=False)
    records = load_records([results])
    assert records["thinking_forced"].notna().all()
    forced = records[records["thinking_forced"].astype(bool)]
    assert (forced["thinking_tokens"] == 2).all()

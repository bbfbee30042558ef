"""The tiny default task, tokenizer and pair build."""

import json
import random
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from thinkctl.answers import extract_answer
from thinkctl.grading import is_correct
from thinkctl.thinking import count_thinking_tokens
from thinkctl.tiny import TinyBuildConfig, build_tiny_pair, generate_problems, long_trace, short_trace
from thinkctl.tiny.task import CHECK_OPENERS, MAX_VALUE
from thinkctl.tiny.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_generator_is_deterministic_with_disjoint_splits() -> None:
    a = generate_problems(300, seed=0, split="train")
    assert a == generate_problems(300, seed=0, split="train")
    assert a != generate_problems(300, seed=1, split="train")
    test = generate_problems(300, seed=0, split="test")
    assert not {p.question for p in a} & {p.question for p in test}
    assert len({p.id for p in a + test}) == 600


def test_problems_are_arithmetically_consistent() -> None:
    for p in generate_problems(500, seed=3, split="train"):
        value = p.start
        for step in p.steps:
            value = value + step.operand if step.op == "+" else value - step.operand
            assert 0 <= value <= MAX_VALUE and step.after == value
        assert p.answer == str(value) and p.level == len(p.steps)


def test_both_traces_grade_correct_and_differ_only_in_checks(tokenizer) -> None:
    rng = random.Random(0)
    longs, shorts = [], []
    for p in generate_problems(200, seed=0, split="test"):
        long, short = long_trace(p, rng), short_trace(p, rng)
        for trace, bucket in ((long, longs), (short, shorts)):
            assert is_correct(extract_answer(trace), p.answer)
            ids = tokenizer(trace, add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(ids) == trace
            bucket.append(count_thinking_tokens(ids, tokenizer))
        long_checks, short_checks = (sum(o in t for o in CHECK_OPENERS) for t in (long, short))
        assert 1 <= long_checks <= 3 and short_checks <= (0 if p.level == 1 else 1)
        assert long.startswith(short.split(" </think>")[0])  # same steps first: only the checks differ
    assert sum(longs) / len(longs) > 2.5 * sum(shorts) / len(shorts)


def test_tokenizer_chat_template_and_special_tokens(tokenizer) -> None:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Q?"}], add_generation_prompt=True, tokenize=False)
    assert prompt == "<|user|>Q?<|assistant|>"
    ids = tokenizer("<think> 1 + 2 = 3. </think> The answer is \\boxed{3}.<|endoftext|>", add_special_tokens=False)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True).startswith("<think>")
    for n in range(MAX_VALUE + 1):
        assert tokenizer.decode(tokenizer(f" {n}", add_special_tokens=False)["input_ids"]) == f" {n}"


def test_saved_tokenizer_reloads_identically(tokenizer, tmp_path) -> None:
    """AutoTokenizer reloads a qwen2 checkpoint as Qwen2Tokenizer: it must tokenize exactly as in training."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer.save_pretrained(tmp_path)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=1,
                                 num_attention_heads=1, num_key_value_heads=1, intermediate_size=64)).save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(reloaded) is type(tokenizer) and reloaded.padding_side == "left"
    rng = random.Random(1)
    for p in generate_problems(50, seed=0, split="test"):
        text = tokenizer.apply_chat_template([{"role": "user", "content": p.question}], add_generation_prompt=True, tokenize=False)
        for s in (text, short_trace(p, rng), long_trace(p, rng) + tokenizer.eos_token):
            assert reloaded(s, add_special_tokens=False)["input_ids"] == tokenizer(s, add_special_tokens=False)["input_ids"]


def test_build_is_deterministic_resumable_and_loadable(tmp_path) -> None:
    cfg = TinyBuildConfig(n_train=300, solve_steps=2, style_steps=4, aligned_steps=2, n_eval=0, num_layers=1, batch_size=4)
    pair = build_tiny_pair(tmp_path / "a", cfg)
    again = build_tiny_pair(tmp_path / "b", cfg)
    ref_a = AutoModelForCausalLM.from_pretrained(pair.reference)
    ref_b = AutoModelForCausalLM.from_pretrained(again.reference)
    assert ref_a.config.head_dim == 64 and ref_a.config.model_type == "qwen2"
    assert all(torch.equal(x, y) for x, y in zip(ref_a.state_dict().values(), ref_b.state_dict().values()))
    aligned = AutoModelForCausalLM.from_pretrained(pair.aligned)
    assert any(not torch.equal(x, y) for x, y in zip(ref_a.state_dict().values(), aligned.state_dict().values()))

    ref_weights = (pair.reference / "model.safetensors").stat().st_mtime_ns
    aligned_weights = (pair.aligned / "model.safetensors").read_bytes()
    (pair.aligned / "thinkctl_build.json").unlink()  # an interrupted build: aligned never finished
    build_tiny_pair(tmp_path / "a", cfg)
    assert (pair.reference / "model.safetensors").stat().st_mtime_ns == ref_weights
    assert (pair.aligned / "model.safetensors").read_bytes() == aligned_weights
    info = json.loads((tmp_path / "a" / "build_info.json").read_text())
    assert info["config"]["style_steps"] == 4 and "final_loss" in info["aligned"]

    build_tiny_pair(tmp_path / "a", replace(cfg, aligned_steps=3))  # only the aligned stage depends on it
    assert (pair.reference / "model.safetensors").stat().st_mtime_ns == ref_weights
    assert (pair.aligned / "model.safetensors").read_bytes() != aligned_weights


@pytest.mark.slow
def test_default_pair_meets_quality_targets(tmp_path) -> None:
    """The default build (reused from $THINKCTL_HOME/tiny when present): both models accurate on held-out
    problems, the reference thinks ≥ 3× longer, and the demo sweep's thinking falls as λ rises past 1."""
    import pandas as pd

    from thinkctl.cli import main
    from thinkctl.tiny import default_tiny_dir

    pair = build_tiny_pair(default_tiny_dir())
    info = json.loads((pair.root / "build_info.json").read_text())
    ref, al = info["reference"]["held_out"], info["aligned"]["held_out"]
    assert ref["accuracy"] >= 0.85 and al["accuracy"] >= 0.85
    assert ref["mean_thinking_tokens"] >= 3 * al["mean_thinking_tokens"]

    assert main(["demo", "--tiny-dir", str(pair.root), "--out", str(tmp_path / "demo")]) == 0
    summary = pd.read_csv(tmp_path / "demo" / "summary.csv").sort_values("lam")
    thinking = dict(zip(summary["lam"], summary["mean_thinking_tokens"]))
    values = list(thinking.values())
    assert all(a >= b for a, b in zip(values, values[1:])), thinking
    assert thinking[0.0] > thinking[1.0] > thinking[1.25], thinking
    assert summary["accuracy"].min() >= 0.85


def test_tiny_recipe_spells_out_the_built_in_defaults() -> None:
    from dataclasses import asdict
    from pathlib import Path

    from thinkctl.cli import DEMO_DEFAULTS
    from thinkctl.config import load_section
    from thinkctl.sweep import SweepConfig

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"
    assert load_section(TinyBuildConfig, recipe, "tiny") == TinyBuildConfig()
    from_recipe = asdict(load_section(SweepConfig, recipe, "sweep"))
    defaults = asdict(SweepConfig())
    assert from_recipe == {**defaults, **DEMO_DEFAULTS}

"""The tiny default task, tokenizer and pair build."""

import json
import random
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from thinkctl.answers import extract_answer
from thinkctl.grading import is_correct
from thinkctl.records import within_points
from thinkctl.thinking import count_thinking_tokens
from thinkctl.tiny import TinyBuildConfig, build_tiny_pair, generate_problems, long_trace, short_trace
from thinkctl.tiny.task import (
    CHECK_OPENERS,
    MAX_VALUE,
    ORDINALS,
    careful_steps,
    careful_trace,
    fast_steps,
    fast_trace,
    solver_trace,
)
from thinkctl.tiny.tokenizer import build_tokenizer

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


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


def test_traces_grade_correct_and_differ_in_style_and_checks(tokenizer) -> None:
    """Reference: careful steps then 0–3 checks that restate only the answer; aligned: the first step careful, the rest
    in one equation with only the result written (or careful throughout, unchecked)."""
    rng = random.Random(0)
    longs, shorts, long_checks = [], [], []
    for p in generate_problems(300, seed=0, split="test"):
        long, short = long_trace(p, rng), short_trace(p, rng)
        for trace, bucket in ((long, longs), (short, shorts)):
            assert is_correct(extract_answer(trace), p.answer)
            ids = tokenizer(trace, add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(ids) == trace
            bucket.append(count_thinking_tokens(ids, tokenizer))
        assert long.startswith(f"<think> {careful_steps(p)}")
        checks = sum(o in long for o in CHECK_OPENERS)
        assert long.count(f"The last step is right. So the answer is {p.answer}.") == checks
        assert long.count("=") == p.level  # checks compute nothing: the careful equations are the only ones
        long_checks.append(checks)
        assert not any(o in short for o in CHECK_OPENERS)
        assert short in (fast_trace(p), careful_trace(p, 0))
        fast = fast_steps(p)
        first = f"Start with {p.start}. {ORDINALS[0]}, they {p.steps[0].sentence}: {p.steps[0].equation}."
        assert fast.startswith(first) and careful_steps(p).startswith(first)  # the careful first step, token for token
        if p.level == 1:
            assert fast == first
        else:  # the rest in one equation: only its result written, no intermediate value
            rest = fast[len(first):]
            assert rest.count("=") == 1 and rest.endswith(f"= {p.answer}.")
            assert eval(rest.removeprefix(" Then ").split("=")[0]) == int(p.answer)  # the chain is the problem's own
            assert not any(s.sentence in rest for s in p.steps) and len(fast) < len(careful_steps(p))
    assert set(long_checks) == {0, 1, 2, 3} and max(set(long_checks), key=long_checks.count) == 3
    assert sum(longs) / len(longs) > 2 * sum(shorts) / len(shorts)


def test_levels_cycle_and_difficulty_is_visible_in_the_prompt() -> None:
    problems = generate_problems(50, seed=0, split="train")
    assert [p.level for p in problems[:10]] == [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]
    for p in problems:
        assert sum(o in p.question for o in ORDINALS) == p.level


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

    other = build_tiny_pair(tmp_path / "seed1", replace(cfg, seed=1))  # another training run, the same token ids
    assert (other.reference / "tokenizer.json").read_bytes() == (pair.reference / "tokenizer.json").read_bytes()
    ref_1 = AutoModelForCausalLM.from_pretrained(other.reference)
    assert any(not torch.equal(x, y) for x, y in zip(ref_a.state_dict().values(), ref_1.state_dict().values()))


def test_a_new_fast_pass_retrains_the_aligned_model_alone(tokenizer, monkeypatch) -> None:
    """The tokenizer's corpus is fixed (not rebuilt from the traces) and FAST_VERSION enters the aligned
    digest only, so changing the fast pass keeps the token ids and the solver and reference."""
    import thinkctl.tiny.build as build
    import thinkctl.tiny.task as task

    cfg = TinyBuildConfig()
    before = {stage: cfg.digest(stage) for stage in ("solver", "reference", "aligned")}
    monkeypatch.setattr(task, "fast_steps", lambda p: "anything else")
    monkeypatch.setattr(build, "FAST_VERSION", task.FAST_VERSION + 1)
    assert build_tokenizer().get_vocab() == tokenizer.get_vocab()
    after = {stage: cfg.digest(stage) for stage in ("solver", "reference", "aligned")}
    assert after["solver"] == before["solver"] and after["reference"] == before["reference"]
    assert after["aligned"] != before["aligned"]


def test_new_checks_retrain_reference_and_aligned_but_not_the_solver(tokenizer, monkeypatch) -> None:
    """The solver's curriculum checks by restating the last equation whatever the reference's checks are, so
    CHECK_VERSION enters the reference's and aligned model's digests and not the solver's."""
    import thinkctl.tiny.build as build
    import thinkctl.tiny.task as task

    cfg = TinyBuildConfig()
    before = {stage: cfg.digest(stage) for stage in ("solver", "reference", "aligned")}
    monkeypatch.setattr(task, "check_pass", lambda p, i: "anything else")
    monkeypatch.setattr(build, "CHECK_VERSION", task.CHECK_VERSION + 1)
    assert build_tokenizer().get_vocab() == tokenizer.get_vocab()
    after = {stage: cfg.digest(stage) for stage in ("solver", "reference", "aligned")}
    assert after["solver"] == before["solver"]
    assert after["reference"] != before["reference"] and after["aligned"] != before["aligned"]

    rng = random.Random(0)
    p = generate_problems(5, seed=0, split="train")[4]
    solver = [solver_trace(p, rng) for _ in range(200)]
    checked = [t for t in solver if CHECK_OPENERS[0] in t]
    assert 30 <= len(checked) <= 90 and all(t.count(CHECK_OPENERS[0]) == 1 for t in checked)  # P = SOLVER_CHECK
    assert all(f"The last step: {p.steps[-1].equation}. So the answer is {p.answer}." in t for t in checked)
    assert all(t.startswith(f"<think> {careful_steps(p)}") for t in solver)


def _shape_records(acc: dict[float, list[float]], think: dict[float, list[float]], n: int = 20):
    """Synthetic sweep records: at each λ, per level (1..5) the given accuracy and thinking tokens."""
    from thinkctl.records import records_frame

    rows = []
    for lam in acc:
        for level, (a, t) in enumerate(zip(acc[lam], think[lam]), start=1):
            for i in range(n):
                rows.append(dict(benchmark="tiny", method="fused", problem_id=f"{level}-{i}", level=level, lam=lam,
                                 correct=i < round(a * n), thinking_tokens=int(t), total_tokens=int(t) + 8))
    return records_frame(rows)


GOOD_ACC = {0.0: [1, 1, 1, 1, .95], 0.25: [1, 1, 1, 1, .95], 0.5: [1, 1, 1, .95, .9], 0.75: [1, .95, .8, .6, .4],
            1.0: [1, .8, .5, .3, .1], 1.5: [.95, .8, .45, .3, .1]}
GOOD_THINK = {0.0: [90, 120, 150, 180, 210], 0.25: [20, 40, 60, 80, 100], 0.5: [20, 40, 60, 80, 100],
              0.75: [15, 30, 45, 60, 75], 1.0: [10, 12, 14, 16, 18], 1.5: [10, 12, 14, 16, 18]}


def test_shape_check_passes_the_documented_shape_and_names_each_deviation() -> None:
    from thinkctl.tiny.shape import check_shape, format_shape

    good = check_shape(_shape_records(GOOD_ACC, GOOD_THINK))
    assert all(c.passed for c in good), format_shape(good)
    assert "as documented" in format_shape(good)

    # the fresh build of issue 19: aligned right on level 5, no cliff, λ 1 beating λ 0.75 (a half-fused dip)
    bad_acc = {**GOOD_ACC, 0.75: [1, .9, .7, .5, .5], 1.0: [1, 1, .95, .9, .85], 1.5: [1, .95, .9, .8, .7]}
    bad = {c.name: c for c in check_shape(_shape_records(bad_acc, GOOD_THINK))}
    failed = {name for name, c in bad.items() if not c.passed}
    assert failed == {"aligned fast and right only on easy problems", "cliff, hard problems first", "no half-fused dip"}
    assert "85.0%" in bad["aligned fast and right only on easy problems"].detail
    assert "differs" in format_shape(list(bad.values()))

    no_free = {**GOOD_THINK, 0.25: [80, 110, 140, 170, 200], 0.5: [70, 100, 130, 160, 190], 0.75: [60, 90, 120, 150, 180]}
    assert not {c.name: c for c in check_shape(_shape_records(GOOD_ACC, no_free))}["free region"].passed
    rising = {**GOOD_THINK, 0.5: [30, 50, 70, 90, 110]}
    assert not {c.name: c for c in check_shape(_shape_records(GOOD_ACC, rising))}["thinking falls with λ on [0, 1]"].passed
    with pytest.raises(ValueError, match="needs results at λ"):
        check_shape(_shape_records({0.0: GOOD_ACC[0.0]}, {0.0: GOOD_THINK[0.0]}))


def test_knee_is_the_thinking_of_the_cheapest_lambda_within_a_point() -> None:
    from thinkctl.tiny.shape import knee_tokens

    # λ 0.25 is within a point of λ 0 (99.0%) at 60 tokens; λ 0.5 thinks as little but is 2 points down, λ 0.75
    # less still at 24 points down, and λ 1 and 1.5 are outside (0, 1): the knee is λ 0.25's length
    assert knee_tokens(_shape_records(GOOD_ACC, GOOD_THINK)) == pytest.approx(60.0)
    cheaper_half = {**GOOD_THINK, 0.5: [19, 39, 59, 79, 99]}
    assert knee_tokens(_shape_records(GOOD_ACC, cheaper_half)) == pytest.approx(60.0)
    assert knee_tokens(_shape_records(GOOD_ACC, cheaper_half), within_pts=3.0) == pytest.approx(59.0)
    # exactly within_pts down counts as within (281 vs 278 of 300 right); a λ above λ 0 (checks that miscopy) too
    exact = {0.0: [281 / 300] * 5, 0.25: [278 / 300] * 5, 0.5: [277 / 300] * 5, 0.75: [.5] * 5, 1.0: [.3] * 5, 1.5: [.3] * 5}
    assert knee_tokens(_shape_records(exact, cheaper_half, n=300)) == pytest.approx(60.0)
    better = {**GOOD_ACC, 0.0: [1, 1, .95, .9, .85], 0.5: [1, 1, 1, .95, .95]}
    assert knee_tokens(_shape_records(better, cheaper_half)) == pytest.approx(59.0)

    falls = {**GOOD_ACC, 0.25: [1, .9, .9, .8, .7], 0.5: [1, .9, .9, .8, .7]}
    with pytest.raises(ValueError, match="no free region.*--target-tokens"):
        knee_tokens(_shape_records(falls, GOOD_THINK))
    with pytest.raises(ValueError, match=r"needs λ 0 \(the reference\) and λ in \(0, 1\)"):
        knee_tokens(_shape_records({0.5: GOOD_ACC[0.5]}, {0.5: GOOD_THINK[0.5]}))
    with pytest.raises(ValueError, match=r"needs λ 0 .*λ \[0.0, 1.0\]"):
        knee_tokens(_shape_records({lam: GOOD_ACC[lam] for lam in (0.0, 1.0)}, GOOD_THINK))
    two_runs = _shape_records(GOOD_ACC, GOOD_THINK)
    two_runs = pd.concat([two_runs, two_runs.assign(method="inra")])
    with pytest.raises(ValueError, match="one λ sweep"):
        knee_tokens(two_runs)


# --- done-means of the tiny default on the built pair (slow: reuses $THINKCTL_HOME/tiny or builds it) --------------
# Held-out test problems, greedy, 300 per sweep. The criteria are those of issue 19, stated once in
# thinkctl.tiny.shape; they must hold on any build (seed, thread count, CPU), not on one build's numbers.


@pytest.fixture(scope="module")
def built_pair():
    from thinkctl.tiny import default_tiny_dir

    pair = build_tiny_pair(default_tiny_dir())
    return pair, json.loads((pair.root / "build_info.json").read_text())


@pytest.fixture(scope="module")
def demo(built_pair, tmp_path_factory):
    """The demo's summary (λ → row) and its run directory."""
    import pandas as pd

    from thinkctl.cli import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--tiny-dir", str(built_pair[0].root), "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv").set_index("lam").sort_index()
    assert (summary["n"] >= 300).all(), summary
    return summary, out


@pytest.fixture(scope="module")
def train_sweep(built_pair, tmp_path_factory) -> Path:
    """The demo's λ grid over 300 train-split problems (seed 1): what the router is fitted on and TrRa's knee is read
    off, so neither is chosen on the test problems it is judged on."""
    from thinkctl.cli import main

    pair, _ = built_pair
    out = tmp_path_factory.mktemp("train-sweep")
    recipe = str(RECIPES / "tiny.yaml")
    assert main(["sweep", "--ref", str(pair.reference), "--aligned", str(pair.aligned), "--recipe", recipe,
                 "--split", "train", "--seed", "1", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_build_evaluation_meets_the_per_level_criteria(built_pair) -> None:
    """The build's own held-out evaluation (build_info.json): reference ≥ 95% on levels 1–4 and ≥ 90% on
    level 5; aligned ≥ 95% on level 1 and ≤ 60% on level 5; reference ≥ 3× the aligned thinking on level 1."""
    ref, al = (built_pair[1][m]["held_out"]["by_level"] for m in ("reference", "aligned"))
    assert al["1"]["accuracy"] >= 0.95 and al["5"]["accuracy"] <= 0.60, al
    assert ref["1"]["mean_thinking_tokens"] >= 3 * al["1"]["mean_thinking_tokens"], (ref, al)
    assert min(ref[lv]["accuracy"] for lv in "1234") >= 0.95 and ref["5"]["accuracy"] >= 0.90, ref


#: the trade-off's structural criteria (every build of fast style 4 met them, check versions 1 and 2, style stage 200 and
#: 400 steps; docs/results/tiny-builds.md), asserted apart from the reference's floors so a failure says which broke
HELD_ON_EVERY_BUILD = ("aligned fast and right only on easy problems", "reference over-thinks easy problems",
                       "thinking falls with λ on [0, 1]", "free region", "cliff, hard problems first")


@pytest.mark.slow
def test_demo_has_the_structural_shape(demo) -> None:
    shape = {c["name"]: c for c in json.loads((demo[1] / "shape.json").read_text())["checks"]}
    failed = [f"{name}: {shape[name]['detail']}" for name in HELD_ON_EVERY_BUILD if not shape[name]["passed"]]
    assert not failed, failed


@pytest.mark.slow
def test_demo_has_the_documented_shape(demo) -> None:
    """Every criterion of :func:`thinkctl.tiny.shape.check_shape` (what ``thinkctl demo`` prints) holds."""
    shape = json.loads((demo[1] / "shape.json").read_text())
    assert shape["passed"], "\n".join(f"{c['name']}: {c['detail']}" for c in shape["checks"] if not c["passed"])


@pytest.mark.slow
def test_router_beats_the_fixed_lambda_frontier(train_sweep, demo, tmp_path) -> None:
    """Fitted on a train-split sweep (seed 1), evaluated on the demo's test problems: some budget policy is
    ≥ 3 points above the fixed-λ frontier at its own mean thinking tokens (issue 19's done-means), and no policy
    beats the per-problem oracle.

    Routing pays below the knee, where the frontier mixes the careful and the fast style at random and a router
    sends the fast style to the problems it gets right. The threshold policy (P(correct) ≥ 0.5 at every query) is
    not asserted: near the knee the best fixed λ is within a point of the oracle, so it has nothing to gain and
    lands on the frontier or, where the aligned model gets a level half right, below it (seed 0 on AVX2 kernels,
    level 2 68%: 1.4–2.8 points; seed 3, level 2 50%: 3.2–7.6).
    """
    import pandas as pd

    from thinkctl.cli import main

    questions = ["--questions", "tiny", "--limit", "300"]
    assert main(["route", "fit", "--sweep", str(train_sweep), *questions, "--split", "train", "--seed", "1",
                 "--out", str(tmp_path / "policy.json")]) == 0
    assert main(["route", "eval", "--policy", str(tmp_path / "policy.json"), "--sweep", str(demo[1]), *questions,
                 "--split", "test", "--seed", "0", "--out", str(tmp_path / "routed")]) == 0
    routed = pd.read_csv(tmp_path / "routed" / "route_eval.csv")
    oracle = json.loads((tmp_path / "routed" / "route_oracle.json").read_text())
    threshold = routed["policy"].str.contains("threshold")
    assert routed.loc[~threshold, "gain"].max() >= 0.03, routed
    assert (routed["accuracy"] <= oracle["accuracy"] + 1e-9).all(), (routed, oracle)  # the oracle is the ceiling


@pytest.fixture(scope="module")
def realign_at_the_knee(built_pair, train_sweep, tmp_path_factory) -> tuple[float, dict]:
    """``realign --target-tokens N`` with N at the knee of the train sweep's λ curve
    (:func:`thinkctl.tiny.shape.knee_tokens`), evaluated on the demo's 300 held-out problems (greedy)."""
    from thinkctl.records import load_records
    from thinkctl.tiny.shape import knee_tokens
    from thinkctl.trra.realign import load_realign_configs, run_realign

    pair, _ = built_pair
    target = round(knee_tokens(load_records([train_sweep])))
    recipe = str(RECIPES / "tiny-trra.yaml")
    rcfg, tcfg = load_realign_configs(recipe, {"reference": str(pair.reference), "aligned": str(pair.aligned),
                                               "target_tokens": target})
    return target, run_realign(rcfg, tcfg, tmp_path_factory.mktemp("realign"))


@pytest.mark.slow
def test_realign_at_the_knee_reaches_the_target(realign_at_the_knee) -> None:
    """Done-means of TrRa: the student lands within 10% of N and thinks ≥ 40% less than the reference."""
    target, report = realign_at_the_knee
    student = report["rows"][-1]
    assert abs(student["mean_thinking_tokens"] - target) <= 0.10 * target, report
    assert student["reduction_pct_vs_reference"] >= 40.0, report


@pytest.mark.slow
def test_realign_at_the_knee_keeps_accuracy(realign_at_the_knee) -> None:
    """Done-means of TrRa: the student is at most 1 point less accurate than the reference (inclusive). Measured
    0.0 / +0.3 / −0.3 / +0.3 points (seeds 0 / 1 / 2, seed 0 on AVX2 kernels) at the recipe's learning rate 5e-5."""
    _, report = realign_at_the_knee
    ref, student = report["rows"][0], report["rows"][-1]
    assert within_points(100 * student["accuracy"], 100 * ref["accuracy"], 1.0), report


def test_tiny_recipe_spells_out_the_built_in_defaults() -> None:
    from thinkctl.cli import DEMO_DEFAULTS
    from thinkctl.config import build, load_section
    from thinkctl.sweep import SweepConfig

    recipe = RECIPES / "tiny.yaml"
    assert load_section(TinyBuildConfig, recipe, "tiny") == TinyBuildConfig()
    assert load_section(SweepConfig, recipe, "sweep") == build(SweepConfig, DEMO_DEFAULTS)

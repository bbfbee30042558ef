"""Difficulty router: regressions, policy recovery on a sweep with a known answer, budget mode, lookup evaluation."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.conftest import make_random_lm, make_word_tokenizer
from tests.fixtures.synthetic_sweep import LAMBDAS, make_sweep
from thinkctl.cli import main
from thinkctl.errors import ConfigError, DataFormatError
from thinkctl.router import (
    Router, allocate_budget, default_budgets, efficient_hull, evaluate_routing, fit_logistic, fit_ridge, fit_router,
    fixed_frontier_accuracy, prompt_entropy, query_features,
)
from thinkctl.router.features import entropy_from_logits


@pytest.fixture(scope="module")
def fit_sweep():
    return make_sweep(30, prefix="fit", seed=0)


@pytest.fixture(scope="module")
def held_out():
    return make_sweep(30, prefix="held", seed=7)


# ---------------------------------------------------------------- math against float64 references


def test_fit_logistic_meets_its_optimality_condition():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = (X @ [1.5, -2.0, 0.5] + 0.3 + rng.logistic(size=200) > 0).astype(float)
    w = rng.uniform(0.5, 2.0, size=200)
    coef, icpt = fit_logistic(X, y, w, l2=0.7)
    p = 1 / (1 + np.exp(-(X @ coef + icpt)))
    np.testing.assert_allclose(X.T @ (w * (p - y)) + 0.7 * coef, 0, atol=1e-8)
    np.testing.assert_allclose(np.sum(w * (p - y)) + 1e-3 * icpt, 0, atol=1e-8)
    assert np.sign(coef).tolist() == [1, -1, 1]


def test_fit_logistic_stays_finite_when_every_answer_is_right():
    X = np.random.default_rng(1).normal(size=(20, 2))
    coef, icpt = fit_logistic(X, np.ones(20))
    assert np.all(np.isfinite(coef)) and math.isfinite(icpt) and 1 / (1 + math.exp(-icpt)) > 0.9


def test_fit_ridge_without_penalty_is_least_squares():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, 3))
    y = X @ [2.0, -1.0, 0.5] + 4.0 + rng.normal(size=50) * 0.1
    coef, icpt = fit_ridge(X, y, l2=0.0)
    ref = np.linalg.lstsq(np.hstack([X, np.ones((50, 1))]), y, rcond=None)[0]
    np.testing.assert_allclose(np.append(coef, icpt), ref, rtol=1e-10)


def test_entropy_matches_a_float64_reference():
    logits = torch.randn(3, 7)
    p = torch.softmax(logits.double(), -1)
    torch.testing.assert_close(entropy_from_logits(logits), -(p * p.log()).sum(-1))


def test_prompt_entropy_over_prompt_and_generated_prefix():
    tok, model = make_word_tokenizer(), make_random_lm()
    questions = ["1 + 2 =", "3 - 1 + 4 - 2 + 7 ="]
    ent = prompt_entropy(model, tok, questions)
    single = prompt_entropy(model, tok, questions[1:])
    assert len(ent) == 2 and all(0 < e <= math.log(len(tok)) + 1e-6 for e in ent)
    assert ent[1] == pytest.approx(single[0], rel=1e-5)  # left padding does not change a query's signal
    gen = prompt_entropy(model, tok, questions, gen_tokens=3)
    assert len(gen) == 2 and all(0 < e <= math.log(len(tok)) + 1e-6 for e in gen)


# ---------------------------------------------------------------- fitting recovers the known policy


@pytest.mark.parametrize("estimator", ["logistic", "bins"])
def test_router_recovers_easy_to_max_lambda_hard_to_zero(fit_sweep, held_out, estimator):
    records, questions = fit_sweep
    router = fit_router(records, estimator=estimator, questions=questions)
    assert router.lambdas == list(LAMBDAS)
    held_q = held_out[1]
    for k in range(9):
        level = 1 + k % 3
        assert router.route(held_q[f"held-{k}"], level=level) == {1: max(LAMBDAS), 2: 0.75, 3: 0.0}[level]
    level_only = fit_router(records, estimator=estimator, features=["level"])
    assert [level_only.route(level=lv) for lv in (1, 2, 3)] == [max(LAMBDAS), 0.75, 0.0]


def test_logistic_router_separates_by_text_alone(fit_sweep, held_out):
    records, questions = fit_sweep
    router = fit_router([{**r, "level": None} for r in records], questions=questions, features=["n_op_words", "n_chars"])
    _, held_q = held_out
    routes = [router.route(held_q[f"held-{k}"]) for k in range(9)]
    assert routes == [max(LAMBDAS), 0.75, 0.0] * 3


def test_unknown_signal_and_ambiguous_sweeps_are_errors(fit_sweep):
    records, questions = fit_sweep
    with pytest.raises(ConfigError, match="unknown router signal"):
        query_features("q", confidence=0.3)
    mixed = records + [{**r, "method": "inra"} for r in records]
    with pytest.raises(DataFormatError, match="several methods"):
        fit_router(mixed)
    assert fit_router(mixed, method="inra").meta["method"] == "inra"
    with pytest.raises(DataFormatError, match="no question text"):
        fit_router(records, questions={"fit-0": "x"})
    with pytest.raises(ConfigError, match="unknown router estimator"):
        fit_router(records, estimator="forest")


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_policy_file_round_trip(fit_sweep, tmp_path, suffix):
    records, questions = fit_sweep
    router = fit_router(records, questions=questions, threshold=0.6)
    path = router.save(tmp_path / f"policy{suffix}")
    loaded = Router.load(path)
    assert loaded.threshold == 0.6 and loaded.lambdas == router.lambdas and loaded.estimator.kind == "logistic"
    feats = [query_features(questions[f"fit-{k}"], 1 + k % 3) for k in range(6)]
    np.testing.assert_allclose(loaded.predict(feats)[0], router.predict(feats)[0])


def test_broken_policy_files_are_config_errors(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot parse"):
        Router.load(path)
    path.write_text(json.dumps({"format": "thinkctl-router", "version": 1, "lambdas": [0, 1]}), encoding="utf-8")
    with pytest.raises(ConfigError, match="malformed"):
        Router.load(path)
    with pytest.raises(ConfigError, match="does not exist"):
        Router.load(tmp_path / "missing.json")


# ---------------------------------------------------------------- budget mode


def test_efficient_hull_drops_dominated_and_concave_breaking_options():
    p = np.array([0.2, 0.5, 0.4, 0.55, 0.9])
    t = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    assert efficient_hull(p, t) == [0, 1, 4]  # 2 is dominated by 1; 3 lies under the chord 1→4


def test_budget_never_exceeds_the_budget_and_spends_it_well():
    rng = np.random.default_rng(3)
    p = np.sort(rng.uniform(size=(40, 7)), axis=1)[:, ::-1]
    t = np.sort(rng.uniform(10, 200, size=(40, 7)), axis=1)[:, ::-1]  # longer thinking, higher P
    lo, hi = t.min(1).mean(), t.max(1).mean()
    previous = -1.0
    for budget in np.linspace(lo, hi + 10, 15):
        alloc = allocate_budget(p, t, budget)
        assert alloc.predicted_mean_tokens <= budget + 1e-9
        assert alloc.predicted_mean_tokens == pytest.approx(t[np.arange(40), alloc.choice].mean())
        assert alloc.predicted_accuracy >= previous - 1e-12  # more budget never hurts
        previous = alloc.predicted_accuracy
    assert alloc.predicted_accuracy == pytest.approx(p.max(1).mean())


def test_budget_is_close_to_brute_force_on_small_problems():
    rng = np.random.default_rng(4)
    for _ in range(20):
        p, t = rng.uniform(size=(4, 3)), rng.uniform(5, 50, size=(4, 3))
        budget = rng.uniform(t.min(1).mean(), t.max(1).mean())
        best = max(
            (p[np.arange(4), c].mean() for c in itertools.product(range(3), repeat=4) if t[np.arange(4), c].mean() <= budget),
        )
        alloc = allocate_budget(p, t, budget)
        assert alloc.predicted_mean_tokens <= budget + 1e-9
        assert alloc.predicted_accuracy >= best - 0.25  # greedy knapsack: within one item's value of the optimum


def test_budget_below_cheapest_option_says_so():
    p, t = np.array([[0.9, 0.5]]), np.array([[100.0, 40.0]])
    with pytest.raises(ConfigError, match="below the cheapest possible allocation"):
        allocate_budget(p, t, 39.0)
    assert allocate_budget(p, t, 40.0).choice.tolist() == [1]


# ---------------------------------------------------------------- evaluation by lookup


def test_frontier_interpolation():
    import pandas as pd

    fixed = pd.DataFrame({"lam": [0, 0.5, 1], "mean_thinking_tokens": [100.0, 60.0, 20.0], "accuracy": [0.9, 0.7, 0.3]})
    assert fixed_frontier_accuracy(fixed, 80.0) == pytest.approx(0.8)
    assert fixed_frontier_accuracy(fixed, 10.0) == pytest.approx(0.3)
    assert fixed_frontier_accuracy(fixed, 200.0) == pytest.approx(0.9)


def test_threshold_rule_treats_near_equal_lengths_as_a_tie(fit_sweep):
    """λ = 1.5 predicted 0.5% shorter than λ = 1 but less likely right: a tie, won by λ = 1; 10% shorter wins."""
    router = replace(fit_router(fit_sweep[0], questions=fit_sweep[1]), lambdas=[0.0, 0.75, 1.0, 1.5])
    p = np.array([[0.99, 0.95, 0.9, 0.6], [0.99, 0.95, 0.9, 0.6]])
    tokens = np.array([[100.0, 60.0, 40.0, 39.8], [100.0, 60.0, 40.0, 36.0]])
    assert router.choose(p, tokens).tolist() == [2, 3]


def test_default_budgets_trace_the_gaps_between_fixed_lambdas():
    assert default_budgets([60.0, 20.0, 100.0, 20.5, 60.02]) == [20.0, 20.5, 30.375, 40.25, 50.125, 60.0, 70.0, 80.0, 90.0, 100.0]


@pytest.mark.parametrize("estimator", ["logistic", "bins"])
def test_routed_points_dominate_fixed_lambda_on_held_out(fit_sweep, held_out, estimator):
    router = fit_router(fit_sweep[0], estimator=estimator, questions=fit_sweep[1])
    result = evaluate_routing(router, held_out[0], questions=held_out[1])
    assert result.fixed["lam"].tolist() == list(LAMBDAS)
    threshold = result.table.iloc[0]
    assert threshold["policy"] == f"{estimator} threshold=0.5" and threshold["accuracy"] == 1.0
    assert (result.table["gain"] >= -1e-12).all()
    lam1 = result.fixed.set_index("lam").loc[1.0]
    at_lam1 = result.table[result.table["policy"] == f"{estimator} budget={lam1.mean_thinking_tokens:.1f}"].iloc[0]
    assert at_lam1["predicted_mean_tokens"] <= lam1.mean_thinking_tokens + 1e-9
    assert at_lam1["accuracy"] > lam1.accuracy
    routed = [r for r in result.records if r["route_point"] == f"{estimator} threshold=0.5"]
    assert len(routed) == 30 and {r["method"] for r in routed} == {"routed"}
    assert {(r["level"], r["lam"]) for r in routed} == {(1, 1.5), (2, 0.75), (3, 0.0)}


def test_oracle_picks_the_cheapest_right_lambda_per_query():
    from thinkctl.router.evaluate import oracle_choice

    correct = np.array([[1, 1, 0], [1, 0, 1], [0, 0, 0], [0, 1, 1]])
    tokens = np.array([[90, 40, 10], [90, 40, 10], [90, 40, 10], [90, 5, 30]])
    assert oracle_choice(correct, tokens).tolist() == [1, 2, 2, 1]  # none right: the cheapest overall


def test_eval_reports_the_oracle_as_the_ceiling(fit_sweep, held_out, tmp_path):
    router = fit_router(fit_sweep[0], questions=fit_sweep[1])
    result = evaluate_routing(router, held_out[0], questions=held_out[1])
    o = result.oracle
    assert o["accuracy"] >= result.table["accuracy"].max() and o["accuracy"] >= result.fixed["accuracy"].max()
    oracle = [r for r in result.records if r["route_point"] == "oracle"]
    assert len({r["problem_id"] for r in oracle}) == len(oracle)  # one λ per query
    assert np.isclose(np.mean([r["thinking_tokens"] for r in oracle]), o["mean_thinking_tokens"])
    assert "Oracle" in result.to_markdown() and "oracle" not in set(result.table["policy"])


def test_eval_needs_every_grid_lambda(fit_sweep, held_out):
    router = fit_router(fit_sweep[0], questions=fit_sweep[1])
    partial = [r for r in held_out[0] if r["lam"] != 1.5]
    with pytest.raises(DataFormatError, match="no records at λ"):
        evaluate_routing(router, partial, questions=held_out[1])


# ---------------------------------------------------------------- CLI


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cli_route_fit_apply_eval(fit_sweep, held_out, tmp_path, capsys):
    sweep = _write_jsonl(tmp_path / "fit.jsonl", fit_sweep[0])
    held = _write_jsonl(tmp_path / "held.jsonl", held_out[0])
    questions = _write_jsonl(tmp_path / "q.jsonl", [{"id": k, "question": q, "answer": "1"} for k, q in
                                                    {**fit_sweep[1], **held_out[1]}.items()])
    policy = tmp_path / "policy.json"
    assert main(["route", "fit", "--sweep", str(sweep), "--out", str(policy), "--questions", str(questions)]) == 0
    assert "logistic router" in capsys.readouterr().out

    queries = _write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "question": held_out[1]["held-0"], "level": 1},
                                                   {"id": "b", "question": held_out[1]["held-2"], "level": 3}])
    assert main(["route", "apply", "--policy", str(policy), "--input", str(queries)]) == 0
    out = capsys.readouterr().out
    assert "a\tλ=1.5" in out and "b\tλ=0" in out
    assert main(["route", "apply", "--policy", str(policy), "--input", str(queries), "--budget", "1"]) == 2
    assert "below the cheapest" in capsys.readouterr().err

    assert main(["route", "eval", "--policy", str(policy), "--sweep", str(held), "--out", str(tmp_path / "ev"),
                 "--questions", str(questions)]) == 0
    out = capsys.readouterr().out
    assert "threshold=0.5" in out and "fixed-λ accuracy" in out
    routed = [json.loads(line) for line in (tmp_path / "ev" / "routed.jsonl").read_text().splitlines()]
    assert routed and all(r["method"] == "routed" and isinstance(r["correct"], bool) for r in routed)

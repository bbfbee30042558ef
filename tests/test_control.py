"""Thinking controls during decoding: the schedule formulas (float64), per-step λ in fused decoding, the hard
backstop, records, the control-grid sweep with its summary, and anytime curves in reports."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from tests.conftest_vllm import THINK_CLOSE, THINK_OPEN, THINK_PROMPTS, save_random_model
from thinkctl.cli import main
from thinkctl.config import load_section
from thinkctl.controls import LengthModel, control_runs, resolve_control, run_control_sweep
from thinkctl.decoding import (
    LambdaSchedule, ThinkingControl, bias_ramp, biased_close_logit, fused_generate, lambda_for_length, soft_budget_lambda,
    target_lambda,
)
from thinkctl.errors import ConfigError
from thinkctl.fusion import fuse_logits
from thinkctl.records import SampleRecord, load_records, records_frame
from thinkctl.report import anytime_areas, anytime_points, area_under_curve, build_report
from thinkctl.rollout.hf import HFBackend
from thinkctl.sampling import SamplingConfig, ScheduleConfig
from thinkctl.sweep import SweepConfig
from thinkctl.thinking import count_thinking_tokens

COUNTS = torch.arange(0, 40, dtype=torch.float64)


# ---------------------------------------------------------------- the formulas, against hand-written float64 ones


def test_soft_budget_lambda_is_a_linear_ramp_between_two_plateaus() -> None:
    got = soft_budget_lambda(COUNTS, 20, 0.25, 1.5, 0.3, 0.7)
    for t, lam in zip(COUNTS.tolist(), got.tolist()):
        u = min(max((t / 20 - 0.3) / 0.4, 0.0), 1.0)
        assert lam == pytest.approx(0.25 + 1.25 * u, abs=1e-12)
    assert got[:7].eq(0.25).all() and got[14:].eq(1.5).all()  # untouched below 0.3·B, fully fast from 0.7·B
    per_row = soft_budget_lambda(torch.tensor([0.0, 10.0], dtype=torch.float64), 20, torch.tensor([0.0, 1.0], dtype=torch.float64),
                                 0.5, 0.3, 0.7)
    assert per_row.tolist() == pytest.approx([0.0, 1.0 - 0.5 * 0.5])


def test_target_lambda_is_proportional_to_lateness() -> None:
    n, tol, lam0, fast = 20, 0.15, 0.1, 1.0
    got = target_lambda(COUNTS, n, lam0, fast, tol)
    gain = (fast - lam0) / (2 * tol)
    for t, lam in zip(COUNTS.tolist(), got.tolist()):
        assert lam == pytest.approx(min(lam0 + gain * max(t / n - (1 - tol), 0.0), fast), abs=1e-12)
    assert got[17].item() == pytest.approx(lam0) and got[23].item() == pytest.approx(fast)  # (1 ± tol)·N


def test_bias_ramp_runs_from_zero_to_one_over_the_last_30_percent() -> None:
    b = 20
    got = bias_ramp(COUNTS, b)
    lo, hi = 1 / (1 + math.exp(5)), 1 / (1 + math.exp(-5))
    for t, r in zip(COUNTS.tolist(), got.tolist()):
        u = min(max((t - 14) / 6, 0.0), 1.0)
        assert r == pytest.approx((1 / (1 + math.exp(-10 * (u - 0.5))) - lo) / (hi - lo), abs=1e-12)
    assert got[:15].eq(0).all() and got[20].item() == pytest.approx(1.0) and bool((got.diff() >= 0).all())
    close, top = torch.tensor([-3.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 1.5], dtype=torch.float64)
    ramp = torch.tensor([1.0, 0.5], dtype=torch.float64)
    # pulled to the top less the margin at full ramp; a close logit already above its target is never lowered
    assert biased_close_logit(close, top, ramp, 0.25).tolist() == [0.75, 2.0]


def test_lambda_for_length_interpolates_the_calibrated_curve() -> None:
    curve = {0.0: 130.0, 0.5: 60.0, 1.0: 15.0, -0.25: 170.0}
    assert lambda_for_length(curve, 95.0) == pytest.approx(0.25)
    assert lambda_for_length(curve, 37.5) == pytest.approx(0.75)
    assert lambda_for_length(curve, 150.0) == pytest.approx(-0.125)
    assert lambda_for_length(curve, 5.0) == 1.0 and lambda_for_length(curve, 400.0) == -0.25  # the measured ends


def test_schedule_settings_are_checked_where_they_enter() -> None:
    for kwargs, match in [
        ({"schedule": ScheduleConfig(control="soft")}, "max_thinking_tokens"),
        ({"schedule": ScheduleConfig(control="target")}, "thinking_target"),
        ({"schedule": ScheduleConfig(thinking_target=5)}, "thinking_target"),
        ({"max_thinking_tokens": 9, "schedule": ScheduleConfig(control="soft", ramp_start=0.8, ramp_end=0.5)}, "ramp_start"),
        ({"max_thinking_tokens": 5, "schedule": ScheduleConfig(control="target", thinking_target=20)}, "floor"),
    ]:
        with pytest.raises(ConfigError, match=match):
            SamplingConfig(**kwargs)
    target = SamplingConfig(schedule=ScheduleConfig(control="target", thinking_target=40))
    assert (target.thinking_cap, target.thinking_floor, target.control) == (46, 34, "target")
    with pytest.raises(ConfigError, match="controls"):
        load_section(SweepConfig, None, "sweep", {"controls": ["soft", "fast"]})
    with pytest.raises(ConfigError, match="budget grid"):
        load_section(SweepConfig, None, "sweep", {"controls": ["soft"]})


# ---------------------------------------------------------------- decoding on random models


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("control_models")
    ref, al = save_random_model(root / "ref", seed=0), save_random_model(root / "al", seed=1)
    return HFBackend.from_paths(str(ref), str(al))


def _counts_before(ids: list[int]) -> list[int]:
    """Thinking tokens before each generated token (the prompt opened the block), as ThinkingControl counts."""
    out, count, inside = [], 0, True
    for t in ids:
        out.append(count)
        if inside and t == THINK_CLOSE:
            inside = False
        elif inside and t != THINK_OPEN:
            count += 1
    return out


@pytest.mark.parametrize("schedule,budget", [(ScheduleConfig(control="soft", fast_lambda=1.5), 10),
                                             (ScheduleConfig(control="target", thinking_target=10, fast_lambda=1.0), None)])
def test_per_step_lambda_follows_its_formula_and_drives_the_fused_distribution(pair, schedule, budget) -> None:
    """Each token's λ is the formula at the thinking tokens before it (frozen once the block closes), and each
    greedy token is the argmax of the fused full-sequence logits at that λ, so both streams stayed live."""
    tok = pair.tokenizer
    lams = [0.0, 0.5, 0.0, 1.0]
    sampling = SamplingConfig(max_new_tokens=20, max_thinking_tokens=budget, schedule=schedule)
    ids, mask = [torch.tensor(x) for x in zip(*[(tok(p)["input_ids"], [1] * len(tok(p)["input_ids"])) for p in THINK_PROMPTS])]
    control = ThinkingControl((THINK_OPEN, THINK_CLOSE), [True] * 4, sampling.thinking_cap, sampling.thinking_floor, [0],
                              schedule=LambdaSchedule(schedule, budget or schedule.thinking_target, torch.tensor(lams)))
    out = fused_generate(pair.reference, pair.aligned, ids, mask, lams, sampling, [0], control)
    moved = 0
    for row, (tokens, trace) in enumerate(zip(out.token_ids, out.lambdas)):
        counts = torch.tensor(_counts_before(tokens), dtype=torch.float64)
        if schedule.control == "soft":
            want = soft_budget_lambda(counts, budget, lams[row], 1.5, 0.3, 0.7)
        else:
            want = target_lambda(counts, 10, lams[row], 1.0, 0.15)
        if THINK_CLOSE in tokens:  # frozen at the λ that closed the block
            j = tokens.index(THINK_CLOSE)
            want[j + 1:] = want[j]
        assert trace == pytest.approx(want.tolist(), abs=1e-6), f"row {row}"
        moved += trace[-1] != lams[row]
        seq = ids[row].tolist()
        with torch.no_grad():
            for tok_id, lam in zip(tokens, trace):
                x = torch.tensor([seq])
                z = fuse_logits(pair.aligned(input_ids=x).logits[0, -1], pair.reference(input_ids=x).logits[0, -1], lam)
                z = control_free(z, len(seq) - ids.shape[1], tokens, sampling)
                assert int(z.argmax()) == tok_id, f"row {row}, step {len(seq) - ids.shape[1]}"
                seq.append(tok_id)
    assert moved, "some row's λ should have moved for the test to mean anything"


def control_free(z: torch.Tensor, step: int, tokens: list[int], sampling: SamplingConfig) -> torch.Tensor:
    """The hard cap and floor as ThinkingControl applies them at ``step`` (no schedule involved)."""
    count = _counts_before(tokens)[step]
    closed = THINK_CLOSE in tokens[:step]
    z = z.clone()
    if not closed and sampling.thinking_cap is not None and count >= sampling.thinking_cap:
        z[:] = float("-inf")
        z[THINK_CLOSE] = 0.0
    if not closed and sampling.thinking_floor and count < sampling.thinking_floor:
        z[[THINK_CLOSE, 0]] = float("-inf")
    return z


@pytest.mark.parametrize("budget", [2, 5, 9])
def test_the_hard_backstop_still_caps_every_control(pair, budget) -> None:
    tok = pair.tokenizer
    for schedule in (ScheduleConfig(control="soft"), ScheduleConfig(control="bias", bias_margin=-2.0),
                     ScheduleConfig(control="target", thinking_target=budget)):
        sampling = SamplingConfig(max_new_tokens=24, max_thinking_tokens=budget if schedule.control != "target" else None,
                                  schedule=schedule)
        for c in pair.generate(THINK_PROMPTS, [0.0, 0.5, 1.0, 0.0], sampling):
            assert count_thinking_tokens(c.token_ids, tok, opened=True) <= sampling.thinking_cap
            assert c.meta["control"] == schedule.control and isinstance(c.meta["final_lambda"], float)
            if c.meta["thinking_forced"]:  # closed right at the cap (a stray <think> inside is not counted)
                assert _counts_before(c.token_ids)[c.token_ids.index(THINK_CLOSE)] == sampling.thinking_cap


def test_bias_with_the_prs_margin_never_closes_before_the_cap_under_greedy(pair) -> None:
    hard = pair.generate(THINK_PROMPTS, 0.0, SamplingConfig(max_new_tokens=24, max_thinking_tokens=9))
    bias = pair.generate(THINK_PROMPTS, 0.0, SamplingConfig(max_new_tokens=24, max_thinking_tokens=9,
                                                             schedule=ScheduleConfig(control="bias")))
    assert [c.token_ids for c in hard] == [c.token_ids for c in bias]
    pushed = pair.generate(THINK_PROMPTS, 0.0, SamplingConfig(max_new_tokens=24, max_thinking_tokens=9,
                                                               schedule=ScheduleConfig(control="bias", bias_margin=-50.0)))
    forced = [h.meta["thinking_forced"] for h in hard]
    assert any(forced) and not any(c.meta["thinking_forced"] for c, f in zip(pushed, forced) if f), \
        "a margin far below zero lets the ramp close every row the cap closed before the cap"


def test_a_schedule_that_moves_lambda_needs_an_aligned_model(pair) -> None:
    plain = HFBackend(pair.reference, None, pair.tokenizer, progress=False)
    with pytest.raises(ConfigError, match="aligned model"):
        plain.generate(THINK_PROMPTS, 0.0, SamplingConfig(max_thinking_tokens=4, schedule=ScheduleConfig(control="soft")))


# ---------------------------------------------------------------- records, the control grid, reports


def test_records_carry_the_control_and_old_records_still_load() -> None:
    old = {"benchmark": "b", "method": "fused", "problem_id": "1", "lam": 0.0, "correct": True, "thinking_tokens": 3,
           "total_tokens": 5}
    record = SampleRecord.from_dict(old)
    assert (record.control, record.thinking_budget, record.final_lam) == (None, None, None)
    new = SampleRecord.from_dict({**old, "control": "soft", "thinking_budget": 50.0, "final_lam": 0.8})
    assert (new.control, new.thinking_budget, new.final_lam) == ("soft", 50, 0.8)


def test_length_model_gives_fast_lambda_and_start_lambda(tmp_path) -> None:
    table = tmp_path / "effort.json"
    table.write_text(json.dumps({"format": "thinkctl-effort", "version": 1, "levels": {"low": 1.2, "high": 0.0},
                                 "meta": {"curve": {"0": 130.0, "1": 30.0, "1.5": 10.0}}}))
    model = LengthModel.load(str(table))
    sampling, lam = resolve_control(SamplingConfig(schedule=ScheduleConfig(control="target", thinking_target=80)), 0.3, model)
    assert (sampling.schedule.fast_lambda, lam) == (1.2, 0.5)
    inline = LengthModel.load("low=0.9,high=0")  # no calibrated curve: the given λ starts
    sampling, lam = resolve_control(SamplingConfig(schedule=ScheduleConfig(control="target", thinking_target=80)), 0.3, inline)
    assert (sampling.schedule.fast_lambda, lam) == (0.9, 0.3)


def _bench(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"{i} + 1 = <think>", "answer": str(i + 1)}) + "\n"
                            for i in range(4)))
    return str(path)


def test_control_sweep_runs_each_control_and_budget_in_its_own_run_and_resumes(pair, tmp_path) -> None:
    cfg = load_section(SweepConfig, None, "sweep", {
        "benchmark": [_bench(tmp_path)], "controls": ["hard", "soft", "bias", "target", "fixed"], "budgets": [3, 6],
        "lambdas": [0.0, 1.0], "max_new_tokens": 16, "chunk_size": 8})
    out = tmp_path / "run"
    opened = []

    def open_backend():
        opened.append(1)
        return pair

    pair.tokenizer.chat_template = None  # the question is the prompt: it opens the think block itself
    summary_path = run_control_sweep(cfg, open_backend, out, method="fused", model="pair")
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == sorted(["fixed", *(f"{c}-{b}" for c in ("hard", "soft", "bias", "target") for b in (3, 6))])
    summary = pd.read_csv(summary_path)
    assert {"control", "budget", "accuracy", "mean_thinking_tokens", "mean_final_lam", "within_15pct"} <= set(summary.columns)
    assert len(summary[summary["control"] != "fixed"]) == 8 and len(summary[summary["control"] == "fixed"]) == 2
    records = load_records([out / name for name in names])
    budgeted = records[records["control"].isin(["hard", "soft", "bias"])]
    assert (budgeted["thinking_tokens"] <= budgeted["thinking_budget"]).all()
    assert (records[records["control"] == "soft"]["final_lam"] >= 0).all()
    sizes = {name: (out / name / "results.jsonl").stat().st_size for name in names}
    run_control_sweep(cfg, open_backend, out, method="fused", model="pair")
    assert sizes == {name: (out / name / "results.jsonl").stat().st_size for name in names}  # nothing redone

    report = build_report([out / name for name in names], tmp_path / "report")
    text = report.read_text(encoding="utf-8")
    assert "Area under accuracy vs thinking budget" in text and (tmp_path / "report" / "anytime.png").is_file()
    assert "soft B=3 (λ=0)" in text  # the control's points are their own rows, not merged into λ = 0


def test_anytime_points_and_areas() -> None:
    rows = []
    for control, accs in {"hard": {10: 0.0, 20: 0.5, 40: 1.0}, "soft": {10: 0.5, 20: 1.0, 40: 1.0}}.items():
        for budget, acc in accs.items():
            rows += [{"benchmark": "b", "method": "fused", "problem_id": str(i), "lam": 0.0, "correct": i < 4 * acc,
                      "thinking_tokens": budget, "total_tokens": budget + 2, "control": control, "thinking_budget": budget}
                     for i in range(4)]
    for lam, tokens, acc in ((0.0, 35, 1.0), (1.0, 12, 0.25)):  # the fixed dial: the envelope picks per budget
        rows += [{"benchmark": "b", "method": "fused", "problem_id": str(i), "lam": lam, "correct": i < 4 * acc,
                  "thinking_tokens": tokens, "total_tokens": tokens + 2} for i in range(4)]
    points = anytime_points(records_frame(rows))
    fixed = points[points["curve"] == "fixed"].set_index("budget")
    assert fixed["accuracy"].to_dict() == {10.0: 0.0, 20.0: 0.25, 40.0: 1.0} and fixed.loc[40.0, "lam"] == 0.0
    areas = anytime_areas(points).set_index("curve")["area (mean accuracy %)"]
    assert areas["hard"] == pytest.approx(100 * (0.25 * 10 + 0.75 * 20) / 30, abs=0.05)
    assert areas["soft"] == pytest.approx(100 * (0.75 * 10 + 1.0 * 20) / 30, abs=0.05)
    assert math.isnan(area_under_curve([20, 40], [1, 1], 10, 40))  # a curve that does not span the range has no area
    assert area_under_curve([0, 10], [0.0, 1.0], 0, 10) == pytest.approx(0.5)


def test_tiny_control_recipe_describes_the_side_by_side_run() -> None:
    cfg = load_section(SweepConfig, "recipes/tiny-control.yaml", "sweep")
    runs = control_runs(cfg)
    assert {r.control for r in runs} == {"hard", "soft", "bias", "target", "fixed"}
    assert cfg.limit >= 300 and cfg.sampling.greedy and min(cfg.budgets) <= 20 and max(cfg.budgets) >= 130
    assert sum(r.control == "soft" for r in runs) == len(cfg.budgets)


def test_cli_sweep_with_controls_and_generate_with_a_control(pair, tmp_path, capsys) -> None:
    root = tmp_path / "models"
    ref, al = save_random_model(root / "ref", seed=0), save_random_model(root / "al", seed=1)
    out = tmp_path / "cli"
    assert main(["sweep", "--ref", str(ref), "--aligned", str(al), "--benchmark", _bench(tmp_path), "--controls", "soft,fixed",
                 "--budgets", "4", "--lambdas", "0", "--max-new-tokens", "10", "--out", str(out)]) == 0
    assert "summary.csv" in capsys.readouterr().out and (out / "soft-4" / "run.json").is_file()
    records = [json.loads(line) for line in (out / "soft-4" / "results.jsonl").read_text().splitlines()]
    assert records and {r["base"] for r in records} == {str(ref)}  # a control sweep's records name their reference
    assert main(["generate", "--ref", str(ref), "--aligned", str(al), "--control", "soft", "--max-thinking-tokens", "4",
                 "--max-new-tokens", "10", "1 + 2 = <think>"]) == 0
    assert "soft control, λ 0 →" in capsys.readouterr().out

"""Adaptive TrRa (issue 23): the teacher's λ per problem, per-row λ in the distillation loss, the report."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import pytest
import torch

from tests.conftest import make_random_lm
from tests.test_trra import _cfg, _examples, _save_random_pair
from thinkctl.data import Problem
from thinkctl.errors import ConfigError
from thinkctl.rollout.base import Completion, RolloutBackend
from thinkctl.sampling import SamplingConfig
from thinkctl.trra.adaptive import CHOICES_FILE, choose_lambda, generate_adaptive_data, teacher_grid
from thinkctl.trra.trainer import build_student, collate_with_lambda, make_trainer

# --- per-row λ in the loss ----------------------------------------------------------------------------------------


def test_per_row_lambda_loss_equals_each_sequence_alone_float64(tmp_path, word_tokenizer) -> None:
    """A batch whose rows carry λ 0, 0.5 and 1.5 gives the sum of the losses of each row distilled alone at its λ."""
    from dataclasses import replace

    lams = [0.0, 0.5, 1.5]
    examples = [replace(ex, lam=lam) for ex, lam in zip(_examples(word_tokenizer, 3), lams)]
    models = [make_random_lm(seed=s).double() for s in (0, 0, 1)]
    cfg = _cfg(tmp_path, lambda_per_example=True)
    trainer = make_trainer(cfg, build_student(models[0], cfg), models[1], models[2], word_tokenizer, examples)
    rows = [trainer.train_dataset[i] for i in range(3)]
    batch = collate_with_lambda(rows, word_tokenizer.pad_token_id)
    assert batch["lam"] == lams  # plain floats: the Trainer's DeepSpeed cast leaves them alone
    together, n = trainer.loss_terms(trainer.model, batch)

    alone_total, alone_n = 0.0, 0
    for row, lam in zip(rows, lams):
        single = make_trainer(replace(cfg, lambda_per_example=False, lambda_=lam), trainer.model, models[1], models[2],
                              word_tokenizer, examples[:1])
        loss, count = single.loss_terms(trainer.model, collate_with_lambda([row[:2] + (99.0,)], word_tokenizer.pad_token_id))
        alone_total, alone_n = alone_total + loss, alone_n + int(count)
    assert int(n) == alone_n
    torch.testing.assert_close(together, alone_total, rtol=1e-12, atol=1e-12)
    # and λ per row matters: one λ for the whole batch gives another number
    fixed, _ = make_trainer(replace(cfg, lambda_per_example=False, lambda_=0.5), trainer.model, models[1], models[2],
                            word_tokenizer, examples).loss_terms(trainer.model, batch)
    assert abs(float(fixed.detach()) - float(together.detach())) > 1e-6


def test_per_example_lambda_needs_a_lambda_on_every_example(tmp_path, word_tokenizer) -> None:
    from dataclasses import replace

    examples = [replace(ex, lam=None) for ex in _examples(word_tokenizer, 2)]
    cfg = _cfg(tmp_path, lambda_per_example=True)
    with pytest.raises(ConfigError, match="2 of 2 examples carry no λ"):
        make_trainer(cfg, make_random_lm(), make_random_lm(), make_random_lm(seed=1), word_tokenizer, examples)


# --- the teacher's choice -------------------------------------------------------------------------------------------


def test_choose_lambda_is_the_shortest_right_answer_ties_to_the_smallest_lambda() -> None:
    assert choose_lambda({0.0: [(True, 90)], 0.5: [(True, 40)], 1.0: [(False, 10)]}, 0.5) == 0.5
    # λ 0.5 and 0.75 think alike (within 2%): the more careful teacher wins the tie
    assert choose_lambda({0.0: [(True, 90)], 0.5: [(True, 40)], 0.75: [(True, 40)], 1.0: [(False, 10)]}, 0.5) == 0.5
    assert choose_lambda({0.25: [(True, 101)], 0.5: [(True, 100)]}, 0.5) == 0.25
    assert choose_lambda({0.25: [(True, 50)], 0.5: [(True, 40)]}, 0.5) == 0.5
    # several samples: right often enough, its length the mean of its right samples
    two = {0.0: [(True, 90), (True, 94)], 0.5: [(True, 40), (False, 10)], 1.0: [(False, 10), (False, 12)]}
    assert choose_lambda(two, 0.5) == 0.5 and choose_lambda(two, 1.0) == 0.0
    assert choose_lambda({0.0: [(False, 90)], 0.5: [(False, 40)]}, 0.5) is None
    assert choose_lambda({}, 0.5) is None


def test_teacher_grid_is_capped_by_the_goal_lambda() -> None:
    assert teacher_grid([0.0, 0.5, 1.0]) == [1.0, 0.5, 0.0]
    assert teacher_grid([0.0, 0.5, 1.0], cap=0.7) == [0.7, 0.5, 0.0]
    assert teacher_grid([0.0, 0.5, 1.0], cap=0.5) == [0.5, 0.0]
    assert teacher_grid([0.0, 0.5], cap=2.0) == [2.0, 0.5, 0.0]


class GridBackend(RolloutBackend):
    """Fake fused decoding: a problem ``p<k>`` is answered right at λ ≤ its ``easiest`` λ (``None``: never), with
    thinking that shortens as λ grows; it counts every (problem, λ) it is asked and can fail after ``fail_after``."""

    def __init__(self, tokenizer, easiest: dict[str, float | None], fail_after: int | None = None) -> None:
        self.tokenizer, self.easiest, self.fail_after = tokenizer, easiest, fail_after
        self.calls: list[tuple[str, float]] = []

    def generate(self, prompts: Sequence[str], lam, sampling: SamplingConfig, seeds=None) -> list[Completion]:
        out = []
        lams = [lam] * len(prompts) if isinstance(lam, (int, float)) else list(lam)
        for prompt, lam in zip(prompts, lams):
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise KeyboardInterrupt("simulated kill")
            pid = re.search(r"(p\d+)", prompt).group(1)
            self.calls.append((pid, float(lam)))
            limit = self.easiest[pid]
            answer = 3 if limit is not None and lam <= limit else 4
            text = "<think> " + " ".join(["1"] * int(10 * (2 - lam))) + f" </think> the answer is \\boxed{{ {answer} }} ."
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            out.append(Completion(text, ids, "stop", float(lam)))
        return out


EASIEST = {"p0": 1.0, "p1": 0.5, "p2": 0.0, "p3": None}


def _grid_problems() -> list[Problem]:
    return [Problem(pid, f"{pid} asks 1 + 2", "3", level=k + 1) for k, pid in enumerate(EASIEST)]


def test_adaptive_teacher_takes_the_shortest_verified_lambda(tmp_path, word_tokenizer) -> None:
    backend = GridBackend(word_tokenizer, EASIEST)
    data = generate_adaptive_data(backend, _grid_problems(), [0.0, 0.5, 1.0], SamplingConfig(max_new_tokens=64),
                                  tmp_path / "adaptive.jsonl")
    assert data.choices == {"p0": 1.0, "p1": 0.5, "p2": 0.0, "p3": None}
    assert sorted(backend.calls) == sorted((p, lam) for p in EASIEST for lam in (0.0, 0.5, 1.0))
    assert [(ex.problem_id, ex.lam, ex.correct) for ex in data.examples] == [("p0", 1.0, True), ("p1", 0.5, True), ("p2", 0.0, True)]
    assert data.histogram() == {"1": {"1": 1}, "2": {"0.5": 1}, "3": {"0": 1}, "4": {"none": 1},
                                "all": {"0": 1, "0.5": 1, "1": 1, "none": 1}}
    saved = json.loads((tmp_path / CHOICES_FILE).read_text())
    assert saved["choices"] == data.choices and saved["mean_lambda"] == pytest.approx(0.5)
    fallback = generate_adaptive_data(backend, _grid_problems(), [0.0, 0.5, 1.0], SamplingConfig(max_new_tokens=64),
                                      tmp_path / "adaptive.jsonl", only_correct=False)
    assert len(backend.calls) == 12  # everything came from the cache
    assert [(ex.problem_id, ex.lam) for ex in fallback.examples][-1] == ("p3", 0.0)  # none right: the smallest λ's


def test_a_policy_caps_each_problems_grid(tmp_path, word_tokenizer) -> None:
    backend = GridBackend(word_tokenizer, EASIEST)
    caps = {"p0": 0.5, "p1": 1.0, "p2": 0.25, "p3": 1.0}
    data = generate_adaptive_data(backend, _grid_problems(), [0.0, 0.5, 1.0], SamplingConfig(max_new_tokens=64),
                                  tmp_path / "adaptive.jsonl", caps=caps)
    assert data.choices == {"p0": 0.5, "p1": 0.5, "p2": 0.0, "p3": None}  # p0 is right at 1, but its policy says 0.5
    assert ("p0", 1.0) not in backend.calls and ("p2", 0.25) in backend.calls and ("p2", 0.5) not in backend.calls


def test_adaptive_teacher_needs_every_sample_it_asks_for(tmp_path, word_tokenizer) -> None:
    backend = GridBackend(word_tokenizer, EASIEST)
    data = generate_adaptive_data(backend, _grid_problems()[:2], [0.5, 1.0], SamplingConfig(max_new_tokens=64),
                                  tmp_path / "adaptive.jsonl", n_samples=3, min_correct=1.0)
    assert data.choices == {"p0": 1.0, "p1": 0.5} and len(data.examples) == 6
    assert sorted({ex.sample for ex in data.examples}) == [0, 1, 2]
    with pytest.raises(ConfigError, match="adaptive_min_correct"):
        generate_adaptive_data(backend, _grid_problems(), [1.0], SamplingConfig(), tmp_path / "x.jsonl", min_correct=0.0)


def test_resumed_adaptive_data_keeps_the_choices_and_regenerates_nothing(tmp_path, word_tokenizer) -> None:
    sampling = SamplingConfig(max_new_tokens=64)
    whole = generate_adaptive_data(GridBackend(word_tokenizer, EASIEST), _grid_problems(), [0.0, 0.5, 1.0], sampling,
                                   tmp_path / "a" / "adaptive.jsonl", chunk_size=1)
    killed = GridBackend(word_tokenizer, EASIEST, fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        generate_adaptive_data(killed, _grid_problems(), [0.0, 0.5, 1.0], sampling, tmp_path / "b" / "adaptive.jsonl", chunk_size=1)
    assert not (tmp_path / "b" / CHOICES_FILE).exists()
    resumed_backend = GridBackend(word_tokenizer, EASIEST)
    resumed = generate_adaptive_data(resumed_backend, _grid_problems(), [0.0, 0.5, 1.0], sampling,
                                     tmp_path / "b" / "adaptive.jsonl", chunk_size=1)
    assert resumed.choices == whole.choices
    assert len(resumed_backend.calls) == 12 - 5  # the five cached responses are not asked again
    assert [ex.token_ids for ex in resumed.examples] == [ex.token_ids for ex in whole.examples]
    with pytest.raises(ConfigError, match="responses are not in .* yet"):
        generate_adaptive_data(None, _grid_problems() + [Problem("p9", "p9 asks", "3")], [0.0, 0.5, 1.0], sampling,
                               tmp_path / "b" / "adaptive.jsonl")
    with pytest.raises(ConfigError, match="outside the teacher's grid"):
        generate_adaptive_data(None, _grid_problems(), [0.0, 1.0], sampling, tmp_path / "b" / "adaptive.jsonl")


# --- realign --adaptive ---------------------------------------------------------------------------------------------


def test_realign_config_adaptive_goals() -> None:
    from thinkctl.training import TraceConfig
    from thinkctl.trra.realign import RealignConfig

    assert RealignConfig(reference="a", aligned="b", adaptive=True).round_lambdas() == [1.0]
    assert RealignConfig(reference="a", aligned="b", adaptive=True, lambda_=0.6, iterations=2).round_lambdas() == [0.6, 0.6]
    assert RealignConfig(reference="a", aligned="b", adaptive=True, target_tokens=40).round_lambdas() == [None]
    with pytest.raises(ConfigError, match="at most one"):
        RealignConfig(reference="a", aligned="b", adaptive=True, lambda_=0.5, target_tokens=40)
    with pytest.raises(ConfigError, match="adaptive_min_correct must be in"):
        RealignConfig(reference="a", aligned="b", adaptive=True, adaptive_min_correct=0.0)
    with pytest.raises(ConfigError, match="cannot distil on a trace dataset"):
        RealignConfig(reference="a", aligned="b", adaptive=True, traces=TraceConfig(data="traces.jsonl"))


def test_cli_realign_adaptive_flags() -> None:
    from thinkctl.cli import build_parser

    args = build_parser().parse_args(["realign", "--adaptive", "--adaptive-grid", "0,0.5,1", "--adaptive-samples", "2",
                                      "--out", "runs/x"])
    assert args.adaptive is True and args.adaptive_grid == [0.0, 0.5, 1.0] and args.adaptive_samples == 2


def test_realign_adaptive_runs_every_stage_and_reports_the_oracle_and_choices(tmp_path, word_tokenizer) -> None:
    """Plumbing on random models (no answer is right, so every problem falls back to λ 0 with only_correct off)."""
    from thinkctl.trra.realign import load_realign_configs, run_realign

    ref, aligned = _save_random_pair(tmp_path / "pair", word_tokenizer)
    realign = dict(reference=ref, aligned=aligned, adaptive=True, adaptive_grid=[0.0, 0.5, 1.0], train_limit=3, eval_limit=2,
                   max_new_tokens=5, only_correct=False, batch_size=8)
    trra = dict(max_steps=1, per_device_train_batch_size=2, save_steps=1, learning_rate=1e-3, chunk_size=16, device="cpu")
    out = tmp_path / "run"
    assert run_realign(*load_realign_configs(None, realign, trra), out, stage="data") is None
    assert json.loads((out / CHOICES_FILE).read_text())["histogram_by_level"]["all"] == {"none": 3}
    report = run_realign(*load_realign_configs(None, realign, trra), out)
    assert [r["model"] for r in report["rows"]] == ["reference (λ=0)", "fused teacher (λ=0.5)", "fused teacher (λ=1)",
                                                    "oracle (cheapest right λ per problem)", "adaptive TrRa student"]
    oracle = report["rows"][3]
    assert oracle["n"] == 2 and oracle["mean_thinking_tokens"] <= min(r["mean_thinking_tokens"] for r in report["rows"][:3])
    assert report["adaptive"] and report["teacher_choices"]["grid"] == [1.0, 0.5, 0.0]
    assert all(r["by_level"] for r in report["rows"])  # tiny problems have levels
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["teacher"]["adaptive"] == {"grid": [1.0, 0.5, 0.0], "samples": 1, "min_correct": 0.5}  # as capped, in order
    marker = json.loads((out / "student" / "final" / "trra_student.json").read_text())
    assert marker["config"]["lambda_per_example"] is True
    assert "each training problem's own λ" in (out / "student" / "final" / "README.md").read_text()
    assert "problems per chosen λ" in (out / "report.md").read_text()


# --- side by side ---------------------------------------------------------------------------------------------------


def _fake_round(root, lam: float, rows: list[tuple[str, float, float]], sha: str = "abc") -> dict:
    root.mkdir(parents=True, exist_ok=True)
    report = {"lambda": lam, "rows": [{"model": m, "n": 10, "accuracy": a, "mean_thinking_tokens": t,
                                       "by_level": {"1": {"n": 5, "accuracy": a, "mean_thinking_tokens": t}}} for m, a, t in rows]}
    (root / "report.json").write_text(json.dumps(report))
    settings = {"eval": {"benchmark": "tiny", "split": "test", "problems_sha256": sha, "n_samples": 1, "sampling": {"t": 0}}}
    (root / "run.json").write_text(json.dumps({"settings": settings}))
    return report


def test_compare_runs_lines_up_rounds_students_and_oracle_against_one_reference(tmp_path) -> None:
    from thinkctl.trra.compare import ORACLE, compare_runs, comparison_markdown

    r1 = _fake_round(tmp_path / "iter" / "round-1", 0.25, [("reference (λ=0)", 0.96, 100.0), ("TrRa student", 0.96, 50.0)])
    r2 = _fake_round(tmp_path / "iter" / "round-2", 0.25, [("reference (λ=0)", 0.96, 100.0), ("TrRa student", 0.90, 40.0)])
    (tmp_path / "iter" / "report.json").write_text(json.dumps({"rounds": [r1, r2]}))
    _fake_round(tmp_path / "ada", 1.0, [("reference (λ=0)", 0.96, 100.0), ("fused teacher (λ=1)", 0.3, 20.0),
                                        (ORACLE, 0.99, 30.0), ("adaptive TrRa student", 0.95, 35.0)])
    router = {"model": "router", "n": 10, "accuracy": 0.9, "mean_thinking_tokens": 35.0, "by_level": {}}
    out = compare_runs({"iterated": tmp_path / "iter", "adaptive": tmp_path / "ada"}, [router])
    assert [r["model"] for r in out["rows"]] == [
        "reference (λ=0)", "TrRa student (iterated, round 1, λ=0.25)", "TrRa student (iterated, round 2, λ=0.25)",
        f"{ORACLE} (adaptive, λ=1)", "adaptive TrRa student (adaptive, λ=1)", "router"]
    assert [round(r["reduction_pct_vs_reference"], 1) for r in out["rows"]] == [0.0, 50.0, 60.0, 70.0, 65.0, 65.0]
    md = comparison_markdown(out)
    assert "| adaptive TrRa student (adaptive, λ=1) | 10 | 95.0 | -1.0 | 35.0 | 65.0 |" in md and "L1 acc % / think" in md
    _fake_round(tmp_path / "other", 0.5, [("reference (λ=0)", 0.9, 90.0), ("TrRa student", 0.9, 45.0)], sha="def")
    with pytest.raises(Exception, match="evaluated differently .*problems_sha256"):
        compare_runs({"adaptive": tmp_path / "ada", "other": tmp_path / "other"})
    with pytest.raises(ConfigError, match="has no report.json"):
        compare_runs({"missing": tmp_path / "nowhere"})


def test_trl_style_trainer_takes_a_lambda_per_row(tmp_path, word_tokenizer) -> None:
    import thinkctl

    rows = [{"prompt": "1 + 2 =", "completion": "3", "lam": 0.25}, {"prompt": "2 + 2 =", "completion": "4", "lam": 1.0}]
    trainer = thinkctl.make_trra_trainer(make_random_lm(), make_random_lm(seed=1), None, rows, word_tokenizer,
                                         output_dir=str(tmp_path / "s"), max_steps=1, device="cpu")
    assert trainer.trra.lambda_per_example and [trainer.train_dataset[i][2] for i in range(2)] == [0.25, 1.0]
    with pytest.raises(ConfigError, match="`lam` value is not a finite number"):
        thinkctl.make_trra_trainer(make_random_lm(), make_random_lm(seed=1), None, [{**rows[0], "lam": None}],
                                   word_tokenizer, output_dir=str(tmp_path / "s"), max_steps=1, device="cpu")
    with pytest.raises(ConfigError, match="1 of 2 rows have a `lam` column"):
        thinkctl.make_trra_trainer(make_random_lm(), make_random_lm(seed=1), None, [rows[0], {"prompt": "a", "completion": "b"}],
                                   word_tokenizer, output_dir=str(tmp_path / "s"), max_steps=1, device="cpu")

"""Multi-run reports: tables per benchmark and λ/method, Pareto/length/level plots, clear errors on bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tests.fixtures.synthetic_sweep import LAMBDAS, make_sweep
from thinkctl.cli import main
from thinkctl.errors import DataFormatError
from thinkctl.records import load_records
from thinkctl.report import (
    LENGTHS_PNG, LEVELS_PNG, PARETO_PNG, accuracy_limits, across_benchmarks, build_report, place_labels, point_summary,
)
from thinkctl.router import evaluate_routing, fit_router

FIXTURE = Path(__file__).parent / "fixtures" / "synthetic_sweep.jsonl"


@pytest.fixture(scope="module")
def routed_file(tmp_path_factory) -> Path:
    """Routed records from a router fitted on one synthetic split and evaluated on another."""
    fit, fit_q = make_sweep(30, prefix="fit")
    held, held_q = make_sweep(12, prefix="held", seed=5)
    result = evaluate_routing(fit_router(fit, questions=fit_q), held, questions=held_q)
    path = tmp_path_factory.mktemp("routed") / "routed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in result.records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, routed_file) -> Path:
    out = tmp_path_factory.mktemp("report")
    build_report([FIXTURE, routed_file], out, title="fixture report")
    return out


def test_report_lists_every_benchmark_method_and_lambda(report_dir):
    md = (report_dir / "report.md").read_text(encoding="utf-8")
    html = (report_dir / "report.html").read_text(encoding="utf-8")
    for text in (md, html):
        assert "fixture report" in text
        for benchmark in ("tiny", "math500"):
            assert benchmark in text
        for method in ("fused", "student", "inra", "routed"):
            assert method in text
        for lam in LAMBDAS:
            assert f"λ={lam:g}" in text
        assert "threshold=0.5" in text and "budget=" in text
        assert "level 3 acc %" in text
    assert "mean thinking tokens" in md
    for png in (PARETO_PNG, LENGTHS_PNG, LEVELS_PNG):
        assert f"({png})" in md and f'src="{png}"' in html


def test_report_figures_are_valid_pngs(report_dir):
    for png in (PARETO_PNG, LENGTHS_PNG, LEVELS_PNG):
        with Image.open(report_dir / png) as im:
            im.verify()
        with Image.open(report_dir / png) as im:
            assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 300


def test_point_summary_groups_routed_records_by_policy(routed_file):
    points = point_summary(load_records([FIXTURE, routed_file]))
    routed = points[points["method"] == "routed"]
    assert "logistic threshold=0.5" in set(routed["point"]) and routed["lam"].isna().all()
    assert (routed["n"] == 12).all()
    fused_tiny = points[(points["method"] == "fused") & (points["benchmark"] == "tiny")]
    assert fused_tiny["lam"].tolist() == list(LAMBDAS)


def test_report_reads_run_directories_and_skips_level_plot_without_levels(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records, _ = make_sweep(6)
    (run / "results.jsonl").write_text("".join(json.dumps({**r, "level": None}) + "\n" for r in records), encoding="utf-8")
    md = build_report([run], tmp_path / "out").read_text(encoding="utf-8")
    assert "by difficulty" not in md and not (tmp_path / "out" / LEVELS_PNG).exists()
    assert (tmp_path / "out" / PARETO_PNG).is_file()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", r"empty\.jsonl has no records"),
        ('{"benchmark": "tiny"}\n{oops\n', r"bad\.jsonl:2: malformed JSON"),
        ('{"benchmark": "tiny", "method": "fused"}\n', r"lacks\.jsonl: record 1 lacks field"),
        (None, r"notnum\.jsonl: record 2 has a non-numeric thinking_tokens"),
    ],
)
def test_bad_sweep_files_name_file_and_line(tmp_path, content, match):
    name = match.split("\\")[0]
    path = tmp_path / f"{name}.jsonl"
    if content is None:
        records, _ = make_sweep(1, lambdas=(0.0, 1.0))
        records[1]["thinking_tokens"] = "many"
        content = "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError, match=match):
        build_report([path], tmp_path / "out")


def test_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(DataFormatError, match="no such file"):
        build_report([tmp_path / "nope.jsonl"], tmp_path / "out")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(DataFormatError, match="holds no results.jsonl"):
        build_report([tmp_path / "empty_run"], tmp_path / "out")


def test_cli_report(tmp_path, capsys, routed_file):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURE, run / "results.jsonl")
    shutil.copy(routed_file, run / "routed.jsonl")
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert "report.md" in capsys.readouterr().out
    assert "routed" in (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    assert main(["report", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "rep2")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_overlapping_runs_count_each_sample_once(tmp_path):
    from thinkctl.report import summarize

    once = summarize(load_records([FIXTURE]))
    twice = summarize(load_records([FIXTURE, FIXTURE]))
    pd.testing.assert_frame_equal(once, twice)
    assert len(load_records([FIXTURE, FIXTURE])) == len(load_records([FIXTURE]))


def _rows(benchmark, method, lam, thinking, ids, model="pair", correct=True, **extra):
    return [{"benchmark": benchmark, "method": method, "model": model, "problem_id": str(i), "lam": lam, "correct": correct,
             "thinking_tokens": thinking, "total_tokens": thinking + 5, "finish_reason": "stop", **extra} for i in ids]


def test_every_reduction_is_against_the_reference_on_the_same_problems(tmp_path):
    records = (
        _rows("b", "fused", 0.0, 100, range(10)) + _rows("b", "fused", 1.0, 50, range(10))
        + _rows("b", "student", 0.0, 40, range(5), model="student")  # its own λ=0 is not the reference
        + _rows("b", "fused", 0.0, 300, range(10, 14), model="other")  # problems the student never saw
        + _rows("b", "inra", 0.0, 80, range(10), model="dial") + _rows("b", "inra", 1.0, 24, range(10), model="dial")
        + _rows("b", "routed", 1.0, 20, range(10), model="dial", route_point="logistic threshold=0.5")
    )
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    points = point_summary(load_records([path])).set_index(["method", "point"])
    student = points.loc[("student", "λ=0")]
    assert student["token_reduction_pct"] == pytest.approx(60.0)  # 40 vs the reference's 100 on problems 0–4
    assert (student["reference"], student["shared_problems"]) == ("fused λ=0", 5)
    assert points.loc[("fused", "λ=1"), "token_reduction_pct"] == pytest.approx(100 * (1 - 50 / 100))
    assert points.loc[("inra", "λ=1"), "token_reduction_pct"] == pytest.approx(70.0)  # vs its base, inra λ=0
    assert points.loc[("routed", "logistic threshold=0.5"), "reference"] == "inra λ=0"  # routed over the dial
    html = (build_report([path], tmp_path / "rep").parent / "report.html").read_text(encoding="utf-8")
    assert "thinking reduction vs reference %" in html and "fused λ=0 (5 problems)" in html
    assert "vs λ=0 %" not in html


def test_paper_report_gives_avg_at_k_intervals_and_the_mean_reduction_over_benchmarks(tmp_path):
    records = []
    for benchmark, (ref_tokens, tokens) in {"aime24": (4000, 3000), "aime25": (5000, 2500), "math500": (2000, 1800)}.items():
        for s in range(8):
            records += _rows(benchmark, "fused", 0.0, ref_tokens, range(30), sample=s, correct=s < 6)
            records += _rows(benchmark, "fused", 0.5, tokens, range(30), sample=s, correct=s < 5)
    records += _rows("aime25", "fused", 1.0, 6000, range(30), correct=False, finish_reason="length")  # all cut off
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    table = across_benchmarks(point_summary(load_records([path]))).set_index("λ / policy")
    assert table.loc["λ=0.5", "aime24 reduction %"] == 25.0 and table.loc["λ=0.5", "aime25 reduction %"] == 50.0
    assert table.loc["λ=0.5", "mean reduction %"] == pytest.approx((25 + 50 + 10) / 3, abs=0.05)
    assert table.loc["λ=0.5", "over benchmarks"] == 3
    assert table.loc["λ=0", "aime24 accuracy %"] == "75.0 [75.0, 75.0]"  # every problem 6 of 8: no spread to resample
    # a "reduction" measured on lengths the token limit cut is shown beside the share that hit it
    assert table.loc["λ=1", "aime25 reduction %"] == -20.0 and table.loc["λ=1", "aime25 hit limit %"] == 100.0
    assert table.loc["λ=0.5", "aime25 hit limit %"] == 0.0
    md = build_report([path], tmp_path / "rep").read_text(encoding="utf-8")
    assert "## All benchmarks" in md and "| fused | λ=0.5 | 62.5 [62.5, 62.5] | 25 | 0 |" in md
    assert "| fused | λ=0 | 30 × 8 | 75 |" in md


def test_a_report_names_its_inputs_relative_to_where_it_is_written(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "sweep"
    run.mkdir(parents=True)
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows("b", "fused", 0.0, 10, range(3))))
    monkeypatch.chdir(tmp_path)
    md = build_report(["runs/sweep"], tmp_path / "runs" / "report").read_text(encoding="utf-8")
    html = (tmp_path / "runs" / "report" / "report.html").read_text(encoding="utf-8")
    assert "3 records from `../sweep/results.jsonl`." in md and "3 records from ../sweep/results.jsonl." in html
    assert str(tmp_path) not in md and str(tmp_path) not in html


def test_accuracy_axis_fits_the_data_and_lambda_labels_never_overlap():
    bottom, top = accuracy_limits([0.93, 0.95], [0.99, 1.0])
    assert 90 <= bottom < 93 and 100 <= top <= 101
    bottom, top = accuracy_limits([0.5], [0.52])
    assert top - bottom >= 10 and bottom < 50 and top > 52
    anchors = [(100 + 3 * i, 100 + (i % 2)) for i in range(12)]  # a tight cluster
    sizes = [(14.0, 7.0)] * 12
    offsets = place_labels(anchors, sizes)
    boxes = [(x + o[0], y + o[1], x + o[0] + w, y + o[1] + h) for (x, y), (w, h), o in zip(anchors, sizes, offsets) if o]
    assert 2 <= len(boxes) < 12  # some labels fit, the rest are left out
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
    assert all(o is not None for o in place_labels([(0, 0), (200, 200)], [(10, 7)] * 2))


def test_iterated_run_keeps_students_apart_and_counts_the_shared_reference_once(tmp_path):
    """`thinkctl report OUT` on an iterated realign run: one row per round's student, each measured against its base
    R on the shared problems; the reference both rounds evaluated is one row of 10 samples, not 20."""
    out = tmp_path / "run"
    rounds = {1: ("R + A", 1.5, 60, "S1", 60), 2: ("R + S1", 2.0, 45, "S2", 40)}
    for k, (pair, lam, teacher, student, thinking) in rounds.items():
        records = (_rows("b", "fused", 0.0, 100, range(10), model=pair, base="R")
                   + _rows("b", "fused", lam, teacher, range(10), model=pair, base="R")
                   + _rows("b", "student", 0.0, thinking, range(10), model=student, base="R"))
        (out / f"round-{k}" / "eval").mkdir(parents=True)
        (out / f"round-{k}" / "eval" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (out / f"round-{k}" / "calibration").mkdir()  # calibration records are not results
    points = point_summary(load_records([out])).set_index(["method", "model_key", "point"])
    assert points.loc[("fused", "R", "λ=0"), "n"] == 10
    assert points.loc[("student", "S1", "λ=0"), "token_reduction_pct"] == pytest.approx(40.0)
    assert points.loc[("student", "S2", "λ=0"), "token_reduction_pct"] == pytest.approx(60.0)
    assert points.loc[("student", "S2", "λ=0"), "reference"] == "fused λ=0 of R"
    assert points.loc[("fused", "R + S1", "λ=2"), "token_reduction_pct"] == pytest.approx(55.0)
    md = build_report([out], tmp_path / "rep").read_text(encoding="utf-8")
    assert "| student | S1 | λ=0 |" in md and "| student | S2 | λ=0 |" in md
    single = tmp_path / "single"
    (single / "eval").mkdir(parents=True)
    (single / "eval" / "results.jsonl").write_text((out / "round-1" / "eval" / "results.jsonl").read_text())
    points = point_summary(load_records([single]))
    assert "\n| method | λ / policy |" in build_report([single], tmp_path / "rep1").read_text(encoding="utf-8")  # one model each
    assert list(points["line"].unique()) == ["R + A", "S1"]  # the reference joins its only pair's line

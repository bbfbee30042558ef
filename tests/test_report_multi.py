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
from thinkctl.report import LENGTHS_PNG, LEVELS_PNG, PARETO_PNG, build_report, point_summary
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

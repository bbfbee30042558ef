"""The typed per-sample record: files written before a field existed still load; one aggregation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thinkctl.errors import DataFormatError
from thinkctl.records import (
    SampleRecord,
    aggregate,
    load_records,
    points_down,
    read_records,
    record_files,
    within_points,
)

FIXTURE = Path(__file__).parent / "fixtures" / "synthetic_sweep.jsonl"  # written by the pre-typed sweep code
REQUIRED = {"benchmark": "b", "method": "fused", "problem_id": 7, "lam": 1, "correct": 1, "thinking_tokens": 3, "total_tokens": 5}


def test_records_written_before_the_type_existed_load_unchanged():
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    records = read_records(FIXTURE)
    assert len(records) == len(rows)
    for row, record in zip(rows, records):
        assert {k: v for k, v in record.to_dict().items() if k in row} == row
        assert record.route_point is None


def test_optional_fields_default_and_unknown_fields_are_ignored(tmp_path):
    record = SampleRecord.from_dict({**REQUIRED, "written_by_a_newer_thinkctl": True})
    assert (record.problem_id, record.lam, record.correct, record.sample, record.level) == ("7", 1.0, True, 0, None)
    assert record.key == ("b", "fused", "7", 1.0, 0)
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(record.to_dict()) + "\n")
    assert read_records(path) == [record]
    with pytest.raises(DataFormatError, match="record lacks field"):
        SampleRecord.from_dict({k: v for k, v in REQUIRED.items() if k != "lam"})
    with pytest.raises(DataFormatError, match="correct='yes'"):
        SampleRecord.from_dict({**REQUIRED, "correct": "yes"})


def test_aggregate_is_the_one_summary_of_records():
    df = load_records([FIXTURE])
    by_lam = aggregate(df[(df["benchmark"] == "tiny") & (df["method"] == "fused")], ["lam"]).set_index("lam")
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    at_zero = [r for r in rows if r["benchmark"] == "tiny" and r["method"] == "fused" and r["lam"] == 0.0]
    assert by_lam.loc[0.0, "n"] == len(at_zero)
    assert by_lam.loc[0.0, "accuracy"] == pytest.approx(sum(r["correct"] for r in at_zero) / len(at_zero))
    assert by_lam.loc[0.0, "mean_thinking_tokens"] == pytest.approx(sum(r["thinking_tokens"] for r in at_zero) / len(at_zero))


def test_points_down_compares_exact_counts_exactly() -> None:
    """Accuracies are ratios of counts: 281 vs 275 of 300 is 2 points down, not 2.000000000000014."""
    ref, acc = 100.0 * (281 / 300), 100.0 * (275 / 300)  # as the reports compute them: a share, then percent
    assert ref - acc > 2.0  # the float difference the helper exists for
    assert points_down(acc, ref) == 2.0
    assert within_points(acc, ref, 2.0) and not within_points(acc, ref, 1.9)
    assert points_down(ref, acc) == -2.0 and within_points(ref, acc, 0.0)  # above the reference is within any bound


def test_a_directory_of_runs_reads_each_run_but_calibration_and_replaced_work(tmp_path):
    """A controls sweep's out dir (``thinkctl report runs/tiny-control``): one run per control and budget and
    ``fixed/``, beside ``summary.csv``, ``calibration/`` (not results) and ``replaced-*`` (stale work)."""
    row = json.dumps(REQUIRED) + "\n"
    for name in ("hard-20", "soft-20", "fixed", "calibration", "replaced-20261207-1200"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.jsonl").write_text(row)
    (tmp_path / "summary.csv").write_text("control,budget\n")
    (tmp_path / "report").mkdir()  # a report written inside holds no records
    files = record_files([tmp_path])
    assert sorted(f.parent.name for f in files) == ["fixed", "hard-20", "soft-20"]
    with pytest.raises(DataFormatError, match="holds no results.jsonl"):
        record_files([tmp_path / "report"])

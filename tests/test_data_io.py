"""Benchmark loading from local files, malformed-data errors, and durable JSONL/atomic writes."""

import json

import pandas as pd
import pytest

from thinkctl.data import load_benchmark, render_prompt
from thinkctl.errors import DataFormatError
from thinkctl.io import append_jsonl, atomic_write_text, drop_partial_tail, read_jsonl


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_local_jsonl_with_math_and_gsm8k_fields(tmp_path) -> None:
    path = write_lines(tmp_path / "mix.jsonl", [
        json.dumps({"unique_id": "a", "problem": "1+1?", "answer": "2", "level": 3}),
        json.dumps({"question": "Sam has 3 apples...", "answer": "3 + 4 = 7\n#### 7"}),
        json.dumps({"problem": "x?", "solution": r"so \boxed{\frac{1}{2}}.", "level": "Level 5"}),
    ])
    a, b, c = load_benchmark(str(path))
    assert (a.id, a.answer, a.level) == ("a", "2", 3)
    assert (b.id, b.answer, b.level) == ("2", "7", None)
    assert (c.answer, c.level) == (r"\frac{1}{2}", 5)


def test_malformed_jsonl_line_is_named(tmp_path) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps({"question": "q", "answer": "1"}), '{"question": "q2", "answer": ', ""])
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: malformed JSON"):
        load_benchmark(str(path))


def test_missing_fields_missing_file_duplicates(tmp_path) -> None:
    path = write_lines(tmp_path / "nofield.jsonl", [json.dumps({"q": "x", "answer": "1"})])
    with pytest.raises(DataFormatError, match="nofield.jsonl:1: record has no a question field"):
        load_benchmark(str(path))
    with pytest.raises(DataFormatError, match="unknown benchmark"):
        load_benchmark(str(tmp_path / "absent.jsonl"))
    dup = write_lines(tmp_path / "dup.jsonl", [json.dumps({"id": 1, "question": "a", "answer": "1"})] * 2)
    with pytest.raises(DataFormatError, match="duplicate problem id '1'"):
        load_benchmark(str(dup))


def test_parquet_and_limit(tmp_path) -> None:
    path = tmp_path / "p.parquet"
    pd.DataFrame({"problem": ["a", "b", "c"], "answer": ["1", "2", "3"]}).to_parquet(path)
    problems = load_benchmark(str(path), limit=2)
    assert [p.answer for p in problems] == ["1", "2"]


def test_render_prompt_falls_back_without_a_chat_template(word_tokenizer) -> None:
    assert render_prompt(word_tokenizer, "1 + 1") == "Question: 1 + 1\nAnswer:"


def test_truncated_tail_is_tolerated_and_dropped(tmp_path) -> None:
    path = tmp_path / "r.jsonl"
    append_jsonl(path, [{"i": 0}, {"i": 1}])
    with path.open("a") as f:
        f.write('{"i": 2, "x"')
    with pytest.raises(DataFormatError, match="r.jsonl:3"):
        read_jsonl(path)
    assert [r["i"] for r in read_jsonl(path, allow_truncated_tail=True)] == [0, 1]
    assert drop_partial_tail(path) is True
    append_jsonl(path, [{"i": 2}])
    assert [r["i"] for r in read_jsonl(path)] == [0, 1, 2]


def test_atomic_write_replaces_whole_file(tmp_path) -> None:
    path = atomic_write_text(tmp_path / "sub" / "s.md", "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["s.md"]


def test_tiny_registers_itself_as_a_benchmark() -> None:
    """``load_benchmark("tiny")`` works with only thinkctl.data imported: the tiny package registers it."""
    import subprocess
    import sys

    code = "from thinkctl.data import load_benchmark; ps = load_benchmark('tiny', split='train', limit=3, seed=1); print(ps[0].id, len(ps))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["tiny-train-1-0", "3"]
    from thinkctl.tiny import generate_problems

    problems = load_benchmark("tiny", limit=5, seed=2)
    assert [(p.id, p.question, p.answer, p.level) for p in problems] == [
        (p.id, p.question, p.answer, p.level) for p in generate_problems(5, seed=2, split="test")
    ]

"""Benchmark loading from local files, malformed-data errors, and durable JSONL/atomic writes."""

import json
from pathlib import Path

import pandas as pd
import pytest

from thinkctl.data import benchmark_name, load_benchmark, render_prompt
from thinkctl.errors import ConfigError, DataFormatError
from thinkctl.prompts import PromptConfig
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


@pytest.mark.parametrize("gold, said", [(None, "null"), ("", "empty"), ("  ", "empty")])
def test_a_null_or_empty_gold_is_refused_naming_the_row(tmp_path, gold, said) -> None:
    rows = [json.dumps({"id": "a", "question": "1 + 1", "answer": "2"}), json.dumps({"id": "b", "question": "2 + 2", "answer": gold})]
    path = write_lines(tmp_path / "golds.jsonl", rows)
    with pytest.raises(DataFormatError, match=rf"golds.jsonl:2: `answer` is {said}; every problem needs"):
        load_benchmark(str(path))
    path = write_lines(tmp_path / "gsm.jsonl", [json.dumps({"question": "q", "answer": "work\n#### "})])
    with pytest.raises(DataFormatError, match="gsm.jsonl:1: `answer` .* holds no final answer"):
        load_benchmark(str(path))


def test_parquet_and_limit(tmp_path) -> None:
    path = tmp_path / "p.parquet"
    pd.DataFrame({"problem": ["a", "b", "c"], "answer": ["1", "2", "3"]}).to_parquet(path)
    problems = load_benchmark(str(path), limit=2)
    assert [p.answer for p in problems] == ["1", "2"]


def test_render_prompt_falls_back_without_a_chat_template(word_tokenizer) -> None:
    assert render_prompt(word_tokenizer, "1 + 1") == "Question: 1 + 1\nAnswer:"
    with_system = PromptConfig("{question} (show work)", system_prompt="Be brief.")
    assert render_prompt(word_tokenizer, "1 + 1", with_system) == "Be brief.\n\nQuestion: 1 + 1 (show work)\nAnswer:"


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


AIME25_DIR = Path(__file__).parent / "fixtures" / "aime25"  # synthetic problems in opencompass/AIME2025's schema

R1_TEMPLATE = (  # DeepSeek-R1-Distill's chat template, reduced to what matters here: it opens <think> in the prompt
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<|User|>{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}"
)


def test_prompt_templates_presets_custom_text_and_system_prompt(word_tokenizer) -> None:
    word_tokenizer.chat_template = R1_TEMPLATE
    question = r"What is $\frac{1}{2} + \frac{1}{2}$?"
    assert render_prompt(word_tokenizer, question) == f"<|User|>{question}<|Assistant|><think>\n"
    r1 = render_prompt(word_tokenizer, question, PromptConfig("r1-math"))
    assert r1 == (f"<|User|>{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
                  "<|Assistant|><think>\n")
    custom = PromptConfig("Solve: {question} Box it: \\boxed{}.", system_prompt="You are careful.")
    assert render_prompt(word_tokenizer, question, custom) == (
        f"You are careful.<|User|>Solve: {question} Box it: \\boxed{{}}.<|Assistant|><think>\n")
    with pytest.raises(ConfigError, match=r"'r1-maths' is neither a preset \(plain, r1-math\) nor a text containing \{question\}"):
        PromptConfig("r1-maths")


def test_the_default_prompt_is_the_bare_question_the_tiny_models_were_trained_on() -> None:
    from thinkctl.sweep import SweepConfig

    assert SweepConfig().prompt == PromptConfig() and PromptConfig().template == "{question}"


def test_aime25_from_local_files_under_its_name() -> None:
    problems = load_benchmark(f"aime25={AIME25_DIR}")
    assert [p.id for p in problems] == ["aime2025-I-1", "aime2025-I-2", "aime2025-I-3", "aime2025-II-1", "aime2025-II-2"]
    assert problems[1].answer == "24" and benchmark_name(f"aime25={AIME25_DIR}") == "aime25"
    assert [p.id for p in load_benchmark(str(AIME25_DIR / "aime2025-II.jsonl"))] == ["1", "2"]
    with pytest.raises(DataFormatError, match="benchmark aime25: no such file or directory"):
        load_benchmark("aime25=/nowhere/aime25.jsonl")


def test_aime25_from_the_hub_concatenates_exams_i_and_ii(monkeypatch) -> None:
    import datasets

    calls = []

    def fake_load_dataset(path, config, split):
        calls.append((path, config, split))
        stem = {"AIME2025-I": "aime2025-I", "AIME2025-II": "aime2025-II"}[config]
        return [json.loads(line) for line in (AIME25_DIR / f"{stem}.jsonl").read_text().splitlines()]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    problems = load_benchmark("aime25")
    assert calls == [("opencompass/AIME2025", "AIME2025-I", "test"), ("opencompass/AIME2025", "AIME2025-II", "test")]
    assert [p.id for p in problems][:2] == ["AIME2025-I-1", "AIME2025-I-2"] and len(problems) == 5
    assert problems[-1].id == "AIME2025-II-2" and problems[-1].answer == "210"

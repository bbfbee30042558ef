"""lm-evaluation-harness drives thinkctl (benchmarks/lm_eval_agreement.py): the local task it reads, and,
end to end (slow), its accuracy against thinkctl's own sweep through ``--model hf`` and ``thinkctl serve``."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install -e '.[eval]'")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lm_eval_agreement.py"


@pytest.fixture(scope="module")
def agreement():
    spec = importlib.util.spec_from_file_location("lm_eval_agreement", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_the_task_prompts_what_a_sweep_renders_and_extracts_the_first_boxed_integer(agreement, tmp_path):
    import thinkctl.tiny.benchmark  # noqa: F401
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.tasks import TaskManager

    from thinkctl.data import load_benchmark, render_prompt

    task_dir = agreement.write_task(tmp_path / "task", n=5, seed=3)
    problems = load_benchmark("tiny", "test", 5, 3)
    rows = [json.loads(line) for line in (task_dir / "thinkctl_tiny.jsonl").read_text().splitlines()]
    assert [(r["id"], r["question"], r["answer"]) for r in rows] == [(p.id, p.question, p.answer) for p in problems]

    task = TaskManager(include_path=str(task_dir), include_defaults=False).load([agreement.TASK])["tasks"][agreement.TASK]
    docs = list(task.eval_docs)
    no_chat_template = type("Tok", (), {"chat_template": None})()
    assert [task.doc_to_text(d) for d in docs] == [render_prompt(no_chat_template, p.question) for p in problems]
    assert [task.doc_to_target(d) for d in docs] == [p.answer for p in problems]
    extract = RegexFilter(regex_pattern=agreement.BOXED_REGEX)
    response = "<think> 3 </think> The answer is \\boxed{-12}. Or \\boxed{4}"
    assert list(extract.apply([[response]], docs[:1])) == [["-12"]]


@pytest.mark.slow
def test_lm_eval_accuracy_equals_thinkctls_sweep_through_hf_and_serve(agreement, tmp_path):
    """Minutes: trains a toy InRa model, sweeps it, runs lm_eval 3x through `--model hf` and, with vLLM,
    3x through `thinkctl serve` (`--model local-completions` at each effort level)."""
    try:
        import vllm  # noqa: F401
        serve = True
    except ImportError:
        serve = False
    rows = agreement.run(tmp_path, n=16, seed=0, max_new=16, serve=serve, steps=150)
    agreement.print_rows(rows)
    assert len(rows) == (6 if serve else 3)
    for row in rows:
        assert row.same_answer == row.n, row  # the toy model's answers are all `\boxed{N}`: extraction agrees
        assert row.same_grade_on_same_answer == row.same_answer, row
        assert row.lm_eval_acc == row.thinkctl_acc, row
    by_lam = {r.lam: r.lm_eval_acc for r in rows if r.route == "hf"}
    assert by_lam[0.0] < by_lam[1.0], "λ must reach generate through --gen_kwargs thinkctl_lambda"
    assert {r.lam: r.lm_eval_acc for r in rows if r.route == "local-completions"} == (by_lam if serve else {})

"""Sweeps: graded records, resume after an interruption, summaries and plots."""

import json
from collections.abc import Sequence

import pytest

from tests.conftest import make_word_tokenizer
from thinkctl.data import Problem
from thinkctl.io import read_jsonl
from thinkctl.records import load_records
from thinkctl.report import summarize
from thinkctl.rollout.base import Completion, RolloutBackend
from thinkctl.sampling import SamplingConfig
from thinkctl.sweep import run_sweep

PROBLEMS = [Problem(str(i), f"{i} + 1", str(i + 1), level=1 + i % 2) for i in range(10)]


class ScriptedBackend(RolloutBackend):
    """Thinks 8·(1−λ)+2 tokens; right unless λ > 1 and the problem is odd. Can crash after k calls."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.tokenizer = make_word_tokenizer()
        self.crash_after = crash_after
        self.calls = 0
        self.generated = 0

    def generate(self, prompts: Sequence[str], lam, sampling: SamplingConfig) -> list[Completion]:
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        out = []
        for prompt, l in zip(prompts, lam):
            n = int(prompt.split()[1])
            answer = n + 1 if not (l > 1 and n % 2) else n
            steps = " ".join(["1"] * round(8 * (1 - min(l, 1)) + 2))
            text = f"<think> {steps} </think> the answer is \\boxed{{ {answer} }}"
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append(Completion(text=text.replace("{ ", "{").replace(" }", "}"), token_ids=ids, finish_reason="stop", lam=l))
        self.generated += len(out)
        return out


def test_sweep_records_summary_and_plot(tmp_path) -> None:
    results = run_sweep(ScriptedBackend(), PROBLEMS, [0, 0.5, 1.5], SamplingConfig(), tmp_path, benchmark="toy", chunk_size=7)
    records = read_jsonl(results)
    assert len(records) == 30
    r = records[0]
    assert set(r) >= {"benchmark", "method", "model", "problem_id", "level", "lam", "sample", "response", "answer",
                      "gold", "correct", "thinking_tokens", "total_tokens", "finish_reason"}
    summary = summarize(load_records([tmp_path]))
    by_lam = summary.set_index("lam")
    assert by_lam.loc[0.0, "accuracy"] == 1.0 and by_lam.loc[1.5, "accuracy"] == 0.5
    assert by_lam.loc[0.0, "mean_thinking_tokens"] == 10 and by_lam.loc[0.5, "mean_thinking_tokens"] == 6
    assert by_lam.loc[0.5, "token_reduction_pct"] == pytest.approx(40.0)
    md = (tmp_path / "summary.md").read_text()
    assert "| toy | fused | 0.5 | 10 | 100.0 | 6.0 |" in md
    assert (tmp_path / "summary.csv").read_text().startswith("benchmark,method,lam,n,accuracy")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_interrupted_sweep_resumes_without_loss_or_duplicates(tmp_path) -> None:
    with pytest.raises(KeyboardInterrupt):
        run_sweep(ScriptedBackend(crash_after=2), PROBLEMS, [0, 1, 1.5], SamplingConfig(), tmp_path, benchmark="toy", chunk_size=4)
    partial = read_jsonl(tmp_path / "results.jsonl")
    assert len(partial) == 8
    # a writer killed mid-line leaves a fragment: resume must cut it, not choke on it or keep it
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write(json.dumps(partial[0])[:40])
    backend = ScriptedBackend()
    run_sweep(backend, PROBLEMS, [0, 1, 1.5], SamplingConfig(), tmp_path, benchmark="toy", chunk_size=4)
    assert backend.generated == 30 - 8
    keys = [(r["problem_id"], r["lam"]) for r in read_jsonl(tmp_path / "results.jsonl")]
    assert len(keys) == len(set(keys)) == 30
    again = ScriptedBackend()
    run_sweep(again, PROBLEMS, [0, 1, 1.5], SamplingConfig(), tmp_path, benchmark="toy")
    assert again.generated == 0


def test_report_errors_on_empty_or_malformed_files(tmp_path) -> None:
    from thinkctl.errors import DataFormatError

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataFormatError, match="has no records"):
        load_records([empty])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"benchmark": "x"}) + "\n")
    with pytest.raises(DataFormatError, match="record 1 lacks field"):
        load_records([bad])

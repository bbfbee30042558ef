"""Sweeps: graded records, resume after an interruption, summaries and plots."""

import dataclasses
import json
from collections.abc import Sequence

import pytest

from tests.conftest import make_word_tokenizer
from thinkctl.data import Problem, load_benchmark
from thinkctl.io import read_jsonl
from thinkctl.prompts import PromptConfig
from thinkctl.records import load_records
from thinkctl.report import summarize
from thinkctl.rollout.base import Completion, RolloutBackend
from thinkctl.runs import RunSettingsError, differences
from thinkctl.sampling import SamplingConfig
from thinkctl.sweep import SweepConfig, run_sweep, run_sweep_config

PROBLEMS = [Problem(str(i), f"{i} + 1", str(i + 1), level=1 + i % 2) for i in range(10)]


class ScriptedBackend(RolloutBackend):
    """Thinks 8·(1−λ)+2 tokens; right unless λ > 1 and the problem is odd. Can crash after k calls."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.tokenizer = make_word_tokenizer()
        self.crash_after = crash_after
        self.calls = 0
        self.generated = 0

    def generate(self, prompts: Sequence[str], lam, sampling: SamplingConfig, seeds=None) -> list[Completion]:
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
                      "gold", "correct", "thinking_tokens", "total_tokens", "finish_reason", "thinking_closed"}
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


def write_benchmark(path, n: int = 6):
    path.write_text("".join(json.dumps({"id": str(i), "question": f"{i} + 1", "answer": str(i + 1)}) + "\n" for i in range(n)))
    return str(path)


def fake_checkpoint(path, weights: bytes = b"w" * 64):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (path / "model.safetensors").write_bytes(weights)
    return str(path)


def sweep_into(out, cfg, models, overwrite=False, backend=None):
    backend = backend or ScriptedBackend()
    run_sweep_config(cfg, lambda: backend, out, method="fused", model=" + ".join(models.values()), models=models,
                     overwrite=overwrite)
    return backend


def test_a_run_records_its_settings_and_refuses_to_resume_under_others(tmp_path) -> None:
    bench = write_benchmark(tmp_path / "bench.jsonl")
    models = {"reference": fake_checkpoint(tmp_path / "ref"), "aligned": fake_checkpoint(tmp_path / "al")}
    cfg = SweepConfig(benchmark=bench, lambdas=[0.0, 1.0], sampling=SamplingConfig(max_new_tokens=64),
                      prompt=PromptConfig("r1-math"))
    out = tmp_path / "run"
    sweep_into(out, cfg, models)
    run = json.loads((out / "run.json").read_text())
    settings = run["settings"]
    assert settings["sampling"]["max_new_tokens"] == 64 and settings["method"] == "fused"
    assert settings["prompt"]["template"].endswith("put your final answer within \\boxed{}.")
    assert (settings["device"], settings["dtype"]) == ("cpu", "float32")  # auto, resolved on this CPU machine
    assert settings["benchmarks"]["bench"]["n_problems"] == 6 and settings["benchmarks"]["bench"]["limit"] is None
    assert set(settings["models"]["reference"]["files"]) == {"config.json", "model.safetensors"}
    assert run["context"]["models"] == models

    # same settings, more λ and samples: resumes, only generates the new ones, and run.json says what the run holds
    assert sweep_into(out, dataclasses.replace(cfg, lambdas=[0.0, 1.0, 0.5]), models).generated == 6
    assert sweep_into(out, dataclasses.replace(cfg, lambdas=[0.5], n_samples=2), models).generated == 6
    context = json.loads((out / "run.json").read_text())["context"]
    assert (context["lambdas"], context["n_samples"]) == ([0.0, 1.0, 0.5], 2)
    results_before = (out / "results.jsonl").read_text()
    # a smaller max_new_tokens and retrained aligned weights: refused, naming both with old and new values
    fake_checkpoint(tmp_path / "al", weights=b"v" * 64)
    smaller = dataclasses.replace(cfg, sampling=SamplingConfig(max_new_tokens=32))
    with pytest.raises(RunSettingsError) as err:
        sweep_into(out, smaller, models)
    message = str(err.value)
    assert "sampling.max_new_tokens: 64 (recorded) → 32 (now)" in message
    assert "models.aligned.files.model.safetensors" in message and "--overwrite" in message
    assert (out / "results.jsonl").read_text() == results_before  # nothing was mixed in

    # --overwrite moves the earlier results aside and starts afresh
    sweep_into(out, smaller, models, overwrite=True)
    aside = next(out.glob("replaced-*"))
    assert sorted(p.name for p in aside.iterdir()) == ["results.jsonl", "run.json", "summary.csv", "summary.md", "sweep.png"]
    assert len(read_jsonl(aside / "results.jsonl")) == 24 and len(read_jsonl(out / "results.jsonl")) == 12
    assert json.loads((out / "run.json").read_text())["settings"]["sampling"]["max_new_tokens"] == 32


def test_a_fresh_multi_benchmark_run_says_resuming_only_where_it_resumes(tmp_path, caplog) -> None:
    benches = ",".join(write_benchmark(tmp_path / f"{name}.jsonl", 3) for name in ("first", "second"))
    cfg = SweepConfig(benchmark=benches, lambdas=[0.0])
    with caplog.at_level("INFO", logger="thinkctl.sweep"):
        sweep_into(tmp_path / "run", cfg, {"reference": "some/hub-model"})
    assert not [r for r in caplog.records if "resuming" in r.getMessage()]
    caplog.clear()
    with caplog.at_level("INFO", logger="thinkctl.sweep"):
        sweep_into(tmp_path / "run", dataclasses.replace(cfg, n_samples=2), {"reference": "some/hub-model"})
    assert [r.getMessage().split(" in ")[0] for r in caplog.records if "resuming" in r.getMessage()] == [
        "resuming first/fused", "resuming second/fused"]
    assert all(r.getMessage().endswith("3 samples done, 3 to go") for r in caplog.records if "resuming" in r.getMessage())


def test_results_without_a_settings_record_are_not_resumed_blindly(tmp_path) -> None:
    bench = write_benchmark(tmp_path / "bench.jsonl", 3)
    out = tmp_path / "old-run"
    run_sweep(ScriptedBackend(), load_benchmark(bench), [0.0], SamplingConfig(), out, benchmark="bench")
    cfg = SweepConfig(benchmark=bench, lambdas=[0.0])
    with pytest.raises(RunSettingsError, match="has no run.json"):
        sweep_into(out, cfg, {"reference": "some/hub-model"})
    sweep_into(out, cfg, {"reference": "some/hub-model"}, overwrite=True)
    assert json.loads((out / "run.json").read_text())["settings"]["models"] == {"reference": {"name": "some/hub-model"}}


def test_settings_added_later_do_not_break_older_records_and_benchmarks_may_be_added() -> None:
    recorded = {"sampling": {"temperature": 0.7}, "benchmarks": {"aime24": {"limit": None}}}
    now = {"sampling": {"temperature": 0.7, "max_thinking_tokens": None}, "benchmarks": {"aime24": {"limit": None}, "aime25": {"limit": None}}}
    assert differences(recorded, now) == []
    assert differences(recorded, {**now, "sampling": {"temperature": 0.6}}) == [("sampling.temperature", 0.7, 0.6)]
    assert differences(recorded, {**now, "benchmarks": {"aime24": {"limit": 10}}}) == [("benchmarks.aime24.limit", None, 10)]


def test_ctrl_c_saves_the_finished_samples_of_the_chunk_in_flight(tmp_path, monkeypatch) -> None:
    import thinkctl.rollout.hf as hf
    from thinkctl.decoding import GenerationResult
    from thinkctl.errors import Interrupted

    tokenizer = make_word_tokenizer()
    answer = tokenizer("<think> 1 </think> \\boxed{ 1 }", add_special_tokens=False)["input_ids"]
    calls = []

    def fake_generate(reference, aligned, input_ids, mask, lams, sampling, stop, thinking=None, seeds=None):
        calls.append(len(lams))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return GenerationResult(token_ids=[list(answer) for _ in lams], finish_reasons=["stop"] * len(lams))

    monkeypatch.setattr(hf, "fused_generate", fake_generate)
    backend = hf.HFBackend(None, None, tokenizer, batch_size=2, progress=False)
    problems = PROBLEMS[:8]
    with pytest.raises(Interrupted, match=r"interrupted: 4 samples are saved in .*results\.jsonl \(4 of toy/fused to go\)"):
        run_sweep(backend, problems, [0.0], SamplingConfig(), tmp_path, benchmark="toy", chunk_size=8)
    assert len(read_jsonl(tmp_path / "results.jsonl")) == 4  # two finished batches of the interrupted chunk
    calls.clear()
    run_sweep(backend, problems, [0.0], SamplingConfig(), tmp_path, benchmark="toy", chunk_size=8)
    assert sum(calls) == 4 and len({r["problem_id"] for r in read_jsonl(tmp_path / "results.jsonl")}) == 8


def test_sampled_sweeps_resumed_or_grown_give_the_records_of_one_uninterrupted_run(tmp_path, random_pair, monkeypatch) -> None:
    import thinkctl.rollout.hf as hf

    ref, al = random_pair
    tokenizer = make_word_tokenizer()
    sampling = SamplingConfig(max_new_tokens=6, temperature=0.7, top_p=0.95, seed=5)
    problems, lambdas = PROBLEMS[:4], [0.0, 1.0]

    def sweep(out, n_samples, chunk_size=5):
        backend = hf.HFBackend(ref, al, tokenizer, batch_size=3, progress=False)
        run_sweep(backend, problems, lambdas, sampling, tmp_path / out, benchmark="toy", n_samples=n_samples,
                  chunk_size=chunk_size, summarize=False)

    def records(out):
        return sorted(read_jsonl(tmp_path / out / "results.jsonl"), key=lambda r: (r["problem_id"], r["lam"], r["sample"]))

    sweep("whole", 4)
    whole = records("whole")
    assert len(whole) == 32
    by_sample = {s: [r["response"] for r in whole if r["sample"] == s] for s in range(4)}
    assert by_sample[0] != by_sample[2] and by_sample[1] != by_sample[3] and by_sample[0] != by_sample[1]

    sweep("grown", 2)
    sweep("grown", 4, chunk_size=3)  # other chunks, other batches: the seeds follow the keys
    assert records("grown") == whole

    real, calls = hf.fused_generate, []

    def interrupted_mid_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(hf, "fused_generate", interrupted_mid_chunk)
    with pytest.raises(KeyboardInterrupt):
        sweep("resumed", 4)
    assert 0 < len(read_jsonl(tmp_path / "resumed" / "results.jsonl")) < 32
    monkeypatch.setattr(hf, "fused_generate", real)
    sweep("resumed", 4)
    assert records("resumed") == whole


def test_device_and_dtype_default_to_the_best_available(monkeypatch) -> None:
    import torch

    from thinkctl.rollout import BackendConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert BackendConfig().resolved() == BackendConfig(device="cpu", dtype="float32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert (BackendConfig().resolved().device, BackendConfig().resolved().dtype) == ("cuda", "bfloat16")
    assert BackendConfig(device="cpu").resolved().dtype == "float32"
    assert BackendConfig(dtype="float16").resolved() == BackendConfig(device="cuda", dtype="float16")


class CutOffBackend(ScriptedBackend):
    """Like ScriptedBackend, but at λ = 0 the even problems run out of tokens mid-thought, a box already written."""

    def generate(self, prompts, lam, sampling, seeds=None):
        out = super().generate(prompts, lam, sampling)
        for i, (prompt, completion) in enumerate(zip(prompts, out)):
            n = int(prompt.split()[1])
            if completion.lam == 0 and n % 2 == 0:
                text = f"<think> 1 1 1 maybe \\boxed{{ {n + 1} }}"
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                out[i] = Completion(text=text.replace("{ ", "{").replace(" }", "}"), token_ids=ids, finish_reason="length", lam=0.0)
        return out


def test_cut_off_thinking_has_no_answer_is_kept_and_the_limit_share_is_summarised(tmp_path) -> None:
    run_sweep(CutOffBackend(), PROBLEMS, [0, 1], SamplingConfig(), tmp_path, benchmark="toy")
    records = read_jsonl(tmp_path / "results.jsonl")
    cut = [r for r in records if r["finish_reason"] == "length"]
    assert len(records) == 20 and len(cut) == 5
    assert all(r["answer"] is None and r["correct"] is False and r["thinking_closed"] is False for r in cut)
    assert all(r["thinking_closed"] is True for r in records if r["finish_reason"] == "stop")
    by_lam = summarize(load_records([tmp_path])).set_index("lam")
    assert (by_lam.loc[0.0, "hit_limit"], by_lam.loc[0.0, "unclosed"], by_lam.loc[0.0, "accuracy"]) == (0.5, 0.5, 0.5)
    assert by_lam.loc[1.0, "hit_limit"] == 0.0
    md = (tmp_path / "summary.md").read_text()
    assert "hit limit %" in md.splitlines()[0] and "| toy | fused | 0 | 10 | 50.0 |" in md and "| 50.0 | 10 × 1 |" in md

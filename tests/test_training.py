"""Scale-out pieces TrRa and InRa share: accelerate configs, frozen models per launch strategy, the step-normalised
loss, trace datasets, vLLM's parallel settings and the GPU smoke script's clean skip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

import thinkctl.training as training
from tests.conftest import make_random_lm
from thinkctl.config import build
from thinkctl.errors import ConfigError, DataFormatError
from thinkctl.losses import chunked_fused_kd_loss, fused_kd_loss
from thinkctl.rollout import BackendConfig
from thinkctl.training import TraceConfig, load_traces, prepare_frozen

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "accelerate"


# --- accelerate configs ---------------------------------------------------------------------------------------


def test_accelerate_configs_parse_and_name_their_strategy():
    ddp, fsdp, zero3 = (load_config_from_file(str(CONFIGS / f"{name}.yaml")) for name in ("ddp", "fsdp", "zero3"))
    assert ddp.distributed_type == DistributedType.MULTI_GPU and not ddp.fsdp_config and not ddp.deepspeed_config
    assert fsdp.distributed_type == DistributedType.FSDP
    assert fsdp.fsdp_config["fsdp_version"] == 2 and fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Qwen2DecoderLayer"
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # the saved student is one ordinary checkpoint
    assert zero3.distributed_type == DistributedType.DEEPSPEED
    assert zero3.deepspeed_config["zero_stage"] == 3 and zero3.deepspeed_config["offload_param_device"] == "cpu"
    assert zero3.deepspeed_config["zero3_save_16bit_model"] is True
    for config in (ddp, fsdp, zero3):
        assert config.num_machines == 1 and config.num_processes == 8 and config.mixed_precision == "bf16"
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == ["ddp.yaml", "fsdp.yaml", "zero3.yaml"]


# --- frozen models --------------------------------------------------------------------------------------------


def _accelerator(deepspeed: bool = False, fsdp: bool = False) -> SimpleNamespace:
    calls: list = []
    state = SimpleNamespace(deepspeed_plugin=object() if deepspeed else None, fsdp_plugin=object() if fsdp else None)
    return SimpleNamespace(state=state, calls=calls,
                           prepare_model=lambda model, evaluation_mode: calls.append(("prepare_model", evaluation_mode)) or model)


@pytest.mark.parametrize("strategy", ["zero3", "fsdp", "ddp"])
def test_frozen_models_are_sharded_not_moved_whole_and_never_trainable(strategy, monkeypatch):
    """Under ZeRO-3/FSDP the frozen model goes to TRL's sharding helpers and is never moved to one device with
    ``.to``; otherwise accelerate places one replica without a DDP wrapper (evaluation mode)."""
    accelerator = _accelerator(deepspeed=strategy == "zero3", fsdp=strategy == "fsdp")
    monkeypatch.setattr(training, "prepare_deepspeed", lambda model, acc: accelerator.calls.append("prepare_deepspeed") or model)
    monkeypatch.setattr(training, "prepare_fsdp", lambda model, acc: accelerator.calls.append("prepare_fsdp") or model)
    model = make_random_lm().train()
    model.to = lambda *a, **k: pytest.fail("a frozen model was moved wholesale with .to()")  # type: ignore[method-assign]
    frozen = prepare_frozen(model, accelerator)
    expected = {"zero3": ["prepare_deepspeed"], "fsdp": ["prepare_fsdp"], "ddp": [("prepare_model", True)]}[strategy]
    assert accelerator.calls == expected
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())


def test_teachers_never_reach_the_optimizer(tmp_path, word_tokenizer):
    from tests.test_trra import _cfg, _examples
    from thinkctl.trra.trainer import build_student, make_trainer

    cfg = _cfg(tmp_path)
    reference, aligned = make_random_lm(seed=0), make_random_lm(seed=1)
    trainer = make_trainer(cfg, build_student(make_random_lm(seed=0), cfg), reference, aligned, word_tokenizer, _examples(word_tokenizer, 4))
    trainer.create_optimizer()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in trainer.model.parameters()}
    for teacher in (trainer.reference, trainer.aligned):
        assert not teacher.training and not any(p.requires_grad or id(p) in optimized for p in teacher.parameters())


def test_head_weights_summon_only_the_frozen_fsdp1_models(monkeypatch):
    """The student's FSDP1 root is whole inside its forward (summoning it there is an error); the frozen models'
    roots are summoned on purpose."""
    summoned = []

    class FakeBackend:
        def __init__(self, accelerator):
            pass

        def summon_full_params(self, module, **kwargs):
            summoned.append((module, kwargs))
            return torch.no_grad()

    monkeypatch.setattr(training, "DistributedBackend", FakeBackend)
    student, reference, aligned = make_random_lm(seed=0), make_random_lm(seed=1), make_random_lm(seed=2)
    accelerator = SimpleNamespace(unwrap_model=lambda m: m)
    with training.head_weights(accelerator, student, [reference, aligned]) as heads:
        assert [h is m.lm_head.weight for h, m in zip(heads, (student, reference, aligned))] == [True, True, True]
    assert summoned == [(reference, {"recurse": False}), (aligned, {"recurse": False})]


def test_fsdp_requested_but_not_enabled_is_refused(tmp_path, word_tokenizer, monkeypatch):
    """On CPU accelerate ignores an FSDP config and would run DDP instead; the trainer says so rather than pretend."""
    from tests.test_trra import _cfg, _examples
    from thinkctl.trra.trainer import build_student, make_trainer

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    cfg = _cfg(tmp_path)
    with pytest.raises(ConfigError, match="asks for FSDP"):
        make_trainer(cfg, build_student(make_random_lm(), cfg), make_random_lm(), make_random_lm(seed=1), word_tokenizer, _examples(word_tokenizer, 4))


# --- the step-normalised loss ----------------------------------------------------------------------------------


def test_sum_reduction_is_the_mean_times_the_tokens():
    g = torch.Generator().manual_seed(0)
    z = [torch.randn(2, 5, 11, generator=g, dtype=torch.float64) for _ in range(3)]
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    mean, total = (fused_kd_loss(*z, mask, 0.7, reduction=r) for r in ("mean", "sum"))
    assert total.item() == pytest.approx(mean.item() * 7, rel=1e-12)
    h = [torch.randn(2, 5, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    w = [torch.randn(11, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    chunked = chunked_fused_kd_loss(*h, *w, mask, 0.7, chunk_size=3, reduction="sum")
    assert chunked.item() == pytest.approx(chunked_fused_kd_loss(*h, *w, mask, 0.7).item() * 7, rel=1e-12)


def _varied_examples(tokenizer, n: int = 8) -> list:
    """Distillation examples whose responses have 4 to 13 tokens, so micro-batches hold different token counts."""
    from thinkctl.trra.data import DistillExample

    out = []
    for i in range(n):
        response = "<think> " + " ".join(["1"] * (1 + 3 * (i % 4))) + " </think> the answer is \\boxed{ 3 } ."
        ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append(DistillExample(prompt=f"{i} + 1 =", response=response, token_ids=ids, problem_id=str(i), lam=0.5))
    return out


def test_micro_batches_take_the_same_steps_as_one_batch(tmp_path, word_tokenizer):
    """Batch 4 in one micro-batch and 2 × 2 with gradient accumulation take the same steps (same losses): the loss
    is divided by the response tokens of the whole step, not averaged per micro-batch (token counts differ here)."""
    from tests.test_trra import _cfg
    from thinkctl.trra.trainer import build_student, make_trainer

    def run(cfg):
        trainer = make_trainer(cfg, build_student(make_random_lm(seed=0), cfg), make_random_lm(seed=0), make_random_lm(seed=1),
                               word_tokenizer, _varied_examples(word_tokenizer))
        trainer.train()
        return trainer

    whole = run(_cfg(tmp_path / "whole", per_device_train_batch_size=4, gradient_accumulation_steps=1))
    split = run(_cfg(tmp_path / "split", per_device_train_batch_size=2, gradient_accumulation_steps=2))
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (whole, split)]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_trainer_config_runs_cpu_processes_as_one_group():
    assert build(training.TrainerConfig, {"device": "cpu"}).training_arguments().use_cpu
    auto = build(training.TrainerConfig, {}).training_arguments()
    assert auto.use_cpu == (not torch.cuda.is_available())  # never a CPU process per GPU-less "auto" training alone
    with pytest.raises(ConfigError, match="warmup_steps` was renamed to `warmup_ratio"):
        build(training.TrainerConfig, {"warmup_steps": 10})


def test_last_checkpoint_skips_one_killed_while_saving(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert training.last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert training.last_checkpoint(tmp_path / "missing") is None


# --- trace datasets -------------------------------------------------------------------------------------------


def test_traces_read_sharegpt_and_alpaca_rows_and_drop_a_second_think_open(tmp_path, word_tokenizer):
    word_tokenizer.chat_template = "{{ messages[0]['content'] }} <think>"  # opens the think block, as R1's does
    sharegpt = tmp_path / "long.jsonl"
    sharegpt.write_text(json.dumps({"conversations": [{"from": "human", "value": "1 + 2"}],
                                    "chosen": {"from": "gpt", "value": "<think>\n3 </think> the answer is 3"},
                                    "rejected": {"from": "gpt", "value": "4"}}) + "\n")
    (trace,) = TraceConfig(data=str(sharegpt), question_field="conversations", response_field="chosen").load(word_tokenizer)
    assert trace.prompt == "1 + 2 <think>" and trace.response == "3 </think> the answer is 3"
    alpaca = tmp_path / "short.json"
    alpaca.write_text(json.dumps([{"instruction": "2 + 2", "input": "", "output": "4"}, {"instruction": "3", "input": "", "output": "5"}]))
    traces = load_traces(str(alpaca), word_tokenizer, limit=1, question_field="instruction", response_field="output")
    assert [(t.prompt, t.response) for t in traces] == [("2 + 2 <think>", "4")]
    with pytest.raises(DataFormatError, match="set question_field/response_field"):
        load_traces(str(alpaca), word_tokenizer)
    with pytest.raises(DataFormatError, match="does not exist"):
        load_traces(str(tmp_path / "none.parquet"), word_tokenizer)


def test_trace_prompt_formats_and_warnings_for_open_thinking_and_ignored_columns(tmp_path, word_tokenizer, caplog):
    """The paper's LLaMA-Factory formats (deepseek for TrRa, deepseek3 for InRa) next to the chat template; short
    traces under a template that opens <think> are counted as leaving thinking open, unused columns are counted."""
    alpaca = tmp_path / "short.jsonl"
    alpaca.write_text("".join(json.dumps(r) + "\n" for r in [{"instruction": "1 + 2", "input": "", "output": "3"},
                                                             {"instruction": "2 + 2", "input": "x", "output": "4"}]))
    spec = dict(data=str(alpaca), question_field="instruction", response_field="output")
    assert [t.prompt for t in TraceConfig(**spec, prompt_format="deepseek").load(word_tokenizer)] == [
        "User: 1 + 2\n\nAssistant:", "User: 2 + 2\n\nAssistant:"]
    assert "`input` (1 of 2 rows non-empty)" in caplog.text and "think block open" not in caplog.text
    caplog.clear()
    (trace, _) = TraceConfig(**spec, prompt_format="deepseek3").load(word_tokenizer)
    assert trace.prompt == "<｜User｜>1 + 2<｜Assistant｜>" and "think block open" not in caplog.text
    word_tokenizer.chat_template = "{{ messages[0]['content'] }} <think>"  # opens the think block, as R1's does
    TraceConfig(**spec, prompt_format="chat").load(word_tokenizer)
    assert "2 of 2 traces from" in caplog.text and "leave a think block open" in caplog.text
    with pytest.raises(ConfigError, match="prompt_format must be one of"):
        TraceConfig(**spec, prompt_format="alpaca")


def test_traces_stream_up_to_what_the_run_consumes_in_bounded_memory(tmp_path, word_tokenizer):
    """Only the rows a run consumes (max_steps × global batch) are read: peak memory does not grow with the file."""
    import tracemalloc

    from thinkctl.training import TrainerConfig, consumed_rows

    training = TrainerConfig(max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    assert consumed_rows(training, processes=2) == 32 and consumed_rows(TrainerConfig(max_steps=-1)) is None
    response = " ".join(["1 + 2 = 3"] * 100)

    def peak(rows: int) -> tuple[int, int]:
        path = tmp_path / f"traces-{rows}.jsonl"
        with path.open("w") as f:
            f.writelines(json.dumps({"question": f"{i} + 1", "response": response}) + "\n" for i in range(rows))
        tracemalloc.start()
        traces = TraceConfig(data=str(path)).load(word_tokenizer, consumed_rows(training, processes=2))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return len(traces), top

    (n_small, small), (n_large, large) = peak(200), peak(20_000)  # 200 KB and 20 MB of traces
    assert n_small == n_large == 32
    assert large < 1.5 * small, (small, large)


def test_training_examples_log_truncation_and_dropped_rows(caplog):
    from thinkctl.training import training_examples

    rows = training_examples([([1, 2, 3, 4, 5, 6], 2), ([1, 2, 3], 2), ([1, 2], 2)], 6, "trra")
    assert [list(ids) for ids, _ in rows] == [[1, 2, 3, 4, 5, 6], [1, 2, 3]]
    assert "1 of 3 sequences fill max_length=6" in caplog.text and "dropped 1 of 3" in caplog.text
    with pytest.raises(ConfigError, match="no training sequence has a response token within max_length=2"):
        training_examples([([1, 2], 2)], 2, "trra")


# --- vLLM parallelism and the GPU smoke script --------------------------------------------------------------------


def test_vllm_parallel_settings_pass_through_only_when_given(monkeypatch):
    from thinkctl.rollout.base import ENGINES

    calls = []
    monkeypatch.setitem(ENGINES, "vllm", lambda reference, aligned, **kw: calls.append(kw))
    BackendConfig(engine="vllm").open("ref", "al")
    BackendConfig(engine="vllm", tensor_parallel_size=2, data_parallel_size=4, distributed_executor_backend="ray").open("ref", "al")
    assert calls[0] == {"dtype": "float32", "device": "cpu", "batch_size": 16}
    assert calls[1] == {**calls[0], "tensor_parallel_size": 2, "data_parallel_size": 4, "distributed_executor_backend": "ray"}
    with pytest.raises(ConfigError, match="add --data-parallel-size 1;"):  # a vLLM recipe run with --engine hf
        BackendConfig(data_parallel_size=8)
    with pytest.raises(ConfigError, match="data_parallel_size must be ≥ 1"):
        BackendConfig(engine="vllm", data_parallel_size=0)


def test_sweep_and_realign_offer_the_parallel_flags():
    from thinkctl.cli import build_parser

    args = build_parser("sweep").parse_args(["sweep", "--ref", "r", "--out", "o", "--engine", "vllm", "--tensor-parallel-size", "2",
                                             "--data-parallel-size", "4"])
    assert (args.tensor_parallel_size, args.data_parallel_size) == (2, 4)
    args = build_parser("realign").parse_args(["realign", "--out", "o", "--lambda", "1", "--pipeline-parallel-size", "2",
                                               "--distributed-executor-backend", "ray", "--stage", "data"])
    assert (args.pipeline_parallel_size, args.distributed_executor_backend, args.stage) == (2, "ray", "data")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip without CUDA")
def test_gpu_smoke_script_skips_cleanly_without_cuda():
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_smoke.sh")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr
    assert "no CUDA device: skipped" in out.stdout


def test_recipes_for_the_paper_name_public_checkpoints_and_data():
    trra = yaml.safe_load((REPO / "recipes" / "r1-distill-qwen-1.5b-trra.yaml").read_text())
    assert trra["realign"]["aligned"] == "agentica-org/DeepScaleR-1.5B-Preview" and trra["realign"]["lambda_"] == 1.5
    assert trra["realign"]["data"] == "wh-zhu/long_cot_calibration"
    iterated = yaml.safe_load((REPO / "recipes" / "r1-distill-qwen-1.5b-trra-iterated.yaml").read_text())
    assert iterated["realign"]["lambdas_per_round"] == [1.5, 2.0]
    for size in ("1.5b", "7b"):
        inra = yaml.safe_load((REPO / "recipes" / f"r1-distill-qwen-{size}-inra.yaml").read_text())
        assert inra["inra"]["method"] == "sft" and inra["inra"]["data"] == "wh-zhu/short_cot_calibration"
        assert min(inra["sweep"]["lambdas"]) == -0.33 and max(inra["sweep"]["lambdas"]) == 1.25
    for recipe in (REPO / "recipes").glob("*.yaml"):
        assert "not published" not in recipe.read_text(), recipe


def test_fsdp2_sharded_teachers_give_the_loss_of_whole_ones():
    """Two CPU processes (gloo): each teacher keeps only its shard, head_weights gathers whole lm_heads, and the
    TrRa loss equals the one with unsharded teachers (see tests/fsdp2_teachers.py)."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    out = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "tests.fsdp2_teachers"], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    (ranks,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("[")]
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    for r in ranks:
        assert r["sharded_head"] and r["local_rows"] < r["rows"] and not r["trainable"]
        assert r["gathered"] == [[r["rows"], 128]] * 3
        assert r["loss_sharded"] == pytest.approx(r["loss_whole"], rel=1e-6)

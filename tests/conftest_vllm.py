"""Helpers for the vLLM, serving and thinking-budget tests: tiny checkpoints on disk, an InRa checkpoint
in the plugin's format, a synthetic router policy, the transformers reference for the InRa dual path
(full-sequence recompute, no cache, so it shares no code with the path under test), and the check that a
thinking budget behaves the same on every engine. Nothing here imports vLLM.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

from tests.conftest import make_random_lm, make_word_tokenizer
from thinkctl.fusion import fuse_logits
from thinkctl.sampling import SamplingConfig
from thinkctl.thinking import count_thinking_tokens

ADAPTER_ZEROED = ("self_attn.o_proj.weight", "mlp.down_proj.weight")
#: R1-style: the generation prompt opens the think block, so responses start inside it
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}= <think>{% endif %}"
)


def think_word_tokenizer() -> PreTrainedTokenizerFast:
    """The word tokenizer with ``<think>``/``</think>`` as added (non-special) tokens and a chat template.

    Added tokens survive the reload as a ``Qwen2Tokenizer`` (whose pre-tokenizer would split the
    plain vocabulary words ``<think>`` into pieces), so the markers encode to one token each, as the
    reasoning parser and vLLM's thinking budget need.
    """
    tok = make_word_tokenizer()
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_random_model(path: Path, seed: int, std: float = 0.2) -> Path:
    """A random tiny Qwen2 (head_dim 64) plus the think-aware word tokenizer, saved as an HF checkpoint dir.

    Matrices are redrawn with ``std`` 0.2 (10x the HF init): at the default init the model repeats one
    token forever, at 0.2 its greedy continuations are varied, often end with EOS (id 0), and its logits
    are far apart, so two engines' float rounding cannot flip an argmax.
    """
    model = make_random_lm(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    model.generation_config.eos_token_id = 0
    model.save_pretrained(path)
    think_word_tokenizer().save_pretrained(path)
    return path


def adapter_from(model: Qwen2ForCausalLM, perturb: float, seed: int) -> torch.nn.Module:
    """A copy of decoder layer 0 whose o_proj/down_proj are zero (identity) or scaled noise."""
    adapter = copy.deepcopy(model.model.layers[0])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name in ADAPTER_ZEROED:
                p.copy_(torch.randn(p.shape, generator=gen) * perturb)
    return adapter


def write_inra_checkpoint(base_dir: Path, out_dir: Path, perturb: float, default_lambda: float = 1.0, seed: int = 0) -> Path:
    """An InRa checkpoint (not merged) over ``base_dir`` with one adapter layer, in the plugin's format."""
    base = Qwen2ForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    adapter = adapter_from(base, perturb, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.adapter_layers.0.{k}": v.contiguous() for k, v in adapter.state_dict().items()}
    save_file(tensors, str(out_dir / "adapter.safetensors"))
    config = json.loads((base_dir / "config.json").read_text())
    config["architectures"] = ["InRaForCausalLM"]
    config["inra"] = {"base_model": str(base_dir), "num_adapter_layers": 1, "default_lambda": default_lambda, "merged": False}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    for f in base_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "generation_config", "chat_template")):
            shutil.copy(f, out_dir / f.name)
    return out_dir


def load_hf_inra(inra_dir: Path) -> tuple[Qwen2ForCausalLM, list[torch.nn.Module]]:
    """The base model and adapter layers of an InRa checkpoint, as transformers modules."""
    config = json.loads((inra_dir / "config.json").read_text())
    base = Qwen2ForCausalLM.from_pretrained(config["inra"]["base_model"], dtype=torch.float32).eval()
    adapter = copy.deepcopy(base.model.layers[0])
    from safetensors.torch import load_file

    prefix = "model.adapter_layers.0."
    adapter.load_state_dict({k[len(prefix):]: v for k, v in load_file(str(inra_dir / "adapter.safetensors")).items()})
    return base, [adapter]


@torch.no_grad()
def hf_stream_logits(model: Qwen2ForCausalLM, pre_layers: list[torch.nn.Module], ids: torch.Tensor) -> torch.Tensor:
    """Last-position logits of ``pre_layers`` → every model layer, over the full sequence (causal SDPA)."""
    m = model.model
    h = m.embed_tokens(ids)
    pos = torch.arange(ids.shape[1]).unsqueeze(0)
    pe = m.rotary_emb(h, pos)
    for layer in [*pre_layers, *m.layers]:
        h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=pe)
    return model.lm_head(m.norm(h))[:, -1]


@torch.no_grad()
def hf_inra_greedy(model: Qwen2ForCausalLM, adapters: list[torch.nn.Module], prompt: list[int], lam: float, n: int, eos: int) -> list[int]:
    """Greedy InRa decoding by recomputing both paths over the whole sequence at every step."""
    ids = torch.tensor([prompt])
    out: list[int] = []
    for _ in range(n):
        z = fuse_logits(hf_stream_logits(model, adapters, ids), hf_stream_logits(model, [], ids), lam)
        tok = int(z.argmax(-1))
        out.append(tok)
        if tok == eos:
            break
        ids = torch.cat([ids, torch.tensor([[tok]])], dim=1)
    return out


def synthetic_policy(path: Path) -> Path:
    """A bins router fitted on a made-up sweep in which λ = 1 is right only on questions with ≤ 3 numbers."""
    from thinkctl.router import fit_router

    questions = {f"p{n}-{k}": " + ".join(str(i + k) for i in range(1, n + 1)) for n in range(1, 7) for k in range(3)}
    records = [
        {"problem_id": pid, "lam": lam, "sample": s, "correct": ok, "thinking_tokens": tokens, "total_tokens": tokens + 5,
         "method": "inra", "benchmark": "synthetic"}
        for pid, q in questions.items()
        for lam, ok, tokens in ((0.0, True, 100), (1.0, q.count("+") < 3, 30))
        for s in range(2)
    ]
    fit_router(records, estimator="bins", questions=questions, features=["n_numbers"]).save(path)
    return path


#: prompts whose think block is opened by the prompt (R1 style), so thinking starts with the first token
THINK_PROMPTS = [f"{a} + {b} = <think>" for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
#: prompts whose open think block already holds a token, as R1-Distill's generation prompt (``<think>\n``)
#: does: vLLM counts that token against its budget, thinkctl's budget counts the response's thinking only
TAIL_PROMPTS = [f"{a} + {b} = <think> {a + b}" for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
BUDGETS = (None, 0, 2, 5)
THINK_OPEN, THINK_CLOSE = 2, 3  # ids in the test word tokenizer


def budget_runs(backend, lam: float | list[float], prompts: list[str] = THINK_PROMPTS) -> dict:
    """Greedy continuations of ``prompts`` under each of BUDGETS (24 new tokens)."""
    return {b: backend.generate(prompts, lam, SamplingConfig(max_new_tokens=24, max_thinking_tokens=b)) for b in BUDGETS}


def check_budgets(runs: dict, tokenizer) -> None:
    """A budget of B: B thinking tokens at most, then ``</think>`` and an answer, the same tokens as without
    a budget up to there; a first think block that ends (``</think>`` or EOS) before B is left alone."""
    free = runs[None]
    for budget in BUDGETS[1:]:
        for i, c in enumerate(runs[budget]):
            unbudgeted = free[i].token_ids
            natural_end = next((j for j, t in enumerate(unbudgeted) if t in (THINK_CLOSE, 0)), len(unbudgeted))
            assert c.meta["thinking_budget"] == budget and c.meta["thinking_forced"] == (natural_end >= budget)
            if natural_end < budget:  # (a think block the model reopens later gets the budget again)
                assert c.token_ids[: natural_end + 1] == unbudgeted[: natural_end + 1], f"budget {budget}, prompt {i}"
                continue
            assert THINK_CLOSE in c.token_ids, f"budget {budget}, prompt {i}: thinking was not closed"
            close = c.token_ids.index(THINK_CLOSE)
            assert close == budget == count_thinking_tokens(c.token_ids[: close + 1], tokenizer, opened=True)
            assert len(c.token_ids) > close + 1, "an answer follows the closed think block"
            assert c.token_ids[:close] == unbudgeted[:close], "the budget changes nothing before it acts"
    assert any(c.meta["thinking_forced"] for c in runs[2]), "some free runs should think longer than 2 tokens"

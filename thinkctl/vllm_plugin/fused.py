"""Two-model logit fusion as one vLLM model: reference and aligned decoded in lockstep, fused per token.

Why a combined model rather than a logits processor. vLLM runs one model per engine and a logits
processor never sees a second model's logits, so the aligned model has to live inside the engine's
model. ``FusedPairForCausalLM`` holds both models (each an upstream vLLM CausalLM built under its own
prefix, hence its own Attention layers and its own paged KV cache), runs both on every scheduled
token, returns their final hidden states side by side (the runner only indexes dim 0 before
``compute_logits``) and fuses ``λ·z_aligned + (1−λ)·z_ref`` in ``compute_logits`` with per-request λ
from :mod:`thinkctl.vllm_plugin.lam`. Both models see exactly the same tokens, as in
:func:`thinkctl.decoding.fused_generate`.

vLLM loads a model from one directory, so :func:`write_pair_dir` generates a small one: the
reference's ``config.json`` with ``"architectures": ["FusedPairForCausalLM"]`` and a
``"thinkctl_fusion": {"reference": path, "aligned": path, "default_lambda": 0.0}`` section, the
reference's tokenizer files, and symlinks to the reference's weights (vLLM's loader streams those; the
aligned weights are read from ``thinkctl_fusion.aligned``). Both checkpoints must be local directories
of the same architecture (same config shape), the setting of thinking-control pairs such as a
reasoning model and its fine-tune.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from vllm.config import VllmConfig

from thinkctl.errors import ConfigError, ModelLoadError
from thinkctl.fusion import fuse_logits, validate_lambda
from thinkctl.vllm_plugin.lam import lambda_model_state_cls, lambda_table
from thinkctl.vllm_plugin.layers import checkpoint_tensors, resolve_checkpoint_dir

SECTION = "thinkctl_fusion"
#: config fields that must agree for the two models to share one vLLM config and KV-cache layout
SHAPE_FIELDS = (
    "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "intermediate_size", "tie_word_embeddings", "rope_theta",
)
AUX_FILES = ("tokenizer", "special_tokens", "chat_template", "vocab", "merges", "added_tokens")


def _read_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path} has no config.json: not a model checkpoint directory") from None


def write_pair_dir(reference: str | Path, aligned: str | Path, out_dir: str | Path, default_lambda: float = 0.0) -> Path:
    """Generate the directory vLLM loads for fused decoding of ``reference`` and ``aligned``."""
    ref, al, out = Path(reference).resolve(), Path(aligned).resolve(), Path(out_dir)
    ref_cfg, al_cfg = _read_config(ref), _read_config(al)
    diffs = [f"{k}: {ref_cfg.get(k)!r} vs {al_cfg.get(k)!r}" for k in SHAPE_FIELDS if ref_cfg.get(k) != al_cfg.get(k)]
    if diffs:
        raise ConfigError(
            "vLLM fused decoding needs two models of the same architecture; reference vs aligned differ in "
            + "; ".join(diffs) + " (use --engine hf for pairs of different shapes)"
        )
    weights = sorted(ref.glob("*.safetensors")) + sorted(ref.glob("*.safetensors.index.json"))
    if not weights:
        raise ModelLoadError(f"no *.safetensors weights in {ref}: the vLLM fused model reads safetensors checkpoints")
    out.mkdir(parents=True, exist_ok=True)
    config = dict(ref_cfg, architectures=["FusedPairForCausalLM"])
    config[SECTION] = {"reference": str(ref), "aligned": str(al), "default_lambda": validate_lambda(default_lambda)}
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    for f in weights:
        link = out / f.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f)
    for f in ref.iterdir():
        if f.is_file() and f.name.startswith(AUX_FILES):
            shutil.copy(f, out / f.name)
    return out


def _upstream_class(hf_config: object) -> type[nn.Module]:
    """The vLLM class of the pair's base architecture (the reference's own causal-LM class)."""
    from vllm.model_executor.models.llama import LlamaForCausalLM
    from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM

    classes = {"qwen2": Qwen2ForCausalLM, "llama": LlamaForCausalLM}
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in classes:
        raise ConfigError(f"vLLM fused decoding supports model_type {sorted(classes)}, got {model_type!r}")
    return classes[model_type]


class FusedPairForCausalLM(nn.Module):
    """Reference and aligned models decoded together; logits fused with per-request λ."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        section = getattr(config, SECTION, None)
        if not isinstance(section, dict) or not {"reference", "aligned"} <= set(section):
            raise ConfigError(f"a FusedPairForCausalLM config needs a '{SECTION}' section with reference and aligned paths")
        self.model_dir = vllm_config.model_config.model
        self.aligned_path = section["aligned"]
        cls = _upstream_class(config)
        prefix = f"{prefix}." if prefix else ""
        self.reference = cls(vllm_config=vllm_config, prefix=f"{prefix}reference")
        self.aligned = cls(vllm_config=vllm_config, prefix=f"{prefix}aligned")
        self.lambdas = lambda_table(vllm_config)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.reference.embed_input_ids(input_ids)

    get_model_state_cls = staticmethod(lambda_model_state_cls)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: object = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is not None:
            raise ValueError("FusedPairForCausalLM decodes token ids; the two models embed them separately")
        return torch.cat([self.aligned(input_ids, positions), self.reference(input_ids, positions)], dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h_aligned, h_ref = hidden_states.chunk(2, dim=-1)
        lam = self.lambdas.rows(hidden_states.shape[0])
        return fuse_logits(self.aligned.compute_logits(h_aligned), self.reference.compute_logits(h_ref), lam)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """The reference's tensors arrive from the pair dir (symlinks); the aligned ones are read here."""
        loaded = {f"reference.{n}" for n in self.reference.load_weights(weights)}
        aligned_dir = resolve_checkpoint_dir(self.aligned_path, self.model_dir)
        loaded |= {f"aligned.{n}" for n in self.aligned.load_weights(checkpoint_tensors(aligned_dir))}
        return loaded

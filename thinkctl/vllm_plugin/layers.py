"""Building blocks shared by the dual-stream vLLM models: base-architecture lookup, a decoder-layer
forward over two stacked streams with one Attention (one KV cache) each, and a safetensors reader for
checkpoints that live outside the model directory vLLM was pointed at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from vllm.model_executor.layers.attention import Attention

from thinkctl.errors import ConfigError, ModelLoadError


@dataclass(frozen=True)
class BaseArch:
    """How to build the vLLM body (embeddings, decoder layers, final norm) of one HF model type."""

    model_cls: type[nn.Module]
    make_layer: Callable[..., nn.Module]
    stacked_mapper: object


def base_arch(model_type: str) -> BaseArch:
    """The vLLM classes for a supported base ``model_type`` ("qwen2" or "llama")."""
    if model_type == "qwen2":
        from vllm.model_executor.models.qwen2 import Qwen2DecoderLayer, Qwen2Model

        def make_qwen2(vllm_config, config, prefix):
            return Qwen2DecoderLayer(config, vllm_config.cache_config, vllm_config.quant_config, prefix=prefix)

        return BaseArch(Qwen2Model, make_qwen2, Qwen2Model.hf_to_vllm_mapper)
    if model_type == "llama":
        from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaModel

        def make_llama(vllm_config, config, prefix):
            return LlamaDecoderLayer(vllm_config, prefix=prefix, config=config)

        return BaseArch(LlamaModel, make_llama, LlamaModel.hf_to_vllm_mapper)
    raise ConfigError(f"thinkctl's vLLM models support base model_type 'qwen2' or 'llama', got {model_type!r}")


def check_engine_config(vllm_config, model: str) -> None:
    """Refuse engine features the dual-stream models cannot serve correctly, with the reason.

    Speculative decoding: EAGLE/MTP drafters read the target's hidden states, which here are two
    streams side by side (twice the width they expect), and the λ table maps one logits row per
    request, while verification scores several rows per request (V1 would give every row the default
    λ). A request-level λ under speculative decoding would therefore be silently wrong or crash.
    """
    if getattr(vllm_config, "speculative_config", None) is not None:
        raise ConfigError(
            f"speculative decoding is not supported with thinkctl's {model}: drafters would read both streams' "
            "hidden states and verification rows would lose their request's λ; start the engine without "
            "--speculative-config (speculative_config=...)"
        )


def second_attention(layer: nn.Module, vllm_config, prefix: str) -> Attention:
    """A fresh Attention shaped like ``layer.self_attn.attn``: same heads, same window, its own KV cache.

    Everything that decides *which* keys a query sees is copied from the layer's own Attention: the
    per-layer sliding window (Qwen2/Llama configs with ``layer_types``/``max_window_layers`` give
    some layers a window and others none; the second stream must attend like the first), the attention
    type, and Qwen2's dual-chunk attention settings.
    """
    sa = layer.self_attn
    if getattr(sa, "qk_norm", False):
        raise ConfigError("decoder layers with q/k norm are not supported by the dual-stream vLLM models")
    first = sa.attn
    extra = {}
    dual_chunk = getattr(sa, "dual_chunk_attention_config", None)
    if dual_chunk:
        from vllm.model_executor.models.utils import extract_layer_index

        extra = {"layer_idx": extract_layer_index(prefix), "dual_chunk_attention_config": dual_chunk}
    return Attention(
        sa.num_heads,
        sa.head_dim,
        sa.scaling,
        num_kv_heads=sa.num_kv_heads,
        cache_config=vllm_config.cache_config,
        quant_config=vllm_config.quant_config,
        per_layer_sliding_window=first.sliding_window,
        attn_type=first.attn_type,
        prefix=prefix,
        **extra,
    )


def dual_layer_forward(
    layer: nn.Module,
    attns: tuple[Attention, Attention],
    positions: torch.Tensor,
    hidden_states: torch.Tensor,
    residual: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Qwen2/Llama decoder layer (fused-residual form) over two streams stacked on dim 0.

    ``hidden_states``/``residual`` hold stream A's T tokens then stream B's T tokens, ``positions``
    both streams' positions. Norms, projections and MLP run once on all 2T rows, so the layer's
    weights are read once per step for both streams; attention runs per stream, each against its own
    Attention and therefore its own KV cache.
    """
    hidden_states, residual = layer.input_layernorm(hidden_states, residual)
    sa = layer.self_attn
    qkv, _ = sa.qkv_proj(hidden_states)
    q, k, v = qkv.split([sa.q_size, sa.kv_size, sa.kv_size], dim=-1)
    q, k = sa.rotary_emb(positions, q, k)
    t = q.shape[0] // 2
    out = torch.cat([attns[0](q[:t], k[:t], v[:t]), attns[1](q[t:], k[t:], v[t:])])
    hidden_states, _ = sa.o_proj(out)
    hidden_states, residual = layer.post_attention_layernorm(hidden_states, residual)
    return layer.mlp(hidden_states), residual


def resolve_checkpoint_dir(path: str, relative_to: str) -> Path:
    """A local checkpoint directory, relative paths taken from ``relative_to`` (the model dir)."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(relative_to) / p
    if not p.is_dir():
        raise ModelLoadError(
            f"checkpoint directory {p} does not exist: the vLLM plugin reads base/pair weights from local "
            "directories (download hub models first, e.g. `huggingface-cli download NAME --local-dir DIR`)"
        )
    return p


def checkpoint_tensors(directory: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of every ``*.safetensors`` file in ``directory``, by name."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors weights in {directory}")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)

"""InRa as a vLLM model: one set of base weights, two hidden streams, logits fused with λ before sampling.

Checkpoint format (shared with :mod:`thinkctl.inra.checkpoint`): a directory whose ``config.json`` is the
base model's config (``model_type`` "qwen2" or "llama") with ``"architectures": ["InRaForCausalLM"]``
and an ``"inra"`` section ``{"base_model": path, "num_adapter_layers": n, "default_lambda": 1.0,
"merged": false}``. Adapter tensors are named ``model.adapter_layers.{i}.<decoder-layer param>``; they
live in ``adapter.safetensors`` (base weights then come from ``inra.base_model``), or, when
``merged``, together with the base weights in ``model.safetensors``.

Per sequence the model runs two streams over the same token:

* adapter path (the aligned, fast thinker): embeddings → adapter layers → every original layer;
* original path (the reference): embeddings → every original layer.

Each stream needs its own KV cache, so every original layer gets a second :class:`Attention`
(``…self_attn.ref_attn``) that shares the layer's projection weights; vLLM derives one KV-cache spec per
Attention layer, so the cache for both streams is allocated and paged by the engine as usual. After the
adapter layers the two streams are stacked on the token dim and go through each original layer
together (:func:`~thinkctl.vllm_plugin.layers.dual_layer_forward`): one pass over the shared weights per
step, attention split per stream. ``forward`` returns both final hidden states side by side
(``[tokens, 2·hidden]``) because the runner only indexes dim 0 of the hidden states before
``compute_logits``; ``compute_logits`` splits them, projects each to
the vocabulary and fuses ``λ·z_adapter + (1−λ)·z_original`` with per-row λ from
:mod:`thinkctl.vllm_plugin.lam`. λ = 0 is the base model, λ = 1 the adapter path.

Compilation: the dual-stream body runs eager. vLLM compiles only modules decorated with
``@support_torch_compile`` (vllm/compilation/decorators.py), here the base ``Qwen2Model``/``LlamaModel``
whose own ``forward`` this class never calls. Compiling the body means a decorated module that owns the
layers under their checkpoint names (a subclass of the decorated base with its own ``forward``, the base
re-wrapped) and whose graph vLLM splits at the two attention calls per layer for piecewise CUDA graphs.
Whether that traces, splits and replays exactly can only be checked on a GPU with vLLM, which no
machine here has, and a wrong graph would give wrong tokens silently; so it is left for a GPU session
(``benchmarks/vllm_gpu_check.py`` is the check to run then). Decode batches still get vLLM's full CUDA
graph of the whole forward on a GPU; prefill and mixed batches run eager.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
from vllm.model_executor.models.utils import AutoWeightsLoader, maybe_prefix

from thinkctl.errors import ConfigError
from thinkctl.fusion import fuse_logits, validate_lambda
from thinkctl.vllm_plugin.lam import lambda_model_state_cls, lambda_table
from thinkctl.vllm_plugin.layers import (
    base_arch,
    check_engine_config,
    checkpoint_tensors,
    dual_layer_forward,
    resolve_checkpoint_dir,
    second_attention,
)

INRA_KEYS = {"base_model", "num_adapter_layers", "default_lambda", "merged"}


@dataclass(frozen=True)
class InRaSpec:
    """The validated ``inra`` section of an InRa checkpoint's config."""

    base_model: str | None
    num_adapter_layers: int
    default_lambda: float
    merged: bool

    @classmethod
    def from_config(cls, hf_config: object) -> InRaSpec:
        section = getattr(hf_config, "inra", None)
        if not isinstance(section, dict):
            raise ConfigError("an InRaForCausalLM config needs an 'inra' section (see thinkctl.vllm_plugin.inra)")
        unknown = set(section) - INRA_KEYS
        if unknown:
            raise ConfigError(f"unknown keys in the 'inra' config section: {sorted(unknown)}; known: {sorted(INRA_KEYS)}")
        n = section.get("num_adapter_layers", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"inra.num_adapter_layers must be a positive integer, got {n!r}")
        merged = section.get("merged", False)
        if not isinstance(merged, bool):
            raise ConfigError(f"inra.merged must be true or false, got {merged!r}")
        base = section.get("base_model")
        if not merged and not base:
            raise ConfigError("inra.base_model is required when the checkpoint is not merged")
        return cls(base, n, validate_lambda(section.get("default_lambda", 1.0)), merged)


class InRaForCausalLM(nn.Module):
    """Dual-stream InRa decoding inside vLLM (Qwen2 or Llama base)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.spec = InRaSpec.from_config(config)
        check_engine_config(vllm_config, "InRaForCausalLM")
        self.model_dir = vllm_config.model_config.model
        arch = base_arch(config.model_type)
        self.stacked_mapper = arch.stacked_mapper
        self.model = arch.model_cls(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        self.model.adapter_layers = nn.ModuleList(
            arch.make_layer(vllm_config, config, f"{maybe_prefix(prefix, 'model')}.adapter_layers.{i}")
            for i in range(self.spec.num_adapter_layers)
        )
        for i, layer in enumerate(self.model.layers):
            layer.self_attn.ref_attn = second_attention(
                layer, vllm_config, f"{maybe_prefix(prefix, 'model')}.layers.{i}.self_attn.ref_attn"
            )
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix=maybe_prefix(prefix, "lm_head"))
        if config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size, scale=getattr(config, "logit_scale", 1.0))
        self.lambdas = lambda_table(vllm_config)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    get_model_state_cls = staticmethod(lambda_model_state_cls)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: object = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        embeds = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        # The adapter path gets its own copy: the first adapter layer keeps its input as the residual,
        # and vLLM's fused add-RMSNorm updates that residual in place wherever inductor does not
        # functionalise it (``--enforce-eager``, ``-O0``, other compile backends: ``RMSNorm`` →
        # ``fused_add_rms_norm.maybe_inplace`` in vllm/model_executor/layers/layernorm.py). Without
        # the copy the adapter path would write into the embeddings the original path starts from.
        h, residual = embeds.clone(), None
        for layer in self.model.adapter_layers:
            h, residual = layer(positions, h, residual)
        # adapter stream rows first, then the original stream entering layer 0 (residual 0: x + 0 = x)
        h = torch.cat([h, embeds])
        residual = torch.cat([residual, torch.zeros_like(embeds)])
        both = torch.cat([positions, positions])
        for layer in self.model.layers:
            h, residual = dual_layer_forward(layer, (layer.self_attn.attn, layer.self_attn.ref_attn), both, h, residual)
        h, _ = self.model.norm(h, residual)
        return torch.cat(h.chunk(2), dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        adapted, original = hidden_states.chunk(2, dim=-1)
        z_adapter = self.logits_processor(self.lm_head, adapted)
        z_original = self.logits_processor(self.lm_head, original)
        return self.lambdas.constrain(fuse_logits(z_adapter, z_original, self.lambdas.rows(hidden_states.shape[0])))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Adapter (and, when merged, base) tensors from the model dir; base tensors from ``inra.base_model``."""
        if not self.spec.merged:
            base_dir = resolve_checkpoint_dir(self.spec.base_model, self.model_dir)
            weights = chain(weights, checkpoint_tensors(base_dir))
        return AutoWeightsLoader(self).load_weights(weights)

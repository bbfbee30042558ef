"""InRa: one frozen model plus an identity-initialised layer adapter, fused with itself at inference.

The adapter is a copy of decoder layer 0 whose two residual-writing projections (attention ``o_proj``
and MLP ``down_proj``) are zeroed, so at init it adds exactly nothing to the residual stream. It sits in
front of the original layers. The network then has two paths over one set of original weights:

* the *original* path: embeddings → original layers → norm → LM head (the frozen base model, λ = 0);
* the *adapter* path: embeddings → adapter layer(s) → the same original layers → norm → LM head.

They play the reference and aligned roles of logit fusion: ``fuse_logits(z_adapter, z_orig, λ)``.
Only the adapter trains, so λ = 0 is the base model bit for bit whatever the adapter learned, and an
untrained adapter gives the same logits at every λ.

For decoding each path is a *stream* (see :mod:`thinkctl.decoding`) with its own KV cache, so
:func:`thinkctl.decoding.fused_generate` and :class:`thinkctl.rollout.hf.HFBackend` drive an InRa model
exactly as they drive two separate models. The adapter path's cache is a :class:`DualCache`: the adapter
layers keep their own ``DynamicCache`` (their attention ``layer_idx`` counts from 0 there) and the
original layers another, so the copied layer never writes into original layer 0's slot.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast

from thinkctl.batch import positions
from thinkctl.errors import ConfigError, ModelLoadError
from thinkctl.fusion import LambdaLike, fuse_logits, validate_lambda

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")


def check_supported(config: Any) -> None:
    """Raise :class:`ModelLoadError` unless ``config`` describes an architecture InRa is tested on.

    The adapter relies on the Qwen2/Llama decoder layer layout (``self_attn.o_proj``, ``mlp.down_proj``,
    pre-norm residual blocks, ``model.layers``); other families may look alike and silently not be an
    identity at init, so they are refused rather than guessed at.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"InRa supports decoder-only models of type {list(SUPPORTED_MODEL_TYPES)} "
            f"(Qwen2/Qwen2.5/DeepSeek-R1-Distill-Qwen, Llama); got model_type={model_type!r}"
        )
    layer_types = getattr(config, "layer_types", None) or []
    if layer_types and layer_types[0] != "full_attention":
        raise ModelLoadError(
            f"InRa copies decoder layer 0, which here is a {layer_types[0]!r} layer; only full-attention "
            "layers are supported (disable use_sliding_window or use a model without it on layer 0)"
        )


def make_identity_layer(layer: nn.Module, layer_idx: int) -> nn.Module:
    """A deep copy of ``layer`` whose residual contributions are zero (so ``layer(h) == h``).

    Zeroing ``o_proj`` and ``down_proj`` (weights and any biases) keeps every other weight of the copy
    as the base's layer 0, which is a better starting point for training than random init; the gradient
    into the zeroed matrices is non-zero, so training moves off identity at the first step.
    """
    adapter = copy.deepcopy(layer)
    for proj in (adapter.self_attn.o_proj, adapter.mlp.down_proj):
        nn.init.zeros_(proj.weight)
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)
    adapter.self_attn.layer_idx = layer_idx
    adapter.requires_grad_(True)
    return adapter


class DualCache:
    """The adapter path's KV cache: one ``DynamicCache`` for the adapter layers, one for the originals.

    Exposes what :func:`thinkctl.decoding.fused_generate` needs (``batch_select_indices``) and the
    sequence length, keeping both halves the same rows in the same order.
    """

    def __init__(self, adapter: DynamicCache, base: DynamicCache) -> None:
        self.adapter = adapter
        self.base = base

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.adapter.batch_select_indices(indices)
        self.base.batch_select_indices(indices)

    def get_seq_length(self) -> int:
        return self.base.get_seq_length()


class InRaModel(nn.Module):
    """A frozen causal LM (``base``) plus trainable identity-initialised adapter layers.

    Build one from a base model with :meth:`from_base`; load a saved one with
    :func:`thinkctl.inra.checkpoint.load_inra`. ``base_name_or_path`` is recorded in checkpoints so
    adapter-only saves can find their base weights again. It starts in eval mode like a loaded
    Hugging Face model; training calls ``.train()``, which never puts the frozen base in training mode.
    """

    def __init__(
        self,
        base: PreTrainedModel,
        adapter_layers: nn.ModuleList,
        default_lambda: float = 1.0,
        base_name_or_path: str = "",
    ) -> None:
        super().__init__()
        check_supported(base.config)
        self.base = base
        self.adapter_layers = adapter_layers
        self.default_lambda = validate_lambda(default_lambda)
        self.base_name_or_path = base_name_or_path
        self.base.requires_grad_(False)
        self.eval()

    @classmethod
    def from_base(
        cls,
        base: PreTrainedModel,
        num_adapter_layers: int = 1,
        default_lambda: float = 1.0,
        base_name_or_path: str | None = None,
    ) -> InRaModel:
        """Wrap ``base`` with ``num_adapter_layers`` identity copies of its decoder layer 0."""
        check_supported(base.config)
        if num_adapter_layers < 1:
            raise ConfigError(f"num_adapter_layers must be ≥ 1, got {num_adapter_layers}")
        layer0 = base.model.layers[0]
        adapters = nn.ModuleList(make_identity_layer(layer0, i) for i in range(num_adapter_layers))
        name = base_name_or_path if base_name_or_path is not None else getattr(base.config, "_name_or_path", "")
        return cls(base, adapters, default_lambda=default_lambda, base_name_or_path=name)

    @property
    def config(self) -> Any:
        return self.base.config

    @property
    def num_adapter_layers(self) -> int:
        return len(self.adapter_layers)

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    def train(self, mode: bool = True) -> InRaModel:
        """Only the adapter ever enters training mode; the frozen base stays in eval (no dropout)."""
        super().train(mode)
        self.base.eval()
        return self

    def adapter_parameters(self) -> list[nn.Parameter]:
        return list(self.adapter_layers.parameters())

    # --- streams -------------------------------------------------------------------------------------

    def original_stream(self) -> PreTrainedModel:
        """The original path as a stream: the frozen base model itself (so λ = 0 is exactly the base)."""
        return self.base

    def adapter_stream(self) -> Any:
        """The adapter path as a stream (HF causal-LM forward signature, :class:`DualCache` cache)."""
        return self.adapter_forward

    def batched_streams(self) -> tuple[Any, Any]:
        """(original, adapter) streams that share one pass over the original layers per step.

        See :class:`BatchedDualPath`. Logits match the separate streams up to float rounding of a
        different batch size, not bit for bit; use :meth:`original_stream`/:meth:`adapter_stream`
        where λ = 0 must reproduce the base exactly.
        """
        runner = BatchedDualPath(self)
        return runner.original, runner.adapter

    def run_adapters(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache | None,
        use_cache: bool,
    ) -> torch.Tensor:
        """The adapter layers over input embeddings (with their own KV cache); returns hidden states."""
        inner = self.base.model
        mask = create_causal_mask(
            config=inner.config,
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            past_key_values=cache,
            position_ids=position_ids,
        )
        rotary = inner.rotary_emb(embeds, position_ids)
        hidden = embeds
        for layer in self.adapter_layers:
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=use_cache,
                position_embeddings=rotary,
            )
        return hidden

    def adapter_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: DualCache | None = None,
        use_cache: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Embeddings → adapter layers → the base model from its first layer on (via ``inputs_embeds``).

        Reusing the base's own forward for everything after the adapter keeps the original layers,
        norm, LM head, masks and ``logits_to_keep`` handling exactly as transformers implements them.
        """
        embeds = self.base.model.embed_tokens(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        if use_cache and past_key_values is None:
            past_key_values = DualCache(DynamicCache(), DynamicCache(config=self.base.model.config))
        if position_ids is None:
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = (torch.arange(embeds.shape[1], device=embeds.device) + past).unsqueeze(0)
        adapter_cache = past_key_values.adapter if past_key_values is not None else None
        hidden = self.run_adapters(embeds, attention_mask, position_ids, adapter_cache, use_cache)
        out = self.base(
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values.base if past_key_values is not None else None,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        return CausalLMOutputWithPast(logits=out.logits, past_key_values=past_key_values if use_cache else None)

    # --- training / evaluation ---------------------------------------------------------------------------

    def path_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, paths: tuple[str, ...] = ("adapter", "original")
    ) -> dict[str, torch.Tensor]:
        """Full-sequence logits of the requested paths (no cache); the original path runs without grad."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pos = positions(attention_mask)
        out: dict[str, torch.Tensor] = {}
        if "original" in paths:
            with torch.no_grad():
                out["original"] = self.base(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=False
                ).logits
        if "adapter" in paths:
            out["adapter"] = self.adapter_forward(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=False
            ).logits
        return out

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        lam: LambdaLike | None = None,
    ) -> torch.Tensor:
        """Fused logits ``λ·z_adapter + (1−λ)·z_orig`` over the whole sequence (``lam`` per row allowed).

        A path whose weight is zero for every row is not run: λ = 0 costs one base forward, λ = 1 one
        adapter-path forward. ``lam`` defaults to the model's ``default_lambda``.
        """
        lam = self.default_lambda if lam is None else lam
        weights = torch.as_tensor(lam, dtype=torch.float32)
        paths = tuple(p for p, needed in (("adapter", bool((weights != 0).any())), ("original", bool((weights != 1).any()))) if needed)
        z = self.path_logits(input_ids, attention_mask, paths)
        if "adapter" not in z:
            return z["original"]
        if "original" not in z:
            return z["adapter"]
        return fuse_logits(z["adapter"], z["original"], lam)


class _Handle:
    """The cache object a batched stream returns: selections go to the shared runner."""

    def __init__(self, runner: BatchedDualPath) -> None:
        self.runner = runner

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.runner.select(indices)


class BatchedDualPath:
    """Run both InRa paths through the original layers as ONE batch of 2B rows per decoding step.

    Decoding is memory-bound at small batch: a step over B rows costs about what a step over 2B rows
    costs, because the original weights are read once either way. Concatenating the adapter path's
    hidden states with the raw embeddings along the batch dimension therefore makes the dual path
    cost about one plain step plus the adapter, instead of two plain steps.

    The runner plugs into :func:`thinkctl.decoding.fused_generate` unchanged through two stream
    callables that share state. fused_generate calls the reference (original) stream first in every
    step, so that call computes both paths and leaves the adapter logits for the adapter call that
    follows. fused_generate stops calling a stream once no live row needs it, and never calls it again;
    the runner sees this (the adapter call did not come, or the original call did not) and drops that
    half of the joint cache, continuing with the remaining path alone. The first step after the
    adapter path is retired still computes it once, so that transition wastes one step.
    """

    def __init__(self, model: InRaModel) -> None:
        self.model = model
        self._reset()

    def _reset(self) -> None:
        self.halves: tuple[str, ...] = ()
        self.rows = 0
        self.adapter_cache: DynamicCache | None = None
        self.base_cache: DynamicCache | None = None
        self.pending: torch.Tensor | None = None
        self.calls = 0
        self.selected_at = -1

    def _new_batch(self, rows: int, halves: tuple[str, ...]) -> None:
        self._reset()
        self.rows, self.halves = rows, halves
        self.adapter_cache = DynamicCache() if "adapter" in halves else None
        self.base_cache = DynamicCache(config=self.model.base.model.config)

    def _drop(self, half: str) -> None:
        """Stop computing ``half``: keep only the other half's rows of the original layers' cache."""
        keep = self.halves.index(half) ^ 1
        assert self.base_cache is not None
        self.base_cache.batch_select_indices(torch.arange(keep * self.rows, (keep + 1) * self.rows, device=self.model.device))
        self.halves = (self.halves[keep],)
        if half == "adapter":
            self.adapter_cache = None
        self.pending = None

    def select(self, indices: torch.Tensor) -> None:
        """Keep rows ``indices`` of every half; both streams ask after the same step, apply it once."""
        if self.selected_at == self.calls:
            return
        self.selected_at = self.calls
        if self.adapter_cache is not None:
            self.adapter_cache.batch_select_indices(indices)
        assert self.base_cache is not None
        self.base_cache.batch_select_indices(torch.cat([indices + k * self.rows for k in range(len(self.halves))]))
        if self.pending is not None:
            self.pending = self.pending[indices]
        self.rows = indices.numel()

    def _forward(self, input_ids, attention_mask, position_ids, logits_to_keep) -> torch.Tensor:
        """Logits of every current half, stacked along the batch dim in ``self.halves`` order."""
        self.calls += 1
        embeds = self.model.base.model.embed_tokens(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        if position_ids is None:
            assert self.base_cache is not None
            past = self.base_cache.get_seq_length()
            position_ids = (torch.arange(embeds.shape[1], device=embeds.device) + past).unsqueeze(0).expand(embeds.shape[0], -1)
        parts = []
        for half in self.halves:
            if half == "adapter":
                parts.append(self.model.run_adapters(embeds, attention_mask, position_ids, self.adapter_cache, True))
            else:
                parts.append(embeds)
        k = len(parts)
        out = self.model.base(
            inputs_embeds=torch.cat(parts) if k > 1 else parts[0],
            attention_mask=attention_mask.repeat(k, 1),
            position_ids=position_ids.repeat(k, 1),
            past_key_values=self.base_cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        return out.logits

    def original(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True,
                 logits_to_keep=0, **kwargs) -> CausalLMOutputWithPast:
        """The reference stream: computes both paths while the adapter path is in use."""
        if past_key_values is None:
            self._new_batch(input_ids.shape[0], ("adapter", "original"))
        elif self.pending is not None:
            self._drop("adapter")
        logits = self._forward(input_ids, attention_mask, position_ids, logits_to_keep)
        if len(self.halves) == 2:
            self.pending, logits = logits.chunk(2)
        return CausalLMOutputWithPast(logits=logits, past_key_values=_Handle(self))

    def adapter(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True,
                logits_to_keep=0, **kwargs) -> CausalLMOutputWithPast:
        """The aligned stream: the adapter logits the original call just computed, or its own pass."""
        if self.pending is not None:
            logits, self.pending = self.pending, None
            return CausalLMOutputWithPast(logits=logits, past_key_values=_Handle(self))
        if past_key_values is None:
            self._new_batch(input_ids.shape[0], ("adapter",))
        elif "original" in self.halves:
            self._drop("original")
        logits = self._forward(input_ids, attention_mask, position_ids, logits_to_keep)
        return CausalLMOutputWithPast(logits=logits, past_key_values=_Handle(self))

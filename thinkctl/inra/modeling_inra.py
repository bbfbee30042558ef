"""InRa as a plain transformers model: ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)``.

This file is copied into every InRa checkpoint :func:`thinkctl.inra.save_inra` writes (``config.json``
names it in ``auto_map``), so it imports **only torch and transformers**: a process that never installed
thinkctl loads the checkpoint, and ``model.generate(..., thinkctl_lambda=0.5)`` (or
``pipeline("text-generation", model=path, trust_remote_code=True)``) decodes from the fused logits
``λ·z_adapter + (1−λ)·z_original`` with each path's own KV cache. λ = 0 is the frozen base model bit
for bit, λ = 1 the adapter path alone; without ``thinkctl_lambda`` the checkpoint's ``default_lambda``
applies. The name is the one vLLM requests use (``extra_args={"thinkctl_lambda": λ}``).

The computation repeats :class:`thinkctl.inra.model.InRaModel`'s two streams and
:func:`thinkctl.fusion.fuse_logits` operation for operation (float32 fusion of the last position's
logits, a path whose weight is zero for every row is not run), so greedy decoding here gives exactly
the tokens of ``thinkctl generate --inra`` for one prompt; ``tests/test_hf_inra.py`` checks it in a
fresh process.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast

LAMBDA_ARG = "thinkctl_lambda"
ADAPTER_FILE = "adapter.safetensors"
#: config keys that are InRa's or the checkpoint's, not the base model's
_NOT_BASE = ("inra", "architectures", "auto_map", "model_type", "transformers_version")


class InRaConfig(PretrainedConfig):
    """The base model's config plus the ``inra`` section; ``model_type`` stays the base's (qwen2, llama).

    The class's own ``model_type`` is the usual base's, which keeps transformers from warning about a
    type mismatch on load; each instance holds its checkpoint's.
    """

    model_type = "qwen2"

    def base_config(self) -> PretrainedConfig:
        """The base model's own config (what ``AutoModelForCausalLM.from_config`` builds the base from)."""
        values = {k: v for k, v in super().to_dict().items() if k not in _NOT_BASE}
        return AutoConfig.for_model(self.__dict__.get("model_type", "qwen2"), **values)

    def to_dict(self) -> dict[str, Any]:
        """Serialised with the base's ``model_type`` (the vLLM model reads the same config.json)."""
        out = super().to_dict()
        out["model_type"] = self.__dict__.get("model_type", out["model_type"])
        return out


class InRaCache:
    """The three KV caches of one generation: original path, adapter layers, adapter path's original layers.

    A path that was never run has no cache; asking for it later (λ changed mid-sequence) is refused,
    since its keys and values for the earlier tokens do not exist.
    """

    def __init__(self) -> None:
        self.original: DynamicCache | None = None
        self.adapter: DynamicCache | None = None
        self.adapter_base: DynamicCache | None = None

    def _caches(self) -> list[DynamicCache]:
        return [c for c in (self.original, self.adapter, self.adapter_base) if c is not None]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        caches = self._caches()
        return caches[0].get_seq_length() if caches else 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for cache in self._caches():
            cache.batch_select_indices(indices)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for cache in self._caches():
            cache.reorder_cache(beam_idx)


def _lambda_rows(lam: Any, batch: int, device: torch.device) -> torch.Tensor:
    """One float32 λ per row, checked finite (this is where a λ enters from ``generate``)."""
    weights = torch.as_tensor(lam, dtype=torch.float32, device=device)
    weights = weights.expand(batch).clone() if weights.dim() == 0 else weights.clone()
    if weights.shape != (batch,):
        raise ValueError(f"{LAMBDA_ARG}: give one λ or one per batch row ({batch}), got {weights.numel()} values")
    if not torch.isfinite(weights).all():
        raise ValueError(f"{LAMBDA_ARG} must be finite, got {weights.tolist()}")
    return weights


class InRaForCausalLM(PreTrainedModel, GenerationMixin):
    """A frozen causal LM (``model``, ``lm_head``) plus ``model.adapter_layers``: two paths fused at λ.

    Parameter names are those of the merged checkpoint file, so ``from_pretrained`` loads a merged
    checkpoint as any transformers model; an adapter-only one loads its base from ``inra.base_model``.
    """

    config_class = InRaConfig
    base_model_prefix = "model"
    _no_split_modules = ["Qwen2DecoderLayer", "LlamaDecoderLayer"]
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _supports_sdpa = True

    def __init__(self, config: InRaConfig, base: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        base = base if base is not None else AutoModelForCausalLM.from_config(config.base_config())
        self.model = base.model
        self.lm_head = base.lm_head
        layers = []
        for i in range(int(config.inra["num_adapter_layers"])):
            layer = copy.deepcopy(self.model.layers[0])
            layer.self_attn.layer_idx = i  # counts from 0 in the adapter layers' own cache
            layers.append(layer)
        self.model.adapter_layers = nn.ModuleList(layers)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model keeps its own three caches (InRaCache); generate must not make one

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> InRaForCausalLM:
        """Merged checkpoints load like any model; adapter-only ones load the base, then the adapter file."""
        config = kwargs.pop("config", None)
        if not isinstance(config, InRaConfig):
            config = InRaConfig.from_pretrained(pretrained_model_name_or_path)
        if config.inra.get("merged"):
            return super().from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)
        from safetensors.torch import load_file
        from transformers.utils import cached_file

        kwargs.pop("trust_remote_code", None)
        base = AutoModelForCausalLM.from_pretrained(config.inra["base_model"], *args, **kwargs)
        model = cls(config, base=base)
        tensors = load_file(cached_file(str(pretrained_model_name_or_path), ADAPTER_FILE))
        prefix = "model.adapter_layers."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        model.model.adapter_layers.load_state_dict(state, strict=True)
        # the adapter runs right after the embeddings: keep it with them (a device_map may spread the base)
        embed = model.model.embed_tokens.weight
        model.model.adapter_layers.to(device=embed.device, dtype=embed.dtype)
        return model.eval()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def _logits(self, hidden: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return self.lm_head(hidden[:, keep, :])

    def _original(self, input_ids, attention_mask, position_ids, cache: DynamicCache | None, use_cache, logits_to_keep):
        """The frozen base exactly as ``base(input_ids=...)`` runs it (the λ = 0 stream)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=use_cache)
        return self._logits(out.last_hidden_state, logits_to_keep), out.past_key_values

    def _adapter(self, input_ids, attention_mask, position_ids, caches: InRaCache | None, use_cache, logits_to_keep):
        """Embeddings → adapter layers (own cache) → the base from its first layer on (the λ = 1 stream)."""
        embeds = self.model.embed_tokens(input_ids)
        adapter_cache = base_cache = None
        if caches is not None:
            if caches.adapter is None:
                caches.adapter, caches.adapter_base = DynamicCache(), DynamicCache(config=self.model.config)
            adapter_cache, base_cache = caches.adapter, caches.adapter_base
        mask = create_causal_mask(config=self.model.config, inputs_embeds=embeds, attention_mask=attention_mask,
                                  past_key_values=adapter_cache, position_ids=position_ids)
        rotary = self.model.rotary_emb(embeds, position_ids)
        hidden = embeds
        for layer in self.model.adapter_layers:
            hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, past_key_values=adapter_cache,
                           use_cache=use_cache, position_embeddings=rotary)
        out = self.model(inputs_embeds=hidden, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=base_cache, use_cache=use_cache)
        return self._logits(out.last_hidden_state, logits_to_keep)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: InRaCache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        thinkctl_lambda: float | list[float] | torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Fused float32 logits at ``thinkctl_lambda`` (one value or one per row; default: the checkpoint's)."""
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones((input_ids.shape[0], past + input_ids.shape[1]), dtype=torch.long, device=input_ids.device)
        if position_ids is None:  # generate passes them; this is thinkctl's rule (0 at each row's first real token)
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        lam = self.config.inra.get("default_lambda", 1.0) if thinkctl_lambda is None else thinkctl_lambda
        lams = _lambda_rows(lam, input_ids.shape[0], input_ids.device)
        caches = past_key_values if past_key_values is not None else (InRaCache() if use_cache else None)
        fresh = caches is None or caches.get_seq_length() == 0
        need_original, need_adapter = bool((lams != 1).any()), bool((lams != 0).any())
        if caches is not None and not fresh:
            have = {"original": caches.original is not None, "adapter": caches.adapter is not None}
            if (need_original and not have["original"]) or (need_adapter and not have["adapter"]):
                raise ValueError(f"{LAMBDA_ARG} changed mid-sequence to a value that needs a path this cache never ran; "
                                 "keep one λ per generation")
        z_original = z_adapter = None
        if need_original:
            z_original, cache = self._original(input_ids, attention_mask, position_ids,
                                               caches.original if caches is not None else None, use_cache, logits_to_keep)
            if caches is not None:
                caches.original = cache
        if need_adapter:
            z_adapter = self._adapter(input_ids, attention_mask, position_ids, caches, use_cache, logits_to_keep)
        if z_adapter is None:
            logits = z_original.float()
        elif z_original is None:
            logits = z_adapter.float()
        else:
            w = lams.view(-1, 1, 1)
            logits = w * z_adapter.float() + (1 - w) * z_original.float()
        return CausalLMOutputWithPast(logits=logits, past_key_values=caches if use_cache else None)


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
of the same architecture and the same tokenizer, the setting of thinking-control pairs such as a
reasoning model and its fine-tune: the aligned model is built from the reference's config, so the two
configs are compared as transformers loads them (:func:`config_differences`) and any difference that
changes the model is refused, naming the field.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig
from vllm.compilation.backends import set_model_tag
from vllm.config import VllmConfig

from thinkctl.errors import ConfigError, ModelLoadError
from thinkctl.fusion import fuse_logits, validate_lambda
from thinkctl.models import check_same_vocab, load_tokenizer
from thinkctl.vllm_plugin.lam import lambda_model_state_cls, lambda_table
from thinkctl.vllm_plugin.layers import check_engine_config, checkpoint_tensors, resolve_checkpoint_dir

SECTION = "thinkctl_fusion"
#: config fields that may differ between the two models of a pair: names and provenance, the storage
#: dtype (vLLM loads both in the engine's dtype), training-only settings, and token ids (the tokenizers
#: are compared token by token). Every other field shapes the model and must agree.
IGNORED_CONFIG_KEYS = frozenset({
    "_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype", "use_cache",
    "bos_token_id", "eos_token_id", "pad_token_id", "id2label", "label2id", "problem_type",
    "output_attentions", "output_hidden_states", "return_dict", "initializer_range", "attention_dropout",
    "tokenizer_class", "auto_map", SECTION, "inra",
})
AUX_FILES = ("tokenizer", "special_tokens", "chat_template", "vocab", "merges", "added_tokens")


def _read_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path} has no config.json: not a model checkpoint directory") from None


def _loaded_config(path: Path) -> dict:
    """``config.json`` as transformers loads it: version differences normalised (transformers 5 moves
    ``rope_theta`` into ``rope_parameters``, renames ``torch_dtype``), defaults filled in."""
    _read_config(path)  # a clear error for a directory without config.json
    try:
        return AutoConfig.from_pretrained(str(path)).to_dict()
    except (ValueError, KeyError, OSError) as e:
        raise ModelLoadError(f"transformers cannot load the config of {path}: {e}") from None


def config_differences(reference: Path, aligned: Path) -> list[str]:
    """``"field: reference value vs aligned value"`` for each model-shaping field that differs."""
    ref, al = _loaded_config(reference), _loaded_config(aligned)
    keys = sorted((set(ref) | set(al)) - IGNORED_CONFIG_KEYS)
    return [f"{k}: {ref.get(k)!r} vs {al.get(k)!r}" for k in keys if ref.get(k) != al.get(k)]


def write_pair_dir(reference: str | Path, aligned: str | Path, out_dir: str | Path, default_lambda: float = 0.0) -> Path:
    """Generate the directory vLLM loads for fused decoding of ``reference`` and ``aligned``.

    Refuses pairs whose configs differ in a field that shapes the model (the aligned model is built
    from the reference's config) or whose tokenizers differ (logits are fused id by id).
    """
    from thinkctl.models import check_same_vocab, load_tokenizer

    ref, al, out = Path(reference).resolve(), Path(aligned).resolve(), Path(out_dir)
    ref_cfg = _read_config(ref)
    diffs = config_differences(ref, al)
    if diffs:
        raise ConfigError(
            f"vLLM fused decoding builds the aligned model ({al}) from the reference's config ({ref / 'config.json'}), "
            "and the two differ in " + "; ".join(diffs) + " (use --engine hf for pairs of different shapes)"
        )
    check_same_vocab(load_tokenizer(str(ref)), load_tokenizer(str(al)))
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


def check_compile_cache(vllm_config: VllmConfig) -> None:
    """Refuse vLLM's AOT compile cache for a pair: the two models would share one artefact.

    vLLM keys an AOT-compiled module on the engine config and the forward's qualified name and line
    (``_model_hash_key`` and ``aot_compile_hash_factors`` in vllm/compilation/decorators.py and
    caching.py), not on the module instance, so the reference and the aligned model (two instances of
    one class under one config) get the same ``torch_aot_compile/<hash>/…/model`` file: the second
    loads the first's artefact, and where layer names are baked into the graph (``VLLM_USE_LAYERNAME=0``
    or torch < 2.11) the reference would then read and write the aligned model's KV cache. thinkctl's
    launchers start pair engines with ``VLLM_USE_AOT_COMPILE=0``; an engine started otherwise is refused
    here, before either model is compiled. The ordinary (non-AOT) compile caches are kept apart by
    model tag, as vLLM's own two-decoder models (Gemma 3n) do.
    """
    from vllm import envs
    from vllm.config import CompilationMode

    if vllm_config.compilation_config.mode != CompilationMode.NONE and envs.VLLM_USE_AOT_COMPILE:
        raise ConfigError(
            "a FusedPairForCausalLM engine needs VLLM_USE_AOT_COMPILE=0: vLLM's AOT compile cache has one entry "
            "per model class and config, which the two models of the pair would share (set the variable, or "
            "start the engine through thinkctl, which sets it)"
        )


class FusedPairForCausalLM(nn.Module):
    """Reference and aligned models decoded together; logits fused with per-request λ."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        section = getattr(config, SECTION, None)
        if not isinstance(section, dict) or not {"reference", "aligned"} <= set(section):
            raise ConfigError(f"a FusedPairForCausalLM config needs a '{SECTION}' section with reference and aligned paths")
        check_engine_config(vllm_config, "FusedPairForCausalLM")
        check_compile_cache(vllm_config)
        self.model_dir = vllm_config.model_config.model
        self.aligned_path = section["aligned"]
        cls = _upstream_class(config)
        prefix = f"{prefix}." if prefix else ""
        with set_model_tag("thinkctl_reference"):
            self.reference = cls(vllm_config=vllm_config, prefix=f"{prefix}reference")
        with set_model_tag("thinkctl_aligned"):
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
        """Both models over the same tokens; their final hidden states side by side.

        The aligned model's output is copied before the reference runs. Each model's body is a
        separately compiled module, and under piecewise CUDA graphs (vLLM's default
        ``FULL_AND_PIECEWISE`` runs mixed prefill/decode batches up to the capture size this way) the
        output of a compiled module's last graph is kept only as a weak reference into the global
        graph memory pool (``weak_ref_output=is_last_graph`` in vllm/compilation/backends.py,
        ``weak_ref_tensors(output)`` in vllm/compilation/cuda_graph.py). vLLM's comment there says why
        that is safe: "the output of the last graph will not be used by any other cuda graph". Here it
        would be: the reference's graphs were captured after the aligned model's into the same pool,
        may reuse that memory, and replay between the aligned model's return and the concatenation.
        ``clone`` runs outside both graphs (eager, between the two compiled bodies) into memory the
        caching allocator owns, so the replay cannot touch it; under a FULL graph the whole forward is
        one capture and the clone is an ordinary intermediate of it. The reference's output is read
        by the concatenation before any other graph replays, as vLLM's own models read theirs.
        """
        if inputs_embeds is not None:
            raise ValueError("FusedPairForCausalLM decodes token ids; the two models embed them separately")
        h_aligned = self.aligned(input_ids, positions).clone()
        return torch.cat([h_aligned, self.reference(input_ids, positions)], dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h_aligned, h_ref = hidden_states.chunk(2, dim=-1)
        lam = self.lambdas.rows(hidden_states.shape[0])
        fused = fuse_logits(self.aligned.compute_logits(h_aligned), self.reference.compute_logits(h_ref), lam)
        return self.lambdas.constrain(fused)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """The reference's tensors arrive from the pair dir (symlinks); the aligned ones are read here."""
        loaded = {f"reference.{n}" for n in self.reference.load_weights(weights)}
        aligned_dir = resolve_checkpoint_dir(self.aligned_path, self.model_dir)
        loaded |= {f"aligned.{n}" for n in self.aligned.load_weights(checkpoint_tensors(aligned_dir))}
        return loaded

"""The InRa checkpoint format (a contract: the vLLM model reads the same files) and its save/load.

An InRa checkpoint is a directory with

* ``config.json``: the base model's config dict (``model_type`` kept, e.g. ``"qwen2"``) with
  ``"architectures": ["InRaForCausalLM"]`` and ``"inra": {"base_model": <path or hub id>,
  "num_adapter_layers": n, "default_lambda": λ, "merged": bool}``;
* adapter-only (default): ``adapter.safetensors`` holding only ``model.adapter_layers.{i}.<param>``
  tensors (``<param>`` is a decoder-layer parameter name such as ``self_attn.q_proj.weight``); the base
  weights are read from ``inra.base_model``;
* merged: ``model.safetensors`` with the base weights under their usual Hugging Face names
  (``model.embed_tokens.weight``, ``model.layers.N.…``, ``model.norm.weight``, ``lm_head.weight`` when
  untied) plus the same ``model.adapter_layers.*`` tensors;
* tokenizer files;
* ``modeling_inra.py`` (a copy of :mod:`thinkctl.inra.modeling_inra`, which imports only torch and
  transformers) and ``"auto_map"`` in ``config.json`` naming its classes, so
  ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` loads the checkpoint without thinkctl;
* ``README.md``: a model card (see :mod:`thinkctl.cards`; :func:`write_inra_card` adds a measured dial).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from thinkctl.cards import dial_table, inra_card, write_card
from thinkctl.errors import ConfigError, ModelLoadError
from thinkctl.inra.model import InRaModel, make_identity_layer
from thinkctl.io import atomic_write_json
from thinkctl.models import load_causal_lm, load_tokenizer, resolve_dtype
from thinkctl.rollout import BackendConfig, RolloutBackend

log = logging.getLogger(__name__)

ARCHITECTURE = "InRaForCausalLM"
ADAPTER_FILE = "adapter.safetensors"
MERGED_FILE = "model.safetensors"
ADAPTER_PREFIX = "model.adapter_layers"
#: the transformers modelling file copied into each checkpoint, and the classes ``auto_map`` names in it
MODELING_FILE = Path(__file__).with_name("modeling_inra.py")
AUTO_MAP = {"AutoConfig": "modeling_inra.InRaConfig", "AutoModelForCausalLM": "modeling_inra.InRaForCausalLM"}
# Config entries that describe the base's own shape; an adapter-only checkpoint refuses a base that differs.
_SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size")


def adapter_state_dict(model: InRaModel) -> dict[str, torch.Tensor]:
    """Adapter tensors under their checkpoint names ``model.adapter_layers.{i}.<param>``."""
    return {
        f"{ADAPTER_PREFIX}.{i}.{name}": t.detach().contiguous().cpu()
        for i, layer in enumerate(model.adapter_layers)
        for name, t in layer.state_dict().items()
    }


def base_state_dict(model: InRaModel) -> dict[str, torch.Tensor]:
    """Base weights under their Hugging Face names; a tied LM head is stored once (as the embedding)."""
    state = {k: t.detach().contiguous().cpu() for k, t in model.base.state_dict().items()}
    if getattr(model.base.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def _recorded_base(name: str) -> str:
    """Local base paths are recorded absolute, so the checkpoint loads from any working directory."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def inra_config_dict(model: InRaModel, merged: bool) -> dict[str, Any]:
    config = model.base.config.to_dict()
    config["architectures"] = [ARCHITECTURE]
    config["auto_map"] = dict(AUTO_MAP)
    config["inra"] = {
        "base_model": _recorded_base(model.base_name_or_path),
        "num_adapter_layers": model.num_adapter_layers,
        "default_lambda": model.default_lambda,
        "merged": merged,
    }
    return config


def save_inra(
    model: InRaModel, path: str | Path, merged: bool = False, tokenizer: Any = None, adapter_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write an InRa checkpoint directory (adapter-only unless ``merged``); returns its path.

    ``adapter_state`` gives the adapter tensors under the model's own names (``adapter_layers.{i}.<param>``) when
    they come from a gathered state dict (FSDP, ZeRO-3) rather than from ``model``'s sharded modules.
    The weights file is written before ``config.json``, so a directory with a config always has its
    weights: a crash mid-save leaves no loadable-looking half checkpoint.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not merged and not model.base_name_or_path:
        raise ModelLoadError("an adapter-only InRa checkpoint must name its base model; pass base_name_or_path or save merged")
    if adapter_state is None:
        tensors = adapter_state_dict(model)
    else:
        tensors = {f"model.{k}": t.detach().contiguous().cpu() for k, t in adapter_state.items()}
    if merged:
        tensors = {**base_state_dict(model), **tensors}
    target = path / (MERGED_FILE if merged else ADAPTER_FILE)
    tmp = target.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(target)
    (path / (ADAPTER_FILE if merged else MERGED_FILE)).unlink(missing_ok=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    shutil.copyfile(MODELING_FILE, path / MODELING_FILE.name)
    config = inra_config_dict(model, merged)
    write_card(path, inra_card(path, config["inra"]))
    atomic_write_json(path / "config.json", config)
    log.info("saved InRa checkpoint (%s) to %s", "merged" if merged else "adapter-only", path)
    return path


def write_inra_card(path: str | Path, sweep: str | Path | None = None) -> Path:
    """(Re)write the checkpoint's model card, with the measured dial of ``sweep`` (a sweep run directory of this
    checkpoint, ``thinkctl sweep --inra PATH``, or its ``summary.csv``) when given; returns the card's path."""
    info = read_inra_config(path)["inra"]
    table = None
    if sweep is not None:
        import pandas as pd

        csv = Path(sweep) / "summary.csv" if Path(sweep).is_dir() else Path(sweep)
        if not csv.is_file():
            raise ConfigError(f"no sweep summary at {csv}: give the run directory of `thinkctl sweep --inra {path}`")
        summary = pd.read_csv(csv)
        summary = summary[summary["method"] == "inra"] if "method" in summary.columns else summary
        if summary.empty:
            raise ConfigError(f"{csv} has no InRa rows (method 'inra'): sweep the checkpoint with `--inra {path}`")
        table = dial_table(summary)
    return write_card(path, inra_card(path, info, table))


def read_inra_config(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``config.json``, checked to be an InRa checkpoint."""
    cfg_path = Path(path).expanduser() / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"{path} is not an InRa checkpoint: it has no config.json")
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    if "inra" not in config:
        raise ModelLoadError(f"{path} is a plain model, not an InRa checkpoint (config.json has no 'inra' section)")
    return config


def is_inra_checkpoint(path: str | Path) -> bool:
    cfg_path = Path(path).expanduser() / "config.json"
    return cfg_path.is_file() and "inra" in json.loads(cfg_path.read_text(encoding="utf-8"))


def _base_from_config(config: dict[str, Any], dtype: torch.dtype) -> nn.Module:
    values = {k: v for k, v in config.items() if k not in ("inra", "architectures", "auto_map")}
    base_config = AutoConfig.for_model(values.pop("model_type"), **values)
    return AutoModelForCausalLM.from_config(base_config, dtype=dtype)


def _split(tensors: dict[str, torch.Tensor], n: int) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    base: dict[str, torch.Tensor] = {}
    adapters: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for name, t in tensors.items():
        if name.startswith(ADAPTER_PREFIX + "."):
            index, _, param = name[len(ADAPTER_PREFIX) + 1 :].partition(".")
            if not index.isdigit() or int(index) >= n:
                raise ModelLoadError(f"adapter tensor {name!r} does not fit num_adapter_layers={n}")
            adapters[int(index)][param] = t
        else:
            base[name] = t
    return base, adapters


def load_inra(path: str | Path, dtype: str | torch.dtype = "float32", device: str = "cpu") -> InRaModel:
    """Load an InRa checkpoint (adapter-only or merged) as an :class:`InRaModel` in eval mode."""
    path = Path(path).expanduser()
    config = read_inra_config(path)
    info = config["inra"]
    n = int(info["num_adapter_layers"])
    torch_dtype = resolve_dtype(dtype)
    if info.get("merged"):
        weights = path / MERGED_FILE
        if not weights.is_file():
            raise ModelLoadError(f"{path} is a merged InRa checkpoint but has no {MERGED_FILE}")
        base_tensors, adapter_tensors = _split(load_file(str(weights)), n)
        base = _base_from_config(config, torch_dtype)
        missing, unexpected = base.load_state_dict(base_tensors, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and base.config.tie_word_embeddings)]
        if missing or unexpected:
            raise ModelLoadError(f"{weights}: base weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        base.tie_weights()
        base = base.to(device).eval()
    else:
        weights = path / ADAPTER_FILE
        if not weights.is_file():
            raise ModelLoadError(f"{path} is an adapter-only InRa checkpoint but has no {ADAPTER_FILE}")
        base = load_causal_lm(info["base_model"], torch_dtype, device)
        base_cfg = base.config.to_dict()
        differ = [k for k in _SHAPE_KEYS if k in config and base_cfg.get(k) != config[k]]
        if differ:
            raise ModelLoadError(
                f"the base model {info['base_model']!r} does not match the InRa checkpoint {path}: "
                + ", ".join(f"{k} {base_cfg.get(k)!r} vs {config[k]!r}" for k in differ)
            )
        extra, adapter_tensors = _split(load_file(str(weights)), n)
        if extra:
            raise ModelLoadError(f"{weights} holds non-adapter tensors, e.g. {sorted(extra)[:3]}")
    layers = nn.ModuleList(make_identity_layer(base.model.layers[0], i) for i in range(n))
    for i, (layer, tensors) in enumerate(zip(layers, adapter_tensors)):
        missing, unexpected = layer.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ModelLoadError(f"{weights}: adapter layer {i} is incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model = InRaModel(base, layers.to(device=device, dtype=torch_dtype), info.get("default_lambda", 1.0), info["base_model"])
    return model.eval()


def adapter_weights(path: str | Path, num_adapter_layers: int) -> dict[str, torch.Tensor]:
    """The adapter tensors of the checkpoint at ``path`` under the model's own names (training resume)."""
    path = Path(path)
    file = path / ADAPTER_FILE if (path / ADAPTER_FILE).is_file() else path / MERGED_FILE
    _, adapter_tensors = _split(load_file(str(file)), num_adapter_layers)
    return {f"adapter_layers.{i}.{name}": t for i, tensors in enumerate(adapter_tensors) for name, t in tensors.items()}


def load_inra_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved with the checkpoint, else its base model's."""
    path = Path(path).expanduser()
    if (path / "tokenizer_config.json").is_file():
        return load_tokenizer(str(path))
    return load_tokenizer(read_inra_config(path)["inra"]["base_model"])


def open_inra_backend(path: str | Path, backend: BackendConfig) -> RolloutBackend:
    """The rollout backend ``backend`` describes over an InRa checkpoint.

    vLLM loads the checkpoint as its own ``InRaForCausalLM`` (see :mod:`thinkctl.vllm_plugin`); the
    transformers engine drives the two paths of :func:`load_inra` as a reference/aligned pair.
    """
    if backend.engine == "vllm":
        return backend.open(str(path))
    backend = backend.resolved()
    return make_inra_backend(path, backend.dtype, backend.device, backend.batch_size)


def make_inra_backend(path: str | Path, dtype: str = "float32", device: str = "cpu", batch_size: int = 16) -> Any:
    """An :class:`thinkctl.rollout.hf.HFBackend` over an InRa checkpoint's two paths.

    The original path is the reference stream and the adapter path the aligned stream, so λ means
    the same thing as for a model pair and every sweep/generate code path works unchanged.
    """
    from thinkctl.rollout.hf import HFBackend

    model = load_inra(path, dtype, device)
    return HFBackend(model.original_stream(), model.adapter_stream(), load_inra_tokenizer(path), batch_size=batch_size, device=device)

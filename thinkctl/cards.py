"""Model cards (``README.md`` with Hub metadata) for the checkpoints thinkctl writes: InRa models and TrRa students.

A card says what the checkpoint is, what it was made from, how to load it and what λ means for it, and the
measured dial (InRa: accuracy and thinking length per λ) or reduction table (TrRa: reference, teacher and
student on held-out problems) once a sweep or report exists. The YAML front matter uses the keys the
Hugging Face Hub reads: ``base_model`` (only when it is a hub id: a local path means nothing there),
``library_name``, ``pipeline_tag``, ``tags``. Tables are passed in as Markdown, never invented: a card
written before anything was measured says so and names the command that measures it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from thinkctl.errors import HubError, ModelLoadError
from thinkctl.io import atomic_write_text

CARD_FILE = "README.md"
#: ``owner/name`` as the Hub spells repository ids
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a Hub repository id rather than a local path."""
    return bool(_HUB_ID.match(name)) and not Path(name).expanduser().exists()


def front_matter(base_model: str | None, tags: Sequence[str], library_name: str = "transformers") -> str:
    """The card's YAML header (written by hand: a handful of scalar keys and one list)."""
    lines = ["---"]
    if base_model and is_hub_id(base_model):
        lines.append(f"base_model: {base_model}")
    lines += [f"library_name: {library_name}", "pipeline_tag: text-generation", "tags:"] + [f"- {t}" for t in tags]
    return "\n".join(lines + ["---", ""])


def dial_table(summary: Any) -> str:
    """A sweep summary (the DataFrame of ``summary.csv``) as the card's λ table, one row per benchmark and λ."""
    lines = ["| benchmark | λ | accuracy % | mean thinking tokens | n |", "|---|---|---|---|---|"]
    for row in summary.sort_values(["benchmark", "lam"]).itertuples():
        lines.append(f"| {row.benchmark} | {row.lam:g} | {100 * row.accuracy:.1f} | {row.mean_thinking_tokens:.1f} | {int(row.n)} |")
    return "\n".join(lines)


def inra_card(path: str | Path, info: Mapping[str, Any], table: str | None = None) -> str:
    """The card of the InRa checkpoint at ``path`` (``info``: its config's ``inra`` section)."""
    base, lam = str(info["base_model"]), info.get("default_lambda", 1.0)
    kind = "merged (base weights included)" if info.get("merged") else f"adapter-only (base weights read from `{base}`)"
    measured = table or ("Not measured yet. Measure it with\n\n"
                         f"```bash\nthinkctl sweep --inra {path} --benchmark math500 --lambdas 0,0.25,0.5,0.75,1 --out runs/dial\n```")
    return front_matter(base, ["thinkctl", "inra", "reasoning", "thinking-length-control"]) + f"""
# InRa model: {Path(path).name}

One model with its own thinking-length dial λ (thinkctl's inference-time realignment, InRa): the frozen base
`{base}` plus {info['num_adapter_layers']} identity-initialised adapter layer(s). λ = 0 is the base model bit for
bit (slow, long thinking); λ = 1 is the adapter path (fast, short thinking); values in between interpolate
and values beyond 1 extrapolate. The logits are fused as `λ·z_adapter + (1−λ)·z_base`, each path with its own
KV cache. Default λ: {lam:g}. Checkpoint: {kind}.

## Load it and set λ

Plain transformers (no thinkctl needed; `modeling_inra.py` ships in this directory):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{path}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{path}")
inputs = tokenizer.apply_chat_template([{{"role": "user", "content": "What is 17 * 23?"}}],
                                       add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**inputs, max_new_tokens=512, do_sample=False, thinkctl_lambda=0.5)
```

thinkctl (Python, command line, or an OpenAI-compatible vLLM server with λ per request):

```python
import thinkctl
model = thinkctl.load_inra("{path}")
model.generate("What is 17 * 23?", lam=0.5, max_thinking_tokens=256)
```

```bash
thinkctl serve {path}    # requests: "vllm_xargs": {{"thinkctl_lambda": 0.5}} or "reasoning_effort": "low"
```

## Measured dial

{measured}
"""


def trra_card(path: str | Path, reference: str, aligned: str, lam: float, table: str | None = None,
              adaptive: bool = False) -> str:
    """The card of a TrRa student at ``path``, distilled from the pair (``reference``, ``aligned``) fused at ``lam``
    (``adaptive``: at each training problem's own λ, up to ``lam``)."""
    at = (f"at each training problem's own λ (of a grid up to {lam:g}, the λ of its shortest verified-right answer: "
          "long thinking only where the problem needs it)" if adaptive else f"at λ = {lam:g}")
    measured = table or ("Not evaluated yet: `thinkctl realign` evaluates reference, teacher and student on held-out "
                         "problems and writes the table here.")
    return front_matter(reference, ["thinkctl", "trra", "reasoning", "thinking-length-control", "distillation"]) + f"""
# TrRa student: {Path(path).name}

An ordinary causal LM distilled (thinkctl's training-time realignment, TrRa) to think like the fused pair
`λ·aligned + (1−λ)·reference` {at}, with reference `{reference}` and aligned model `{aligned}`.
It runs alone at the cost of one model: no λ to set at inference, the λ is baked in.

## Load it

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{path}")
tokenizer = AutoTokenizer.from_pretrained("{path}")
```

or `thinkctl.load_pair("{path}")`, `thinkctl sweep --ref {path} …`, `thinkctl serve {path}`.

## Held-out evaluation

{measured}
"""


def write_card(path: str | Path, text: str) -> Path:
    """Write ``text`` as ``path/README.md`` (atomically); returns the card's path."""
    target = Path(path) / CARD_FILE
    atomic_write_text(target, text)
    return target


def upload_checkpoint(path: str | Path, repo_id: str, token: str | None = None, private: bool | None = None,
                      commit_message: str | None = None) -> str:
    """Upload the checkpoint directory ``path`` to the Hub repository ``repo_id`` (created if missing); returns
    the commit's URL.

    The card is checked first: a checkpoint published without one tells Hub users nothing about λ or its
    base, and every writer thinkctl has (``save_inra``, the TrRa student writer) leaves one, so a missing card
    means the directory is not one of them. Any failure of the Hub (no network, no or a bad token, no write
    access) is re-raised as :class:`thinkctl.errors.HubError` naming the repository and the cause.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"push_to_hub: {folder} is not a checkpoint directory")
    if not (folder / CARD_FILE).is_file():
        raise ModelLoadError(f"push_to_hub: {folder} has no model card ({CARD_FILE}); thinkctl's checkpoint writers "
                             "(save_inra, realign/TrRa training) write one, or write it with thinkctl.cards.write_card")
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                   commit_message=commit_message or f"Upload {folder.name} with thinkctl")
    except Exception as e:  # the hub client raises connection, HTTP, token and validation errors of many types
        raise HubError(f"push_to_hub: could not upload {folder} to {repo_id!r}: {type(e).__name__}: {e}") from e
    return str(commit.commit_url)

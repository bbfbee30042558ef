"""InRa checkpoints as plain transformers models (trust_remote_code), checked in a process without thinkctl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.conftest import make_random_lm, make_word_tokenizer
from thinkctl.batch import pad
from thinkctl.decoding import fused_generate
from thinkctl.inra import InRaModel, load_inra, save_inra
from thinkctl.sampling import SamplingConfig

LAMBDAS = (0.0, 0.5, 1.0)
PROMPTS = [[4, 5, 6, 20], [7, 13, 22, 10, 30, 12], [9]]
MAX_NEW = 16

# Runs in a fresh interpreter: imports only transformers (and torch through it), never thinkctl.
SCRIPT = textwrap.dedent("""
    import json, sys
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, pipeline
    path, prompts, lambdas, max_new = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    import torch
    out = {"tokens": {}, "imported_thinkctl": any(m.split(".")[0] == "thinkctl" for m in sys.modules)}
    for lam in lambdas:
        rows = []
        for ids in prompts:
            gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=max_new, do_sample=False, thinkctl_lambda=lam)
            rows.append(gen[0, len(ids):].tolist())
        out["tokens"][str(lam)] = rows
    pipe = pipeline("text-generation", model=model, tokenizer=PreTrainedTokenizerFast.from_pretrained(path))
    out["pipeline"] = pipe("the answer is", max_new_tokens=4, do_sample=False, thinkctl_lambda=0.5,
                           return_full_text=False)[0]["generated_text"]
    out["class"] = type(model).__name__
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """An adapter-only and a merged checkpoint of one InRa model whose adapter is far from identity."""
    root = tmp_path_factory.mktemp("hf_inra")
    base = make_random_lm(layers=2)
    tokenizer = make_word_tokenizer()
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    inra = InRaModel.from_base(base, num_adapter_layers=2, base_name_or_path=str(root / "base"))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in inra.adapter_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return {"adapter": save_inra(inra, root / "inra", tokenizer=tokenizer),
            "merged": save_inra(inra, root / "merged", merged=True, tokenizer=tokenizer)}


def thinkctl_tokens(path) -> dict[str, list[list[int]]]:
    """What thinkctl's own InRa generation (the two streams under fused_generate) decodes, one prompt at a time."""
    model = load_inra(path)
    out = {}
    for lam in LAMBDAS:
        rows = []
        for ids in PROMPTS:
            input_ids, mask = pad([ids], 0, left=True)
            result = fused_generate(model.original_stream(), model.adapter_stream(), input_ids, mask, lam,
                                    SamplingConfig(max_new_tokens=MAX_NEW), stop_token_ids=[0])
            rows.append(result.token_ids[0])
        out[str(lam)] = rows
    return out


def run_fresh(path, tmp_path) -> dict:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), json.dumps(PROMPTS), json.dumps(LAMBDAS), str(MAX_NEW)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("kind", ["adapter", "merged"])
def test_trust_remote_code_generate_is_thinkctls_inra_generation(kind, checkpoints, tmp_path):
    expected = thinkctl_tokens(checkpoints[kind])
    assert len({json.dumps(rows) for rows in expected.values()}) == 3, "the λ values must decode differently to test fusion"
    got = run_fresh(checkpoints[kind], tmp_path)
    assert got["class"] == "InRaForCausalLM"
    assert not got["imported_thinkctl"]
    for lam in LAMBDAS:
        # generate keeps finished rows and pads after EOS; thinkctl stops at it: compare up to thinkctl's stop
        for mine, theirs in zip(expected[str(lam)], got["tokens"][str(lam)]):
            assert theirs[: len(mine)] == mine, (lam, mine, theirs)
    assert isinstance(got["pipeline"], str)


def test_default_lambda_and_a_changed_lambda(checkpoints):
    """Without thinkctl_lambda the checkpoint's default_lambda applies; a λ needing a path never run is refused."""
    sys.path.insert(0, str(checkpoints["merged"]))
    try:
        from modeling_inra import InRaForCausalLM
    finally:
        sys.path.pop(0)
    model = InRaForCausalLM.from_pretrained(checkpoints["merged"])
    ids = torch.tensor([PROMPTS[1]])
    assert torch.equal(model(ids).logits, model(ids, thinkctl_lambda=1.0).logits)  # default_lambda 1.0
    out = model(ids, use_cache=True, thinkctl_lambda=0.0)
    with pytest.raises(ValueError, match="changed mid-sequence"):
        model(torch.tensor([[5]]), past_key_values=out.past_key_values, use_cache=True, thinkctl_lambda=0.5)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(checkpoints["merged"])
    assert tokenizer.eos_token_id == 0

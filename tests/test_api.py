"""The public API: ``thinkctl.__all__``, a light ``import thinkctl``, and every docstring example run as a test.

The examples run on a random toy world: two random Qwen2 models over a small tiny-task tokenizer whose chat
template opens the think block (as R1-Distill's does), an InRa checkpoint over the first, and a finished sweep.
"""

from __future__ import annotations

import doctest
import inspect
import subprocess
import sys

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

import thinkctl
from thinkctl import api


def _toy_world(root):
    from thinkctl.inra import InRaModel, save_inra
    from thinkctl.tiny.tokenizer import ASSISTANT, CHAT_TEMPLATE, build_tokenizer

    tokenizer = build_tokenizer(vocab_size=300, n_problems=200)
    tokenizer.chat_template = CHAT_TEMPLATE.replace("{% if add_generation_prompt %}" + ASSISTANT,
                                                    "{% if add_generation_prompt %}" + ASSISTANT + "<think>\n")
    paths = {}
    for name, seed in (("REFERENCE", 0), ("ALIGNED", 1)):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            head_dim=64, intermediate_size=256, max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)).eval()
        paths[name] = root / name.lower()
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
        if name == "REFERENCE":
            inra = InRaModel.from_base(model, base_name_or_path=str(paths[name]))
            with torch.no_grad():
                for p in inra.adapter_parameters():
                    p.add_(torch.randn(p.shape) * 0.1)
            paths["INRA"] = save_inra(inra, root / "inra", tokenizer=tokenizer)
    paths["SWEEP"] = api.run_sweep(api.load_pair(paths["REFERENCE"], paths["ALIGNED"]), root / "sweep", lambdas=[0, 0.5, 1],
                               split="test", limit=6, max_new_tokens=8)
    return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _toy_world(tmp_path_factory.mktemp("api_world"))


def _examples() -> list[tuple[str, doctest.DocTest]]:
    finder = doctest.DocTestFinder(exclude_empty=False)
    tests = {t.name.removeprefix("thinkctl.api."): t for t in finder.find(api, globs={})}
    return sorted((name, t) for name, t in tests.items() if t.examples)


def test_every_public_name_is_exported_documented_and_has_an_example():
    with_examples = {name.split(".")[0] for name, _ in _examples()}
    for name in api.PUBLIC:
        assert name in thinkctl.__all__
        obj = getattr(thinkctl, name)
        assert obj is getattr(api, name)
        assert inspect.getdoc(obj), name
        assert name in with_examples, f"{name} has no docstring example"
    methods = [f"FusedModel.{m}" for m, v in vars(api.FusedModel).items() if inspect.isfunction(v) and not m.startswith("_")]
    undocumented = [m for m in methods if m not in dict(_examples()) and m not in ("FusedModel.close",)]
    assert not undocumented, undocumented


def test_help_lists_the_api_and_unknown_names_fail():
    import pydoc

    text = pydoc.render_doc(thinkctl)
    assert all(name in text for name in api.PUBLIC)
    with pytest.raises(AttributeError, match="no attribute 'load_pairs'"):
        thinkctl.load_pairs  # noqa: B018


def test_import_thinkctl_does_not_load_the_model_stack():
    code = "import sys, thinkctl; print(sorted(m for m in ('transformers', 'thinkctl.api', 'trl') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name,test", _examples(), ids=[name for name, _ in _examples()])
def test_docstring_example(name, test, world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a Trainer may write runs/ under the working directory
    test.globs = {"thinkctl": thinkctl, "tmp": tmp_path, **world}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    runner.run(test, out=report.append)  # doctest redirects stdout while it runs: collect its report instead
    assert runner.failures == 0, "".join(report)


def test_sweep_refuses_engine_settings_fixed_at_load(world, tmp_path):
    model = api.load_pair(world["REFERENCE"], world["ALIGNED"])
    with pytest.raises(thinkctl.ThinkctlError, match="fixed when the model is loaded"):
        api.run_sweep(model, tmp_path / "x", device="cpu")


def test_route_follows_the_policy_file(world, tmp_path):
    """route() on in-memory questions gives what `route apply` gives on the same queries."""
    from thinkctl.router.run import route_apply

    api.fit_router(world["SWEEP"], tmp_path / "p.json", questions="tiny", split="test", limit=6)
    questions = ["1 + 2 = ?", "what is 17 * 23 - 5 ?"]
    (tmp_path / "q.jsonl").write_text("".join(f'{{"id": "{i}", "question": "{q}"}}\n' for i, q in enumerate(questions)))
    rows, _ = route_apply(tmp_path / "p.json", tmp_path / "q.jsonl")
    assert api.route(tmp_path / "p.json", questions) == rows

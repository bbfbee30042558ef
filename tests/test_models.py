"""Model and pair loading: vocabulary checks and clear errors for bad sources."""

import json

import pytest
from transformers import ViTConfig

from tests.conftest import WORDS, make_random_lm, make_word_tokenizer
from thinkctl.errors import ModelLoadError, VocabMismatchError
from thinkctl.models import check_same_vocab, load_causal_lm, load_pair


def test_vocab_mismatch_names_sizes_and_first_difference() -> None:
    a = make_word_tokenizer()
    b = make_word_tokenizer(WORDS[:5] + ["apple"] + WORDS[6:] + ["extra"])
    with pytest.raises(VocabMismatchError, match=r"63 vs 64 tokens; first difference at id 5: 'answer' vs 'apple'"):
        check_same_vocab(a, b)


def test_output_width_mismatch(word_tokenizer) -> None:
    with pytest.raises(VocabMismatchError, match="63 output logits and the aligned model 64"):
        check_same_vocab(word_tokenizer, word_tokenizer, make_random_lm(63), make_random_lm(64))


def save_pair_dir(tmp_path, name, tokenizer, vocab_size):
    path = tmp_path / name
    make_random_lm(vocab_size).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_load_pair_round_trip_and_mismatch(tmp_path) -> None:
    tok = make_word_tokenizer()
    ref = save_pair_dir(tmp_path, "ref", tok, len(WORDS))
    al = save_pair_dir(tmp_path, "al", tok, len(WORDS))
    pair = load_pair(str(ref), str(al))
    assert not pair.reference.training and pair.tokenizer.padding_side == "left"
    other = save_pair_dir(tmp_path, "other", make_word_tokenizer(WORDS + ["zebra"]), len(WORDS) + 1)
    with pytest.raises(VocabMismatchError, match="first difference at id 63: None vs 'zebra'"):
        load_pair(str(ref), str(other))


def test_missing_path_and_non_causal_lm(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_causal_lm(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_causal_lm(str(tmp_path / "empty"))
    vit = tmp_path / "vit"
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(vit)
    with pytest.raises(ModelLoadError, match="model_type='vit'.*not a causal language model"):
        load_causal_lm(str(vit))
    assert json.loads((vit / "config.json").read_text())["model_type"] == "vit"


def test_model_identity_fingerprints_files_cheaply_and_by_content(tmp_path) -> None:
    import shutil

    from thinkctl.models import SAMPLE_BYTES, file_fingerprint, model_identity

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "qwen2"}')
    weights = bytearray(b"\0" * (6 * SAMPLE_BYTES))  # large: fingerprinted by size, head and tail
    (ckpt / "model.safetensors").write_bytes(weights)
    (ckpt / "README.md").write_text("notes do not make the model")
    before = model_identity(str(ckpt))
    assert set(before["files"]) == {"config.json", "model.safetensors"}
    assert before["files"]["model.safetensors"].startswith(f"{6 * SAMPLE_BYTES}:")
    shutil.copytree(ckpt, tmp_path / "copy")
    assert model_identity(str(tmp_path / "copy")) == before  # content, not path or mtime
    weights[10] = 1  # retrained weights change the first tensors' bytes
    (ckpt / "model.safetensors").write_bytes(weights)
    assert model_identity(str(ckpt))["files"]["model.safetensors"] != before["files"]["model.safetensors"]
    assert file_fingerprint(ckpt / "config.json") != file_fingerprint(tmp_path / "copy" / "README.md")


def test_model_identity_of_a_hub_name_resolves_the_cached_snapshot_offline(tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants

    from thinkctl.models import model_identity

    commit = "a" * 40
    repo = tmp_path / "models--org--thinker"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    identity = model_identity("org/thinker")
    assert identity["revision"] == commit and set(identity["files"]) == {"config.json"}
    assert model_identity("org/not-downloaded") == {"name": "org/not-downloaded"}

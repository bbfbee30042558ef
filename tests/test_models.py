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

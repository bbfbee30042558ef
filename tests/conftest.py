"""Shared fixtures: small random Qwen2 models and a word-level tokenizer built in memory."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

#: per-test limit of slow tests (the fast suite keeps pyproject's 600 s): a module fixture builds the tiny pair
#: (13–15 minutes on 2 cores) or trains the InRa dial (~10) inside the first test that needs it
SLOW_TIMEOUT_S = 3600


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))

WORDS = ["<|endoftext|>", "<unk>", "<think>", "</think>", "the", "answer", "is", "\\boxed{", "}", ".", "+", "-", "="] + [
    str(i) for i in range(50)
]


def make_word_tokenizer(words: list[str] = WORDS) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer: enough to render, encode and grade in tests, no training."""
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<unk>")
    fast.padding_side = "left"
    return fast


def make_random_lm(vocab_size: int = len(WORDS), seed: int = 0, layers: int = 2) -> Qwen2ForCausalLM:
    """A small random-init Qwen2 causal LM (head_dim 64, like the tiny default) in eval mode."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=128, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, intermediate_size=256, max_position_embeddings=256,
        eos_token_id=0, pad_token_id=0, tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture
def word_tokenizer() -> PreTrainedTokenizerFast:
    return make_word_tokenizer()


@pytest.fixture
def random_pair() -> tuple[Qwen2ForCausalLM, Qwen2ForCausalLM]:
    """(reference, aligned): two differently seeded random models over the same vocabulary."""
    return make_random_lm(seed=0), make_random_lm(seed=1)

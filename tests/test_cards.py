"""Model cards: Hub YAML metadata, the measured table only when one was measured, how to load and set λ."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from tests.conftest import make_random_lm, make_word_tokenizer
from thinkctl.cards import dial_table, front_matter, trra_card
from thinkctl.errors import ConfigError
from thinkctl.inra import InRaModel, save_inra, write_inra_card


def _meta(card: str) -> dict:
    head, _, _ = card.removeprefix("---\n").partition("\n---\n")
    return yaml.safe_load(head)


def test_front_matter_names_a_hub_base_but_not_a_local_path(tmp_path):
    assert _meta(front_matter("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", ["thinkctl"]))["base_model"] == \
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    local = _meta(front_matter(str(tmp_path), ["thinkctl", "inra"]))
    assert "base_model" not in local
    assert local["library_name"] == "transformers" and local["tags"] == ["thinkctl", "inra"]


def test_save_inra_writes_a_card_and_a_sweep_fills_its_dial(tmp_path):
    base = make_random_lm()
    inra = InRaModel.from_base(base, base_name_or_path="Qwen/Qwen2.5-0.5B")
    path = save_inra(inra, tmp_path / "ck", tokenizer=make_word_tokenizer())
    card = (path / "README.md").read_text()
    assert _meta(card)["base_model"] == "Qwen/Qwen2.5-0.5B" and "inra" in _meta(card)["tags"]
    assert "thinkctl_lambda=0.5" in card and "trust_remote_code=True" in card
    assert "Not measured yet" in card and "| λ |" not in card
    summary = pd.DataFrame({"benchmark": ["tiny"] * 3, "method": ["inra"] * 3, "lam": [1.0, 0.0, 0.5],
                            "accuracy": [0.5, 0.75, 0.625], "mean_thinking_tokens": [10.0, 40.0, 20.0], "n": [8] * 3})
    summary.to_csv(tmp_path / "summary.csv", index=False)
    card = write_inra_card(path, tmp_path / "summary.csv").read_text()
    assert "Not measured yet" not in card
    rows = [line for line in card.splitlines() if line.startswith("| tiny |")]
    assert rows == ["| tiny | 0 | 75.0 | 40.0 | 8 |", "| tiny | 0.5 | 62.5 | 20.0 | 8 |", "| tiny | 1 | 50.0 | 10.0 | 8 |"]
    summary.assign(method="fused").to_csv(tmp_path / "summary.csv", index=False)
    with pytest.raises(ConfigError, match="no InRa rows"):
        write_inra_card(path, tmp_path / "summary.csv")


def test_trra_card_without_and_with_a_report():
    assert "Not evaluated yet" in trra_card("s", "org/ref", "org/fast", 0.5)
    card = trra_card("s", "org/ref", "org/fast", 0.5, table="| model | … |")
    assert _meta(card)["base_model"] == "org/ref" and "λ = 0.5" in card and "| model | … |" in card
    assert "Not evaluated" not in card


def test_dial_table_is_sorted_by_lambda():
    df = pd.DataFrame({"benchmark": ["b", "b"], "lam": [1.5, -0.5], "accuracy": [1.0, 0.0], "mean_thinking_tokens": [1.0, 2.0], "n": [1, 1]})
    assert dial_table(df).splitlines()[2].startswith("| b | -0.5 |")

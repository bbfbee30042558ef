"""Model cards: Hub YAML metadata, the measured table only when one was measured, how to load and set λ."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from tests.conftest import make_random_lm, make_word_tokenizer
from thinkctl.cards import dial_table, front_matter, trra_card, write_card
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


class _RecordingHfApi:
    """Stands in for ``huggingface_hub.HfApi``: records the calls, uploads nothing."""

    calls: list[tuple[str, dict]] = []

    def __init__(self, token=None):
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()


def test_push_to_hub_uploads_the_checkpoint_folder_with_its_card(tmp_path, monkeypatch):
    import huggingface_hub

    import thinkctl

    path = save_inra(InRaModel.from_base(make_random_lm(), base_name_or_path="Qwen/Qwen2.5-0.5B"), tmp_path / "ck",
                     tokenizer=make_word_tokenizer())
    monkeypatch.setattr(huggingface_hub, "HfApi", _RecordingHfApi)
    _RecordingHfApi.calls = []
    url = thinkctl.push_to_hub(path, "me/tiny-inra", token="hf_x", private=True)
    assert url == "https://huggingface.co/me/tiny-inra/commit/abc"
    assert [name for name, _ in _RecordingHfApi.calls] == ["init", "create_repo", "upload_folder"]
    assert _RecordingHfApi.calls[0][1] == {"token": "hf_x"}
    assert _RecordingHfApi.calls[1][1] == {"repo_id": "me/tiny-inra", "private": True, "exist_ok": True}
    upload = _RecordingHfApi.calls[2][1]
    assert upload["repo_id"] == "me/tiny-inra" and upload["folder_path"] == str(path)
    assert "README.md" in {p.name for p in path.iterdir()}


def test_push_to_hub_refuses_a_folder_without_a_card(tmp_path, monkeypatch):
    import huggingface_hub

    import thinkctl
    from thinkctl.errors import ModelLoadError

    monkeypatch.setattr(huggingface_hub, "HfApi", _RecordingHfApi)
    _RecordingHfApi.calls = []
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"has no model card \(README.md\)"):
        thinkctl.push_to_hub(tmp_path, "me/x")
    with pytest.raises(ModelLoadError, match="not a checkpoint directory"):
        thinkctl.push_to_hub(tmp_path / "missing", "me/x")
    assert _RecordingHfApi.calls == []


def test_push_to_hub_without_a_network_names_the_repo_and_the_cause(tmp_path, monkeypatch):
    """A real HfApi against an endpoint nothing listens on: the connection error comes back as a HubError."""
    import huggingface_hub.constants

    import thinkctl
    from thinkctl.errors import HubError

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    write_card(tmp_path, trra_card(tmp_path, "ref", "al", 0.5))
    with pytest.raises(HubError, match=r"could not upload .* to 'me/student': \w*(Connect|Network)\w*"):
        thinkctl.push_to_hub(tmp_path, "me/student", token="hf_x")

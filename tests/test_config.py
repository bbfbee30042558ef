"""Job configs: one declaration per setting gives the recipe key, the flag and its help; recipes load."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from thinkctl.cli import GenerateConfig
from thinkctl.config import add_flags, flag_values, load_section, options, read_recipe
from thinkctl.errors import ConfigError, InvalidLambdaError
from thinkctl.inra.train import InRaTrainConfig
from thinkctl.sampling import SamplingConfig
from thinkctl.sweep import SweepConfig
from thinkctl.tiny import TinyBuildConfig
from thinkctl.trra.realign import RealignConfig, load_realign_configs

REPO = Path(__file__).resolve().parents[1]
SAMPLING_KEYS = {o.key for o in options(SamplingConfig)}  # flat: the schedule group included


def keys(cls: type) -> set[str]:
    return {o.key for o in options(cls)}


def test_every_job_composes_the_one_sampling_config():
    for cls in (SweepConfig, RealignConfig, GenerateConfig):
        assert SAMPLING_KEYS <= keys(cls), cls
    assert {f"rollout_{k}" for k in SAMPLING_KEYS} <= keys(InRaTrainConfig)
    cfg = load_section(InRaTrainConfig, None, "inra", {"base": "b", "teacher": "t", "rollout_temperature": 0.7})
    assert cfg.rollout == SamplingConfig(temperature=0.7)


def test_flags_are_generated_from_the_fields_and_override_the_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sweep:\n  benchmark: gsm8k\n  temperature: 0.6\n  batch_size: 8\n")
    parser = argparse.ArgumentParser()
    add_flags(parser, SweepConfig)
    args = parser.parse_args(["--max-new-tokens", "64", "--lambdas", "0,1", "--engine", "vllm"])
    cfg = load_section(SweepConfig, recipe, "sweep", flag_values(args, SweepConfig))
    assert cfg.benchmark == ["gsm8k"] and cfg.lambdas == [0.0, 1.0]
    assert cfg.sampling == SamplingConfig(max_new_tokens=64, temperature=0.6)
    assert (cfg.backend.engine, cfg.backend.batch_size) == ("vllm", 8)
    assert "nucleus sampling" in parser.format_help()  # help text comes from the field


def test_a_sweep_takes_one_benchmark_or_several(tmp_path):
    parser = argparse.ArgumentParser()
    add_flags(parser, SweepConfig)
    args = parser.parse_args(["--benchmark", "aime24, aime25,math500=data/math500.jsonl", "--prompt-template", "r1-math"])
    cfg = load_section(SweepConfig, None, "sweep", flag_values(args, SweepConfig))
    assert cfg.benchmark == ["aime24", "aime25", "math500=data/math500.jsonl"] and cfg.prompt.prompt_template == "r1-math"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sweep:\n  benchmark: [aime24, aime25]\n  chunk_size: 0\n")
    with pytest.raises(ConfigError, match="chunk_size must be at least 1"):
        load_section(SweepConfig, recipe, "sweep")
    assert SweepConfig(benchmark="gsm8k").benchmark == ["gsm8k"]
    assert SweepConfig().limit is None  # the whole benchmark unless a limit is given


def test_lambda_flags_reject_what_validate_lambda_rejects(capsys):
    parser = argparse.ArgumentParser()
    add_flags(parser, InRaTrainConfig)
    for bad in ("nan", "inf", "half"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--teacher-lambda", bad])
        assert "λ must be" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--rollout-lambdas", "0,0.5,0"])
    assert "twice" in capsys.readouterr().err


@pytest.mark.parametrize("value", [".nan", ".inf", '"0.5"'])
def test_recipe_lambdas_are_validated_where_the_recipe_is_read(tmp_path, value):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"inra:\n  base: b\n  teacher: t\n  teacher_lambda: {value}\n")
    with pytest.raises(InvalidLambdaError, match=r"bad\.yaml \[inra\] teacher_lambda: λ must"):
        load_section(InRaTrainConfig, recipe, "inra")
    recipe.write_text(f"sweep:\n  lambdas: [0, {value}]\n")
    with pytest.raises(InvalidLambdaError, match=r"bad\.yaml \[sweep\] lambdas"):
        load_section(SweepConfig, recipe, "sweep")


def test_renamed_and_unknown_keys_say_what_to_write(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("inra:\n  base: b\n  teacher: t\n  loss_kind: reverse_kl\n")
    with pytest.raises(ConfigError, match="`loss_kind` was renamed to `divergence`"):
        load_section(InRaTrainConfig, recipe, "inra")
    recipe.write_text("sweep:\n  sampling:\n    temperature: 0.6\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['sampling'\].*'temperature'"):
        load_section(SweepConfig, recipe, "sweep")
    assert load_section(InRaTrainConfig, None, "inra", {"base": "b", "teacher": "t", "divergence": "jsd"}).divergence == "jsd"


def test_every_recipe_and_suite_loads():
    section_types = {"tiny": TinyBuildConfig, "sweep": SweepConfig, "inra": InRaTrainConfig}
    recipes = sorted((REPO / "recipes").glob("*.yaml")) + sorted((REPO / "evals").glob("*.yaml"))
    assert len(recipes) >= 9
    for recipe in recipes:
        sections = read_recipe(recipe)
        for name, cls in section_types.items():
            if name in sections:
                load_section(cls, recipe, name)
        if "realign" in sections:
            if str(sections["realign"].get("aligned", "")).startswith("SET-ME"):  # caught here, not by a hub lookup
                with pytest.raises(ConfigError, match="still the recipe's placeholder"):
                    load_realign_configs(str(recipe), {"lambda_": 0.5})
            realign, trra = load_realign_configs(str(recipe), {"lambda_": 0.5, "aligned": "a"})
            assert realign.lambda_ == 0.5 and trra.divergence == "forward_kl"
            if realign.traces.data:  # the paper's TrRa trains in LLaMA-Factory's `deepseek` format
                assert realign.traces.prompt_format == "deepseek", recipe
        if "inra" in sections and str(recipe.name).startswith("r1-"):
            assert load_section(InRaTrainConfig, recipe, "inra").traces.prompt_format == "deepseek3", recipe


def test_derived_seeds_are_distinct_for_sampling_and_unused_for_greedy():
    greedy, sampled = SamplingConfig(), SamplingConfig(temperature=1.0, seed=3)
    assert greedy.derive(5) is greedy
    assert [sampled.derive(k).seed for k in (0, 1, 64)] == [3, 4, 67]
    assert sampled.derive(1).temperature == 1.0


def test_generate_defaults_to_lambda_zero_which_every_model_source_has():
    cfg = load_section(GenerateConfig, None, "generate")
    assert cfg.lambda_ == 0.0 and cfg.sampling == SamplingConfig()


def test_suites_for_real_checkpoints_evaluate_whole_benchmarks_with_the_r1_instruction():
    for name in ("math500", "gsm8k", "aime", "aime25", "paper"):
        cfg = load_section(SweepConfig, REPO / "evals" / f"{name}.yaml", "sweep")
        assert cfg.limit is None and cfg.prompt.prompt_template == "r1-math", name
        assert (cfg.backend.device, cfg.backend.dtype) == ("auto", "auto"), name
    paper = load_section(SweepConfig, REPO / "evals" / "paper.yaml", "sweep")
    assert paper.benchmark == ["aime24", "aime25", "math500"] and paper.n_samples == 8
    assert (paper.sampling.temperature, paper.sampling.top_p, paper.sampling.max_new_tokens) == (0.7, 0.95, 16384)
    assert load_section(SweepConfig, REPO / "evals" / "tiny.yaml", "sweep").prompt.prompt_template == "plain"


def test_a_misspelt_recipe_section_is_refused_naming_it(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("swep:\n  temperature: 0.7\n  n_samples: 8\ntiny:\n  n_train: 10\n")
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['swep'\] \(`swep`: did you mean `sweep`\?\)"):
        load_section(SweepConfig, recipe, "sweep")


def test_negative_lambda_grids_are_taken_as_the_readme_writes_them(capsys):
    from thinkctl.cli import attach_negative_values, build_parser

    readme = ["sweep", "--ref", "r", "--aligned", "a", "--out", "o", "--lambdas", "-0.33,-0.25,0,0.5,1,1.25"]
    assert build_parser("sweep").parse_args(attach_negative_values(readme)).lambdas == [-0.33, -0.25, 0.0, 0.5, 1.0, 1.25]
    for grid, expected in (("-1,0", [-1.0, 0.0]), ("-1", [-1.0]), ("-.5,1e-1", [-0.5, 0.1])):
        argv = attach_negative_values(["sweep", "--out", "o", "--lambdas", grid])
        assert build_parser("sweep").parse_args(argv).lambdas == expected, grid
    assert attach_negative_values(["generate", "--ref", "r", "--lambda", "-0.5", "-1 + 2 ="]) == [
        "generate", "--ref", "r", "--lambda=-0.5", "-1 + 2 ="]

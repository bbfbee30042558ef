"""The command line end to end on small saved models: sweeps, generation, and user-error exits."""

import json

import pytest

from tests.conftest import WORDS, make_random_lm, make_word_tokenizer
from thinkctl.cli import main
from thinkctl.io import read_jsonl


@pytest.fixture
def saved_pair(tmp_path):
    tok = make_word_tokenizer()
    paths = []
    for name, seed in (("ref", 0), ("al", 1)):
        make_random_lm(seed=seed).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        paths.append(str(tmp_path / name))
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": f"q{i}", "question": f"{i} + 1 =", "answer": str(i + 1)}) + "\n" for i in range(5)))
    return paths[0], paths[1], str(bench)


def test_sweep_command_writes_records_summary_and_plot(saved_pair, tmp_path, capsys) -> None:
    ref, al, bench = saved_pair
    out = tmp_path / "run"
    argv = ["sweep", "--ref", ref, "--aligned", al, "--benchmark", bench, "--lambdas", "0,1,1.5",
            "--max-new-tokens", "8", "--out", str(out)]
    assert main(argv) == 0
    records = read_jsonl(out / "results.jsonl")
    assert sorted({r["lam"] for r in records}) == [0.0, 1.0, 1.5] and len(records) == 15
    assert all(r["benchmark"] == "bench" and 0 < r["total_tokens"] <= 8 for r in records)
    printed = capsys.readouterr().out
    assert "| bench | fused | 1.5 | 5 |" in printed and "sweep.png" in printed
    assert main(argv) == 0
    assert len(read_jsonl(out / "results.jsonl")) == 15


def test_generate_and_user_errors_exit_2(saved_pair, tmp_path, capsys) -> None:
    ref, al, _ = saved_pair
    assert main(["generate", "--ref", ref, "--aligned", al, "--lambda", "0.5", "--max-new-tokens", "4", "1 + 1 ="]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## 1 + 1 =\n--- prompt\nQuestion: 1 + 1 =\nAnswer:\n--- response\n")  # what a sweep asks
    with pytest.raises(SystemExit):
        main(["generate", "--ref", ref, "--lambda", "nan", "x"])
    assert "λ must be finite" in capsys.readouterr().err
    other = tmp_path / "other"
    make_random_lm(len(WORDS) + 1).save_pretrained(other)
    make_word_tokenizer(WORDS + ["zebra"]).save_pretrained(other)
    assert main(["generate", "--ref", ref, "--aligned", str(other), "x"]) == 2
    assert "tokenizers differ" in capsys.readouterr().err
    assert main(["sweep", "--ref", ref, "--benchmark", "nope.jsonl", "--out", str(tmp_path / "r")]) == 2
    assert "needs an aligned model" in capsys.readouterr().err
    assert main(["sweep", "--ref", ref, "--lambdas", "0", "--benchmark", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "r")]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    assert main(["generate", "--ref", str(tmp_path / "missing"), "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_sweep_and_generate_accept_an_inra_checkpoint(saved_pair, tmp_path, capsys) -> None:
    from thinkctl.inra import InRaModel, save_inra
    from thinkctl.models import load_causal_lm

    ref, al, bench = saved_pair
    inra = save_inra(InRaModel.from_base(load_causal_lm(ref), base_name_or_path=ref), tmp_path / "inra",
                     tokenizer=make_word_tokenizer())
    out = tmp_path / "run"
    assert main(["sweep", "--inra", str(inra), "--benchmark", bench, "--lambdas", "0,1", "--max-new-tokens", "6", "--out", str(out)]) == 0
    records = read_jsonl(out / "results.jsonl")
    assert len(records) == 10 and {r["method"] for r in records} == {"inra"}
    by_lam = {lam: [r["response"] for r in records if r["lam"] == lam] for lam in (0.0, 1.0)}
    assert by_lam[0.0] == by_lam[1.0]  # an identity adapter: the dial changes nothing yet
    assert main(["generate", "--inra", str(inra), "--lambda", "0.5", "--max-new-tokens", "4", "1 + 1 ="]) == 0
    assert "## 1 + 1 =" in capsys.readouterr().out
    assert main(["generate", "--inra", str(inra), "--ref", ref, "x"]) == 2
    assert main(["sweep", "--out", str(out)]) == 2
    assert "give either --ref" in capsys.readouterr().err
    assert main(["generate", "--inra", str(inra), "--aligned", al, "x"]) == 2
    assert "carries its own fast path" in capsys.readouterr().err


def test_every_command_option_and_subcommand_has_help() -> None:
    import argparse

    from thinkctl.cli import COMMANDS, build_parser

    def walk(parser: argparse.ArgumentParser, name: str):
        assert parser.description, f"{name} has no description"
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, p in action.choices.items():
                    yield from walk(p, f"{name} {sub}")
            elif not isinstance(action, argparse._HelpAction):
                yield name, action

    missing = [(name, a.option_strings or a.dest) for command in COMMANDS
               for name, a in walk(build_parser(command)._subparsers._group_actions[0].choices[command], command)
               if not a.help]
    assert missing == []


def test_demo_help_shows_the_demo_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: -0.25,0.0,0.25,0.5,0.75,1.0,1.5)" in out and "(default: 300)" in out and "(default: 640)" in out


def test_help_says_what_the_tool_does(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert out.split("\n\n")[1].startswith("Control how long a reasoning model thinks.")
    assert "thinkctl demo" in out and "parse, call one function" not in out


def test_generate_defaults_to_the_reference_alone(saved_pair, capsys) -> None:
    ref, _, _ = saved_pair
    assert main(["generate", "--ref", ref, "--max-new-tokens", "3", "2 + 2 ="]) == 0
    assert "## 2 + 2 =" in capsys.readouterr().out
    assert main(["generate", "--ref", ref, "--lambda", "1", "x"]) == 2
    assert "needs an aligned model" in capsys.readouterr().err
    assert main(["generate", "--ref", ref, "--prompt-template", "r1", "x"]) == 2
    assert "'r1' is neither a preset (plain, r1-math) nor a text containing {question}" in capsys.readouterr().err


def test_sweep_resume_under_other_settings_is_refused_and_overwrite_starts_afresh(saved_pair, tmp_path, capsys) -> None:
    ref, al, bench = saved_pair
    out = tmp_path / "run"
    argv = ["sweep", "--ref", ref, "--aligned", al, "--benchmark", bench, "--lambdas", "0,1", "--out", str(out), "--chunk-size", "3"]
    assert main([*argv, "--max-new-tokens", "6", "--prompt-template", "r1-math"]) == 0
    capsys.readouterr()
    assert main([*argv, "--max-new-tokens", "4", "--prompt-template", "r1-math"]) == 2
    err = capsys.readouterr().err
    assert "sampling.max_new_tokens: 6 (recorded) → 4 (now)" in err and "--overwrite" in err
    assert main([*argv, "--max-new-tokens", "6"]) == 2
    assert "prompt.template" in capsys.readouterr().err
    assert main([*argv, "--max-new-tokens", "4", "--overwrite"]) == 0
    assert all(0 < r["total_tokens"] <= 4 for r in read_jsonl(out / "results.jsonl"))
    assert len(list(out.glob("replaced-*/results.jsonl"))) == 1


def test_ctrl_c_exits_with_one_line_and_status_130(saved_pair, tmp_path, capsys, monkeypatch) -> None:
    import thinkctl.rollout.hf as hf

    ref, al, bench = saved_pair
    real, calls = hf.fused_generate, []

    def interrupted_after_one_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(hf, "fused_generate", interrupted_after_one_batch)
    out = tmp_path / "run"
    argv = ["sweep", "--ref", ref, "--aligned", al, "--benchmark", bench, "--lambdas", "0", "--max-new-tokens", "4",
            "--batch-size", "2", "--out", str(out)]
    assert main(argv) == 130
    err = capsys.readouterr().err  # progress bars, then one line from thinkctl
    ours = [line for line in err.splitlines() if line.startswith("thinkctl:")]
    assert len(ours) == 1 and "Traceback" not in err and err.endswith(ours[0] + "\n")
    assert ours[0].startswith("thinkctl: interrupted: 2 samples are saved in") and "rerun the same command to resume" in ours[0]
    assert len(read_jsonl(out / "results.jsonl")) == 2
    monkeypatch.setattr(hf, "fused_generate", real)
    assert main(argv) == 0 and len(read_jsonl(out / "results.jsonl")) == 5


def tree(path) -> dict[str, bytes] | None:
    """Every file under ``path`` with its bytes (None when ``path`` does not exist)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} if path.exists() else None


def test_a_run_that_cannot_start_leaves_its_directory_as_it_was(saved_pair, tmp_path, capsys, monkeypatch) -> None:
    import sys

    from thinkctl.rollout.base import ENGINES

    ref, al, bench = saved_pair
    other = tmp_path / "other"
    make_random_lm(len(WORDS) + 1).save_pretrained(other)
    make_word_tokenizer(WORDS + ["zebra"]).save_pretrained(other)
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    sweep = ["sweep", "--benchmark", bench, "--lambdas", "0,1", "--max-new-tokens", "3"]
    done = tmp_path / "done"
    assert main([*sweep, "--ref", ref, "--aligned", al, "--out", str(done)]) == 0
    before = tree(done)
    failures = {
        "a mistyped local path": (["--ref", "models/refernce", "--aligned", al], "model path does not exist: models/refernce"),
        "mismatched vocabularies": (["--ref", ref, "--aligned", str(other)], "tokenizers differ"),
        "vLLM not installed": (["--ref", ref, "--aligned", al, "--engine", "vllm"], "needs vLLM"),
    }
    monkeypatch.delitem(ENGINES, "vllm", raising=False)
    monkeypatch.delitem(sys.modules, "thinkctl.rollout.vllm", raising=False)
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails as where it is not installed
    for what, (models, message) in failures.items():
        capsys.readouterr()
        assert main([*sweep, *models, "--out", str(tmp_path / "fresh")]) == 2, what
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and "huggingface.co" not in err, (what, err)
        assert not (tmp_path / "fresh").exists(), what
        for extra in ([], ["--overwrite"]):
            assert main([*sweep, *models, "--out", str(done), *extra]) == 2, (what, extra)
            assert tree(done) == before, (what, extra)
    assert main([*sweep, "--ref", ref, "--aligned", al, "--out", str(tmp_path / "fresh")]) == 0  # the corrected command runs


CHILD = """
import pathlib, sys, time
import thinkctl.rollout.hf as hf
real, calls = hf.fused_generate, []

def second_batch_waits(*args, **kwargs):
    calls.append(1)
    if len(calls) > 1:
        pathlib.Path(sys.argv[1]).write_text("generating")
        time.sleep(120)  # the parent's signal lands here, mid-chunk
    return real(*args, **kwargs)

hf.fused_generate = second_batch_waits
from thinkctl.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_to_a_running_sweep_saves_the_finished_samples_like_ctrl_c(saved_pair, tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    ref, al, bench = saved_pair
    out, ready = tmp_path / "run", tmp_path / "ready"
    argv = ["sweep", "--ref", ref, "--aligned", al, "--benchmark", bench, "--lambdas", "0", "--max-new-tokens", "4",
            "--batch-size", "2", "--out", str(out)]
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ready), *argv], stderr=subprocess.PIPE, text=True,
                             cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.monotonic() + 300
    while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ready.exists(), child.stderr.read() if child.poll() is not None else "the child never reached its second batch"
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 143
    ours = [line for line in err.splitlines() if line.startswith("thinkctl:")]
    assert len(ours) == 1 and "Traceback" not in err, err
    assert ours[0].startswith("thinkctl: SIGTERM received; interrupted: 2 samples are saved in"), ours[0]
    assert len(read_jsonl(out / "results.jsonl")) == 2  # the finished batch of the chunk in flight


def test_sighup_stops_a_sweep_like_ctrl_c_and_the_handlers_are_restored(saved_pair, tmp_path, capsys, monkeypatch) -> None:
    import os
    import signal

    import thinkctl.rollout.hf as hf

    ref, al, bench = saved_pair
    real, calls = hf.fused_generate, []

    def hangup_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            os.kill(os.getpid(), signal.SIGHUP)  # a real signal, handled in this process's main thread
        return real(*args, **kwargs)

    monkeypatch.setattr(hf, "fused_generate", hangup_on_second_batch)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGHUP)
    assert main(["sweep", "--ref", ref, "--aligned", al, "--benchmark", bench, "--lambdas", "0", "--max-new-tokens", "4",
                 "--batch-size", "2", "--out", str(out)]) == 129
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("thinkctl:")]
    assert len(ours) == 1 and ours[0].startswith("thinkctl: SIGHUP received; interrupted: 2 samples are saved in")
    assert len(read_jsonl(out / "results.jsonl")) == 2
    assert signal.getsignal(signal.SIGHUP) == before

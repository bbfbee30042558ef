"""Slow: TrRa and InRa (sft) under ``accelerate launch`` with 2 CPU processes (gloo DDP) take the steps of one process
with the same global batch, and a run killed mid-way resumes to the same trajectory.

Both jobs run through the command line exactly as on a cluster: the teacher data is generated once by
``thinkctl realign --stage data`` (one process), then ``realign --stage train`` and ``inra train`` (method sft, on
those teacher responses as a trace file) run as one process with batch 8 and as two processes with batch 2 and 2
accumulation steps each (global batch 8). Losses are compared step by step: the data order and the step's token
count are the same, so only float rounding differs (measured on a small tiny pair: max |Δloss| ≤ 6e-7 relative;
the tolerance below is 1e-4 relative). The kill is a SIGKILL of the whole launch once ``checkpoint-2`` is complete;
the rerun resumes from it and must log every step once with the uninterrupted run's losses.

The launch uses ``configs/accelerate/ddp.yaml`` with ``--num_processes 2 --mixed_precision no``: on a machine
without GPUs the training config's ``device: auto`` makes the processes one gloo group. (FSDP cannot be checked
here: accelerate enables FSDP only on GPUs, and the trainer refuses the silent DDP fallback; see
``tests/test_training.py``.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REL_TOL = 1e-4
GLOBAL_BATCH = 8
STEPS = 6


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _command(args: list[str], processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "thinkctl.cli", *args]
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    return [accelerate, "launch", "--config_file", str(REPO / "configs" / "accelerate" / "ddp.yaml"), "--num_processes",
            str(processes), "--mixed_precision", "no", "-m", "thinkctl.cli", *args]


def _batch_flags(processes: int) -> list[str]:
    per_device, accumulation = (GLOBAL_BATCH, 1) if processes == 1 else (GLOBAL_BATCH // (2 * processes), 2)
    return ["--per-device-train-batch-size", str(per_device), "--gradient-accumulation-steps", str(accumulation),
            "--max-steps", str(STEPS), "--save-steps", "2", "--logging-steps", "1", "--warmup-ratio", "0"]


def _losses(state_file: Path) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in json.loads(state_file.read_text())["log_history"] if "loss" in h]


def _run(args: list[str], processes: int, log: Path) -> None:
    with log.open("w") as out:
        subprocess.run(_command(args, processes), cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT, check=True, timeout=1800)


def _kill_after_checkpoint(args: list[str], processes: int, checkpoint: Path, log: Path) -> None:
    """Start the launch in its own process group and SIGKILL the whole group once ``checkpoint`` is complete."""
    with log.open("w") as out:
        proc = subprocess.Popen(_command(args, processes), cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + 1800
        while not (checkpoint / "trainer_state.json").is_file():
            assert proc.poll() is None, f"the run ended before {checkpoint} was saved; see {log}"
            assert time.time() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def check_one_vs_two_processes(reference: Path, aligned: Path, work: Path) -> dict[str, dict[str, list]]:
    """The whole check on the pair (reference, aligned) in ``work``; returns the loss trajectories per job and run."""
    realign = ["realign", "--recipe", "recipes/tiny-trra.yaml", "--ref", str(reference), "--aligned", str(aligned),
               "--lambda", "0.9", "--train-limit", "48", "--no-only-correct", "--max-new-tokens", "48"]
    _run([*realign, "--stage", "data", "--out", str(work / "data")], 1, work / "data.log")
    data = work / "data" / "distill_data.jsonl"
    jobs = {
        "trra": (lambda out: [*realign, "--stage", "train", "--out", str(out)], lambda out: out / "student"),
        "inra": (lambda out: ["inra", "train", "--recipe", "recipes/tiny-inra.yaml", "--base", str(reference), "--method", "sft",
                              "--data", str(data), "--output-dir", str(out)], lambda out: out),
    }
    trajectories: dict[str, dict[str, list]] = {}
    for job, (args, train_dir) in jobs.items():
        runs = {}
        for name, processes in (("one", 1), ("two", 2), ("killed", 2)):
            out = work / f"{job}-{name}"
            out.mkdir(parents=True)
            shutil.copy(data, out / "distill_data.jsonl")  # realign's train stage reads the data stage's responses
            flags = [*args(out), *_batch_flags(processes)]
            if name == "killed":
                _kill_after_checkpoint(flags, processes, train_dir(out) / "checkpoint-2", work / f"{job}-{name}.kill.log")
                assert not (train_dir(out) / "trainer_state.json").exists()  # killed before the end
            _run(flags, processes, work / f"{job}-{name}.log")
            runs[name] = _losses(train_dir(out) / "trainer_state.json")
        trajectories[job] = runs
    return trajectories


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_and_resume_after_a_kill(tmp_path):
    from thinkctl.tiny import build_tiny_pair, default_tiny_dir

    pair = build_tiny_pair(default_tiny_dir())
    for job, runs in check_one_vs_two_processes(pair.reference, pair.aligned, tmp_path).items():
        steps = [step for step, _ in runs["one"]]
        assert steps == list(range(1, STEPS + 1)), (job, runs)
        for name in ("two", "killed"):
            assert [step for step, _ in runs[name]] == steps, (job, name, runs[name])  # no step lost or repeated
            assert [loss for _, loss in runs[name]] == pytest.approx([loss for _, loss in runs["one"]], rel=REL_TOL), (job, name, runs)

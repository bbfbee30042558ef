"""lm-evaluation-harness drives thinkctl: its accuracy next to thinkctl's own sweep on the same problems.

    python benchmarks/lm_eval_agreement.py                     # toy InRa model, both lm-eval routes
    python benchmarks/lm_eval_agreement.py --skip-serve        # only `lm_eval --model hf` (no vLLM needed)
    python benchmarks/lm_eval_agreement.py --write-task DIR    # only the lm-eval task (YAML + JSONL) into DIR

What it runs, in a scratch directory (``--out``):

1. **A local lm-eval task** (:func:`write_task`): ``thinkctl_tiny.jsonl``, problems from thinkctl's own
   tiny loader (``load_benchmark("tiny", "test", N, seed)``), and ``thinkctl_tiny.yaml``, a
   ``generate_until`` task whose prompt is exactly what a thinkctl sweep renders for a tokenizer without
   a chat template (``Question: …\\nAnswer:``), greedy, ``exact_match`` on the first ``\\boxed{N}``.
2. **A toy InRa checkpoint** (:func:`build_toy_inra`), trained here in seconds so that accuracies are
   neither 0 nor 1 and move with λ: a 2-layer random Qwen2 over the problems' words learns to answer
   half of the problems right and half off by one (the λ = 0 path), then an adapter layer learns the
   right answer everywhere (the λ = 1 path). Never the tiny pair: this measures agreement, not quality.
3. **thinkctl's sweep** of that checkpoint on the task's JSONL (transformers engine, greedy).
4. **lm-eval, route (a)**: ``lm_eval --model hf --model_args pretrained=CKPT,trust_remote_code=True
   --gen_kwargs thinkctl_lambda=λ`` at each λ: lm-eval loads the checkpoint as a plain transformers
   model (``modeling_inra.py``) and passes λ to ``generate``.
5. **lm-eval, route (b)**: ``thinkctl serve CKPT --effort low=1,medium=0.5,high=0`` and ``lm_eval
   --model local-completions --gen_kwargs reasoning_effort=LEVEL`` at each level: the level's λ is
   applied per request by the server; compared with the sweep at that λ.

Printed: one row per λ / effort level with lm-eval's accuracy, thinkctl's accuracy, on how many
problems the two extracted the same answer (lm-eval: the first ``\\boxed{N}`` anywhere, by regex;
thinkctl: the last ``\\boxed{}`` after the think block, graded by math-verify) and, on those, on how many
they graded alike. Exit status 1 when they graded any such problem differently. ``--json PATH`` writes
the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TASK = "thinkctl_tiny"
EOS = "<|endoftext|>"
#: lm-eval's answer extraction: the first boxed integer
BOXED_REGEX = r"\\boxed\{(-?[0-9]+)\}"
EFFORT = {"low": 1.0, "medium": 0.5, "high": 0.0}

TASK_YAML = """\
# Written by benchmarks/lm_eval_agreement.py: tiny problems from thinkctl's own loader.
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
# what a thinkctl sweep renders for a tokenizer without a chat template (thinkctl.data.render_prompt)
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
generation_kwargs:
  until: ["{eos}"]
  max_gen_toks: {max_new}
  do_sample: false
filter_list:
  - name: boxed
    filter:
      - function: regex
        regex_pattern: '{regex}'
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def write_task(out: Path, n: int = 16, seed: int = 0, max_new: int = 16) -> Path:
    """The lm-eval task directory: ``thinkctl_tiny.jsonl`` from thinkctl's tiny loader and its YAML.

    The YAML names the JSONL by absolute path, since lm-eval reads ``data_files`` from its working directory.
    """
    import thinkctl.tiny.benchmark  # noqa: F401  (registers the tiny benchmark)
    from thinkctl.data import load_benchmark

    out.mkdir(parents=True, exist_ok=True)
    problems = load_benchmark("tiny", "test", n, seed)
    data = out / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps({"id": p.id, "question": p.question, "answer": p.answer, "level": p.level}) + "\n"
                            for p in problems))
    (out / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data=json.dumps(str(data.resolve())), eos=EOS,
                                                      max_new=max_new, regex=BOXED_REGEX.replace("'", "''")))
    return out


def _tokenizer(texts: list[str], where: Path) -> Any:
    """A byte-level BPE tokenizer trained on ``texts``, saved to and loaded back from ``where``.

    ``AutoTokenizer`` gives a directory whose ``config.json`` says ``qwen2`` a ``Qwen2Tokenizer`` (its
    pre-tokenizer and BPE over the saved vocabulary and merges) whatever class was saved, so the
    tokenizer is trained through that class: every engine then tokenizes exactly as training did.
    """
    from tokenizers import AddedToken, Tokenizer, models
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config

    Qwen2Config().save_pretrained(where)  # replaced by the model's own config once it is trained
    empty = Tokenizer(models.WordLevel({EOS: 0, "<unk>": 1}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=empty, eos_token=EOS, pad_token=EOS, unk_token="<unk>").save_pretrained(where)
    tok = AutoTokenizer.from_pretrained(where).train_new_from_iterator(texts, vocab_size=600)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    tok.save_pretrained(where)
    return AutoTokenizer.from_pretrained(where)


def _response(answer: int) -> str:
    return f" <think> {answer} </think> The answer is \\boxed{{{answer}}}."


def _fit(forward: Any, params: list[Any], rows: list[tuple[list[int], list[int]]], steps: int) -> float:
    """Teacher-forced next-token loss on the response tokens of ``rows`` (prompt ids, response ids)."""
    import torch

    opt = torch.optim.AdamW(params, lr=3e-3)
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (p, r) in enumerate(rows):  # left-padded, as generation sees them
        seq = p + r
        ids[i, width - len(seq):] = torch.tensor(seq)
        mask[i, width - len(seq):] = 1
        labels[i, width - len(r):] = torch.tensor(r)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        logits = forward(input_ids=ids, attention_mask=mask).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def build_toy_inra(root: Path, task_dir: Path, steps: int = 150, seed: int = 0) -> Path:
    """A toy InRa checkpoint over a 2-layer Qwen2: λ = 0 right on the even problems only, λ = 1 right on all."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from thinkctl.inra import InRaModel, save_inra
    from thinkctl.io import iter_jsonl

    problems = list(iter_jsonl(task_dir / f"{TASK}.jsonl"))
    texts = [f"Question: {p['question']}\nAnswer:" for p in problems] + [_response(a) for a in range(-20, 200)]
    tok = _tokenizer(texts, root / "base")
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=64, intermediate_size=256, max_position_embeddings=512, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    base = Qwen2ForCausalLM(config)

    def rows(off_by_one: bool) -> list[tuple[list[int], list[int]]]:
        out = []
        for i, p in enumerate(problems):
            answer = int(p["answer"]) + (i % 2 if off_by_one else 0)
            prompt = tok(f"Question: {p['question']}\nAnswer:", add_special_tokens=False)["input_ids"]
            out.append((prompt, tok(_response(answer), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]))
        return out

    base_loss = _fit(base, list(base.parameters()), rows(off_by_one=True), steps)
    base.eval().generation_config.eos_token_id = tok.eos_token_id
    base.save_pretrained(root / "base")
    inra = InRaModel.from_base(base, num_adapter_layers=1, base_name_or_path=str(root / "base"))
    adapter_loss = _fit(inra.adapter_forward, inra.adapter_parameters(), rows(off_by_one=False), steps)
    print(f"toy model: final loss {base_loss:.3f} (base, half off by one), {adapter_loss:.3f} (adapter, all right)", flush=True)
    return save_inra(inra.eval(), root / "inra", tokenizer=tok)


@dataclass
class Row:
    """One λ (or effort level): lm-eval's and thinkctl's accuracy on the same problems, and their agreement."""

    route: str
    setting: str
    lam: float
    lm_eval_acc: float
    thinkctl_acc: float
    n: int
    same_answer: int  # problems where both extracted the same answer
    same_grade_on_same_answer: int  # of those, graded alike (a difference is a grading disagreement)


def thinkctl_sweep(ckpt: Path, task_dir: Path, lambdas: list[float], out: Path, max_new: int) -> dict[float, dict[str, dict]]:
    """thinkctl's greedy sweep of the InRa checkpoint on the task's JSONL: records by λ, then problem id."""
    import thinkctl

    with thinkctl.load_inra(ckpt) as model:
        run = thinkctl.run_sweep(model, out, benchmark=str(task_dir / f"{TASK}.jsonl"), lambdas=lambdas,
                                 max_new_tokens=max_new, temperature=0.0, overwrite=True)
    by_lam: dict[float, dict[str, dict]] = {}
    for line in (run / "results.jsonl").read_text().splitlines():
        rec = json.loads(line)
        by_lam.setdefault(float(rec["lam"]), {})[rec["problem_id"]] = rec
    return by_lam


def run_lm_eval(model: str, model_args: str, task_dir: Path, gen_kwargs: str, out: Path) -> dict[str, dict]:
    """One ``lm_eval`` command (the CLI, as a user runs it); its logged samples by problem id."""
    out.mkdir(parents=True, exist_ok=True)
    argv = ["lm_eval", "--model", model, "--model_args", model_args, "--tasks", TASK, "--include_path", str(task_dir),
            "--gen_kwargs", gen_kwargs, "--batch_size", "1", "--device", "cpu", "--log_samples", "--output_path", str(out)]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"lm_eval failed ({' '.join(argv)}):\n{proc.stderr[-4000:]}")
    files = sorted(out.rglob(f"samples_{TASK}_*.jsonl"))
    if not files:
        raise SystemExit(f"lm_eval wrote no samples under {out}")
    return {s["doc"]["id"]: s for s in map(json.loads, files[-1].read_text().splitlines())}


def compare(route: str, setting: str, lam: float, samples: dict[str, dict], records: dict[str, dict]) -> Row:
    """lm-eval's samples against thinkctl's records of the same problems at the same λ."""
    if set(samples) != set(records):
        raise SystemExit(f"{route} {setting}: lm-eval and thinkctl graded different problems")
    same_answer = same_grade = 0
    for pid, s in samples.items():
        theirs = s["filtered_resps"][0]
        theirs = None if theirs == "[invalid]" else theirs.strip()
        mine = records[pid]["answer"]
        if theirs == (mine.strip() if mine else None):  # both none counts: neither found an answer
            same_answer += 1
            same_grade += bool(s["exact_match"]) == bool(records[pid]["correct"])
    n = len(samples)
    return Row(route, setting, lam, sum(bool(s["exact_match"]) for s in samples.values()) / n,
               sum(bool(r["correct"]) for r in records.values()) / n, n, same_answer, same_grade)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_rows(ckpt: Path, task_dir: Path, sweep: dict[float, dict[str, dict]], out: Path) -> list[Row]:
    """Route (b): ``thinkctl serve`` with an effort table, lm-eval's ``local-completions`` at each level."""
    port = _free_port()
    argv = [sys.executable, "-m", "thinkctl.cli", "serve", str(ckpt), "--port", str(port), "--max-model-len", "256",
            "--served-model-name", "toy", "--effort", ",".join(f"{k}={v}" for k, v in EFFORT.items()), "--", "--max-num-seqs", "4"]
    log = out / "serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"thinkctl serve did not come up:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        model_args = f"model=toy,base_url={url}/v1/completions,tokenizer_backend=none,num_concurrent=1,max_retries=1"
        rows = []
        for level, lam in EFFORT.items():
            samples = run_lm_eval("local-completions", model_args, task_dir, f"reasoning_effort={level}", out / f"serve-{level}")
            rows.append(compare("local-completions", f"effort={level}", lam, samples, sweep[lam]))
        return rows
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def run(out: Path, n: int, seed: int, max_new: int, serve: bool, steps: int) -> list[Row]:
    task_dir = write_task(out / "task", n, seed, max_new)
    ckpt = build_toy_inra(out / "models", task_dir, steps=steps, seed=seed)
    lambdas = sorted(set(EFFORT.values()))
    sweep = thinkctl_sweep(ckpt, task_dir, lambdas, out / "sweep", max_new)
    rows = []
    for lam in lambdas:
        samples = run_lm_eval("hf", f"pretrained={ckpt},trust_remote_code=True,dtype=float32", task_dir,
                              f"thinkctl_lambda={lam}", out / f"hf-{lam}")
        rows.append(compare("hf", f"thinkctl_lambda={lam}", lam, samples, sweep[lam]))
    if serve:
        rows += serve_rows(ckpt, task_dir, sweep, out)
    return rows


def print_rows(rows: list[Row]) -> None:
    print("| lm-eval model | setting | λ | lm-eval accuracy | thinkctl accuracy | same answer | same grade on those |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.route} | {r.setting} | {r.lam:g} | {r.lm_eval_acc:.3f} | {r.thinkctl_acc:.3f} | {r.same_answer}/{r.n} | "
              f"{r.same_grade_on_same_answer}/{r.same_answer} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--n", type=int, default=16, help="tiny problems in the task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--steps", type=int, default=150, help="training steps of the toy base and of its adapter")
    ap.add_argument("--skip-serve", action="store_true", help="only route (a), lm_eval --model hf")
    ap.add_argument("--write-task", type=Path, default=None, metavar="DIR", help="only write the lm-eval task into DIR")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    if args.write_task:
        print(write_task(args.write_task, args.n, args.seed, args.max_new_tokens))
        return 0
    with tempfile.TemporaryDirectory(prefix="thinkctl-lm-eval-") as tmp:
        rows = run(args.out or Path(tmp), args.n, args.seed, args.max_new_tokens, not args.skip_serve, args.steps)
    print_rows(rows)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0 if all(r.same_grade_on_same_answer == r.same_answer for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Load on ``thinkctl serve``: mixed thinking controls against one fixed λ, robustness checks, clean stop.

    python benchmarks/serve_load.py                                # the tiny default pair (built if missing)
    python benchmarks/serve_load.py --reference R --aligned A --requests 400 --concurrency 32
    python benchmarks/serve_load.py --model INRA_CHECKPOINT --policy policy.json --effort low=1,medium=0.5,high=0

One server on a free loopback port (``--api-key`` set), started once. Two loads of the same size and
concurrency, each a bounded number of requests under a time limit, over the same prompts and
``max_tokens``, are run ``--rounds`` times alternately: *fixed* (every request at one explicit λ) and
*mixed* (explicit λ, ``reasoning_effort`` levels, ``auto``/no λ routed by the policy, thinking
budgets, soft budgets and targets, completions and chat, and about 10% invalid requests). Checked, and reported as failures:
every valid request answered (200, with the λ used in ``x-thinkctl-lambda``), every invalid one a
400, a request without the key a 401, the server never restarted (same processes throughout), and
after SIGTERM to ``thinkctl serve`` no process of its tree remains and the port is free. Printed:
requests/s, generated tokens/s and p50/p95 latency of each load, and mixed/fixed ratios.

Without ``--policy`` the router is a synthetic one (λ = 1 for questions with at most two operations,
λ = 0 otherwise) fitted on made-up sweep records: the benchmark measures the cost of routing per
request, not the policy's quality.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

API_KEY = "serve-load-benchmark"
FIXED_LAMBDA = 0.5
EFFORT = "low=1.0,medium=0.5,high=0"


@dataclass
class Request:
    """One request of a load: endpoint, body, and whether the server must accept it."""

    path: str
    body: dict
    valid: bool
    kind: str


@dataclass
class Result:
    request: Request
    status: int
    seconds: float
    tokens: int = 0
    lam_header: str | None = None


@dataclass
class Load:
    name: str
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0

    def ok(self) -> list[Result]:
        return [r for r in self.results if r.request.valid and r.status == 200]


def synthetic_policy(questions: list[str], path: Path) -> Path:
    """A bins router on ``n_op_words``: λ = 1 is right on questions with ≤ 2 operations, λ = 0 on all."""
    from thinkctl.records import SampleRecord
    from thinkctl.router import fit_router
    from thinkctl.router.features import text_features

    qs = {f"q{i}": q for i, q in enumerate(questions)}
    records = [
        SampleRecord(benchmark="synthetic", method="fused", problem_id=pid, lam=lam, correct=ok, thinking_tokens=tokens,
                     total_tokens=tokens)
        for pid, q in qs.items()
        for lam, ok, tokens in ((0.0, True, 200), (1.0, text_features(q)["n_op_words"] <= 2, 60))
    ]
    fit_router(records, estimator="bins", questions=qs, features=["n_op_words"]).save(path)
    return path


def mixed_requests(n: int, questions: list[str], prompts: list[str], max_tokens: int, seed: int) -> list[Request]:
    """``n`` requests: explicit λ, effort, auto, budgets, soft budgets, targets, chat, and ~10% invalid ones, shuffled."""
    rng = random.Random(seed)
    out: list[Request] = []
    for i in range(n):
        j = i % len(prompts)
        base = {"model": "m", "max_tokens": max_tokens, "temperature": 0}
        completion = dict(base, prompt=prompts[j])
        chat = dict(base, messages=[{"role": "user", "content": questions[j]}])
        kind = i % 10
        if kind == 0:  # invalid, six ways
            bad = [("reasoning_effort", "extreme"), ("thinking_token_budget", -3), ("thinking_token_budget", 2.5),
                   ("vllm_xargs", {"thinkctl_lambda": "fast"}), ("thinking_control", "gentle"),
                   ("thinking_target", 40)][(i // 10) % 6]
            out.append(Request("/v1/completions", dict(completion, **{bad[0]: bad[1]}), False, f"invalid {bad[0]}"))
        elif kind in (1, 2):
            lam = rng.choice([0.0, 0.25, 0.5, 1.0, 1.5])
            out.append(Request("/v1/completions", dict(completion, vllm_xargs={"thinkctl_lambda": lam}), True, "explicit λ"))
        elif kind in (3, 4):
            out.append(Request("/v1/chat/completions", dict(chat, reasoning_effort=rng.choice(["low", "medium", "high"])), True, "effort"))
        elif kind in (5, 6):
            auto = completion if kind == 5 else dict(completion, vllm_xargs={"thinkctl_lambda": "auto"})
            out.append(Request("/v1/completions", auto, True, "auto"))
        elif kind == 7 and (i // 10) % 2:
            out.append(Request("/v1/completions", dict(completion, thinking_control="soft", thinking_token_budget=rng.choice([16, 32, 64]),
                                                       vllm_xargs={"thinkctl_lambda": rng.choice([0.0, 0.5])}), True, "soft budget"))
        elif kind == 7:
            out.append(Request("/v1/completions", dict(completion, thinking_token_budget=rng.choice([8, 32, 64]),
                                                       vllm_xargs={"thinkctl_lambda": rng.choice([0.0, 0.5])}), True, "budget + λ"))
        elif kind == 9 and (i // 10) % 2:
            out.append(Request("/v1/completions", dict(completion, thinking_control="target", thinking_target=rng.choice([16, 32])),
                               True, "target"))
        elif kind == 8:
            out.append(Request("/v1/chat/completions", dict(chat, reasoning_effort="high", thinking_token_budget=16), True, "budget + effort"))
        else:
            out.append(Request("/v1/completions", dict(completion, thinking_token_budget=24), True, "budget + auto"))
    rng.shuffle(out)
    return out


def fixed_requests(n: int, prompts: list[str], max_tokens: int) -> list[Request]:
    body = {"model": "m", "max_tokens": max_tokens, "temperature": 0, "vllm_xargs": {"thinkctl_lambda": FIXED_LAMBDA}}
    return [Request("/v1/completions", dict(body, prompt=prompts[i % len(prompts)]), True, "fixed λ") for i in range(n)]


def send(url: str, request: Request, key: str | None = API_KEY, timeout: float = 300) -> Result:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url + request.path, data=json.dumps(request.body).encode(), headers=headers)
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = json.loads(r.read())
            return Result(request, r.status, time.perf_counter() - start, body["usage"]["completion_tokens"],
                          r.headers.get("x-thinkctl-lambda"))
    except urllib.error.HTTPError as e:
        e.read()
        return Result(request, e.code, time.perf_counter() - start)
    except OSError:
        return Result(request, 0, time.perf_counter() - start)


def run_load(name: str, url: str, requests: list[Request], concurrency: int, deadline: float) -> Load:
    """Send ``requests`` with ``concurrency`` in flight; requests not started by ``deadline`` are skipped."""
    load = Load(name)

    def one(request: Request) -> Result | None:
        return send(url, request) if time.monotonic() < deadline else None

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        load.results = [r for r in pool.map(one, requests) if r is not None]
    load.seconds = time.perf_counter() - start
    return load


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summarize(loads: list[Load]) -> dict:
    results = [r for load in loads for r in load.ok()]
    seconds = sum(load.seconds for load in loads)
    latencies = [r.seconds for r in results]
    return {"requests": sum(len(load.results) for load in loads), "ok": len(results), "req_s": len(results) / seconds,
            "tok_s": sum(r.tokens for r in results) / seconds, "p50": percentile(latencies, 50), "p95": percentile(latencies, 95)}


def check(loads: list[Load], failures: list[str]) -> None:
    for load in loads:
        for r in load.results:
            if r.request.valid and (r.status != 200 or r.lam_header is None):
                failures.append(f"{load.name}: valid {r.request.kind} request got {r.status} (λ header {r.lam_header})")
            elif not r.request.valid and r.status != 400:
                failures.append(f"{load.name}: {r.request.kind} request got {r.status}, not 400")


def process_tree(pid: int) -> list[int]:
    import psutil

    return [pid] + [p.pid for p in psutil.Process(pid).children(recursive=True)]


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            return True
        except OSError:
            return False


def start_server(argv: list[str], url: str, log: Path, timeout: float) -> subprocess.Popen:
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"thinkctl serve exited with {proc.returncode} while starting; log: {log}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    raise SystemExit(f"thinkctl serve did not come up within {timeout:.0f} s; log: {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="reference model dir (default: the tiny pair)")
    parser.add_argument("--aligned", help="aligned model dir (default: the tiny pair)")
    parser.add_argument("--model", help="an InRa checkpoint to serve instead of a pair")
    parser.add_argument("--policy", help="router policy (default: a synthetic one, see the module docstring)")
    parser.add_argument("--effort", default=EFFORT, help=f"effort table (default {EFFORT})")
    parser.add_argument("--requests", type=int, default=240, help="requests per load and round (≥ 200)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (≥ 16)")
    parser.add_argument("--rounds", type=int, default=1, help="fixed/mixed rounds, alternating")
    parser.add_argument("--max-tokens", type=int, default=96, dest="max_tokens")
    parser.add_argument("--time-limit", type=float, default=1800, dest="time_limit", help="seconds for all loads together")
    parser.add_argument("--start-timeout", type=float, default=600, dest="start_timeout")
    args = parser.parse_args(argv)
    if args.requests < 200 or args.concurrency < 16:
        parser.error("--requests must be ≥ 200 and --concurrency ≥ 16 (the benchmark is about load)")

    from thinkctl.data import load_benchmark, render_prompt
    from thinkctl.models import load_tokenizer

    if args.model is None and args.reference is None:
        from thinkctl.tiny import build_tiny_pair

        pair = build_tiny_pair()
        args.reference, args.aligned = str(pair.reference), str(pair.aligned)
    from thinkctl.rollout.vllm import tokenizer_source

    served = args.model or args.reference
    tokenizer = load_tokenizer(tokenizer_source(served))
    questions = [p.question for p in load_benchmark("tiny", limit=64)]
    prompts = [render_prompt(tokenizer, q) for q in questions]

    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        policy = args.policy or str(synthetic_policy(questions, Path(tmp) / "policy.json"))
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        serve = [sys.executable, "-m", "thinkctl.cli", "serve", served, "--host", "127.0.0.1", "--port", str(port),
                 "--served-model-name", "m", "--effort", args.effort, "--policy", policy]
        if args.model is None:
            serve += ["--aligned", args.aligned]
        serve += ["--", "--api-key", API_KEY, "--max-num-seqs", str(args.concurrency)]
        log = Path(tmp) / "server.log"
        print(f"starting: {' '.join(serve)}", flush=True)
        proc = start_server(serve, url, log, args.start_timeout)
        tree = process_tree(proc.pid)
        try:
            unauthenticated = send(url, fixed_requests(1, prompts, 4)[0], key=None)
            if unauthenticated.status != 401:
                failures.append(f"a request without the API key got {unauthenticated.status}, not 401")
            run_load("warm-up", url, fixed_requests(args.concurrency, prompts, 8), args.concurrency, time.monotonic() + 600)
            deadline = time.monotonic() + args.time_limit
            fixed: list[Load] = []
            mixed: list[Load] = []
            for r in range(args.rounds):
                fixed.append(run_load("fixed", url, fixed_requests(args.requests, prompts, args.max_tokens), args.concurrency, deadline))
                mixed.append(run_load("mixed", url, mixed_requests(args.requests, questions, prompts, args.max_tokens, r),
                                      args.concurrency, deadline))
            check(fixed + mixed, failures)
            if sum(len(load.results) for load in mixed) < args.requests * args.rounds:
                failures.append(f"the time limit ({args.time_limit:.0f} s) cut the mixed load short")
            if not all(alive(pid) for pid in tree):
                failures.append("a server process died during the run (restart)")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                code = None
                failures.append("thinkctl serve did not exit within 120 s of SIGTERM")
        if code not in (0, None):
            failures.append(f"thinkctl serve exited with {code} after SIGTERM")
        survivors = [pid for pid in tree if alive(pid)]
        if survivors:
            failures.append(f"processes of the server survived SIGTERM: {survivors}")
            for pid in survivors:
                os.kill(pid, signal.SIGKILL)
        if not port_free(port):
            failures.append(f"port {port} is still taken after SIGTERM")

    f, m = summarize(fixed), summarize(mixed)
    invalid = [r for load in mixed for r in load.results if not r.request.valid]
    print(f"\nserved: {served}{' + ' + args.aligned if args.model is None else ''}; {args.requests} requests × {args.rounds} "
          f"round(s) per load, concurrency {args.concurrency}, max_tokens {args.max_tokens}")
    print(f"{'load':<8}{'ok/sent':>12}{'req/s':>9}{'tok/s':>9}{'p50 s':>8}{'p95 s':>8}")
    for name, s in (("fixed", f), ("mixed", m)):
        print(f"{name:<8}{s['ok']:>6}/{s['requests']:<5}{s['req_s']:>9.2f}{s['tok_s']:>9.1f}{s['p50']:>8.2f}{s['p95']:>8.2f}")
    print(f"mixed/fixed: throughput ×{m['req_s'] / f['req_s']:.2f} (requests), ×{m['tok_s'] / f['tok_s']:.2f} (tokens); "
          f"latency p50 ×{m['p50'] / f['p50']:.2f}, p95 ×{m['p95'] / f['p95']:.2f}")
    print(f"mixed load: {len(invalid)} invalid requests, all 400: {all(r.status == 400 for r in invalid)}; "
          f"401 without key: {unauthenticated.status == 401}; after SIGTERM: {len(tree)} processes gone: {not survivors}, "
          f"port free: {port_free(port)}")
    for failure in failures:
        print(f"FAIL {failure}")
    return 1 if failures else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())

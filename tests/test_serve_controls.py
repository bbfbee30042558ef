"""``thinkctl serve``'s controls without an engine: effort tables, λ resolution, the request middleware
(against a stand-in ASGI app), the host/API-key rule, ``--`` pass-through, and process-tree shutdown.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest_vllm import save_random_model, synthetic_policy
from thinkctl.cli import main
from thinkctl.effort import EFFORT_FILE, EffortTable, effort_from_curve, effort_from_sweep, load_effort, parse_effort
from thinkctl.errors import ConfigError, DataFormatError
from thinkctl.serve import ServeConfig, check_exposure, option_values
from thinkctl.vllm_plugin import LAMBDA_KEY
from thinkctl.serve.middleware import (
    CONFIG_ENV,
    LAMBDA_HEADER,
    SOURCE_HEADER,
    Controls,
    RequestError,
    ServerControls,
    ThinkctlMiddleware,
)

TABLE = {"low": 1.0, "medium": 0.5, "high": 0.0}
CURVE = {-0.5: 260.0, 0.0: 200.0, 0.5: 120.0, 1.0: 60.0, 1.5: 40.0}


# ---------------------------------------------------------------- effort tables


def test_effort_levels_parse_and_refuse_bad_values():
    table = parse_effort("low=1.0, medium=0.5,high=0")
    assert table.levels == TABLE and table.lam("medium") == 0.5
    with pytest.raises(ConfigError, match="unknown effort level 'xhigh'; this table has low=1, medium=0.5, high=0"):
        table.lam("xhigh")
    for bad, message in [("low=x", "must be a number"), ("low=nan", "finite"), ("auto=1", "reserved"), ("Low=1", "lowercase"),
                         ("low", "level=λ"), ("low=1,low=2", "twice"), ("", "at least one level")]:
        with pytest.raises(ConfigError, match=message):
            parse_effort(bad)


def test_effort_from_curve_interpolates_fractions_of_lambda0_thinking():
    table = effort_from_curve(CURVE, {"low": 0.25, "medium": 0.5, "high": 1.0, "max": 1.15})
    # 50 tokens lies between λ=1 (60) and λ=1.5 (40): 1 + (50-60)·0.5/(40-60) = 1.25; 100 between 0.5 and 1
    assert table.levels == {"low": 1.25, "medium": 0.6667, "high": 0.0, "max": -0.25}
    assert table.meta["predicted_thinking_tokens"]["low"] == 50.0 and table.meta["unreachable"] == []
    far = effort_from_curve(CURVE, {"tiny": 0.05, "huge": 3.0})
    assert far.levels == {"tiny": 1.5, "huge": -0.5} and far.meta["unreachable"] == ["tiny", "huge"]
    with pytest.raises(DataFormatError, match="needs λ = 0"):
        effort_from_curve({0.5: 10.0, 1.0: 5.0})


def test_effort_from_sweep_summary_and_records_and_file_round_trip(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = ["benchmark,method,lam,n,accuracy,mean_thinking_tokens"] + [f"tiny,fused,{k},10,1.0,{v}" for k, v in CURVE.items()]
    (run / "summary.csv").write_text("\n".join(rows) + "\n")
    assert effort_from_sweep(run).levels == effort_from_curve(CURVE).levels
    records = tmp_path / "results.jsonl"
    records.write_text("".join(json.dumps({"benchmark": "tiny", "method": "inra", "lam": lam, "thinking_tokens": t})
                               + "\n" for lam, t in [(0.0, 100), (0.0, 300), (1.0, 50), (1.0, 50)]))
    from_records = effort_from_sweep(records, {"low": 0.25})
    assert from_records.levels == {"low": 1.0} and from_records.meta["tokens_at_lambda0"] == 200.0
    saved = effort_from_sweep(run).save(tmp_path / EFFORT_FILE)
    assert EffortTable.load(saved).levels == load_effort(str(saved)).levels == load_effort(str(run)).levels
    assert load_effort("low=2").levels == {"low": 2.0}
    with pytest.raises(ConfigError, match="neither level=λ pairs"):
        load_effort(str(tmp_path / "missing"))
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ConfigError, match="not a thinkctl effort table"):
        load_effort(str(tmp_path / "bad.json"))


# ---------------------------------------------------------------- λ resolution


@pytest.fixture(scope="module")
def think_model(tmp_path_factory) -> Path:
    pytest.importorskip("vllm", reason="the middleware runs inside vLLM's API server and uses its tokenizer cache")
    return save_random_model(tmp_path_factory.mktemp("serve_controls") / "model", seed=0)


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    """A router that sends questions with ≤ 3 numbers to λ = 1 and longer ones to λ = 0."""
    return synthetic_policy(tmp_path_factory.mktemp("policy") / "policy.json")


def controls(think_model: Path, policy: Path | None = None, dual: bool = True, **kw) -> Controls:
    settings = ServerControls(tokenizer=str(think_model), dual_stream=dual, default_lambda=1.0 if dual else None,
                              effort=EffortTable(dict(TABLE)).to_dict() if dual else None,
                              policy=str(policy) if policy else None, thinking=True, **kw)
    return Controls(settings)


def test_lambda_resolution_order_explicit_effort_auto_default(think_model, policy):
    c = controls(think_model, policy)
    body = {"prompt": "1 + 2 = <think>", "reasoning_effort": "low", "vllm_xargs": {LAMBDA_KEY: 0.25}}
    d = c.decide(body, chat=False)
    assert (d.lam, d.source) == (0.25, "explicit") and "reasoning_effort" not in body
    body = {"prompt": "1 + 2 = <think>", "reasoning_effort": "medium"}
    d = c.decide(body, chat=False)
    assert (d.lam, d.source, d.effort) == (0.5, "effort", "medium") and body["vllm_xargs"] == {LAMBDA_KEY: 0.5}
    # no λ, no effort, a policy: the router decides on the question (the template's " = <think>" stripped)
    assert c.decide({"prompt": "1 + 2 = <think>"}, chat=False).lam == 1.0
    assert c.decide({"prompt": "1 + 2 + 3 + 4 + 5 = <think>"}, chat=False).source == "auto"
    assert c.decide({"prompt": "1 + 2 + 3 + 4 + 5 = <think>"}, chat=False).lam == 0.0
    assert c.decide({"prompt": "9", "vllm_xargs": {LAMBDA_KEY: "auto"}}, chat=False).lam == 1.0
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": "1 + 2 + 3 + 4 + 5"}]}], "reasoning_effort": "auto"}
    assert c.decide(chat, chat=True).lam == 0.0
    # without a policy the checkpoint default applies
    plain_default = controls(think_model).decide({"prompt": "1 ="}, chat=False)
    assert (plain_default.lam, plain_default.source) == (1.0, "default")


def test_completions_get_token_ids_for_reasoning_usage_and_lose_them_again(think_model):
    c = controls(think_model)
    body = {"prompt": "1 ="}
    d = c.decide(body, chat=False)
    assert body["return_token_ids"] is True and d.count_reasoning and d.drop_token_ids
    payload = {"choices": [{"token_ids": [5, 6, 3, 7, 0], "prompt_token_ids": [1]}, {"token_ids": [3, 0]}], "usage": {"completion_tokens": 7}}
    out = c.complete(payload, d)
    assert out["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2}
    assert out["choices"][0]["token_ids"] is None and out["thinkctl"] == {"lambda": 1.0, "lambda_source": "default"}
    asked = {"prompt": "1 =", "return_token_ids": True}
    assert not c.decide(asked, chat=False).drop_token_ids
    streamed = {"prompt": "1 =", "stream": True}
    assert not c.decide(streamed, chat=False).count_reasoning and "return_token_ids" not in streamed
    assert not c.decide({"messages": [{"role": "user", "content": "1"}]}, chat=True).count_reasoning


@pytest.mark.parametrize(
    "body, message",
    [({"reasoning_effort": "xhigh"}, "unknown effort level 'xhigh'; this table has low=1, medium=0.5, high=0"),
     ({"reasoning_effort": 3}, "must be a string"),
     ({"vllm_xargs": {LAMBDA_KEY: "0.5"}}, "thinkctl_lambda: λ must be a finite real number"),
     ({"vllm_xargs": {LAMBDA_KEY: float("nan")}}, "must be finite"),
     ({"vllm_xargs": {LAMBDA_KEY: 1.0}, "reasoning_effort": "extreme"}, "unknown effort level"),
     ({"vllm_xargs": {LAMBDA_KEY: "auto"}}, "needs a router policy"),
     ({"vllm_xargs": {"thinkctl_level": -1}}, "non-negative integer"),
     ({"thinking_token_budget": -1}, "omit it for no budget"),
     ({"thinking_token_budget": 2.0}, "non-negative integer"),
     ({"vllm_xargs": [1]}, "must be a JSON object")],
)
def test_invalid_controls_are_request_errors(think_model, body, message):
    with pytest.raises(RequestError, match=message):
        controls(think_model).decide(dict(body, prompt="1 ="), chat=False)


def test_auto_routes_one_prompt_per_request(think_model, policy):
    with pytest.raises(RequestError, match="one prompt per request"):
        controls(think_model, policy).decide({"prompt": ["1 =", "2 ="]}, chat=False)
    assert controls(think_model, policy).decide({"prompt": [[14, 10, 15]]}, chat=False).source == "auto"


def test_thinking_budget_is_passed_as_vllm_counts_it(think_model):
    """vLLM counts a prompt's tokens after its open ``<think>`` against the budget (R1's ``<think>\\n``);
    B thinking tokens of the response need B + that tail from vLLM, on plain and dual-stream servers."""
    for dual in (True, False):
        c = controls(think_model, dual=dual)
        body = {"prompt": "1 + 2 = <think> 3", "thinking_token_budget": 2}
        c.decide(body, chat=False)
        assert body["thinking_token_budget"] == 3
        body = {"prompt": [[14, 10, 15, 12, 2, 17, 18]], "thinking_token_budget": 2}  # "1 + 2 = <think> 4 5" as ids
        c.decide(body, chat=False)
        assert body["thinking_token_budget"] == 4
        body = {"prompt": "1 + 2 =", "thinking_token_budget": 2}
        c.decide(body, chat=False)
        assert body["thinking_token_budget"] == 2
        body = {"messages": [{"role": "user", "content": "1 + 2"}], "thinking_token_budget": 2}  # template ends "= <think>"
        c.decide(body, chat=True)
        assert body["thinking_token_budget"] == 2
    with pytest.raises(RequestError, match="separate requests"):
        controls(think_model).decide({"prompt": ["1 = <think>", "1 = <think> 3"], "thinking_token_budget": 2}, chat=False)


def test_prompt_logprobs_only_at_the_default_lambda(think_model):
    """vLLM computes prompt logprobs at the checkpoint's default λ (1.0 here): other λ get a 400 that says so."""
    c = controls(think_model)
    for body in ({"prompt": "1 =", "prompt_logprobs": 1, "vllm_xargs": {LAMBDA_KEY: 0.0}},
                 {"prompt": "1 =", "echo": True, "logprobs": 1, "reasoning_effort": "high"}):
        with pytest.raises(RequestError, match="prompt logprobs are computed at this model's default λ=1"):
            c.decide(body, chat=False)
    body = {"prompt": "1 =", "prompt_logprobs": 1}
    assert c.decide(body, chat=False).lam == 1.0 and LAMBDA_KEY not in body.get("vllm_xargs", {})
    body = {"messages": [{"role": "user", "content": "1"}], "prompt_logprobs": 1, "vllm_xargs": {LAMBDA_KEY: 1.0}}
    assert c.decide(body, chat=True).source == "explicit" and "vllm_xargs" not in body


def test_dual_stream_servers_refuse_options_that_drop_lambda(think_model):
    """A --logits-processors after -- replaces thinkctl's λ processor; speculative decoding breaks both streams."""
    from thinkctl.serve import check_dual_stream_options
    from thinkctl.vllm_plugin import PROCESSOR_FQCN

    with pytest.raises(ConfigError, match="would replace thinkctl's λ processor"):
        check_dual_stream_options(["--max-num-seqs", "4", "--logits-processors", "my.mod:Proc"])
    check_dual_stream_options(["--logits-processors", PROCESSOR_FQCN, "my.mod:Proc"])
    with pytest.raises(ConfigError, match="speculative decoding is not supported"):
        check_dual_stream_options(["--speculative-config", '{"method": "eagle"}'])
    check_dual_stream_options([])


def test_plain_model_accepts_lambda0_only_and_leaves_effort_to_vllm(think_model):
    c = controls(think_model, dual=False)
    body = {"prompt": "1 =", "reasoning_effort": "high", "vllm_xargs": {LAMBDA_KEY: 0}}
    assert c.decide(body, chat=False).lam is None and body["reasoning_effort"] == "high"
    with pytest.raises(RequestError, match="needs a second stream"):
        c.decide({"prompt": "1 =", "vllm_xargs": {LAMBDA_KEY: 0.5}}, chat=False)
    with pytest.raises(RequestError, match="plain model without a λ dial"):
        c.decide({"prompt": "1 =", "reasoning_effort": "auto"}, chat=False)


# ---------------------------------------------------------------- the ASGI middleware


def _run_middleware(think_model: Path, monkeypatch, body: object, path: str = "/v1/completions",
                    response: dict | None = None, headers: list | None = None, **settings) -> tuple[list, dict | None]:
    """Send one request through ThinkctlMiddleware in front of an app that records what it receives."""
    config = think_model.parent / "controls.json"
    controls(think_model, **settings).settings.save(config)
    monkeypatch.setenv(CONFIG_ENV, str(config))
    seen: dict = {}

    async def app(scope, receive, send):
        message = await receive()
        try:
            seen["body"] = json.loads(message["body"])
        except ValueError:
            seen["body"] = message["body"]
        seen["content-length"] = dict(scope["headers"])[b"content-length"]
        reply = json.dumps(response or {"choices": [{"token_ids": [3, 0]}], "usage": {}}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json"),
                                                                                (b"content-length", str(len(reply)).encode())]})
        await send({"type": "http.response.body", "body": reply})

    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers or [(b"content-length", str(len(raw)).encode())]}
    messages: list = []

    async def receive():
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message):
        messages.append(message)

    asyncio.run(ThinkctlMiddleware(app)(scope, receive, send))
    return messages, seen.get("body")


def test_middleware_rewrites_the_request_and_completes_the_response(think_model, monkeypatch):
    messages, forwarded = _run_middleware(think_model, monkeypatch, {"prompt": "1 =", "reasoning_effort": "medium"})
    assert forwarded["vllm_xargs"] == {LAMBDA_KEY: 0.5} and forwarded["return_token_ids"] is True
    start, body = messages
    headers = dict(start["headers"])
    assert headers[LAMBDA_HEADER.encode()] == b"0.5" and headers[SOURCE_HEADER.encode()] == b"effort"
    payload = json.loads(body["body"])
    assert payload["thinkctl"] == {"lambda": 0.5, "lambda_source": "effort", "reasoning_effort": "medium"}
    assert payload["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    assert int(headers[b"content-length"]) == len(body["body"])


def test_middleware_answers_invalid_controls_with_400(think_model, monkeypatch):
    messages, forwarded = _run_middleware(think_model, monkeypatch, {"prompt": "1 =", "reasoning_effort": "turbo"})
    assert forwarded is None and messages[0]["status"] == 400
    error = json.loads(messages[1]["body"])["error"]
    assert error["code"] == 400 and error["param"] == "reasoning_effort" and "unknown effort level 'turbo'" in error["message"]


def test_middleware_leaves_unauthenticated_and_unparsable_requests_to_vllm(think_model, monkeypatch):
    import hashlib

    keys = {"api_key_sha256": [hashlib.sha256(b"secret").hexdigest()]}
    _, forwarded = _run_middleware(think_model, monkeypatch, {"prompt": "1 =", "reasoning_effort": "turbo"}, **keys)
    assert forwarded == {"prompt": "1 =", "reasoning_effort": "turbo"}, "vLLM's auth must answer first (401)"
    auth = [(b"authorization", b"Bearer secret")]
    messages, _ = _run_middleware(think_model, monkeypatch, {"prompt": "1 =", "reasoning_effort": "turbo"}, headers=auth, **keys)
    assert messages[0]["status"] == 400
    _, forwarded = _run_middleware(think_model, monkeypatch, b"{not json")
    assert forwarded == b"{not json", "vLLM answers malformed bodies itself"


# ---------------------------------------------------------------- exposure rule and pass-through


def test_option_values_read_the_last_occurrence():
    argv = ["--api-key", "a", "b", "--host=0.0.0.0", "--max-num-seqs", "4", "--host", "::1"]
    assert option_values(argv, "--api-key") == ["a", "b"] and option_values(argv, "--host") == ["::1"]
    assert option_values(argv, "--port") is None


def test_serving_beyond_loopback_needs_an_api_key(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    for host in ("127.0.0.1", "localhost", "::1"):
        check_exposure(ServeConfig("m", host=host))
    with pytest.raises(ConfigError, match="no API key is set"):
        check_exposure(ServeConfig("m", host="0.0.0.0"))
    with pytest.raises(ConfigError, match="'0.0.0.0' exposes"):
        check_exposure(ServeConfig("m", vllm_args=["--host", "0.0.0.0"]))
    check_exposure(ServeConfig("m", host="0.0.0.0", vllm_args=["--api-key", "k"]))
    check_exposure(ServeConfig("m", host="0.0.0.0", allow_unauthenticated=True))
    monkeypatch.setenv("VLLM_API_KEY", "k")
    check_exposure(ServeConfig("m", host="0.0.0.0"))


def test_cli_passes_options_after_double_dash_to_vllm(monkeypatch, capsys):
    import thinkctl.serve

    seen, original = {}, thinkctl.serve.serve
    monkeypatch.setattr(thinkctl.serve, "serve", lambda cfg: seen.setdefault("cfg", cfg) and 0)
    assert main(["serve", "M", "--port", "9000", "--effort", "low=1", "--", "--api-key", "k", "--max-num-seqs", "4"]) == 0
    cfg = seen["cfg"]
    assert cfg.port == 9000 and cfg.effort == "low=1" and list(cfg.vllm_args) == ["--api-key", "k", "--max-num-seqs", "4"]
    with pytest.raises(SystemExit):
        main(["report", "run", "--out", "x", "--", "--api-key", "k"])
    assert "takes no options after `--`" in capsys.readouterr().err
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    monkeypatch.setattr(thinkctl.serve, "serve", original)
    assert main(["serve", "M", "--host", "0.0.0.0"]) == 2
    assert "--allow-unauthenticated" in capsys.readouterr().err


# ---------------------------------------------------------------- process-tree shutdown


def test_stop_signal_ends_the_whole_process_tree(tmp_path):
    """SIGTERM to the wrapper reaches every process of the server's group; one that ignores it is killed."""
    psutil = pytest.importorskip("psutil")  # a vLLM dependency, as is thinkctl serve
    pids = tmp_path / "pids"
    tree = textwrap.dedent(f"""
        import os, signal, subprocess, sys, time
        stubborn = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{stubborn.pid}}")
        time.sleep(600)
    """)
    wrapper = textwrap.dedent(f"""
        import sys
        from thinkctl.serve import ServerProcess
        sys.exit(ServerProcess([sys.executable, "-c", {tree!r}], grace_s=2).run())
    """)
    proc = subprocess.Popen([sys.executable, "-c", wrapper], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    deadline = time.time() + 60
    while not (pids.exists() and len(pids.read_text().split()) == 2):
        assert time.time() < deadline and proc.poll() is None, "the process tree did not start"
        time.sleep(0.1)
    server, stubborn = map(int, pids.read_text().split())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    from thinkctl.serve import group_members

    assert group_members(server) == []
    for pid in (server, stubborn):  # gone, or a zombie waiting for init to reap it
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# ---------------------------------------------------------------- thinking controls in requests


def test_schedule_fields_become_the_engines_schedule_with_lambda_source_schedule(think_model, policy):
    from thinkctl.vllm_plugin import SCHEDULE_KEY

    c = controls(think_model)
    body = {"prompt": "1 + 2 = <think>", "thinking_control": "soft", "thinking_token_budget": 40, "vllm_xargs": {LAMBDA_KEY: 0.0}}
    d = c.decide(body, chat=False)
    assert (d.lam, d.source, d.control) == (0.0, "schedule", "soft") and d.headers()[1] == (SOURCE_HEADER.encode(), b"schedule")
    sched = json.loads(body["vllm_xargs"][SCHEDULE_KEY])  # a JSON string: vllm_xargs values must be flat
    assert sched["control"] == "soft" and sched["budget"] == 40 and sched["cap"] == 40
    assert sched["fast_lambda"] == TABLE["low"], "fast_lambda defaults to the effort table's low"
    assert "thinking_token_budget" not in body and "thinking_control" not in body, "the schedule's cap replaces vLLM's budget"
    assert d.summary()["thinking_control"] == "soft"
    body = {"prompt": "1 =", "thinking_control": "bias", "thinking_token_budget": 10, "fast_lambda": 1.5}
    assert c.decide(body, chat=False).source == "schedule" and json.loads(body["vllm_xargs"][SCHEDULE_KEY])["fast_lambda"] == 1.5
    completion_request = pytest.importorskip("vllm.entrypoints.openai.completion.protocol").CompletionRequest
    completion_request(model="m", **body)  # what vLLM's server validates the rewritten body with (a nested object: 400)
    body = {"prompt": "1 =", "thinking_control": "hard", "thinking_token_budget": 10}
    assert c.decide(body, chat=False).source == "default" and body["thinking_token_budget"] == 10


def test_target_mode_starts_where_the_router_predicts_the_target_length(think_model, policy):
    """The synthetic router predicts 100 thinking tokens at λ = 0 and 30 at λ = 1 on every question:
    a target of 65 starts at λ = 0.5, one beyond the predicted range at the nearest end."""
    from thinkctl.router import Router
    from thinkctl.vllm_plugin import SCHEDULE_KEY

    router = Router.load(policy)
    assert router.lambda_for_length(65, "1 + 2") == 0.5 and router.lambda_for_length(500, "1 + 2") == 0.0
    assert router.lambda_for_length(30, "1 + 2 + 3 + 4 + 5") == 1.0
    c = controls(think_model, policy)
    body = {"prompt": "1 + 2 = <think>", "thinking_control": "target", "thinking_target": 65}
    d = c.decide(body, chat=False)
    assert (d.lam, d.source) == (0.5, "schedule") and body["vllm_xargs"][LAMBDA_KEY] == 0.5
    assert json.loads(body["vllm_xargs"][SCHEDULE_KEY]) == {"control": "target", "budget": 65, "floor": 55, "cap": 75, "fast_lambda": 1.0,
                                               "ramp_start": 0.3, "ramp_end": 0.7, "target_tolerance": 0.15, "bias_margin": 0.25}
    explicit = {"prompt": "1 =", "thinking_control": "target", "thinking_target": 65, "vllm_xargs": {LAMBDA_KEY: -0.5}}
    assert c.decide(explicit, chat=False).lam == -0.5, "a λ the client chose is the start"


@pytest.mark.parametrize("body, field, message", [
    ({"thinking_control": "gentle", "thinking_token_budget": 5}, "thinking_control", "must be one of hard, soft, bias, target"),
    ({"thinking_control": "soft"}, "thinking_token_budget", "acts against a budget"),
    ({"thinking_control": "target"}, "thinking_target", "positive integer"),
    ({"thinking_control": "target", "thinking_target": 0}, "thinking_target", "positive integer"),
    ({"thinking_control": "soft", "thinking_token_budget": 5, "thinking_target": 3}, "thinking_target", "target control"),
    ({"thinking_control": "soft", "thinking_token_budget": 5, "fast_lambda": "fast"}, "fast_lambda", "λ must be"),
    ({"fast_lambda": 1.0}, "fast_lambda", "setting of thinking_control"),
    ({"thinking_control": "hard"}, "thinking_token_budget", "budget alone"),
])
def test_invalid_schedule_fields_are_request_errors_naming_the_field(think_model, body, field, message):
    with pytest.raises(RequestError, match=message) as info:
        controls(think_model).decide(dict(body, prompt="1 ="), chat=False)
    assert info.value.param == field


def test_plain_servers_refuse_schedules(think_model):
    with pytest.raises(RequestError, match="dual-stream"):
        controls(think_model, dual=False).decide({"prompt": "1 =", "thinking_control": "soft", "thinking_token_budget": 5}, chat=False)

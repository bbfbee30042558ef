"""Per-request thinking control in ``thinkctl serve``: λ from an explicit value, an effort level or a router.

vLLM's engine takes λ per request as ``SamplingParams.extra_args["thinkctl_lambda"]`` (see
:mod:`thinkctl.vllm_plugin.lam`), but clients ask in other terms: OpenAI's ``reasoning_effort``, or
nothing at all and the server should decide from the prompt. This ASGI middleware runs inside vLLM's
API-server process (``vllm serve --middleware``), in front of ``/v1/completions`` and
``/v1/chat/completions``. It reads the JSON body, resolves one λ per request and writes it into
``vllm_xargs``, so the engine sees nothing but an explicit λ:

1. ``vllm_xargs.thinkctl_lambda`` as a number: that λ ("explicit"; it wins over effort);
2. ``reasoning_effort`` naming a level of the server's effort table: that level's λ ("effort");
3. ``"auto"`` (as ``thinkctl_lambda`` or ``reasoning_effort``), or no λ and no effort on a server
   started with ``--policy``: the router's λ for this prompt ("auto"); the router reads the
   question's text features and, when the client sends it, ``vllm_xargs.thinkctl_level``;
4. otherwise the checkpoint's ``default_lambda`` ("default").

Thinking budget: ``thinking_token_budget`` B means B thinking tokens of the response, as thinkctl
counts them. vLLM also counts the tokens a prompt put inside its open think block (R1's template
ends ``<think>\n``), so the middleware passes vLLM B plus that tail: the chat template's generation
prompt for chat, the prompt's own tokens for completions (prompts with different tails in one
request are refused: one budget cannot fit them all).

Thinking controls: ``thinking_control`` ``"soft"`` (λ ramps towards ``fast_lambda`` as thinking nears
``thinking_token_budget``), ``"bias"`` (the ``</think>`` bias ramp over the budget's last 30%) or
``"target"`` (land near ``thinking_target`` thinking tokens), ``"hard"`` being the budget alone.
``fast_lambda`` defaults to the effort table's ``low`` (else 1.0); target mode starts, unless the
request chose a λ or an effort level, at the λ the router (``--policy``) predicts to think
``thinking_target`` tokens on this prompt, else the effort table's calibrated curve. The schedule goes
to the engine in ``vllm_xargs.thinkctl_schedule`` (:mod:`thinkctl.vllm_plugin.schedule`), cap included,
and the λ-source header says ``schedule``, the body's ``thinkctl`` object ``thinking_control``.

Prompt logprobs (``prompt_logprobs``, or ``echo`` with ``logprobs``) are computed by vLLM at the
checkpoint's default λ (see :mod:`thinkctl.vllm_plugin.lam`); a request that asks for them at another
λ gets a 400 saying so, and at the default λ they are served.

An unknown level, an invalid λ, ``auto`` without a policy, a negative or non-integer
``thinking_token_budget`` (vLLM itself would read -1 as "no budget"; here the field is omitted for
that) or a malformed control is answered with HTTP 400 and an OpenAI-style error body, before the engine sees the request; the server keeps
serving. The λ used comes back in the ``x-thinkctl-lambda`` header (and ``x-thinkctl-lambda-source``)
on every response, streamed or not, and in a top-level ``"thinkctl"`` object of non-streamed JSON
bodies: ``{"lambda": 0.5, "lambda_source": "effort", "reasoning_effort": "medium"}``.

Reasoning-token usage: chat completions get ``usage.completion_tokens_details.reasoning_tokens`` from
the ``thinkctl`` reasoning parser; vLLM's text completions report none, so for non-streamed
completions of a ``<think>`` model this middleware asks the engine for the token ids and fills the
field with :func:`thinkctl.grading.count_thinking_tokens` (the ids are removed again unless the client
asked for them).

Configuration arrives from ``thinkctl serve`` as a JSON file named by ``$THINKCTL_SERVE_CONFIG``
(:class:`ServerControls`). Requests that fail vLLM's own API-key check are passed on untouched, so
vLLM's authentication answers them (401) before any thinkctl validation does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from thinkctl.effort import RESERVED_LEVELS, EffortTable
from thinkctl.errors import ConfigError, InvalidLambdaError
from thinkctl.fusion import validate_lambda
from thinkctl.thinking import engine_thinking_budget, prompt_thinking_tail, think_token_ids
from thinkctl.vllm_plugin import LAMBDA_KEY

log = logging.getLogger(__name__)

#: environment variable naming the JSON file with the server's :class:`ServerControls`
CONFIG_ENV = "THINKCTL_SERVE_CONFIG"
#: response headers carrying the λ a request ran at, and where it came from
LAMBDA_HEADER = "x-thinkctl-lambda"
SOURCE_HEADER = "x-thinkctl-lambda-source"
#: top-level field of non-streamed JSON responses with the same information
BODY_FIELD = "thinkctl"
#: ``vllm_xargs`` key with the query's difficulty level, a router feature only the client knows
LEVEL_KEY = "thinkctl_level"
AUTO = "auto"
#: endpoint path → whether it is the chat endpoint
ROUTES = {"/v1/completions": False, "/v1/chat/completions": True}
#: a question no prompt contains, to find where a chat template puts the question
_SENTINEL = "\x00thinkctl-question\x00"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class ServerControls:
    """What the middleware needs to know about the served model, written by ``thinkctl serve``."""

    tokenizer: str
    dual_stream: bool
    default_lambda: float | None = None
    effort: dict[str, Any] | None = None
    policy: str | None = None
    #: whether the tokenizer has ``<think>``/``</think>``: completions then get reasoning-token usage
    thinking: bool = False
    #: sha256 hex digests of the API keys vLLM checks (none: the server is open)
    api_key_sha256: list[str] = field(default_factory=list)

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ServerControls:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


class RequestError(Exception):
    """A request's thinking controls are invalid: answered with HTTP 400 and this message."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param

    def body(self) -> bytes:
        error = {"message": self.message, "type": "BadRequestError", "param": self.param, "code": 400}
        return json.dumps({"error": error}).encode()


@dataclass(frozen=True)
class Decision:
    """How one request is run and how its response is completed."""

    lam: float | None = None
    source: str | None = None
    effort: str | None = None
    #: completions: fill reasoning_tokens from the token ids, and drop the ids the client did not ask for
    count_reasoning: bool = False
    drop_token_ids: bool = False
    #: the thinking control acting on the request (soft, bias, target), None without one
    control: str | None = None

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.lam is None:
            return []
        return [(LAMBDA_HEADER.encode(), repr(self.lam).encode()), (SOURCE_HEADER.encode(), str(self.source).encode())]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lambda": self.lam, "lambda_source": self.source}
        if self.effort is not None:
            out["reasoning_effort"] = self.effort
        if self.control is not None:
            out["thinking_control"] = self.control
        return out


class Controls:
    """λ resolution and response completion for one server (see the module docstring)."""

    def __init__(self, settings: ServerControls) -> None:
        self.settings = settings
        self.effort = EffortTable.from_dict(settings.effort) if settings.effort else None
        self.router = None
        if settings.policy:
            from thinkctl.router import Router

            self.router = Router.load(settings.policy)
        self._tokenizer: Any = None
        self._template: tuple[str, str] | None = None

    @property
    def tokenizer(self) -> Any:
        """The served tokenizer, with vLLM's caching of ``get_vocab``/``all_special_ids``: the thinking
        count reads both per response, and uncached they cost milliseconds on a real vocabulary."""
        if self._tokenizer is None:
            from vllm.tokenizers.hf import get_cached_tokenizer

            from thinkctl.models import load_tokenizer

            self._tokenizer = get_cached_tokenizer(load_tokenizer(self.settings.tokenizer))
        return self._tokenizer

    # ---------------------------------------------------------------- requests

    def decide(self, body: dict[str, Any], chat: bool) -> Decision:
        """Resolve the request's λ and rewrite ``body`` for the engine; :class:`RequestError` if invalid."""
        xargs = body.get("vllm_xargs")
        if xargs is None:
            xargs = {}
        elif not isinstance(xargs, dict):
            raise RequestError("vllm_xargs must be a JSON object", "vllm_xargs")
        level = xargs.pop(LEVEL_KEY, None)
        if level is not None and (not isinstance(level, int) or isinstance(level, bool) or level < 0):
            raise RequestError(f"{LEVEL_KEY} must be a non-negative integer (the query's difficulty level), got {level!r}",
                               f"vllm_xargs.{LEVEL_KEY}")
        explicit = xargs.get(LAMBDA_KEY)
        has_explicit = LAMBDA_KEY in xargs and explicit != AUTO
        if has_explicit:
            try:
                explicit = validate_lambda(explicit)
            except InvalidLambdaError as e:
                raise RequestError(f"{LAMBDA_KEY}: {e}", f"vllm_xargs.{LAMBDA_KEY}") from None
        budget = body.get("thinking_token_budget")
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 0):
            # stricter than vLLM, which reads -1 as "no budget": a negative budget is more often a client's
            # arithmetic slip than a request for unlimited thinking, and omitting the field says that plainly
            raise RequestError(f"thinking_token_budget must be a non-negative integer (omit it for no budget), got {budget!r}",
                               "thinking_token_budget")
        schedule = self._schedule_fields(body, budget)
        effort = body.get("reasoning_effort")
        wants_auto = explicit == AUTO or effort == AUTO
        if not self.settings.dual_stream:
            decision = self._plain(has_explicit, explicit, wants_auto)
        else:
            decision = self._dual(body, chat, has_explicit, explicit, effort, wants_auto, level)
            if self._wants_prompt_logprobs(body, chat):
                if decision.lam != self.settings.default_lambda:
                    raise RequestError(
                        f"prompt logprobs are computed at this model's default λ={self.settings.default_lambda:g}, and "
                        f"this request runs at λ={decision.lam:g} ({decision.source}): ask for them without a λ, effort "
                        "or policy choice, or drop prompt_logprobs (and echo) to sample at this λ", "prompt_logprobs")
                xargs.pop(LAMBDA_KEY, None)  # the engine's default; a named λ would be refused there
            else:
                xargs[LAMBDA_KEY] = decision.lam
            # effort is expressed by λ here; the chat template must not shorten thinking a second time
            body.pop("reasoning_effort", None)
        if schedule is not None:
            decision = self._apply_schedule(body, chat, xargs, decision, schedule, explicit if has_explicit else None, level)
        elif budget is not None and self.settings.thinking:
            body["thinking_token_budget"] = engine_thinking_budget(budget, self.thinking_tail(body, chat))
        if xargs:
            body["vllm_xargs"] = xargs
        else:
            body.pop("vllm_xargs", None)
        if not chat and self.settings.thinking and not body.get("stream"):
            wanted = bool(body.get("return_token_ids"))
            body["return_token_ids"] = True
            decision = Decision(decision.lam, decision.source, decision.effort, True, not wanted, decision.control)
        return decision

    def _schedule_fields(self, body: dict[str, Any], budget: int | None) -> Any:
        """The request's ``thinking_control``/``thinking_target``/``fast_lambda`` as a sampling config
        (None for no control or ``hard``, which is ``thinking_token_budget`` alone); the fields are
        removed from the body, vLLM does not know them."""
        from thinkctl.sampling import CONTROLS, SamplingConfig, ScheduleConfig

        control, target, fast = (body.pop(k, None) for k in ("thinking_control", "thinking_target", "fast_lambda"))
        if control is None:
            for name, value in (("thinking_target", target), ("fast_lambda", fast)):
                if value is not None:
                    raise RequestError(f"{name} is a setting of thinking_control (soft, bias or target); send it with one", name)
            return None
        if control not in CONTROLS:
            raise RequestError(f"thinking_control must be one of {', '.join(CONTROLS)}, got {control!r}", "thinking_control")
        if control == "hard":
            if budget is None:
                raise RequestError("thinking_control 'hard' is the thinking_token_budget alone: send thinking_token_budget",
                                   "thinking_token_budget")
            return None
        if not self.settings.dual_stream or not self.settings.thinking:
            raise RequestError(f"thinking_control {control!r} moves λ while the model thinks: it needs a dual-stream model "
                               "(an InRa checkpoint or a reference with --aligned) whose tokenizer has <think> and </think>",
                               "thinking_control")
        if fast is not None:
            try:
                fast = validate_lambda(fast)
            except InvalidLambdaError as e:
                raise RequestError(f"fast_lambda: {e}", "fast_lambda") from None
        elif self.effort is not None and "low" in self.effort.levels:
            fast = self.effort.levels["low"]  # the effort table's fast end, as the control sweeps use it
        if control == "target" and (target is None or isinstance(target, bool) or not isinstance(target, int) or target < 1):
            raise RequestError(f"thinking_control 'target' needs thinking_target, a positive integer of thinking tokens, "
                               f"got {target!r}", "thinking_target")
        if control != "target" and target is not None:
            raise RequestError("thinking_target is the target control's setting (thinking_control: target)", "thinking_target")
        if control in ("soft", "bias") and not budget:
            raise RequestError(f"thinking_control {control!r} acts against a budget: send thinking_token_budget ≥ 1",
                               "thinking_token_budget")
        try:
            return SamplingConfig(max_thinking_tokens=budget, schedule=ScheduleConfig(control=control, thinking_target=target,
                                                                                      fast_lambda=fast))
        except ConfigError as e:
            raise RequestError(str(e), "thinking_control") from None

    def _apply_schedule(self, body: dict[str, Any], chat: bool, xargs: dict[str, Any], decision: Decision, sampling: Any,
                        explicit: float | None, level: int | None) -> Decision:
        """Write the schedule into ``vllm_xargs``; target mode without a chosen λ starts where the router
        (else the effort table's calibrated curve) predicts ``thinking_target`` thinking tokens for this prompt."""
        from thinkctl.controls import LengthModel
        from thinkctl.rollout.vllm import schedule_extra_args

        lam = decision.lam
        target = sampling.schedule.thinking_target
        if target is not None and explicit is None and decision.source != "effort":
            if self.router is not None:
                lam = self.router.lambda_for_length(target, self.question(body, chat), level=level)
            elif self.effort is not None:
                lam = LengthModel.from_table(self.effort).start_lambda(target, lam)
            xargs[LAMBDA_KEY] = lam
        xargs.update(schedule_extra_args(sampling))
        body.pop("thinking_token_budget", None)  # the schedule's cap (vllm_plugin.schedule) replaces vLLM's count
        return Decision(lam, "schedule", decision.effort, control=sampling.schedule.control)

    def _plain(self, has_explicit: bool, explicit: Any, wants_auto: bool) -> Decision:
        """A plain model has no λ dial: λ = 0 is accepted, anything else is refused; effort is vLLM's."""
        if wants_auto:
            raise RequestError("'auto' chooses λ, and this server runs a plain model without a λ dial "
                               "(serve an InRa checkpoint or a reference with --aligned)", LAMBDA_KEY)
        if has_explicit and explicit != 0.0:
            raise RequestError(f"{LAMBDA_KEY}={explicit:g} needs a second stream, and this server runs a plain model "
                               "(λ = 0 only); serve an InRa checkpoint or a reference with --aligned", LAMBDA_KEY)
        return Decision()

    def _dual(self, body: dict[str, Any], chat: bool, has_explicit: bool, explicit: Any, effort: Any,
              wants_auto: bool, level: int | None) -> Decision:
        effort_lam = None
        if effort is not None and effort != AUTO:
            if not isinstance(effort, str):
                raise RequestError(f"reasoning_effort must be a string, got {effort!r}", "reasoning_effort")
            if self.effort is None:
                raise RequestError("this server has no effort table (start thinkctl serve with --effort)", "reasoning_effort")
            try:
                effort_lam = self.effort.lam(effort)
            except ConfigError as e:
                raise RequestError(f"reasoning_effort: {e} (or {', '.join(sorted(RESERVED_LEVELS))})",
                                   "reasoning_effort") from None
        if has_explicit:
            return Decision(explicit, "explicit")
        if effort_lam is not None:
            return Decision(effort_lam, "effort", effort)
        if wants_auto or self.router is not None:
            if self.router is None:
                raise RequestError("'auto' needs a router policy: start thinkctl serve with --policy POLICY", LAMBDA_KEY)
            return Decision(self.router.route(self.question(body, chat), level=level), "auto")
        return Decision(self.settings.default_lambda, "default")

    @staticmethod
    def _wants_prompt_logprobs(body: dict[str, Any], chat: bool) -> bool:
        """Whether vLLM will compute prompt logprobs: asked directly, or a completion's ``echo`` with ``logprobs``."""
        return body.get("prompt_logprobs") is not None or (not chat and bool(body.get("echo")) and body.get("logprobs") is not None)

    def thinking_tail(self, body: dict[str, Any], chat: bool) -> int | None:
        """Tokens the request's prompt puts inside an open think block (see :func:`prompt_thinking_tail`).

        Chat: the chat template's generation prompt (it follows the last message, so any question
        shows it); completions: each prompt's own tokens, which must agree across the request's prompts.
        """
        ids = think_token_ids(self.tokenizer)
        if ids is None:
            return None
        if chat:
            _, suffix = self.template()
            return prompt_thinking_tail(self.tokenizer(suffix, add_special_tokens=False)["input_ids"], *ids)
        prompt = body.get("prompt")
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)):
            prompt = [prompt]
        if not isinstance(prompt, list):
            return None  # vLLM answers a malformed prompt itself
        tails = {prompt_thinking_tail(p if isinstance(p, list) else self.tokenizer(str(p), add_special_tokens=False)["input_ids"], *ids)
                 for p in prompt}
        if len(tails) > 1:
            raise RequestError("thinking_token_budget counts the thinking a prompt has already opened, and these prompts "
                               "open it differently: send them as separate requests", "thinking_token_budget")
        return tails.pop() if tails else None

    def question(self, body: dict[str, Any], chat: bool) -> str:
        """The text the router judges: the last user message, or the completion prompt without its template."""
        if chat:
            messages = body.get("messages")
            users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"] if isinstance(messages, list) else []
            if not users:
                raise RequestError("λ 'auto' routes on the last user message, and the request has none", "messages")
            content = users[-1].get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            return str(content or "")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompt = self.tokenizer.decode(prompt)
        if not isinstance(prompt, str):
            raise RequestError("λ 'auto' routes one prompt per request: send several prompts as separate requests "
                               "(or give thinkctl_lambda or reasoning_effort)", "prompt")
        return self._strip_template(prompt)

    def template(self) -> tuple[str, str]:
        """The text :func:`thinkctl.data.render_prompt` puts before and after a question (computed once)."""
        if self._template is None:
            from thinkctl.data import render_prompt

            prefix, _, suffix = render_prompt(self.tokenizer, _SENTINEL).partition(_SENTINEL)
            self._template = (prefix, suffix)
        return self._template

    def _strip_template(self, prompt: str) -> str:
        """The question inside a prompt rendered by :func:`thinkctl.data.render_prompt` (else the prompt)."""
        prefix, suffix = self.template()
        if len(prompt) >= len(prefix) + len(suffix) and prompt.startswith(prefix) and prompt.endswith(suffix):
            return prompt[len(prefix): len(prompt) - len(suffix)]
        return prompt

    # ---------------------------------------------------------------- responses

    def complete(self, payload: dict[str, Any], decision: Decision) -> dict[str, Any]:
        """Add the λ used and, for completions, reasoning-token usage to a non-streamed JSON response."""
        if decision.lam is not None:
            payload[BODY_FIELD] = decision.summary()
        if decision.count_reasoning:
            from thinkctl.grading import count_thinking_tokens

            choices = payload.get("choices") or []
            total = sum(count_thinking_tokens(c.get("token_ids") or [], self.tokenizer) for c in choices)
            usage = payload.get("usage") or {}
            usage["completion_tokens_details"] = {**(usage.get("completion_tokens_details") or {}), "reasoning_tokens": total}
            payload["usage"] = usage
            if decision.drop_token_ids:
                for c in choices:
                    c["token_ids"] = c["prompt_token_ids"] = None
        return payload

    def authorized(self, scope: Scope) -> bool:
        """Whether the request passes vLLM's API-key check (always, on a server without keys)."""
        if not self.settings.api_key_sha256:
            return True
        auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.encode()).hexdigest()
        return any(secrets.compare_digest(digest, k) for k in self.settings.api_key_sha256)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ConnectionAbortedError("client disconnected before sending the request body")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _with_header(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k.lower() != name] + [(name, value)]


class ThinkctlMiddleware:
    """Pure ASGI middleware (see the module docstring); vLLM adds it by its import path."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app
        path = os.environ.get(CONFIG_ENV)
        if not path:
            raise ConfigError(f"{CONFIG_ENV} is not set: ThinkctlMiddleware is started by `thinkctl serve`")
        self.controls = Controls(ServerControls.load(path))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if scope["type"] != "http" or scope.get("method") != "POST" or path not in ROUTES or not self.controls.authorized(scope):
            return await self.app(scope, receive, send)
        try:
            raw = await _read_body(receive)
        except ConnectionAbortedError:
            return None
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):  # vLLM answers malformed bodies itself
            return await self.app(scope, _replay(raw, receive), send)
        try:
            decision = self.controls.decide(body, chat=ROUTES[path])
        except RequestError as e:
            return await _send_json(send, 400, e.body())
        raw = json.dumps(body).encode()
        scope = dict(scope, headers=_with_header(list(scope.get("headers") or []), b"content-length", str(len(raw)).encode()))
        await self.app(scope, _replay(raw, receive), _ResponseWriter(send, decision, self.controls))


def _replay(raw: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``raw`` as the whole body, then defers to the client (disconnects)."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


async def _send_json(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _ResponseWriter:
    """The ``send`` given to vLLM: adds the λ headers; completes successful non-streamed JSON bodies."""

    def __init__(self, send: Send, decision: Decision, controls: Controls) -> None:
        self.send, self.decision, self.controls = send, decision, controls
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers") or []) + self.decision.headers()
            message = dict(message, headers=headers)
            content_type = dict(headers).get(b"content-type", b"")
            if message.get("status") == 200 and content_type.startswith(b"application/json"):
                self.start = message  # held until the whole body is in
                return
            return await self.send(message)
        if message["type"] == "http.response.body" and self.start is not None:
            self.chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(self.chunks)
            try:
                body = json.dumps(self.controls.complete(json.loads(body), self.decision)).encode()
            except (ValueError, AttributeError, TypeError):
                log.exception("could not add thinkctl fields to a response; sending it unchanged")
            start, self.start = self.start, None
            start["headers"] = _with_header(start["headers"], b"content-length", str(len(body)).encode())
            await self.send(start)
            return await self.send({"type": "http.response.body", "body": body})
        return await self.send(message)

"""The fake provider's ASGI app: routes, the call pipeline (auth, idempotency, answer, limits, latency, faults)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from workers.providers.fake import wire
from workers.providers.fake.common import Answer, Draws, ErrorReply, ParsedRequest, Wire
from workers.providers.fake.config import FakeConfig, LimitConfig, merge_config
from workers.providers.fake.ledger import IDEMPOTENT_REPLAY, SUCCESS, Ledger
from workers.providers.fake.limits import Decision, RateLimiter, RateState
from workers.providers.fake.parse import BadRequest, parse_anthropic, parse_chat, parse_gemini, parse_responses
from workers.providers.fake.replay import ReplayStore
from workers.providers.fake.simulate import (
    Profile,
    build_profile,
    extract_judged,
    invalid_judge_answer,
    judge_answer,
    judge_is_invalid,
    labelled,
    simulated_answer,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ROUTES = {"/v1/chat/completions": Wire.chat, "/v1/responses": Wire.responses, "/v1/messages": Wire.anthropic}
_GEMINI_PATH = re.compile(r"^/v1(?:beta)?/(?:models/)?(?P<model>[^:]+):generateContent$")
_FAULTS = ("hang", "drop", "429", "500", "529", "malformed", "content_filter", "error_body")
_ERROR_BODY = b'{"error": {"code": 502, "message": "Upstream provider error (injected)", "metadata": {}}}'
_MALFORMED_BODY = b'{"id": "fake-malformed", "choices": [{"message": {"content": "trunc'
_JSON = (b"content-type", b"application/json")


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


@dataclass(frozen=True)
class _Call:
    """One model call being served."""

    req: ParsedRequest
    prompt_sha256: str
    attempt: int  # calls of this (model, prompt) the ledger saw before this one
    headers: dict[str, str]
    query: str
    request_id: str


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    start = [_JSON, (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _drop(receive: Receive, send: Send) -> None:
    """Close the connection without a response: abort the socket under uvicorn (the client reads EOF)."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is not None and callable(getattr(transport, "abort", None)):
        transport.abort()
        await asyncio.sleep(0)  # the server sees the connection lost before the app returns
        return
    # another server: start a response and break it off
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4096")]})
    raise ConnectionAbortedError("fake provider: dropped connection")


def _route(method: str, path: str) -> tuple[Wire, str] | None:
    if method != "POST":
        return None
    if path in _ROUTES:
        return _ROUTES[path], ""
    match = _GEMINI_PATH.match(path)
    return (Wire.gemini, match["model"]) if match else None


def _parse(route: tuple[Wire, str], raw: bytes) -> ParsedRequest:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    kind, model = route
    if kind is Wire.gemini:
        return parse_gemini(body, model)
    return {Wire.chat: parse_chat, Wire.responses: parse_responses, Wire.anthropic: parse_anthropic}[kind](body)


def _bearer(headers: dict[str, str]) -> str:
    value = headers.get("authorization", "")
    return value[7:].strip() if value[:7].lower() == "bearer " else ""


class FakeApp:
    """The ASGI app. State lives here: config, ledger, rate windows, the idempotency store, replay data."""

    def __init__(self, config: FakeConfig) -> None:
        self.ledger = Ledger()
        self.limiter = RateLimiter()
        self._replay_cache: dict[str, ReplayStore] = {}
        self._stored: dict[str, tuple[bytes, wire.Headers]] = {}
        self._closing = asyncio.Event()
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(6)
        self._apply(config)

    # ---- control ----------------------------------------------------------------------------------------

    def _apply(self, config: FakeConfig) -> None:
        replay = None
        if config.mode == "replay" and config.replay_dir:
            if config.replay_dir not in self._replay_cache:
                self._replay_cache[config.replay_dir] = ReplayStore.load(config.replay_dir)
            replay = self._replay_cache[config.replay_dir]
        self.config = config
        self.replay = replay
        self._profiles: dict[str, Profile] = {}
        self._rng = random.Random(config.seed)

    def update(self, **patch: Any) -> FakeConfig:
        """Change the config at run time (``latency`` and ``faults`` merge field by field; other keys replace)."""
        self._apply(merge_config(self.config, patch))
        return self.config

    def reset(self) -> None:
        """Clear the ledger, the rate windows and the idempotency store."""
        self.ledger.reset()
        self.limiter.reset()
        self._stored.clear()

    def close(self) -> None:
        """End hanging calls early (on shutdown)."""
        self._closing.set()

    # ---- ASGI -------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            if scope["path"].startswith("/_fake/"):
                await self._admin(scope, receive, send)
                return
            route = _route(scope["method"], scope["path"])
            if route is None:
                await _send(send, 404, wire.dumps({"error": {"message": f"no route {scope['path']}", "code": 404}}))
                return
            await self._call(route, scope, await _read_body(receive), receive, send)
        except _ClientGone:
            return

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/_fake/ledger" and method == "GET":
            by_unit = parse_qs(scope.get("query_string", b"").decode()).get("by_unit") == ["true"]
            await _send(send, 200, wire.dumps(self.ledger.snapshot(by_unit)))
        elif path == "/_fake/reset" and method == "POST":
            self.reset()
            await _send(send, 200, b'{"ok":true}')
        elif path == "/_fake/config" and method == "GET":
            await _send(send, 200, wire.dumps(self.config.model_dump(mode="json")))
        elif path == "/_fake/config" and method == "PUT":
            await self._put_config(await _read_body(receive), send)
        else:
            await _send(send, 404, wire.dumps({"error": f"no route {method} {path}"}))

    async def _put_config(self, raw: bytes, send: Send) -> None:
        try:
            patch = json.loads(raw or b"{}")
            if not isinstance(patch, dict):
                raise ValueError("the config must be a JSON object")
            config = self.update(**patch)
        except (ValueError, OSError) as exc:
            await _send(send, 422, wire.dumps({"error": str(exc)}))
            return
        await _send(send, 200, wire.dumps(config.model_dump(mode="json")))

    # ---- a model call -----------------------------------------------------------------------------------

    def _next_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):010x}"

    async def _call(self, route: tuple[Wire, str], scope: Scope, raw: bytes, receive: Receive, send: Send) -> None:
        request_id = self._next_id()
        try:
            req = _parse(route, raw)
        except BadRequest as exc:
            self.ledger.finish("", "", "400", self.ledger.begin("", "").generation)
            body = wire.error(route[0], 400, str(exc), request_id)
            await _send(send, 400, body, wire.id_headers(route[0], request_id))
            return
        prompt_sha256 = hashlib.sha256(req.prompt.encode()).hexdigest()
        ticket = self.ledger.begin(req.model, prompt_sha256)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        call = _Call(req, prompt_sha256, ticket.attempt, headers, scope.get("query_string", b"").decode(), request_id)
        outcome = "500"
        try:
            outcome = await self._serve(call, receive, send)
        finally:
            self.ledger.finish(req.model, prompt_sha256, outcome, ticket.generation, headers.get("idempotency-key"))

    def _has_key(self, call: _Call) -> bool:
        if call.req.wire is Wire.gemini:
            key = call.headers.get("x-goog-api-key", "").strip()
            return bool(key) or any(v.strip() for v in parse_qs(call.query).get("key", []))
        if call.req.wire is Wire.anthropic and call.headers.get("x-api-key", "").strip():
            return True
        return bool(_bearer(call.headers))

    async def _error(self, call: _Call, send: Send, status: int, message: str) -> str:
        body = wire.error(call.req.wire, status, message, call.request_id)
        await _send(send, status, body, wire.id_headers(call.req.wire, call.request_id))
        return str(status)

    async def _serve(self, call: _Call, receive: Receive, send: Send) -> str:
        """Answer one call; returns its outcome for the ledger."""
        if not self._has_key(call):
            return await self._error(call, send, 401, "Missing or empty API key.")
        key = call.headers.get("idempotency-key")
        if key and self.config.honour_idempotency_key and key in self._stored:
            body, headers = self._stored[key]
            await _send(send, 200, body, headers)
            return IDEMPOTENT_REPLAY
        answer = self._resolve(call)
        if isinstance(answer, ErrorReply):
            return await self._error(call, send, answer.status, answer.message)
        model = call.req.model
        amount = answer.usage.input + answer.usage.output
        decision = self.limiter.check(model, self._limit(model), amount, time.monotonic())
        if not decision.allowed:
            return await self._rate_limited(call, send, decision)
        self.ledger.admitted(model, amount, decision.state.window_tokens)
        await self._latency()
        return await self._deliver(call, answer, decision.state, receive, send)

    async def _rate_limited(self, call: _Call, send: Send, decision: Decision) -> str:
        wait, kind = decision.retry_after_s, decision.exceeded
        message = f"Rate limit reached for {call.req.model} ({kind} per minute). Please try again in {wait}s."
        body = wire.error(call.req.wire, 429, message, call.request_id, retry_after_s=wait, kind=kind)
        headers = [
            *wire.id_headers(call.req.wire, call.request_id),
            (b"retry-after", str(wait).encode()),
            *wire.rate_headers(call.req.wire, decision.state),
        ]
        await _send(send, 429, body, headers)
        return "429"

    async def _deliver(self, call: _Call, answer: Answer, state: RateState, receive: Receive, send: Send) -> str:
        """Send the answer, or the fault drawn for this attempt."""
        fault = self._fault(call)
        if fault == "hang" and not await self._hang(receive):
            return "hang"
        if fault == "drop":
            await _drop(receive, send)
            return "drop"
        if fault in ("429", "500", "529"):
            return await self._fault_status(call, send, int(fault))
        if fault == "error_body" and call.req.wire is Wire.chat:
            # OpenRouter after routing: HTTP 200 whose body is an error, not an answer
            await _send(send, 200, _ERROR_BODY, wire.id_headers(call.req.wire, call.request_id))
            return "error_body"
        if fault == "error_body":
            return await self._error(call, send, 502, "Upstream error (injected).")
        if fault == "malformed":
            await _send(send, 200, _MALFORMED_BODY, wire.id_headers(call.req.wire, call.request_id))
            return "malformed"
        body = wire.success(call.req, answer, call.request_id, content_filter=fault == "content_filter")
        headers = [*wire.id_headers(call.req.wire, call.request_id), *wire.rate_headers(call.req.wire, state)]
        key = call.headers.get("idempotency-key")
        if key and self.config.honour_idempotency_key:
            self._stored[key] = (body, headers)
        await _send(send, 200, body, headers)
        return SUCCESS

    async def _fault_status(self, call: _Call, send: Send, status: int) -> str:
        if status == 429:
            body = wire.error(call.req.wire, 429, "Rate limit reached (injected).", call.request_id, retry_after_s=1)
            headers = [*wire.id_headers(call.req.wire, call.request_id), (b"retry-after", b"1")]
            await _send(send, 429, body, headers)
            return "429"
        if status == 529 and call.req.wire is Wire.anthropic:
            return await self._error(call, send, 529, "Overloaded (injected).")
        if status == 529:
            return await self._error(call, send, 503, "The service is overloaded (injected).")
        return await self._error(call, send, 500, "Internal server error (injected).")

    # ---- answers, limits, latency, faults ---------------------------------------------------------------

    def _is_judge(self, model: str) -> bool:
        name = model.rsplit("/", 1)[-1]
        return any(model.startswith(p) or name.startswith(p) for p in self.config.judge_prefixes)

    def _profile(self, model: str) -> Profile:
        profile = self._profiles.get(model)
        if profile is None:
            models = self.config.models
            profile = build_profile(model, models.get(model) or models.get(model.rsplit("/", 1)[-1]))
            self._profiles[model] = profile
        return profile

    def _resolve(self, call: _Call) -> Answer | ErrorReply:
        req, config = call.req, self.config
        if self._is_judge(req.model):
            if judge_is_invalid(config.seed, req.model, req.prompt, call.attempt, config.judge_invalid_rate):
                return invalid_judge_answer(req.prompt)
            return self._judge(req)
        if self.replay is not None:
            return self.replay.answer(req.model, req.user)
        return simulated_answer(config.seed, req.model, req.prompt, self._profile(req.model), req.wants_reasoning)

    def _judge(self, req: ParsedRequest) -> Answer:
        if self.replay is None:
            return judge_answer(self.config.seed, req.model, req.prompt)
        judged, request = extract_judged(req.prompt)
        labels = self.replay.judgement(judged, request) if judged is not None else None
        return invalid_judge_answer(req.prompt) if labels is None else labelled(req.prompt, labels)

    def _limit(self, model: str) -> LimitConfig | None:
        limits = self.config.limits
        return limits.get(model) or limits.get("*")

    async def _latency(self) -> None:
        latency = self.config.latency
        mean = latency.mean_s
        if mean <= 0:
            return
        if latency.distribution == "uniform":
            delay = self._rng.uniform(mean * (1 - latency.spread), mean * (1 + latency.spread))
        elif latency.distribution == "lognormal":
            sigma = latency.spread
            delay = self._rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)
        else:
            delay = mean
        await asyncio.sleep(max(0.0, delay))

    def _fault(self, call: _Call) -> str | None:
        """The fault of this attempt, drawn from (seed, model, prompt, attempt); shares add up in _FAULTS order."""
        f = self.config.faults
        rates = (
            f.rate_hang,
            f.rate_drop,
            f.rate_429,
            f.rate_500,
            f.rate_529,
            f.rate_malformed,
            f.rate_content_filter,
            f.rate_error_body,
        )
        if not any(rates):
            return None
        draw = Draws(self.config.seed, call.req.model, call.prompt_sha256, call.attempt, "fault").uniform()
        edge = 0.0
        for name, rate in zip(_FAULTS, rates, strict=True):
            edge += rate
            if draw < edge:
                return name
        return None

    async def _hang(self, receive: Receive) -> bool:
        """Wait ``hang_s`` (less on shutdown); False when the client gave up first."""
        gone = asyncio.create_task(_disconnected(receive))
        closing = asyncio.create_task(self._closing.wait())
        first = asyncio.FIRST_COMPLETED
        done, pending = await asyncio.wait({gone, closing}, timeout=self.config.hang_s, return_when=first)
        for task in pending:
            task.cancel()
        return gone not in done


def create_app(config: FakeConfig | None = None) -> FakeApp:
    """The fake provider's ASGI app (replay data, if any, is loaded here, once)."""
    return FakeApp(config or FakeConfig())

"""What the API checks before routing, parsing or the token check: which Host a request names, which site a write
comes from, and how much body it may send. Pure ASGI (docs/security.md has the threat model).

``HostGuard``. With tokens off (an embedded ``defeater api`` on loopback, ``service/auth/binding.py``) anything that
reaches the port may do everything, so two things a browser does for a web page must not reach it:

- DNS rebinding: a page of ``evil.example`` re-points its name at 127.0.0.1 and calls the API as same-origin. Its
  requests still say ``Host: evil.example:8000``: only loopback names (``127.0.0.0/8``, ``[::1]``, ``localhost``) on
  the port served, and ``api.allowed_hosts``, are answered; anything else gets 421.
- Cross-site writes: a form of any site can POST ``text/plain`` or multipart here without a CORS preflight. A write
  whose ``Sec-Fetch-Site`` is ``cross-site`` or ``same-site``, or whose ``Origin`` is neither the request's own
  (the Host's name and port) nor an allowed host, gets 403. Non-browser clients (curl, httpx, the CLI) send neither
  header and pass, uploads included; reads stay open (without CORS headers a page cannot read the answers).

With tokens on, a browser never attaches the bearer token by itself, so a cross-site page can do nothing a stranger
could not: no Origin check. The Host check there is the operator's choice: on when ``api.allowed_hosts`` is set.
``/healthz`` and ``/readyz`` are exempt from the Host check (a kubelet names the pod's address, and they tell
nothing).

``BodyLimit``. A body is read only up to its route's limit (``route_limit``), counted while it arrives by wrapping
``receive``: a declared ``Content-Length`` over the limit is refused before a byte is read, a chunked body as soon
as it passes the limit; either way 413 problem+json and ``Connection: close`` (the rest is never read, nor spooled
to a temporary file by the multipart parser). Where tokens are required, a request carrying a body to ``/v1/``
without a bearer token gets its 401 before any of it is read: FastAPI parses a JSON body before the token check
runs. Starlette's own body limit answers in plain text and only once the app answers, hence this one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api_errors import problem_response
from service.auth.binding import is_loopback
from service.auth.guard import MISSING, REALM
from service.errors import (
    CrossSiteRequest,
    DefeaterError,
    FieldError,
    MisdirectedRequest,
    PayloadTooLarge,
    Unauthorized,
)
from service.settings import HOST_PATTERN, Settings

PROBES = frozenset({"/healthz", "/readyz"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}
# a multipart dataset upload may carry this much besides its file: boundaries, part headers, name and description
MULTIPART_FRAMING = 1024 * 1024
_HUMAN_LABELS = re.compile(r"/v1/jobs/[^/]+/human-labels")


@dataclass(frozen=True)
class Authority:
    """A Host header or an Origin's host: the name (lower case, IPv6 in brackets) and the port, when given."""

    name: str
    port: int | None


def parse_authority(value: str) -> Authority | None:
    """``name[:port]`` as an ``Authority``; ``None`` for anything else (userinfo, paths, spaces)."""
    match = HOST_PATTERN.fullmatch(value.strip().lower())
    if match is None:
        return None
    return Authority(match["name"], int(match["port"]) if match["port"] else None)


async def refuse(error: DefeaterError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer ``error`` as problem+json and close the connection: the request's body, if any, is never read."""
    response = problem_response(error, Request(scope))
    response.headers["Connection"] = "close"
    await response(scope, receive, send)


class HostGuard:
    """Refuse requests naming a Host this API does not answer to, and cross-site writes while tokens are off."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.tokens_off = settings.auth.required is False
        hosts = settings.api.allowed_hosts
        self.allowed = None if hosts is None else [a for a in map(parse_authority, hosts) if a is not None]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        checked = self.tokens_off or self.allowed is not None
        if scope["type"] != "http" or not checked or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        error = self.refusal(scope, Headers(scope=scope))
        if error is not None:
            await refuse(error, scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope, headers: Headers) -> DefeaterError | None:
        """Why this request is refused, or ``None``."""
        host = parse_authority(headers.get("host", ""))
        if host is None or not self.answers_to(host, scope):
            return MisdirectedRequest(
                f"this API answers only to {self.describe(scope)}; the Host header names another "
                "(DEFEATER_API__ALLOWED_HOSTS adds names)",
                [FieldError("Host", "not a name this API answers to")],
            )
        if self.tokens_off and scope["method"] not in SAFE_METHODS:
            return self.cross_site(headers, _port(host, scope["scheme"]))
        return None

    def cross_site(self, headers: Headers, host: Authority) -> DefeaterError | None:
        """A refusal for a write a browser sent from another site; ``None`` for same-origin and non-browser ones.
        ``host`` is the request's Host, its port filled in."""
        site = headers.get("sec-fetch-site", "").lower()
        if site in ("cross-site", "same-site"):
            return _cross_site("Sec-Fetch-Site", f"a {site} request")
        origin = headers.get("origin")
        if origin is None:
            return None
        parts = urlsplit(origin.strip())
        named = parse_authority(parts.netloc) if parts.scheme in DEFAULT_PORTS and not parts.path else None
        if named is None or (_port(named, parts.scheme) != host and not self.allows(named, parts.scheme)):
            return _cross_site("Origin", "not the origin of this API")
        return None

    def answers_to(self, host: Authority, scope: Scope) -> bool:
        """Loopback names on the port served, or an allowed host (on its port, when the entry names one)."""
        if self.allows(host, scope["scheme"]):
            return True
        served = _served_port(scope)
        return is_loopback(host.name) and (served is None or _port(host, scope["scheme"]).port == served)

    def allows(self, host: Authority, scheme: str) -> bool:
        """Whether ``api.allowed_hosts`` names ``host``."""
        port = _port(host, scheme).port
        return any(a.name == host.name and a.port in (None, port) for a in self.allowed or [])

    def describe(self, scope: Scope) -> str:
        served = _served_port(scope)
        names = "127.0.0.1, localhost or [::1]" + (f" on port {served}" if served is not None else "")
        return names + "".join(f", {a.name}" + (f":{a.port}" if a.port else "") for a in self.allowed or [])


def _port(host: Authority, scheme: str) -> Authority:
    """``host`` with its port, the scheme's default when it names none."""
    return host if host.port is not None else Authority(host.name, DEFAULT_PORTS.get(scheme))


def _served_port(scope: Scope) -> int | None:
    server = scope.get("server")
    return int(server[1]) if server and server[1] is not None else None


def _cross_site(field: str, why: str) -> CrossSiteRequest:
    return CrossSiteRequest(
        "a write sent by a web page of another site is refused while API tokens are off (the page would act for "
        "whoever opened it); send it from the CLI, curl or a script, or turn tokens on",
        [FieldError(field, why)],
    )


@dataclass(frozen=True)
class RouteLimit:
    """A route's body limit: ``nominal`` bytes, as ``setting`` sets it, plus ``framing`` for multipart's wrapping."""

    nominal: int
    setting: str
    framing: int = 0

    @property
    def enforced(self) -> int:
        return self.nominal + self.framing

    def too_large(self, declared: int | None = None) -> PayloadTooLarge:
        size = f"the body is {declared} bytes" if declared is not None else "the body grew past the limit as it came"
        return PayloadTooLarge(
            f"{size}; the limit is {self.nominal} bytes for this endpoint ({self.setting} sets it)",
            [FieldError("body", f"over {self.nominal} bytes")],
        )


def route_limit(settings: Settings, method: str, path: str, content_type: str) -> RouteLimit:
    """The body limit of a route: dataset imports, jobs and human labels have their own; other bodies are JSON."""
    path = path.rstrip("/")
    if method == "POST" and path == "/v1/datasets":
        framing = MULTIPART_FRAMING if content_type.lower().startswith("multipart/") else 0
        return RouteLimit(settings.imports.max_bytes, "DEFEATER_IMPORTS__MAX_BYTES", framing)
    if method == "POST" and path == "/v1/jobs":
        return RouteLimit(settings.api.max_job_bytes, "DEFEATER_API__MAX_JOB_BYTES")
    if method == "POST" and _HUMAN_LABELS.fullmatch(path):
        return RouteLimit(settings.api.max_human_labels_bytes, "DEFEATER_API__MAX_HUMAN_LABELS_BYTES")
    return RouteLimit(settings.api.max_json_bytes, "DEFEATER_API__MAX_JSON_BYTES")


class BodyLimit:
    """Read a request's body only for a caller that sent a token (where tokens are required), and only up to its
    route's limit."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.tokens_required = settings.auth.required is not False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        if headers is None or not _has_body(headers):
            await self.app(scope, receive, send)
            return
        if self.tokens_required and scope["path"].startswith("/v1/") and not _has_bearer(headers):
            await refuse(Unauthorized(MISSING, headers={"WWW-Authenticate": REALM}), scope, receive, send)
            return
        limit = route_limit(self.settings, scope["method"], scope["path"], headers.get("content-type", ""))
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit.enforced:
            await refuse(limit.too_large(int(declared)), scope, receive, send)
            return
        capped = _CappedBody(receive, send, limit.enforced)
        try:
            await self.app(scope, capped.receive, capped.send)
        except Exception:
            # what the app made of the cut-off body (a parse error, our own 413) gives way to the 413 below
            if not capped.cut or capped.started:
                raise
        if capped.cut and not capped.started:
            await refuse(limit.too_large(), scope, receive, send)


class _CappedBody:
    """``receive`` counting the body's bytes and raising once they pass ``limit``; ``send`` that drops whatever the
    app answers after that (the middleware answers 413 itself)."""

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive, self._send, self.limit = receive, send, limit
        self.read = 0
        self.cut = False
        self.started = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.read += len(message.get("body", b""))
            if self.read > self.limit:
                self.cut = True
                raise PayloadTooLarge("the body is over its limit")  # the app's answer to it is dropped
        return message

    async def send(self, message: Message) -> None:
        if self.cut and not self.started:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def _has_body(headers: Headers) -> bool:
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


def _has_bearer(headers: Headers) -> bool:
    """What ``HTTPBearer`` accepts: ``Authorization: Bearer <something>``; whether it is valid is the guard's call."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(credentials.strip())

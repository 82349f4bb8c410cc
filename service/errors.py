"""The service's error tree. Every error renders as RFC 9457 problem+json naming what was wrong."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

_LOCATIONS = {"body", "query", "path", "header", "cookie"}


@dataclass(frozen=True)
class FieldError:
    """One thing wrong with the input: where (``field``, and ``line`` for files) and why."""

    field: str
    message: str
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "message": self.message}
        if self.line is not None:
            out["line"] = self.line
        return out

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        field = "" if self.field in ("line", "") else f"{self.field}: "
        return f"{where}{field}{self.message}"


@dataclass
class DefeaterError(Exception):
    """Base of every error the service reports to a client."""

    detail: str
    errors: list[FieldError] = field(default_factory=list)
    status: int = 400
    type: str = "bad-request"
    title: str = "Bad request"
    # response headers the error needs (``WWW-Authenticate`` on a 401)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.detail)

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://defeater.dev/problems/{self.type}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if self.errors:
            body["errors"] = [e.as_dict() for e in self.errors]
        return body


@dataclass
class ValidationFailed(DefeaterError):
    """The input was understood but breaks a rule; ``errors`` names each field."""

    status: int = 422
    type: str = "validation-error"
    title: str = "Invalid input"


@dataclass
class NotFound(DefeaterError):
    """A named resource does not exist."""

    status: int = 404
    type: str = "not-found"
    title: str = "Not found"


@dataclass
class Conflict(DefeaterError):
    """The request clashes with what exists (a name in use, an idempotency key reused)."""

    status: int = 409
    type: str = "conflict"
    title: str = "Conflict"


@dataclass
class Unauthorized(DefeaterError):
    """No valid API token came with the request (none, unknown or revoked); never echoes what was sent."""

    status: int = 401
    type: str = "unauthorized"
    title: str = "Unauthorized"


@dataclass
class Forbidden(DefeaterError):
    """The token is valid but lacks the scope the endpoint needs; the detail names that scope."""

    status: int = 403
    type: str = "forbidden"
    title: str = "Forbidden"


@dataclass
class CrossSiteRequest(Forbidden):
    """A write sent by a web page of another site while tokens are off: a browser would act for whoever opened it."""

    type: str = "cross-site-request"
    title: str = "Cross-site request refused"


@dataclass
class MisdirectedRequest(DefeaterError):
    """A request naming a Host this API does not answer to (a DNS-rebound name, when tokens are off)."""

    status: int = 421
    type: str = "misdirected-request"
    title: str = "Misdirected request"


@dataclass
class PayloadTooLarge(DefeaterError):
    """An upload over the configured limit."""

    status: int = 413
    type: str = "payload-too-large"
    title: str = "Payload too large"


@dataclass
class UnsupportedMediaType(DefeaterError):
    """A body in a format the endpoint does not read."""

    status: int = 415
    type: str = "unsupported-media-type"
    title: str = "Unsupported media type"


def field_name(loc: Sequence[int | str]) -> str:
    """A pydantic location as a field path: ``("body", "cases", 3, "defeat_type")`` -> ``cases[3].defeat_type``."""
    parts = list(loc)
    if parts and parts[0] in _LOCATIONS:
        source, parts = parts[0], parts[1:]
        if source == "header" and parts:
            return "-".join(w.capitalize() for w in str(parts[0]).replace("_", "-").split("-"))
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def validation_message(err: Any) -> str:
    """A pydantic error's message, phrased for a person."""
    if err.get("type") == "missing":
        return "required field is missing"
    if err.get("type") == "json_invalid":
        return f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'syntax error')})"
    msg: str = err.get("msg", "invalid")
    return msg.removeprefix("Value error, ")


def field_errors(errors: Iterable[Any], prefix: Sequence[int | str] = ()) -> list[FieldError]:
    """FieldErrors from pydantic's ``errors()``, each located under ``prefix``."""
    return [FieldError(field_name([*prefix, *e.get("loc", ())]), validation_message(e)) for e in errors]

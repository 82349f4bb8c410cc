"""The service's error tree. Every error renders as RFC 9457 problem+json naming what was wrong."""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

_LOCATIONS = {"body", "query", "path", "header", "cookie"}
# the quoted choices of pydantic's enum and literal errors: "'a', 'b' or 'c'"
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")


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


@dataclass
class Unavailable(DefeaterError):
    """The database is away or too slow just now; ``Retry-After`` says when to ask again."""

    status: int = 503
    type: str = "unavailable"
    title: str = "Service unavailable"


@dataclass
class TooManyRequests(DefeaterError):
    """A client holds as many of something (event streams) as it may; ``Retry-After`` says when to ask again."""

    status: int = 429
    type: str = "too-many-requests"
    title: str = "Too many requests"


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


def unknown_value(kind: str, value: object, valid: Sequence[str], shown: str | None = None, most: int = 40) -> str:
    """The message for a value outside a fixed vocabulary: the closest valid one, if any is close, and all of them
    (or ``shown``, when the vocabulary reads better as a pattern; at most ``most`` of them).

    ``unknown field 'filtres': did you mean 'filters'? (valid: dataset_id, filters, ...)``
    """
    text = f"unknown {kind} {value!r}"
    close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1)
    if close:
        text += f": did you mean {close[0]!r}?"
    listed = shown or ", ".join(map(str, valid[:most])) + (f", ... ({len(valid)} in all)" if len(valid) > most else "")
    return f"{text} (valid: {listed})" if listed else text


def validation_message(err: Any, model: type[BaseModel] | None = None) -> str:
    """A pydantic error's message, phrased for a person. With the validated ``model``, an unknown key is answered
    with the keys that model takes there."""
    kind = err.get("type")
    if kind == "missing":
        return "required field is missing"
    if kind == "json_invalid":
        return f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'syntax error')})"
    if kind == "extra_forbidden":
        loc = _without_source(err.get("loc", ()))
        keys = _keys_at(model, loc[:-1]) if loc else None
        return unknown_value("field", loc[-1] if loc else "?", keys or [])
    if kind in ("enum", "literal_error"):
        return unknown_value("value", err.get("input"), _QUOTED.findall(str(err.get("ctx", {}).get("expected", ""))))
    msg: str = err.get("msg", "invalid")
    return msg.removeprefix("Value error, ")


def field_errors(
    errors: Iterable[Any], prefix: Sequence[int | str] = (), model: type[BaseModel] | None = None
) -> list[FieldError]:
    """FieldErrors from pydantic's ``errors()``, each located under ``prefix``; ``model`` is what was validated
    (for the valid keys beside an unknown one)."""
    return [FieldError(field_name([*prefix, *e.get("loc", ())]), validation_message(e, model)) for e in errors]


def _without_source(loc: Sequence[int | str]) -> list[int | str]:
    parts = list(loc)
    return parts[1:] if parts and parts[0] in _LOCATIONS else parts


def _keys_at(model: type[BaseModel] | None, loc: Sequence[int | str]) -> list[str] | None:
    """The keys the object at ``loc`` inside ``model`` takes, or None when the path leaves known models."""
    node: Any = model
    for part in loc:
        node = _unwrap(node)
        if isinstance(part, int):
            node = get_args(node)[0] if get_origin(node) in (list, tuple, set) and get_args(node) else None
        elif _is_model(node):
            found = node.model_fields.get(part)
            node = found.annotation if found is not None else None
        elif get_origin(node) is dict and len(get_args(node)) == 2:
            node = get_args(node)[1]
        else:
            node = None
        if node is None:
            return None
    node = _unwrap(node)
    if not _is_model(node):
        return None
    return [info.alias or name for name, info in node.model_fields.items() if not info.exclude]


def _unwrap(node: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` as ``X``; of other unions, the first member that is a model or list."""
    while True:
        origin = get_origin(node)
        if origin is Annotated:
            node = get_args(node)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(node) if a is not type(None)]
            if len(members) == 1:
                node = members[0]
            else:
                return next((m for m in members if _is_model(m) or get_origin(m) is list), None)
        else:
            return node


def _is_model(node: Any) -> bool:
    return isinstance(node, type) and issubclass(node, BaseModel)


def reason_counts(reasons: dict[str, int]) -> str:
    """Failed units by reason as one phrase, the most frequent first: ``rate_limited: 2, bad_request: 1`` (a job's
    error line, written by the engine, and its warnings, composed by the service, say it alike)."""
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items(), key=lambda item: (-item[1], item[0])))

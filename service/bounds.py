"""Input every endpoint shares the bounds of: no NUL character in any string (Postgres text cannot hold one), and
JSON nested at most ``MAX_JSON_DEPTH`` deep. ``check_request`` applies them to a request's query, path and JSON body
(``create_app`` puts it on every router behind the token check); uploads check their records with ``json_problem``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import Request
from pydantic import TypeAdapter, ValidationError

from service.errors import FieldError, ValidationFailed, field_name

# objects and arrays inside one another; no request of this API needs more than a handful
MAX_JSON_DEPTH = 64
NUL = "\x00"
NUL_MESSAGE = "contains a NUL character (\\u0000), which cannot be stored"
TOO_DEEP = f"nested deeper than {MAX_JSON_DEPTH} levels (objects and arrays inside one another)"
_JSON_TYPES = ("application/json",)


def json_problem(value: Any, where: Sequence[int | str] = ()) -> FieldError | None:
    """The first string holding a NUL, or container nested too deep, in ``value``, in document order; None if none.

    Walks with a stack of its own, not recursion: the input's depth is what is being checked.
    """
    stack: list[tuple[Any, tuple[int | str, ...], int]] = [(value, tuple(where), 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, str):
            if NUL in node:
                return FieldError(field_name(path), NUL_MESSAGE)
            continue
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            return FieldError(field_name(path), TOO_DEEP)
        children: Iterable[tuple[int | str, Any]] = node.items() if isinstance(node, dict) else enumerate(node)
        pushed: list[tuple[Any, tuple[int | str, ...], int]] = []
        for key, child in children:
            if isinstance(key, str) and NUL in key:
                return FieldError(field_name(path), f"the key {key!r} {NUL_MESSAGE}")
            pushed.append((child, (*path, key), depth + 1))
        stack.extend(reversed(pushed))
    return None


def refuse(error: FieldError) -> ValidationFailed:
    return ValidationFailed(f"{error.field}: {error.message}", [error])


async def check_request(request: Request) -> None:
    """Refuse (422 naming the field) a NUL in a query or path parameter, and a NUL or too deep nesting in a JSON
    body, before validation or any query. A body that is not JSON is left to its endpoint."""
    for name, value in (*request.query_params.multi_items(), *request.path_params.items()):
        if NUL in name or (isinstance(value, str) and NUL in value):
            raise refuse(FieldError(name.replace(NUL, "\\u0000"), NUL_MESSAGE))
    if not _json_body(request):
        return
    try:
        body = await request.json()  # parsed already for the endpoint (Starlette keeps it): no second parse
    except (ValueError, RecursionError):
        return  # FastAPI answers a body it cannot parse itself (service/api_errors.py)
    problem = json_problem(body)
    if problem is not None and (problem.message == TOO_DEEP or _valid(request, body)):
        raise refuse(problem)
    # else the body breaks the endpoint's schema too: its validation errors (an unknown key...) say more, and the
    # request is refused with them before anything is stored


def _valid(request: Request, body: Any) -> bool:
    """Whether ``body`` passes the endpoint's own body schema."""
    annotation: Any = getattr(getattr(request.scope["route"].body_field, "field_info", None), "annotation", Any)
    try:
        TypeAdapter(annotation).validate_python(body)
    except ValidationError:
        return False
    return True


def _json_body(request: Request) -> bool:
    """Whether the endpoint reads its body as JSON (a multipart or raw upload checks its own records)."""
    if getattr(request.scope.get("route"), "body_field", None) is None:
        return False
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    return media in _JSON_TYPES or media.endswith("+json")

"""The error answers as the OpenAPI spec declares them: every one is RFC 9457 problem+json with the ``Problem`` schema.

Routers name the answers an operation can give (``problem(404, "no such job")``); ``create_app`` adds those every
protected operation can give (``PROTECTED``) and ``document_problems`` puts the ``Problem`` schema in the spec,
in place of FastAPI's default 422 (``HTTPValidationError``, a body this API never sends).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"
# what service/errors.py's DefeaterError.problem() renders
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "An error (RFC 9457). `errors` names each field that was wrong, with the line of a file.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "a URI naming the kind of error"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string", "description": "the path the request named"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                    "line": {"type": "integer"},
                },
            },
        },
    },
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before asking again", "schema": {"type": "integer"}}}


def problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An error answer for ``responses=``: problem+json with the ``Problem`` schema."""
    answer: dict[str, Any] = {"description": description, "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}}}
    if headers:
        answer["headers"] = headers
    return answer


# what any operation behind the token check may answer, besides its own errors
PROTECTED: dict[int | str, dict[str, Any]] = {
    401: problem("no valid API token (none, unknown or revoked)"),
    403: problem("the token lacks the scope this request needs; with tokens off, a write from another site"),
    # answered by service/middleware.py, before the endpoint runs
    413: problem("the body is over this endpoint's limit (refused while it is read)"),
    421: problem(
        "the Host is not one this API answers to (tokens off: loopback names only; see DEFEATER_API__ALLOWED_HOSTS)"
    ),
    503: problem("the database cannot be reached just now; ask again after `Retry-After`", _RETRY_AFTER),
}
NO_JOB: dict[int | str, dict[str, Any]] = {404: problem("no such job")}
VALIDATION = "a field is invalid: `errors` names each one"


def document_problems(app: FastAPI) -> None:
    """Make ``app.openapi()`` declare problem+json errors: the ``Problem`` schema in its components, every 422
    FastAPI generated (``HTTPValidationError``) rewritten as what the API sends (service/api_errors.py), and the 400
    of an undecodable body on every operation that takes one."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        spec = build()  # FastAPI builds it once and keeps it
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        if "Problem" not in schemas:
            for operations in spec["paths"].values():
                for operation in operations.values():
                    _declare_problems(operation)
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            schemas["Problem"] = PROBLEM_SCHEMA
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def _declare_problems(operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    invalid = responses.get("422")
    if invalid is not None and PROBLEM_JSON not in invalid.get("content", {}):
        responses["422"] = problem(VALIDATION)
    if "requestBody" in operation:
        # Starlette's answer to a body it cannot decode (not UTF-8, a broken multipart), before validation
        responses.setdefault("400", problem("the body cannot be parsed"))

"""Exception handlers: every error leaves the API as RFC 9457 problem+json naming the field."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.db.session import Trouble, trouble
from service.errors import DefeaterError, FieldError, Unavailable, ValidationFailed, field_errors
from service.settings import DatabaseTimeouts

log = logging.getLogger("defeater.api")
PROBLEM_JSON = "application/problem+json"
# what a 503 (the database away or slow) asks the client to wait before trying again, unless the settings say
RETRY_AFTER_S = DatabaseTimeouts().retry_after_s
_TROUBLE_DETAIL = {
    Trouble.unreachable: "the database cannot be reached just now; try again shortly",
    Trouble.slow: "the database is too busy to answer in time just now; try again shortly",
}


def problem_response(error: DefeaterError, request: Request) -> JSONResponse:
    return JSONResponse(
        error.problem(request.url.path), status_code=error.status, media_type=PROBLEM_JSON, headers=error.headers
    )


async def _on_defeater_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DefeaterError)
    return problem_response(exc, request)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = field_errors(exc.errors(), model=_body_model(request))
    detail = f"{errors[0].field}: {errors[0].message}" if errors else "invalid request"
    return problem_response(ValidationFailed(detail, errors), request)


def _body_model(request: Request) -> type[BaseModel] | None:
    """The model the endpoint reads its JSON body into, so that an unknown key is answered with the known ones."""
    body_field = getattr(request.scope.get("route"), "body_field", None)
    annotation = getattr(getattr(body_field, "field_info", None), "annotation", None)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, RecursionError):  # FastAPI's parse of a JSON body nested beyond Python's stack
        return problem_response(too_deep("body"), request)
    titles = {404: "Not found", 405: "Method not allowed"}
    error = DefeaterError(
        detail=str(exc.detail),
        status=exc.status_code,
        type="http-error",
        title=titles.get(exc.status_code, "HTTP error"),
    )
    response = problem_response(error, request)
    for key, value in (exc.headers or {}).items():
        response.headers[key] = value
    if exc.status_code == 405:
        response.headers["Allow"] = allowed_methods(request, response.headers.get("Allow", ""))
    return response


def too_deep(field: str) -> ValidationFailed:
    """The 422 for JSON nested too deeply to read at all (Python's parser ran out of stack)."""
    error = FieldError(field, "nested too deeply (objects and arrays inside one another)")
    return ValidationFailed(f"{field}: {error.message}", [error])


def allowed_methods(request: Request, named: str) -> str:
    """Every method the app serves at the request's path. Starlette's 405 names only those of the first route that
    matches the path (``named``), though FastAPI makes one route per method: ``GET`` and ``PATCH
    /v1/model-configs/{id}`` are two. The spec lists them all (routes outside it, such as ``/metrics``, are one)."""
    methods = {m.strip().upper() for m in named.split(",") if m.strip()}
    for path, operations in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path)), request.url.path):
            methods.update(method.upper() for method in operations)
    return ", ".join(sorted(methods))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    kind = trouble(exc)
    if kind is not None:  # the database is restarting, failing over or too slow: a client should simply ask again
        log.warning("database %s on %s %s (%s)", kind.value, request.method, request.url.path, type(exc).__name__)
        settings = getattr(request.app.state, "settings", None)
        retry_after = settings.database_timeouts.retry_after_s if settings is not None else RETRY_AFTER_S
        unavailable = Unavailable(_TROUBLE_DETAIL[kind], headers={"Retry-After": str(retry_after)})
        return problem_response(unavailable, request)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    error = DefeaterError(
        detail="internal error; it has been logged", status=500, type="internal", title="Internal error"
    )
    return problem_response(error, request)


def install(app: FastAPI) -> None:
    app.add_exception_handler(DefeaterError, _on_defeater_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)

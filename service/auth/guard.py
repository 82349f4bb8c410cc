"""The one check every protected request passes: a live bearer token holding the scope the request needs.

``create_app`` puts ``require_token()`` on every router but health's (``include_router(..., dependencies=...)``),
so an endpoint cannot be left out by forgetting a parameter: the scope follows from the method (see
``needed_scope``), and a router can only raise it (the token endpoints need ``admin``). Failures are problem+json:
401 with ``WWW-Authenticate: Bearer`` when no valid token came (none, unknown, revoked), 403 naming the scope when
the token lacks it. Neither ever repeats what the client sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import service
from service.auth.scopes import Scope, grants, needed_scope
from service.deps import SessionDep, SettingsDep
from service.errors import Forbidden, Unauthorized

REALM = 'Bearer realm="defeater"'
MISSING = (
    "this endpoint needs an API token: send the header `Authorization: Bearer <token>` "
    "(`defeater tokens create` makes one)"
)
INVALID = "the API token is not valid: it is unknown or has been revoked"

bearer = HTTPBearer(
    scheme_name="bearer",
    description=(
        "An API token from `defeater tokens create` (or `POST /v1/tokens`). `GET` needs the `read` scope, every "
        "other method `submit`, `/v1/tokens` `admin`; admin includes submit, submit includes read. `/healthz` and "
        "`/readyz` need none. An embedded API on a loopback address may run without tokens."
    ),
    auto_error=False,
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name and scopes, or everyone when tokens are off."""

    name: str
    scopes: frozenset[Scope]
    token_id: uuid.UUID | None = None


# when tokens are off (an embedded API on loopback), every caller may do everything
EVERYONE = Principal("anyone (tokens are off)", frozenset(Scope))


def require_token(floor: Scope = Scope.read) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency admitting requests whose token holds the scope their method needs, and at least ``floor``."""

    async def authorize(
        request: Request, session: SessionDep, settings: SettingsDep, credentials: Credentials
    ) -> Principal:
        principal = EVERYONE if settings.auth.required is False else await _principal(session, credentials)
        needed = needed_scope(request.method, floor)
        if not grants(principal.scopes, needed):
            raise Forbidden(
                f"this request needs the {needed.value!r} scope; token {principal.name!r} has "
                + ", ".join(repr(s.value) for s in sorted(principal.scopes, key=lambda s: s.rank)),
                headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{needed.value}"'},
            )
        request.state.principal = principal
        return principal

    return authorize


async def _principal(session: AsyncSession, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """The token's holder; a 401 when there is no token or it is not a live one."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized(MISSING, headers={"WWW-Authenticate": REALM})
    row = await service.authenticate(session, credentials.credentials)
    if row is None:
        raise Unauthorized(INVALID, headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'})
    if service.mark_used(row):
        # its own commit, before the endpoint runs: a read-only endpoint never commits
        await session.commit()
    return Principal(row.name, frozenset(Scope(s) for s in row.scopes), row.id)

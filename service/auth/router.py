"""``/v1/tokens``: make, list and revoke API tokens over HTTP. ``create_app`` gives this router an ``admin`` floor.

The first admin token comes from ``defeater tokens create`` (on the database directly); these endpoints let a
holder of it manage the rest without database access.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response

from service.auth import repository, service
from service.auth.schemas import TokenCreate, TokenCreated, TokenRead
from service.deps import SessionDep
from service.errors import NotFound
from service.pagination import Page
from service.problems import problem

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


@router.post("", status_code=201, response_model=TokenCreated, responses={409: problem("the name is taken")})
async def create_token(body: TokenCreate, session: SessionDep, response: Response) -> TokenCreated:
    """Make a token. The answer holds the token itself, this once: only its hash is kept."""
    issued = await service.create_token(session, body)
    await session.commit()
    response.headers["Location"] = f"/v1/tokens/{issued.row.id}"
    # no-store: the one response that carries a token must not be kept by any cache on the way
    response.headers["Cache-Control"] = "no-store"
    return TokenCreated(**TokenRead.model_validate(issued.row).model_dump(), token=issued.plaintext)


@router.get("", response_model=Page[TokenRead])
async def list_tokens(session: SessionDep) -> Page[TokenRead]:
    """Every token, revoked ones too, oldest first, on one page: names, prefixes, scopes and dates."""
    rows = await repository.list_all(session)
    return Page[TokenRead](items=[TokenRead.model_validate(r) for r in rows], next_cursor=None)


@router.delete("/{token_id}", response_model=TokenRead, responses={404: problem("no such token")})
async def revoke_token(token_id: uuid.UUID, session: SessionDep) -> TokenRead:
    """Revoke a token: requests carrying it get 401 from now on. Revoking a revoked token changes nothing."""
    row = await repository.get(session, token_id)
    if row is None:
        raise NotFound(f"no token has the id {token_id}")
    await service.revoke(session, row)
    await session.commit()
    return TokenRead.model_validate(row)

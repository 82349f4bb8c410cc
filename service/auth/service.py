"""Making, finding, checking and revoking API tokens. Flushes; the caller commits.

A token is ``dft_`` and 32 random bytes (``secrets.token_urlsafe``, 256 bits). The database keeps its SHA-256 and its
first characters, never the token: it is shown once, when made. A fast, unsalted hash suffices here, unlike for
passwords: salts and slow hashes (bcrypt, argon2) exist to make guessing *low-entropy* secrets from a stolen hash
expensive, and nobody can enumerate 2^256 random tokens however fast the hash. A plain hash also lets a request's
token be found with one indexed lookup on ``token_hash`` (and a lookup keyed by a digest the caller cannot steer
leaks nothing useful through its timing).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import repository
from service.auth.schemas import TokenCreate
from service.db.base import utcnow
from service.db.models import ApiToken
from service.errors import Conflict, FieldError, NotFound

TOKEN_PREFIX = "dft_"
# "dft_" and 8 random characters: enough to tell tokens apart in a list, 48 of the token's 256 bits
DISPLAY_CHARS = 12
# last_used_at is written at most this often per token, so that reading the API does not write on every request
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class IssuedToken:
    """A token just made: its row, and the plaintext, which exists only in this answer."""

    row: ApiToken
    plaintext: str


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token: its SHA-256, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(session: AsyncSession, body: TokenCreate) -> IssuedToken:
    """Make a token with a new name. Flushes; the caller commits, then shows ``plaintext`` once."""
    taken = Conflict(f"a token named {body.name!r} exists (revoked tokens keep their names): choose another name",
                     [FieldError("name", "already used")])  # fmt: skip
    if await repository.get_by_name(session, body.name) is not None:
        raise taken
    plaintext = new_token()
    row = ApiToken(
        id=uuid.uuid4(),
        name=body.name,
        prefix=plaintext[:DISPLAY_CHARS],
        token_hash=hash_token(plaintext),
        scopes=[s.value for s in body.scopes],
    )
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError:  # made by someone else since the check above
        raise taken from None
    return IssuedToken(row, plaintext)


async def resolve(session: AsyncSession, ref: str) -> ApiToken:
    """A token by its id or its name."""
    try:
        found = await repository.get(session, uuid.UUID(ref))
    except ValueError:
        found = await repository.get_by_name(session, ref)
    if found is None:
        raise NotFound(f"no token has the name or id {ref!r}", [FieldError("token", "not found")])
    return found


async def revoke(session: AsyncSession, row: ApiToken) -> ApiToken:
    """Revoke a token from now on; revoking it again changes nothing. Flushes."""
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await session.flush()
    return row


async def authenticate(session: AsyncSession, presented: str) -> ApiToken | None:
    """The live token ``presented`` is, or None when it is unknown or revoked."""
    if not presented.startswith(TOKEN_PREFIX):
        return None
    row = await repository.get_by_hash(session, hash_token(presented))
    if row is None or row.revoked_at is not None:
        return None
    return row


async def is_live(session: AsyncSession, token_id: uuid.UUID) -> bool:
    """True while the token exists and is not revoked (a long-lived stream asks this again and again)."""
    row = await repository.get(session, token_id)
    return row is not None and row.revoked_at is None


def mark_used(row: ApiToken, now: datetime | None = None) -> bool:
    """Note that ``row`` was used, when its ``last_used_at`` is over a minute old; True when that changed it."""
    now = now or utcnow()
    if row.last_used_at is not None and now - row.last_used_at < LAST_USED_RESOLUTION:
        return False
    row.last_used_at = now
    return True

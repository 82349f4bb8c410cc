"""Scopes, and which one a request needs. Each scope includes the ones below it: admin ⊇ submit ⊇ read."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

# methods that only read; every other method may change state
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Scope(StrEnum):
    """What a token may do: ``read`` anything, ``submit`` work too (configs, datasets, jobs), ``admin`` tokens too."""

    read = "read"
    submit = "submit"
    admin = "admin"

    @property
    def rank(self) -> int:
        return list(Scope).index(self)

    def covers(self, needed: Scope) -> bool:
        """True when a token holding this scope may do what ``needed`` allows."""
        return self.rank >= needed.rank


def needed_scope(method: str, floor: Scope = Scope.read) -> Scope:
    """The scope a request needs: ``read`` to read, ``submit`` to change anything, and never less than ``floor``.

    Deciding by method, not per endpoint, means a new endpoint is covered the day it is written: a ``GET`` can only
    need ``read`` and anything else ``submit``, unless its router sets a higher floor (the token endpoints: admin).
    """
    by_method = Scope.read if method.upper() in READ_METHODS else Scope.submit
    return max(by_method, floor, key=lambda s: s.rank)


def grants(held: Iterable[Scope], needed: Scope) -> bool:
    """True when any of the ``held`` scopes covers ``needed``."""
    return any(s.covers(needed) for s in held)


def ordered(scopes: Iterable[Scope]) -> list[Scope]:
    """Scopes without repeats, lowest first: how a token's scopes are stored and shown."""
    return sorted(set(scopes), key=lambda s: s.rank)

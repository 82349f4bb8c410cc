"""Which scope a request needs, what each scope covers, and how often a token's last use is written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.auth.scopes import Scope, grants, needed_scope
from service.auth.service import mark_used
from service.db.models import ApiToken


@pytest.mark.parametrize(
    ("method", "floor", "needed"),
    [
        ("GET", Scope.read, Scope.read),
        ("head", Scope.read, Scope.read),
        ("POST", Scope.read, Scope.submit),
        ("PATCH", Scope.read, Scope.submit),
        ("DELETE", Scope.read, Scope.submit),
        ("GET", Scope.admin, Scope.admin),
        ("POST", Scope.admin, Scope.admin),
    ],
)
def test_reads_need_read_changes_need_submit_and_a_floor_raises_both(method: str, floor: Scope, needed: Scope) -> None:
    assert needed_scope(method, floor) is needed


def test_admin_covers_submit_covers_read() -> None:
    assert grants([Scope.admin], Scope.read) and grants([Scope.submit], Scope.read)
    assert not grants([Scope.read], Scope.submit) and not grants([Scope.submit, Scope.read], Scope.admin)
    assert not grants([], Scope.read)


def test_a_tokens_last_use_is_written_at_most_once_a_minute() -> None:
    row, now = ApiToken(last_used_at=None), datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert mark_used(row, now) and row.last_used_at == now
    assert not mark_used(row, now + timedelta(seconds=59)) and row.last_used_at == now
    assert mark_used(row, now + timedelta(minutes=1))

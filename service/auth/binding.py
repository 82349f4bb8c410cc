"""Whether ``defeater api`` requires tokens, decided from the settings and the address it serves.

Tokens may be off only where nobody else can connect: an embedded API (no Redis: a one-person setup) bound to a
loopback address leaves them off unless ``DEFEATER_AUTH__REQUIRED=true``; everything else requires them unless
``DEFEATER_AUTH__REQUIRED=false``. Turning them off on a non-loopback address (``0.0.0.0``, a LAN address, a host
name) is refused unless ``DEFEATER_AUTH__ALLOW_OPEN_NON_LOOPBACK=true`` says something in front authenticates.
With tokens off, ``service/middleware.py`` keeps web pages out: only loopback Host names (and
``DEFEATER_API__ALLOWED_HOSTS``) are answered, and cross-site writes are refused.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from service.errors import FieldError, ValidationFailed
from service.settings import Settings


@dataclass(frozen=True)
class Serving:
    """The decision: tokens on or off, and why, in words for the start-up line."""

    tokens_required: bool
    reason: str


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1). Other names count as reachable."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serving_auth(settings: Settings, host: str) -> Serving:
    """Decide tokens on or off for an API serving ``host``; a ``ValidationFailed`` when off would be unsafe."""
    required, loopback = settings.auth.required, is_loopback(host)
    if required is None:
        if settings.embedded and loopback:
            return Serving(False, f"embedded, on loopback {host}; DEFEATER_AUTH__REQUIRED=true requires them")
        if not loopback:
            return Serving(True, f"serving {host}, not a loopback address")
        return Serving(True, "distributed: DEFEATER_REDIS_URL is set; DEFEATER_AUTH__REQUIRED=false turns them off")
    if required:
        return Serving(True, "DEFEATER_AUTH__REQUIRED=true")
    if loopback:
        return Serving(False, f"DEFEATER_AUTH__REQUIRED=false, on loopback {host}")
    if settings.auth.allow_open_non_loopback:
        return Serving(False, f"DEFEATER_AUTH__REQUIRED=false on {host}: whatever is in front must authenticate")
    raise ValidationFailed(
        f"refusing to serve {host} without API tokens: DEFEATER_AUTH__REQUIRED=false is for loopback addresses "
        "(127.0.0.1, ::1, localhost). Make a token with `defeater tokens create` and drop the setting, or, when a "
        "proxy in front authenticates every caller, set DEFEATER_AUTH__ALLOW_OPEN_NON_LOOPBACK=true",
        [FieldError("--host", "not a loopback address")],
    )

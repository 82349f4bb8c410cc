"""Where a completion webhook may go: public addresses only, unless the operator allows a host or a network.

A job's ``webhook_url`` is chosen by whoever holds a ``submit`` token, and the service POSTs to it from inside the
deployment: without these checks it would call 127.0.0.1, the cloud's metadata service (169.254.169.254) or any
private address for them (server-side request forgery). So:

- at job creation, a URL with credentials (``user:pass@``) is refused, and so is a host that is written as an
  address that is not public (``127.0.0.1``, ``[::1]``, ``2130706433``, which URL parsing turns into ``127.0.0.1``)
  or a ``localhost`` name, unless ``DEFEATER_WEBHOOKS__ALLOWED_HOSTS`` allows it;
- at delivery, the name is resolved once, each address is checked, and the POST connects to the address that
  passed, with the original ``Host`` header and (for https) the original name for SNI and for checking the
  certificate. Nothing resolves the name a second time, so a DNS answer that changes between the check and the
  connection (DNS rebinding) cannot slip a private address through.

An allowed entry is a host name (``hooks.internal``: that name may resolve to any address), an address or a CIDR
network (``127.0.0.1``, ``::1``, ``10.0.0.0/8``: those addresses may be called whatever name led to them).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv6 prefixes that carry an IPv4 address a gateway may forward to: checked as that IPv4 address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class TargetRefused(Exception):
    """The webhook's host is not one the service may call; the message says why (no credentials in it)."""


@dataclass(frozen=True)
class Allowed:
    """The operator's exceptions to "public addresses only": host names, and networks."""

    names: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowed:
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip().strip("[]"), strict=False))
            except ValueError:
                names.add(host_name(entry))
        return cls(frozenset(names), tuple(networks))

    def permits(self, name: str, address: IPAddress) -> bool:
        """True when ``address`` (which ``name`` resolved to) may be called."""
        return is_public(address) or host_name(name) in self.names or any(address in n for n in self.networks)


def host_name(host: str) -> str:
    """A host as compared: lower case, without brackets or the trailing dot of a fully qualified name."""
    return host.strip().strip("[]").rstrip(".").lower()


def is_public(address: IPAddress) -> bool:
    """True for an address on the public internet: not loopback, private, link-local (the cloud metadata service),
    multicast, reserved, unspecified, shared (CGNAT) or documentation, nor an IPv6 form of one of those."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(embedded)
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL: what logs show of it (its path or query may hold a receiver's secret, its
    userinfo a password)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "(an invalid URL)"
    port = f":{parsed.port}" if parsed.port else ""
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{parsed.scheme}://{host}{port}"


def without_credentials(url: str) -> str:
    """The URL without any ``user:password@`` (jobs stored before such URLs were refused may carry one)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return origin(url)
    return str(parsed.copy_with(username=None, password=None)) if parsed.userinfo else url


def creation_problem(url: str, allowed: Allowed) -> str | None:
    """Why a job may not be created with this webhook URL, or None: credentials in it, or a host written as an
    address (or a ``localhost`` name) that the service may not call. Names are checked again at each delivery."""
    parsed = httpx.URL(url)
    if parsed.userinfo:
        return "must not contain credentials (user:password@): the receiver checks X-Defeater-Signature instead"
    name = host_name(parsed.host)
    if name == "localhost" or name.endswith(".localhost"):
        address: IPAddress = ipaddress.IPv4Address("127.0.0.1")
    else:
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return None
    if allowed.permits(name, address):
        return None
    return (
        f"{parsed.host} is not a public address: webhooks go to public hosts only, unless the operator allows this "
        "one (DEFEATER_WEBHOOKS__ALLOWED_HOSTS)"
    )


@dataclass(frozen=True)
class Target:
    """Where one delivery connects: the URL with the checked address as its host, and what keeps the original
    name: the ``Host`` header, and for https the name the certificate is checked against (SNI)."""

    url: httpx.URL
    host_header: str
    extensions: dict[str, str]


async def resolve(url: str, allowed: Allowed) -> Target:
    """Resolve the URL's host once and pick an address the service may call; ``TargetRefused`` when there is
    none (or the URL carries credentials)."""
    parsed = httpx.URL(url)
    if parsed.userinfo:
        raise TargetRefused("the URL contains credentials")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        found = await asyncio.get_running_loop().getaddrinfo(parsed.host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetRefused(f"{parsed.host} does not resolve ({exc})") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in found]
    permitted = [a for a in addresses if allowed.permits(parsed.host, a)]
    if not permitted:
        shown = ", ".join(sorted({str(a) for a in addresses}))
        raise TargetRefused(
            f"{parsed.host} resolves to {shown}, not a public address (DEFEATER_WEBHOOKS__ALLOWED_HOSTS)"
        )
    extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
    return Target(parsed.copy_with(host=str(permitted[0])), parsed.netloc.decode("ascii"), extensions)

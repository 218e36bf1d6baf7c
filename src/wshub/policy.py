"""Admission and abuse policy: origins, per-IP counting, session cookies, ping floods.

Each concern has exactly one home here, so that the HTTP/1.1, HTTP/2 and
ASGI paths all apply the same rule.  Nothing here does I/O; time is passed in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import uuid
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = [
    "OriginPolicy",
    "PerIpCounter",
    "PingFloodGuard",
    "SessionSigner",
    "client_ip",
    "ip_key",
    "parse_cookie",
]

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def _norm_host(host: str) -> str:
    host = host.strip().lower()
    if host.endswith(".") and not host.startswith("["):
        host = host[:-1]
    return host


def normalize_origin(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an origin, or None if it is not one we can read.

    Scheme and host are lower-cased, a trailing dot on the host is dropped and
    the default port is filled in, so ``HTTPS://Example.COM.:443`` equals
    ``https://example.com``.
    """
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    return scheme, _norm_host(host), port if port is not None else _DEFAULT_PORTS[scheme]


def _split_host_header(host: str, tls: bool) -> tuple[str, int] | None:
    try:
        parts = urlsplit("//" + host.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return _norm_host(parts.hostname), port if port is not None else (443 if tls else 80)


class OriginPolicy:
    """The ``allow_origin`` rule: None (same origin), ``"*"``, or exact origins."""

    __slots__ = ("_allowed", "value")

    def __init__(self, value: str | list[str] | tuple[str, ...] | None) -> None:
        allowed: set[tuple[str, str, int]] | None = None
        if value is None or value == "*":
            pass
        elif isinstance(value, str):
            allowed = {self._parse(value)}
        elif isinstance(value, (list, tuple)):
            allowed = {self._parse(v) for v in value}
        else:
            raise TypeError("allow_origin must be None, '*' or a list of origins")
        self.value = list(value) if isinstance(value, (list, tuple)) else value
        self._allowed = allowed

    @staticmethod
    def _parse(value: object) -> tuple[str, str, int]:
        if not isinstance(value, str):
            raise TypeError("allow_origin entries must be strings")
        norm = normalize_origin(value)
        if norm is None:
            raise ValueError(f"not an origin (scheme://host[:port]): {value!r}")
        return norm

    def allows(self, origin: str | None, host: str | None, tls: bool) -> bool:
        """Whether a request with this Origin (and Host) may connect."""
        if origin is None:
            # Not a browser: the Origin check protects browsers' users only.
            return True
        if self.value == "*":
            return True
        norm = normalize_origin(origin)
        if norm is None:
            return False  # "null" and other opaque origins
        if self._allowed is not None:
            return norm in self._allowed
        # Same origin: the Origin's host:port equals the Host we were asked for.
        if host is None:
            return False
        target = _split_host_header(host, tls)
        return target is not None and target == norm[1:]


def ip_key(ip: str) -> str:
    """The key per-IP limits count under: the address, or its /64 for IPv6."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        net = ipaddress.IPv6Network((int(addr) >> 64 << 64, 64))
        return str(net)
    return str(addr)


def _parse_networks(
    values: Iterable[str],
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for v in values:
        if not isinstance(v, str):
            raise TypeError("trusted_proxies entries must be strings")
        nets.append(ipaddress.ip_network(v.strip(), strict=False))
    return nets


class TrustedProxies:
    """The ``trusted_proxies`` option: whose forwarding headers we believe."""

    __slots__ = ("networks", "value")

    def __init__(self, value: Iterable[str]) -> None:
        if isinstance(value, str):
            raise TypeError("trusted_proxies must be a list of IPs/CIDRs")
        self.value = list(value)
        self.networks = _parse_networks(self.value)

    def trusts(self, ip: str) -> bool:
        if not self.networks:
            return False
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)


def _forwarded_for(headers: dict[str, str]) -> list[str]:
    """Client addresses from ``Forwarded`` (RFC 7239), else ``X-Forwarded-For``, in order."""
    hops: list[str] = []
    fwd = headers.get("forwarded")
    if fwd:
        for element in fwd.split(","):
            for pair in element.split(";"):
                name, _, value = pair.strip().partition("=")
                if name.lower() == "for":
                    value = value.strip().strip('"')
                    if value.startswith("["):
                        value = value[1 : value.find("]")] if "]" in value else value[1:]
                    elif value.count(":") == 1:
                        value = value.split(":", 1)[0]
                    hops.append(value)
        return hops
    xff = headers.get("x-forwarded-for")
    if xff:
        hops = [h.strip() for h in xff.split(",") if h.strip()]
    return hops


def client_ip(peer_ip: str, headers: dict[str, str], proxies: TrustedProxies) -> str:
    """The client's address: the peer's, or, behind trusted proxies, the first untrusted hop.

    Walks the forwarding chain from the right (the hop nearest to us) and stops
    at the first address that is not a trusted proxy, so a client cannot
    choose its own address by sending a forged header through the proxy.
    """
    if not proxies.trusts(peer_ip):
        return peer_ip
    nearest = peer_ip
    for hop in reversed(_forwarded_for(headers)):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            # Garbage (or "unknown") in the chain: trust no hop beyond it.
            return nearest
        if not proxies.trusts(hop):
            return hop
        nearest = hop
    return nearest


class PerIpCounter:
    """Concurrent connections per client key, O(1) per operation.

    Entries are deleted when they reach zero, so the table holds only keys
    with live connections and cannot grow with history.
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def try_acquire(self, key: str, limit: int) -> bool:
        n = self._counts.get(key, 0)
        if limit >= 1 and n >= limit:
            return False
        self._counts[key] = n + 1
        return True

    def release(self, key: str) -> None:
        n = self._counts.get(key, 0) - 1
        if n <= 0:
            self._counts.pop(key, None)
        else:
            self._counts[key] = n

    def count(self, key: str) -> int:
        return self._counts.get(key, 0)

    def __len__(self) -> int:
        return len(self._counts)


def parse_cookie(header: str | None, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header, or None."""
    if not header:
        return None
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SessionSigner:
    """Signs and checks session cookies ``<id>.<expiry>.<HMAC-SHA256>``."""

    __slots__ = ("_key",)

    def __init__(self, secret: bytes | str | None) -> None:
        if secret is None:
            env = os.environ.get("WSHUB_SECRET")
            secret = env.encode() if env else os.urandom(32)
        if isinstance(secret, str):
            secret = secret.encode()
        if not isinstance(secret, bytes) or not secret:
            raise TypeError("secret must be non-empty bytes or str")
        self._key = secret

    def _mac(self, client_id: str, expiry: int) -> str:
        msg = f"{client_id}.{expiry}".encode()
        return _b64url(hmac.new(self._key, msg, hashlib.sha256).digest())

    def sign(self, client_id: str, expiry: int) -> str:
        return f"{client_id}.{expiry}.{self._mac(client_id, expiry)}"

    def verify(self, value: str | None, now: float) -> str | None:
        """The client ID in a valid, unexpired cookie value; None otherwise."""
        if not value or len(value) > 200:
            return None
        parts = value.split(".")
        if len(parts) != 3:
            return None
        client_id, expiry_text, mac = parts
        if not expiry_text.isdigit() or len(expiry_text) > 12:
            return None
        try:
            uuid.UUID(client_id)
        except ValueError:
            return None
        expiry = int(expiry_text)
        if not hmac.compare_digest(mac, self._mac(client_id, expiry)):
            return None
        if expiry <= now:
            return None
        return client_id


class PingFloodGuard:
    """Bounds how fast one client's pings are answered (RFC 6455 §5.5.2 vs DoS).

    A token bucket answers a burst of ``burst`` pings at once and then
    ``rate`` per second; pings beyond that are coalesced (only the latest
    needs an answer, as RFC 6455 §5.5.3 allows).  Pings that keep arriving
    while the bucket is empty fill an excess counter that drains at ``rate``;
    past ``limit`` the client is flooding and should be closed with 1008.
    """

    ANSWER = 0
    DEFER = 1
    VIOLATION = 2

    __slots__ = ("_excess", "_last", "_tokens", "burst", "limit", "rate")

    def __init__(self, burst: int = 16, rate: float = 8.0, limit: int = 128) -> None:
        self.burst = burst
        self.rate = rate
        self.limit = limit
        self._tokens = float(burst)
        self._excess = 0.0
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        last = self._last
        self._last = now
        if last is None:
            return
        elapsed = max(0.0, now - last)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._excess = max(0.0, self._excess - elapsed * self.rate)

    def on_ping(self, now: float) -> int:
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return self.ANSWER
        self._excess += 1.0
        return self.VIOLATION if self._excess > self.limit else self.DEFER

    def take_deferred(self, now: float) -> bool:
        """For a coalesced ping waiting for an answer: may it be answered now?"""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def seconds_until_token(self) -> float:
        return max(0.0, (1.0 - self._tokens) / self.rate)

"""Admission and abuse policy: origins, per-IP counting, session cookies.

Each concern has exactly one home here, so that the HTTP/1.1, HTTP/2 and
ASGI paths all apply the same rule.  Nothing here does I/O; time is passed in.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import importlib
import ipaddress
import os
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from .protocol import frames

__all__ = [
    "OriginPolicy",
    "PerIpCounter",
    "SessionSigner",
    "client_ip",
    "ip_key",
    "parse_cookie",
]

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


_HOST_CHARS = re.compile(r"[a-z0-9._~-]+|[0-9a-f:.]+")


def _norm_host(host: str) -> str | None:
    """Lower-case ``host`` and drop one trailing dot; None if it cannot be a host.

    ``example.com.`` is the same DNS name as ``example.com`` (absolute form),
    so it is the same host for the origin check; anything with characters a
    host name or IP literal cannot have (spaces, commas, ``@``) is refused.
    """
    host = host.strip().lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or not _HOST_CHARS.fullmatch(host):
        return None
    return host


def normalize_origin(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an origin, or None if it is not one we can read.

    Scheme and host are lower-cased, a trailing dot on the host is dropped and
    the default port is filled in, so ``HTTPS://Example.COM.:443`` equals
    ``https://example.com``.  No path, query, fragment or user info may
    follow (``https://example.com@evil.net`` is not an origin).
    """
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    host = _norm_host(parts.hostname)
    if host is None:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def _split_host_header(host: str) -> tuple[str, int | None] | None:
    """``(host, port or None)`` of a ``Host`` header; None if malformed."""
    host = host.strip()
    if not host or any(c in host for c in "/?#@\\ ,"):
        return None
    try:
        parts = urlsplit("//" + host)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    name = _norm_host(parts.hostname)
    if name is None:
        return None
    return name, port


# RFC 9110 §7.2 / RFC 3986 §3.2.2: host [":" port], where host is an IP
# literal in brackets or a reg-name (unreserved, pct-encoded, sub-delims).
_HOST_HEADER = re.compile(
    r"(\[[0-9A-Za-z:.%_~-]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::([0-9]{0,5}))?"
)


def valid_host(host: str) -> bool:
    """Whether a ``Host`` (or ``:authority``) value is a host with an optional port.

    Anything that could end or change the authority of a URL built from it
    (``/``, ``?``, ``#``, ``@``, whitespace, a backslash ...) is refused:
    the host is only ever the netloc, never part of the path.  An empty
    value (no host known) is allowed.
    """
    if not host:
        return True
    match = _HOST_HEADER.fullmatch(host)
    if match is None:
        return False
    port = match.group(2)
    if port and int(port) > 65535:
        return False
    if host.startswith("["):
        try:
            urlsplit("//" + host)  # checks what is inside the brackets
        except ValueError:
            return False
    return True


class OriginPolicy:
    """The ``allow_origin`` rule: None (same origin), ``"*"``, or exact origins."""

    __slots__ = ("_allowed", "_verdicts", "value")

    # Verdicts remembered per (Origin, Host, TLS): the same few pairs come
    # back on every connection, and judging one parses two URLs.  Bounded:
    # short keys only, and forgotten all at once when full.
    _CACHE_SIZE = 1024
    _CACHE_KEY_MAX = 256

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
        self._verdicts: dict[tuple[str, str | None, bool], bool] = {}

    @staticmethod
    def _parse(value: object) -> tuple[str, str, int]:
        if not isinstance(value, str):
            raise TypeError("allow_origin entries must be strings")
        # Be kind to configuration ("https://a.example/"), strict on the wire.
        norm = normalize_origin(value[:-1] if value.endswith("/") else value)
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
        key = (origin, host, tls)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._judge(origin, host, tls)
            if len(origin) + len(host or "") <= self._CACHE_KEY_MAX:
                if len(self._verdicts) >= self._CACHE_SIZE:
                    self._verdicts.clear()
                self._verdicts[key] = verdict
        return verdict

    def _judge(self, origin: str, host: str | None, tls: bool) -> bool:
        norm = normalize_origin(origin)
        if norm is None:
            return False  # "null" and other opaque origins
        if self._allowed is not None:
            return norm in self._allowed
        # Same origin: the Origin's host:port equals the Host we were asked
        # for, scheme aside (a TLS-terminating proxy turns https into ws).
        # A Host without a port means the default port of the Origin's scheme
        # or of our own connection; no suffix or prefix matching.
        if host is None:
            return False
        target = _split_host_header(host)
        if target is None or target[0] != norm[1]:
            return False
        if target[1] is not None:
            return target[1] == norm[2]
        return norm[2] in (_DEFAULT_PORTS[norm[0]], 443 if tls else 80)


# A cache (module state by design): the per-IP key of recently seen
# addresses, cleared when it reaches 4,096 entries.
_ip_keys: dict[str, str] = {}


def ip_key(ip: str) -> str:
    """The key per-IP limits count under: the address, or its /64 for IPv6."""
    # Parsing an address costs more than the rest of the admission policy;
    # the same few addresses come back again and again, so remember them
    # (a bounded table: it is emptied when full).
    key = _ip_keys.get(ip)
    if key is None:
        key = _ip_key(ip)
        if len(_ip_keys) >= 4096:
            _ip_keys.clear()
        _ip_keys[ip] = key
    return key


def _ip_key(ip: str) -> str:
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


def _forwarded_hops(value: str) -> list[str]:
    """The ``for=`` addresses of a ``Forwarded`` header (RFC 7239 §4), in order."""
    hops: list[str] = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, item = pair.strip().partition("=")
            if name.strip().lower() != "for":
                continue
            item = item.strip().strip('"')
            if item.startswith("["):
                # RFC 7239 §6: "[2001:db8::1]:4711"
                item = item[1 : item.find("]")] if "]" in item else item[1:]
            elif item.count(":") == 1:
                item = item.split(":", 1)[0]
            hops.append(item)
    return hops


def _walk_chain(peer_ip: str, hops: list[str], proxies: TrustedProxies) -> str:
    # From the right (the hop nearest to us): the first address that is not
    # one of our proxies is the client.  Everything left of it was written
    # by the client itself and is not believed.
    nearest = peer_ip
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            # Garbage, "unknown" or an obfuscated name: trust nothing beyond it.
            return nearest
        if not proxies.trusts(hop):
            return hop
        nearest = hop
    return nearest


def client_ip(peer_ip: str, headers: dict[str, str], proxies: TrustedProxies) -> str:
    """The client's address: the peer's, or, behind trusted proxies, the first untrusted hop.

    Forwarding headers are read only when the TCP peer is a trusted proxy.
    The chain is walked from the right and stops at the first address that is
    not a trusted proxy, so a client cannot choose its own address by sending
    a forged header through the proxy.  When both ``Forwarded`` and
    ``X-Forwarded-For`` are present and name different clients, one of them
    came from the client untouched (a proxy that sets one header passes the
    other through), so neither is believed and the proxy's address is used.
    """
    if not proxies.trusts(peer_ip):
        return peer_ip
    candidates = []
    fwd = headers.get("forwarded")
    if fwd:
        candidates.append(_walk_chain(peer_ip, _forwarded_hops(fwd), proxies))
    xff = headers.get("x-forwarded-for")
    if xff:
        hops = [h.strip() for h in xff.split(",") if h.strip()]
        candidates.append(_walk_chain(peer_ip, hops, proxies))
    if not candidates:
        return peer_ip
    if len(candidates) == 2 and ip_key(candidates[0]) != ip_key(candidates[1]):
        return peer_ip
    return candidates[0]


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

    def may_keep(self, key: str, limit: int) -> bool:
        """Whether a slot already held under ``key`` is within ``limit``:
        the verdict of ``release(key)`` then ``try_acquire(key, limit)``,
        without changing the count."""
        return limit < 1 or self._counts.get(key, 0) - 1 < limit

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


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64url(data: bytes) -> str:
    # base64.urlsafe_b64encode without its two layers of Python wrappers.
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_URLSAFE).decode()


def _hmac_states_py(key_block: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC-SHA256 (RFC 2104) of a 64-byte key block, keyed once: the
    inner and outer hashes with their padded key already in (hashlib).

    The pure-Python twin of the C accelerator's ``hmac_sha256_states``
    (whose states are bytes): each only ever goes to its own
    :func:`_hmac_b64url_py` or ``hmac_sha256_b64url``.
    """
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in key_block)),
        hashlib.sha256(bytes(b ^ 0x5C for b in key_block)),
    )


def _hmac_b64url_py(states: tuple[hashlib._Hash, hashlib._Hash], message: bytes) -> str:
    """The HMAC-SHA256 of ``message`` with the keyed ``states``, base64url
    without padding (the twin of the C accelerator's ``hmac_sha256_b64url``)."""
    inner = states[0].copy()
    inner.update(message)
    outer = states[1].copy()
    outer.update(inner.digest())
    return _b64url(outer.digest())


# The session cookie's MAC, made on every new session: the C accelerator's
# (SHA-256 written out: a fraction of hashlib's cost per call on these
# two-block messages) or its twins above.
_hmac_states: Callable[[bytes], Any] = _hmac_states_py
_hmac_b64url: Callable[[Any, bytes], str] = _hmac_b64url_py
if frames.ACCELERATED:
    _speedups = importlib.import_module("wshub._speedups")
    _hmac_states = _speedups.hmac_sha256_states
    _hmac_b64url = _speedups.hmac_sha256_b64url


# Byte 6 of a UUID4 carries its version (4) in its top four bits, byte 8
# the RFC 4122 variant (binary 10) in its top two: set by bytes.translate.
_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT_10 = bytes((b & 0x3F) | 0x80 for b in range(256))
# The five groups (8-4-4-4-12) of each UUID's 32 hex digits.
_UUID_GROUPS = re.compile(r"(.{8})(.{4})(.{4})(.{4})(.{12})")


class ClientIds:
    """Random UUID4 strings for client IDs, as ``str(uuid.uuid4())`` makes them.

    The random bytes come from ``os.urandom`` like uuid4's, but 64 IDs' worth
    at a time: one system call per 64 handshakes instead of one each, and
    the 64 strings made by a few C calls (the version and variant bits set
    by ``translate``, the groups found by one ``findall``).
    """

    __slots__ = ("_pool",)

    _BATCH = 64

    def __init__(self) -> None:
        self._pool: list[str] = []

    def new(self) -> str:
        pool = self._pool
        if not pool:
            raw = bytearray(os.urandom(16 * self._BATCH))
            raw[6::16] = raw[6::16].translate(_VERSION_4)
            raw[8::16] = raw[8::16].translate(_VARIANT_10)
            pool = self._pool = list(map("-".join, _UUID_GROUPS.findall(raw.hex())))
        return pool.pop()


class SessionSigner:
    """Signs and checks session cookies ``<id>.<expiry>.<HMAC-SHA256>``.

    ``<expiry>`` is the absolute end of the session in milliseconds since
    the epoch.  Cookies of wshub 0.1, whose expiry was in whole seconds
    (at most 11 digits, where milliseconds have 13 until the year 2286),
    are still accepted until that expiry.
    """

    __slots__ = ("_inner", "_outer", "_states", "ephemeral")

    def __init__(self, secret: bytes | str | None) -> None:
        #: True when no secret was given: a random one, known to this process only.
        self.ephemeral = False
        if secret is None:
            env = os.environ.get("WSHUB_SECRET")
            self.ephemeral = not env
            secret = env.encode() if env else os.urandom(32)
        if isinstance(secret, str):
            secret = secret.encode()
        if not isinstance(secret, bytes):
            raise TypeError("secret must be bytes or str")
        if not secret:
            raise ValueError("secret must not be empty")
        # HMAC (RFC 2104) with the keyed inner and outer states computed
        # once: each MAC then hashes only the message (half the time of
        # hmac.digest, which sets the key up on every call).
        block = hashlib.sha256().block_size
        key = hashlib.sha256(secret).digest() if len(secret) > block else secret
        key = key.ljust(block, b"\0")
        self._inner, self._outer = _hmac_states_py(key)
        # The same, for the cookies' MAC (C or pure, see _hmac_b64url).
        self._states = _hmac_states(key)

    def _mac(self, client_id: str, expiry: str) -> str:
        return _hmac_b64url(self._states, f"{client_id}.{expiry}".encode())

    def derive(self, label: bytes) -> bytes:
        """A key for another use of the same secret: HMAC-SHA256(secret, ``label``).

        A distinct label per use keeps the keys apart (the cluster backplane
        uses ``b"wshub backplane v1"``): a MAC made with one is no MAC for the other.
        """
        inner = self._inner.copy()
        inner.update(label)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def sign(self, client_id: str, expiry: float) -> str:
        """The cookie value for ``client_id`` until ``expiry`` (seconds since
        the epoch, kept to the millisecond)."""
        millis = str(int(expiry * 1000))
        return f"{client_id}.{millis}.{self._mac(client_id, millis)}"

    def session(self, value: str | None, now: float) -> tuple[str, float] | None:
        """``(client ID, expiry)`` of a valid, unexpired cookie value; None otherwise.

        Never raises on bad input: a forged, tampered, expired or malformed
        cookie only means "no session", and the client gets a new ID.
        """
        if not value or len(value) > 200 or not value.isascii():
            return None
        parts = value.split(".")
        if len(parts) != 3:
            return None
        client_id, expiry_text, mac = parts
        if not expiry_text.isdigit() or len(expiry_text) > 15:
            return None
        try:
            canonical = str(uuid.UUID(client_id))
        except ValueError:
            return None
        if canonical != client_id:
            return None
        # Constant time: the comparison must not tell a forger how many
        # leading characters of the MAC were right.
        if not hmac.compare_digest(mac.encode("ascii"), self._mac(client_id, expiry_text).encode()):
            return None
        # Milliseconds; up to 11 digits, a wshub 0.1 cookie's whole seconds.
        expiry = int(expiry_text) / (1000 if len(expiry_text) > 11 else 1)
        if expiry <= now:
            return None
        return client_id, expiry

    def verify(self, value: str | None, now: float) -> str | None:
        """The client ID in a valid, unexpired cookie value; None otherwise."""
        session = self.session(value, now)
        return None if session is None else session[0]

"""The hub's options, validated where they are set.

:class:`HubOptions` holds every value ``WebSocket(...)`` and its option
properties accept, checked once on the way in, so that the parts of the hub
(admission, registry, pings) read them without checking again.  The limits
each connection enforces live in one shared :class:`~wshub.transport.link.LinkConfig`
that the links read directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from ..encodings import Encoding, check_encoding
from ..policy import OriginPolicy, SessionSigner, TrustedProxies
from ..protocol.deflate import DeflateOptions
from ..protocol.handshake import is_token
from ..transport.link import LinkConfig

__all__ = ["COOKIE_TAIL", "HubOptions", "check_int", "check_number"]

#: The attributes after Max-Age in every session Set-Cookie.
COOKIE_TAIL = "; Path=/; HttpOnly; SameSite=Lax"


def check_number(name: str, value: object) -> float:
    """``value`` as a float; TypeError for a non-number (or a bool), ValueError for NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if value != value:  # NaN
        raise ValueError(f"{name} must not be NaN")
    return float(value)


def check_int(name: str, value: object) -> int:
    """``value`` if it is an int (not a bool), else TypeError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


class HubOptions:
    """Every option of one hub, validated.

    Options are plain attributes, read on every handshake without a call;
    assigning one goes through :meth:`__setattr__`, which checks the value
    (TypeError / ValueError) and keeps what the parts derive from it: the
    :class:`~wshub.policy.OriginPolicy` (``origin_policy``), the
    :class:`~wshub.policy.SessionSigner` (``signer``), the
    :class:`~wshub.policy.TrustedProxies` (``trusted``), the cookie
    attributes.  The per-connection limits live in ``link_config``.
    """

    __slots__ = (
        "cluster_limit_by_ip",
        "cookie_attributes",
        "cookie_name",
        "encoding",
        "limit_by_ip",
        "link_config",
        "on_handshake",
        "origin_policy",
        "per_message_deflate",
        "ping_delay",
        "pong_timeout",
        "session_expires",
        "signer",
        "subprotocols",
        "trusted",
    )

    # Declared for the type checker; set through __setattr__ below.
    cluster_limit_by_ip: bool
    cookie_attributes: str
    cookie_name: str
    encoding: str
    limit_by_ip: int
    link_config: LinkConfig
    on_handshake: Callable[[Any], Any] | None
    origin_policy: OriginPolicy
    per_message_deflate: bool | DeflateOptions
    ping_delay: float
    pong_timeout: float
    session_expires: float
    signer: SessionSigner
    subprotocols: tuple[str, ...]
    trusted: TrustedProxies

    def __init__(
        self,
        *,
        allow_origin: str | list[str] | None,
        encoding: Encoding,
        limit_by_ip: int,
        max_payload: int,
        ping_delay: float,
        pong_timeout: float,
        session_expires: float,
        per_message_deflate: bool | DeflateOptions,
        secret: bytes | str | None,
        trusted_proxies: Iterable[str],
        cookie_name: str,
        close_timeout: float,
        write_high: int,
        write_low: int,
        write_limit: int,
        cluster_limit_by_ip: bool,
        on_handshake: Callable[[Any], Any] | None = None,
        subprotocols: Iterable[str] = (),
    ) -> None:
        #: The limits every link of this hub reads (one object, shared).
        self.link_config = LinkConfig()
        self.secret = secret
        self.allow_origin = allow_origin
        self.encoding = encoding
        self.trusted_proxies = trusted_proxies
        if not isinstance(cookie_name, str) or not cookie_name or not cookie_name.isidentifier():
            raise ValueError("cookie_name must be a simple token")
        self.cookie_name = cookie_name
        self.limit_by_ip = limit_by_ip
        self.max_payload = max_payload
        self.ping_delay = ping_delay
        self.pong_timeout = pong_timeout
        self.session_expires = session_expires
        self.per_message_deflate = per_message_deflate
        self.close_timeout = close_timeout
        self.set_write_limits(write_high, write_low, write_limit)
        self.cluster_limit_by_ip = bool(cluster_limit_by_ip)
        self.on_handshake = on_handshake
        self.subprotocols = subprotocols  # type: ignore[assignment]  # checked into a tuple

    def __setattr__(self, name: str, value: object) -> None:
        check = _CHECKS.get(name)
        if check is not None:
            value = check(self, value)
        object.__setattr__(self, name, value)

    # Options kept in a derived form, or in the links' shared config.

    @property
    def allow_origin(self) -> str | list[str] | None:
        return self.origin_policy.value

    @allow_origin.setter
    def allow_origin(self, value: str | list[str] | None) -> None:
        self.origin_policy = OriginPolicy(value)

    @property
    def max_payload(self) -> int:
        return self.link_config.max_payload

    @max_payload.setter
    def max_payload(self, value: int) -> None:
        self.link_config.max_payload = check_int("max_payload", value)

    @property
    def secret(self) -> None:
        """Write-only: the key that signs session cookies."""
        return None

    @secret.setter
    def secret(self, value: bytes | str | None) -> None:
        self.signer = SessionSigner(value)

    @property
    def trusted_proxies(self) -> list[str]:
        return list(self.trusted.value)

    @trusted_proxies.setter
    def trusted_proxies(self, value: Iterable[str]) -> None:
        self.trusted = TrustedProxies(value)

    @property
    def close_timeout(self) -> float:
        return self.link_config.close_timeout

    @close_timeout.setter
    def close_timeout(self, value: float) -> None:
        v = check_number("close_timeout", value)
        if v <= 0:
            raise ValueError("close_timeout must be > 0")
        self.link_config.close_timeout = v

    def set_write_limits(self, high: int, low: int, limit: int) -> None:
        """The write-buffer marks, checked together (``0 <= low <= high <= limit``)."""
        for name, v in (("write_high", high), ("write_low", low), ("write_limit", limit)):
            check_int(name, v)
        if not 0 <= low <= high <= limit:
            raise ValueError("need 0 <= write_low <= write_high <= write_limit")
        cfg = self.link_config
        cfg.write_high, cfg.write_low, cfg.write_limit = high, low, limit


def _check_session_expires(options: HubOptions, value: object) -> float:
    v = check_number("session_expires", value)
    #: What follows the value in the Set-Cookie of a new session, made once
    #: (Max-Age rounded up: Max-Age=0 would delete the cookie).
    object.__setattr__(
        options, "cookie_attributes", f"; Max-Age={max(1, math.ceil(v))}{COOKIE_TAIL}"
    )
    return v


def _check_deflate(options: HubOptions, value: object) -> bool | DeflateOptions:
    if not isinstance(value, (bool, DeflateOptions)):
        raise TypeError("per_message_deflate must be a bool or DeflateOptions")
    return value


def _check_cluster_limit(options: HubOptions, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("cluster_limit_by_ip must be a bool")
    return value


def _check_hook(options: HubOptions, value: object) -> object:
    if value is not None and not callable(value):
        raise TypeError("on_handshake must be a function (or async function) or None")
    return value


def _check_subprotocols(options: HubOptions, value: object) -> tuple[str, ...]:
    """A list or tuple of distinct subprotocol names (HTTP tokens), kept as a tuple."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError("subprotocols must be a list of names, e.g. ['chat.v2', 'chat.v1']")
    for name in value:
        if not isinstance(name, str) or not is_token(name):
            raise ValueError(f"subprotocol {name!r} is not a valid name (an HTTP token)")
    if len(set(value)) != len(value):
        raise ValueError("subprotocols lists a name twice")
    return tuple(value)


_CHECKS: dict[str, Callable[[HubOptions, object], object]] = {
    "encoding": lambda options, value: check_encoding(value),
    "limit_by_ip": lambda options, value: check_int("limit_by_ip", value),
    "ping_delay": lambda options, value: check_number("ping_delay", value),
    "pong_timeout": lambda options, value: check_number("pong_timeout", value),
    "session_expires": _check_session_expires,
    "per_message_deflate": _check_deflate,
    "cluster_limit_by_ip": _check_cluster_limit,
    "on_handshake": _check_hook,
    "subprotocols": _check_subprotocols,
}

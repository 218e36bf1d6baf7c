"""The hub's options, validated where they are set.

:class:`HubOptions` holds every value ``WebSocket(...)`` and its option
properties accept, checked once on the way in, so that the parts of the hub
(admission, registry, pings) read them without checking again.  The limits
each connection enforces live in one shared :class:`~wshub.transport.link.LinkConfig`
that the links read directly.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..encodings import Encoding, check_encoding
from ..policy import OriginPolicy, SessionSigner, TrustedProxies
from ..protocol.deflate import DeflateOptions
from ..transport.link import LinkConfig

__all__ = ["HubOptions", "check_int", "check_number"]


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

    Setting a property checks the value (TypeError / ValueError) and keeps
    what the parts derive from it: the :class:`~wshub.policy.OriginPolicy`,
    the :class:`~wshub.policy.SessionSigner`, the cookie attributes.
    """

    __slots__ = (
        "_cluster_limit_by_ip",
        "_cookie_name",
        "_deflate",
        "_encoding",
        "_limit_by_ip",
        "_origin",
        "_ping_delay",
        "_pong_timeout",
        "_session_expires",
        "_signer",
        "_trusted",
        "cookie_attributes",
        "link_config",
    )

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
    ) -> None:
        #: The limits every link of this hub reads (one object, shared).
        self.link_config = LinkConfig()
        self.secret = secret
        self.allow_origin = allow_origin
        self.encoding = encoding
        self.trusted_proxies = trusted_proxies
        if not isinstance(cookie_name, str) or not cookie_name or not cookie_name.isidentifier():
            raise ValueError("cookie_name must be a simple token")
        self._cookie_name = cookie_name
        self.limit_by_ip = limit_by_ip
        self.max_payload = max_payload
        self.ping_delay = ping_delay
        self.pong_timeout = pong_timeout
        self.session_expires = session_expires
        self.per_message_deflate = per_message_deflate
        self.close_timeout = close_timeout
        self.set_write_limits(write_high, write_low, write_limit)
        self._cluster_limit_by_ip = bool(cluster_limit_by_ip)

    @property
    def allow_origin(self) -> str | list[str] | None:
        return self._origin.value

    @allow_origin.setter
    def allow_origin(self, value: str | list[str] | None) -> None:
        self._origin = OriginPolicy(value)

    @property
    def origin_policy(self) -> OriginPolicy:
        """The check that ``allow_origin`` describes."""
        return self._origin

    @property
    def encoding(self) -> str:
        return self._encoding

    @encoding.setter
    def encoding(self, value: Encoding) -> None:
        self._encoding = check_encoding(value)

    @property
    def limit_by_ip(self) -> int:
        return self._limit_by_ip

    @limit_by_ip.setter
    def limit_by_ip(self, value: int) -> None:
        self._limit_by_ip = check_int("limit_by_ip", value)

    @property
    def max_payload(self) -> int:
        return self.link_config.max_payload

    @max_payload.setter
    def max_payload(self, value: int) -> None:
        self.link_config.max_payload = check_int("max_payload", value)

    @property
    def ping_delay(self) -> float:
        return self._ping_delay

    @ping_delay.setter
    def ping_delay(self, value: float) -> None:
        self._ping_delay = check_number("ping_delay", value)

    @property
    def pong_timeout(self) -> float:
        return self._pong_timeout

    @pong_timeout.setter
    def pong_timeout(self, value: float) -> None:
        self._pong_timeout = check_number("pong_timeout", value)

    @property
    def session_expires(self) -> float:
        return self._session_expires

    @session_expires.setter
    def session_expires(self, value: float) -> None:
        self._session_expires = check_number("session_expires", value)
        #: What follows the value in every Set-Cookie, made once.
        self.cookie_attributes = (
            f"; Max-Age={int(self._session_expires)}; Path=/; HttpOnly; SameSite=Lax"
        )

    @property
    def per_message_deflate(self) -> bool | DeflateOptions:
        return self._deflate

    @per_message_deflate.setter
    def per_message_deflate(self, value: bool | DeflateOptions) -> None:
        if not isinstance(value, (bool, DeflateOptions)):
            raise TypeError("per_message_deflate must be a bool or DeflateOptions")
        self._deflate = value

    @property
    def signer(self) -> SessionSigner:
        """Signs and checks session cookies with the ``secret``."""
        return self._signer

    @property
    def secret(self) -> None:
        """Write-only: the key that signs session cookies."""
        return None

    @secret.setter
    def secret(self, value: bytes | str | None) -> None:
        self._signer = SessionSigner(value)

    @property
    def trusted(self) -> TrustedProxies:
        """The proxies whose forwarding headers are believed."""
        return self._trusted

    @property
    def trusted_proxies(self) -> list[str]:
        return list(self._trusted.value)

    @trusted_proxies.setter
    def trusted_proxies(self, value: Iterable[str]) -> None:
        self._trusted = TrustedProxies(value)

    @property
    def cookie_name(self) -> str:
        return self._cookie_name

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

    @property
    def cluster_limit_by_ip(self) -> bool:
        return self._cluster_limit_by_ip

    @cluster_limit_by_ip.setter
    def cluster_limit_by_ip(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError("cluster_limit_by_ip must be a bool")
        self._cluster_limit_by_ip = value

"""One upgrade pipeline for HTTP/1.1, HTTP/2 and ASGI: request → admission | refusal.

Each carrier parses its request its own way, then hands the same
:class:`RequestHead` to :func:`judge_upgrade`, which validates it for that
HTTP version (RFC 6455 §4.2.1, RFC 8441 §4), asks the hub attached to the
server, and returns either the hub's :class:`~wshub.transport.link.Admission`
(the response fields to send, then ``open(link)`` or ``cancel()``) or a
:class:`Refusal` (status, fields, body) to frame with
:mod:`wshub.protocol.http`.  Nothing here does I/O or keeps state: every
refusal is decided, and logged once, in this one place.

When the hub's handshake hook is ``async``, the verdict is a
:data:`PendingVerdict` (a future) instead: the carrier waits for it without
blocking anything else, then calls :func:`settle_upgrade`; if it gives up
(connection lost, stream reset, :func:`hook_timeout`), it calls
:func:`discard_upgrade`, which cancels the hook and gives back the slots.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..logging import refusal_log
from ..protocol.connection import Connection
from ..protocol.handshake import (
    HandshakeError,
    Headers,
    UpgradeInfo,
    check_h2_connect,
    check_http1_upgrade,
    parse_subprotocols,
)
from ..protocol.http import refusal
from .link import Admission, UpgradeHandler, UpgradeRequest, is_loopback

__all__ = [
    "SNI_ATTRIBUTE",
    "PendingVerdict",
    "Refusal",
    "RequestHead",
    "bulk_congestion_for",
    "discard_upgrade",
    "hook_timeout",
    "judge_upgrade",
    "new_connection",
    "settle_upgrade",
]

log = logging.getLogger("wshub")

#: The attribute of a server-side ``ssl.SSLObject`` where the server keeps
#: the SNI the client sent (``server_hostname`` is None on the server side).
SNI_ATTRIBUTE = "wshub_server_name"


class RequestHead:
    """What a carrier read of an upgrade request."""

    __slots__ = (
        "headers",
        "http_version",
        "ip_slot",
        "method",
        "peer",
        "protocol",
        "scheme",
        "target",
        "tls",
    )

    def __init__(
        self,
        *,
        method: str,
        target: str,
        http_version: str,
        headers: Headers,
        peer: tuple[str, int],
        scheme: str,
        protocol: str | None = None,
        tls: Any = None,
        ip_slot: str | None = None,
    ) -> None:
        self.method = method
        self.target = target  # as sent: "/path?query"
        self.http_version = http_version  # "1.0", "1.1", "2" (ASGI: the scope's)
        self.headers = headers  # lower-case names; ":authority" folded into "host"
        self.peer = peer  # (ip, port) of the TCP peer
        self.scheme = scheme  # "ws" or "wss"
        self.protocol = protocol  # HTTP/2's :protocol pseudo-header
        # The TLS details' source, read only if the hub asks: the
        # transport's ssl.SSLObject, an ASGI scope's "tls" extension, or None.
        self.tls = tls
        # The per-IP count the connection holds (HTTP/1.1: since its
        # accept), handed to the hub with the request; see judge_upgrade.
        self.ip_slot = ip_slot


class Refusal:
    """A refused upgrade: answer with ``status``, ``headers`` and ``body``."""

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        extra: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        if body is None:
            self.headers, self.body = refusal(status, reason, extra)
        else:  # a handshake hook's own answer: its fields and body as they are
            self.headers, self.body = list(extra or ()), body

    def __repr__(self) -> str:
        return f"Refusal({self.status}, {self.reason!r})"


def _check(head: RequestHead, carrier: str, ended: bool, is_upgrade: bool) -> UpgradeInfo:
    if carrier == "http/1.1":
        return check_http1_upgrade(head.method, head.http_version, head.headers, is_upgrade)
    if carrier == "h2":
        info = check_h2_connect(head.method, head.protocol, head.headers)
        if ended:
            raise HandshakeError(400, "extended CONNECT with END_STREAM")
        return info
    # ASGI: the server validated the handshake (version 13) and negotiates
    # extensions itself, framing every message: the hub answers no offer.
    # The subprotocol is the hub's choice (websocket.accept carries it).
    headers = head.headers
    origin = headers.get("origin") or headers.get("sec-websocket-origin")
    return UpgradeInfo(
        13, None, origin, "", parse_subprotocols(headers.get("sec-websocket-protocol"))
    )


#: The verdict of an upgrade whose handshake hook is ``async``: a future of
#: the hub's admission (or of its refusal, as the exception).
PendingVerdict = asyncio.Future[Admission]


def judge_upgrade(
    handler: UpgradeHandler | None,
    head: RequestHead,
    *,
    carrier: str,
    ended: bool = False,
    is_upgrade: bool = False,
) -> Admission | Refusal | PendingVerdict:
    """Validate ``head`` for its ``carrier`` ("http/1.1", "h2" or "asgi") and
    let ``handler`` (the hub) admit it.

    ``ended``: HTTP/2's request stream ended with the headers (an error for
    a CONNECT).  ``is_upgrade``: the HTTP/1.1 caller already saw
    ``Upgrade: websocket``.  Malformed input is a 4xx; a bug (or an
    exception in the hub's handshake hook) is a 500 with the traceback in
    the log, never on the wire.  A :data:`PendingVerdict` when the hook is
    ``async``: see :func:`settle_upgrade`.

    ``head.ip_slot`` is the hub's from here on: its per-IP guard keeps it
    as the client's count; refused before that, it is given back here.
    """
    request = None
    try:
        if carrier == "http/1.1":  # (the usual carrier: no call more)
            info = check_http1_upgrade(head.method, head.http_version, head.headers, is_upgrade)
        else:
            info = _check(head, carrier, ended, is_upgrade)
        if handler is None:
            raise HandshakeError(404, "no WebSocket endpoint on this server")
        request = UpgradeRequest(
            target=head.target,
            headers=head.headers,
            info=info,
            peer=head.peer,
            scheme=head.scheme,
            method=head.method,
            http_version=head.http_version,
            tls=head.tls,
            ip_slot=head.ip_slot,
        )
        return handler.admit(request)
    except Exception as exc:
        slot = head.ip_slot if request is None else request.ip_slot
        if slot is not None and handler is not None:
            handler.connection_closed(slot)  # not taken by the hub's guard
        return _refusal_for(exc, head, carrier, handler)


def settle_upgrade(
    verdict: PendingVerdict,
    head: RequestHead,
    carrier: str,
    *,
    handler: UpgradeHandler | None = None,
) -> Admission | Refusal:
    """What a finished :data:`PendingVerdict` decided (``handler``: the hub
    that judged it, told of a refusal)."""
    if verdict.cancelled():
        # Not by the carrier (what it gives up on, it discards): the hook
        # awaited something that was cancelled under it, a failure like any other.
        exc: BaseException | None = asyncio.CancelledError("on_handshake was cancelled")
    else:
        exc = verdict.exception()
    if exc is None:
        return verdict.result()
    return _refusal_for(exc, head, carrier, handler)


def discard_upgrade(verdict: PendingVerdict) -> None:
    """The carrier gives up on a pending verdict (connection lost, stream
    reset, timeout): cancel the hook, or give back an admission that came."""
    if not verdict.done():
        verdict.cancel()  # the hub frees the per-IP slot when the task ends
        # A hook may swallow the cancellation and admit all the same: that
        # admission is given back as soon as it comes.
        verdict.add_done_callback(_give_back)
    else:
        _give_back(verdict)


def _give_back(verdict: PendingVerdict) -> None:
    if not verdict.cancelled() and verdict.exception() is None:
        verdict.result().cancel()


def hook_timeout(
    head: RequestHead, carrier: str, timeout: float, *, handler: UpgradeHandler | None = None
) -> Refusal:
    """The refusal (503, logged once) of an upgrade whose handshake hook did
    not answer within the handshake timeout; the carrier discards the verdict."""
    return _refusal_for(
        HandshakeError(503, f"handshake hook did not answer within {timeout:.1f}s"),
        head,
        carrier,
        handler,
    )


def _refusal_for(
    exc: BaseException, head: RequestHead, carrier: str, handler: UpgradeHandler | None
) -> Refusal:
    status = exc.status if isinstance(exc, HandshakeError) else 500
    if handler is not None:
        handler.handshake_refused(status)
    if isinstance(exc, HandshakeError):
        # Rate-limited (wshub.logging): a flood of bad handshakes cannot flood the log.
        peer = head.peer[0] or "?"
        path = head.target.split("?", 1)[0][:200]
        refusal_log.info(
            "%s: refused WebSocket upgrade (%s): %d %s",
            peer,
            carrier,
            status,
            exc.reason,
            extra={"peer": peer, "path": path, "status": status, "transport": carrier},
        )
        return Refusal(exc.status, exc.reason, exc.headers, exc.body)
    log.error(
        "%s: error in the WebSocket handshake of %s (%s): 500",
        head.peer[0] or "?",
        head.target.split("?", 1)[0][:200],  # not the query: it may carry a token
        carrier,
        exc_info=exc,
    )
    return Refusal(500, "internal server error")


def new_connection(admission: Admission) -> Connection:
    """The connection core of an admitted WebSocket: its codec, and the
    hub's limits (shared: a change applies from the next frame)."""
    return Connection(codec=admission.codec, limits=admission.config)


def bulk_congestion_for(loopback_congestion: str | None, peer_ip: str) -> str | None:
    """The congestion control a link switches to for large messages: the
    server's opt-in ``loopback_congestion``, for a peer on this host only."""
    return loopback_congestion if is_loopback(peer_ip) else None

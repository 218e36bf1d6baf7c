"""Exceptions of the public API."""

from __future__ import annotations

from .protocol.errors import ConnectionClosedError, WsHubError
from .protocol.handshake import HandshakeError

__all__ = [
    "ClientNotFound",
    "ConnectionClosedError",
    "HandshakeError",
    "HistoryUnavailable",
    "TopicLimitError",
    "WebSocketProtocolError",
    "WsHubError",
]


class ClientNotFound(WsHubError, KeyError):
    """No client with this ID is connected (Node's ``ReferenceError('Not Found')``)."""

    def __init__(self, client_id: object) -> None:
        super().__init__(client_id)
        self.client_id = client_id

    def __str__(self) -> str:
        return f"client {self.client_id!r} is not connected"


class TopicLimitError(WsHubError, ValueError):
    """``subscribe`` would make a client follow more than ``max_topics_per_client`` topics."""

    def __init__(self, client_id: str, limit: int) -> None:
        super().__init__(client_id, limit)
        self.client_id = client_id
        self.limit = limit

    def __str__(self) -> str:
        return f"client {self.client_id!r} already follows {self.limit} topics (the limit)"


class HistoryUnavailable(WsHubError, ConnectionError):
    """A publication cannot be kept: the cluster's history (Redis) is unreachable.

    Raised by ``publish`` on a hub whose topics keep their history in Redis
    Streams while its backplane is disconnected: the publication was not
    sent to anyone (``docs/scaling.md``, History in Redis Streams).
    """


class WebSocketProtocolError(WsHubError):
    """The client broke the WebSocket protocol (reported through the ``"error"`` event).

    ``code`` is the close code the connection was failed with.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason

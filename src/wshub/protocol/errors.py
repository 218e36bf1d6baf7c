"""The base of every exception wshub raises, and the protocol layer's own errors.

They live here, at the bottom of the layers, so that the sans-I/O core can
raise them without importing anything above it; :mod:`wshub.errors`
re-exports them for users.
"""

from __future__ import annotations

__all__ = ["ConnectionClosedError", "WsHubError"]


class WsHubError(Exception):
    """Base class of every exception wshub raises on its own account."""


class ConnectionClosedError(WsHubError):
    """A message or ping was sent after the closing handshake started."""

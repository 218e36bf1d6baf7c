"""wshub: a WebSocket server hub for Python.

>>> from wshub import HttpServer, WebSocket
>>> server = HttpServer()
>>> ws = WebSocket(server)
"""

from __future__ import annotations

from ._version import __version__
from .errors import (
    ClientNotFound,
    ConnectionClosedError,
    HandshakeError,
    WebSocketProtocolError,
    WsHubError,
)
from .http import Request, Response
from .hub import CloseEvent, WebSocket
from .protocol.deflate import DeflateOptions
from .protocol.frames import CloseCode
from .transport.server import HttpServer

__all__ = [
    "ClientNotFound",
    "CloseCode",
    "CloseEvent",
    "ConnectionClosedError",
    "DeflateOptions",
    "HandshakeError",
    "HttpServer",
    "Request",
    "Response",
    "WebSocket",
    "WebSocketProtocolError",
    "WsHubError",
    "__version__",
]

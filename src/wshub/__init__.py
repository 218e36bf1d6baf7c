"""wshub: a WebSocket server hub for Python.

>>> from wshub import HttpServer, WebSocket
>>> server = HttpServer()
>>> ws = WebSocket(server)
"""

from __future__ import annotations

import logging as _logging
import os as _os
from importlib.util import find_spec as _find_spec
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ._version import __version__
from .errors import (
    ClientNotFound,
    ConnectionClosedError,
    HandshakeError,
    HistoryUnavailable,
    TopicLimitError,
    WebSocketProtocolError,
    WsHubError,
)
from .protocol.deflate import DeflateOptions
from .protocol.frames import ACCELERATED as _ACCELERATED
from .protocol.frames import CloseCode

if _TYPE_CHECKING:
    from .http import Request, Response
    from .hub import CloseEvent, Handshake, PresenceInfo, WebSocket
    from .transport.server import HttpServer

# The server side is imported on first use (PEP 562), so that importing the
# sans-I/O layer (wshub.protocol) loads no asyncio server, httptools or h2.
_LAZY = {
    "CloseEvent": "wshub.hub",
    "Handshake": "wshub.hub",
    "HttpServer": "wshub.transport.server",
    "PresenceInfo": "wshub.hub",
    "Request": "wshub.http",
    "Response": "wshub.http",
    "WebSocket": "wshub.hub",
}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wshub' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


if not _ACCELERATED and not _os.environ.get("WSHUB_NO_EXTENSIONS"):
    # Said once per process, here, where the package is first imported: an
    # install without a C compiler succeeds and runs the pure-Python twin.
    _logging.getLogger("wshub").warning(
        "wshub: the C accelerator wshub._speedups %s; running on the pure-Python path "
        "(same behaviour, slower). Reinstall wshub where a C compiler is available to "
        "build it, or set WSHUB_NO_EXTENSIONS=1 to choose the pure-Python path quietly.",
        "is not built (no C compiler when wshub was installed?)"
        if _find_spec("wshub._speedups") is None
        else "is present but could not be loaded",
    )

__all__ = [
    "ClientNotFound",
    "CloseCode",
    "CloseEvent",
    "ConnectionClosedError",
    "DeflateOptions",
    "Handshake",
    "HandshakeError",
    "HistoryUnavailable",
    "HttpServer",
    "PresenceInfo",
    "Request",
    "Response",
    "TopicLimitError",
    "WebSocket",
    "WebSocketProtocolError",
    "WsHubError",
    "__version__",
]

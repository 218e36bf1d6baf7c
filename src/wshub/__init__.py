"""wshub: a WebSocket server hub for Python.

>>> from wshub import HttpServer, WebSocket
>>> server = HttpServer()
>>> ws = WebSocket(server)
"""

from __future__ import annotations

import logging as _logging
import os as _os
from importlib.util import find_spec as _find_spec

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
from .protocol.frames import ACCELERATED as _ACCELERATED
from .protocol.frames import CloseCode
from .transport.server import HttpServer

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
    "HandshakeError",
    "HttpServer",
    "Request",
    "Response",
    "WebSocket",
    "WebSocketProtocolError",
    "WsHubError",
    "__version__",
]

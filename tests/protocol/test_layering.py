"""The layers keep to their rooms: the sans-I/O core loads no server, and
every exception wshub raises on its own account is a WsHubError."""

from __future__ import annotations

import subprocess
import sys

import wshub
from wshub import errors

SERVER_PACKAGES = ("asyncio", "httptools", "h2")
SERVER_MODULES = ("wshub.transport", "wshub.hub", "wshub.asgi", "wshub.backplane")


def test_importing_the_protocol_layer_loads_no_server() -> None:
    code = (
        "import sys\n"
        "import wshub.protocol, wshub.protocol.connection, wshub.protocol.frames\n"
        "import wshub.protocol.deflate, wshub.protocol.handshake, wshub.protocol.flood\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {SERVER_PACKAGES!r}\n"
        f"       or m.startswith({SERVER_MODULES!r})]\n"
        "print(','.join(sorted(bad)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"wshub.protocol imported {out}"


def test_the_package_root_still_offers_the_server_side() -> None:
    assert wshub.HttpServer.__module__ == "wshub.transport.server"
    assert wshub.WebSocket.__module__ == "wshub.hub.facade"  # re-exported by wshub.hub
    assert wshub.CloseEvent.__module__ == "wshub.hub.events"
    assert {"HttpServer", "WebSocket", "Request", "Response", "CloseEvent"} <= set(dir(wshub))


def test_public_exceptions_derive_from_wshuberror() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, wshub.WsHubError), name
    assert issubclass(errors.ClientNotFound, KeyError)  # the documented KeyError contract

"""Subprotocol negotiation (RFC 6455 §1.9, §4.2.2, §11.3.4).

Without sockets: parsing Sec-WebSocket-Protocol, the default choice (the
first of the *client's* offers that the hub lists), the hook's override,
the option's validation.  Then real peers: the ``websockets`` client, Node
``ws``, headless Chromium (which fails a connection whose offer got no
answer), and ``wshub serve --subprotocol``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import pytest
import websockets

from tests.conftest import StartServer, run_node
from tests.integration.chromium_support import chromium
from tests.integration.cli_support import free_port, start_program, wshub_command
from wshub import Handshake, HandshakeError, Request, Response, WebSocket
from wshub.protocol.handshake import UpgradeInfo, parse_subprotocols, select_subprotocol
from wshub.transport.link import UpgradeRequest

# ------------------------------------------------------------ without sockets


@pytest.mark.parametrize(
    ("value", "offers"),
    [
        (None, ()),
        ("", ()),
        ("chat", ("chat",)),
        ("chat.v2, chat.v1", ("chat.v2", "chat.v1")),
        ("graphql-transport-ws,graphql-ws", ("graphql-transport-ws", "graphql-ws")),
        # Two header lines, joined by the transports with ", ".
        ("mqtt, wamp.2.json, v12.stomp", ("mqtt", "wamp.2.json", "v12.stomp")),
        (" a ,\tb ,, c ", ("a", "b", "c")),  # OWS and empty list elements
        ("Chat, chat", ("Chat", "chat")),  # names are case-sensitive
    ],
)
def test_parse_offers(value: str | None, offers: tuple[str, ...]) -> None:
    assert parse_subprotocols(value) == offers


@pytest.mark.parametrize(
    "value", ["a b", "chat/1", "a, b c", 'x="y"', "é", "a, a", "chat.v1,chat.v2, chat.v1"]
)
def test_bad_offers_are_400(value: str) -> None:
    with pytest.raises(HandshakeError) as info:
        parse_subprotocols(value)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("offered", "supported", "chosen"),
    [
        (("chat.v1", "chat.v2"), ("chat.v2", "chat.v1"), "chat.v1"),  # the client's order decides
        (("x", "chat.v2"), ("chat.v2", "chat.v1"), "chat.v2"),
        (("x", "y"), ("chat.v2",), None),
        ((), ("chat.v2",), None),
        (("chat.v2",), (), None),
    ],
)
def test_default_choice(
    offered: tuple[str, ...], supported: tuple[str, ...], chosen: str | None
) -> None:
    assert select_subprotocol(offered, supported) == chosen


def _handshake(offers: tuple[str, ...], chosen: str | None) -> Handshake:
    request = UpgradeRequest(
        target="/",
        headers={"host": "example.test"},
        info=UpgradeInfo(13, "k", None, "", offers),
        peer=("127.0.0.1", 1),
        scheme="ws",
    )
    return Handshake(
        request,
        client="127.0.0.1",
        path="/",
        query="",
        url="ws://example.test/",
        subprotocol=chosen,
    )


def test_the_hook_may_override_with_an_offer_or_none() -> None:
    hs = _handshake(("a", "b"), "a")
    assert hs.subprotocols == ("a", "b") and hs.subprotocol == "a"
    hs.subprotocol = "b"
    assert hs.subprotocol == "b"
    hs.subprotocol = None
    assert hs.subprotocol is None
    with pytest.raises(ValueError, match="not offered"):
        hs.subprotocol = "c"
    assert hs.subprotocol is None


def test_the_option_is_validated() -> None:
    ws = WebSocket(subprotocols=("chat.v2", "chat.v1"))
    assert ws.subprotocols == ["chat.v2", "chat.v1"]
    ws.subprotocols = ["mqtt"]
    assert ws.subprotocols == ["mqtt"]
    with pytest.raises(TypeError):
        ws.subprotocols = "mqtt"  # a str is not a list of names
    with pytest.raises(ValueError):
        ws.subprotocols = ["a b"]
    with pytest.raises(ValueError):
        ws.subprotocols = ["a", "a"]
    with pytest.raises(ValueError):
        WebSocket(subprotocols=["ok", ""])
    assert ws.subprotocols == ["mqtt"]


# ------------------------------------------------------------- websockets


async def test_websockets_client_negotiates(start_server: StartServer) -> None:
    srv = await start_server(subprotocols=["chat.v2", "chat.v1"])
    async with websockets.connect(srv.url + "/", subprotocols=["chat.v1", "chat.v2"]) as c:
        assert c.subprotocol == "chat.v1"
    async with websockets.connect(srv.url + "/", subprotocols=["stomp"]) as c:
        assert c.subprotocol is None
        assert "Sec-WebSocket-Protocol" not in c.response.headers
    async with websockets.connect(srv.url + "/") as c:
        assert c.subprotocol is None
    srv.ws.subprotocols = ["stomp"]  # applies to the next handshake
    async with websockets.connect(srv.url + "/", subprotocols=["chat.v1", "stomp"]) as c:
        assert c.subprotocol == "stomp"


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        (["chat.v1, chat.v1"], 400),
        (["chat.v1", "chat.v1"], 400),  # the duplicate on a second line
        (["chat v1"], 400),
        (["chat.v2", "chat.v1"], 101),  # two lines are one list
    ],
)
async def test_offers_on_the_wire(start_server: StartServer, lines: list[str], status: int) -> None:
    srv = await start_server(subprotocols=["chat.v1"])
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        + "".join(f"Sec-WebSocket-Protocol: {line}\r\n" for line in lines)
        + "\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(head.encode())
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    if status == 101:
        assert b"\r\nSec-WebSocket-Protocol: chat.v1\r\n" in answer


# -------------------------------------------------------------------- Node ws


async def test_node_ws_reads_the_negotiated_protocol(start_server: StartServer) -> None:
    def hook(hs: Handshake) -> Response | None:
        # The browser pattern: a token offered as a subprotocol, never answered.
        token = [p for p in hs.subprotocols if p.startswith("token.")]
        if token != ["token.secret"]:
            return Response.text(401, "no token\n", [("WWW-Authenticate", "Bearer")])
        return None

    srv = await start_server(subprotocols=["a", "b"], on_handshake=hook)
    srv.ws.on("message", lambda cid, data: srv.ws.send(cid, f"{srv.ws.subprotocol(cid)}:{data}"))
    plan = {"protocols": ["b", "token.secret", "a"], "send": [{"text": "hi"}], "expect": 1}
    result = await run_node("client.mjs", srv.url + "/", json.dumps(plan | {"close": [1000]}))
    assert result["opened"] and result["protocol"] == "b"
    assert result["upgradeHeaders"]["sec-websocket-protocol"] == "b"
    assert result["messages"] == [{"type": "text", "data": "b:hi"}]
    refused = await run_node(
        "client.mjs", srv.url + "/", json.dumps({"protocols": ["a", "token.wrong"]})
    )
    assert refused["status"] == 401 and not refused["opened"]
    assert refused["responseHeaders"]["www-authenticate"] == "Bearer"


# ------------------------------------------------------------------ Chromium

_PAGE = """<!doctype html><title>subprotocols</title><script>
window.tryConnect = (protocols) => new Promise((resolve) => {
  const ws = new WebSocket(`ws://${location.host}/ws`, protocols);
  ws.onopen = () => { const p = ws.protocol; ws.close(1000); resolve({open: true, protocol: p}); };
  ws.onclose = (ev) => resolve({open: false, code: ev.code});
});
</script>"""


async def test_chromium_reads_the_protocol_and_needs_an_answer(start_server: StartServer) -> None:
    def page(request: Request) -> Response:
        return Response(_PAGE, content_type="text/html; charset=utf-8")

    srv = await start_server(handler=page, subprotocols=["chat.v2", "chat.v1"])
    async with chromium() as browser:
        tab = await browser.new_page()
        await tab.goto(srv.http_url + "/")
        got: dict[str, Any] = await tab.evaluate("tryConnect(['x', 'chat.v1'])")
        assert got == {"open": True, "protocol": "chat.v1"}
        # The browser fails a connection whose offer the server did not answer.
        srv.ws.subprotocols = []
        got = await tab.evaluate("tryConnect(['x', 'chat.v1'])")
        assert got == {"open": False, "code": 1006}
        got = await tab.evaluate("tryConnect([])")  # no offer, no answer needed
        assert got == {"open": True, "protocol": ""}


# ----------------------------------------------------------------------- CLI


async def test_cli_serve_subprotocol() -> None:
    port = free_port()
    argv = [*wshub_command(), "serve", "--port", str(port), "--deflate", "off"]
    program = await start_program(
        [*argv, "--subprotocol", "chat.v2", "--subprotocol", "chat.v1"], port
    )
    try:
        url = f"ws://127.0.0.1:{port}/"
        async with websockets.connect(url, subprotocols=["chat.v1", "chat.v2"]) as c:
            assert c.subprotocol == "chat.v1"
            await c.send("echo")
            assert await asyncio.wait_for(c.recv(), 10) == "echo"
    finally:
        status, err = await program.stop()
    assert status == 0 and "Traceback" not in err
    bad = await asyncio.create_subprocess_exec(
        *argv,
        "--subprotocol",
        "not a token",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err_bytes = await asyncio.wait_for(bad.communicate(), 30)
    assert bad.returncode == 2 and b"not a subprotocol name" in err_bytes

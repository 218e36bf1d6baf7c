"""The ``on_handshake`` hook over HTTP/2 (RFC 8441 extended CONNECT), with the ``h2`` client.

The same hook as over HTTP/1.1 sees method "CONNECT" and HTTP version "2";
a refusal is that stream's response (status, fields, body); an async hook
holds its stream only, while the connection's other streams go on; a
RST_STREAM, the connection's loss or the handshake timeout cancel it and
free what it held.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.integration.h2_client_support import OP_TEXT, H2Client
from tests.integration.hook_support import StuckHook
from wshub import Handshake, HttpServer, Response, WebSocket
from wshub.tls import write_self_signed


class H2Hub:
    def __init__(self, server: HttpServer, ws: WebSocket, tls: bool) -> None:
        self.server = server
        self.ws = ws
        self.tls = tls
        self.authority = f"127.0.0.1:{server.port}"
        self.scheme = "https" if tls else "http"

    async def client(self) -> H2Client:
        return await H2Client.connect("127.0.0.1", self.server.port, tls=self.tls)

    async def connect(
        self, client: H2Client, path: str, headers: list[tuple[str, str]] | None = None
    ) -> int:
        return await client.open_ws(
            path, authority=self.authority, headers=headers, scheme=self.scheme
        )


StartH2 = Callable[..., Awaitable[H2Hub]]


@pytest.fixture
async def start_h2(tmp_path: Any) -> AsyncIterator[StartH2]:
    servers: list[HttpServer] = []
    cert, key = write_self_signed(str(tmp_path))

    async def start(
        *, tls: bool = True, server_options: dict[str, Any] | None = None, **options: Any
    ) -> H2Hub:
        server = HttpServer(**(server_options or {}))
        ws = WebSocket(server, **options)
        for event in ("message", "/public", "/fast", "/slow", "/ok"):
            ws.on(event, lambda cid, data: ws.send(cid, data))
        context = None
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
        await server.serve("127.0.0.1", 0, ssl=context)
        servers.append(server)
        return H2Hub(server, ws, tls)

    yield start
    for server in servers:
        await server.close(timeout=2.0)


async def test_the_hook_sees_an_http2_connect(start_h2: StartH2) -> None:
    seen: list[Handshake] = []
    srv = await start_h2(on_handshake=seen.append)
    c = await srv.client()
    sid = await srv.connect(c, "/room?x=1", headers=[("cookie", "a=1"), ("cookie", "b=2")])
    assert (await c.response(sid)).status == 200
    [hs] = seen
    assert (hs.method, hs.http_version, hs.scheme) == ("CONNECT", "2", "wss")
    assert (hs.path, hs.query_params) == ("/room", {"x": ["1"]})
    assert hs.headers["host"] == srv.authority  # :authority
    assert hs.cookies == {"a": "1", "b": "2"}
    assert hs.client == "127.0.0.1"
    assert hs.tls is not None and hs.tls.alpn_protocol == "h2"
    await c.close()


async def test_a_refusal_is_that_streams_response(start_h2: StartH2) -> None:
    def hook(hs: Handshake) -> Response | None:
        if hs.path == "/private":
            return Response.text(401, "token please\n", [("WWW-Authenticate", "Bearer")])
        return None

    srv = await start_h2(on_handshake=hook)
    c = await srv.client()
    refused = await srv.connect(c, "/private")
    st = await c.response(refused)
    assert st.status == 401
    assert st.header("www-authenticate") == "Bearer"
    assert await c.body(refused) == b"token please\n"
    ok = await srv.connect(c, "/public")  # the connection lives on
    assert (await c.response(ok)).status == 200
    c.ws_send(ok, OP_TEXT, b"hi")
    assert (await c.ws_recv(ok)).payload == b"hi"
    assert c.goaway is None
    await c.close()


async def test_the_subprotocol_goes_in_the_200(start_h2: StartH2) -> None:
    srv = await start_h2(subprotocols=["mqtt", "wamp.2.json"])
    c = await srv.client()
    sid = await srv.connect(c, "/", headers=[("sec-websocket-protocol", "wamp.2.json, mqtt")])
    st = await c.response(sid)
    assert st.status == 200 and st.header("sec-websocket-protocol") == "wamp.2.json"
    none = await srv.connect(c, "/", headers=[("sec-websocket-protocol", "stomp")])
    st = await c.response(none)
    assert st.status == 200 and st.header("sec-websocket-protocol") is None
    bad = await srv.connect(c, "/", headers=[("sec-websocket-protocol", "a, a")])
    assert (await c.response(bad)).status == 400
    await c.close()


async def test_an_async_hook_holds_its_stream_only(start_h2: StartH2) -> None:
    release = asyncio.Event()

    async def hook(hs: Handshake) -> None:
        if hs.path == "/slow":
            await release.wait()
            hs.data = "slow one"

    srv = await start_h2(on_handshake=hook)
    c = await srv.client()
    slow = await srv.connect(c, "/slow")
    fast = await srv.connect(c, "/fast")
    assert (await c.response(fast)).status == 200
    c.ws_send(fast, OP_TEXT, b"meanwhile")
    assert (await c.ws_recv(fast)).payload == b"meanwhile"
    assert c.streams[slow].headers is None  # still waiting for its answer
    c.ws_send(slow, OP_TEXT, b"sent early")  # DATA before the 200: kept for the link
    release.set()
    assert (await c.response(slow)).status == 200
    assert (await c.ws_recv(slow)).payload == b"sent early"
    await wait_for(lambda: len(srv.ws.clients) == 2, what="both open")
    assert sorted(str(srv.ws.data(cid)) for cid in srv.ws.clients) == ["None", "slow one"]
    await c.close()


async def test_rst_stream_during_an_async_hook_cancels_it(start_h2: StartH2) -> None:
    hook = StuckHook()
    srv = await start_h2(on_handshake=hook, limit_by_ip=1)
    per_ip = srv.ws._per_ip
    c = await srv.client()
    sid = await srv.connect(c, "/")
    await asyncio.wait_for(hook.started.wait(), 10)
    assert per_ip.count("127.0.0.1") == 1  # the pending client holds the slot
    c.conn.reset_stream(sid)
    c.flush()
    await asyncio.wait_for(hook.cancelled.wait(), 10)
    assert not srv.ws._reserved and srv.ws.clients == []
    # The slot went back to the connection itself (limit_by_ip=1): a new
    # connection from this address is refused, the old one still works.
    await wait_for(lambda: per_ip.count("127.0.0.1") == 1, what="connection counted again")
    await c.close()
    await wait_for(lambda: per_ip.count("127.0.0.1") == 0, what="nothing counted")


async def test_connection_loss_during_an_async_hook_cancels_it(start_h2: StartH2) -> None:
    hook = StuckHook()
    srv = await start_h2(on_handshake=hook, tls=False)
    c = await srv.client()
    await srv.connect(c, "/")
    await asyncio.wait_for(hook.started.wait(), 10)
    await c.close()
    await asyncio.wait_for(hook.cancelled.wait(), 10)
    await wait_for(lambda: srv.ws._per_ip.count("127.0.0.1") == 0, what="slot freed")


async def test_an_async_hook_is_bounded_by_the_handshake_timeout(start_h2: StartH2) -> None:
    async def hook(hs: Handshake) -> None:
        if hs.path == "/stuck":
            await asyncio.Event().wait()

    srv = await start_h2(on_handshake=hook, server_options={"handshake_timeout": 0.3})
    c = await srv.client()
    stuck = await srv.connect(c, "/stuck")
    ok = await srv.connect(c, "/ok")
    assert (await c.response(ok)).status == 200
    st = await c.response(stuck)
    assert st.status == 503
    assert b"did not answer" in await c.body(stuck)
    c.ws_send(ok, OP_TEXT, b"fine")
    assert (await c.ws_recv(ok)).payload == b"fine"
    await c.close()
    await wait_for(lambda: srv.ws._per_ip.count("127.0.0.1") == 0, what="slots freed")

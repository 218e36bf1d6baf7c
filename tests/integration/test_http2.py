"""WebSockets over HTTP/2 (RFC 8441), driven by the third-party ``h2`` library as client.

Over TLS (ALPN ``h2``) and over h2c with prior knowledge: extended CONNECT,
RFC 6455 frames masked by the test itself, close handshake and END_STREAM
both ways; the refusals; per-stream flow control and pause; plain requests
sharing the connection; a stream's failure leaving its siblings alone; the
GOAWAY at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.conftest import wait_for
from tests.integration.h2_client_support import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    SETTINGS,
    H2Client,
    close_payload,
    deflate_message,
    inflate_message,
)
from wshub import HttpServer, WebSocket
from wshub.http import Request, Response
from wshub.tls import write_self_signed


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return write_self_signed(str(tmp_path_factory.mktemp("tls")))


class H2Server:
    def __init__(self, server: HttpServer, ws: WebSocket | None, tls: bool) -> None:
        self.server = server
        self.ws = ws
        self.tls = tls
        self.port = server.port
        self.authority = f"127.0.0.1:{self.port}"
        self.scheme = "https" if tls else "http"
        self.opened: list[str] = []
        self.closed: dict[str, Any] = {}
        self.messages: list[tuple[str, str | bytes]] = []

    async def client(self, **kw: Any) -> H2Client:
        return await H2Client.connect("127.0.0.1", self.port, tls=self.tls, **kw)

    async def open_ws(
        self, client: H2Client, path: str = "/", headers: list[tuple[str, str]] | None = None
    ) -> int:
        sid = await client.open_ws(
            path, authority=self.authority, headers=headers, scheme=self.scheme
        )
        st = await client.response(sid)
        assert st.status == 200, (st.status, st.data)
        return sid


StartH2 = Callable[..., Awaitable[H2Server]]


@pytest.fixture
async def start_h2(cert_files: tuple[str, str]) -> AsyncIterator[StartH2]:
    servers: list[HttpServer] = []

    async def start(
        *,
        tls: bool = True,
        hub: bool = True,
        echo: bool = True,
        handler: Any = None,
        server_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> H2Server:
        server = HttpServer(handler, **(server_options or {}))
        ws = WebSocket(server, **options) if hub else None
        ctx = None
        if tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*cert_files)
        await server.serve("127.0.0.1", 0, ssl=ctx)
        servers.append(server)
        h = H2Server(server, ws, tls)
        if ws is not None:
            ws.on("open", h.opened.append)
            ws.on("close", lambda cid, ev: h.closed.__setitem__(cid, ev))

            def on_message(cid: str, data: str | bytes) -> None:
                h.messages.append((cid, data))
                if echo:
                    ws.send(cid, data)

            ws.on("message", on_message)
            ws.on("/echo", on_message)
        return h

    yield start
    for server in servers:
        await server.close(timeout=2.0)


# ---------------------------------------------------------------------- basics


async def test_alpn_offers_h2_and_http11_on_one_port(start_h2: StartH2) -> None:
    srv = await start_h2()
    c = await srv.client()
    assert c.alpn == "h2"
    await c.close()
    c = await srv.client(alpn=("http/1.1",))
    assert c.alpn == "http/1.1"
    await c.close()
    # And a WebSocket over HTTP/1.1 on the same port (wss, 101).
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    async with websockets.connect(
        f"wss://127.0.0.1:{srv.port}/", ssl=client_ctx, compression=None
    ) as ws1:
        await ws1.send("over http/1.1")
        assert await ws1.recv() == "over http/1.1"


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "h2c"])
async def test_websocket_over_h2(start_h2: StartH2, tls: bool) -> None:
    srv = await start_h2(tls=tls)
    c = await srv.client()
    await c.wait(c.settings_seen.is_set, what="SETTINGS")
    assert c.remote_setting(SETTINGS.ENABLE_CONNECT_PROTOCOL) == 1
    sid = await c.open_ws("/echo?room=1", authority=srv.authority, scheme=srv.scheme)
    st = await c.response(sid)
    assert st.status == 200
    # RFC 8441 §5: no key, no accept; a session cookie as on HTTP/1.1.
    assert st.header("sec-websocket-accept") is None
    cookie = st.header("set-cookie")
    assert cookie is not None and cookie.startswith("wshub=")
    assert ("; Secure" in cookie) == tls
    await wait_for(lambda: len(srv.opened) == 1, what="open event")
    cid = srv.opened[0]
    assert srv.ws is not None
    url = srv.ws.url(cid)
    assert url.geturl() == f"{'wss' if tls else 'ws'}://{srv.authority}/echo?room=1"

    c.ws_send(sid, OP_TEXT, "héllo ✓".encode())
    f = await c.ws_recv(sid)
    assert (f.opcode, f.payload.decode()) == (OP_TEXT, "héllo ✓")
    blob = bytes(range(256)) * 300
    c.ws_send(sid, OP_BINARY, blob)
    f = await c.ws_recv(sid)
    assert (f.opcode, f.payload) == (OP_BINARY, blob)
    c.ws_send(sid, OP_PING, b"pp")
    f = await c.ws_recv(sid)
    assert (f.opcode, f.payload) == (OP_PONG, b"pp")
    assert srv.messages == [(cid, "héllo ✓"), (cid, blob)]

    # Close handshake, then END_STREAM both ways.
    c.ws_send(sid, OP_CLOSE, close_payload(1000, "bye"))
    f = await c.ws_recv(sid)
    assert f.opcode == OP_CLOSE and f.close_code == 1000
    stream = c.streams[sid]
    await c.wait(lambda: stream.ended, what="END_STREAM from the server")
    c.send_data(sid, b"", end=True)
    await wait_for(lambda: cid in srv.closed, what="close event")
    ev = srv.closed[cid]
    assert (ev.code, ev.reason, ev.was_clean) == (1000, "bye", True)
    assert stream.reset is None
    # The connection is still good for another WebSocket.
    sid2 = await srv.open_ws(c, "/echo")
    c.ws_send(sid2, OP_TEXT, b"again")
    assert (await c.ws_recv(sid2)).payload == b"again"
    await c.close()


async def test_server_initiated_close_ends_the_stream(start_h2: StartH2) -> None:
    srv = await start_h2()
    c = await srv.client()
    sid = await srv.open_ws(c)
    await wait_for(lambda: len(srv.opened) == 1, what="open")
    assert srv.ws is not None
    srv.ws.close(srv.opened[0], 4000, "go")
    f = await c.ws_recv(sid)
    assert f.opcode == OP_CLOSE and f.close_code == 4000
    c.ws_send(sid, OP_CLOSE, close_payload(4000))
    stream = c.streams[sid]
    await c.wait(lambda: stream.ended, what="END_STREAM after the close handshake")
    await wait_for(lambda: srv.opened[0] in srv.closed, what="close event")
    ev = srv.closed[srv.opened[0]]
    assert (ev.code, ev.was_clean) == (4000, True)
    await c.close()


async def test_connect_protocol_setting_only_with_a_hub(start_h2: StartH2) -> None:
    srv = await start_h2(tls=False, hub=False)
    c = await srv.client()
    await c.wait(c.settings_seen.is_set, what="SETTINGS")
    assert c.remote_setting(SETTINGS.ENABLE_CONNECT_PROTOCOL) == 0
    # Plain requests without a handler: 404.
    sid = c.request("GET", "/", authority=srv.authority, scheme="http")
    st = await c.response(sid)
    assert st.status == 404
    await c.close()


# -------------------------------------------------------------------- refusals


async def test_bad_connects_get_an_error_status_and_the_connection_lives(
    start_h2: StartH2, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wshub")
    srv = await start_h2(allow_origin=["https://good.example"])
    c = await srv.client()
    await c.wait(c.settings_seen.is_set, what="SETTINGS")
    a = srv.authority

    def connect(protocol: str | None, headers: list[tuple[str, str]]) -> int:
        return c.request("CONNECT", "/", authority=a, protocol=protocol, headers=headers, end=False)

    # CONNECT without :protocol (plain CONNECT: h2 insists on no :path/:scheme).
    sid = c.send_headers([(":method", "CONNECT"), (":authority", a)], end=False)
    assert (await c.response(sid)).status == 400
    v13 = [("sec-websocket-version", "13")]
    assert (await c.response(connect("h2c-tunnel", v13))).status == 501
    st = await c.response(connect("websocket", [("sec-websocket-version", "8")]))
    assert st.status == 426 and st.header("sec-websocket-version") == "13"
    bad_origin = [*v13, ("origin", "https://evil.example")]
    assert (await c.response(connect("websocket", bad_origin))).status == 403
    assert not srv.opened
    assert not any(r.exc_info for r in caplog.records), "no traceback for a refusal"
    # The same connection still carries a good WebSocket.
    sid = await srv.open_ws(c, headers=[("origin", "https://good.example")])
    c.ws_send(sid, OP_TEXT, b"ok")
    assert (await c.ws_recv(sid)).payload == b"ok"
    await c.close()


async def test_too_many_headers_431(start_h2: StartH2) -> None:
    srv = await start_h2(server_options={"max_headers": 10})
    c = await srv.client()
    await c.wait(c.settings_seen.is_set, what="SETTINGS")
    headers = [("sec-websocket-version", "13")] + [(f"x-h{i}", "v") for i in range(20)]
    sid = c.request(
        "CONNECT", "/", authority=srv.authority, protocol="websocket", headers=headers, end=False
    )
    assert (await c.response(sid)).status == 431
    await c.close()


async def test_cookie_gives_the_same_id_back(start_h2: StartH2) -> None:
    srv = await start_h2()
    c = await srv.client()
    sid = await srv.open_ws(c)
    cookie = c.streams[sid].header("set-cookie")
    assert cookie is not None
    await wait_for(lambda: len(srv.opened) == 1, what="open")
    first = srv.opened[0]
    c.ws_send(sid, OP_CLOSE, close_payload(1000))
    await c.ws_recv(sid)
    await wait_for(lambda: first in srv.closed, what="close")
    value = cookie.split(";", 1)[0]
    # HTTP/2 may split cookies into several fields (RFC 9113 §8.2.3).
    sid = await srv.open_ws(c, headers=[("cookie", "a=1"), ("cookie", value)])
    await wait_for(lambda: len(srv.opened) == 2, what="second open")
    assert srv.opened[1] == first
    await c.close()


async def test_permessage_deflate_over_h2(start_h2: StartH2) -> None:
    srv = await start_h2()
    c = await srv.client()
    sid = await srv.open_ws(
        c,
        headers=[
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
            )
        ],
    )
    ext = c.streams[sid].header("sec-websocket-extensions")
    assert ext is not None and ext.startswith("permessage-deflate")
    text = ("compress me " * 200).encode()
    c.ws_send(sid, OP_TEXT, deflate_message(text), rsv1=True)
    f = await c.ws_recv(sid)
    assert f.opcode == OP_TEXT and f.rsv1
    assert inflate_message(f.payload) == text
    await c.close()


# ------------------------------------------------------ sharing a connection


async def test_plain_requests_and_websockets_share_a_connection(start_h2: StartH2) -> None:
    async def handler(request: Request) -> Response:
        await asyncio.sleep(0)
        if request.path == "/":
            assert request.http_version == "2"
            return Response("<p>page</p>", content_type="text/html")
        if request.path == "/echo-body":
            return Response(request.body)
        return Response.text(404, "nope")

    srv = await start_h2(handler=handler, server_options={"max_body_size": 1024})
    c = await srv.client()
    ws_ids = [await srv.open_ws(c, "/echo") for _ in range(3)]
    get = c.request("GET", "/", authority=srv.authority)
    post = c.request("POST", "/echo-body", authority=srv.authority, body=b"x" * 1000)
    big = c.request("POST", "/echo-body", authority=srv.authority, body=b"x" * 5000)
    for i, sid in enumerate(ws_ids):
        c.ws_send(sid, OP_TEXT, f"ws{i}".encode())
    assert (await c.response(get)).status == 200
    assert await c.body(get) == b"<p>page</p>"
    assert (await c.response(post)).status == 200
    assert await c.body(post) == b"x" * 1000
    assert (await c.response(big)).status == 413
    for i, sid in enumerate(ws_ids):
        assert (await c.ws_recv(sid)).payload == f"ws{i}".encode()
    await c.close()


async def test_one_streams_limit_does_not_touch_its_siblings(start_h2: StartH2) -> None:
    srv = await start_h2(max_payload=1000)
    c = await srv.client()
    a = await srv.open_ws(c)
    b = await srv.open_ws(c)
    c.ws_send(a, OP_BINARY, b"z" * 5000)  # too big: 1009 on stream a only
    f = await c.ws_recv(a)
    assert f.opcode == OP_CLOSE and f.close_code == 1009
    c.ws_send(b, OP_TEXT, b"still here")
    assert (await c.ws_recv(b)).payload == b"still here"
    c.ws_send(a, OP_CLOSE, close_payload(1000))
    await c.wait(lambda: c.streams[a].ended or c.streams[a].reset is not None, what="a ends")
    c.ws_send(b, OP_TEXT, b"and now")
    assert (await c.ws_recv(b)).payload == b"and now"
    assert c.goaway is None
    await c.close()


# --------------------------------------------------------------- flow control


async def test_pause_closes_only_that_streams_window(start_h2: StartH2) -> None:
    from wshub.transport import http2

    srv = await start_h2()
    assert srv.ws is not None
    c = await srv.client()
    paused = await srv.open_ws(c)
    other = await srv.open_ws(c)
    await wait_for(lambda: len(srv.opened) == 2, what="both open")
    pid = srv.opened[0]
    assert srv.ws.pause(pid) is True
    assert srv.ws.is_paused(pid)
    # Fill the paused stream's window: 8 KiB messages until h2 lets us send no more.
    chunk = b"p" * 8192
    sent = 0
    while c.conn.local_flow_control_window(paused) >= len(chunk) + 8:
        c.ws_send(paused, OP_BINARY, chunk)
        sent += 1
    assert sent * len(chunk) >= http2.STREAM_WINDOW - 2 * len(chunk)
    # A round trip on the sibling proves the server read all of that ...
    c.ws_send(other, OP_TEXT, b"sibling")
    assert (await c.ws_recv(other)).payload == b"sibling"
    # ... without reopening the paused stream's window or delivering it.
    assert c.conn.local_flow_control_window(paused) < len(chunk) + 8
    assert [m for m in srv.messages if m[0] == pid] == []
    assert srv.ws.resume(pid) is True
    await wait_for(
        lambda: len([m for m in srv.messages if m[0] == pid]) == sent, what="paused messages"
    )
    await c.wait(
        lambda: c.conn.local_flow_control_window(paused) >= http2.STREAM_WINDOW // 2,
        what="window reopened",
    )
    assert srv.ws.bytes_read(pid) == sent * (len(chunk) + 8)  # 2 + 2 + 4 header+mask each
    await c.close()


async def test_send_respects_the_peers_window(start_h2: StartH2) -> None:
    srv = await start_h2(echo=False)
    assert srv.ws is not None
    c = await srv.client()
    c.auto_ack = False  # our window (65535 by default) stays closed once used
    sid = await srv.open_ws(c)
    await wait_for(lambda: len(srv.opened) == 1, what="open")
    cid = srv.opened[0]
    big = b"B" * (1024 * 1024)
    assert srv.ws.send(cid, big) is False  # most of it waits for our window
    drained = asyncio.ensure_future(srv.ws.drain(cid))
    st = c.streams[sid]
    await c.wait(lambda: len(st.data) >= 60000, what="the first window's worth")
    assert not drained.done()
    assert len(st.data) <= 65535
    written = srv.ws.bytes_written(cid)
    assert written == len(big) + 10  # the frame header: 2 + 8 bytes of length
    c.auto_ack = True
    c.conn.acknowledge_received_data(len(st.data), sid)
    c.conn.increment_flow_control_window(4 * 1024 * 1024)
    c.conn.increment_flow_control_window(4 * 1024 * 1024, sid)
    c.flush()
    f = await c.ws_recv(sid, timeout=20)
    assert f.opcode == OP_BINARY and f.payload == big
    await asyncio.wait_for(drained, 10)
    await c.close()


async def test_socket_options_act_on_the_shared_socket(start_h2: StartH2) -> None:
    srv = await start_h2()
    assert srv.ws is not None
    c = await srv.client()
    await srv.open_ws(c)
    await wait_for(lambda: len(srv.opened) == 1, what="open")
    cid = srv.opened[0]
    assert srv.ws.set_no_delay(cid, True) is True
    assert srv.ws.set_keep_alive(cid, True, 30.0) is True
    from wshub.transport.http2 import Http2Protocol

    proto = next(
        p.transport.get_protocol()
        for p in srv.server.connections.protocols
        if p.transport is not None and isinstance(p.transport.get_protocol(), Http2Protocol)
    )
    sock = proto.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert srv.ws.set_keep_alive(cid, False) is True
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    await c.close()


# ------------------------------------------------------------------- shutdown


async def test_shutdown_sends_goaway_and_1001(start_h2: StartH2) -> None:
    srv = await start_h2()
    c = await srv.client()
    sid = await srv.open_ws(c)
    await wait_for(lambda: len(srv.opened) == 1, what="open")

    async def answer_close() -> None:
        f = await c.ws_recv(sid)
        assert f.opcode == OP_CLOSE and f.close_code == 1001
        c.ws_send(sid, OP_CLOSE, close_payload(1001))

    answering = asyncio.ensure_future(answer_close())
    await srv.server.close(timeout=5.0)
    await answering
    await c.wait(lambda: c.goaway is not None, what="GOAWAY")
    assert c.goaway is not None and c.goaway.error_code == 0
    ev = srv.closed[srv.opened[0]]
    assert (ev.code, ev.was_clean) == (1001, True)
    await c.wait(c.closed.is_set, what="the connection to close")
    assert not srv.server.connections.protocols
    await c.close()


async def test_connection_loss_closes_every_stream_1006(start_h2: StartH2) -> None:
    srv = await start_h2()
    c = await srv.client()
    await srv.open_ws(c)
    await srv.open_ws(c)
    await wait_for(lambda: len(srv.opened) == 2, what="open")
    await c.close()
    await wait_for(lambda: len(srv.closed) == 2, what="close events")
    assert {ev.code for ev in srv.closed.values()} == {1006}
    await wait_for(lambda: not srv.server.connections.protocols, what="connection table emptied")


def test_h2_is_a_runtime_dependency() -> None:
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert '"h2' in deps, "h2 must be installed with a plain `pip install wshub`"
    assert HttpServer().connections.speaks_h2


async def test_cli_serve_tls_speaks_h2_and_http11_on_one_port() -> None:
    import shutil
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    exe = shutil.which("wshub", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "wshub"]
    proc = subprocess.Popen(
        [*cmd, "serve", "--tls", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        c = None
        for _ in range(300):
            if proc.poll() is not None:
                pytest.fail(f"wshub serve --tls exited early with {proc.returncode}")
            try:
                c = await H2Client.connect("127.0.0.1", port, tls=True)
                break
            except OSError:
                await asyncio.sleep(0.05)
        if c is None:
            pytest.fail("wshub serve --tls did not start listening")
        assert c.alpn == "h2"
        sid = await c.open_ws("/", authority=f"127.0.0.1:{port}")
        assert (await c.response(sid)).status == 200
        c.ws_send(sid, OP_TEXT, b"over h2")
        assert (await c.ws_recv(sid)).payload == b"over h2"
        await c.close()
        client_ctx = ssl.create_default_context()
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
        async with websockets.connect(f"wss://127.0.0.1:{port}/", ssl=client_ctx) as ws1:
            await ws1.send("over http/1.1")
            assert await ws1.recv() == "over http/1.1"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

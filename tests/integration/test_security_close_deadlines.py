"""Peers that never finish a close: each is dropped at the close timeout.

A client that sends its Close (or half-closes) but never reads what the
server still has for it used to keep its connection, its place in
``ws.clients`` and its per-IP slot until it hung up: the server's answer
waited for a drain that never came (HTTP/1.1) or for a stream window that
never opened (HTTP/2).  The connection core now gives every end of the
transport a deadline, after which the transport is aborted.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from typing import Any

import pytest

from tests.conftest import Running, StartServer, wait_for
from tests.integration.h2_client_support import OP_CLOSE, H2Client, close_payload
from tests.rawws import client_frame, close_body

CLOSE_TIMEOUT = 0.5


def record_closes(srv: Running) -> list[tuple[str, Any]]:
    closes: list[tuple[str, Any]] = []
    srv.ws.on("close", lambda cid, ev: closes.append((cid, ev)))
    return closes


async def open_non_reader(srv: Running) -> tuple[socket.socket, str]:
    """A raw client with a tiny receive buffer that reads the 101 and nothing more."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", srv.port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await asyncio.wait_for(loop.sock_recv(sock, 1), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    await wait_for(lambda: len(srv.ws.clients) == 1, what="the client to open")
    return sock, srv.ws.clients[0]


async def fill_until_backed_up(srv: Running, cid: str) -> None:
    """Send until the server holds bytes of its own for this client (the
    kernel's buffers are full), staying under write_limit (no 1008)."""
    chunk = b"x" * 65536
    for _ in range(400):  # at most 25 MiB: the kernel takes a few MiB at most
        if not srv.ws.send(cid, chunk):
            return
        await asyncio.sleep(0)
    raise AssertionError("the client's buffers never filled")


@pytest.mark.parametrize(
    ("how", "reported"),
    [
        # Both Close frames passed (our reply is stuck in our buffer): clean.
        ("close", (1000, True)),
        # FIN without a Close: no closing handshake.
        ("half-close", (1006, False)),
    ],
)
async def test_a_non_reader_that_stops_is_dropped_http1(
    start_server: StartServer, how: str, reported: tuple[int, bool]
) -> None:
    srv = await start_server(close_timeout=CLOSE_TIMEOUT, ping_delay=0)
    closes = record_closes(srv)
    sock, cid = await open_non_reader(srv)
    try:
        await fill_until_backed_up(srv, cid)
        if how == "close":
            await asyncio.get_running_loop().sock_sendall(sock, client_frame(0x8, close_body(1000)))
        else:
            sock.shutdown(socket.SHUT_WR)  # FIN, and still not reading
        await wait_for(lambda: bool(closes), timeout=10, what="the close event")
        closed_id, event = closes[0]
        assert closed_id == cid
        assert (event.code, event.was_clean) == reported
        assert srv.ws.clients == []
    finally:
        sock.close()


async def test_close_sent_with_a_zero_window_is_dropped_http2(start_server: StartServer) -> None:
    srv = await start_server(close_timeout=CLOSE_TIMEOUT, ping_delay=0)
    closes = record_closes(srv)
    c = await H2Client.connect("127.0.0.1", srv.port, tls=False)
    try:
        c.auto_ack = False  # the stream window, once used, stays closed
        sid = await c.open_ws("/", authority=f"127.0.0.1:{srv.port}", scheme="http")
        st = await c.response(sid)
        assert st.status == 200
        await wait_for(lambda: len(srv.ws.clients) == 1, what="the client to open")
        cid = srv.ws.clients[0]
        srv.ws.send(cid, b"y" * 200_000)  # more than the 65,535-byte window
        await c.wait(lambda: len(st.data) >= 60_000, what="the first window's worth")
        c.ws_send(sid, OP_CLOSE, close_payload(1000))
        await wait_for(lambda: bool(closes), timeout=10, what="the close event")
        assert srv.ws.clients == []
        # The stream the server could not finish is reset, not left open.
        await c.wait(lambda: st.reset is not None, timeout=10, what="RST_STREAM")
    finally:
        await c.close()

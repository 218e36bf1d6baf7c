"""The socket methods: bytes_read/written, pause/resume/is_paused, keep-alive, no-delay."""

from __future__ import annotations

import socket
from typing import Any

import websockets

from tests.conftest import StartServer, wait_for
from tests.rawws import RawClient, client_frame, upgrade_request


async def test_byte_counters_count_the_wire(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    got: list[Any] = []
    ws.on("message", lambda cid, data: got.append(data))
    raw = await RawClient.connect("127.0.0.1", srv.port, key="dGhlIHNhbXBsZSBub25jZQ==")
    try:
        await wait_for(lambda: len(ws.clients) == 1)
        [cid] = ws.clients
        request = upgrade_request("/", host=f"127.0.0.1:{srv.port}", key="dGhlIHNhbXBsZSBub25jZQ==")
        response_size = raw.reply.head_size  # what the client really received
        assert raw.reply.header("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert ws.bytes_read(cid) == len(request)
        assert ws.bytes_written(cid) == response_size
        frame = client_frame(0x2, b"x" * 300)  # 2 + 2 + 4 + 300 bytes
        await raw.send(frame)
        await wait_for(lambda: len(got) == 1)
        assert ws.bytes_read(cid) == len(request) + 308
        ws.send(cid, b"y" * 70000)  # 2 + 8 + 70000 bytes
        await raw.recv()
        assert ws.bytes_written(cid) == response_size + 70010
    finally:
        raw.close()


async def test_pause_holds_messages_until_resume(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    got: list[Any] = []
    ws.on("message", lambda cid, data: got.append(data))
    opened: list[str] = []
    ws.on("open", opened.append)
    async with (
        websockets.connect(srv.url, compression=None) as a,
        websockets.connect(srv.url, compression=None) as b,
    ):
        await wait_for(lambda: len(opened) == 2)
        id_a = opened[0]
        assert ws.is_paused(id_a) is False
        assert ws.pause(id_a) is True
        assert ws.is_paused(id_a) is True
        await a.send("a1")
        await a.send("a2")
        await b.send("b1")  # the other client is served meanwhile
        await wait_for(lambda: "b1" in got)
        assert got == ["b1"]  # a's messages wait: nothing is read from a paused client
        assert ws.resume(id_a) is True  # as in Node: "no longer paused"
        assert ws.is_paused(id_a) is False
        await wait_for(lambda: len(got) == 3)
    assert got == ["b1", "a1", "a2"]


async def test_pause_inside_a_callback_holds_the_rest_of_a_packet(
    start_server: StartServer,
) -> None:
    srv = await start_server()
    ws = srv.ws
    got: list[Any] = []

    @ws.on("message")
    def on_message(cid: str, data: Any) -> None:
        got.append(data)
        if data == "pause":
            ws.pause(cid)

    raw = await RawClient.connect("127.0.0.1", srv.port)
    try:
        await wait_for(lambda: len(ws.clients) == 1)
        [cid] = ws.clients
        # Three messages in one TCP write: the parser sees them all at once.
        await raw.send(
            client_frame(0x1, b"pause") + client_frame(0x1, b"two") + client_frame(0x1, b"three")
        )
        await wait_for(lambda: len(got) >= 1)
        ws.send(cid, "probe")  # a round trip proves the server went on with its loop
        await raw.recv()
        assert got == ["pause"]
        ws.resume(cid)
        await wait_for(lambda: len(got) == 3)
        assert got == ["pause", "two", "three"]
    finally:
        raw.close()


def server_socket(srv: Any, cid: str) -> socket.socket:
    # The server side of the TCP connection (white-box: the only way to see
    # an option set on it; the client cannot observe TCP_NODELAY/SO_KEEPALIVE).
    sock = srv.ws._clients[cid].link.transport.get_extra_info("socket")
    assert sock is not None
    return sock  # type: ignore[no-any-return]


async def test_set_no_delay_and_keep_alive(start_server: StartServer) -> None:
    srv = await start_server()
    ws = srv.ws
    async with websockets.connect(srv.url, compression=None) as client:
        await wait_for(lambda: len(ws.clients) == 1)
        [cid] = ws.clients
        sock = server_socket(srv, cid)
        assert ws.set_no_delay(cid, False) is True
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert ws.set_no_delay(cid) is True
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert ws.set_keep_alive(cid, True, 30.0) is True
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        assert ws.set_keep_alive(cid) is True  # defaults: off
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        ws.send(cid, "still works")
        assert await client.recv() == "still works"


async def test_closing_a_paused_client_completes_the_handshake(start_server: StartServer) -> None:
    # close_timeout is long: a clean CloseEvent proves the peer's Close was read.
    srv = await start_server(close_timeout=30.0)
    ws = srv.ws
    closed: list[Any] = []
    ws.on("close", lambda cid, ev: closed.append(ev))
    async with websockets.connect(srv.url, compression=None) as client:
        await wait_for(lambda: len(ws.clients) == 1)
        [cid] = ws.clients
        ws.pause(cid)
        ws.close(cid, 4000, "paused but closing")
        await client.wait_closed()
        assert client.close_code == 4000
    await wait_for(lambda: len(closed) == 1, timeout=10)
    assert (closed[0].code, closed[0].reason, closed[0].was_clean) == (
        4000,
        "paused but closing",
        True,
    )

"""HttpServer(loopback_congestion=...): large messages to a peer on this host.

Before the first message of 64 KiB or more to a client on a loopback
address, the connection's socket is switched to the named congestion
control (e.g. "cubic": no pacing of data that never leaves the host).
It is benchmark tuning and off by default (None: the system's choice).
The tests name "reno", which every Linux kernel has built in and lets any
user choose, so they do not depend on which modules are loaded; the
"before" figure is the system's default, read from /proc.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import websockets

from tests.conftest import StartServer, system_congestion_control, wait_for
from tests.integration.h2_client_support import OP_BINARY, H2Client
from wshub import HttpServer, WebSocket
from wshub.transport.link import is_loopback


def _cc(sock: Any) -> str:
    raw: bytes = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    return raw.split(b"\0", 1)[0].decode()


def _server_socket(ws: WebSocket) -> Any:
    [cid] = ws.clients
    link: Any = ws._clients[cid].link
    return link._socket_transport().get_extra_info("socket")


_DEFAULT: Any = object()  # the option not given at all


@pytest.mark.parametrize(
    ("option", "sizes", "expect_switch"),
    [
        ("reno", [10, 70_000, 10], True),  # switched before the large one
        ("reno", [10, 60_000, 10], False),  # no large message: left alone
        (None, [10, 70_000, 10], False),  # switched off
        (_DEFAULT, [10, 70_000, 10], False),  # off by default
        ("nosuchcc", [10, 70_000, 10], False),  # refused by the kernel: left alone
    ],
)
async def test_large_message_to_a_local_client(
    start_server: StartServer, option: str | None, sizes: list[int], expect_switch: bool
) -> None:
    default = system_congestion_control()
    options = {} if option is _DEFAULT else {"loopback_congestion": option}
    srv = await start_server(server_options=options)
    srv.ws.on("message", lambda cid, data: srv.ws.send(cid, data))
    async with websockets.connect(srv.url, compression=None, max_size=None) as client:
        await wait_for(lambda: len(srv.ws.clients) == 1, what="client registered")
        sock = _server_socket(srv.ws)
        assert _cc(sock) == default
        for n in sizes:
            payload = bytes(n)
            await client.send(payload)
            assert await client.recv() == payload  # the connection works throughout
        assert _cc(sock) == ("reno" if expect_switch else default)


async def test_large_message_over_http2() -> None:
    default = system_congestion_control()
    server = HttpServer(loopback_congestion="reno")
    ws = WebSocket(server)
    await server.serve("127.0.0.1", 0)
    try:
        client = await H2Client.connect("127.0.0.1", server.port, tls=False)
        sid = await client.open_ws("/", authority=f"127.0.0.1:{server.port}", scheme="http")
        assert (await client.response(sid)).status == 200
        await wait_for(lambda: len(ws.clients) == 1, what="client registered")
        sock = _server_socket(ws)
        assert _cc(sock) == default
        [cid] = ws.clients
        ws.send(cid, bytes(100_000))
        frame = await client.ws_recv(sid)
        assert (frame.opcode, len(frame.payload)) == (OP_BINARY, 100_000)
        assert _cc(sock) == "reno"
        await client.close()
    finally:
        await server.close(timeout=2.0)


def test_off_by_default() -> None:
    assert HttpServer().loopback_congestion is None


def test_is_loopback() -> None:
    for ip in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(ip), ip
    for ip in ("10.0.0.1", "128.0.0.1", "::2", "::ffff:10.0.0.1", "", "1127.0.0.1"):
        assert not is_loopback(ip), ip


@pytest.mark.parametrize("bad", ["", "a b", "x" * 16, "cubic\0", "é", 3])
def test_bad_names_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        HttpServer(loopback_congestion=bad)


async def test_unused_without_a_large_message_is_cheap() -> None:
    # Only a flag is set at the handshake; nothing is asked of the socket
    # until a large message (the handshake path stays free of system calls).
    server = HttpServer(loopback_congestion="reno")
    ws = WebSocket(server)
    await server.serve("127.0.0.1", 0)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/") as client:
            await wait_for(lambda: len(ws.clients) == 1, what="client registered")
            [cid] = ws.clients
            link: Any = ws._clients[cid].link
            assert link._bulk_cc == "reno"
            await client.send("hi")
            await asyncio.sleep(0.05)
            assert link._bulk_cc == "reno"
    finally:
        await server.close(timeout=2.0)

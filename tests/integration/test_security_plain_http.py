"""Plain HTTP/1.1 from a client that does not read, and per-IP counting (issue #15).

* A client that pipelines requests and never reads the answers made the
  server buffer every response (about 190x the request bytes with a 5 KB
  page): now the server stops reading while its write buffer is over the
  high-water mark, so it holds at most about that much.
* Such a connection outlived every timeout (``close()`` waits for a drain
  that never comes): now a peer must take some of what was written within
  ``write_timeout``, and a closing connection lingers no longer than that.
* Plain-HTTP connections were not counted under ``limit_by_ip``: now every
  connection is, from accept, and an upgraded one is counted once.

The deadlines are set small here; nothing is timed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest
import websockets

from tests.conftest import Running, StartServer, wait_for
from tests.integration.h2_client_support import H2Client
from tests.integration.security_support import read_reply, refused, wshub_lines
from tests.rawws import http_exchange
from wshub import Request

PAGE = b"x" * 5000
WRITE_TIMEOUT = 0.3
# The transport's default high-water mark (asyncio and uvloop): what a
# connection may hold beyond one answer before it stops reading.
HIGH_WATER = 64 * 1024


@pytest.fixture(autouse=True)
def _log_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wshub")


class Pages:
    """A handler that serves PAGE and counts the requests it answered."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: Request) -> bytes:
        self.calls += 1
        return PAGE


async def start(start_server: StartServer, pages: Pages, **ws_options: Any) -> Running:
    return await start_server(
        handler=pages,
        server_options={"write_timeout": WRITE_TIMEOUT, "handshake_timeout": 2.0},
        **ws_options,
    )


def request(path: str = "/", close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


async def non_reading_client(srv: Running) -> tuple[socket.socket, asyncio.StreamWriter]:
    """A client whose receive buffer is small and that never reads it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (srv.host, srv.port))
    _reader, writer = await asyncio.open_connection(sock=sock)
    return sock, writer


def server_side(srv: Running) -> Any:
    [proto] = srv.server.connections.protocols
    return proto


async def test_pipelined_requests_from_a_client_that_never_reads(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    pages = Pages()
    srv = await start(start_server, pages)
    _sock, writer = await non_reading_client(srv)
    count = 4000  # 20 MB of answers to 140 KB of requests
    writer.write(request() * count)  # not drained: the server may stop reading
    await wait_for(lambda: len(srv.server.connections.protocols) == 1, what="the connection")
    proto = server_side(srv)
    largest = 0

    def stalled() -> bool:
        nonlocal largest
        t = proto.transport
        if t is None or t.is_closing():
            return True
        largest = max(largest, t.get_write_buffer_size())
        return not t.is_reading()

    await wait_for(stalled, what="the server to stop reading")
    for _ in range(20):  # it stays bounded while the client goes on not reading
        stalled()
        await asyncio.sleep(0.005)
    # Bounded by the buffer's limit, not by the number of requests (the
    # kernel's socket buffers take some answers too, a few MB at most).
    assert largest <= HIGH_WATER + 2 * len(PAGE), largest
    assert pages.calls < count // 2, pages.calls
    # And the connection does not outlive write_timeout.
    await wait_for(
        lambda: not srv.server.connections.protocols, what="the connection to be aborted"
    )
    assert any("did not read" in line for line in wshub_lines(caplog))
    writer.close()


async def test_a_client_that_reads_slowly_gets_everything(start_server: StartServer) -> None:
    # Backpressure, not a cut-off: a client that reads (late) gets every answer.
    pages = Pages()
    srv = await start(start_server, pages)
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    count = 200
    writer.write(request() * (count - 1) + request(close=True))
    await asyncio.sleep(WRITE_TIMEOUT / 3)
    for _ in range(count):
        reply = await read_reply(reader)
        assert (reply.status, reply.body) == (200, PAGE)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    assert pages.calls == count
    writer.close()


async def test_a_closing_connection_does_not_linger_forever(start_server: StartServer) -> None:
    # "Connection: close" and a big answer the client never reads: close()
    # would wait for a drain that never comes.
    big = b"y" * 4_000_000

    def handler(request: Request) -> bytes:
        return big

    srv = await start_server(handler=handler, server_options={"write_timeout": WRITE_TIMEOUT})
    _sock, writer = await non_reading_client(srv)
    writer.write(request(close=True))
    await wait_for(lambda: len(srv.server.connections.protocols) == 1, what="the connection")
    proto = server_side(srv)
    await wait_for(lambda: proto._closing, what="the answer to be written")
    await wait_for(
        lambda: not srv.server.connections.protocols, what="the connection to be aborted"
    )
    writer.close()


async def test_keep_alive_connection_idles_out(start_server: StartServer) -> None:
    pages = Pages()
    srv = await start_server(handler=pages, server_options={"handshake_timeout": 0.2})
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(request())
    assert (await read_reply(reader)).status == 200
    assert await asyncio.wait_for(reader.read(), 10) == b"", "idle keep-alive must be closed"
    writer.close()


# ------------------------------------------------------------------- per IP


async def keep_alive(srv: Running) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(request())
    reply = await read_reply(reader)
    assert (reply.status, reply.body) == (200, PAGE)
    return reader, writer


async def test_plain_http_connections_count_under_limit_by_ip(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    pages = Pages()
    srv = await start(start_server, pages, limit_by_ip=2)
    held = [await keep_alive(srv) for _ in range(2)]
    assert srv.ws._per_ip.count("127.0.0.1") == 2
    caplog.clear()
    reply = await refused(srv, request())
    assert reply.status == 429
    assert pages.calls == 2
    assert len([line for line in wshub_lines(caplog) if "429" in line]) == 1
    # A WebSocket is refused too: the address has two connections.
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(srv.url + "/", compression=None)
    assert info.value.response.status_code == 429
    # One goes: there is room for one more.
    held.pop()[1].close()
    await wait_for(lambda: srv.ws._per_ip.count("127.0.0.1") == 1, what="the slot back")
    held.append(await keep_alive(srv))
    for _reader, writer in held:
        writer.close()
    await wait_for(lambda: len(srv.ws._per_ip) == 0, what="the per-IP table to empty")


async def test_a_websocket_is_counted_once(start_server: StartServer) -> None:
    pages = Pages()
    srv = await start(start_server, pages, limit_by_ip=2)
    srv.ws.on("message", lambda cid, data: srv.ws.send(cid, data))
    a = await websockets.connect(srv.url + "/", compression=None)
    b = await websockets.connect(srv.url + "/", compression=None)
    assert srv.ws._per_ip.count("127.0.0.1") == 2
    for c in (a, b):
        await c.send("hi")
        assert await c.recv() == "hi"
    assert (await refused(srv, request())).status == 429
    await a.close()
    await wait_for(lambda: srv.ws._per_ip.count("127.0.0.1") == 1, what="a's slot back")
    _reader, writer = await keep_alive(srv)  # a page and a WebSocket: two
    assert srv.ws._per_ip.count("127.0.0.1") == 2
    writer.close()
    await b.close()
    await wait_for(lambda: len(srv.ws._per_ip) == 0, what="the per-IP table to empty")


async def test_a_refused_upgrade_gives_its_slot_back(start_server: StartServer) -> None:
    srv = await start(start_server, Pages(), limit_by_ip=1, allow_origin=["https://a.example"])
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(srv.url + "/", origin="https://evil.example", compression=None)  # type: ignore[arg-type]
    assert info.value.response.status_code == 403
    await wait_for(lambda: len(srv.ws._per_ip) == 0, what="the per-IP table to empty")
    reply = await http_exchange(srv.host, srv.port, request(close=True))
    assert reply.status == 200


async def test_trusted_proxy_connections_are_not_counted_at_connect(
    start_server: StartServer,
) -> None:
    # Behind a proxy every connection comes from the proxy: its clients are
    # told apart at the upgrade, by their forwarding headers.
    pages = Pages()
    srv = await start(start_server, pages, limit_by_ip=1, trusted_proxies=["127.0.0.1"])
    held = [await keep_alive(srv) for _ in range(3)]
    assert len(srv.ws._per_ip) == 0
    for _reader, writer in held:
        writer.close()


async def test_an_http2_connection_counts_once_and_is_refused_past_the_limit(
    start_server: StartServer,
) -> None:
    pages = Pages()
    srv = await start(start_server, pages, limit_by_ip=1)
    client = await H2Client.connect("127.0.0.1", srv.port, tls=False)
    try:
        authority = f"127.0.0.1:{srv.port}"
        for _ in range(3):  # streams are not connections
            sid = client.request("GET", "/", authority=authority, scheme="http")
            assert await client.body(sid) == PAGE
        assert srv.ws._per_ip.count("127.0.0.1") == 1
        assert (await refused(srv, request())).status == 429
    finally:
        await client.close()
    await wait_for(lambda: len(srv.ws._per_ip) == 0, what="the per-IP table to empty")

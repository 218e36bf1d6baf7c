"""limit_by_ip over HTTP/2: a connection counts once, as itself or through its WebSockets.

On HTTP/1.1 a connection's count passes to its WebSocket at the upgrade.
An HTTP/2 connection carries many streams: its count passes to its first
WebSocket and comes back when the last one ends, so that ``limit_by_ip=1``
still lets one client use one WebSocket over HTTP/2, and a connection that
had WebSockets is counted again once it has none.
"""

from __future__ import annotations

import asyncio

from tests.conftest import StartServer, wait_for
from tests.integration.h2_client_support import OP_CLOSE, H2Client, close_payload


def per_ip_count(srv: object) -> int:
    ws = srv.ws  # type: ignore[attr-defined]
    return sum(ws._per_ip._counts.values())


async def test_one_websocket_over_h2_under_a_limit_of_one(start_server: StartServer) -> None:
    srv = await start_server(limit_by_ip=1, ping_delay=0)
    authority = f"127.0.0.1:{srv.port}"
    c = await H2Client.connect("127.0.0.1", srv.port, tls=False)
    try:
        await c.wait(c.settings_seen.is_set, what="SETTINGS")
        await wait_for(lambda: per_ip_count(srv) == 1, what="the connection to be counted")
        sid = await c.open_ws("/", authority=authority, scheme="http")
        assert (await c.response(sid)).status == 200
        assert per_ip_count(srv) == 1  # counted once, through its WebSocket
        # A second WebSocket from the same address is over the limit.
        sid2 = await c.open_ws("/", authority=authority, scheme="http")
        assert (await c.response(sid2)).status == 429
        assert per_ip_count(srv) == 1
        # The WebSocket ends; the connection stays and counts again.
        c.ws_send(sid, OP_CLOSE, close_payload(1000))
        await wait_for(lambda: not srv.ws.clients, what="the client to close")
        await wait_for(lambda: per_ip_count(srv) == 1, what="the connection to count again")
        # So another connection from this address is refused.
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(f"GET / HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readline(), 5)
        assert head.startswith(b"HTTP/1.1 429"), head
        writer.close()
    finally:
        await c.close()
    await wait_for(lambda: per_ip_count(srv) == 0, what="every count to be given back")

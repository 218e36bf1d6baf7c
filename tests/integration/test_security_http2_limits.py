"""HTTP/2 limits: per-IP counting of a connection and its WebSockets; responses a peer never takes.

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


async def test_a_response_the_peer_never_takes_is_reset(start_server: StartServer) -> None:
    # A peer whose stream window stays shut cannot hold a response (and its
    # memory) forever: write_timeout without progress resets the stream.
    srv = await start_server(
        handler=lambda request: b"z" * 200_000, server_options={"write_timeout": 0.5}
    )
    c = await H2Client.connect("127.0.0.1", srv.port, tls=False)
    try:
        c.auto_ack = False  # our window closes after 65,535 bytes
        await c.wait(c.settings_seen.is_set, what="SETTINGS")
        sid = c.request("GET", "/", authority=f"127.0.0.1:{srv.port}", scheme="http")
        st = await c.response(sid)
        assert st.status == 200
        await c.wait(lambda: st.reset is not None, timeout=10, what="RST_STREAM")
        assert len(st.data) <= 65_535
        # The connection itself goes on serving.
        c.auto_ack = True
        c.conn.increment_flow_control_window(1_000_000)
        sid2 = c.request("GET", "/", authority=f"127.0.0.1:{srv.port}", scheme="http")
        c.conn.increment_flow_control_window(1_000_000, sid2)
        c.flush()
        assert len(await c.body(sid2)) == 200_000
    finally:
        await c.close()

"""A closed connection's objects are freed by reference counting alone.

If the link, the hub's client record, the protocol or the Connection sat in
a reference cycle, each closed connection would wait for a garbage-collector
pass (holding its transport and buffers until then) and every handshake
would add to the collector's work.  With the collector switched off, nothing
of ours may be left for it to find after clients come and go through the
usual close paths.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter

import websockets

from tests.conftest import StartServer, wait_for
from tests.rawws import RawClient, client_frame, close_body

# Our per-connection classes (names, so that the check needs no imports of
# private modules and still names what leaked).
OURS = {
    "Http1Protocol",
    "Http1Link",
    "_Client",
    "_Admission",
    "Connection",
    "UpgradeRequest",
    "UpgradeInfo",
    "_ParsedRequest",
}


async def test_closed_connections_leave_no_cycles(start_server: StartServer) -> None:
    srv = await start_server(allow_origin="*")
    srv.ws.on("message", lambda cid, data: srv.ws.send(cid, data))
    closed: list[str] = []
    srv.ws.on("close", lambda cid, event: closed.append(cid))

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        # Client-initiated close (third-party client), server-initiated
        # close, and a raw client that hangs up after its Close.
        for _ in range(3):
            async with websockets.connect(srv.url) as client:
                await client.send("hi")
                assert await client.recv() == "hi"
        async with websockets.connect(srv.url) as client:
            await wait_for(lambda: len(srv.ws.clients) == 1, what="client registered")
            (cid,) = list(srv.ws.clients)
            srv.ws.close(cid, 4000, "bye")
            await client.wait_closed()
        raw = await RawClient.connect(srv.host, srv.port)
        await raw.send(client_frame(0x8, close_body(1000)))
        assert (await raw.recv())[1] == 0x8
        raw.close()

        await wait_for(lambda: len(closed) == 5, what="five close events")
        await wait_for(lambda: not srv.server.connections.protocols, what="connections gone")
        await asyncio.sleep(0.05)  # let the loop drop its last handles

        gc.collect()
        left = Counter(type(o).__name__ for o in gc.garbage if type(o).__name__ in OURS)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not left, f"freed only by the garbage collector: {dict(left)}"

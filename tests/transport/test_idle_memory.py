"""What an idle WebSocket connection holds, counted by tracemalloc.

S6 of the benchmark measures a server's RSS per idle connection; the part
of it that is ours is what wshub's code allocates per connection and keeps
(the protocol, the link, the Connection core, the hub's client record, the
ID, the peer address ...).  Counted here in bytes, traced to our source
files, so that a per-connection timer, a buffer, a codec for a client that
did not negotiate one, or a copy of a string that connections could share
shows up as a failure with the lines that allocate it.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path

import pytest
import websockets

import wshub
from tests.conftest import StartServer, wait_for
from wshub.transport import epoll

# 128: two whole batches of the pooled client IDs, whichever way they fall.
CONNECTIONS = 128
# On the event loop's transports (io="loop") about 920 bytes today
# (Http1Link 264, Connection 240, the client record 136, the ID 85, the
# server's table of links 64, a byte count 32, the registry's tables; on
# asyncio's loop also the transport's read callback, which set_protocol
# makes anew when the link takes the transport over), with room for a few
# more slots.  The Http1Protocol that read the upgrade request (208) and its
# copy of the peer address (56) are gone.  On wshub's own I/O layer (the
# default on Linux) the transport is ours too, and counted: about 1,100
# (the EpollTransport 112, its entry in the epoll table 36, the peer address
# and port 88), where the loop's transport held over 1,200 bytes uncounted
# (bench/idle_floor.py).
BUDGETS = {"loop": 1000, "auto": 1150}

OUR_FILES = str(Path(wshub.__file__).parent / "*")
_POLL_LINE = next(
    number
    for number, line in enumerate(Path(epoll.__file__).read_text().splitlines(), 1)
    if "self._epoll.poll(" in line
)


def ours_per_connection(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot
) -> tuple[float, str]:
    """Bytes allocated by wshub's code and kept, per connection, between
    the snapshots; and the lines that kept the most."""
    ours = [
        tracemalloc.Filter(True, OUR_FILES, all_frames=True),
        # The (descriptor, events) pairs of the epoll layer's poll: freed at
        # once, but into the interpreter's free list of pairs, which keeps
        # up to 2,000 of them traced to where they were made.
        tracemalloc.Filter(False, epoll.__file__, lineno=_POLL_LINE),
    ]
    diff = after.filter_traces(ours).compare_to(before.filter_traces(ours), "lineno")
    top = "\n".join(
        f"  {stat.size_diff / CONNECTIONS:7.1f} B  {stat.traceback[0]}" for stat in diff[:12]
    )
    return sum(stat.size_diff for stat in diff) / CONNECTIONS, top


@pytest.mark.parametrize("io", ["auto", "loop"])
async def test_an_idle_connection_holds_little_of_ours(start_server: StartServer, io: str) -> None:
    # Deflate on, as `wshub serve` runs: a client that does not offer it
    # must hold no compression state.
    srv = await start_server(allow_origin="*", per_message_deflate=True, server_options={"io": io})
    budget = BUDGETS[io]
    held: list[websockets.ClientConnection] = []
    try:
        # One-time costs (lazy imports, caches) before the count.
        held.append(await websockets.connect(srv.url, compression=None, ping_interval=None))
        await wait_for(lambda: len(srv.ws.clients) == 1, what="first client registered")
        await asyncio.sleep(0.05)
        tracemalloc.start(64)
        try:
            before = tracemalloc.take_snapshot()
            for _ in range(CONNECTIONS):
                held.append(await websockets.connect(srv.url, compression=None, ping_interval=None))
            await wait_for(
                lambda: len(srv.ws.clients) == CONNECTIONS + 1, what="clients registered"
            )
            await asyncio.sleep(0.05)  # the 101s flushed, the handshakes' temporaries gone
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    finally:
        for client in held:
            await client.close()

    per_connection, top = ours_per_connection(before, after)
    assert per_connection <= budget, (
        f"{per_connection:.0f} bytes of ours per idle connection "
        f"(budget {budget}, io={io}); the largest:\n{top}"
    )


async def test_a_connection_keeps_nothing_once_its_ping_is_answered(
    start_server: StartServer,
) -> None:
    # The hub's pings (ping_delay) go to every client: the ping state made
    # for one (payload, time sent) must go once its pong is in.
    srv = await start_server(allow_origin="*")
    held: list[websockets.ClientConnection] = []

    async def ping_all(ids: list[str]) -> None:
        answered = srv.ws.stats.rtt_count + len(ids)
        for client_id in ids:
            # No pong timeout: the loop's timer handles are not ours to count.
            assert srv.ws.ping(client_id, pong_timeout=0)
        await wait_for(lambda: srv.ws.stats.rtt_count >= answered, what="every pong")

    # Traced from before the clients come, so that what a ping replaces
    # (the byte counts) is traced on both sides.
    tracemalloc.start(64)
    try:
        # One client pinged first: one-time costs out of the count.
        held.append(await websockets.connect(srv.url, compression=None, ping_interval=None))
        await wait_for(lambda: len(srv.ws.clients) == 1, what="first client registered")
        await ping_all(list(srv.ws.clients))
        for _ in range(CONNECTIONS):
            held.append(await websockets.connect(srv.url, compression=None, ping_interval=None))
        await wait_for(lambda: len(srv.ws.clients) == CONNECTIONS + 1, what="clients registered")
        await asyncio.sleep(0.05)
        first = next(iter(srv.ws.clients))
        ids = [client_id for client_id in srv.ws.clients if client_id != first]
        before = tracemalloc.take_snapshot()
        await ping_all(ids)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
        for client in held:
            await client.close()

    per_connection, top = ours_per_connection(before, after)
    # Up to about 55 bytes per connection are the interpreter's free lists
    # (80 lists, 100 floats kept for reuse, traced to where they were first
    # made); a kept ping state would add 88.
    assert per_connection <= 64, (
        f"{per_connection:.0f} bytes of ours kept per connection after its pong:\n{top}"
    )

"""History and resume (``wshub.v1``): positions, replay after a dropped
connection, gaps and resets, direct streams, the history's bounds.

The client is the ``websockets`` library speaking the JSON of
docs/protocol.md by hand (tests/integration/v1_support.py); the hub runs
on a loopback port.  The history's own bounds are checked on
:class:`~wshub.hub.history.MemoryHistory` with the clock passed in.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

import pytest
import websockets

from tests.conftest import Running, StartServer, wait_for
from tests.integration.v1_support import V1Peer, allow_all
from wshub.hub.history import ENTRY_OVERHEAD, STREAM_OVERHEAD, MemoryHistory, Position

pytestmark = pytest.mark.timeout(120)

TOTAL = 400


async def start_pubsub(start_server: StartServer, **options: Any) -> Running:
    options.setdefault("history_size", 1000)
    return await start_server(pubsub=True, authorize=allow_all, **options)


def closed_ids(running: Running) -> list[str]:
    seen: list[str] = []
    running.ws.on("close", lambda cid, event: seen.append(cid))
    return seen


async def publish_steadily(running: Running, topic: str, total: int) -> None:
    """Publish ``0 .. total-1`` with a pause between, as a steady publisher."""
    for i in range(total):
        running.ws.publish(topic, str(i))
        await asyncio.sleep(0.002)


async def receive_messages(
    peer: V1Peer, topic: str, out: list[tuple[int, str]], until: int
) -> None:
    """Append ``(seq, data)`` of ``topic``'s messages until ``until`` of them were seen."""
    while len(out) < until:
        message = await peer.recv_type("message")
        assert message["topic"] == topic
        out.append((message["seq"], message["data"]))


async def resume_across_drop(running: Running, drop: str) -> None:
    ws = running.ws
    closed = closed_ids(running)
    peer = await V1Peer.connect(running)
    welcome = await peer.hello()
    client_id = welcome["client_id"]
    subscribed = await peer.subscribe("ticks")
    # Nothing published yet: the topic's stream starts at 0, a place to resume from.
    assert subscribed["position"]["seq"] == 0 and subscribed["recovered"] is False
    got: list[tuple[int, str]] = []
    publisher = asyncio.create_task(publish_steadily(running, "ticks", TOTAL))
    try:
        await receive_messages(peer, "ticks", got, 50)
        epoch = None
        # What the client saw last, as it would remember it.
        last_seq = got[-1][0]
        if drop == "server-close":
            ws.close(client_id, 1012, "restart")
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    message = await peer.recv()
                    if message["type"] == "message":
                        got.append((message["seq"], message["data"]))
                        last_seq = message["seq"]
        else:  # the client's side goes away without a Close
            peer.conn.transport.abort()
        await wait_for(lambda: client_id in closed, 10.0, "the hub's close event")
        position = ws.topic_position("ticks")
        assert position is not None
        epoch = position.epoch
        assert not publisher.done(), "the publisher must still be publishing during the gap"
        again = await V1Peer.connect(running, peer.cookie)
        welcome = await again.hello()
        assert welcome["client_id"] == client_id  # the session cookie kept the ID
        resumed = await again.subscribe("ticks", since={"epoch": epoch, "seq": last_seq})
        assert resumed["recovered"] is True
        assert resumed["position"]["epoch"] == epoch
        await receive_messages(again, "ticks", got, TOTAL)
        await publisher
        await again.close()
    finally:
        publisher.cancel()
    seqs = [seq for seq, _ in got]
    assert seqs == list(range(1, TOTAL + 1)), "every message once, in order"
    assert [data for _, data in got] == [str(i) for i in range(TOTAL)]


@pytest.mark.parametrize("drop", ["server-close", "client-abort"])
async def test_resume_after_a_dropped_connection(start_server: StartServer, drop: str) -> None:
    running = await start_pubsub(start_server)
    await resume_across_drop(running, drop)


async def test_resume_with_a_publisher_client(start_server: StartServer) -> None:
    """Publications by another wshub.v1 client reach the resumed one, in order."""
    running = await start_pubsub(start_server)
    reader = await V1Peer.connect(running)
    await reader.hello()
    await reader.subscribe("room")
    writer = await V1Peer.connect(running)
    await writer.hello()
    for i in range(5):
        await writer.send(type="publish", topic="room", data=f"m{i}")
    first = [await reader.recv_type("message") for _ in range(5)]
    epoch, last = first[-1]["epoch"], first[-1]["seq"]
    reader.conn.transport.abort()
    await wait_for(lambda: len(running.ws.clients) == 1, 10.0, "the reader to be gone")
    for i in range(5, 12):
        await writer.send(type="publish", topic="room", data=f"m{i}", id=i)
        ack = await writer.recv_type("published")
        assert ack["id"] == i and ack["position"] == {"epoch": epoch, "seq": i + 1}
    back = await V1Peer.connect(running, reader.cookie)
    await back.hello()
    answer = await back.subscribe("room", since={"epoch": epoch, "seq": last})
    assert answer["recovered"] is True
    replayed = [await back.recv_type("message") for _ in range(7)]
    assert [m["data"] for m in replayed] == [f"m{i}" for i in range(5, 12)]
    await writer.send(type="publish", topic="room", data="live")
    live = await back.recv_type("message")
    assert (live["data"], live["seq"]) == ("live", 13)
    await back.close()
    await writer.close()


async def test_gap_beyond_the_history_is_explicit(start_server: StartServer) -> None:
    running = await start_pubsub(start_server, history_size=5)
    peer = await V1Peer.connect(running)
    await peer.subscribe("t")
    running.ws.publish("t", "a")
    seen = await peer.recv_type("message")
    await peer.close()
    for i in range(20):
        running.ws.publish("t", f"x{i}")
    back = await V1Peer.connect(running)
    answer = await back.subscribe("t", since={"epoch": seen["epoch"], "seq": seen["seq"]})
    assert answer["recovered"] is False
    gap = await back.recv_type("gap")
    assert gap["reason"] == "truncated" and (gap["from"], gap["to"]) == (2, 16)
    assert gap["topic"] == "t" and gap["position"] == {"epoch": seen["epoch"], "seq": 21}
    kept = [await back.recv_type("message") for _ in range(5)]
    assert [m["seq"] for m in kept] == [17, 18, 19, 20, 21]
    assert [m["data"] for m in kept] == [f"x{i}" for i in range(15, 20)]
    await back.close()


async def test_a_new_epoch_is_a_reset(start_server: StartServer) -> None:
    """The topic's history is dropped (here: the byte budget, by other topics),
    so its next publication starts a new epoch: a resume gets ``reset``."""
    running = await start_pubsub(start_server, history_size=10, history_max_bytes=4 * 1024)
    ws = running.ws
    peer = await V1Peer.connect(running)
    await peer.subscribe("old")
    ws.publish("old", "one")
    seen = await peer.recv_type("message")
    await peer.close()
    for i in range(40):  # well past 4 KiB of history over other topics
        ws.publish(f"other-{i}", "x" * 200)
    ws.publish("old", "two")
    position = ws.topic_position("old")
    assert position is not None and position.epoch != seen["epoch"] and position.seq == 1
    back = await V1Peer.connect(running)
    answer = await back.subscribe("old", since={"epoch": seen["epoch"], "seq": seen["seq"]})
    assert answer["recovered"] is False
    gap = await back.recv_type("gap")
    assert gap["reason"] == "reset"
    assert gap["position"] == {"epoch": position.epoch, "seq": 1}
    ws.publish("old", "three")
    live = await back.recv_type("message")  # nothing replayed after a reset
    assert (live["data"], live["epoch"], live["seq"]) == ("three", position.epoch, 2)
    await back.close()


async def test_resume_of_an_unknown_epoch_is_a_reset(start_server: StartServer) -> None:
    running = await start_pubsub(start_server)
    peer = await V1Peer.connect(running)
    answer = await peer.subscribe("never", since={"epoch": "made-up", "seq": 7})
    assert answer["recovered"] is False and answer["position"] is None
    gap = await peer.recv_type("gap")
    assert gap["reason"] == "reset" and gap["since"] == {"epoch": "made-up", "seq": 7}
    await peer.close()


async def test_direct_messages_sent_during_the_gap(start_server: StartServer) -> None:
    running = await start_pubsub(start_server)
    ws = running.ws
    closed = closed_ids(running)
    peer = await V1Peer.connect(running)
    welcome = await peer.hello()
    client_id = welcome["client_id"]
    assert ws.send(client_id, "d0") is True
    first = await peer.recv_type("direct")
    assert first["data"] == "d0" and first["seq"] == 1
    peer.conn.transport.abort()
    await wait_for(lambda: client_id in closed, 10.0, "the hub's close event")
    # Away within its session: kept (send answers False: not sent now).
    assert ws.send(client_id, "d1") is False
    assert ws.send(client_id, b"\x00\xff") is False
    back = await V1Peer.connect(running, peer.cookie)
    welcome = await back.hello(since={"epoch": first["epoch"], "seq": 1})
    assert welcome["client_id"] == client_id and welcome["recovered"] is True
    replayed = [await back.recv_type("direct") for _ in range(2)]
    assert [m["seq"] for m in replayed] == [2, 3]
    assert replayed[0]["data"] == "d1"
    assert replayed[1]["binary"] is True and replayed[1]["data"] == "AP8="
    ws.send(client_id, "d3")
    assert (await back.recv_type("direct"))["seq"] == 4
    await back.close()


async def test_direct_messages_before_hello_wait_for_it(start_server: StartServer) -> None:
    running = await start_pubsub(start_server)
    ws = running.ws
    ws.on("open", lambda cid: ws.send(cid, f"hi {cid}"))
    peer = await V1Peer.connect(running)
    welcome = await peer.hello()
    direct = await peer.recv_type("direct")
    assert direct["data"] == f"hi {welcome['client_id']}" and direct["seq"] == 1
    await peer.close()


# ----------------------------------------------------------- the bounds


def test_history_keeps_at_most_size_messages() -> None:
    history = MemoryHistory(size=3)
    for i in range(10):
        history.append("t", str(i).encode(), True, now=0.0)
    assert history.kept("t") == 3
    epoch = history.position("t", 0.0)
    assert epoch is not None
    replay = history.replay("t", Position(epoch.epoch, 5), now=0.0)
    assert replay.missing == (6, 7) and [e.seq for e in replay.entries] == [8, 9, 10]
    assert history.replay("t", Position(epoch.epoch, 9), now=0.0).entries[0].payload == b"9"
    assert history.replay("t", Position(epoch.epoch, 11), now=0.0).reset  # never given


def test_history_forgets_messages_older_than_ttl() -> None:
    history = MemoryHistory(size=100, ttl=10.0)
    for i in range(5):
        history.append("t", b"m", True, now=float(i))  # kept at t = 0 .. 4
    start = history.position("t", 5.0)
    assert start is not None
    replay = history.replay("t", Position(start.epoch, 0), now=12.5)  # 0, 1, 2 are older than 10 s
    assert [e.seq for e in replay.entries] == [4, 5] and replay.missing == (1, 3)
    # Nothing left and idle past the ttl: the stream is forgotten (a reset).
    assert history.replay("t", Position(start.epoch, 5), now=30.0).reset
    assert history.position("t", 30.0) is None and history.total_bytes == 0
    history.append("t", b"n", True, now=31.0)
    again = history.position("t", 31.0)
    assert again is not None and again.epoch != start.epoch and again.seq == 1


def test_history_memory_is_bounded_and_measured() -> None:
    """100 topics x 200 kept messages of 64 bytes, after 100,000 publications:
    the kept messages cost their payload plus a bounded overhead each."""
    history = MemoryHistory(size=200, ttl=0.0, max_bytes=1 << 30)
    payloads = [bytes([i % 256]) * 64 for i in range(1000)]
    names = [f"topic-{i}" for i in range(100)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):
            history.append(names[i % 100], payloads[i % 1000], True, now=0.0)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    kept = sum(history.kept(name) for name in names)
    assert kept == 100 * 200
    # The payloads are shared objects here, so ``used`` is the overhead:
    # measured at about 120 bytes per kept message; ENTRY_OVERHEAD (what
    # max_bytes counts) must not undercount it.
    per_message = used / kept
    print(f"history overhead: {per_message:.0f} bytes per kept message")
    assert per_message < ENTRY_OVERHEAD
    assert history.total_bytes == kept * (64 + ENTRY_OVERHEAD) + 100 * STREAM_OVERHEAD


def test_history_byte_budget_drops_whole_streams_oldest_first() -> None:
    history = MemoryHistory(size=1000, max_bytes=10 * (100 + ENTRY_OVERHEAD) + 2 * STREAM_OVERHEAD)
    for _ in range(8):
        history.append("a", b"x" * 100, False, now=0.0)
    for _ in range(4):
        history.append("b", b"y" * 100, False, now=0.0)
    assert "a" not in history and history.kept("b") == 4
    assert history.total_bytes <= history.max_bytes


def test_history_byte_budget_drops_streams_never_written_first() -> None:
    """Subscribes to many new topics (each made by ``ensure``) past
    ``max_bytes`` drop one another, never a stream with messages: a client
    that may subscribe to any name cannot push the kept messages out."""
    history = MemoryHistory(size=100, max_bytes=1 << 20)
    for _ in range(10):
        history.append("real", b"x" * 100, True, now=0.0)
    for i in range(2000):  # 2,000 x STREAM_OVERHEAD: three times the budget
        history.ensure(f"junk{i}", now=1.0)
    assert history.kept("real") == 10
    assert history.total_bytes <= history.max_bytes
    assert "junk0" not in history and "junk1999" in history
    # Written once, a stream is ordered by its writes again.
    history.append("junk1999", b"y", True, now=2.0)
    history.ensure("other", now=3.0)
    assert history.kept("junk1999") == 1 and "other" in history
    # With nothing left to drop but streams with messages: oldest written first.
    small = MemoryHistory(size=100, max_bytes=2 * STREAM_OVERHEAD + 12 * (100 + ENTRY_OVERHEAD))
    for name in ("a", "b", "c"):
        for _ in range(5):
            small.append(name, b"z" * 100, True, now=0.0)
    assert "a" not in small and small.kept("b") == 5 and small.kept("c") == 5

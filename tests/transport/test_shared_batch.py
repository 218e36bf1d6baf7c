"""Broadcasts of one loop iteration to the same clients are queued once for
all of them (a shared batch); every client must still get exactly what it
would get with a batch of its own, in the same order.

In process: clients of a hub on links whose pipe records each write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from wshub import WebSocket
from wshub.protocol.connection import Connection, ConnectionState
from wshub.protocol.frames import OP_CLOSE, OP_TEXT, build_frame
from wshub.protocol.handshake import UpgradeInfo
from wshub.transport.link import (
    FramedLink,
    LinkConfig,
    UpgradeRequest,
    queue_again,
    queue_shared,
)

Scenario = Callable[[WebSocket, list["RecordingLink"]], Awaitable[None]]

N = 40  # clients: enough for a broadcast to share one batch (link.SHARED_BATCH_FROM)


class RecordingLink(FramedLink):
    """A link whose pipe keeps every write (one entry per write call)."""

    def __init__(self, conn: Connection, config: LinkConfig) -> None:
        super().__init__(conn, config)
        self.writes: list[bytes] = []
        self.queued_in_pipe = 0  # what _buffered() answers
        self.ended = False

    def _write(self, data: bytes) -> None:
        self.writes.append(data)

    def _write_many(self, chunks: list[bytes]) -> None:
        self.writes.append(b"".join(chunks))

    def _buffered(self) -> int:
        return self.queued_in_pipe

    def _end(self) -> None:
        self.ended = True

    def _kill(self) -> None:
        self.connection_lost(None)

    def _pause_reading(self) -> None:
        pass

    def _resume_reading(self) -> None:
        pass

    @property
    def received(self) -> bytes:
        return b"".join(self.writes)


def text_frame(text: str) -> bytes:
    return build_frame(OP_TEXT, text.encode())


def masked_close_frame() -> bytes:
    """A Close (1000) as a client sends it: masked (with a zero key)."""
    payload = (1000).to_bytes(2, "big")
    return bytes([0x80 | OP_CLOSE, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def open_client(ws: WebSocket, port: int) -> RecordingLink:
    """A client of ``ws``, admitted and opened the way a transport does it."""
    admission = ws.admit(
        UpgradeRequest(
            target="/",
            headers={"host": "127.0.0.1"},
            info=UpgradeInfo(13, None, None, ""),
            peer=("127.0.0.1", port),
            scheme="ws",
        )
    )
    link = RecordingLink(Connection(), admission.config)
    admission.open(link)
    return link


def run(scenario: Scenario, clients: int = N, **options: object) -> list[RecordingLink]:
    async def main() -> list[RecordingLink]:
        ws = WebSocket(ping_delay=0, limit_by_ip=0, **options)  # type: ignore[arg-type]
        links = [open_client(ws, 40000 + i) for i in range(clients)]
        await asyncio.sleep(0)  # the flush of anything queued while opening
        for link in links:
            link.writes.clear()
        await scenario(ws, links)
        await asyncio.sleep(0)
        return links

    return asyncio.run(main())


def test_a_burst_of_broadcasts_is_one_write_of_the_same_bytes_per_client() -> None:
    async def scenario(ws: WebSocket, links: list[RecordingLink]) -> None:
        for i in range(8):
            assert ws.broadcast(f"message {i}") == N
        assert all(link.writes == [] for link in links)  # queued, not yet written

    links = run(scenario)
    expected = b"".join(text_frame(f"message {i}") for i in range(8))
    for link in links:
        assert link.writes == [expected]
        assert link.bytes_written >= len(expected)
    # Joined once: every client wrote the very same object.
    assert all(link.writes[0] is links[0].writes[0] for link in links)


def test_a_clients_own_frames_keep_their_place_among_the_broadcasts() -> None:
    async def scenario(ws: WebSocket, links: list[RecordingLink]) -> None:
        ws.broadcast("one")
        ws.send(ws.clients[1], "own")
        ws.broadcast("two")
        ws.broadcast("three")

    links = run(scenario)
    shared = text_frame("one") + text_frame("two") + text_frame("three")
    assert links[0].received == shared
    assert links[1].received == text_frame("one") + text_frame("own") + text_frame(
        "two"
    ) + text_frame("three")
    assert links[2].received == shared


def test_a_broadcast_to_some_clients_between_broadcasts_to_all() -> None:
    async def scenario(ws: WebSocket, links: list[RecordingLink]) -> None:
        some = ws.clients[:2]
        assert ws.broadcast("all 1") == N
        assert ws.broadcast("some", exclude=ws.clients[2:]) == 2
        assert ws.broadcast("all 2") == N
        assert ws.broadcast("all 3") == N
        assert len(some) == 2

    links = run(scenario)
    for i, link in enumerate(links):
        middle = text_frame("some") if i < 2 else b""
        assert link.received == (
            text_frame("all 1") + middle + text_frame("all 2") + text_frame("all 3")
        )


def test_a_client_closed_between_broadcasts_gets_its_close_after_the_earlier_ones() -> None:
    async def scenario(ws: WebSocket, links: list[RecordingLink]) -> None:
        assert ws.broadcast("before") == N
        ws.close(ws.clients[0], 1000, "bye")
        assert ws.broadcast("after") == N - 1  # a closing client is skipped
        assert ws.broadcast("later") == N - 1

    links = run(scenario)
    first = links[0].received
    assert first.startswith(text_frame("before"))
    assert first[len(text_frame("before"))] == 0x80 | OP_CLOSE
    assert b"after" not in first and b"later" not in first
    for link in links[1:]:
        assert link.received == text_frame("before") + text_frame("after") + text_frame("later")


def test_a_client_gone_between_broadcasts_is_not_counted_nor_written() -> None:
    async def scenario(ws: WebSocket, links: list[RecordingLink]) -> None:
        assert ws.broadcast("before") == N
        links[2].connection_lost(None)
        assert ws.broadcast("after") == N - 1

    links = run(scenario)
    assert links[2].writes == []
    assert links[3].received == text_frame("before") + text_frame("after")


def test_a_held_client_whose_peer_closed_gets_no_later_broadcast() -> None:
    # The peer's Close arrives while the client's events are held back: the
    # core is no longer OPEN but nothing was queued for the link (its reply
    # waits for the held messages).  A later broadcast must skip it.
    async def scenario(ws: WebSocket, links: list[RecordingLink]) -> None:
        assert ws.broadcast("before") == N
        links[1].hold()
        links[1].data_received(masked_close_frame())
        assert links[1].conn.state == ConnectionState.CLOSE_RECEIVED
        assert ws.broadcast("after") == N - 1

    links = run(scenario)
    assert links[1].received == text_frame("before")
    assert links[0].received == text_frame("before") + text_frame("after")


def test_a_client_opened_between_broadcasts_gets_the_later_ones() -> None:
    # Broadcasts to all reuse the registry's tuple of links until a client
    # comes or goes: one that opens in the middle of a burst is in the next.
    late: list[RecordingLink] = []

    async def scenario(ws: WebSocket, links: list[RecordingLink]) -> None:
        assert ws.broadcast("before") == N
        late.append(open_client(ws, 50000))
        assert ws.broadcast("after") == N + 1
        assert ws.broadcast("later") == N + 1

    links = run(scenario)
    assert links[0].received == b"".join(text_frame(t) for t in ("before", "after", "later"))
    assert late[0].received.endswith(text_frame("after") + text_frame("later"))
    assert b"before" not in late[0].received


def test_a_member_that_is_lost_or_no_longer_open_leaves_the_batch() -> None:
    # queue_again takes the tuple a shared batch was made from without
    # looking at each link: that holds only if every member is open.
    async def scenario(ws: WebSocket, links: list[RecordingLink]) -> None:
        audience = tuple(links)
        assert queue_shared(audience, b"one", True) == N
        assert queue_again(audience, b"two", True) == N
        links[1].connection_lost(None)
        assert queue_again(audience, b"x", True) is None
        assert queue_shared(audience, b"three", True) == N - 1
        await asyncio.sleep(0)  # written: the next burst makes a new batch
        again = tuple(links[2:])
        assert queue_shared(again, b"four", True) == N - 2
        assert queue_again(again, b"five", True) == N - 2
        links[3].hold()
        links[3].data_received(masked_close_frame())  # its reply held back
        assert queue_again(again, b"x", True) is None
        assert queue_shared(again, b"six", True) == N - 3

    links = run(scenario)
    assert links[1].writes == []
    assert links[3].received == b"".join(
        text_frame(t) for t in ("one", "two", "three", "four", "five")
    )
    assert links[4].received == b"".join(
        text_frame(t) for t in ("one", "two", "three", "four", "five", "six")
    )


def test_a_client_over_write_limit_is_closed_1008_and_gets_none_of_the_batch() -> None:
    async def scenario(ws: WebSocket, links: list[RecordingLink]) -> None:
        links[3].queued_in_pipe = 2 * 1024 * 1024  # the peer stopped reading
        for i in range(3):
            ws.broadcast(f"m{i}")
        await asyncio.sleep(0)  # the flush finds the full pipe
        assert links[3].conn.state == ConnectionState.CLOSE_SENT
        assert ws.broadcast("after") == N - 1

    links = run(scenario)
    closing = links[3].received
    assert b"m0" not in closing and b"after" not in closing
    assert closing[0] == 0x80 | OP_CLOSE
    assert int.from_bytes(closing[2:4], "big") == 1008
    for link in links[:3]:
        assert link.received == b"".join(text_frame(t) for t in ("m0", "m1", "m2", "after"))


def test_broadcasts_past_write_high_are_written_early_and_in_order() -> None:
    chunk = "x" * 3000

    async def scenario(ws: WebSocket, links: list[RecordingLink]) -> None:
        for i in range(6):
            assert ws.broadcast(f"{i}{chunk}") == N
            assert links[0].buffered_amount <= 8192 + len(text_frame(chunk)) + 1

    links = run(scenario, write_high=8192, write_low=1024)
    expected = b"".join(text_frame(f"{i}{chunk}") for i in range(6))
    for link in links:
        assert link.received == expected
        assert len(link.writes) > 1  # flushed before the end of the iteration
        assert link.bytes_written >= len(expected)


def test_buffered_amount_counts_the_shared_frames() -> None:
    async def scenario(ws: WebSocket, links: list[RecordingLink]) -> None:
        ws.broadcast("a" * 100)
        ws.broadcast("b" * 100)
        assert links[0].buffered_amount == 2 * len(text_frame("a" * 100))
        await asyncio.sleep(0)
        assert links[0].buffered_amount == 0

    run(scenario)


def test_topics_publish_through_the_shared_batch_in_order() -> None:
    async def scenario(ws: WebSocket, links: list[RecordingLink]) -> None:
        ids = ws.clients
        for cid in ids:
            ws.subscribe(cid, "news")
        ws.subscribe(ids[0], "sport")
        assert ws.publish("news", "n1") == N
        assert ws.publish("sport", "s1") == 1
        assert ws.publish("news", "n2") == N
        assert ws.publish("news", "n3") == N

    links = run(scenario)
    assert links[0].received == b"".join(text_frame(t) for t in ("n1", "s1", "n2", "n3"))
    for link in links[1:]:
        assert link.received == b"".join(text_frame(t) for t in ("n1", "n2", "n3"))


def test_a_burst_to_a_few_clients_is_one_write_per_client_too() -> None:
    # Below link.SHARED_BATCH_FROM receivers each client keeps its own batch.
    async def scenario(ws: WebSocket, links: list[RecordingLink]) -> None:
        for i in range(8):
            assert ws.broadcast(f"message {i}") == 3

    links = run(scenario, clients=3)
    expected = b"".join(text_frame(f"message {i}") for i in range(8))
    for link in links:
        assert link.writes == [expected]

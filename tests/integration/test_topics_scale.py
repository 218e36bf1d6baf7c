"""10,000 subscribers over 100 topics on one process (issue 17, item 4).

10,000 real WebSocket connections from the ``websockets`` asyncio client,
each offering ``wshub.v1`` and subscribing by hand with the JSON of
docs/protocol.md, 100 per topic, to one hub in its own process
(tests/integration/topics_scale_server.py: the test process needs one file
descriptor per client socket, the hub one per server socket, and the hard
limit is about 20,000).  Publications come from a ``wshub.v1`` publisher
and from the server's ``ws.publish``; every subscriber must get exactly its
topic's, in order, each once, with positions that follow one another.  Then
every client closes and the hub must be left with nothing: every "close"
event seen, no client, no presence, no topic table entry.

The hub's memory per subscriber (RSS before and after the subscriptions)
and the client side's are printed (run with ``-s`` to see them); only a
bound an order of magnitude above the measured figure is asserted.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.integration.security_rss_server import memory

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]

TOPICS = 100
PER_TOPIC = 100
SUBSCRIBERS = TOPICS * PER_TOPIC
#: Connections opened at once: well under the listen backlog (4,096 here,
#: net.core.somaxconn caps it) so that no SYN is dropped and retried 1 s later.
BATCH = 500
#: Messages per topic from the wshub.v1 publisher, then as many from ws.publish.
COUNT = 5
#: File descriptors the test process needs: the client sockets and some spare.
FDS_NEEDED = SUBSCRIBERS + 500
#: The hub's memory per subscriber must stay under this (measured: see
#: docs/guides/topics.md); ten times over means a leak or a regression.
MAX_BYTES_PER_SUBSCRIBER = 48 * 1024
RECV_TIMEOUT = 30.0


def raise_fd_limit() -> None:
    """Let the test process hold every client socket, or fail saying why."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < FDS_NEEDED:
        pytest.fail(
            f"RLIMIT_NOFILE hard limit is {hard}: {SUBSCRIBERS} client sockets need "
            f"{FDS_NEEDED} (raise it with ulimit -Hn or limits.conf)"
        )
    if soft != resource.RLIM_INFINITY and soft < FDS_NEEDED:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def http_get(port: int, target: str) -> dict[str, Any]:
    """GET ``target`` from the hub's process; its JSON answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), RECV_TIMEOUT)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    result: dict[str, Any] = json.loads(body)
    return result


async def stats_when(port: int, done: Any, what: str) -> dict[str, Any]:
    """The hub's stats once ``done(stats)`` holds (it reports events as they come)."""
    deadline = time.monotonic() + 60
    while True:
        stats = await http_get(port, f"/stats?topics={TOPICS}")
        if done(stats):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {stats}")
        await asyncio.sleep(0.2)


async def recv_json(conn: Any) -> dict[str, Any]:
    raw = await asyncio.wait_for(conn.recv(), RECV_TIMEOUT)
    assert isinstance(raw, str), f"wshub.v1 sends text frames, got {raw!r}"
    message: dict[str, Any] = json.loads(raw)
    return message


async def connect_v1(url: str) -> Any:
    conn = await websockets.connect(
        url,
        subprotocols=["wshub.v1"],  # type: ignore[list-item]
        compression=None,
        ping_interval=None,
        open_timeout=RECV_TIMEOUT,
    )
    assert conn.subprotocol == "wshub.v1"
    return conn


async def subscriber(url: str, topic: str) -> Any:
    """A connection that follows ``topic``, its ``subscribed`` answer checked."""
    conn = await connect_v1(url)
    await conn.send(json.dumps({"type": "subscribe", "topic": topic, "id": 1}))
    answer = await recv_json(conn)
    assert answer["type"] == "subscribed" and answer["topic"] == topic, answer
    assert answer["id"] == 1 and answer["position"]["seq"] == 0, answer
    return conn


async def in_batches(calls: list[Any]) -> list[Any]:
    """Await the coroutine functions of ``calls``, ``BATCH`` at a time."""
    results: list[Any] = []
    for start in range(0, len(calls), BATCH):
        results += await asyncio.gather(*(call() for call in calls[start : start + BATCH]))
    return results


async def publish_from_client(url: str) -> None:
    """COUNT messages to each topic from a wshub.v1 publisher, each acknowledged."""
    publisher = await connect_v1(url)
    try:
        sent = 0
        for t in range(TOPICS):
            for n in range(COUNT):
                message = {"type": "publish", "topic": f"t{t}", "data": f"t{t}:p{n}", "id": sent}
                await publisher.send(json.dumps(message))
                sent += 1
        for expected_id in range(sent):
            answer = await recv_json(publisher)
            assert answer["type"] == "published" and answer["id"] == expected_id, answer
            assert answer["position"]["seq"] == expected_id % COUNT + 1, answer
    finally:
        await publisher.close()


async def check_received(conn: Any, topic: str) -> None:
    """Exactly ``topic``'s publications, in order, each once, then the end mark."""
    expected = [f"{topic}:p{n}" for n in range(COUNT)]
    expected += [f"{topic}:s{n}" for n in range(COUNT)]
    expected.append(f"{topic}:end0")
    received = [await recv_json(conn) for _ in expected]
    assert [m["type"] for m in received] == ["message"] * len(expected), received
    assert [m["topic"] for m in received] == [topic] * len(expected), received
    assert [m["data"] for m in received] == expected
    assert [m["seq"] for m in received] == list(range(1, len(expected) + 1)), received
    assert len({m["epoch"] for m in received}) == 1, received


async def test_ten_thousand_subscribers_over_one_hundred_topics() -> None:
    raise_fd_limit()
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.topics_scale_server",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )
    conns: list[Any] = []
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line.strip().isdigit():
            err = await proc.stderr.read() if proc.stderr else b""
            pytest.fail(f"the hub did not start: {line!r} {err.decode()[-2000:]}")
        port = int(line)
        url = f"ws://127.0.0.1:{port}/"
        stats_target = f"/stats?topics={TOPICS}"

        # One subscriber first, so that the baseline has the code paths warm.
        warm = await subscriber(url, "warm-up")
        await warm.close()
        hub_before = await stats_when(port, lambda s: s["closed"] == 1, "the warm-up close")
        client_before = memory()["VmRSS"]

        topics = [f"t{i % TOPICS}" for i in range(SUBSCRIBERS)]
        conns = await in_batches([lambda topic=topic: subscriber(url, topic) for topic in topics])
        connected = time.monotonic()
        client_after = memory()["VmRSS"]
        hub_after = await http_get(port, stats_target)
        assert hub_after["clients"] == SUBSCRIBERS
        assert set(hub_after["subscribers"].values()) == {PER_TOPIC}
        assert set(hub_after["presence"].values()) == {PER_TOPIC}
        assert hub_after["topics_with_subscribers"] == TOPICS
        assert hub_after["clients_following"] == SUBSCRIBERS

        await publish_from_client(url)
        server_side = await http_get(port, f"/publish?topics={TOPICS}&count={COUNT}&tag=s")
        assert server_side["delivered"] == SUBSCRIBERS * COUNT
        # The end mark: whatever a subscriber was sent before it is in its list.
        end = await http_get(port, f"/publish?topics={TOPICS}&count=1&tag=end")
        assert end["delivered"] == SUBSCRIBERS
        await in_batches(
            [
                lambda conn=conn, topic=topic: check_received(conn, topic)
                for conn, topic in zip(conns, topics, strict=True)
            ]
        )
        delivered = time.monotonic()

        await in_batches([conn.close for conn in conns])
        codes = {conn.close_code for conn in conns}
        assert codes == {1000}, codes
        conns = []
        # Every subscriber, the warm-up one and the publisher: one "close" each.
        everyone = SUBSCRIBERS + 2
        final = await stats_when(
            port, lambda s: s["closed"] == everyone and s["clients"] == 0, "every close"
        )
        assert final["opened"] == everyone and final["closed"] == everyone, final
        assert final["clients"] == 0, final
        assert set(final["subscribers"].values()) == {0}, final
        assert set(final["presence"].values()) == {0}, final
        assert final["topics_with_subscribers"] == 0, final
        assert final["clients_following"] == 0, final

        hub_per_subscriber = (hub_after["VmRSS"] - hub_before["VmRSS"]) * 1024 / SUBSCRIBERS
        client_per_subscriber = (client_after - client_before) * 1024 / SUBSCRIBERS
        print(
            f"\n{SUBSCRIBERS} subscribers over {TOPICS} topics: "
            f"hub RSS {hub_before['VmRSS'] // 1024} -> {hub_after['VmRSS'] // 1024} MiB "
            f"({hub_per_subscriber / 1024:.1f} KiB per subscriber), "
            f"after close {final['VmRSS'] // 1024} MiB; "
            f"websockets clients {client_per_subscriber / 1024:.1f} KiB per connection; "
            f"hub start + connect + subscribe {connected - started:.1f} s, "
            f"{SUBSCRIBERS * (2 * COUNT + 1)} deliveries checked {delivered - connected:.1f} s, "
            f"total {time.monotonic() - started:.1f} s"
        )
        assert hub_per_subscriber < MAX_BYTES_PER_SUBSCRIBER, hub_per_subscriber
    finally:
        for conn in conns:
            conn.transport.abort()
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()

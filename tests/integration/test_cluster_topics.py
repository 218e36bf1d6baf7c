"""Topics across nodes: two wshub node processes, a real redis-server, websockets clients.

Each test starts its own redis-server and nodes (``cluster_node.py``) and
stops them by PID.  Redis itself is asked (``PUBSUB NUMSUB``, ``EXISTS``)
what the nodes subscribed to and stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import wait_for
from tests.integration.cluster_support import Client, Cluster, Node, RedisServer

pytestmark = pytest.mark.timeout(120)

# Every test's nodes: a dead node must vanish within seconds.
OPTS = ("--ttl", "2", "--heartbeat", "0.5")


@pytest.fixture
async def inspect(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain Redis client to look at what the nodes did."""
    client = aioredis.Redis.from_url(redis.url)
    yield client
    await client.aclose()


async def eventually(
    probe: Callable[[], Awaitable[Any]], expected: Any, what: str, timeout: float = 10.0
) -> None:
    """Poll an asynchronous ``probe`` until it answers ``expected``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = await probe()
        if got == expected:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{what}: got {got!r}, expected {expected!r}")
        await asyncio.sleep(0.05)


def numsub(inspect: aioredis.Redis, topic: str) -> Callable[[], Awaitable[int]]:
    """How many connections to Redis are subscribed to ``topic``'s channel."""

    async def probe() -> int:
        ((_channel, count),) = await inspect.pubsub_numsub(f"wshub:topic:{topic}")
        return int(count)

    return probe


async def topic_channels(inspect: aioredis.Redis) -> list[bytes]:
    return sorted(await inspect.pubsub_channels("wshub:topic:*"))


async def received(client: Client, marker: str, timeout: float = 10.0) -> list[str]:
    """The payloads ``client`` got up to and including ``marker``."""
    await wait_for(lambda: marker in client.payloads, timeout, f"{marker} at {client.id}")
    return client.payloads[: client.payloads.index(marker) + 1]


async def events_seen(node: Node) -> list[list[str]]:
    events: list[list[str]] = (await node.state())["topic_events"]
    return events


async def two_nodes(cluster: Cluster, b_path: str = "/") -> tuple[Node, Node, Client, Client]:
    """Two nodes, client a on node 0 and client b on node 1 (at ``b_path``)."""
    n0 = await cluster.node(*OPTS)
    n1 = await cluster.node(*OPTS)
    return n0, n1, await cluster.client(n0), await cluster.client(n1, b_path)


async def test_publish_crosses_nodes_only_to_nodes_that_follow(
    cluster: Cluster, inspect: aioredis.Redis
) -> None:
    _n0, n1, a, b = await two_nodes(cluster)
    c = await cluster.client(n1)  # never subscribes
    assert await topic_channels(inspect) == []

    assert await b.reply(op="subscribe", topic="news") == {"op": "subscribed", "ok": True}
    assert await b.reply(op="subscribe", topic="news") == {"op": "subscribed", "ok": False}
    # Only node 1 follows "news": one subscription in Redis, node 0 has none.
    await eventually(numsub(inspect, "news"), 1, "subscribers of wshub:topic:news")
    assert await topic_channels(inspect) == [b"wshub:topic:news"]

    # Published on node 0, which follows nothing: no local delivery, b gets it.
    assert await a.reply(op="publish", topic="news", data="n-1") == {
        "op": "published",
        "count": 0,
    }
    assert await received(b, "n-1") == ["n-1"]

    # Node 0 follows "news" once a subscribes: both nodes' connections.
    assert (await a.reply(op="subscribe", topic="news"))["ok"] is True
    await eventually(numsub(inspect, "news"), 2, "subscribers once both nodes follow")
    assert await b.reply(op="publish", topic="news", data="n-2") == {
        "op": "published",
        "count": 1,
    }
    assert await received(a, "n-2") == ["n-2"]
    # exclude: an ID on the other node is honoured there.
    await a.reply(op="publish", topic="news", data="n-3", exclude=[b.id])
    await a.reply(op="publish", topic="news", data="n-4")
    assert await received(b, "n-4") == ["n-1", "n-2", "n-4"]
    assert await received(a, "n-4") == ["n-2", "n-3", "n-4"]

    # Another topic that only node 0 follows: node 1 stays out of it.
    await a.reply(op="subscribe", topic="sports")
    await eventually(numsub(inspect, "sports"), 1, "subscribers of wshub:topic:sports")
    await b.reply(op="publish", topic="sports", data="s-1")
    assert await received(a, "s-1") == ["n-2", "n-3", "n-4", "s-1"]

    # Unsubscribing the last local subscriber unsubscribes the node.
    assert await a.reply(op="unsubscribe", topic="news") == {"op": "subscribed", "ok": True}
    assert await a.reply(op="unsubscribe", topic="news") == {"op": "subscribed", "ok": False}
    await eventually(numsub(inspect, "news"), 1, "node 0 unsubscribed from news")
    await b.reply(op="unsubscribe", topic="news")
    await eventually(numsub(inspect, "news"), 0, "nobody subscribed to news")
    assert await topic_channels(inspect) == [b"wshub:topic:sports"]
    # The client that never subscribed got no publication at all.
    await b.reply(op="publish", topic="sports", data="s-2")
    await received(a, "s-2")
    assert c.payloads == []


async def test_presence_and_join_leave_across_nodes(
    cluster: Cluster, inspect: aioredis.Redis
) -> None:
    n0, n1, a, b = await two_nodes(cluster, "/chat")
    c = await cluster.client(n0)

    await a.reply(op="subscribe", topic="room")
    await eventually(numsub(inspect, "room"), 1, "node 0 following room")
    await b.reply(op="subscribe", topic="room")
    await eventually(numsub(inspect, "room"), 2, "both nodes following room")
    # Node 0 follows "room" and sees b's join; node 1 did not follow it yet
    # when a joined, so it saw only its own client's.
    await eventually(
        lambda: events_seen(n0), [["join", a.id, "room"], ["join", b.id, "room"]], "node 0 events"
    )
    assert await events_seen(n1) == [["join", b.id, "room"]]

    expected = {a.id: [a.node, "/"], b.id: [b.node, "/chat"]}
    for asker in (a, b):
        answer = await asker.reply(op="presence", topic="room")
        assert answer["members"] == expected
        assert sorted(answer["cluster"]) == sorted(expected)
    assert (await a.reply(op="presence", topic="nobody-here"))["members"] == {}

    # c joins on node 0 and leaves by closing: node 1 sees both.
    await c.reply(op="subscribe", topic="room")
    await eventually(
        lambda: events_seen(n1),
        [["join", b.id, "room"], ["join", c.id, "room"]],
        "node 1 sees c join",
    )
    await c.close()
    await eventually(
        lambda: events_seen(n1),
        [["join", b.id, "room"], ["join", c.id, "room"], ["leave", c.id, "room"]],
        "node 1 sees c leave",
    )
    assert (await events_seen(n0))[-1] == ["leave", c.id, "room"]
    # a unsubscribes: a leave on both nodes, and presence without it.
    await a.reply(op="unsubscribe", topic="room")
    await eventually(
        lambda: events_seen(n1),
        [
            ["join", b.id, "room"],
            ["join", c.id, "room"],
            ["leave", c.id, "room"],
            ["leave", a.id, "room"],
        ],
        "node 1 sees a leave",
    )
    answer = await b.reply(op="presence", topic="room")
    assert answer["members"] == {b.id: [b.node, "/chat"]}
    # Node 0 follows nothing now: its presence hash is gone from Redis.
    assert await inspect.exists(f"wshub:presence:{a.node}:room") == 0
    assert await inspect.exists(f"wshub:presence:{b.node}:room") == 1


async def test_killed_node_leaves_presence_after_the_ttl(
    cluster: Cluster, inspect: aioredis.Redis
) -> None:
    n0, _n1, a, b = await two_nodes(cluster)
    await a.reply(op="subscribe", topic="room")
    await b.reply(op="subscribe", topic="room")
    await eventually(numsub(inspect, "room"), 2, "both nodes following room")

    async def members() -> list[str]:
        answer = await b.reply(op="presence", topic="room")
        return sorted(answer["members"])

    await eventually(members, sorted([a.id, b.id]), "presence before the kill")
    dead_key = f"wshub:presence:{a.node}:room"
    assert await inspect.exists(dead_key) == 1
    # The heartbeats keep the hash alive well past one ttl (2 s).
    await asyncio.sleep(3.0)
    assert await inspect.exists(dead_key) == 1

    n0.kill9()
    await n0.proc.wait()
    # No word from node 0: within the ttl it is gone from presence and Redis.
    await eventually(members, [b.id], "presence after kill -9 of node 0", timeout=15.0)
    await eventually(lambda: inspect.exists(dead_key), 0, "the dead node's presence hash")
    await eventually(numsub(inspect, "room"), 1, "only node 1 still subscribed")
    # The survivor still publishes to its own subscriber.
    await b.reply(op="publish", topic="room", data="after")
    assert await received(b, "after") == ["after"]


async def test_topics_survive_a_redis_restart(cluster: Cluster, inspect: aioredis.Redis) -> None:
    """A new, empty Redis: the nodes subscribe again and rewrite their presence."""
    n0, n1, a, b = await two_nodes(cluster, "/chat")
    await b.reply(op="subscribe", topic="room")
    await eventually(numsub(inspect, "room"), 1, "node 1 following room")

    cluster.redis.stop()  # kill -9
    for node in (n0, n1):
        await eventually(lambda n=node: connected(n), False, "the nodes noticing Redis is gone")
    # While Redis is away, a subscribes on node 0 (its node cannot tell Redis).
    await a.reply(op="subscribe", topic="room")
    await cluster.redis.start()  # same port, empty
    for node in (n0, n1):
        await eventually(lambda n=node: connected(n), True, "the nodes reconnected", timeout=20.0)

    # Both nodes subscribed again and wrote their presence into the new Redis.
    await inspect.connection_pool.disconnect()  # its connection went with the old Redis
    await eventually(numsub(inspect, "room"), 2, "both nodes following room again")

    async def members() -> dict[str, list[str]]:
        answer: dict[str, list[str]] = (await a.reply(op="presence", topic="room"))["members"]
        return answer

    expected = {a.id: [a.node, "/"], b.id: [b.node, "/chat"]}
    await eventually(members, expected, "presence after the restart")
    await b.reply(op="publish", topic="room", data="after restart")
    assert await received(a, "after restart") == ["after restart"]


async def connected(node: Node) -> bool:
    return bool((await node.state())["connected"])

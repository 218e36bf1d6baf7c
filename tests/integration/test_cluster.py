"""Scale-out through Redis: three wshub node processes, a real redis-server, websockets clients.

Each test starts its own redis-server (no persistence, free loopback port)
and its own nodes (``cluster_node.py``), and stops them by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.cluster_support import (
    Client,
    Node,
    RedisServer,
    connect,
    start_node,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    server.stop()


class Cluster:
    def __init__(self, redis: RedisServer, workdir: Path) -> None:
        self.redis = redis
        self.workdir = workdir
        self.nodes: list[Node] = []
        self.clients: list[Client] = []

    async def node(self, *extra: str) -> Node:
        node = await start_node(self.redis.url, self.workdir, *extra)
        self.nodes.append(node)
        return node

    async def client(self, node: Node, path: str = "/", cookie: str | None = None) -> Client:
        client = await connect(node, path, cookie)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for c in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), 5.0)
        for n in self.nodes:
            await n.stop()


@pytest.fixture
async def cluster(redis: RedisServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(redis, tmp_path)
    yield c
    await c.close()


async def until_known(node: Node, *ids: str, timeout: float = 10.0) -> None:
    """Wait until ``node``'s cached registry places every ID on some other node."""
    pending = set(ids)

    async def check() -> bool:
        for cid in list(pending):
            if (await node.state(client_id=cid))["owner"] is not None:
                pending.discard(cid)
        return not pending

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"node {node.port} never learned of {sorted(pending)}")
        await asyncio.sleep(0.05)


async def received(client: Client, marker: str, timeout: float = 10.0) -> list[str]:
    """The payloads ``client`` got up to and including ``marker``."""
    await wait_for(lambda: marker in client.payloads, timeout, f"{marker} at {client.id}")
    return client.payloads[: client.payloads.index(marker) + 1]


async def test_send_and_broadcast_across_three_nodes(cluster: Cluster) -> None:
    n0, n1, n2 = [await cluster.node() for _ in range(3)]
    a = await cluster.client(n0)
    b = await cluster.client(n1)
    c = await cluster.client(n2)
    assert len({a.node, b.node, c.node}) == 3
    await until_known(n0, b.id, c.id)
    await until_known(n1, a.id, c.id)
    await until_known(n2, a.id, b.id)

    listed = await a.reply(op="clients")
    assert sorted(listed["ids"]) == sorted([a.id, b.id, c.id])

    # Direct sends to clients of other nodes, both ways.
    assert (await a.reply(op="send", to=b.id, data="a->b"))["op"] == "sent"
    assert (await c.reply(op="send", to=a.id, data="c->a"))["op"] == "sent"
    assert (await b.reply(op="send", to=c.id, data="b->c"))["op"] == "sent"
    assert await received(b, "a->b") == ["a->b"]
    assert await received(a, "c->a") == ["c->a"]
    assert await received(c, "b->c") == ["b->c"]

    # An ID that no node has: ClientNotFound, synchronously.
    missing = await a.reply(op="send", to=str(uuid.uuid4()), data="nobody")
    assert missing == {"op": "error", "error": "ClientNotFound"}

    # Broadcast: every client on every node exactly once.  The marker is sent
    # after it by the same node, and one node's messages stay in order, so a
    # duplicate would arrive before the marker.
    for client in (a, b, c):
        client.payloads.clear()
    await a.command(op="broadcast", data="hello all")
    await a.command(op="broadcast", data="end-1")
    for client in (a, b, c):
        assert await received(client, "end-1") == ["hello all", "end-1"]


async def test_per_path_broadcast_with_exclude(cluster: Cluster) -> None:
    n0, n1, n2 = [await cluster.node() for _ in range(3)]
    root = await cluster.client(n0)
    chat0 = await cluster.client(n0, "/chat")
    chat1 = await cluster.client(n1, "/chat")
    chat2 = await cluster.client(n2, "/chat")
    other2 = await cluster.client(n2)
    await until_known(n0, chat1.id, chat2.id, other2.id)
    await until_known(n1, root.id, chat2.id)
    await until_known(n2, root.id, chat1.id)

    await root.command(op="broadcast", data="to chat", path="/chat", exclude=[chat2.id])
    await root.command(op="broadcast", data="end-2")
    assert await received(chat0, "end-2") == ["to chat", "end-2"]
    assert await received(chat1, "end-2") == ["to chat", "end-2"]
    assert await received(chat2, "end-2") == ["end-2"]
    assert await received(other2, "end-2") == ["end-2"]
    assert await received(root, "end-2") == ["end-2"]

    # Excluding a local client and sending from another node.
    await chat1.command(op="broadcast", data="chat again", path="/chat", exclude=[chat1.id])
    await chat1.command(op="broadcast", data="end-3")
    assert await received(chat0, "end-3") == ["to chat", "end-2", "chat again", "end-3"]
    assert (await received(chat1, "end-3"))[-2:] == ["end-2", "end-3"]
    assert (await received(chat2, "end-3"))[-2:] == ["chat again", "end-3"]
    assert (await received(root, "end-3"))[-2:] == ["end-2", "end-3"]

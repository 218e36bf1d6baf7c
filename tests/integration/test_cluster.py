"""Scale-out through Redis: three wshub node processes, a real redis-server, websockets clients.

Each test starts its own redis-server (no persistence, free loopback port)
and its own nodes (``cluster_node.py``), and stops them by PID.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import pytest
import websockets

from tests.conftest import wait_for
from tests.integration.cluster_support import (
    Client,
    Cluster,
    Node,
    RedisServer,
    connect,
)

pytestmark = pytest.mark.timeout(120)


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


def cookie_of(client: Client) -> str:
    """``name=value`` of the session cookie the node set on the 101 response."""
    assert client.set_cookie, "the node set no session cookie"
    return client.set_cookie.split(";", 1)[0]


async def test_session_id_follows_the_client_to_another_node_and_stays_unique(
    cluster: Cluster,
) -> None:
    n0, n1, n2 = [await cluster.node() for _ in range(3)]
    first = await cluster.client(n0)
    cookie = cookie_of(first)
    await first.close()
    await wait_for_gone(n1, first.id)

    # Same shared secret: another node accepts the cookie and keeps the ID.
    again = await cluster.client(n1, cookie=cookie)
    assert again.id == first.id
    assert again.node != first.node

    # While that ID is connected on n1, n2 must not hand it out again.
    await until_known(n2, again.id)
    twin = await cluster.client(n2, cookie=cookie)
    assert twin.id != again.id
    listed = await twin.reply(op="clients")
    assert sorted(listed["ids"]) == sorted([again.id, twin.id])


async def wait_for_gone(node: Node, client_id: str, timeout: float = 15.0) -> None:
    """Wait until neither Redis nor ``node``'s cache lists ``client_id``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        state = await node.state(client_id=client_id)
        if client_id not in state["cluster"] and state["owner"] is None:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{client_id} still listed by node {node.port}: {state}")
        await asyncio.sleep(0.05)


async def test_killed_node_loses_only_its_clients_and_expires(cluster: Cluster) -> None:
    # ttl 2 s, heartbeat 0.5 s: the dead node must vanish on its own.
    opts = ("--ttl", "2", "--heartbeat", "0.5")
    n0, n1, n2 = [await cluster.node(*opts) for _ in range(3)]
    a = await cluster.client(n0)
    b = await cluster.client(n1)
    doomed = await cluster.client(n2)
    await until_known(n0, b.id, doomed.id)
    await until_known(n1, a.id, doomed.id)
    assert doomed.id in (await a.reply(op="clients"))["ids"]

    n2.kill9()
    await n2.proc.wait()
    # Only the heartbeat TTL can remove it: nobody said goodbye.
    await wait_for_gone(n0, doomed.id, timeout=20.0)
    await wait_for_gone(n1, doomed.id, timeout=20.0)
    assert sorted((await a.reply(op="clients"))["ids"]) == sorted([a.id, b.id])
    gone = await a.reply(op="send", to=doomed.id, data="too late")
    assert gone == {"op": "error", "error": "ClientNotFound"}

    # The survivors still talk across nodes.
    assert (await a.reply(op="send", to=b.id, data="still here"))["op"] == "sent"
    assert await received(b, "still here") == ["still here"]
    a.payloads.clear()
    await b.command(op="broadcast", data="after kill")
    await b.command(op="broadcast", data="end-4")
    assert await received(a, "end-4") == ["after kill", "end-4"]


async def test_cluster_wide_limit_by_ip_does_not_leak_when_a_node_dies(
    cluster: Cluster,
) -> None:
    opts = ("--ttl", "2", "--heartbeat", "0.5", "--limit-by-ip", "2", "--cluster-limit-by-ip")
    n0, n1 = [await cluster.node(*opts) for _ in range(2)]
    await cluster.client(n0)
    await cluster.client(n0)

    async def remote_count() -> int:
        return int((await n1.state(ip="127.0.0.1"))["ip_remote"])

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while await remote_count() != 2:
        assert loop.time() < deadline, "n1 never counted n0's connections"
        await asyncio.sleep(0.05)

    # 127.0.0.1 already has 2 connections in the cluster: n1 refuses a third.
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(n1)
    assert refused.value.response.status_code == 429

    # n0 dies without a word; its counts expire with its heartbeat.
    n0.kill9()
    await n0.proc.wait()
    deadline = loop.time() + 20.0
    while await remote_count() != 0:
        assert loop.time() < deadline, "n0's per-IP counts never expired"
        await asyncio.sleep(0.1)
    await cluster.client(n1)
    await cluster.client(n1)
    with pytest.raises(websockets.InvalidStatus) as refused_local:
        await connect(n1)
    assert refused_local.value.response.status_code == 429


async def test_redis_restart_local_service_continues_and_cluster_recovers(
    cluster: Cluster,
) -> None:
    opts = ("--ttl", "2", "--heartbeat", "0.5")
    n0, n1 = [await cluster.node(*opts) for _ in range(2)]
    a = await cluster.client(n0)
    a2 = await cluster.client(n0)
    b = await cluster.client(n1)
    await until_known(n0, b.id)
    await until_known(n1, a.id, a2.id)

    cluster.redis.stop()  # kill -9: no goodbye from Redis either
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15.0
    while (await n0.state())["connected"]:
        assert loop.time() < deadline, "n0 never noticed that Redis is gone"
        await asyncio.sleep(0.05)

    # Local clients keep being served: a direct send and a broadcast on n0.
    assert (await a.reply(op="send", to=a2.id, data="local direct"))["op"] == "sent"
    assert await received(a2, "local direct") == ["local direct"]
    await a.command(op="broadcast", data="local broadcast")
    assert (await received(a2, "local broadcast"))[-1] == "local broadcast"
    assert (await received(a, "local broadcast"))[-1] == "local broadcast"
    # A cross-node send now is lost (at-most-once), and the log will say so.
    lost = await a.reply(op="send", to=b.id, data="lost in the outage")
    assert lost in ({"op": "sent", "ok": False}, {"op": "error", "error": "ClientNotFound"})

    await cluster.redis.start()  # same port, empty (no persistence)
    for node in (n0, n1):
        deadline = loop.time() + 20.0
        while not (await node.state())["connected"]:
            assert loop.time() < deadline, f"node {node.port} never reconnected"
            await asyncio.sleep(0.1)
    # Both nodes re-registered their clients in the fresh Redis.
    await until_known(n0, b.id)
    await until_known(n1, a.id, a2.id)
    assert sorted((await b.reply(op="clients"))["ids"]) == sorted([a.id, a2.id, b.id])
    assert (await a.reply(op="send", to=b.id, data="after restart"))["op"] == "sent"
    assert (await received(b, "after restart"))[-1] == "after restart"
    assert "lost in the outage" not in b.payloads
    log = n0.log_text()
    assert "lost Redis" in log
    assert "connected to" in log and "again after" in log
    assert re.search(r"lost while disconnected: [1-9][0-9]* direct sends", log), log[-2000:]


async def test_wshub_serve_backplane_option(redis: RedisServer, tmp_path: Path) -> None:
    """Two ``wshub serve --mode broadcast --backplane URL`` processes act as one."""
    import os
    import shutil
    import sys

    from tests.integration.cluster_support import free_port

    wshub = shutil.which("wshub", path=str(Path(sys.executable).parent))
    assert wshub is not None, "the wshub console script is not installed in the venv"
    procs = []
    urls = []
    try:
        for i in range(2):
            port = free_port()
            log = open(tmp_path / f"serve-{i}.log", "wb")  # noqa: SIM115
            procs.append(
                await asyncio.create_subprocess_exec(
                    wshub,
                    "serve",
                    "--mode",
                    "broadcast",
                    "--deflate",
                    "off",
                    "--port",
                    str(port),
                    "--backplane",
                    redis.url,
                    stdout=log,
                    stderr=log,
                    # The nodes' shared secret: without it --backplane refuses to start.
                    env={**os.environ, "WSHUB_SECRET": "serve-test-secret"},
                )
            )
            log.close()
            urls.append(f"ws://127.0.0.1:{port}/")
        conns = []
        for url in urls:
            conns.append(await connect_retry(url))
        c0, c1 = conns
        # Until c1's node has joined and registered, a broadcast may miss it:
        # probe until one arrives, then check exactly-once on a fresh message.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15.0
        got = None
        i = 0
        while got is None:
            assert loop.time() < deadline, "broadcasts never crossed between the two nodes"
            i += 1
            await c0.send(f"probe-{i}")
            try:
                got = await asyncio.wait_for(c1.recv(), 0.5)
            except asyncio.TimeoutError:
                continue
        await c0.send("once")
        await c0.send("end")
        seen1 = await recv_until(c1, "end")
        seen0 = await recv_until(c0, "end")
        assert seen1[-2:] == ["once", "end"] and seen1.count("once") == 1
        assert seen0[-2:] == ["once", "end"] and seen0.count("once") == 1
        for c in conns:
            await c.close()
    finally:
        for p in procs:
            if p.returncode is None:
                p.terminate()
            await p.wait()


async def connect_retry(url: str) -> websockets.ClientConnection:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20.0
    while True:
        try:
            return await websockets.connect(url)
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def recv_until(conn: websockets.ClientConnection, marker: str) -> list[str]:
    out: list[str] = []
    while marker not in out:
        msg = await asyncio.wait_for(conn.recv(), 10.0)
        out.append(msg if isinstance(msg, str) else msg.decode())
    return out

"""Redis is a trust boundary: what a Redis client without the cluster secret can no longer do.

A real redis-server, real wshub node processes (``cluster_node.py``, two or
three), ``websockets`` clients, and a plain ``redis.asyncio`` client as the
attacker: it may PUBLISH, SUBSCRIBE and HSET anything, and holds no secret.
Each injection of issue #17 is tried and must fail: a broadcast and a direct
message into a client, fake ``join``s that made the next connection get 429,
a forged ``join`` that closed a live client with 1013, forged registry
entries, a replay of captured messages.  Malformed messages (some sealed with
the real key, as a buggy node would send them) are dropped with one log line
per reason and no traceback; the nodes' ``rejected`` counters say why.

How "nothing arrived" is shown: the attacker's PUBLISH returns once Redis has
passed the message to every subscriber, and one node reads its subscription
in order, so a legitimate broadcast published afterwards is handled after it.
When that broadcast arrives and nothing came before it, the injection was
dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import shutil
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import websockets

from tests.conftest import wait_for
from tests.integration.cluster_support import Client, Cluster, Node, RedisServer
from wshub import HttpServer, WebSocket
from wshub.backplane import (
    REJECT_REASONS,
    ClusterSecretMissing,
    RedisBackplane,
    _ClusterKey,
    _Seal,
    cluster_key,
)

pytestmark = pytest.mark.timeout(120)

#: cluster_node.py's default ``--secret``: the hub's secret, from which the cluster key comes.
NODE_SECRET = "cluster-test-secret"
HEAD = struct.Struct("!BQQB")  # version, counter, time ms, len(origin): see wshub.backplane


# ``redis`` (a redis-server) and ``cluster`` (node processes on it) come from
# tests/integration/conftest.py.


@pytest.fixture
async def attacker(redis: RedisServer) -> AsyncIterator[Any]:
    """A plain Redis client: no wshub, no secret."""
    client = aioredis.Redis.from_url(redis.url)
    yield client
    await client.aclose()


class Tap:
    """The attacker's SUBSCRIBE: every message published on ``channels``, verbatim."""

    def __init__(self, client: Any) -> None:
        self.pubsub = client.pubsub()
        self.seen: list[tuple[str, bytes]] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self, *channels: str) -> None:
        await self.pubsub.subscribe(*channels)
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None:
                self.seen.append((msg["channel"].decode(), msg["data"]))

    async def first(self, channel: str, contains: bytes, timeout: float = 10.0) -> bytes:
        def found() -> bool:
            return any(ch == channel and contains in data for ch, data in self.seen)

        await wait_for(found, timeout, f"a message on {channel} with {contains!r}")
        return next(data for ch, data in self.seen if ch == channel and contains in data)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.pubsub.aclose()


async def state(node: Node, client_id: str = "") -> dict[str, Any]:
    return await node.state(client_id=client_id)


async def known(node: Node, *ids: str) -> None:
    """Wait until ``node``'s cached registry places every ID on another node."""
    for cid in ids:
        for _ in range(200):
            if (await node.state(client_id=cid))["owner"] is not None:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"node {node.port} never learned of {cid}")


async def rejected_at_least(node: Node, **minimum: int) -> dict[str, int]:
    """Wait until the node's rejected counters reach ``minimum``; return them."""
    counts: dict[str, int] = {}
    for _ in range(200):
        counts = (await node.state())["rejected"]
        if all(counts[reason] >= n for reason, n in minimum.items()):
            return counts
        await asyncio.sleep(0.05)
    raise AssertionError(f"node {node.port}: rejected {counts}, expected at least {minimum}")


async def only_marker_arrives(sender: Client, *receivers: Client) -> str:
    """A legitimate broadcast reaches every receiver, with nothing before it."""
    marker = f"MARKER-{uuid.uuid4().hex[:8]}"
    await sender.command(op="broadcast", data=marker)
    for r in receivers:
        await received(r, marker)
        assert r.payloads == [marker], f"{r.id} got {r.payloads}"
        r.payloads.clear()
    return marker


async def received(client: Client, payload: str) -> None:
    await wait_for(lambda: payload in client.payloads, 10.0, f"{payload} at {client.id}")


def old_format(kind: bytes, origin: bytes, meta: bytes, payload: bytes = b"") -> bytes:
    """A data message as nodes published them before #17: nothing signed."""
    return bytes([kind[0], len(origin)]) + origin + struct.pack("!H", len(meta)) + meta + payload


def forged_seal(key_id: bytes, origin: str, inner: bytes, counter: int = 1) -> bytes:
    """What an attacker can build: the key ID (seen on the wire), a made-up MAC."""
    raw = origin.encode()
    head = HEAD.pack(1, counter, int(time.time() * 1000), len(raw)) + raw
    return key_id + os.urandom(32) + head + inner


def sealed_by_hand(
    key: bytes,
    channel: bytes,
    origin: str,
    inner: bytes,
    *,
    counter: int,
    sent: float,
    version: int = 1,
) -> bytes:
    """A message sealed with the real key, with the clock and version we choose
    (what a node with a wrong clock, or of another version, would send)."""
    raw = origin.encode()
    head = HEAD.pack(version, counter, int(sent * 1000), len(raw)) + raw
    cluster = _ClusterKey(key)
    mac = cluster.messages.copy()
    mac.update(struct.pack("!I", len(channel)) + channel + head + inner)
    return cluster.key_id + mac.digest() + head + inner


def no_traceback(*nodes: Node) -> None:
    """No traceback from the backplane in the nodes' logs (what a bad message once caused)."""
    for node in nodes:
        log = node.log_text()
        assert "redis backplane: bad message" not in log
        for block in log.split("Traceback (most recent call last):")[1:]:
            # A traceback runs until the next log line (they start with the date).
            trace = block.split("\n20", 1)[0]
            assert "backplane" not in trace, trace


async def two_nodes(cluster: Cluster, *extra: str) -> tuple[Node, Node, Client, Client]:
    n0 = await cluster.node(*extra)
    n1 = await cluster.node(*extra)
    a = await cluster.client(n0)
    b = await cluster.client(n1)
    await known(n0, b.id)
    await known(n1, a.id)
    return n0, n1, a, b


async def key_id_on_the_wire(attacker: Any) -> bytes:
    """The cluster key's ID, as anyone subscribed to the control channel sees it."""
    tap = Tap(attacker)
    await tap.start("wshub:ctl")
    try:
        heartbeat = await tap.first("wshub:ctl", b'"t": "hb"')
    finally:
        await tap.close()
    return heartbeat[:4]


async def test_injected_broadcast_and_direct_message_never_reach_a_client(
    cluster: Cluster, attacker: Any
) -> None:
    n0, n1, a, b = await two_nodes(cluster)
    node0, node1 = a.node, b.node
    key_id = await key_id_on_the_wire(attacker)
    evil = b"eeeeeeeeeeeeeeee"
    # Broadcasts: the pre-#17 format, and sealed-looking ones with the real
    # key ID but no valid MAC, one of them claiming to come from node 0.
    for message in (
        old_format(b"B", evil, b"", b"INJECTED broadcast, unsigned"),
        old_format(b"B", node0.encode(), b"", b"INJECTED as node 0, unsigned " * 3),
        forged_seal(key_id, evil.decode(), old_format(b"B", evil, b"", b"INJECTED sealed")),
        forged_seal(key_id, node0, old_format(b"B", node0.encode(), b"", b"INJECTED as 0")),
    ):
        assert await attacker.publish("wshub:all", message) == 2  # both nodes heard it
    # Direct messages to client b, on its node's own channel.
    direct = f"wshub:to:{node1}"
    for message in (
        old_format(b"T", evil, b.id.encode(), b"INJECTED direct"),
        old_format(b"t", node0.encode(), b.id.encode(), b"INJECTED direct as node 0" * 3),
        forged_seal(key_id, node0, old_format(b"T", node0.encode(), b.id.encode(), b"INJ")),
    ):
        assert await attacker.publish(direct, message) == 1
    await only_marker_arrives(a, a, b)
    counts = await rejected_at_least(n1, bad_mac=3)
    assert sum(counts.values()) == 7, counts
    counts0 = await rejected_at_least(n0, bad_mac=1)
    # Node 0 drops the broadcast that claims its own origin unopened (it never
    # delivers its own publications again), so it counts three of the four.
    assert sum(counts0.values()) == 3, counts0
    no_traceback(n0, n1)


async def test_forged_joins_neither_refuse_the_next_connection_nor_close_a_live_client(
    cluster: Cluster, attacker: Any
) -> None:
    n0, n1, a, b = await two_nodes(cluster, "--limit-by-ip", "3", "--cluster-limit-by-ip")
    key_id = await key_id_on_the_wire(attacker)
    assert (await n1.state())["ip_remote"] == 1  # client a, on node 0
    # Fake clients from the same IP, enough to pass the limit many times over...
    for _ in range(10):
        fake = {"t": "join", "n": "f" * 16, "c": str(uuid.uuid4()), "ip": "127.0.0.1", "e": ""}
        await attacker.publish("wshub:ctl", json.dumps(fake))
        sealed = forged_seal(key_id, "f" * 16, json.dumps(fake).encode())
        await attacker.publish("wshub:ctl", sealed)
    # ... and client b's own ID "admitted" by a node whose ID sorts first,
    # which made b's node close b with 1013 (the duplicate-session rule).
    dup = {"t": "join", "n": "0" * 16, "c": b.id, "ip": "127.0.0.1", "e": "message"}
    await attacker.publish("wshub:ctl", json.dumps(dup))
    await attacker.publish("wshub:ctl", forged_seal(key_id, "0" * 16, json.dumps(dup).encode()))
    # b is still open and served: the marker comes after the forged join.
    await only_marker_arrives(a, b)
    assert b.conn.close_code is None
    await rejected_at_least(n1, bad_mac=11)
    state1 = await n1.state(client_id=b.id)
    assert state1["owner"] is None  # b is local, no other node claims it
    assert state1["ip_remote"] == 1
    # The next connection is admitted (a and b: 2 of 3), the one after is
    # refused: the cluster-wide limit still counts the real clients.
    c = await cluster.client(n1)
    assert c.id not in (a.id, b.id)
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(n1.url + "/")
    assert refused.value.response.status_code == 429
    no_traceback(n0, n1)


async def test_forged_registry_entries_are_ignored(cluster: Cluster, attacker: Any) -> None:
    n0, n1, a, b = await two_nodes(cluster)
    node0 = a.node
    genuine = await attacker.hget(f"wshub:clients:{node0}", a.id)
    assert genuine is not None and genuine.endswith(b"127.0.0.1\tmessage")
    fake1, fake2, fake3 = (str(uuid.uuid4()) for _ in range(3))
    # A made-up entry in a live node's hash and in a node that does not exist.
    await attacker.hset(f"wshub:clients:{node0}", fake1, "127.0.0.1\tmessage")
    await attacker.hset("wshub:clients:0000000000000000", fake2, "127.0.0.1\tmessage")
    # Genuine entries moved: to another client ID, and to another node.
    await attacker.hset(f"wshub:clients:{node0}", fake3, genuine)
    await attacker.hset("wshub:clients:1111111111111111", a.id, genuine)
    # The nodes reload the registry every two heartbeats; cluster_clients()
    # reads it too.  Four bad entries, each dropped (and counted) every read.
    await rejected_at_least(n1, bad_entry=8)
    for node in (n0, n1):
        view = await node.state(client_id=fake1)
        assert sorted(view["cluster"]) == sorted([a.id, b.id])
        assert view["owner"] is None
        assert view["ip_remote"] == 1
        for fake in (fake2, fake3):
            assert (await node.state(client_id=fake))["owner"] is None
    assert (await n1.state(client_id=a.id))["owner"] == node0
    assert await b.reply(op="send", to=fake1, data="x") == {
        "op": "error",
        "error": "ClientNotFound",
    }
    await only_marker_arrives(a, b)
    no_traceback(n0, n1)


async def test_replayed_messages_are_rejected(cluster: Cluster, attacker: Any) -> None:
    n0, n1, a, b = await two_nodes(cluster)
    node1 = b.node
    tap = Tap(attacker)
    await tap.start("wshub:all", "wshub:ctl", f"wshub:to:{node1}")
    try:
        assert (await a.reply(op="send", to=b.id, data="LEGIT direct"))["ok"] is True
        await a.command(op="broadcast", data="LEGIT broadcast")
        await received(b, "LEGIT broadcast")
        await received(a, "LEGIT broadcast")
        assert b.payloads == ["LEGIT direct", "LEGIT broadcast"]
        b.payloads.clear()
        a.payloads.clear()
        # A client that comes and goes on node 0: its join, captured, must not
        # bring it back once it left.
        c = await cluster.client(n0)
        await known(n1, c.id)
        await c.close()
        for _ in range(200):
            if (await n1.state(client_id=c.id))["owner"] is None:
                break
            await asyncio.sleep(0.05)
        direct = await tap.first(f"wshub:to:{node1}", b"LEGIT direct")
        broadcast = await tap.first("wshub:all", b"LEGIT broadcast")
        join = await tap.first("wshub:ctl", c.id.encode())
    finally:
        await tap.close()
    before = (await n1.state())["rejected"]
    # Verbatim, on their own channels: replays.
    await attacker.publish(f"wshub:to:{node1}", direct)
    await attacker.publish("wshub:all", broadcast)
    await attacker.publish("wshub:ctl", join)
    # On another channel: the MAC covers the channel, so it no longer matches.
    await attacker.publish(f"wshub:to:{node1}", broadcast)
    await only_marker_arrives(a, a, b)
    after = await rejected_at_least(n1, replay=before["replay"] + 3)
    assert after["bad_mac"] == before["bad_mac"] + 1
    assert (await n1.state(client_id=c.id))["owner"] is None
    no_traceback(n0, n1)


async def test_malformed_messages_are_counted_with_one_line_per_reason(
    cluster: Cluster, attacker: Any
) -> None:
    n0, n1, a, b = await two_nodes(cluster)
    key_id = await key_id_on_the_wire(attacker)
    # A rogue node that holds the real key but sends what no node sends.
    key = cluster_key(NODE_SECRET)
    rogue = "9" * 16
    seal = _Seal(rogue, [key], 30.0)
    ctl = b"wshub:ctl"

    def control(body: Any) -> bytes:
        return seal.seal(ctl, json.dumps(body).encode())

    def hand_sealed(sent: float, version: int = 1) -> bytes:
        hb = json.dumps({"t": "hb", "n": rogue}).encode()
        return sealed_by_hand(key, ctl, rogue, hb, counter=10**6, sent=sent, version=version)

    sent: dict[str, list[bytes]] = {
        "malformed": [b"", b"{}", b"\x00" * 20],
        "unknown_key": [os.urandom(120), b"k" * 60],
        "bad_mac": [forged_seal(key_id, rogue, b'{"t": "hb", "n": "%s"}' % rogue.encode())] * 200,
        "bad_version": [hand_sealed(time.time(), version=2)],
        # Outside the replay window (30 s): a capture replayed later, or a clock far off.
        "stale": [hand_sealed(time.time() - 60), hand_sealed(time.time() + 60)],
        "unknown_kind": [control({"t": "explode", "n": rogue}), control({"n": rogue})],
        "bad_content": [
            seal.seal(ctl, b"{not json"),
            seal.seal(ctl, b"\xff\xfe"),
            control([1, 2, 3]),
            control({"t": "join", "n": rogue, "c": "x", "ip": "1", "e": "", "admin": "yes"}),
            control({"t": "join", "n": rogue, "c": "x"}),
            control({"t": "leave", "n": rogue, "c": 7, "ip": "1"}),
            control({"t": "hb", "n": "someone else"}),
        ],
    }
    for messages in sent.values():
        for message in messages:
            await attacker.publish("wshub:ctl", message)
    # Data channels too: a sealed broadcast whose metadata is not the format.
    bad_meta = old_format(b"B", rogue.encode(), b'{"e": 1}', b"payload")
    await attacker.publish("wshub:all", seal.seal(b"wshub:all", bad_meta))
    await attacker.publish("wshub:all", seal.seal(b"wshub:all", old_format(b"Z", b"x", b"")))
    await only_marker_arrives(a, a, b)
    expected = {reason: len(messages) for reason, messages in sent.items()}
    expected["bad_content"] += 1
    expected["unknown_kind"] += 1
    for node in (n0, n1):
        counts = await rejected_at_least(node, **expected)
        assert counts == {**dict.fromkeys(REJECT_REASONS, 0), **expected}
        log = node.log_text()
        for reason in expected:
            lines = [line for line in log.splitlines() if f"({reason}):" in line]
            assert len(lines) == 1, (reason, lines)
        assert "another cluster secret" in log
    no_traceback(n0, n1)


async def test_nodes_with_different_secrets_do_not_accept_each_other(
    cluster: Cluster, redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    n0, n1, a, b = await two_nodes(cluster)
    n2 = await cluster.node("--secret", "another-secret")
    c = await cluster.client(n2)
    await c.command(op="broadcast", data="FROM THE OTHER SECRET")
    await wait_for(lambda: "FROM THE OTHER SECRET" in c.payloads, 10.0, "local delivery")
    await only_marker_arrives(a, a, b)
    for node in (n0, n1):
        await rejected_at_least(node, unknown_key=1)
        assert "another cluster secret" in node.log_text()
        assert c.id not in (await node.state())["cluster"]
    await rejected_at_least(n2, unknown_key=1)
    assert (await n2.state(client_id=a.id))["owner"] is None

    # RedisBackplane(secret=...) with the nodes' secret joins them, whatever
    # the hub's own (cookie) secret; also_accept takes a second key (rotation).
    explicit = RedisBackplane(redis.url, secret=NODE_SECRET, heartbeat=0.5, ttl=3.0)
    rotating = RedisBackplane(
        redis.url, secret="the next secret", also_accept=[NODE_SECRET], heartbeat=0.5, ttl=3.0
    )
    servers = [HttpServer(), HttpServer()]
    hubs = [
        WebSocket(servers[0], backplane=explicit, secret="only the cookies"),
        WebSocket(servers[1], backplane=rotating, secret="only the cookies"),
    ]
    try:
        for s in servers:
            await s.serve("127.0.0.1", 0)
        async with (
            websockets.connect(f"ws://127.0.0.1:{servers[0].port}/") as d,
            websockets.connect(f"ws://127.0.0.1:{servers[1].port}/") as e,
        ):
            await wait_for(lambda: all(len(h.clients) == 1 for h in hubs))
            await known(n0, hubs[0].clients[0])
            marker = "TO EVERY NODE WITH THE KEY"
            await a.command(op="broadcast", data=marker)
            assert await asyncio.wait_for(d.recv(), 10.0) == marker
            assert await asyncio.wait_for(e.recv(), 10.0) == marker
            await received(a, marker)
            await received(b, marker)
            a.payloads.clear()
            b.payloads.clear()
            # The rotating node signs with the next key, which the others do
            # not have yet (node 2, with yet another key, is gone first).
            await n2.stop()
            before = (await n0.state())["rejected"]["unknown_key"]
            assert hubs[1].broadcast("SIGNED WITH THE NEXT KEY") == 1
            assert await asyncio.wait_for(e.recv(), 10.0) == "SIGNED WITH THE NEXT KEY"
            await rejected_at_least(n0, unknown_key=before + 1)
            after = await only_marker_arrives(a, a, b)
            assert await asyncio.wait_for(d.recv(), 10.0) == after
    finally:
        for s in servers:
            await s.close(timeout=2.0)
    no_traceback(n0, n1, n2)

    # No secret at all: the backplane refuses to start, loudly.
    monkeypatch.delenv("WSHUB_SECRET", raising=False)
    server = HttpServer()
    WebSocket(server, backplane=RedisBackplane(redis.url))
    with pytest.raises(ClusterSecretMissing, match="WSHUB_SECRET"):
        await server.serve("127.0.0.1", 0)
    await server.close(timeout=2.0)


async def test_wshub_serve_backplane_needs_a_secret(redis: RedisServer) -> None:
    wshub = shutil.which("wshub", path=str(Path(sys.executable).parent))
    assert wshub is not None, "the wshub console script is not installed in the venv"
    env = {k: v for k, v in os.environ.items() if k != "WSHUB_SECRET"}
    proc = await asyncio.create_subprocess_exec(
        wshub,
        "serve",
        "--port",
        "0",
        "--backplane",
        redis.url,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 30.0)
    assert proc.returncode == 2
    assert b"WSHUB_SECRET" in err and b"Traceback" not in err


def test_hub_secret_and_explicit_secret_give_the_same_key() -> None:
    from wshub.policy import SessionSigner

    label = b"wshub backplane v1"
    assert SessionSigner(NODE_SECRET).derive(label) == cluster_key(NODE_SECRET)
    assert cluster_key(NODE_SECRET) == hmac.digest(NODE_SECRET.encode(), label, "sha256")
    assert SessionSigner(NODE_SECRET).derive(label) != SessionSigner("other").derive(label)
    with pytest.raises(ValueError):
        RedisBackplane("redis://127.0.0.1:1/0", secret="")
    with pytest.raises(ValueError):
        RedisBackplane("redis://127.0.0.1:1/0", secret="x", replay_window=0)


async def test_forged_topic_messages_and_presence_entries_are_dropped(
    cluster: Cluster, attacker: Any
) -> None:
    """Topics travel on their own channels and presence hashes: the same checks hold there."""
    n0, n1, a, b = await two_nodes(cluster)
    node0 = a.node
    for client in (a, b):
        assert (await client.reply(op="subscribe", topic="room"))["ok"] is True

    async def followers() -> int:
        ((_channel, count),) = await attacker.pubsub_numsub("wshub:topic:room")
        return int(count)

    await wait_for_async(followers, 2)
    key_id = await key_id_on_the_wire(attacker)
    evil = b"eeeeeeeeeeeeeeee"
    room = struct.pack("!H", 4) + b"room"
    # Publications and a join, unsigned (the format before #17) and with a made-up MAC.
    for message in (
        old_format(b"P", evil, room, b"INJECTED publication"),
        old_format(b"J", evil, room + b"fake-client"),
        forged_seal(key_id, evil.decode(), old_format(b"P", evil, room, b"INJECTED sealed")),
        forged_seal(key_id, evil.decode(), old_format(b"J", evil, room + b"fake-client")),
    ):
        assert await attacker.publish("wshub:topic:room", message) == 2
    for node in (n0, n1):
        counts = await rejected_at_least(node, bad_mac=2)
        assert sum(counts.values()) == 4, counts
    # A genuine publication comes through, and nothing came before it.
    marker = f"MARKER-{uuid.uuid4().hex[:8]}"
    await a.reply(op="publish", topic="room", data=marker)
    for client in (a, b):
        await received(client, marker)
        assert client.payloads == [marker], client.payloads
    for node in (n0, n1):
        assert all("fake-client" not in event for event in (await node.state())["topic_events"])

    # Presence: an unsigned entry, a genuine one moved to another topic, and a
    # genuine registry entry copied into a presence hash.
    presence = f"wshub:presence:{node0}:room"
    genuine = await attacker.hget(presence, a.id)
    assert genuine is not None
    await attacker.hset(presence, "fake-member", "/")
    await attacker.hset(f"wshub:presence:{node0}:other", a.id, genuine)
    registry_entry = await attacker.hget(f"wshub:clients:{node0}", a.id)
    await attacker.hset(f"wshub:presence:{node0}:lobby", a.id, registry_entry)
    await attacker.pexpire(f"wshub:presence:{node0}:other", 60_000)
    await attacker.pexpire(f"wshub:presence:{node0}:lobby", 60_000)
    answers = {}
    for topic in ("room", "other", "lobby"):
        answers[topic] = (await b.reply(op="presence", topic=topic))["members"]
    assert answers == {"room": {a.id: [node0, "/"], b.id: [b.node, "/"]}, "other": {}, "lobby": {}}
    await rejected_at_least(n1, bad_entry=3)
    no_traceback(n0, n1)


async def wait_for_async(probe: Any, expected: Any, timeout: float = 10.0) -> None:
    """Poll an asynchronous ``probe`` until it answers ``expected``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (got := await probe()) != expected:
        assert loop.time() < deadline, f"got {got!r}, expected {expected!r}"
        await asyncio.sleep(0.05)

"""One wshub node of a test cluster: ``python cluster_node.py --redis URL [options]``.

Prints ``READY <port>`` on stdout once it serves.  Clients talk to it with
JSON commands (text messages on ``/`` or ``/chat``):

- ``{"op": "send", "to": ID, "data": S}`` → ``ws.send(ID, S)``; answers
  ``{"op": "sent", "ok": bool}`` or ``{"op": "error", "error": "ClientNotFound"}``
- ``{"op": "broadcast", "data": S, "path": P?, "exclude": [IDs]?}``
- ``{"op": "clients"}`` → ``{"op": "clients", "ids": await ws.cluster_clients()}``
- ``{"op": "subscribe", "topic": T}`` / ``{"op": "unsubscribe", "topic": T}`` →
  ``{"op": "subscribed", "ok": bool}`` (for either)
- ``{"op": "publish", "topic": T, "data": S, "exclude": [IDs]?}`` →
  ``{"op": "published", "count": N}`` (the local deliveries)
- ``{"op": "presence", "topic": T}`` → ``{"op": "presence", "members": {ID: [node, path]},
  "cluster": await ws.cluster_subscribers(T)}``
- ``{"op": "hold_reads", "topic": T, "after": N}``: the node's reads of T's
  history after sequence number N wait until ``{"op": "release_reads"}`` (a
  Redis that answers that read late); ``{"op": "hold_publications", "topic":
  T}``: the publications of T heard from Redis wait, in order, until
  ``{"op": "release_publications"}`` (a pub/sub connection that lags behind
  the one that reads).  Each is answered ``{"op": "held"}`` or ``{"op":
  "released"}``; ``/state`` counts what waits (``reads_waiting``,
  ``publications_waiting``).

Every client gets ``{"op": "welcome", "id": ID, "node": NODE}`` on open,
but ``wshub.v1`` clients: with ``--pubsub`` the node speaks ``wshub.v1`` to
those that offer it (anyone may subscribe and publish), and with
``--history-size N`` it keeps topic histories in Redis Streams
(``--history-ttl``, ``--history-trim approximate|exact``).
Payloads routed by send/broadcast arrive as the plain strings the sender gave.
``GET /state?ip=K&id=X`` answers the node's view of the cluster as JSON
(with the backplane's ``accepted`` and ``rejected`` counters),
with the ``"join"`` / ``"leave"`` events the node has seen so far
(``"topic_events"``: ``[kind, client_id, topic]``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any

from wshub import ClientNotFound, HttpServer, Request, Response, WebSocket
from wshub.backplane import HistoryRead, RedisBackplane, TopicHub


class GatedTopics:
    """The hub's topics as the backplane sees them, with the publications of
    one topic held back until released (then delivered in their order)."""

    def __init__(self, topics: TopicHub) -> None:
        self.topics = topics
        self.held_topic: str | None = None
        self.waiting: list[tuple[Any, ...]] = []

    def follows(self, name: str) -> bool:
        return self.topics.follows(name)

    def followed_topics(self) -> list[str]:
        return self.topics.followed_topics()

    def subscriptions(self, name: str) -> dict[str, str]:
        return self.topics.subscriptions(name)

    def deliver_publication(self, name: str, *publication: Any) -> int:
        if name == self.held_topic:
            self.waiting.append((name, *publication))
            return 0
        return self.topics.deliver_publication(name, *publication)

    def release(self) -> None:
        self.held_topic = None
        waiting, self.waiting = self.waiting, []
        for args in waiting:
            self.topics.deliver_publication(*args)

    def remote_joined(self, client_id: str, name: str) -> None:
        self.topics.remote_joined(client_id, name)

    def remote_left(self, client_id: str, name: str) -> None:
        self.topics.remote_left(client_id, name)


class GatedBackplane(RedisBackplane):
    """A RedisBackplane whose history reads and topic publications the test
    can hold back (``hold_reads`` / ``hold_publications`` commands)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gated: GatedTopics | None = None
        self.held_read: tuple[str, int] | None = None
        self.reads_released = asyncio.Event()
        self.reads_waiting = 0

    def bind_topics(self, topics: TopicHub) -> None:
        self.gated = GatedTopics(topics)
        super().bind_topics(self.gated)

    def hold_reads(self, name: str, after: int) -> None:
        self.held_read = (name, after)
        self.reads_released = asyncio.Event()

    def release_reads(self) -> None:
        self.held_read = None
        self.reads_released.set()

    async def read_history(self, name: str, after: int) -> HistoryRead:
        if (name, after) == self.held_read:
            released = self.reads_released
            self.reads_waiting += 1
            try:
                await released.wait()
            finally:
                self.reads_waiting -= 1
        return await super().read_history(name, after)


def build(args: argparse.Namespace) -> tuple[HttpServer, WebSocket]:
    backplane = GatedBackplane(
        args.redis,
        heartbeat=args.heartbeat,
        ttl=args.ttl,
        resync_every=2,
        backoff_max=1.0,
        history_trim=args.history_trim,
    )
    ws_box: list[WebSocket] = []
    topic_events: list[list[str]] = []

    async def handler(request: Request) -> Response:
        ws = ws_box[0]
        if request.path != "/state":
            return Response.text(404, "Not Found\n")
        params = request.query_params
        ip = params.get("ip", ["127.0.0.1"])[0]
        cid = params.get("id", [""])[0]
        state = {
            "node": backplane.node_id,
            "connected": backplane.connected,
            "local": ws.clients,
            "cluster": await ws.cluster_clients(),
            "ip_remote": backplane.ip_count(ip),
            "owner": backplane.owner(cid) if cid else None,
            "accepted": backplane.stats().accepted,
            "rejected": dict(backplane.stats().rejected),
            "topic_events": topic_events,
            "reads_waiting": backplane.reads_waiting,
            "publications_waiting": len(backplane.gated.waiting) if backplane.gated else 0,
        }
        return Response(json.dumps(state), content_type="application/json")

    server = HttpServer(handler)
    ws = WebSocket(
        server,
        allow_origin="*",
        backplane=backplane,
        limit_by_ip=args.limit_by_ip,
        cluster_limit_by_ip=args.cluster_limit_by_ip,
        secret=args.secret,
        per_message_deflate=False,
        pubsub=args.pubsub,
        authorize=(lambda client_id, action, topic: True) if args.pubsub else None,
        history_size=args.history_size,
        history_ttl=args.history_ttl,
    )
    ws_box.append(ws)

    @ws.on("open")
    def opened(client_id: str) -> None:
        if ws.subprotocol(client_id) == "wshub.v1":
            return
        ws.send(
            client_id, json.dumps({"op": "welcome", "id": client_id, "node": backplane.node_id})
        )

    async def command(client_id: str, data: str | bytes) -> None:
        if not isinstance(data, str):
            return
        try:
            cmd = json.loads(data)
        except ValueError:
            return
        op = cmd.get("op")
        if op == "send":
            try:
                ok = ws.send(cmd["to"], cmd["data"])
            except ClientNotFound:
                ws.send(client_id, json.dumps({"op": "error", "error": "ClientNotFound"}))
                return
            ws.send(client_id, json.dumps({"op": "sent", "ok": ok}))
        elif op == "broadcast":
            ws.broadcast(cmd["data"], path=cmd.get("path"), exclude=cmd.get("exclude") or ())
        elif op == "clients":
            ids = await ws.cluster_clients()
            ws.send(client_id, json.dumps({"op": "clients", "ids": ids}))

        elif op in ("subscribe", "unsubscribe"):
            method = ws.subscribe if op == "subscribe" else ws.unsubscribe
            ws.send(
                client_id, json.dumps({"op": "subscribed", "ok": method(client_id, cmd["topic"])})
            )
        elif op == "publish":
            count = ws.publish(cmd["topic"], cmd["data"], exclude=cmd.get("exclude") or ())
            ws.send(client_id, json.dumps({"op": "published", "count": count}))
        elif op == "presence":
            members = await ws.presence(cmd["topic"])
            cluster = await ws.cluster_subscribers(cmd["topic"])
            answer = {"op": "presence", "members": members, "cluster": cluster}
            ws.send(client_id, json.dumps(answer))
        elif op in ("hold_reads", "hold_publications", "release_reads", "release_publications"):
            gated = backplane.gated
            assert gated is not None
            if op == "hold_reads":
                backplane.hold_reads(cmd["topic"], int(cmd["after"]))
            elif op == "hold_publications":
                gated.held_topic = cmd["topic"]
            elif op == "release_reads":
                backplane.release_reads()
            else:
                gated.release()
            ws.send(client_id, json.dumps({"op": "held" if op.startswith("hold") else "released"}))

    ws.on("join", lambda cid, topic: topic_events.append(["join", cid, topic]))
    ws.on("leave", lambda cid, topic: topic_events.append(["leave", cid, topic]))
    ws.on("message", command)
    ws.on("/chat", command)
    return server, ws


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--redis", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ttl", type=float, default=3.0)
    p.add_argument("--heartbeat", type=float, default=0.5)
    p.add_argument("--limit-by-ip", type=int, default=0)
    p.add_argument("--cluster-limit-by-ip", action="store_true")
    p.add_argument("--secret", default="cluster-test-secret")
    p.add_argument("--pubsub", action="store_true")
    p.add_argument("--history-size", type=int, default=0)
    p.add_argument("--history-ttl", type=float, default=300.0)
    p.add_argument("--history-trim", default="approximate")
    args = p.parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    server, _ws = build(args)
    await server.serve("127.0.0.1", args.port)
    print(f"READY {server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close(timeout=2.0)


if __name__ == "__main__":
    asyncio.run(main())

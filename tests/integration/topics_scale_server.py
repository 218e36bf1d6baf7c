"""A pub/sub hub in its own process, for 10,000 subscribers and their memory.

Usage: ``python -m tests.integration.topics_scale_server``.  Prints its
port, then serves ``wshub.v1`` on ``/`` as ``wshub serve --mode pubsub``
does (any client may subscribe and publish, a history of 1,000 per topic),
with no per-IP limit (every subscriber comes from 127.0.0.1), on uvloop.
Its own process, so that the test process keeps its file descriptors for
the 10,000 client sockets and so that its RSS is the hub's alone.

Two plain HTTP routes for the test:

- ``GET /stats?topics=N``: JSON with VmRSS / VmHWM (kB, /proc/self/status),
  the connected clients, the "open" and "close" events seen, and, for the
  topics ``t0`` … ``t{N-1}``: their subscribers, their presence, and what
  is left in the hub's topic tables (topics with subscribers, clients
  following a topic).
- ``GET /publish?topics=N&count=C&tag=X``: the hub publishes, through
  ``ws.publish``, ``C`` messages ``"{topic}:{X}{i}"`` to each topic, topic
  after topic, and answers how many deliveries that made.
"""

from __future__ import annotations

import gc
import json
from urllib.parse import parse_qs

import uvloop

from tests.integration.security_rss_server import memory
from wshub import HttpServer, WebSocket
from wshub.http import Request, Response


def allow_all(client_id: str, action: str, topic: str) -> bool:
    return True


async def main() -> None:
    opened = 0
    closed = 0
    ws: WebSocket

    def count_open(client_id: str) -> None:
        nonlocal opened
        opened += 1

    def count_close(client_id: str, event: object) -> None:
        nonlocal closed
        closed += 1

    def query(request: Request, name: str, default: str) -> str:
        return parse_qs(request.query).get(name, [default])[0]

    async def stats(request: Request) -> Response:
        names = [f"t{i}" for i in range(int(query(request, "topics", "0")))]
        gc.collect()
        # The hub's topic tables (wshub.hub.topics.Topics), read to prove
        # that nothing is left behind once every subscriber is gone.
        tables = ws._topics
        body = {
            **memory(),
            "clients": len(ws.clients),
            "opened": opened,
            "closed": closed,
            "subscribers": {name: len(ws.subscribers(name)) for name in names},
            "presence": {name: len(await ws.presence(name)) for name in names},
            "topics_with_subscribers": sum(1 for t in tables.by_name.values() if t.subscribers),
            "clients_following": len(tables.by_client),
        }
        return Response(json.dumps(body), content_type="application/json")

    def publish(request: Request) -> Response:
        count = int(query(request, "count", "1"))
        tag = query(request, "tag", "s")
        delivered = 0
        for i in range(int(query(request, "topics", "0"))):
            name = f"t{i}"
            for n in range(count):
                delivered += ws.publish(name, f"{name}:{tag}{n}")
        return Response(json.dumps({"delivered": delivered}), content_type="application/json")

    async def route(request: Request) -> Response:
        if request.path == "/publish":
            return publish(request)
        return await stats(request)

    server = HttpServer(route)
    ws = WebSocket(
        server,
        pubsub=True,
        authorize=allow_all,
        history_size=1000,
        history_ttl=300.0,
        limit_by_ip=0,
    )
    ws.on("open", count_open)
    ws.on("close", count_close)
    await server.serve("127.0.0.1", 0, backlog=4096)
    print(server.port, flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main())

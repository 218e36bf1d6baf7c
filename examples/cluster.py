"""A chat room served by several processes that act as one hub through Redis.

Run a Redis server, then two (or more) nodes on different ports::

    redis-server --port 6379 --save "" --appendonly no
    WSHUB_SECRET=change-me python examples/cluster.py --port 8081
    WSHUB_SECRET=change-me python examples/cluster.py --port 8082

Connect clients to either port (``ws://127.0.0.1:8081/chat``, ...): a
message from any client reaches every client on every node once, ``/who``
lists the whole cluster, and ``/to <id> <text>`` reaches one client wherever
it is connected.  With the same secret on every node, a client that
reconnects through another node keeps its ID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal

from wshub import ClientNotFound, HttpServer, WebSocket


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8081, help="0: any free port (printed)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    server = HttpServer()
    # Same-origin browsers only; set allow_origin for pages served elsewhere.
    ws = WebSocket(server, backplane=args.redis, cluster_limit_by_ip=True, limit_by_ip=64)

    @ws.on("open")
    def opened(client_id: str) -> None:
        ws.broadcast(json.dumps({"join": client_id}), path="/chat", exclude=[client_id])

    @ws.on("/chat")
    async def chat(client_id: str, data: str | bytes) -> None:
        if not isinstance(data, str):
            return
        if data == "/who":
            ws.send(client_id, json.dumps({"clients": await ws.cluster_clients()}))
        elif data.startswith("/to "):
            target, _, text = data[4:].partition(" ")
            try:
                ws.send(target, json.dumps({"from": client_id, "private": text}))
            except ClientNotFound:
                ws.send(client_id, json.dumps({"error": f"{target} is not connected"}))
        else:
            ws.broadcast(json.dumps({"from": client_id, "text": data}), path="/chat")

    await server.serve("127.0.0.1", args.port)
    print(f"node {ws.backplane.node_id} on ws://127.0.0.1:{server.port}/chat", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()


if __name__ == "__main__":
    asyncio.run(main())

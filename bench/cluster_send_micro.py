"""Cost of ``ws.send`` to a client of another node, with and without direct streams.

    .venv/bin/python bench/cluster_send_micro.py --messages 5000 --runs 3

A fresh redis-server (loopback, no persistence) and two hubs in this
process, each on its own ``RedisBackplane``; a raw ``websockets`` client on
hub 1; hub 0 sends it ``--messages`` messages of 64 bytes.  Printed per
setting (the best of ``--runs``, settings alternated): microseconds per
message, from the first send until the client has read the last one.

- ``plain``: no history: the send is one ``PUBLISH`` to hub 1's channel;
- ``direct streams``: ``pubsub=True, history_size=1000``: every send runs
  ``DIRECT_SCRIPT``, which finds no direct stream for a raw client's ID and
  publishes it to hub 1's channel (the cost of not knowing what the target
  speaks).

Client, hubs and Redis share the machine: the figures compare settings.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import time
from typing import Any

import websockets

from wshub import HttpServer, WebSocket
from wshub.backplane import RedisBackplane


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def trial(redis_url: str, direct: bool, messages: int) -> float:
    servers = [HttpServer(), HttpServer()]
    options: dict[str, Any] = {}
    if direct:
        options = {"pubsub": True, "authorize": lambda *_: True, "history_size": 1000}
    hubs = [
        WebSocket(s, backplane=RedisBackplane(redis_url), secret="bench", **options)
        for s in servers
    ]
    for server in servers:
        await server.serve("127.0.0.1", 0)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{servers[1].port}/") as conn:
            while not hubs[1].clients:
                await asyncio.sleep(0.01)
            (client_id,) = hubs[1].clients
            while hubs[0].backplane.owner(client_id) is None:
                await asyncio.sleep(0.01)
            payload = "x" * 64
            start = time.perf_counter()
            for i in range(messages):
                hubs[0].send(client_id, payload)
                if i % 500 == 499:
                    await asyncio.sleep(0)  # let the writer drain
            for _ in range(messages):
                await conn.recv()
            return (time.perf_counter() - start) / messages * 1e6
    finally:
        for server in servers:
            await server.close(timeout=1.0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    redis = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(0.3)
        url = f"redis://127.0.0.1:{port}/0"
        best: dict[bool, float] = {}
        for _ in range(args.runs):
            for direct in (False, True):
                cost = await trial(url, direct, args.messages)
                best[direct] = min(best.get(direct, cost), cost)
        print(f"plain           {best[False]:7.1f} us per message")
        print(f"direct streams  {best[True]:7.1f} us per message")
    finally:
        redis.terminate()
        redis.wait(10)


if __name__ == "__main__":
    asyncio.run(main())

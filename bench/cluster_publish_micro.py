"""Cost of a topic publication across two nodes, with and without history in Redis.

    .venv/bin/python bench/cluster_publish_micro.py --messages 5000 --runs 3

A fresh redis-server (loopback, no persistence) and two node processes
(``WebSocket(pubsub=True)`` on a ``RedisBackplane``): a ``wshub.v1``
subscriber on node 1, a ``wshub.v1`` publisher on node 0 that keeps at most
``--window`` publications not yet delivered.  Printed per setting (the best
of ``--runs``, settings alternated): publications per second delivered
across the nodes, and microseconds per publication.

- ``history 0``: Redis pub/sub only (``PUBLISH`` on the topic's channel);
- ``history N``: the history in Redis Streams (one script: ``XADD`` +
  ``PUBLISH``, positions from Redis, every node delivers from Redis).

``--src DIR`` runs the nodes from another checkout's ``src`` (a before/after
comparison of the same setting).  Everything shares the machine: the
figures compare settings, they are not what a cluster of machines does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import websockets
from cluster_broadcast import free_port, wait_listening

NODE = """
import asyncio, sys
from wshub import HttpServer, WebSocket
from wshub.backplane import RedisBackplane

async def main():
    server = HttpServer()
    WebSocket(server, backplane=RedisBackplane(sys.argv[1], secret="bench"),
              per_message_deflate=False, pubsub=True, authorize=lambda c, a, t: True,
              history_size=int(sys.argv[2]), limit_by_ip=0)
    await server.serve("127.0.0.1", 0)
    print(server.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def v1(port: int) -> websockets.ClientConnection:
    return await websockets.connect(
        f"ws://127.0.0.1:{port}/",
        subprotocols=["wshub.v1"],  # type: ignore[list-item]
    )


async def measure(ports: list[int], messages: int, window: int) -> float:
    sub = await v1(ports[1])
    pub = await v1(ports[0])
    await sub.send(json.dumps({"type": "subscribe", "topic": "bench"}))
    assert json.loads(await sub.recv())["type"] == "subscribed"
    await asyncio.sleep(0.2)  # node 1's SUBSCRIBE reaches Redis
    credit = asyncio.Semaphore(window)
    done = asyncio.Event()
    received = 0

    async def receive() -> None:
        nonlocal received
        async for raw in sub:
            if json.loads(raw)["type"] == "message":
                received += 1
                credit.release()
                if received == messages:
                    done.set()
                    return

    reader = asyncio.ensure_future(receive())
    start = time.perf_counter()
    for i in range(messages):
        await credit.acquire()
        await pub.send(json.dumps({"type": "publish", "topic": "bench", "data": f"m{i:08d}"}))
    await done.wait()
    elapsed = time.perf_counter() - start
    reader.cancel()
    await sub.close()
    await pub.close()
    return elapsed


async def trial(history: int, args: argparse.Namespace, tmp: Path) -> float:
    redis_port = free_port()
    redis = subprocess.Popen(
        [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            *("--port", str(redis_port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(tmp)),
        ],
        stdout=subprocess.DEVNULL,
    )
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        await wait_listening(redis_port, redis)
        env = dict(os.environ)
        if args.src:
            env["PYTHONPATH"] = args.src
        ports = []
        for _ in range(2):
            node = subprocess.Popen(
                [sys.executable, "-c", NODE, f"redis://127.0.0.1:{redis_port}/0", str(history)],
                stdout=subprocess.PIPE,
                env=env,
            )
            nodes.append(node)
            assert node.stdout is not None
            ports.append(int(node.stdout.readline()))
        await asyncio.sleep(0.5)  # both nodes joined
        return await measure(ports, args.messages, args.window)
    finally:
        for proc in [*nodes, redis]:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(10)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--history", type=int, nargs="+", default=[0, 1000])
    p.add_argument("--src", default=None, help="PYTHONPATH of the nodes (another checkout)")
    args = p.parse_args()
    best: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for history in args.history:
                elapsed = await trial(history, args, Path(tmp))
                best[history] = min(best.get(history, elapsed), elapsed)
    for history, elapsed in best.items():
        print(
            f"history {history:5d}: {args.messages / elapsed:9.0f} publications/s "
            f"({elapsed / args.messages * 1e6:6.1f} us each)"
        )


if __name__ == "__main__":
    asyncio.run(main())

"""The cost of a resume: reconnect, then receive 1,000 missed publications.

A hub with ``pubsub=True`` and a history on a loopback port; the topic has
``--missed`` publications of ``--size`` bytes that the client did not see.
Each trial is what a client does after a drop: open a connection (TCP +
upgrade), ``hello``, ``subscribe`` with ``since`` = the position before
them, and read until the last replayed message.  Client and server share
one process and one event loop (``wshub.client`` is the client), so the
figure is both sides' CPU plus loopback, not a network round trip.

    python bench/resume_micro.py --missed 1000 --size 64 --trials 30
    python bench/resume_micro.py --redis      # the history in Redis Streams

``--redis`` starts a ``redis-server`` (loopback, no persistence) and gives
the hub a Redis backplane: the history is then kept in Redis Streams and a
resume reads it from there (``XRANGE``) after the node's ``SUBSCRIBE`` to
the topic's channel is confirmed.  The missed publications are published
by a ``wshub.v1`` client and each answered once Redis kept it.

Trials alternate with the same reconnect without a resume (``subscribe``
without ``since``: nothing replayed), the fixed part of the cost.  Prints
the median and the best time of a resume and of a plain reconnect, in
milliseconds, and the cost per replayed message: (median resume - median
reconnect) / missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator

import wshub.client
from wshub import HttpServer, WebSocket
from wshub.backplane import Backplane, RedisBackplane


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A fresh redis-server on a free loopback port; yields its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("resume_micro.py --redis: redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [
                *(exe, "--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", tmp),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            for _ in range(200):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


async def run(args: argparse.Namespace, redis_url: str | None) -> tuple[list[float], list[float]]:
    server = HttpServer()
    backplane: Backplane | None = None
    if redis_url is not None:
        backplane = RedisBackplane(redis_url, secret=os.urandom(16).hex())
    WebSocket(
        server,
        pubsub=True,
        authorize=lambda client_id, action, topic: True,
        history_size=args.missed,
        per_message_deflate=False,
        backplane=backplane,
    )
    await server.serve("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.port}/"
    payload = "x" * args.size
    resumes: list[float] = []
    reconnects: list[float] = []
    try:
        async with wshub.client.connect(url, reconnect=False) as publisher:
            start = await publisher.publish("t", "before")
            assert start is not None, "no history: nothing to resume"
            for first in range(0, args.missed, 100):  # answered once kept
                batch = min(100, args.missed - first)
                await asyncio.gather(*(publisher.publish("t", payload) for _ in range(batch)))
        for _ in range(args.trials + 1):  # the first ones warm up
            began = time.perf_counter()
            async with wshub.client.connect(url, reconnect=False) as client:
                await client.subscribe("t", since=start)
                count = 0
                async for _item in client:
                    count += 1
                    if count == args.missed:
                        break
                resumes.append(time.perf_counter() - began)
            began = time.perf_counter()
            async with wshub.client.connect(url, reconnect=False) as client:
                await client.subscribe("t")
                reconnects.append(time.perf_counter() - began)
    finally:
        await server.close()
    return resumes[1:], reconnects[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--missed", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument(
        "--redis", action="store_true", help="the history in Redis Streams (a redis-server)"
    )
    args = parser.parse_args()
    if args.redis:
        with redis_server() as url:
            resumes, reconnects = asyncio.run(run(args, url))
    else:
        resumes, reconnects = asyncio.run(run(args, None))
    resume, plain = statistics.median(resumes), statistics.median(reconnects)
    store = "Redis Streams" if args.redis else "memory"
    print(
        f"history in {store}, {args.missed} missed messages of {args.size} B: "
        f"resume median {resume * 1e3:.2f} ms (best {min(resumes) * 1e3:.2f}); "
        f"reconnect without resume median {plain * 1e3:.2f} ms (best "
        f"{min(reconnects) * 1e3:.2f}); per replayed message "
        f"{(resume - plain) / args.missed * 1e6:.1f} us (both sides)"
    )


if __name__ == "__main__":
    main()

"""The cost of a resume: reconnect, then receive 1,000 missed publications.

A hub with ``pubsub=True`` and a history on a loopback port; the topic has
``--missed`` publications of ``--size`` bytes that the client did not see.
Each trial is what a client does after a drop: open a connection (TCP +
upgrade), ``hello``, ``subscribe`` with ``since`` = the position before
them, and read until the last replayed message.  Client and server share
one process and one event loop (``wshub.client`` is the client), so the
figure is both sides' CPU plus loopback, not a network round trip.

    python bench/resume_micro.py --missed 1000 --size 64 --trials 30

Prints the median and the best trial in milliseconds, and the cost per
replayed message.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import wshub.client
from wshub import HttpServer, WebSocket


async def run(args: argparse.Namespace) -> list[float]:
    server = HttpServer()
    ws = WebSocket(
        server,
        pubsub=True,
        authorize=lambda client_id, action, topic: True,
        history_size=args.missed,
        per_message_deflate=False,
    )
    await server.serve("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.port}/"
    payload = "x" * args.size
    ws.publish("t", "before")
    start = ws.topic_position("t")
    assert start is not None
    for _ in range(args.missed):
        ws.publish("t", payload)
    times: list[float] = []
    try:
        for _ in range(args.trials + 1):  # the first one warms up
            began = time.perf_counter()
            async with wshub.client.connect(url, reconnect=False) as client:
                await client.subscribe("t", since=start)
                count = 0
                async for _item in client:
                    count += 1
                    if count == args.missed:
                        break
                times.append(time.perf_counter() - began)
    finally:
        await server.close()
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--missed", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    times = asyncio.run(run(args))
    median = statistics.median(times)
    best = min(times)
    print(
        f"resume of {args.missed} messages of {args.size} B: median {median * 1e3:.2f} ms, "
        f"best {best * 1e3:.2f} ms ({best / args.missed * 1e6:.2f} us per message, both sides)"
    )


if __name__ == "__main__":
    main()

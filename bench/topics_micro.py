"""Per-delivery cost of WebSocket.publish() next to broadcast(), and the memory
of subscriptions, in-process (no sockets).

Like ``broadcast_micro.py``: 500 open links over a transport that only
counts bytes, all subscribed to one topic; each round publishes (or
broadcasts) 8 messages and then flushes.  The two are measured in
alternating runs and the best of each is printed, in microseconds per
delivery.  ``--memory`` instead opens 200 links, subscribes each to 50 of
100 topics (10,000 subscriptions) and prints what the subscriptions take
(``tracemalloc``), in bytes per subscription.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import tracemalloc

from wshub import WebSocket

try:
    from bench.broadcast_micro import open_links
except ImportError:  # run as a script: python bench/topics_micro.py
    from broadcast_micro import open_links  # type: ignore[no-redef]


def fan_out(receivers: int, rounds: int, window: int, runs: int) -> None:
    ws = WebSocket(ping_delay=0, limit_by_ip=0)
    links = open_links(ws, receivers)
    for client_id in ws.clients:
        ws.subscribe(client_id, "room")
    message = "x" * 64
    calls = {
        "broadcast": lambda: ws.broadcast(message),
        "publish": lambda: ws.publish("room", message),
    }
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(rounds):
                for _ in range(window):
                    call()
                for link in links:
                    link.flush_batch()
            best[name] = min(best[name], time.perf_counter() - start)
    deliveries = receivers * rounds * window
    for name, seconds in best.items():
        print(f"{name}: {seconds / deliveries * 1e6:.3f} us per delivery ({receivers} receivers)")


def memory(clients: int, topics: int, per_client: int) -> None:
    ws = WebSocket(ping_delay=0, limit_by_ip=0)
    open_links(ws, clients)
    ids = list(ws.clients)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i, client_id in enumerate(ids):
        for k in range(per_client):
            ws.subscribe(client_id, f"topic-{(i + k) % topics}")
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    count = sum(len(ws.subscribers(f"topic-{t}")) for t in range(topics))
    print(
        f"{count} subscriptions ({clients} clients x {per_client} of {topics} topics): "
        f"{grown} bytes, {grown / count:.0f} bytes per subscription"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--receivers", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args))


async def run(args: argparse.Namespace) -> None:
    # Inside a running loop, as the links and the hub expect.
    if args.memory:
        memory(200, 100, 50)
    else:
        fan_out(args.receivers, args.rounds, 8, args.runs)


if __name__ == "__main__":
    main()

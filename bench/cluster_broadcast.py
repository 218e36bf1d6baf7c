"""Cross-node broadcast throughput of a wshub cluster over Redis (an S7-like scenario).

    .venv/bin/python bench/cluster_broadcast.py --nodes 1 2 4 --receivers 100 --seconds 5

For each node count: a fresh redis-server (loopback, no persistence), that
many ``wshub serve --mode broadcast --deflate off --backplane URL`` processes,
receivers spread evenly over the nodes and one sender on node 0.  The sender
sends 64-byte text messages and keeps at most ``--window`` messages not yet
delivered to every receiver (as S7 of ``make bench`` does).  Printed:
deliveries/s to all receivers, and to the receivers on other nodes than the
sender's (cross-node).  Everything, the load generator included, shares the
machine, so the figures say how the pieces compare, not what a cluster of
real machines would do.  ``make bench`` measures the same with the C load
generator, pinned (scenarios C1 and C2 of bench/run.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import websockets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(400):
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        w.close()
        return
    raise RuntimeError(f"nothing listens on {port}")


async def run(
    nodes: int, receivers: int, seconds: float, window: int, tmp: Path
) -> dict[str, float]:
    redis_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
    procs.append(
        subprocess.Popen(
            [
                redis_server,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp),
            ],
            stdout=subprocess.DEVNULL,
        )
    )
    await wait_listening(redis_port, procs[0])
    url = f"redis://127.0.0.1:{redis_port}/0"
    secret = os.urandom(16).hex()
    wshub = str(Path(sys.executable).parent / "wshub")
    ports = []
    for _ in range(nodes):
        port = free_port()
        ports.append(port)
        procs.append(
            subprocess.Popen(
                [
                    wshub,
                    "serve",
                    "--mode",
                    "broadcast",
                    "--deflate",
                    "off",
                    "--port",
                    str(port),
                    "--backplane",
                    url,
                    "--log-level",
                    "warning",
                ],
                # The cluster secret every node shares (it authenticates the backplane).
                env={**os.environ, "WSHUB_SECRET": secret},
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        for port, proc in zip(ports, procs[1:], strict=True):
            await wait_listening(port, proc)
        conns = [
            await websockets.connect(f"ws://127.0.0.1:{ports[i % nodes]}/", max_queue=None)
            for i in range(receivers)
        ]
        sender = await websockets.connect(f"ws://127.0.0.1:{ports[0]}/", max_queue=None)
        counts = [0] * receivers
        progress = asyncio.Event()
        expected_prefix = "m"

        async def receive(i: int, conn: websockets.ClientConnection) -> None:
            async for msg in conn:
                if isinstance(msg, str) and msg.startswith(expected_prefix):
                    counts[i] += 1
                    progress.set()

        async def drain_sender() -> None:
            async for _msg in sender:
                pass

        tasks = [asyncio.ensure_future(receive(i, c)) for i, c in enumerate(conns)]
        tasks.append(asyncio.ensure_future(drain_sender()))
        # Warm up until every receiver gets broadcasts (the registry is loaded).
        deadline = time.monotonic() + 20
        while min(counts) == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("receivers on some node never got a broadcast")
            await sender.send("m-warmup")
            await asyncio.sleep(0.1)
        base = list(counts)
        sent = 0
        body = "x" * 56
        start = time.monotonic()
        end = start + seconds
        while time.monotonic() < end:
            while sent - min(c - b for c, b in zip(counts, base, strict=True)) >= window:
                progress.clear()
                try:
                    await asyncio.wait_for(progress.wait(), 5.0)
                except asyncio.TimeoutError:
                    raise RuntimeError("deliveries stalled (a message was lost?)") from None
            sent += 1
            await sender.send(f"m{sent:07d}{body}")
        while min(c - b for c, b in zip(counts, base, strict=True)) < sent:
            progress.clear()
            try:
                await asyncio.wait_for(progress.wait(), 5.0)
            except asyncio.TimeoutError:
                break
        elapsed = time.monotonic() - start
        delivered = [c - b for c, b in zip(counts, base, strict=True)]
        total = sum(delivered)
        cross = sum(d for i, d in enumerate(delivered) if i % nodes != 0)
        lost = sent * receivers - total
        for t in tasks:
            t.cancel()
        for c in [*conns, sender]:
            await c.close()
        return {
            "nodes": nodes,
            "messages": sent,
            "deliveries_per_s": total / elapsed,
            "cross_node_per_s": cross / elapsed,
            "lost": lost,
        }
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--receivers", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--window", type=int, default=8)
    args = ap.parse_args()
    print(f"{'nodes':>5} {'messages':>9} {'deliveries/s':>13} {'cross-node/s':>13} {'lost':>5}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.nodes:
            r = await run(n, args.receivers, args.seconds, args.window, Path(tmp))
            print(
                f"{r['nodes']:>5} {r['messages']:>9} {r['deliveries_per_s']:>13,.0f} "
                f"{r['cross_node_per_s']:>13,.0f} {r['lost']:>5}",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main())

"""Graceful restarts: closes spread over the drain window, and a rolling restart (SIGHUP)
of two workers behind one port while a ``websockets`` client keeps sending.

The spread is checked functionally (the close times cover a good part of the
window), not as a speed: the benchmark owns timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import pytest
import websockets

from tests.integration.cluster_support import RedisServer
from tests.integration.workers_support import Supervised, serve_two_workers, worker_pids
from wshub import HttpServer, WebSocket

pytestmark = pytest.mark.timeout(180)


async def test_closes_are_spread_over_the_window() -> None:
    window = 2.0
    server = HttpServer(drain_window=window, drain_timeout=20.0)
    ws = WebSocket(server)
    await server.serve("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    closed_at: list[float] = []
    codes: list[tuple[int | None, str | None]] = []

    async def client() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/") as conn:
            with contextlib.suppress(websockets.ConnectionClosed):
                await conn.recv()
            closed_at.append(loop.time())
            codes.append((conn.close_code, conn.close_reason))

    tasks = [asyncio.ensure_future(client()) for _ in range(20)]
    try:
        for _ in range(1000):
            if len(ws.clients) == 20:
                break
            await asyncio.sleep(0.01)
        assert len(ws.clients) == 20
        await asyncio.wait_for(server.drain(), 30)
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        for task in tasks:
            task.cancel()
        await server.close(timeout=2.0)
    assert codes == [(1012, "service restart")] * 20
    spread = max(closed_at) - min(closed_at)
    assert spread >= 0.5 * window, f"20 closes within {spread:.3f}s of a {window}s window"
    print(f"\n20 closes spread over {spread:.3f}s (window {window}s)")


async def test_close_code_and_window_are_checked() -> None:
    with pytest.raises(ValueError, match="close code"):
        HttpServer(drain_code=1006)
    with pytest.raises(ValueError, match="window"):
        HttpServer(drain_window=10.0, drain_timeout=5.0)


class SteadyClient:
    """Sends continuously; on a close it reconnects, retrying until it gets in."""

    def __init__(self, port: int) -> None:
        self.url = f"ws://127.0.0.1:{port}/"
        self.closes: list[int | None] = []
        self.connections = 0
        self.failed_attempts: list[str] = []
        self.echoed = 0
        self.stopping = False

    async def connect(self) -> websockets.ClientConnection:
        # Every attempt must eventually succeed: a refused or reset attempt
        # (the instant a worker's listener closes) is retried, 200 times at most.
        for _ in range(200):
            try:
                conn = await websockets.connect(self.url, compression=None, open_timeout=10)
            except (OSError, websockets.InvalidHandshake, asyncio.TimeoutError) as exc:
                self.failed_attempts.append(repr(exc))
                await asyncio.sleep(0.05)
                continue
            self.connections += 1
            return conn
        raise AssertionError(f"could not reconnect: {self.failed_attempts[-5:]}")

    async def run(self) -> None:
        seq = 0
        while not self.stopping:
            conn = await self.connect()
            try:
                while not self.stopping:
                    seq += 1
                    await conn.send(f"m{seq}")
                    assert await asyncio.wait_for(conn.recv(), 10) == f"m{seq}"
                    self.echoed += 1
                    await asyncio.sleep(0.005)
            except websockets.ConnectionClosed:
                self.closes.append(conn.close_code)
            finally:
                await conn.close()


async def test_rolling_restart_loses_no_connection_attempt(
    redis: RedisServer, tmp_path: Path
) -> None:
    program: Supervised = serve_two_workers(
        redis.url, tmp_path, "--mode", "echo", "--drain-window", "1"
    )
    port = program.port
    try:
        before = await worker_pids(port, 2)
        client = SteadyClient(port)
        runner = asyncio.ensure_future(client.run())
        for _ in range(1000):
            if client.echoed >= 20:
                break
            await asyncio.sleep(0.01)
        program.signal(signal.SIGHUP)
        await program.wait_log("rolling restart done", timeout=60)
        after = await worker_pids(port, 2)
        assert not before & after, (before, after)  # both workers were replaced
        echoed = client.echoed
        for _ in range(1000):  # and the client goes on after the restart
            if client.echoed >= echoed + 20 or runner.done():
                break
            await asyncio.sleep(0.01)
        client.stopping = True
        await asyncio.wait_for(runner, 20)
        program.signal(signal.SIGTERM)
        assert await program.wait(30) == 0
    finally:
        program.kill_all()
    # The client's worker was drained at least once: it was told to come back.
    assert client.closes, "the client was never closed by the restart"
    assert set(client.closes) == {1012}, client.closes
    assert client.connections == len(client.closes) + 1
    assert client.echoed >= echoed + 20
    print(
        f"\n{client.connections} connections, {len(client.closes)} closes (1012), "
        f"{len(client.failed_attempts)} attempts retried, {client.echoed} echoes"
    )
    assert "Traceback" not in program.log_text()


async def test_hurry_closes_the_rest_at_once() -> None:
    # A window of a minute; hurry() (a second SIGTERM under run()) ends it.
    server = HttpServer(drain_window=60.0, drain_timeout=120.0)
    ws = WebSocket(server)
    await server.serve("127.0.0.1", 0)
    conns = [await websockets.connect(f"ws://127.0.0.1:{server.port}/") for _ in range(10)]
    try:
        assert len(ws.clients) == 10
        drain = asyncio.ensure_future(server.drain())
        first = await asyncio.wait_for(
            asyncio.wait(
                [asyncio.ensure_future(c.wait_closed()) for c in conns],
                return_when=asyncio.FIRST_COMPLETED,
            ),
            30,
        )
        assert len(first[0]) == 1  # client 0 at once, the next one 6 s later
        server.hurry()
        await asyncio.wait_for(drain, 30)  # not the 60 s window
        for conn in conns:
            await asyncio.wait_for(conn.wait_closed(), 10)
            assert (conn.close_code, conn.close_reason) == (1012, "service restart")
    finally:
        await server.close(timeout=2.0)


async def test_a_second_sigterm_hurries_every_worker(redis: RedisServer, tmp_path: Path) -> None:
    program = serve_two_workers(
        redis.url, tmp_path, "--mode", "echo", "--drain-window", "60", "--drain-timeout", "120"
    )
    port = program.port
    conns = []
    try:
        await worker_pids(port, 2)
        conns = [await websockets.connect(f"ws://127.0.0.1:{port}/") for _ in range(10)]
        program.signal(signal.SIGTERM)
        await program.wait_log("draining every worker")
        # Each worker closes its first client at once, the others wait their
        # turn: two closes mean both workers are draining (or one has them all).
        waits = [asyncio.ensure_future(c.wait_closed()) for c in conns]
        for done in asyncio.as_completed(waits):
            await asyncio.wait_for(done, 30)
            if sum(w.done() for w in waits) >= 2:
                break
        program.signal(signal.SIGTERM)
        for conn in conns:
            await asyncio.wait_for(conn.wait_closed(), 30)  # not the 60 s window
            assert conn.close_code == 1012
        assert await program.wait(30) == 0
    finally:
        for conn in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
        program.kill_all()
    assert "SIGTERM again" in program.log_text()

"""``HttpServer(busy_poll=...)``: after I/O, the loop polls without sleeping
for that long, then sleeps again; off by default.

The server runs on asyncio's selector loop with a selector that records the
timeout of every ``select()``: a loop kept awake selects with timeout 0 over
and over, a sleeping one waits.  The client is the ``websockets`` client, on
the same loop.
"""

from __future__ import annotations

import asyncio
import selectors
import subprocess
from typing import Any

import pytest
import websockets

from tests.conftest import ROOT
from tests.integration.cli_support import free_port, start_program, wshub_command
from wshub import HttpServer, WebSocket
from wshub.transport import epoll

if not epoll.available():
    pytest.fail("busy polling is a feature of the epoll I/O layer (Linux)", pytrace=False)


class CountingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Counts the select() calls that did not wait."""

    def __init__(self) -> None:
        super().__init__()
        self.no_wait = 0

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is not None and timeout <= 0:
            self.no_wait += 1
        return super().select(timeout)  # type: ignore[no-any-return]


def polls_without_waiting(busy_poll: float) -> tuple[int, int]:
    """Non-waiting selects during a 50 ms sleep right after an echo, and
    during one 300 ms after the budget ran out."""
    selector = CountingSelector()
    loop = asyncio.SelectorEventLoop(selector)

    async def main() -> tuple[int, int]:
        server = HttpServer(busy_poll=busy_poll, io="epoll")  # (also under --io loop)
        ws = WebSocket(server)

        @ws.on("message")
        def echo(client_id: str, data: str | bytes) -> None:
            ws.send(client_id, data)

        await server.serve("127.0.0.1", 0)
        try:
            async with websockets.connect(
                f"ws://127.0.0.1:{server.port}/", ping_interval=None
            ) as client:
                await client.send("hello")
                assert await client.recv() == "hello"
                before = selector.no_wait
                await asyncio.sleep(0.05)
                during = selector.no_wait - before
                await asyncio.sleep(busy_poll + 0.3)
                before = selector.no_wait
                await asyncio.sleep(0.05)
                after = selector.no_wait - before
        finally:
            await server.close(timeout=2.0)
        return during, after

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def test_the_loop_stays_awake_for_the_budget_then_sleeps() -> None:
    during, after = polls_without_waiting(busy_poll=0.2)
    # Spinning: a select per loop pass, thousands in 50 ms on any machine
    # that runs this suite; asleep: none, or the odd callback's.
    assert during > 200, during
    assert after < 5, after


def test_off_by_default_the_loop_sleeps() -> None:
    during, after = polls_without_waiting(busy_poll=0.0)
    assert during < 5, during
    assert after < 5, after


def test_busy_poll_option_checks() -> None:
    assert HttpServer(io="epoll").busy_poll == 0.0
    with pytest.raises(ValueError, match="busy_poll"):
        HttpServer(busy_poll=-1e-6)
    with pytest.raises(ValueError, match="busy_poll"):
        HttpServer(busy_poll=float("nan"))
    with pytest.raises(ValueError, match="own I/O layer"):
        HttpServer(busy_poll=100e-6, io="loop")


async def test_serve_busy_poll_echoes() -> None:
    port = free_port()
    program = await start_program(
        [*wshub_command(), "serve", "--port", str(port), "--busy-poll", "100"], port
    )
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as client:
            for i in range(100):
                await client.send(f"message {i}")
                assert await client.recv() == f"message {i}"
    finally:
        status, err = await program.stop()
    assert status == 0, err


@pytest.mark.parametrize("extra", [["--busy-poll", "-1"], ["--busy-poll", "100", "--io", "loop"]])
def test_serve_refuses_a_bad_busy_poll(extra: list[str]) -> None:
    proc = subprocess.run(
        [*wshub_command(), "serve", "--port", str(free_port()), *extra],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert "--busy-poll" in proc.stderr
    assert "Traceback" not in proc.stderr

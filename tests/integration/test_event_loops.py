"""`wshub serve --loop asyncio|uvloop`: both event loops serve real clients.

uvloop's transports implement asyncio.Transport without subclassing it, so a
stray isinstance() check in the transport would refuse every connection
there; this test catches that class of bug.
"""

from __future__ import annotations

import asyncio
import os

import pytest
import websockets

from tests.integration.cli_support import free_port, start_program, wshub_command


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_serve_on_each_event_loop(loop: str) -> None:
    if loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pytest.fail("uvloop is not installed: it is part of the dev extras (make venv)")
    port = free_port()
    argv = [*wshub_command(), "serve", "--port", str(port), "--deflate", "off", "--loop", loop]
    program = await start_program([*argv, "--log-level", "warning"], port)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            big = os.urandom(300_000)
            await ws.send(big)
            assert await ws.recv() == big
            pong = await ws.ping(b"p")
            await asyncio.wait_for(pong, 5)
        assert ws.close_code == 1000
    finally:
        status, err = await program.stop()
    assert status == 0, err

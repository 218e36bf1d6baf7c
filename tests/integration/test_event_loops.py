"""`wshub serve --loop asyncio|uvloop`: both event loops serve real clients.

uvloop's transports implement asyncio.Transport without subclassing it, so a
stray isinstance() check in the transport would refuse every connection
there; this test catches that class of bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys

import pytest
import websockets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            pytest.fail(f"wshub serve exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        await asyncio.sleep(0.05)
    pytest.fail("wshub serve did not start listening")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_serve_on_each_event_loop(loop: str) -> None:
    if loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pytest.fail("uvloop is not installed: it is part of the dev extras (make venv)")
    port = _free_port()
    cmd = [sys.executable, "-m", "wshub", "serve", "--port", str(port), "--deflate", "off"]
    proc = subprocess.Popen([*cmd, "--loop", loop, "--log-level", "warning"], env=dict(os.environ))
    try:
        await _wait_listening(port, proc)
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
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0

"""Start wshub programs (the CLI, examples) as real processes on a free loopback port."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wshub_command() -> list[str]:
    script = VENV_BIN / "wshub"
    if not script.exists():
        raise AssertionError(f"the wshub console script is missing at {script}: run 'make venv'")
    return [str(script)]


class Program:
    """A started process; ``startup`` is the seconds until its port accepted a connection."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, startup: float) -> None:
        self.proc = proc
        self.port = port
        self.startup = startup
        self.stdout = ""
        self.signalled = False

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` once (a second SIGTERM during shutdown would kill the process)."""
        if self.proc.returncode is None and not self.signalled:
            self.signalled = True
            self.proc.send_signal(sig)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> tuple[int, str]:
        """Send ``sig``; return (exit status, stderr); keep stdout in ``self.stdout``."""
        self.send_signal(sig)
        try:
            out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(
                f"pid {self.proc.pid} did not exit {timeout}s after {sig}"
            ) from None
        assert self.proc.returncode is not None
        self.stdout = out.decode(errors="replace")
        return self.proc.returncode, err.decode(errors="replace")


async def start_program(argv: Sequence[str], port: int, timeout: float = 15.0) -> Program:
    """Run ``argv`` and wait until 127.0.0.1:``port`` accepts connections."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    began = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(ROOT),
        env=env,
    )
    deadline = began + timeout
    while True:
        if proc.returncode is not None:
            _out, err = await proc.communicate()
            raise AssertionError(f"{argv} exited {proc.returncode}: {err.decode()[-2000:]}")
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.perf_counter() > deadline:
                proc.kill()
                await proc.wait()
                raise AssertionError(f"{argv} did not listen on {port} within {timeout}s") from None
            await asyncio.sleep(0.01)
            continue
        w.close()
        return Program(proc, port, time.perf_counter() - began)


@asynccontextmanager
async def example_program(name: str) -> AsyncIterator[int]:
    """``python examples/<name> --port P`` while the block runs; yields P.

    Afterwards the example must exit 0 on SIGTERM without a traceback.
    """
    port = free_port()
    program = await start_program(
        [sys.executable, str(ROOT / "examples" / name), "--port", str(port)], port
    )
    try:
        yield port
    finally:
        status, err = await program.stop(signal.SIGTERM)
        assert status == 0, err
        assert "Traceback" not in err, err

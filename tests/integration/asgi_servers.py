"""Start real ASGI servers (uvicorn, Hypercorn) in subprocesses on a free loopback port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_PORT_RE = re.compile(rb"(?:running on|Running on) https?://127\.0\.0\.1:(\d+)", re.IGNORECASE)


class AsgiServer:
    """A running ASGI server subprocess; ``port`` is where it listens."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int, log: list[bytes]):
        self.name = name
        self.proc = proc
        self.port = port
        self._log = log

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return b"".join(self._log).decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def command(server: str, target: str, *extra: str) -> list[str]:
    """The command line that serves the ASGI app ``target`` ("module:attr") on a free port."""
    if server == "uvicorn":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            target,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *extra,
        ]
    if server == "hypercorn":
        return [sys.executable, "-m", "hypercorn", target, "--bind", "127.0.0.1:0", *extra]
    raise ValueError(server)


def start(
    server: str,
    target: str,
    *extra: str,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> AsgiServer:
    """Start ``server`` (``"uvicorn"`` or ``"hypercorn"``) serving ``target``; wait for its port."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(cwd), str(ROOT), full_env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env.update(env or {})
    try:
        proc = subprocess.Popen(
            command(server, target, *extra),
            cwd=str(cwd),
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    except OSError as exc:
        pytest.fail(f"cannot start {server}: {exc} (run 'make venv': it installs the dev extra)")
    log: list[bytes] = []
    found = threading.Event()
    port: list[int] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            m = _PORT_RE.search(line)
            if m and not port:
                port.append(int(m.group(1)))
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found.wait(0.05):
        if time.monotonic() > deadline:
            break
    if not port:
        proc.kill()
        proc.wait()
        text = b"".join(log).decode(errors="replace")
        pytest.fail(f"{server} {target} did not start (exit {proc.returncode}):\n{text[-3000:]}")
    return AsgiServer(server, proc, port[0], log)

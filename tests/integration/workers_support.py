"""Helpers for the worker, health and graceful-restart tests.

``wshub serve --workers N`` as a real process (its log in a file, stopped by
PID), and a way to learn which worker a WebSocket client is on: the client
asks ``/readyz`` (its body names the worker's PID) on a fresh connection,
then upgrades that same kept-alive connection with the ``websockets`` client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import websockets

from tests.integration.cli_support import ROOT, free_port, wshub_command

#: The cluster secret of the workers the tests start (WSHUB_SECRET).
CLUSTER_SECRET = "workers test secret"

PID_IN_BODY = re.compile(rb"\(pid (\d+)\)")


class HttpAnswer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    @property
    def pid(self) -> int:
        found = PID_IN_BODY.search(self.body)
        if found is None:
            raise AssertionError(f"no pid in {self.body!r}")
        return int(found.group(1))


def read_answer(sock: socket.socket) -> HttpAnswer:
    """Read one HTTP/1.1 response with a Content-Length from a blocking socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"connection closed in a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    if found is None:
        raise AssertionError(f"no Content-Length in {head!r}")
    length = int(found.group(1))
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed in a response body")
        body += chunk
    if len(body) != length:
        raise AssertionError(f"more than the body came: {body!r}")
    return HttpAnswer(int(head.split(b" ", 2)[1]), body)


def get_on(sock: socket.socket, path: str) -> HttpAnswer:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return read_answer(sock)


def open_socket(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10.0)
    sock.settimeout(10.0)
    return sock


def http_get(port: int, path: str) -> HttpAnswer:
    """GET ``path`` on a new connection (so on whichever worker the kernel picks)."""
    with open_socket(port) as sock:
        return get_on(sock, path)


async def aget(port: int, path: str) -> HttpAnswer:
    return await asyncio.to_thread(http_get, port, path)


async def connect_tagged(port: int, path: str = "/", **kwargs: Any) -> tuple[int, Any]:
    """A ``websockets`` client and the PID of the worker that serves it."""

    def ask() -> tuple[int, socket.socket]:
        sock = open_socket(port)
        try:
            answer = get_on(sock, "/readyz")
        except BaseException:
            sock.close()
            raise
        if answer.status != 200:
            sock.close()
            raise AssertionError(f"/readyz answered {answer.status}: {answer.body!r}")
        return answer.pid, sock

    pid, sock = await asyncio.to_thread(ask)
    sock.setblocking(False)
    conn = await websockets.connect(
        f"ws://127.0.0.1:{port}{path}", sock=sock, compression=None, **kwargs
    )
    return pid, conn


async def worker_pids(port: int, count: int, *, exclude: Sequence[int] = ()) -> set[int]:
    """Ask /readyz on new connections until ``count`` PIDs not in ``exclude`` answered."""
    seen: set[int] = set()
    for _ in range(2000):
        try:
            answer = await aget(port, "/readyz")
        except OSError:
            await asyncio.sleep(0.05)
            continue
        if answer.status == 200 and answer.pid not in exclude:
            seen.add(answer.pid)
            if len(seen) >= count:
                return seen
        await asyncio.sleep(0.01)
    raise AssertionError(f"only saw workers {seen} on port {port} (wanted {count})")


class Supervised:
    """A ``wshub serve --workers N`` process, its stderr in a file."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    async def wait(self, timeout: float) -> int:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.proc.wait), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"supervisor {self.proc.pid} still running {timeout}s later:\n"
                + self.log_text()[-3000:]
            ) from None

    async def wait_log(self, text: str, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while text not in self.log_text():
            if self.proc.poll() is not None or loop.time() > deadline:
                raise AssertionError(f"{text!r} not in the log:\n{self.log_text()[-3000:]}")
            await asyncio.sleep(0.05)

    def kill_all(self) -> None:
        """Teardown: SIGKILL the workers this supervisor started, then the supervisor.

        The supervisor is stopped (SIGSTOP) first: a running one would start
        a replacement for each worker killed here, and that one would be
        left behind when the supervisor goes.
        """
        if self.proc.poll() is None:
            with_suppressed_kill(self.proc.pid, signal.SIGSTOP)
            for pid in children_of(self.proc.pid):
                with_suppressed_kill(pid)
            with_suppressed_kill(self.proc.pid)
            self.proc.wait(10)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def with_suppressed_kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def serve_workers(port: int, workdir: Path, *args: str) -> Supervised:
    """Start ``wshub serve --port PORT --health ARGS`` (stderr and stdout to a log file)."""
    log_path = workdir / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*wshub_command(), "serve", "--port", str(port), "--health", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            env=dict(os.environ, PYTHONUNBUFFERED="1", WSHUB_SECRET=CLUSTER_SECRET),
        )
    return Supervised(proc, port, log_path)


def serve_two_workers(redis_url: str, workdir: Path, *args: str) -> Supervised:
    """``wshub serve --workers 2 --backplane REDIS --deflate off ARGS`` on a free port."""
    return serve_workers(
        free_port(),
        workdir,
        "--workers",
        "2",
        "--backplane",
        redis_url,
        "--deflate",
        "off",
        *args,
    )

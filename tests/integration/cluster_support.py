"""Helpers for the cluster tests: a real redis-server and wshub node processes, by PID."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import websockets

HERE = Path(__file__).resolve().parent
NODE_SCRIPT = HERE / "cluster_node.py"
REDIS_SERVER = "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_path() -> str:
    path = REDIS_SERVER if os.access(REDIS_SERVER, os.X_OK) else shutil.which("redis-server")
    if path is None:
        pytest.fail("redis-server is not installed: run 'make test' as root (apt-get redis-server)")
    return path


class RedisServer:
    """A throw-away redis-server on a free loopback port (no persistence, unless
    ``persistent``: an append-only file synced on every write, in ``workdir``)."""

    def __init__(self, workdir: Path, persistent: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                redis_server_path(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited with {self.proc.returncode}")
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if loop.time() > deadline:
                    pytest.fail("redis-server did not start listening within 10s")
                await asyncio.sleep(0.05)
                continue
            w.close()
            return

    def stop(self, sig: int = signal.SIGKILL) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)
            proc.wait(10)
        self.proc = None


class Node:
    """A ``cluster_node.py`` process."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def state(self, ip: str = "127.0.0.1", client_id: str = "") -> dict[str, Any]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(
                f"GET /state?ip={ip}&id={client_id} HTTP/1.1\r\nHost: x\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            raw = await asyncio.wait_for(reader.read(), 10.0)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise AssertionError(f"/state answered {head[:60]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def kill9(self) -> None:
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10.0)
            except asyncio.TimeoutError:
                os.kill(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()


async def start_node(redis_url: str, workdir: Path, *extra: str) -> Node:
    index = len(list(workdir.glob("node-*.log")))
    log_path = workdir / f"node-{index}.log"
    log = open(log_path, "wb")  # noqa: SIM115
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(NODE_SCRIPT),
        "--redis",
        redis_url,
        *extra,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    log.close()
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20.0)
    except asyncio.TimeoutError:
        proc.kill()
        pytest.fail(f"node did not start within 20s: {log_path.read_text()[-2000:]}")
    if not line.startswith(b"READY "):
        await proc.wait()
        pytest.fail(f"node failed to start ({proc.returncode}): {log_path.read_text()[-2000:]}")
    return Node(proc, int(line.split()[1]), log_path)


class Client:
    """A websockets client that sorts control replies from routed payloads."""

    def __init__(self, conn: Any, welcome: dict[str, Any], set_cookie: str) -> None:
        self.conn = conn
        self.set_cookie = set_cookie
        self.id: str = welcome["id"]
        self.node: str = welcome["node"]
        self.payloads: list[str] = []
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.conn:
                if isinstance(msg, str) and msg.startswith("{"):
                    self.replies.put_nowait(json.loads(msg))
                else:
                    self.payloads.append(msg if isinstance(msg, str) else msg.decode())
        except websockets.ConnectionClosed:
            pass

    async def command(self, **cmd: Any) -> None:
        await self.conn.send(json.dumps(cmd))

    async def reply(self, **cmd: Any) -> dict[str, Any]:
        await self.command(**cmd)
        return await asyncio.wait_for(self.replies.get(), 10.0)

    async def close(self) -> None:
        await self.conn.close()
        self._reader.cancel()


async def connect(node: Node, path: str = "/", cookie: str | None = None) -> Client:
    headers = {"Cookie": cookie} if cookie else None
    conn = await websockets.connect(node.url + path, additional_headers=headers)
    welcome = json.loads(await asyncio.wait_for(conn.recv(), 10.0))
    assert welcome["op"] == "welcome"
    return Client(conn, welcome, conn.response.headers.get("Set-Cookie", ""))


class Cluster:
    """The nodes and clients of one test, stopped together (by PID) at the end."""

    def __init__(self, redis: RedisServer, workdir: Path) -> None:
        self.redis = redis
        self.workdir = workdir
        self.nodes: list[Node] = []
        self.clients: list[Client] = []

    async def node(self, *extra: str) -> Node:
        node = await start_node(self.redis.url, self.workdir, *extra)
        self.nodes.append(node)
        return node

    async def client(self, node: Node, path: str = "/", cookie: str | None = None) -> Client:
        client = await connect(node, path, cookie)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for c in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), 5.0)
        for n in self.nodes:
            await n.stop()

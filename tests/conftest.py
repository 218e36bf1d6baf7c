"""Shared fixtures: a real wshub server on a loopback port, and third-party clients."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from wshub import HttpServer, WebSocket
from wshub.logging import RefusalRateLimit, refusal_log

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "node"


class Running:
    """A started HttpServer + WebSocket pair."""

    def __init__(self, server: HttpServer, ws: WebSocket, host: str) -> None:
        self.server = server
        self.ws = ws
        self.host = host
        self.port = server.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    @property
    def http_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


StartServer = Callable[..., Awaitable[Running]]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--io",
        default="auto",
        choices=["auto", "loop"],
        help="HttpServer's default io for this run: make test runs the transport "
        "tests a second time with --io loop (the event loop's transports)",
    )


@pytest.fixture(autouse=True)
def _default_io(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``--io loop`` every HttpServer made without ``io=`` uses the loop's transports."""
    io = request.config.getoption("--io")
    if io != "auto":
        defaults = dict(HttpServer.__init__.__kwdefaults__ or {})
        defaults["io"] = io
        monkeypatch.setattr(HttpServer.__init__, "__kwdefaults__", defaults)


@pytest.fixture(autouse=True)
def _refusal_log_bucket_full() -> None:
    """Every test starts with the refusal log's token bucket full (it is one
    per process): tests that count log lines must not see what others spent."""
    for limit in refusal_log.filters:
        if isinstance(limit, RefusalRateLimit):
            limit.reset()


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """``await start_server(**websocket_options)`` → a :class:`Running` on 127.0.0.1:<free port>.

    Pass ``handler=`` for plain HTTP, ``server_options={...}`` for HttpServer
    limits, ``host=`` for another loopback address (``"::1"``).
    """
    started: list[HttpServer] = []

    async def start(
        *,
        handler: Any = None,
        server_options: dict[str, Any] | None = None,
        host: str = "127.0.0.1",
        **options: Any,
    ) -> Running:
        server = HttpServer(handler, **(server_options or {}))
        ws = WebSocket(server, **options)
        await server.serve(host, 0)
        started.append(server)
        return Running(server, ws, host)

    yield start
    for server in started:
        await server.close(timeout=2.0)


def node_path() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run 'make test' (it installs nodejs as root)")
    if not (NODE_DIR / "node_modules" / "ws").is_dir():
        pytest.fail("the npm package ws is missing: run 'make node-deps'")
    return node


async def run_node(script: str, *args: str, timeout: float = 30.0) -> Any:
    """Run ``tests/node/<script>`` with ``args``; return the JSON it prints last."""
    proc = await asyncio.create_subprocess_exec(
        node_path(),
        str(NODE_DIR / script),
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(NODE_DIR),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"node {script} did not finish within {timeout}s")
    if proc.returncode != 0:
        pytest.fail(f"node {script} exited {proc.returncode}: {err.decode()[-2000:]}")
    lines = [line for line in out.decode().splitlines() if line.strip()]
    if not lines:
        pytest.fail(f"node {script} printed nothing; stderr: {err.decode()[-2000:]}")
    return json.loads(lines[-1])


async def wait_for(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true (event-driven code under test has no other hook)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def system_congestion_control() -> str:
    """The system's default TCP congestion control, for the loopback_congestion
    tests, which switch to "reno" (built into every Linux kernel, and any user
    may pick it): fails if the switch could not be seen."""
    default_cc = Path("/proc/sys/net/ipv4/tcp_congestion_control")
    if not hasattr(socket, "TCP_CONGESTION") or not default_cc.exists():
        pytest.fail("needs Linux (TCP_CONGESTION and /proc/sys/net/ipv4/tcp_congestion_control)")
    name = default_cc.read_text().strip()
    if name == "reno":
        pytest.fail("the system default is reno already: the switch to reno cannot be seen")
    return name

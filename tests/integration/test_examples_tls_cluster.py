"""examples/tls_http2.py and examples/cluster.py, started as processes, used by real clients.

tls_http2.py: the h2 library over TLS (ALPN h2) loads the page and opens a
WebSocket as an extended CONNECT stream (200, not 101); the websockets
client over wss:// gets HTTP/1.1 (101) on the same port.
cluster.py: two nodes on one real redis-server act as one hub.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.integration.cluster_support import RedisServer
from tests.integration.h2_client_support import OP_CLOSE, OP_TEXT, H2Client, close_payload

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Example:
    """``python examples/<name> ...`` with the first line matching ``pattern``."""

    def __init__(self, proc: asyncio.subprocess.Process, match: re.Match[str]) -> None:
        self.proc = proc
        self.match = match
        # Keep reading its output so that the pipe never fills and blocks it.
        self.drain = asyncio.ensure_future(self._drain(proc))

    @classmethod
    async def start(cls, name: str, args: list[str], pattern: str, env: dict[str, str]) -> Example:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLES / name),
            *args,
            cwd=str(EXAMPLES),
            env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert proc.stdout is not None
        seen: list[str] = []
        try:
            while True:
                raw = await asyncio.wait_for(proc.stdout.readline(), 30)
                if not raw:
                    pytest.fail(f"{name} exited before it was ready:\n{''.join(seen)[-3000:]}")
                line = raw.decode(errors="replace")
                seen.append(line)
                match = re.search(pattern, line)
                if match is not None:
                    return cls(proc, match)
        except asyncio.TimeoutError:
            proc.kill()
            pytest.fail(f"{name} printed no ready line in 30 s:\n{''.join(seen)[-3000:]}")

    @staticmethod
    async def _drain(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while await proc.stdout.readline():
            pass

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode


async def test_tls_http2_example() -> None:
    example = await Example.start(
        "tls_http2.py", ["--port", "0"], r"https://127\.0\.0\.1:(\d+)/", {}
    )
    port = int(example.match.group(1))
    authority = f"127.0.0.1:{port}"
    try:
        client = await H2Client.connect("127.0.0.1", port, tls=True)
        try:
            assert client.alpn == "h2"
            sid = client.request("GET", "/", authority=authority)
            page = await client.body(sid)
            assert client.streams[sid].status == 200 and b"new WebSocket" in page
            assert b"HTTP/2" in page  # the handler saw the request come over HTTP/2
            ws_sid = await client.open_ws("/echo", authority=authority)
            response = await client.response(ws_sid)
            assert response.status == 200  # RFC 8441: 200, not 101
            client.ws_send(ws_sid, OP_TEXT, "héllo over h2".encode())
            frame = await client.ws_recv(ws_sid)
            assert (frame.opcode, frame.payload.decode()) == (OP_TEXT, "héllo over h2")
            client.ws_send(ws_sid, OP_CLOSE, close_payload(1000))
            frame = await client.ws_recv(ws_sid)
            assert frame.opcode == OP_CLOSE and frame.close_code == 1000
        finally:
            await client.close()

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        async with websockets.connect(f"wss://{authority}/echo", ssl=ctx) as ws:
            assert ws.response.status_code == 101  # the same port, HTTP/1.1
            await ws.send(b"\x00\x01binary")
            assert await ws.recv() == b"\x00\x01binary"
    finally:
        assert await example.stop() == 0


async def _recv_json(ws: Any, want: str) -> dict[str, Any]:
    """The next JSON message that has key ``want`` (skipping join notices)."""
    while True:
        msg: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if want in msg:
            return msg


async def test_cluster_example(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    await redis.start()
    nodes: list[Example] = []
    try:
        for _ in range(2):
            nodes.append(
                await Example.start(
                    "cluster.py",
                    ["--port", "0", "--redis", redis.url],
                    r"on ws://127\.0\.0\.1:(\d+)/chat",
                    {"WSHUB_SECRET": "example-test-secret"},
                )
            )
        url_a, url_b = (f"ws://127.0.0.1:{n.match.group(1)}/chat" for n in nodes)
        async with websockets.connect(url_a) as a, websockets.connect(url_b) as b:
            # /who lists the whole cluster: wait until both nodes know both clients.
            for _ in range(100):
                await a.send("/who")
                clients = (await _recv_json(a, "clients"))["clients"]
                if len(clients) == 2:
                    break
                await asyncio.sleep(0.1)
            assert len(clients) == 2, clients
            await b.send("hello from node b")
            for ws in (a, b):
                msg = await _recv_json(ws, "text")
                assert msg["text"] == "hello from node b"
            sender = msg["from"]
            (target,) = [c for c in clients if c != sender]
            await b.send(f"/to {target} just for you")
            private = await _recv_json(a, "private")
            assert private == {"from": sender, "private": "just for you"}
    finally:
        for node in nodes:
            assert await node.stop() == 0
        redis.stop()

"""Every example in ``examples/`` that this file owns is started and used by a real client.

``asgi_echo.py`` runs as ``uvicorn asgi_echo:app`` and ``hypercorn asgi_echo:app``
from ``examples/``, exactly as its docstring says; ``fastapi_chat.py`` under
uvicorn; ``chat.py`` as a script on wshub's own server.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.integration.asgi_servers import AsgiServer, start

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("server_name", ["uvicorn", "hypercorn"])
async def test_asgi_echo_example(server_name: str) -> None:
    srv = start(server_name, "asgi_echo:app", cwd=EXAMPLES)
    try:
        async with websockets.connect(srv.url + "/", open_timeout=10) as client:
            await client.send("echo me ✓")
            assert await asyncio.wait_for(client.recv(), 10) == "echo me ✓"
            await client.send(b"\x01\x02\x03")
            assert await asyncio.wait_for(client.recv(), 10) == b"\x01\x02\x03"
        assert client.close_code == 1000
        async with httpx.AsyncClient() as http:
            assert (await http.get(srv.http_url + "/")).status_code == 404
    finally:
        srv.stop()
    # The example logs every "close" event (Hypercorn 0.18 reports every
    # close the client starts as 1006: see wshub.asgi).
    code = 1006 if server_name == "hypercorn" else 1000
    assert re.search(rf"client [0-9a-f-]{{36}} left: {code}", srv.output()), srv.output()


@pytest.fixture(scope="module")
def fastapi_chat() -> Iterator[AsgiServer]:
    srv = start("uvicorn", "fastapi_chat:app", cwd=EXAMPLES)
    yield srv
    srv.stop()


async def welcome(client: Any) -> str:
    msg = json.loads(await asyncio.wait_for(client.recv(), 10))
    return str(msg["welcome"])


async def test_fastapi_chat_example(fastapi_chat: AsgiServer) -> None:
    async with httpx.AsyncClient() as http:
        page = await http.get(fastapi_chat.http_url + "/")
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
        assert "new WebSocket" in page.text
        assert (await http.get(fastapi_chat.http_url + "/nowhere")).status_code == 404
        url = fastapi_chat.url + "/chat"
        async with websockets.connect(url) as a, websockets.connect(url) as b:
            a_id, b_id = await welcome(a), await welcome(b)
            assert a_id != b_id
            counted = await http.get(fastapi_chat.http_url + "/clients")
            assert counted.json() == {"clients": 2}
            await a.send("hello room")
            for client in (a, b):
                msg = json.loads(await asyncio.wait_for(client.recv(), 10))
                assert msg == {"from": a_id, "text": "hello room"}
        # b sees a leave (or a sees nothing: it is gone); the count drops to 0.
        for _ in range(100):
            if (await http.get(fastapi_chat.http_url + "/clients")).json()["clients"] == 0:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the hub still counts the chat clients after they left")


class Script:
    """``python examples/<name> --port 0``, with the URL it prints."""

    def __init__(self, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / name), "--port", "0"],
            cwd=str(EXAMPLES),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + 30
        while not self.ready.wait(0.05) and time.monotonic() < deadline:
            pass
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", "".join(self.lines))
        if match is None:
            self.stop()
            pytest.fail(f"{name} did not print its URL:\n{''.join(self.lines)[-3000:]}")
        self.port = int(match.group(1))

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace"))
            if "http://" in self.lines[-1]:
                self.ready.set()
        self.ready.set()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


async def test_native_chat_example() -> None:
    script = Script("chat.py")
    try:
        async with httpx.AsyncClient() as http:
            page = await http.get(f"http://127.0.0.1:{script.port}/")
        assert page.status_code == 200 and "new WebSocket" in page.text
        url = f"ws://127.0.0.1:{script.port}/chat"
        async with websockets.connect(url) as a:
            a_id = await welcome(a)
            cookie = a.response.headers["Set-Cookie"].split(";", 1)[0]
            async with websockets.connect(url) as b:
                b_id = await welcome(b)
                await b.send("hi from b")
                for client in (a, b):
                    msg = json.loads(await asyncio.wait_for(client.recv(), 10))
                    assert msg == {"from": b_id, "text": "hi from b"}
            left = json.loads(await asyncio.wait_for(a.recv(), 10))
            assert left == {"from": "server", "text": f"{b_id} left"}
        # Coming back with the session cookie gives the same ID.
        async with websockets.connect(url, additional_headers={"Cookie": cookie}) as again:
            assert await welcome(again) == a_id
            # Stopping the server closes every client with 1001 first.
            assert script.stop() == 0
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(again.recv(), 10)
            assert again.close_code == 1001
    finally:
        script.stop()

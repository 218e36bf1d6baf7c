"""Headless Chromium (Debian's, through Playwright) against wshub over HTTP/2 and HTTP/1.1.

Chromium carries a ``wss://`` WebSocket over HTTP/2 (RFC 8441) only when a
page of the same host string is already on an h2 connection that advertised
SETTINGS_ENABLE_CONNECT_PROTOCOL: so each test loads a page first, then
connects from it.  The Chrome DevTools Protocol event
``Network.webSocketHandshakeResponseReceived`` tells which HTTP carried the
handshake: status 200 is HTTP/2 (extended CONNECT), 101 is HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.integration.chromium_support import CHROMIUM, CHROMIUM_ARGS
from wshub import HttpServer, WebSocket
from wshub.http import Request, Response
from wshub.tls import write_self_signed

# The shared launch options, and the self-signed certificate accepted.
BROWSER_ARGS = [*CHROMIUM_ARGS, "--ignore-certificate-errors"]

PAGE = b"<!doctype html><meta charset=utf-8><title>wshub h2 test</title><p>ready</p>"

# Runs in the page: every kind of message a browser sends, then a clean close.
EXCHANGE_JS = """
async ([url, skip]) => {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const queue = [];
  let waiter = null;
  ws.onmessage = (e) => {
    if (waiter) { const w = waiter; waiter = null; w(e.data); } else { queue.push(e.data); }
  };
  const next = () => queue.length ? Promise.resolve(queue.shift())
                                  : new Promise((r) => { waiter = r; });
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error("WebSocket error before open"));
  });
  const out = {};
  for (let i = 0; i < skip; i++) await next();  // e.g. the demo's welcome notice
  ws.send("hello");
  out.text = await next();
  ws.send(new Blob([new Uint8Array([1, 2, 3, 255])]));
  out.blob = Array.from(new Uint8Array(await next()));
  ws.send(new Uint8Array([250, 251, 252]).buffer);
  out.arrayBuffer = Array.from(new Uint8Array(await next()));
  const big = new Uint8Array(1 << 20);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 10)) & 255;
  ws.send(big);
  const echoed = new Uint8Array(await next());
  out.bigLength = echoed.length;
  out.bigEqual = echoed.length === big.length && echoed.every((v, i) => v === big[i]);
  ws.send("héllo wörld ✓ 🙂 日本語");
  out.unicode = await next();
  const closed = new Promise((r) => {
    ws.onclose = (e) => r({code: e.code, reason: e.reason, wasClean: e.wasClean});
  });
  const t0 = performance.now();
  ws.close(1000, "done");
  out.close = await closed;
  out.closeMs = performance.now() - t0;
  return out;
}
"""


def _check_chromium() -> None:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run 'make test' as root (it installs chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.fail("the playwright package is missing: run 'make venv'")


class Browser:
    """One headless Chromium with a page and a CDP session watching WebSocket handshakes."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self._pw: Any = None
        self._browser: Any = None
        self.page: Any = None

    async def start(self, extra_args: list[str] | None = None) -> None:
        from playwright.async_api import async_playwright

        self._pw = await async_playwright().start()
        self._browser = await self._pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS + (extra_args or [])
        )
        context = await self._browser.new_context(ignore_https_errors=True)
        self.page = await context.new_page()
        cdp = await context.new_cdp_session(self.page)
        await cdp.send("Network.enable")
        cdp.on(
            "Network.webSocketHandshakeResponseReceived",
            lambda params: self.statuses.append(int(params["response"]["status"])),
        )

    async def exchange(self, page_url: str, ws_url: str, own_page: bool = True) -> dict[str, Any]:
        response = await self.page.goto(page_url)
        assert response is not None and response.status == 200
        if own_page:
            assert await self.page.text_content("p") == "ready"
        result: dict[str, Any] = await asyncio.wait_for(
            self.page.evaluate(EXCHANGE_JS, [ws_url, 0 if own_page else 1]), 60
        )
        return result

    async def close(self) -> None:
        if self._browser is not None:
            await self._browser.close()
        if self._pw is not None:
            await self._pw.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    _check_chromium()
    b = Browser()
    try:
        await b.start()
        yield b
    finally:
        await b.close()


def check_exchange(result: dict[str, Any]) -> None:
    assert result["text"] == "hello"
    assert result["blob"] == [1, 2, 3, 255]
    assert result["arrayBuffer"] == [250, 251, 252]
    assert result["bigLength"] == 1 << 20
    assert result["bigEqual"] is True
    assert result["unicode"] == "héllo wörld ✓ 🙂 日本語"
    # The server echoes the code (RFC 6455 §5.5.1) with an empty reason.
    assert result["close"] == {"code": 1000, "reason": "", "wasClean": True}
    print(f"browser close handshake took {result['closeMs']:.1f} ms")


async def start_echo(tls_files: tuple[str, str] | None) -> tuple[HttpServer, WebSocket, dict]:
    def handler(request: Request) -> Response:
        if request.path == "/":
            return Response(PAGE, content_type="text/html; charset=utf-8")
        return Response.text(404, "Not Found\n")

    server = HttpServer(handler)
    ws = WebSocket(server, max_payload=4 * 1024 * 1024)
    closes: dict[str, Any] = {}
    ws.on("/echo", lambda cid, data: ws.send(cid, data))
    ws.on("close", lambda cid, ev: closes.__setitem__(cid, ev))
    ctx = None
    if tls_files is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*tls_files)
    await server.serve("127.0.0.1", 0, ssl=ctx)
    return server, ws, closes


async def test_browser_wss_rides_http2(browser: Browser, tmp_path: Path) -> None:
    server, _ws, closes = await start_echo(write_self_signed(str(tmp_path)))
    try:
        base = f"127.0.0.1:{server.port}"
        result = await browser.exchange(f"https://{base}/", f"wss://{base}/echo")
        check_exchange(result)
        assert browser.statuses == [200], "the WebSocket did not ride HTTP/2"
        await wait_for(lambda: len(closes) == 1, what="the server's close event")
        ev = next(iter(closes.values()))
        assert (ev.code, ev.reason, ev.was_clean) == (1000, "done", True)
    finally:
        await server.close(timeout=2.0)


async def test_browser_ws_rides_http11(browser: Browser) -> None:
    server, _ws, closes = await start_echo(None)
    try:
        base = f"127.0.0.1:{server.port}"
        result = await browser.exchange(f"http://{base}/", f"ws://{base}/echo")
        check_exchange(result)
        assert browser.statuses == [101]
        await wait_for(lambda: len(closes) == 1, what="the server's close event")
    finally:
        await server.close(timeout=2.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            pytest.fail(f"wshub demo --tls exited early with {proc.returncode}")
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    pytest.fail("wshub demo --tls did not start listening")


async def test_cli_demo_tls_serves_h2_and_http11_on_one_port() -> None:
    _check_chromium()
    exe = shutil.which("wshub", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "wshub"]
    port = _free_port()
    proc = subprocess.Popen(
        [*cmd, "demo", "--tls", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await _wait_listening(port, proc)
        base = f"127.0.0.1:{port}"
        for extra, expected in (([], 200), (["--disable-http2"], 101)):
            b = Browser()
            try:
                await b.start(extra)
                result = await b.exchange(f"https://{base}/", f"wss://{base}/echo", False)
                check_exchange(result)
                # The demo page opens its own /chat WebSocket too: same HTTP.
                assert b.statuses and set(b.statuses) == {expected}, (extra, b.statuses)
            finally:
                await b.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

"""examples/auth.py (the handshake hook's contract) against websockets, Node ws and Chromium;
the other examples of docs/guides/auth.md (FastAPI cookie session, Redis lookup).

No credentials or an unknown token: 401 with ``WWW-Authenticate``; a known
token on a path its user may not use: 403; accepted (token in the query or
as a ``token.*`` subprotocol offer): the first message is the user the hook
attached, and the answered subprotocol is the first of ``chat.v2``/``chat.v1``
that the client offered, never the token.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
import websockets
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin, Subprotocol

from tests.conftest import run_node
from tests.integration.asgi_servers import AsgiServer, start
from tests.integration.chromium_support import chromium
from tests.integration.cli_support import ROOT, example_program, free_port, start_program
from tests.integration.cluster_support import RedisServer


@pytest.fixture
async def auth_example() -> AsyncIterator[str]:
    """``python examples/auth.py --port P``; yields ``ws://127.0.0.1:P``."""
    async with example_program("auth.py") as port:
        yield f"ws://127.0.0.1:{port}"


def offer(*names: str) -> list[Subprotocol]:
    return [Subprotocol(name) for name in names]


async def refused(url: str, subprotocols: list[str] | None = None) -> Any:
    offers = None if subprotocols is None else offer(*subprotocols)
    with pytest.raises(InvalidStatus) as caught:
        async with websockets.connect(url, subprotocols=offers, open_timeout=10):
            pass
    return caught.value.response


async def first_message(client: Any) -> Any:
    return json.loads(await asyncio.wait_for(client.recv(), 10))


async def test_refusals(auth_example: str) -> None:
    for url, offers in [
        (f"{auth_example}/chat", None),  # no credentials
        (f"{auth_example}/chat", ["chat.v1"]),
        (f"{auth_example}/chat?token=mallory-token", None),  # unknown token
        (f"{auth_example}/chat", ["chat.v1", "token.mallory-token"]),
    ]:
        response = await refused(url, offers)
        assert response.status_code == 401, (url, offers)
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="chat"'
        assert "Sec-WebSocket-Accept" not in response.headers
    # bob may use /chat but not /admin (nor a path nobody may use).
    for url, offers in [
        (f"{auth_example}/admin?token=bob-token", None),
        (f"{auth_example}/admin", ["chat.v1", "token.bob-token"]),
        (f"{auth_example}/elsewhere?token=alice-token", None),
    ]:
        response = await refused(url, offers)
        assert response.status_code == 403, (url, offers)
        assert b"may not use" in response.body


async def test_accepted_with_the_hooks_data(auth_example: str) -> None:
    async with websockets.connect(f"{auth_example}/chat?token=alice-token") as client:
        assert client.subprotocol is None  # nothing offered, nothing answered
        assert client.response is not None
        assert "Sec-WebSocket-Protocol" not in client.response.headers
        assert await first_message(client) == {"user": "alice"}
        await client.send("hi")
        assert await first_message(client) == {"user": "alice", "text": "hi"}
    async with websockets.connect(f"{auth_example}/chat?token=bob-token") as client:
        assert await first_message(client) == {"user": "bob"}
    async with websockets.connect(f"{auth_example}/admin?token=alice-token") as client:
        assert await first_message(client) == {"user": "alice"}


@pytest.mark.parametrize(
    ("offers", "answer"),
    [
        (["chat.v1", "token.alice-token"], "chat.v1"),
        (["token.alice-token", "chat.v2"], "chat.v2"),
        # The client's order decides, not the server's list (chat.v2 first).
        (["chat.v1", "chat.v2", "token.alice-token"], "chat.v1"),
        (["chat.v2", "chat.v1", "token.alice-token"], "chat.v2"),
        (["stomp", "chat.v1", "token.alice-token"], "chat.v1"),
    ],
)
async def test_subprotocol_offers(auth_example: str, offers: list[str], answer: str) -> None:
    async with websockets.connect(f"{auth_example}/chat", subprotocols=offer(*offers)) as client:
        assert client.subprotocol == answer
        assert client.response is not None
        assert client.response.headers.get_all("Sec-WebSocket-Protocol") == [answer]
        assert await first_message(client) == {"user": "alice"}


async def test_node_ws(auth_example: str) -> None:
    plan = {"protocols": ["chat.v1", "token.alice-token"], "expect": 1, "close": [1000, ""]}
    result = await run_node("client.mjs", f"{auth_example}/chat", json.dumps(plan))
    assert result["error"] is None, result
    assert result["protocol"] == "chat.v1"
    assert result["upgradeHeaders"]["sec-websocket-protocol"] == "chat.v1"
    assert [json.loads(m["data"]) for m in result["messages"]] == [{"user": "alice"}]
    assert result["close"]["code"] == 1000

    plan = {"protocols": ["chat.v1"]}
    result = await run_node("client.mjs", f"{auth_example}/chat", json.dumps(plan))
    assert result["status"] == 401 and result["opened"] is False, result
    assert result["responseHeaders"]["www-authenticate"] == 'Bearer realm="chat"'


# Runs in the page: one WebSocket with the given offers; what the page saw.
BROWSER_JS = """
([url, offers]) => new Promise((resolve) => {
  const out = {opened: false, protocol: null, first: null, error: false, close: null};
  const ws = new WebSocket(url, offers);
  ws.onopen = () => { out.opened = true; out.protocol = ws.protocol; };
  ws.onmessage = (e) => { if (out.first === null) { out.first = e.data; ws.close(1000); } };
  ws.onerror = () => { out.error = true; };
  ws.onclose = (e) => { out.close = e.code; resolve(out); };
})
"""


async def test_chromium(auth_example: str) -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        # A page of the server's origin (the hub admits same-origin pages by
        # default); the example serves no page, its 404 is origin enough.
        await page.goto(auth_example.replace("ws://", "http://") + "/")

        async def attempt(path: str, offers: list[str]) -> dict[str, Any]:
            result: dict[str, Any] = await asyncio.wait_for(
                page.evaluate(BROWSER_JS, [f"{auth_example}{path}", offers]), 30
            )
            return result

        ok = await attempt("/chat", ["chat.v1", "token.alice-token"])
        assert ok["protocol"] == "chat.v1", ok
        assert json.loads(ok["first"]) == {"user": "alice"}
        assert (ok["error"], ok["close"]) == (False, 1000)
        # Refused (401, 403): the page learns nothing but an error and 1006.
        for path, offers in [
            ("/chat", ["chat.v1"]),
            ("/chat", ["chat.v1", "token.mallory-token"]),
            ("/admin", ["chat.v1", "token.bob-token"]),
        ]:
            failed = await attempt(path, offers)
            assert failed == {
                "opened": False,
                "protocol": None,
                "first": None,
                "error": True,
                "close": 1006,
            }, (path, offers)
        # A token alone is no subprotocol the server speaks: the server answers
        # none, and a browser that offered some fails such a connection.
        lone = await attempt("/chat", ["token.alice-token"])
        assert (lone["opened"], lone["error"], lone["close"]) == (False, True, 1006), lone


# ------------------------------------------------ docs/guides/auth.md and its examples
GUIDE = ROOT / "docs" / "guides" / "auth.md"


def test_guide_excerpts_match_the_examples() -> None:
    """Every Python block of the guide is a run of lines of the example named before it."""
    text = GUIDE.read_text()
    blocks = list(re.finditer(r"^```python\n(.*?)^```$", text, re.M | re.S))
    assert len(blocks) >= 6, "the guide lost its examples"
    for block in blocks:
        named = re.findall(r"`examples/(\w+\.py)`", text[: block.start()])
        assert named, f"no example file named before:\n{block.group(1)}"
        source = (ROOT / "examples" / named[-1]).read_text().splitlines()
        excerpt = block.group(1).splitlines()
        starts = [i for i, line in enumerate(source) if line == excerpt[0]]
        assert any(source[i : i + len(excerpt)] == excerpt for i in starts), (
            f"this block of {GUIDE.name} is not in examples/{named[-1]}:\n{block.group(1)}"
        )


@pytest.fixture
def fastapi_auth() -> Iterator[AsgiServer]:
    srv = start("uvicorn", "auth_fastapi:app", cwd=ROOT / "examples")
    try:
        yield srv
    finally:
        srv.stop()


async def test_fastapi_cookie_session(fastapi_auth: AsgiServer) -> None:
    live = fastapi_auth.url + "/live"
    async with httpx.AsyncClient(base_url=fastapi_auth.http_url) as http:
        assert (await http.get("/me")).status_code == 403
        wrong = await http.post("/login", json={"user": "alice", "password": "guess"})
        assert wrong.status_code == 403 and "set-cookie" not in wrong.headers
        response = await refused(live)
        assert response.status_code == 403 and b"log in first" in response.body

        login = await http.post("/login", json={"user": "alice", "password": "wonderland"})
        assert login.status_code == 200
        assert "HttpOnly" in login.headers["set-cookie"]
        session = login.cookies["session"]
        assert (await http.get("/me")).json() == {"user": "alice"}

    cookie = {"Cookie": f"session={session}"}
    async with websockets.connect(live, additional_headers=cookie) as client:
        await client.send("hello")
        assert await first_message(client) == {"user": "alice", "text": "hello"}
    # A page of another site, with the user's cookie: refused before the hook.
    with pytest.raises(InvalidStatus) as caught:
        await websockets.connect(
            live, additional_headers=cookie, origin=Origin("http://evil.example")
        )
    assert caught.value.response.status_code == 403
    # A cookie made for another user, or with its expiry moved, fails the HMAC.
    user, expires, mac = session.split(":")
    for forged in (f"bob:{expires}:{mac}", f"{user}:{int(expires) + 10**6}:{mac}", "alice"):
        with pytest.raises(InvalidStatus) as caught:
            await websockets.connect(live, additional_headers={"Cookie": f"session={forged}"})
        assert caught.value.response.status_code == 403, forged


async def test_redis_token_lookup(tmp_path: Path) -> None:
    store = RedisServer(tmp_path)
    await store.start()
    port = free_port()
    program = None
    status, err = -1, ""
    try:
        tokens = redis.Redis.from_url(store.url)
        await tokens.set("token:alice-token", "alice")
        await tokens.aclose()
        program = await start_program(
            [
                sys.executable,
                str(ROOT / "examples" / "auth_redis.py"),
                *("--port", str(port), "--redis", store.url),
            ],
            port,
        )
        url = f"ws://127.0.0.1:{port}/"
        async with websockets.connect(url + "?token=alice-token") as client:
            assert await first_message(client) == {"user": "alice"}
        for query in ("", "?token=mallory-token"):
            response = await refused(url + query)
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="live"'
        # Redis stalls (stopped): the lookup's own timeout answers 503; then gone: 503.
        assert store.proc is not None
        os.kill(store.proc.pid, signal.SIGSTOP)
        try:
            response = await refused(url + "?token=alice-token")
        finally:
            os.kill(store.proc.pid, signal.SIGCONT)
        assert (response.status_code, response.headers["Retry-After"]) == (503, "5")
        store.stop()
        response = await refused(url + "?token=alice-token")
        assert (response.status_code, response.headers["Retry-After"]) == (503, "5")
    finally:
        store.stop()
        if program is not None:
            status, err = await program.stop(signal.SIGTERM)
    assert status == 0, err
    assert "token lookup failed (TimeoutError): refusing with 503" in err, err
    assert "token lookup failed (ConnectionError): refusing with 503" in err, err
    assert "Traceback" not in err, err

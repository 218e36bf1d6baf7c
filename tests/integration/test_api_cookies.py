"""Client IDs kept across reconnects by a signed cookie (API.md "Client IDs")."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import websockets

from tests.conftest import Running, StartServer, run_node, wait_for
from wshub.policy import SessionSigner

SECRET = b"test secret for the cookie round trip"


def connect(srv: Running, cookie: str | None = None) -> Any:
    headers = [("Cookie", cookie)] if cookie else None
    return websockets.connect(
        srv.url + "/", compression=None, ping_interval=None, additional_headers=headers
    )


async def start(start_server: StartServer, **options: Any) -> tuple[Running, list[str]]:
    srv = await start_server(secret=SECRET, **options)
    opened: list[str] = []
    srv.ws.on("open", opened.append)
    return srv, opened


async def opened_count(opened: list[str], n: int) -> None:
    await wait_for(lambda: len(opened) == n, what=f"{n} open events")


def set_cookie(client: Any) -> str | None:
    value: str | None = client.response.headers.get("Set-Cookie")
    return value


async def test_set_cookie_format(start_server: StartServer) -> None:
    srv, opened = await start(start_server)
    async with connect(srv) as client:
        await wait_for(lambda: len(opened) == 1)
        header = set_cookie(client)
    assert header is not None
    attrs = [a.strip() for a in header.split(";")]
    name, _, value = attrs[0].partition("=")
    assert name == "wshub"
    client_id, expiry, mac = value.split(".")
    assert client_id == opened[0]
    assert uuid.UUID(client_id).version == 4
    assert abs(int(expiry) / 1000 - (time.time() + 43200)) < 60  # milliseconds
    assert mac and "=" not in mac  # base64url without padding
    assert {"Max-Age=43200", "Path=/", "HttpOnly", "SameSite=Lax"} <= set(attrs)
    assert "Secure" not in attrs  # plain ws://
    assert SessionSigner(SECRET).verify(value, time.time()) == client_id


async def test_reconnect_with_the_cookie_keeps_the_id(start_server: StartServer) -> None:
    srv, opened = await start(start_server)
    async with connect(srv) as first:
        await wait_for(lambda: len(opened) == 1)
        cookie = set_cookie(first)
    assert cookie is not None
    pair = cookie.split(";")[0]
    await wait_for(lambda: not srv.ws.clients)
    async with connect(srv, "other=1; " + pair + "; more=2") as second:
        await wait_for(lambda: len(opened) == 2)
        assert set_cookie(second) is not None  # sent again, with the same expiry
    assert opened[1] == opened[0]


async def test_a_connected_id_is_never_shared(start_server: StartServer) -> None:
    srv, opened = await start(start_server)
    async with connect(srv) as first:
        await wait_for(lambda: len(opened) == 1)
        pair = (set_cookie(first) or "").split(";")[0]
        async with connect(srv, pair):  # same cookie while the first is connected
            await wait_for(lambda: len(opened) == 2)
        assert opened[1] != opened[0]
        assert len(set(srv.ws.clients)) == 1


def tamper(pair: str) -> list[str]:
    name, _, value = pair.partition("=")
    cid, expiry, mac = value.split(".")
    other = str(uuid.uuid4())
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    return [
        f"{name}={cid}.{expiry}.{flipped}",  # MAC changed
        f"{name}={other}.{expiry}.{mac}",  # someone else's ID with my MAC
        f"{name}={cid}.{int(expiry) + 1000}.{mac}",  # later expiry
        f"{name}={cid}.{expiry}",  # truncated
        f"{name}=garbage",
        f"{name}=" + "x" * 5000,
    ]


async def test_tampered_cookies_get_a_new_id(start_server: StartServer) -> None:
    srv, opened = await start(start_server)
    async with connect(srv) as first:
        await wait_for(lambda: len(opened) == 1)
        pair = (set_cookie(first) or "").split(";")[0]
    original = opened[0]
    for i, forged in enumerate(tamper(pair)):
        await wait_for(lambda: not srv.ws.clients)
        async with connect(srv, forged):
            await opened_count(opened, i + 2)
        assert opened[-1] != original, forged
    assert len(set(opened)) == len(opened)


async def test_expired_or_foreign_cookies_get_a_new_id(start_server: StartServer) -> None:
    srv, opened = await start(start_server)
    known = str(uuid.uuid4())
    expired = SessionSigner(SECRET).sign(known, int(time.time()) - 1)
    foreign = SessionSigner(b"another server's secret").sign(known, int(time.time()) + 999)
    valid = SessionSigner(SECRET).sign(known, int(time.time()) + 999)
    for i, value in enumerate((expired, foreign)):
        async with connect(srv, f"wshub={value}"):
            await opened_count(opened, i + 1)
        await wait_for(lambda: not srv.ws.clients)
    async with connect(srv, f"wshub={valid}"):
        await wait_for(lambda: len(opened) == 3)
    assert opened[0] != known and opened[1] != known
    assert opened[2] == known  # the same secret signs IDs that survive restarts


async def test_session_expires_zero_means_a_new_id_every_time(start_server: StartServer) -> None:
    srv, opened = await start(start_server, session_expires=0)
    valid = SessionSigner(SECRET).sign(str(uuid.uuid4()), int(time.time()) + 999)
    for i, cookie in enumerate((None, f"wshub={valid}", None)):
        async with connect(srv, cookie) as client:
            await opened_count(opened, i + 1)
            assert set_cookie(client) is None
        await wait_for(lambda: not srv.ws.clients)
    assert len(set(opened)) == 3
    assert valid.split(".")[0] not in opened


async def test_cookie_round_trip_with_node_ws(start_server: StartServer) -> None:
    srv, opened = await start(start_server)

    @srv.ws.on("message")
    def whoami(cid: str, data: Any) -> None:
        srv.ws.send(cid, cid)

    plan: dict[str, Any] = {"send": [{"text": "who"}], "expect": 1, "close": [1000, ""]}
    first = await run_node("client.mjs", srv.url + "/", json.dumps(plan))
    cookie = first["upgradeHeaders"]["set-cookie"][0].split(";")[0]
    plan["headers"] = {"Cookie": cookie}
    await wait_for(lambda: not srv.ws.clients)
    second = await run_node("client.mjs", srv.url + "/", json.dumps(plan))
    assert first["messages"][0]["data"] == opened[0]
    assert second["messages"][0]["data"] == opened[0]
    assert opened == [opened[0], opened[0]]


async def test_tls_gives_wss_urls_and_secure_cookies(start_server: StartServer) -> None:
    import ssl

    from wshub import HttpServer, WebSocket
    from wshub.tls import self_signed_context

    server = HttpServer()
    ws = WebSocket(server, secret=SECRET)
    opened: list[str] = []
    ws.on("open", opened.append)
    await server.serve("127.0.0.1", 0, ssl=self_signed_context())
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE  # the server's certificate is self-signed
    try:
        url = f"wss://127.0.0.1:{server.port}/secure?q=1"
        async with websockets.connect(url, ssl=client_ctx, compression=None) as client:
            await wait_for(lambda: len(opened) == 1)
            assert ws.url(opened[0]).geturl() == url
            cookie = set_cookie(client) or ""
            assert "Secure" in [a.strip() for a in cookie.split(";")]
            ws.send(opened[0], "over tls")
            assert await client.recv() == "over tls"
    finally:
        await server.close()

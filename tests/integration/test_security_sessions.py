"""Session cookies on a running server: a client keeps its ID, nobody can take another's.

HMAC-SHA256 over ID and expiry, keyed with ``secret`` / ``WSHUB_SECRET``;
forged, tampered, expired and malformed cookies are ignored (a new ID and a
normal 101, never an error); a second connection with the same cookie gets a
new ID; ``session_expires <= 0`` gives a new ID every time.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.conftest import Running, StartServer, wait_for
from tests.integration.security_support import Bystander, echo, http_raw, upgrade
from wshub.policy import SessionSigner


async def connect(
    srv: Running, cookie: str | None = None
) -> tuple[ClientConnection, str, str | None]:
    """Open a client; return (connection, its ID on the server, the Set-Cookie it got)."""
    before = set(srv.ws.clients)
    headers = {"Cookie": cookie} if cookie is not None else {}
    conn = await websockets.connect(srv.url + "/", additional_headers=headers, compression=None)
    await wait_for(lambda: set(srv.ws.clients) - before != set(), what="the client to open")
    (client_id,) = set(srv.ws.clients) - before
    return conn, client_id, conn.response.headers.get("Set-Cookie")


def cookie_value(set_cookie: str | None) -> str:
    assert set_cookie is not None, "no Set-Cookie on the 101"
    pair = set_cookie.split(";", 1)[0]
    name, _, value = pair.partition("=")
    assert name == "wshub"
    return value


async def test_cookie_keeps_the_id_across_reconnects(start_server: StartServer) -> None:
    srv = await start_server(secret="s3cret", session_expires=60)
    echo(srv)
    conn, first_id, set_cookie = await connect(srv)
    assert set_cookie is not None
    attrs = [a.strip().lower() for a in set_cookie.split(";")[1:]]
    assert {"max-age=60", "path=/", "httponly", "samesite=lax"} <= set(attrs)
    value = cookie_value(set_cookie)
    client_id, expiry, _mac = value.split(".")
    assert client_id == first_id and str(uuid.UUID(client_id)) == client_id
    assert time.time() < int(expiry) / 1000 <= time.time() + 60  # milliseconds
    await conn.close()
    await wait_for(lambda: not srv.ws.clients, what="the first connection to close")
    again, again_id, _ = await connect(srv, f"wshub={value}")
    assert again_id == first_id
    # While it is connected, the same cookie does not give the same ID twice.
    thief, thief_id, thief_cookie = await connect(srv, f"other=1; wshub={value}")
    assert thief_id != first_id
    assert cookie_value(thief_cookie).startswith(thief_id + ".")
    for c in (again, thief):
        await c.send("ping")
        assert await c.recv() == "ping"
        await c.close()
    await wait_for(lambda: not srv.ws.clients, what="clients to close")
    assert not srv.ws._reserved and len(srv.ws._per_ip) == 0


async def test_a_session_lasts_from_its_first_connection(start_server: StartServer) -> None:
    # Absolute, not sliding: each reconnect gets the cookie back with the
    # expiry it was first issued with, to the millisecond; once that has
    # passed (session_expires=2.5 s) the client gets a new ID.
    srv = await start_server(secret="s3cret", session_expires=2.5)
    echo(srv)
    issued_at = time.time()
    conn, first_id, set_cookie = await connect(srv)
    value = cookie_value(set_cookie)
    expiry_ms = int(value.split(".")[1])
    # Sub-second precision: 2.5 s after the handshake (to the millisecond,
    # rounded down), not rounded to whole seconds.
    assert issued_at + 2.5 - 0.001 <= expiry_ms / 1000 <= time.time() + 2.5
    assert "max-age=3" in set_cookie.lower()  # whole seconds, rounded up
    await conn.close()
    await wait_for(lambda: not srv.ws.clients, what="the first connection to close")
    for _ in range(2):
        again, again_id, again_cookie = await connect(srv, f"wshub={value}")
        assert again_id == first_id
        assert cookie_value(again_cookie) == value  # the expiry does not move
        await again.close()
        await wait_for(lambda: not srv.ws.clients, what="the reconnection to close")
    await asyncio.sleep(max(0.0, expiry_ms / 1000 - time.time()) + 0.05)
    late, late_id, late_cookie = await connect(srv, f"wshub={value}")
    assert late_id != first_id
    assert int(cookie_value(late_cookie).split(".")[1]) > expiry_ms  # a new session
    await late.close()


async def test_forged_tampered_expired_malformed_cookies_ignored(
    start_server: StartServer,
) -> None:
    srv = await start_server(secret="s3cret")
    echo(srv)
    bystander = await Bystander.connect(srv)
    victim_id = str(uuid.uuid4())
    good = SessionSigner("s3cret").sign(victim_id, int(time.time()) + 3600)
    cid, exp, mac = good.split(".")
    forged = [
        SessionSigner("guess").sign(victim_id, int(time.time()) + 3600),  # another key
        f"{cid}.{exp}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",  # tampered MAC
        f"{cid}.{int(exp) + 10**6}.{mac}",  # tampered expiry
        SessionSigner("s3cret").sign(victim_id, int(time.time()) - 1),  # expired
        f"{cid}.{exp}",  # malformed
        f"{cid}..{mac}",
        "garbage",
        "a" * 4000,
        f"{cid.upper()}.{exp}.{mac}",
    ]
    for value in forged:
        _conn, new_id, set_cookie = await connect(srv, f"wshub={value}")
        assert new_id != victim_id
        assert cookie_value(set_cookie).startswith(new_id + ".")
        await _conn.close()
        await bystander.check()
    # Bytes no client library would send: still a normal 101, a fresh ID.
    for raw in (b"wshub=\xb2\xb2.\xb2\xb2.\xe9\xe9", b"wshub=" + good.encode()[:-2] + b"\xe9"):
        request = upgrade(f"{srv.host}:{srv.port}").replace(
            b"\r\n\r\n", b"\r\nCookie: " + raw + b"\r\n\r\n"
        )
        reply, _reader, writer = await http_raw(srv, request)
        assert reply.status == 101
        assert not reply.headers["set-cookie"].startswith(f"wshub={victim_id}")
        writer.close()
    await bystander.close()
    await wait_for(lambda: not srv.ws.clients, what="clients to close")
    assert not srv.ws._reserved and len(srv.ws._per_ip) == 0


async def test_session_expires_zero_gives_a_new_id_every_time(
    start_server: StartServer,
) -> None:
    srv = await start_server(secret="s3cret", session_expires=0)
    ids = set()
    valid = SessionSigner("s3cret").sign(str(uuid.uuid4()), int(time.time()) + 3600)
    for cookie in (None, f"wshub={valid}", None):
        conn, client_id, set_cookie = await connect(srv, cookie)
        assert set_cookie is None  # no session: no cookie
        ids.add(client_id)
        await conn.close()
    assert len(ids) == 3


async def test_secret_shared_through_the_environment(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSHUB_SECRET", "shared-by-env")
    first = await start_server()
    conn, first_id, set_cookie = await connect(first)
    await conn.close()
    # Another process/server with the same WSHUB_SECRET accepts the cookie.
    second = await start_server()
    conn, second_id, _ = await connect(second, f"wshub={cookie_value(set_cookie)}")
    assert second_id == first_id
    await conn.close()
    # One with another secret does not.
    third = await start_server(secret="different")
    conn, third_id, _ = await connect(third, f"wshub={cookie_value(set_cookie)}")
    assert third_id != first_id
    await conn.close()

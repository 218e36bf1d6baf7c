"""``ws.asgi()`` under real uvicorn and real Hypercorn, driven by the websockets client.

The application is ``tests/integration/asgi_app.py``; it answers on paths
whose replies show the hub's events, IDs, cookies, limits and methods.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.asgi_servers import AsgiServer, start

APP = "tests.integration.asgi_app:app"
ENV = {
    "WSHUB_TEST_LIMIT_BY_IP": "3",
    "WSHUB_TEST_MAX_PAYLOAD": "4096",
    # Tiny ping settings: if the hub pinged ASGI clients (it cannot), the
    # missing pongs would close them with 1011 within a few tenths of a second.
    "WSHUB_TEST_PING_DELAY": "0.05",
    "WSHUB_TEST_PONG_TIMEOUT": "0.05",
}


@pytest.fixture(scope="module", params=["uvicorn", "uvicorn-wsproto", "hypercorn"])
def server(request: pytest.FixtureRequest) -> Iterator[AsgiServer]:
    # uvicorn's default WebSocket engine is the websockets package; wsproto is its other one.
    name, _, engine = str(request.param).partition("-")
    srv = start(name, APP, *(["--ws", engine] if engine else []), env=ENV)
    yield srv
    srv.stop()


def connect(srv: AsgiServer, path: str = "/", **kwargs: Any) -> Any:
    kwargs.setdefault("compression", None)
    kwargs.setdefault("open_timeout", 10)
    return websockets.connect(srv.url + path, **kwargs)


async def recv_json(client: Any) -> Any:
    return json.loads(await asyncio.wait_for(client.recv(), 10))


async def close_note(watcher: Any, client_id: str) -> dict[str, Any]:
    """The "close" event the app reported for ``client_id`` (others' notes are skipped)."""
    while True:
        note = await recv_json(watcher)
        if note["id"] == client_id:
            return dict(note)


async def test_echo_text_and_binary(server: AsgiServer) -> None:
    async with connect(server) as client:
        await client.send("héllo ✓")
        assert await client.recv() == "héllo ✓"
        await client.send(b"\x00\xff" * 1000)
        assert await client.recv() == b"\x00\xff" * 1000
    assert client.close_code == 1000


async def test_async_callback_delivers_in_order(server: AsgiServer) -> None:
    messages = [f"m{i}" + "x" * (i % 3) for i in range(20)]
    async with connect(server, "/async") as client:
        for m in messages:
            await client.send(m)
        got = [await asyncio.wait_for(client.recv(), 10) for _ in messages]
    assert got == messages


async def test_broadcast_reaches_only_its_path(server: AsgiServer) -> None:
    async with (
        connect(server, "/chat") as a,
        connect(server, "/chat") as b,
        connect(server, "/") as other,
    ):
        await a.send("to the room")
        assert await asyncio.wait_for(a.recv(), 10) == "to the room"
        assert await asyncio.wait_for(b.recv(), 10) == "to the room"
        await other.send("echo only")
        # The echo client's next message is its own echo, not the broadcast.
        assert await asyncio.wait_for(other.recv(), 10) == "echo only"


async def test_client_id_survives_reconnect_with_cookie(server: AsgiServer) -> None:
    async with connect(server, "/id") as first:
        first_id = await asyncio.wait_for(first.recv(), 10)
        cookies = first.response.headers.get_all("Set-Cookie")
    assert len(cookies) == 1 and cookies[0].startswith(f"wshub={first_id}.")
    assert "HttpOnly" in cookies[0] and "Max-Age=43200" in cookies[0]
    assert first.response.headers.get("Sec-WebSocket-Extensions") is None
    cookie = cookies[0].split(";", 1)[0]
    async with connect(server, "/id", additional_headers={"Cookie": cookie}) as again:
        assert await asyncio.wait_for(again.recv(), 10) == first_id
    forged = f"wshub={first_id}.9999999999.AAAA"
    async with connect(server, "/id", additional_headers={"Cookie": forged}) as other:
        assert await asyncio.wait_for(other.recv(), 10) != first_id


async def test_foreign_origin_refused_with_403(server: AsgiServer) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(server, origin="http://evil.example"):
            pass
    assert info.value.response.status_code == 403
    assert b"origin not allowed" in info.value.response.body
    # A same-origin browser is let in.
    origin = f"http://127.0.0.1:{server.port}"
    async with connect(server, origin=origin) as client:
        await client.send("same origin")
        assert await client.recv() == "same origin"


async def test_per_ip_limit_refused_with_429(server: AsgiServer) -> None:
    # From 127.0.0.2, so the other tests' connections do not count.
    kwargs = {"local_addr": ("127.0.0.2", 0)}
    async with connect(server, **kwargs) as a, connect(server, **kwargs), connect(server, **kwargs):
        with pytest.raises(InvalidStatus) as info:
            async with connect(server, **kwargs):
                pass
        assert info.value.response.status_code == 429
        await a.send("still served")
        assert await a.recv() == "still served"


async def test_ping_and_socket_methods_say_false(server: AsgiServer) -> None:
    async with connect(server, "/cmd") as client:
        for cmd in ("ping", "no_delay", "keep_alive"):
            await client.send(cmd)
            assert await recv_json(client) is False, cmd
        # ping_delay and pong_timeout are 0.05 s here: a pong timer or the
        # periodic pings would have closed us with 1011 by now.
        await asyncio.sleep(0.5)
        await client.send("state")
        assert await recv_json(client) == "open"
        await client.send("url")
        assert await recv_json(client) == f"ws://127.0.0.1:{server.port}/cmd"


async def test_byte_counters_count_payload_bytes(server: AsgiServer) -> None:
    async with connect(server, "/cmd") as client:
        await client.send("state")  # 5 bytes in
        assert await recv_json(client) == "open"  # '"open"': 6 bytes out
        await client.send("counters")  # 8 bytes in
        assert await recv_json(client) == [13, 6]


async def test_server_close_with_code_and_reason(server: AsgiServer) -> None:
    async with connect(server, "/watch") as watcher, connect(server, "/cmd") as client:
        await client.send("url")
        await recv_json(client)
        await client.send("close 4001 bye now")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(client.recv(), 10)
        assert client.close_code == 4001
        assert client.close_reason == "bye now"
        note = await recv_json(watcher)  # the only other client is ours
    assert (note["code"], note["reason"], note["clean"]) == (4001, "bye now", True)


async def test_client_close_fires_close_event_once(server: AsgiServer) -> None:
    async with connect(server, "/watch") as watcher:
        async with connect(server, "/id") as client:
            client_id = await asyncio.wait_for(client.recv(), 10)
            await client.close(4000, "done")
        note = await close_note(watcher, client_id)
        if server.name == "hypercorn":
            # Hypercorn 0.18 reports every close the client starts as 1006
            # (documented in wshub.asgi); the hub passes that on.
            assert (note["code"], note["clean"]) == (1006, False)
        else:
            assert (note["code"], note["reason"], note["clean"]) == (4000, "done", True)
        # Exactly once: a later client's note comes next, not a second one for ours.
        async with connect(server, "/id") as marker:
            marker_id = await asyncio.wait_for(marker.recv(), 10)
        assert (await recv_json(watcher))["id"] == marker_id


async def test_abrupt_disconnect_is_an_unclean_close(server: AsgiServer) -> None:
    async with connect(server, "/watch") as watcher:
        client = await connect(server, "/id")
        client_id = await asyncio.wait_for(client.recv(), 10)
        client.transport.abort()
        note = await close_note(watcher, client_id)
    assert note["code"] == 1006 and note["clean"] is False


async def test_message_over_max_payload_closes_1009(server: AsgiServer) -> None:
    async with connect(server) as client:
        await client.send(b"x" * 4096)
        assert await client.recv() == b"x" * 4096
        await client.send(b"x" * 4097)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(client.recv(), 10)
    assert client.close_code == 1009


async def test_message_over_max_payload_reports_1009_at_once(server: AsgiServer) -> None:
    # A close the server decides is reported with the code it sent and
    # was_clean=False as it starts, whatever the ASGI server then does.
    async with connect(server, "/watch") as watcher, connect(server, "/id") as client:
        client_id = await asyncio.wait_for(client.recv(), 10)
        await client.send(b"x" * 4097)
        note = await close_note(watcher, client_id)
    assert (note["code"], note["clean"]) == (1009, False)


async def test_paused_client_disconnect_still_fires_close(server: AsgiServer) -> None:
    async with connect(server, "/watch") as watcher:
        async with connect(server, "/cmd") as client:
            await client.send("pause")
            assert await recv_json(client) is True
            # Not delivered while paused (no reply comes), but read ahead, so
            # the disconnect that follows is still noticed.
            await client.send("url")
            await client.send("state")
        note = await asyncio.wait_for(recv_json(watcher), 10)
    assert note["code"] == (1006 if server.name == "hypercorn" else 1000)


async def test_plain_http_gets_404_without_an_app(server: AsgiServer) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(server.http_url + "/anything")
    assert response.status_code == 404

"""The backplane option in-process: validation, the default, Redis down at startup, two hubs."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import pytest
import websockets

from tests.conftest import StartServer, wait_for
from tests.integration.cluster_support import RedisServer, free_port
from wshub import ClientNotFound, HttpServer, WebSocket
from wshub.backplane import Backplane, LocalBackplane, RedisBackplane, _pack, _unpack

#: The cluster secret of these hubs (a Redis backplane refuses to start without one).
SECRET = "cluster-api-test-secret"


def test_backplane_option_validation() -> None:
    assert isinstance(WebSocket().backplane, LocalBackplane)
    assert isinstance(WebSocket(backplane="redis://127.0.0.1:1/0").backplane, RedisBackplane)
    with pytest.raises(ValueError, match="redis://"):
        WebSocket(backplane="amqp://127.0.0.1/")
    with pytest.raises(TypeError):
        WebSocket(backplane=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RedisBackplane("redis://127.0.0.1:1/0", heartbeat=5.0, ttl=2.0)
    shared = RedisBackplane("redis://127.0.0.1:1/0")
    WebSocket(backplane=shared)
    with pytest.raises(RuntimeError):
        WebSocket(backplane=shared)  # one hub per backplane
    ws = WebSocket(cluster_limit_by_ip=True)
    assert ws.cluster_limit_by_ip is True
    with pytest.raises(TypeError):
        ws.cluster_limit_by_ip = "yes"  # type: ignore[assignment]


def test_wire_format_round_trip() -> None:
    msg = _pack(b"t", b"node1", "client-é".encode(), b"\x00payload")
    assert _unpack(msg) == (b"t", "node1", "client-é".encode(), b"\x00payload")
    with pytest.raises(ValueError):
        _unpack(msg[:9])


async def test_default_backplane_is_this_process(start_server: StartServer) -> None:
    running = await start_server()
    async with websockets.connect(running.url) as conn:
        await wait_for(lambda: len(running.ws.clients) == 1)
        (client_id,) = running.ws.clients
        assert await running.ws.cluster_clients() == [client_id]
        with pytest.raises(ClientNotFound):
            running.ws.send(str(uuid.uuid4()), "nobody")
        assert running.ws.broadcast("all") == 1
        assert await conn.recv() == "all"


async def test_serves_local_clients_while_redis_is_down_then_joins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    redis = RedisServer(tmp_path)  # not started yet: nothing listens on its port
    backplane = RedisBackplane(redis.url, heartbeat=0.2, ttl=1.0, backoff_max=0.3)
    server = HttpServer()
    ws = WebSocket(server, backplane=backplane, secret=SECRET)
    ws.on("message", lambda cid, data: ws.send(cid, data))
    caplog.set_level(logging.INFO, logger="wshub.backplane")
    await server.serve("127.0.0.1", 0)
    try:
        assert not backplane.connected
        assert "cannot reach" in caplog.text
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/") as conn:
            await conn.send("echo while Redis is down")
            assert await conn.recv() == "echo while Redis is down"
            await redis.start()
            await wait_for(lambda: backplane.connected, 10.0, "the backplane to connect")
            # The client that opened before Redis came is registered now.
            (client_id,) = ws.clients
            assert await ws.cluster_clients() == [client_id]
    finally:
        await server.close(timeout=2.0)
        redis.stop()


async def test_two_hubs_in_one_process(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    await redis.start()
    servers = [HttpServer(), HttpServer()]
    hubs = [WebSocket(s, backplane=redis.url, session_expires=0, secret=SECRET) for s in servers]
    try:
        for s in servers:
            await s.serve("127.0.0.1", 0)
        bp0 = hubs[0].backplane
        assert isinstance(bp0, Backplane)
        async with (
            websockets.connect(f"ws://127.0.0.1:{servers[0].port}/") as c0,
            websockets.connect(f"ws://127.0.0.1:{servers[1].port}/") as c1,
        ):
            await wait_for(lambda: len(hubs[0].clients) == 1 and len(hubs[1].clients) == 1)
            (id1,) = hubs[1].clients
            await wait_for(lambda: bp0.owner(id1) is not None, 10.0, "hub 0 to learn of id1")
            # A str is encoded on the client's node with the client's encoding.
            hubs[1].set_encoding(id1, "base64")
            hubs[0].send(id1, "aGk=")
            assert await c1.recv() == b"hi"
            hubs[0].send(id1, b"\x01\x02")
            assert await c1.recv() == b"\x01\x02"
            hubs[0].send(id1, "\u00e9t\u00e9", "utf8")
            assert await c1.recv() == "\u00e9t\u00e9"
            with pytest.raises(ValueError):
                hubs[0].send(id1, "x", "klingon")
            # broadcast() counts this node's deliveries; the other node's come once.
            assert hubs[0].broadcast("both") == 1
            assert await c0.recv() == "both"
            assert await c1.recv() == "both"
            assert sorted(await hubs[1].cluster_clients()) == sorted(
                hubs[0].clients + hubs[1].clients
            )
        # A send racing a close: the client's node answers, the "error" event reports it.
        errors: list[tuple[str, Exception]] = []
        hubs[0].on("error", lambda cid, exc: errors.append((cid, exc)))
        await wait_for(lambda: not hubs[1].clients)
        # The cache still lists it on the other node (its leave not yet heard).
        bp0._registry.add(hubs[1].backplane.node_id, id1, "127.0.0.1", "message")  # type: ignore[attr-defined]
        hubs[0].send(id1, "too late")
        await wait_for(lambda: bool(errors), 10.0, "the not-found report")
        assert errors[0][0] == id1 and isinstance(errors[0][1], ClientNotFound)
    finally:
        for s in servers:
            await s.close(timeout=2.0)
        redis.stop()


async def test_same_session_id_admitted_on_two_nodes_at_once_keeps_one(tmp_path: Path) -> None:
    """Both nodes see the other's join; the node with the greater node ID closes its copy."""
    redis = RedisServer(tmp_path)
    await redis.start()
    server = HttpServer()
    ws = WebSocket(server, backplane=redis.url, secret=SECRET)
    backplane = ws.backplane
    assert isinstance(backplane, RedisBackplane)
    await server.serve("127.0.0.1", 0)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/") as conn:
            await wait_for(lambda: len(ws.clients) == 1)
            (client_id,) = ws.clients
            # A join from a node whose ID sorts lower, for the same client ID:
            # what the other node publishes when it admitted the same cookie.
            backplane._apply_ctl(
                {"t": "join", "n": "0" * 16, "c": client_id, "ip": "127.0.0.1", "e": "message"},
                live=True,
            )
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(conn.recv(), 10.0)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        # A join from a node that sorts higher leaves our copy alone.
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/"):
            # The first client may still be finishing its close: wait for the new one alone.
            await wait_for(lambda: len(ws.clients) == 1 and client_id not in ws.clients)
            (other,) = ws.clients
            backplane._apply_ctl(
                {"t": "join", "n": "g" * 16, "c": other, "ip": "127.0.0.1", "e": "message"},
                live=True,
            )
            # Closing would have sent our close frame at once (state readOnly).
            assert ws.ready_state(other) == "open"
    finally:
        await server.close(timeout=2.0)
        redis.stop()


async def test_hub_served_by_uvicorn_joins_the_cluster(tmp_path: Path) -> None:
    """Under ASGI no server hook starts the backplane: the first client does."""
    import uvicorn

    redis = RedisServer(tmp_path)
    await redis.start()
    asgi_hub = WebSocket(backplane=redis.url, allow_origin="*", secret=SECRET)
    server = HttpServer()
    hub = WebSocket(server, backplane=redis.url, secret=SECRET)
    config = uvicorn.Config(
        asgi_hub.asgi(), host="127.0.0.1", port=free_port(), log_level="warning", lifespan="on"
    )
    uv = uvicorn.Server(config)
    uv_task = asyncio.ensure_future(uv.serve())
    try:
        await server.serve("127.0.0.1", 0)
        await wait_for(lambda: uv.started, 10.0, "uvicorn to start")
        async with (
            websockets.connect(f"ws://127.0.0.1:{config.port}/") as under_asgi,
            websockets.connect(f"ws://127.0.0.1:{server.port}/") as native,
        ):
            await wait_for(lambda: len(asgi_hub.clients) == 1 and len(hub.clients) == 1)
            (asgi_id,) = asgi_hub.clients
            (native_id,) = hub.clients
            await wait_for(lambda: hub.backplane.owner(asgi_id) is not None, 10.0, "registry")
            await wait_for(lambda: asgi_hub.backplane.owner(native_id) is not None, 10.0)
            hub.send(asgi_id, "to the uvicorn node")
            assert await under_asgi.recv() == "to the uvicorn node"
            asgi_hub.send(native_id, "from the uvicorn node")
            assert await native.recv() == "from the uvicorn node"
    finally:
        uv.should_exit = True
        await asyncio.wait_for(uv_task, 10.0)
        await asgi_hub.stop()
        await server.close(timeout=2.0)
        redis.stop()

"""``HttpServer(health=True)``: ``/livez`` and ``/readyz``, asked by httpx (HTTP/1.1 and HTTP/2).

Readiness follows the backplane: a real redis-server is stopped and started
again under a running server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.conftest import StartServer
from tests.integration.cluster_support import RedisServer
from wshub import HttpServer, Request, Response, WebSocket
from wshub.backplane import RedisBackplane

pytestmark = pytest.mark.timeout(120)


async def until_status(client: httpx.AsyncClient, url: str, status: int) -> httpx.Response:
    """Ask ``url`` until it answers ``status`` (at most 30 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30.0
    while True:
        answer = await client.get(url)
        if answer.status_code == status:
            return answer
        if loop.time() > deadline:
            raise AssertionError(f"{url} still answers {answer.status_code}: {answer.text!r}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("http2", [False, True])
async def test_livez_and_readyz_answer_before_the_handler(
    http2: bool, start_server: StartServer
) -> None:
    seen: list[str] = []

    def handler(request: Request) -> Response:
        seen.append(request.path)
        return Response(f"app {request.path}\n")

    running = await start_server(handler=handler, server_options={"health": True})
    async with httpx.AsyncClient(http1=not http2, http2=http2) as client:
        live = await client.get(f"{running.http_url}/livez")
        ready = await client.get(f"{running.http_url}/readyz?verbose")
        other = await client.get(f"{running.http_url}/livez/more")
    assert live.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert (live.status_code, live.text.split(" (")[0]) == (200, "alive")
    assert (ready.status_code, ready.text.split(" (")[0]) == (200, "ready")
    assert live.headers["content-type"] == "text/plain; charset=utf-8"
    assert live.headers["cache-control"] == "no-store"
    assert (other.status_code, other.text) == (200, "app /livez/more\n")
    assert seen == ["/livez/more"]  # the health paths never reached the handler


async def test_without_health_the_paths_are_the_handlers(start_server: StartServer) -> None:
    running = await start_server()
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{running.http_url}/readyz")
    assert answer.status_code == 404


async def test_an_endpoint_path_is_taken_once() -> None:
    server = HttpServer(health=True)
    with pytest.raises(ValueError, match="already an endpoint"):
        server.add_endpoint("/livez", lambda request: "mine")
    with pytest.raises(ValueError, match="starts with"):
        server.add_endpoint("metrics", lambda request: "")


async def test_readyz_follows_the_backplane(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    await redis.start()
    server = HttpServer(health=True)
    backplane = RedisBackplane(redis.url, heartbeat=0.5, ttl=2.0, backoff_max=0.5)
    WebSocket(server, backplane=backplane, secret="health test secret")
    try:
        await server.serve("127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{url}/readyz")).status_code == 200
            redis.stop()  # SIGKILL
            down = await until_status(client, f"{url}/readyz", 503)
            assert down.text.startswith("not ready: backplane not connected")
            live = await client.get(f"{url}/livez")
            assert live.status_code == 200  # alive all along: only readiness changes
            await redis.start()  # the same port again
            await until_status(client, f"{url}/readyz", 200)
    finally:
        redis.stop()
        await server.close(timeout=2.0)


@pytest.fixture
async def draining_server() -> AsyncIterator[HttpServer]:
    server = HttpServer(health=True, drain_window=2.0, drain_timeout=10.0)
    WebSocket(server)
    await server.serve("127.0.0.1", 0)
    yield server
    await server.close(timeout=2.0)


async def test_readyz_is_503_while_draining(draining_server: HttpServer) -> None:
    server = draining_server
    url = f"http://127.0.0.1:{server.port}"
    # Two clients keep the drain going for its window (the second closes at 1 s).
    async with (
        httpx.AsyncClient() as client,
        websockets.connect(f"ws://127.0.0.1:{server.port}/") as first,
        websockets.connect(f"ws://127.0.0.1:{server.port}/") as second,
    ):
        assert (await client.get(f"{url}/readyz")).status_code == 200
        drain = asyncio.ensure_future(server.drain())
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(first.recv(), 10)
        assert first.close_code == 1012
        # The listener is closed; the kept-alive connection still asks.
        answer = await client.get(f"{url}/readyz")
        assert answer.status_code == 503
        assert answer.text.startswith("not ready: draining")
        assert (await client.get(f"{url}/livez")).status_code == 200
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(second.recv(), 10)
        await asyncio.wait_for(drain, 15)
    assert server.readiness() == "draining"

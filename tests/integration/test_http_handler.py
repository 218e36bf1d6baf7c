"""HttpServer's plain-HTTP handler, over HTTP/1.1 and HTTP/2 (h2c), with httpx as the client.

Sync and async handlers, every kind of return value, and a handler that
raises or returns garbage: the client gets a clean 500, the server goes on.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import StartServer
from wshub import Request, Response


async def handler(request: Request) -> object:
    path = request.path
    if path == "/sync-text":
        return "plain text"
    if path == "/bytes":
        return b"\x00\x01\x02"
    if path == "/none":
        return None
    if path == "/response":
        return Response(b'{"ok": true}', 201, [("X-Test", "yes")], content_type="application/json")
    if path == "/echo":
        return Response(f"{request.method} {request.query} {request.body.decode()}")
    if path == "/raise":
        raise RuntimeError("handler bug")
    if path == "/garbage":
        return 42
    if path == "/async":
        await asyncio.sleep(0.01)
        return Response("async answer")
    if path == "/async-raise":
        await asyncio.sleep(0)
        raise RuntimeError("async handler bug")
    return Response.text(404, "nope\n")


def sync_or_async(request: Request) -> object:
    # Sync paths answer directly; the rest returns the coroutine.
    if request.path in ("/sync-text", "/raise", "/garbage", "/none"):
        return _sync(request)
    return handler(request)


def _sync(request: Request) -> object:
    if request.path == "/sync-text":
        return "plain text"
    if request.path == "/none":
        return None
    if request.path == "/raise":
        raise RuntimeError("handler bug")
    return 42


@pytest.mark.parametrize("version", ["http1", "h2c"])
async def test_handler_answers(start_server: StartServer, version: str) -> None:
    srv = await start_server(handler=sync_or_async)
    http2 = version == "h2c"
    async with httpx.AsyncClient(
        base_url=srv.http_url, http1=not http2, http2=http2, timeout=10
    ) as client:
        r = await client.get("/sync-text")
        assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        assert (r.status_code, r.text) == (200, "plain text")
        assert r.headers["content-type"].startswith("text/plain")
        r = await client.get("/bytes")
        assert (r.status_code, r.content) == (200, b"\x00\x01\x02")
        r = await client.get("/none")
        assert (r.status_code, r.content) == (204, b"")
        r = await client.get("/response")
        assert (r.status_code, r.json(), r.headers["x-test"]) == (201, {"ok": True}, "yes")
        r = await client.post("/echo?a=1", content=b"body!")
        assert r.text == "POST a=1 body!"
        r = await client.get("/async")
        assert (r.status_code, r.text) == (200, "async answer")
        r = await client.head("/sync-text")
        assert (r.status_code, r.content) == (200, b"")
        # Bugs in the handler: a clean 500 each time, and the server goes on.
        for path in ("/raise", "/garbage", "/async-raise"):
            r = await client.get(path)
            assert r.status_code == 500, path
            assert "Traceback" not in r.text and "bug" not in r.text
        r = await client.get("/missing")
        assert r.status_code == 404
        # The same connection served every request (keep-alive / one h2 connection).
        r = await client.get("/async")
        assert r.status_code == 200


async def test_no_handler_gives_404(start_server: StartServer) -> None:
    srv = await start_server()
    async with httpx.AsyncClient(base_url=srv.http_url, timeout=10) as client:
        r = await client.get("/")
        assert r.status_code == 404


async def test_keep_alive_deadline_restarts_after_each_response(
    start_server: StartServer,
) -> None:
    # handshake_timeout bounds the wait for each request head, not the
    # connection's life: requests every 0.2 s keep a 0.5 s deadline from
    # passing for 1.2 s; then, idle, the connection is closed.
    srv = await start_server(handler=handler, server_options={"handshake_timeout": 0.5})
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(6):
            writer.write(b"GET /sync-text HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            assert await reader.readexactly(length) == b"plain text"
            await asyncio.sleep(0.2)
        assert loop.time() - start > 1.0
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing sent
    finally:
        writer.close()


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses_carry_no_body_on_either_version(
    start_server: StartServer, status: int
) -> None:
    # RFC 9110 §15.3.5 / §15.4.5: whatever the handler gives, a 204 or 304
    # has no body; on HTTP/1.1 one would be read as the start of the next
    # response.  Both versions are framed by the same rule.
    srv = await start_server(handler=lambda request: Response(b"must not be sent", status))
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode()
    writer.write(request * 2)  # pipelined: the second answer follows the first head
    data = b""
    while data.count(b"\r\n\r\n") < 2:
        data += await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    heads = data.split(b"\r\n\r\n")
    assert heads[0].startswith(f"HTTP/1.1 {status} ".encode())
    assert heads[1].startswith(f"HTTP/1.1 {status} ".encode())
    assert b"must not be sent" not in data and b"content-length" not in data.lower()
    async with httpx.AsyncClient(base_url=srv.http_url, http1=False, http2=True) as client:
        r = await client.get("/")
        assert (r.http_version, r.status_code, r.content) == ("HTTP/2", status, b"")
        assert "content-length" not in r.headers


@pytest.mark.parametrize("version", ["http1", "h2c"])
async def test_head_gets_the_length_and_no_body(start_server: StartServer, version: str) -> None:
    srv = await start_server(handler=lambda request: Response(b"twelve bytes"))
    http2 = version == "h2c"
    async with httpx.AsyncClient(base_url=srv.http_url, http1=not http2, http2=http2) as client:
        r = await client.head("/")
        assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "12")


@pytest.mark.parametrize("version", ["http1", "h2c"])
async def test_an_informational_status_from_a_handler_is_a_500(
    start_server: StartServer, version: str
) -> None:
    srv = await start_server(handler=lambda request: Response(b"", 101))
    http2 = version == "h2c"
    async with httpx.AsyncClient(base_url=srv.http_url, http1=not http2, http2=http2) as client:
        r = await client.get("/")
        assert r.status_code == 500

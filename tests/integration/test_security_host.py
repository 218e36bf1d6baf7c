"""The Host header cannot change the path (issue #15).

The hub built a client's URL by joining Host and the request target and
splitting the result, so a target of ``/public`` with ``Host: x/admin?``
reached the ``/admin`` handler.  Now the path and query come from the
target alone, and a Host (``:authority``) that is more than a host and port
is refused with 400, over HTTP/1.1 and HTTP/2, for upgrades and plain
requests alike.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Running, StartServer, wait_for
from tests.integration.h2_client_support import OP_TEXT, H2Client
from tests.integration.security_support import refused, upgrade
from tests.rawws import read_http_head
from wshub import Request

BAD_HOSTS = ["x/admin?", "x/admin#", "evil@x", "x admin", "x\tadmin", "a.example\\admin"]


def handlers(srv: Running) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {"/admin": [], "/public": []}
    for path in got:
        srv.ws.on(path, lambda cid, data, path=path: got[path].append(data))
    return got


@pytest.mark.parametrize("host", BAD_HOSTS)
async def test_a_host_with_a_path_is_refused(start_server: StartServer, host: str) -> None:
    srv = await start_server()
    handlers(srv)
    reply = await refused(srv, upgrade(host, "/public"))
    assert reply.status == 400
    assert srv.ws.clients == []


async def test_the_path_comes_from_the_target(start_server: StartServer) -> None:
    srv = await start_server()
    got = handlers(srv)
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(upgrade(f"127.0.0.1:{srv.port}", "/public?room=1"))
    assert (await read_http_head(reader)).status == 101
    await wait_for(lambda: len(srv.ws.clients) == 1, what="client registered")
    [cid] = srv.ws.clients
    url = srv.ws.url(cid)
    assert (url.netloc, url.path, url.query) == (f"127.0.0.1:{srv.port}", "/public", "room=1")
    writer.write(b"\x81\x82\x00\x00\x00\x00hi")  # "hi", masked with zeros
    await wait_for(lambda: got["/public"] == ["hi"], what="message on /public")
    assert got["/admin"] == []
    writer.close()


@pytest.mark.parametrize("host", ["x/admin?", "evil@x"])
async def test_plain_request_with_a_bad_host_is_refused(
    start_server: StartServer, host: str
) -> None:
    seen: list[str] = []

    def page(request: Request) -> str:
        seen.append(request.path)
        return "page"

    srv = await start_server(handler=page)
    reply = await refused(srv, f"GET /public HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert reply.status == 400
    assert seen == []


@pytest.mark.parametrize("host", ["x/admin?", "evil@x"])
async def test_http2_authority_with_a_path_is_refused(start_server: StartServer, host: str) -> None:
    seen: list[str] = []

    def page(request: Request) -> str:
        seen.append(request.path)
        return "page"

    srv = await start_server(handler=page)
    got = handlers(srv)
    client = await H2Client.connect("127.0.0.1", srv.port, tls=False)
    try:
        sid = await client.open_ws("/public", authority=host, scheme="http")
        assert (await client.response(sid)).status == 400
        sid = client.request("GET", "/public", authority=host, scheme="http")
        assert (await client.response(sid)).status == 400
        # The connection goes on: a well-formed stream is served.
        good = f"127.0.0.1:{srv.port}"
        sid = client.request("GET", "/public", authority=good, scheme="http")
        assert await client.body(sid) == b"page"
        sid = await client.open_ws("/public", authority=good, scheme="http")
        assert (await client.response(sid)).status == 200
        client.ws_send(sid, OP_TEXT, b"hi")
        await wait_for(lambda: got["/public"] == ["hi"], what="message on /public")
    finally:
        await client.close()
    assert seen == ["/public"]
    assert got["/admin"] == []

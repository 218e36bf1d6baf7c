"""The ``on_handshake`` hook over HTTP/1.1, driven by the ``websockets`` client.

What the hook sees (method, path, query, headers, cookies, client address,
HTTP version, TLS), what it may do (refuse with any status, headers and
body; choose the subprotocol; add headers and cookies; attach data), its
failures (an exception is a 500 for that client only), its async form and
the bound on it (the handshake timeout frees the per-IP slot).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import StartServer, wait_for
from tests.integration.h2_client_support import OP_TEXT, parse_frames, ws_frame
from tests.integration.hook_support import StuckHook
from wshub import Handshake, HttpServer, Response, WebSocket
from wshub.errors import ClientNotFound
from wshub.tls import write_self_signed


def connect(url: str, **kwargs: Any) -> Any:
    kwargs.setdefault("compression", None)
    kwargs.setdefault("open_timeout", 10)
    return websockets.connect(url, **kwargs)


def upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def refused(url: str, **kwargs: Any) -> Any:
    """The HTTP response of a refused handshake, as the websockets client got it."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **kwargs):
            pass
    return info.value.response


async def test_the_hook_sees_the_request(start_server: StartServer) -> None:
    seen: list[Handshake] = []

    def hook(hs: Handshake) -> None:
        seen.append(hs)

    srv = await start_server(on_handshake=hook)
    async with connect(
        srv.url + "/room/7?token=abc&x=1&x=2",
        additional_headers={"Cookie": "session=s3cr3t; theme=dark", "X-Trace": "t-1"},
    ):
        pass
    [hs] = seen
    assert (hs.method, hs.http_version, hs.scheme) == ("GET", "1.1", "ws")
    assert hs.target == "/room/7?token=abc&x=1&x=2"
    assert (hs.path, hs.query) == ("/room/7", "token=abc&x=1&x=2")
    assert hs.query_params == {"token": ["abc"], "x": ["1", "2"]}
    assert hs.url == f"ws://127.0.0.1:{srv.port}/room/7?token=abc&x=1&x=2"
    assert hs.headers["x-trace"] == "t-1"
    assert hs.headers["host"] == f"127.0.0.1:{srv.port}"
    assert hs.cookies == {"session": "s3cr3t", "theme": "dark"}
    assert hs.client == "127.0.0.1"
    assert hs.peer[0] == "127.0.0.1" and hs.peer[1] > 0
    assert hs.tls is None
    assert hs.subprotocols == () and hs.subprotocol is None


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        (401, [("WWW-Authenticate", 'Bearer realm="chat"')], "log in first\n"),
        (403, [], "not on this path\n"),
        (503, [("Retry-After", "30")], "maintenance\n"),
        (404, [("Cache-Control", "no-store")], ""),
    ],
    ids=["401", "403", "503", "404-empty"],
)
async def test_a_refusal_reaches_the_client_as_sent(
    start_server: StartServer,
    status: int,
    headers: list[tuple[str, str]],
    body: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    srv = await start_server(on_handshake=lambda hs: Response.text(status, body, headers))
    caplog.set_level(logging.INFO, logger="wshub")
    response = await refused(srv.url + "/")
    assert response.status_code == status
    for name, value in headers:
        assert response.headers[name] == value
    assert bytes(response.body) == body.encode()
    assert response.headers["Content-Length"] == str(len(body.encode()))
    lines = [r for r in caplog.records if "refused WebSocket upgrade" in r.getMessage()]
    assert len(lines) == 1 and str(status) in lines[0].getMessage()
    assert srv.ws.clients == [] and srv.ws._per_ip.count("127.0.0.1") == 0


async def test_an_exception_in_the_hook_is_a_500_for_that_client_only(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(hs: Handshake) -> None:
        if hs.path == "/boom":
            raise RuntimeError("the hook's own bug")

    srv = await start_server(on_handshake=hook)
    srv.ws.on("message", lambda cid, data: srv.ws.send(cid, data))
    caplog.set_level(logging.INFO, logger="wshub")
    async with connect(srv.url + "/") as other:
        response = await refused(srv.url + "/boom")
        assert response.status_code == 500
        assert b"the hook's own bug" not in bytes(response.body)
        assert b"Traceback" not in bytes(response.body)
        await other.send("still here")
        assert await asyncio.wait_for(other.recv(), 10) == "still here"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None and "the hook's own bug" in str(errors[0].exc_info[1])
    await wait_for(lambda: srv.ws._per_ip.count("127.0.0.1") == 0, what="per-IP count 0")


@pytest.mark.parametrize(
    "result",
    [42, Response.text(200, "ok"), Response.text(101, ""), "nope"],
    ids=["int", "200", "101", "str"],
)
async def test_a_hook_answer_that_is_not_a_refusal_is_a_500(
    start_server: StartServer, result: object, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server(on_handshake=lambda hs: result)
    caplog.set_level(logging.INFO, logger="wshub")
    assert (await refused(srv.url + "/")).status_code == 500
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


@pytest.mark.parametrize(
    "bad",
    [
        lambda hs: hs.response_headers.append(("X-Bad", "a\r\nInjected: 1")),
        lambda hs: hs.response_headers.append(("Bad Name", "v")),
        lambda hs: hs.response_headers.append(("Sec-WebSocket-Protocol", "x")),
        lambda hs: setattr(hs, "subprotocol", "never-offered"),
        lambda hs: hs.set_cookie("a b", "v"),
        lambda hs: hs.set_cookie("a", "v;Path=/x"),
        lambda hs: Response.text(401, "x", [("X-Bad", "\n")]),
    ],
    ids=["crlf", "name", "reserved", "subprotocol", "cookie-name", "cookie-value", "refusal"],
)
async def test_what_would_corrupt_the_answer_is_a_500(
    start_server: StartServer, bad: Any, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server(on_handshake=bad, subprotocols=["chat"])
    caplog.set_level(logging.INFO, logger="wshub")
    response = await refused(srv.url + "/", subprotocols=["chat"])
    assert response.status_code == 500
    assert "Injected" not in response.headers
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


async def test_the_hook_chooses_adds_headers_cookies_and_data(start_server: StartServer) -> None:
    def hook(hs: Handshake) -> None:
        hs.data = {"user": hs.query_params["user"][0]}
        hs.subprotocol = "chat.v1"  # not the default choice (chat.v2)
        hs.response_headers.append(("X-Server", "wshub"))
        hs.set_cookie("pref", "dark", max_age=3600)

    srv = await start_server(on_handshake=hook, subprotocols=["chat.v2", "chat.v1"])
    ws = srv.ws
    opened: list[tuple[Any, Any, Any]] = []

    @ws.on("open")
    def on_open(cid: str) -> None:
        opened.append((ws.data(cid), ws.subprotocol(cid), ws.request(cid)))

    async with connect(srv.url + "/?user=alice", subprotocols=["chat.v2", "chat.v1"]) as c:
        assert c.subprotocol == "chat.v1"
        headers = c.response.headers
        assert headers["X-Server"] == "wshub"
        cookies = headers.get_all("Set-Cookie")
        assert "pref=dark; Max-Age=3600; Path=/; HttpOnly; SameSite=Lax" in cookies
        assert any(v.startswith("wshub=") for v in cookies)  # the session cookie as before
        await wait_for(lambda: bool(opened), what="open")
        [(data, subprotocol, request)] = opened
        assert data == {"user": "alice"} and subprotocol == "chat.v1"
        assert isinstance(request, Handshake) and request.query_params == {"user": ["alice"]}
        [cid] = ws.clients
        ws.set_data(cid, "replaced")
        assert ws.data(cid) == "replaced"
        assert ws.request(cid) is request and request.data == "replaced"
    await wait_for(lambda: not ws.clients, what="close")
    for method in (ws.data, ws.request, ws.subprotocol):
        with pytest.raises(ClientNotFound):
            method(cid)
    with pytest.raises(ClientNotFound):
        ws.set_data(cid, 1)


async def test_without_a_hook_data_and_subprotocol_still_work(start_server: StartServer) -> None:
    srv = await start_server(subprotocols=["b"])
    ws = srv.ws
    async with connect(srv.url + "/", subprotocols=["a", "b"]) as c:
        assert c.subprotocol == "b"
        await wait_for(lambda: bool(ws.clients), what="open")
        [cid] = ws.clients
        assert ws.subprotocol(cid) == "b" and ws.data(cid) is None
        assert ws.request(cid) is None  # nothing of the request is kept without a hook
        ws.set_data(cid, [1, 2])
        assert ws.data(cid) == [1, 2] and ws.subprotocol(cid) == "b"


async def test_async_hook(start_server: StartServer) -> None:
    async def hook(hs: Handshake) -> Response | None:
        await asyncio.sleep(0.05)  # a database look-up
        if hs.query_params.get("token") != ["good"]:
            return Response.text(401, "bad token\n", [("WWW-Authenticate", "Bearer")])
        hs.data = "user-1"
        return None

    srv = await start_server(on_handshake=hook)
    ws = srv.ws
    ws.on("open", lambda cid: ws.send(cid, str(ws.data(cid))))
    ws.on("message", lambda cid, data: ws.send(cid, data))
    response = await refused(srv.url + "/?token=bad")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    async with connect(srv.url + "/?token=good") as c:
        assert await asyncio.wait_for(c.recv(), 10) == "user-1"
        await c.send("echo")
        assert await asyncio.wait_for(c.recv(), 10) == "echo"
    await wait_for(lambda: ws._per_ip.count("127.0.0.1") == 0, what="per-IP count 0")


@pytest.mark.parametrize("size", [5, 300 * 1024], ids=["small", "past-the-read-ahead-bound"])
async def test_frames_sent_right_behind_the_request_wait_for_the_async_hook(
    start_server: StartServer, size: int
) -> None:
    """A client that does not wait for the 101: its first frames arrive with
    the request head, while the hook runs; the link gets them afterwards
    (past 64 KiB the server stops reading until the hook has answered)."""
    release = asyncio.Event()

    async def hook(hs: Handshake) -> None:
        await release.wait()

    srv = await start_server(on_handshake=hook)
    ws = srv.ws
    ws.on("message", lambda cid, data: ws.send(cid, data))
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    early = b"e" * size
    writer.write(upgrade_request(srv.port) + ws_frame(OP_TEXT, early))
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(ws_frame(OP_TEXT, b"later"))
    await writer.drain()
    release.set()
    data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert data.startswith(b"HTTP/1.1 101 ")
    buf = bytearray()
    frames: list[Any] = []
    while len(frames) < 2:
        buf += await asyncio.wait_for(reader.read(65536), 10)
        frames.extend(parse_frames(buf))
    assert [f.payload for f in frames] == [early, b"later"]
    writer.close()


async def test_an_async_hook_that_never_answers_is_cut_at_the_handshake_timeout(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    stuck_hook = StuckHook()

    async def hook(hs: Handshake) -> None:
        if hs.path == "/stuck":
            await stuck_hook(hs)

    srv = await start_server(
        on_handshake=hook, limit_by_ip=2, server_options={"handshake_timeout": 0.5}
    )
    ws = srv.ws
    ws.on("message", lambda cid, data: ws.send(cid, data))
    caplog.set_level(logging.INFO, logger="wshub")
    stuck = [asyncio.ensure_future(refused(srv.url + "/stuck")) for _ in range(2)]
    # Both slow handshakes hold a per-IP slot: a third connection is over the limit.
    await wait_for(lambda: ws._per_ip.count("127.0.0.1") == 2, what="two slots held")
    assert (await refused(srv.url + "/")).status_code == 429
    for response in await asyncio.gather(*stuck):
        assert response.status_code == 503
    assert stuck_hook.cancelled.is_set()
    assert ws._per_ip.count("127.0.0.1") == 0
    timeouts = [r for r in caplog.records if "did not answer within" in r.getMessage()]
    assert len(timeouts) == 2
    async with connect(srv.url + "/") as c:  # the server serves others
        await c.send("alive")
        assert await asyncio.wait_for(c.recv(), 10) == "alive"


async def test_a_client_that_leaves_during_the_async_hook_frees_its_slot(
    start_server: StartServer,
) -> None:
    hook = StuckHook()
    srv = await start_server(on_handshake=hook)
    _reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(upgrade_request(srv.port))
    await asyncio.wait_for(hook.started.wait(), 10)
    assert srv.ws._per_ip.count("127.0.0.1") == 1
    writer.close()  # the client gives up
    await asyncio.wait_for(hook.cancelled.wait(), 10)
    await wait_for(lambda: srv.ws._per_ip.count("127.0.0.1") == 0, what="slot freed")
    assert srv.ws.clients == [] and not srv.ws._reserved


async def test_the_hook_runs_after_the_origin_and_per_ip_guards(start_server: StartServer) -> None:
    calls: list[str] = []
    srv = await start_server(
        on_handshake=lambda hs: calls.append(hs.path),
        allow_origin="https://app.example",
        limit_by_ip=1,
    )
    response = await refused(srv.url + "/a", origin="https://evil.example")
    assert response.status_code == 403
    async with connect(srv.url + "/b", origin="https://app.example"):
        response = await refused(srv.url + "/c", origin="https://app.example")
        assert response.status_code == 429
    assert calls == ["/b"]


async def test_the_hook_can_be_set_and_removed_later(start_server: StartServer) -> None:
    srv = await start_server()
    async with connect(srv.url + "/"):
        pass
    srv.ws.on_handshake = lambda hs: Response.text(403, "closed\n")
    assert (await refused(srv.url + "/")).status_code == 403
    srv.ws.on_handshake = None
    async with connect(srv.url + "/"):
        pass
    with pytest.raises(TypeError):
        srv.ws.on_handshake = "not callable"  # type: ignore[assignment]


async def test_client_is_the_address_after_trusted_proxies(start_server: StartServer) -> None:
    seen: list[Handshake] = []
    srv = await start_server(on_handshake=seen.append, trusted_proxies=["127.0.0.1"])
    async with connect(srv.url + "/", additional_headers={"X-Forwarded-For": "203.0.113.7"}):
        assert srv.ws._per_ip.count("203.0.113.7") == 1  # the same address per-IP counts
    assert seen[0].client == "203.0.113.7" and seen[0].peer[0] == "127.0.0.1"


async def test_tls_details_over_wss(tmp_path: Path) -> None:
    cert, key = write_self_signed(str(tmp_path))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    seen: list[Handshake] = []
    server = HttpServer()
    ws = WebSocket(server, on_handshake=seen.append)
    await server.serve("127.0.0.1", 0, ssl=context)
    try:
        client_context = ssl.create_default_context()
        client_context.check_hostname = False
        client_context.verify_mode = ssl.CERT_NONE
        client_context.set_alpn_protocols(["http/1.1"])
        async with connect(
            f"wss://127.0.0.1:{server.port}/secure",
            ssl=client_context,
            server_hostname="chat.example",
        ):
            await wait_for(lambda: bool(ws.clients), what="open")
            [cid] = ws.clients
            request = ws.request(cid)
            assert request is not None and request is seen[0]
    finally:
        await server.close()
    hs = seen[0]
    assert hs.scheme == "wss" and hs.url.startswith("wss://")
    tls = hs.tls
    assert tls is not None
    assert tls.version in ("TLSv1.2", "TLSv1.3")
    assert isinstance(tls.cipher, str) and tls.cipher
    assert tls.server_name == "chat.example"  # the SNI the client sent
    assert tls.alpn_protocol == "http/1.1"
    assert tls.peer_certificate is None  # no client certificate asked for

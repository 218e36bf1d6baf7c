"""The handshake hook under attack, and what it may do wrong.

* A token in the query (``?token=...``, the way browsers pass one) never
  reaches the server log, whatever becomes of the handshake: the hook
  fails (500), refuses (401), does not answer in time (503), or a guard
  refuses before it (origin 403, per-IP 429), over HTTP/1.1 and HTTP/2;
  nor does the DEBUG line of an admitted client, nor the ``repr`` of a
  ``Handshake``.
* A hook that never answers, under a flood of handshakes from one
  address: ``limit_by_ip`` bounds how many wait (the rest get 429 and the
  hook never sees them), and a client from another address is served
  meanwhile; over HTTP/2 the waiting streams of one connection are
  bounded the same way, and the connection stays alive.
* A client that leaves while its async hook runs (TCP closed, RST_STREAM,
  connection lost): no ``open``, no ``close``, no error logged, its slot
  free.
* ``Sec-WebSocket-Protocol`` too large, too many, or with characters a
  token cannot have: 431 or 400 from either HTTP/1.1 reader, never an echo.
* Cookies, headers and refusals the hook sets cannot inject a field: 500.
* A hook that swallows its cancellation and admits anyway holds no slot.

Real peers: raw sockets, the ``websockets`` client, the ``h2`` client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import StartServer, wait_for
from tests.integration.h2_client_support import OP_TEXT, H2Client
from wshub import Handshake, HttpServer, Response, WebSocket
from wshub.transport import http1

TOKEN = "s3cr3t-t0ken-4711"


def connect(url: str, **kwargs: Any) -> Any:
    kwargs.setdefault("compression", None)
    kwargs.setdefault("open_timeout", 10)
    return websockets.connect(url, **kwargs)


async def refused_status(url: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **kwargs):
            pass
    return int(info.value.response.status_code)


def upgrade_head(port: int, path: str = "/", extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode("latin-1")


async def raw_answer(port: int, head: bytes) -> bytes:
    """The response head to a raw request (the connection is closed after)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()


def log_text(records: list[logging.LogRecord]) -> str:
    """Everything a handler could write of these records: message, fields, traceback."""
    formatter = logging.Formatter()
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.extend(repr(value) for value in record.__dict__.values())
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
    return "\n".join(parts)


@pytest.fixture
def all_refusals_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal lines are rate-limited for the process: not in these tests,
    whose point is what each line holds."""
    monkeypatch.setattr(logging.getLogger("wshub.refusals"), "filters", [])


# ----------------------------------------------------- a token in the query


def failing_hook(hs: Handshake) -> Response | None:
    if hs.path == "/boom":
        raise RuntimeError("the hook's own bug")
    if hs.path == "/deny":
        return Response.text(401, "no\n", [("WWW-Authenticate", "Bearer")])
    return None


async def stuck_on_slow(hs: Handshake) -> None:
    if hs.path == "/slow":
        await asyncio.Event().wait()


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("hook-exception", 500),
        ("hook-refusal", 401),
        ("hook-timeout", 503),
        ("origin", 403),
        ("per-ip-at-upgrade", 429),
        ("per-ip-at-connect", 429),
    ],
)
@pytest.mark.usefixtures("all_refusals_logged")
async def test_a_token_in_the_query_never_reaches_the_log(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, case: str, status: int
) -> None:
    options: dict[str, Any] = {"on_handshake": failing_hook}
    path, headers = "/", {}
    if case == "hook-exception":
        path = "/boom"
    elif case == "hook-refusal":
        path = "/deny"
    elif case == "hook-timeout":
        path = "/slow"
        options = {"on_handshake": stuck_on_slow, "server_options": {"handshake_timeout": 0.3}}
    elif case == "origin":
        options["allow_origin"] = "https://app.example"
        headers["Origin"] = "https://evil.example"
    elif case == "per-ip-at-upgrade":
        # Behind a trusted proxy the limit is checked at the upgrade, where
        # the request (and its target) is known.
        options.update(limit_by_ip=1, trusted_proxies=["127.0.0.1"])
        headers["X-Forwarded-For"] = "203.0.113.9"
    else:
        options["limit_by_ip"] = 1
    srv = await start_server(**options)
    caplog.set_level(logging.DEBUG, logger="wshub")
    url = f"{srv.url}{path}?user=alice&token={TOKEN}"
    if case.startswith("per-ip"):
        # The client holding the one slot comes without a token: the lines
        # under test are those of the refused one.
        async with connect(f"{srv.url}{path}", additional_headers=headers):
            assert await refused_status(url, additional_headers=headers) == status
    else:
        assert await refused_status(url, additional_headers=headers) == status
    await wait_for(lambda: srv.ws._per_ip.count("127.0.0.1") == 0, what="slots freed")
    records = [r for r in caplog.records if r.name.startswith("wshub")]
    refusal_lines = [r for r in records if f"{status}" in r.getMessage()]
    assert refusal_lines, f"no log line for the {status}"
    assert TOKEN not in log_text(records)
    if case == "hook-exception":
        [error] = [r for r in records if r.levelno >= logging.ERROR]
        assert "/boom" in error.getMessage()  # the path is still there to debug with


async def test_a_token_in_the_query_never_reaches_the_log_over_http2(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("wshub.refusals"), "filters", [])
    server = HttpServer()
    WebSocket(server, on_handshake=failing_hook)
    await server.serve("127.0.0.1", 0)
    caplog.set_level(logging.DEBUG, logger="wshub")
    try:
        c = await H2Client.connect("127.0.0.1", server.port, tls=False)
        authority = f"127.0.0.1:{server.port}"
        boom = await c.open_ws(f"/boom?token={TOKEN}", authority=authority, scheme="http")
        deny = await c.open_ws(f"/deny?token={TOKEN}", authority=authority, scheme="http")
        assert (await c.response(boom)).status == 500
        assert (await c.response(deny)).status == 401
        await c.close()
    finally:
        await server.close(timeout=2.0)
    records = [r for r in caplog.records if r.name.startswith("wshub")]
    assert [r for r in records if r.levelno >= logging.ERROR and "/boom" in r.getMessage()]
    assert TOKEN not in log_text(records)


async def test_the_repr_of_a_handshake_leaves_the_query_out(start_server: StartServer) -> None:
    """``log.info("%r", hs)`` in an application's hook must not write the token."""
    seen: list[str] = []
    srv = await start_server(on_handshake=lambda hs: seen.append(repr(hs)))
    async with connect(f"{srv.url}/chat?token={TOKEN}"):
        pass
    [text] = seen
    assert TOKEN not in text and "'/chat'" in text


# ---------------------------------------------- a hook that never answers


class CountingStuckHook:
    """Never answers on ``/slow`` (until cancelled); counts the calls and the cancellations."""

    def __init__(self) -> None:
        self.calls = 0
        self.cancelled = 0

    async def __call__(self, hs: Handshake) -> None:
        if hs.path != "/slow":
            return
        self.calls += 1
        try:
            await asyncio.Event().wait()
        finally:
            self.cancelled += 1


async def test_a_flood_of_handshakes_on_a_stuck_hook_is_bounded_by_limit_by_ip(
    start_server: StartServer,
) -> None:
    hook = CountingStuckHook()
    srv = await start_server(on_handshake=hook, limit_by_ip=4)
    ws = srv.ws
    ws.on("message", lambda cid, data: ws.send(cid, data))
    flood = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(12)]
    try:
        for _reader, writer in flood:
            writer.write(upgrade_head(srv.port, "/slow"))
        # Four wait in the hook, each holding its address's slot; the
        # others are refused at once and never reach the hook.
        answers = []
        for reader, _writer in flood[4:]:
            answers.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10))
        assert all(a.startswith(b"HTTP/1.1 429 ") for a in answers), answers
        await wait_for(lambda: hook.calls == 4, what="four hooks waiting")
        assert ws._per_ip.count("127.0.0.1") == 4
        # Another address is served meanwhile.
        async with connect(srv.url + "/", local_addr=("127.0.0.2", 0)) as other:
            await other.send("still served")
            assert await asyncio.wait_for(other.recv(), 10) == "still served"
        assert hook.calls == 4 and hook.cancelled == 0
    finally:
        for _reader, writer in flood:
            writer.close()
    # The flood leaves: every hook is cancelled, every slot given back.
    await wait_for(lambda: hook.cancelled == 4, what="the four hooks cancelled")
    await wait_for(lambda: ws._per_ip.count("127.0.0.1") == 0, what="slots freed")
    assert ws.clients == [] and not ws._reserved


async def test_http2_streams_waiting_for_the_hook_are_bounded_by_limit_by_ip(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One connection, many extended CONNECTs, each waiting for the hook: each
    holds a per-IP slot (the connection's own slot passes to the first), so
    ``limit_by_ip`` bounds them as it bounds connections; the rest are 429."""
    hook = CountingStuckHook()
    server = HttpServer()
    ws = WebSocket(server, on_handshake=hook, limit_by_ip=5)
    ws.on("message", lambda cid, data: ws.send(cid, data))
    await server.serve("127.0.0.1", 0)
    caplog.set_level(logging.INFO, logger="wshub")
    try:
        c = await H2Client.connect("127.0.0.1", server.port, tls=False)
        authority = f"127.0.0.1:{server.port}"
        streams = [await c.open_ws("/slow", authority=authority, scheme="http") for _ in range(20)]
        await wait_for(lambda: hook.calls == 5, what="five hooks waiting")
        refused = streams[5:]
        for sid in refused:
            assert (await c.response(sid)).status == 429
        assert hook.calls == 5 and ws._per_ip.count("127.0.0.1") == 5
        assert all(c.streams[sid].headers is None for sid in streams[:5])  # still waiting
        # The connection is alive: a PING is answered while they wait.
        c.conn.ping(b"12345678")
        c.flush()
        await c.wait(
            lambda: any(type(ev).__name__ == "PingAckReceived" for ev in c.events),
            what="PING ACK",
        )
        await c.close()
        await wait_for(lambda: hook.cancelled == 5, what="the hooks cancelled")
        await wait_for(lambda: ws._per_ip.count("127.0.0.1") == 0, what="slots freed")
    finally:
        await server.close(timeout=2.0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ------------------------------------------- a client that leaves meanwhile


class Events:
    """The hub's "open", "close" and "error" events."""

    def __init__(self, ws: WebSocket) -> None:
        self.seen: list[tuple[str, str]] = []
        ws.on("open", lambda cid: self.seen.append(("open", cid)))
        ws.on("close", lambda cid, event: self.seen.append(("close", cid)))
        ws.on("error", lambda cid, exc: self.seen.append(("error", cid)))


async def test_a_client_that_leaves_during_the_hook_has_no_events_and_no_error(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    hook = CountingStuckHook()
    srv = await start_server(on_handshake=hook)
    events = Events(srv.ws)
    caplog.set_level(logging.INFO, logger="wshub")
    _reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    # The request and a first frame right behind it, then gone.
    writer.write(upgrade_head(srv.port, "/slow") + b"\x81\x85" + b"\x00" * 4 + b"early")
    await wait_for(lambda: hook.calls == 1, what="the hook running")
    writer.close()
    await wait_for(lambda: hook.cancelled == 1, what="the hook cancelled")
    await wait_for(lambda: srv.ws._per_ip.count("127.0.0.1") == 0, what="slot freed")
    assert events.seen == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    # The events are wired: a client the hook admits has both.
    async with connect(srv.url + "/"):
        await wait_for(lambda: len(events.seen) == 1, what="open")
    await wait_for(lambda: len(events.seen) == 2, what="close")
    assert [name for name, _ in events.seen] == ["open", "close"]


async def test_an_http2_stream_reset_during_the_hook_has_no_events_and_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = CountingStuckHook()
    server = HttpServer()
    ws = WebSocket(server, on_handshake=hook)
    events = Events(ws)
    await server.serve("127.0.0.1", 0)
    caplog.set_level(logging.INFO, logger="wshub")
    try:
        c = await H2Client.connect("127.0.0.1", server.port, tls=False)
        authority = f"127.0.0.1:{server.port}"
        reset = await c.open_ws("/slow", authority=authority, scheme="http")
        c.ws_send(reset, OP_TEXT, b"early")
        lost = await c.open_ws("/slow", authority=authority, scheme="http")
        await wait_for(lambda: hook.calls == 2, what="two hooks running")
        c.conn.reset_stream(reset)
        c.flush()
        await wait_for(lambda: hook.cancelled == 1, what="the reset stream's hook cancelled")
        assert c.streams[lost].headers is None
        await c.close()  # and the other one with its connection
        await wait_for(lambda: hook.cancelled == 2, what="both hooks cancelled")
        await wait_for(lambda: ws._per_ip.count("127.0.0.1") == 0, what="slots freed")
    finally:
        await server.close(timeout=2.0)
    assert events.seen == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


# --------------------------------------------------- Sec-WebSocket-Protocol


@pytest.fixture(params=["c-reader", "httptools"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The first read goes to the C upgrade reader when there is one, else
    (or when it is set aside, as here) to httptools: both must agree."""
    if request.param == "httptools":
        monkeypatch.setattr(http1, "_parse_upgrade_head", None)
    elif http1._parse_upgrade_head is None:
        if os.environ.get("WSHUB_NO_EXTENSIONS"):
            pytest.skip("no C reader: WSHUB_NO_EXTENSIONS is set (the pure-Python run)")
        pytest.fail("the C accelerator is not built (run 'make venv')")
    return str(request.param)


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        (["x" * 20_000], 431),  # one offer past max_header_size
        ([", ".join(f"p{i}" for i in range(5000))], 431),  # too many offers for the head
        ([f"p{i}" for i in range(120)], 431),  # past max_headers
        ([", ".join(f"p{i}" for i in range(1500))], 101),  # many, within bounds: none chosen
        (["chat\x01"], 400),
        (["chat\xe9"], 400),  # a latin-1 byte: not a token
        (["chat;v=1"], 400),
        (['"chat"'], 400),
        (["chat\tv1"], 400),
        (["chat, chat\x7f"], 400),
        ([""], 101),  # empty: no offer
        ([" , ,"], 101),  # empty list elements only
    ],
    ids=[
        "huge-offer",
        "too-many-offers",
        "too-many-lines",
        "1500-offers",
        "control",
        "latin-1",
        "semicolon",
        "quoted",
        "tab-inside",
        "del",
        "empty",
        "commas",
    ],
)
async def test_odd_and_oversized_offers(
    start_server: StartServer,
    caplog: pytest.LogCaptureFixture,
    reader: str,
    lines: list[str],
    status: int,
) -> None:
    offers: list[tuple[str, ...]] = []
    srv = await start_server(
        subprotocols=["chat"], on_handshake=lambda hs: offers.append(hs.subprotocols)
    )
    caplog.set_level(logging.INFO, logger="wshub")
    extra = "".join(f"Sec-WebSocket-Protocol: {line}\r\n" for line in lines)
    answer = await raw_answer(srv.port, upgrade_head(srv.port, extra=extra))
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert b"sec-websocket-protocol" not in answer.lower()  # nothing echoed
    if status == 101:
        assert len(offers) == 1 and "chat" not in offers[0]
    else:
        assert offers == []  # refused before the hook
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# ------------------------------------------------ what the hook may answer


@pytest.mark.parametrize(
    "bad",
    [
        lambda hs: hs.set_cookie("a", "v\r\nX-Injected: 1"),
        lambda hs: hs.set_cookie("a", "v", path="/\r\nX-Injected: 1"),
        lambda hs: hs.set_cookie("a", "v", domain="example.com; Secure"),
        lambda hs: hs.set_cookie("a", "v", max_age="3600\r\nX-Injected: 1"),  # type: ignore[arg-type]
        lambda hs: hs.set_cookie("a", "v", samesite="Lax\r\nX-Injected: 1"),
        lambda hs: hs.set_cookie("a\r\nX-Injected", "v"),
        lambda hs: hs.set_cookie("a", "v,w"),
        lambda hs: hs.set_cookie("a", 42),  # type: ignore[arg-type]
        lambda hs: hs.response_headers.append(("X-Ok", "v\x00")),
        lambda hs: hs.response_headers.append(("X-Ok", "\u2028")),
        lambda hs: hs.response_headers.append(("X-Injected: 1\r\nX-Ok", "v")),
        lambda hs: hs.response_headers.append(("Content-Length", "0")),
        lambda hs: hs.response_headers.append(("X-Ok",)),
        lambda hs: setattr(hs, "response_headers", "X-Injected: 1"),
        lambda hs: Response(b"", 401, [("X-Ok", "\r\nX-Injected: 1")]),
        lambda hs: Response(b"", 301, [("Location", "/a\nX-Injected: 1")]),
        lambda hs: Response.text(401, "x", {"WWW-Authenticate": "Bearer"}),  # type: ignore[arg-type]
    ],
    ids=[
        "cookie-value-crlf",
        "cookie-path-crlf",
        "cookie-domain-semicolon",
        "cookie-max-age-str",
        "cookie-samesite",
        "cookie-name-crlf",
        "cookie-value-comma",
        "cookie-value-int",
        "header-nul",
        "header-non-latin-1",
        "header-name-crlf",
        "header-framing",
        "header-not-a-pair",
        "headers-not-a-list",
        "refusal-header-crlf",
        "redirect-location-lf",
        "refusal-headers-dict",
    ],
)
async def test_what_the_hook_sets_cannot_inject_into_the_answer(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, bad: Any
) -> None:
    srv = await start_server(on_handshake=bad)
    caplog.set_level(logging.INFO, logger="wshub")
    answer = await raw_answer(srv.port, upgrade_head(srv.port))
    assert answer.startswith(b"HTTP/1.1 500 "), answer
    assert b"X-Injected" not in answer
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    await wait_for(lambda: srv.ws._per_ip.count("127.0.0.1") == 0, what="slot freed")


# ------------------------------------- a hook that swallows its cancellation


class StubbornHook:
    """On ``/slow``: waits, and when cancelled carries on and admits anyway
    (``contextlib.suppress(asyncio.CancelledError)`` around a look-up)."""

    def __init__(self) -> None:
        self.calls = 0
        self.finished = 0

    async def __call__(self, hs: Handshake) -> None:
        if hs.path != "/slow":
            return
        self.calls += 1
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        hs.data = "admitted after all"
        self.finished += 1


async def test_a_hook_that_swallows_its_cancellation_holds_no_slot(
    start_server: StartServer,
) -> None:
    hook = StubbornHook()
    srv = await start_server(
        on_handshake=hook, limit_by_ip=2, server_options={"handshake_timeout": 0.3}
    )
    ws = srv.ws
    events = Events(ws)
    # Cut by the handshake timeout ...
    answer = await raw_answer(srv.port, upgrade_head(srv.port, "/slow"))
    assert answer.startswith(b"HTTP/1.1 503 ")
    # ... and by the client leaving.
    _reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(upgrade_head(srv.port, "/slow"))
    await wait_for(lambda: hook.calls == 2, what="the second hook running")
    writer.close()
    await wait_for(lambda: hook.finished == 2, what="both hooks carried on")
    await wait_for(lambda: ws._per_ip.count("127.0.0.1") == 0, what="slots freed")
    assert not ws._reserved and ws.clients == [] and events.seen == []


async def test_an_http2_hook_that_swallows_its_cancellation_holds_no_slot() -> None:
    hook = StubbornHook()
    server = HttpServer(handshake_timeout=0.3)
    ws = WebSocket(server, on_handshake=hook)
    events = Events(ws)
    await server.serve("127.0.0.1", 0)
    try:
        c = await H2Client.connect("127.0.0.1", server.port, tls=False)
        authority = f"127.0.0.1:{server.port}"
        timed_out = await c.open_ws("/slow", authority=authority, scheme="http")
        assert (await c.response(timed_out)).status == 503
        reset = await c.open_ws("/slow", authority=authority, scheme="http")
        await wait_for(lambda: hook.calls == 2, what="the second hook running")
        c.conn.reset_stream(reset)
        c.flush()
        await wait_for(lambda: hook.finished == 2, what="both hooks carried on")
        await c.close()
        await wait_for(lambda: ws._per_ip.count("127.0.0.1") == 0, what="slots freed")
        assert not ws._reserved and ws.clients == [] and events.seen == []
    finally:
        await server.close(timeout=2.0)


# ------------------------------------- a hook whose awaited lookup is cancelled


async def test_a_hook_whose_lookup_is_cancelled_under_it_is_a_500(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The hook awaits a lookup shared with other handshakes (one task for
    many waiters), and that task is cancelled (say, the waiter that started
    it left): CancelledError comes out of a hook the server did not cancel.
    That client gets a 500 like any failing hook; nothing else is disturbed."""
    loop = asyncio.get_running_loop()
    shared: asyncio.Future[str] = loop.create_future()
    waiting = asyncio.Event()

    async def hook(hs: Handshake) -> None:
        if hs.path == "/shared":
            waiting.set()
            hs.data = await shared

    srv = await start_server(on_handshake=hook)
    srv.ws.on("message", lambda cid, data: srv.ws.send(cid, data))
    caplog.set_level(logging.INFO)
    pending = asyncio.ensure_future(refused_status(srv.url + "/shared"))
    await asyncio.wait_for(waiting.wait(), 10)
    shared.cancel()
    assert await asyncio.wait_for(pending, 10) == 500
    await wait_for(lambda: srv.ws._per_ip.count("127.0.0.1") == 0, what="slot freed")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].name == "wshub", [r.getMessage() for r in errors]
    async with connect(srv.url + "/") as c:
        await c.send("fine")
        assert await asyncio.wait_for(c.recv(), 10) == "fine"


async def test_a_hook_cancelled_under_it_over_http2_is_a_500() -> None:
    async def hook(hs: Handshake) -> None:
        if hs.path == "/cancelled":
            lookup = asyncio.get_running_loop().create_future()
            lookup.get_loop().call_soon(lookup.cancel)
            await lookup

    server = HttpServer()
    ws = WebSocket(server, on_handshake=hook)
    ws.on("/ok", lambda cid, data: ws.send(cid, data))
    await server.serve("127.0.0.1", 0)
    try:
        c = await H2Client.connect("127.0.0.1", server.port, tls=False)
        authority = f"127.0.0.1:{server.port}"
        failed = await c.open_ws("/cancelled", authority=authority, scheme="http")
        ok = await c.open_ws("/ok", authority=authority, scheme="http")
        assert (await c.response(failed)).status == 500
        assert (await c.response(ok)).status == 200
        c.ws_send(ok, OP_TEXT, b"fine")
        assert (await c.ws_recv(ok)).payload == b"fine"
        await c.close()
        await wait_for(lambda: ws._per_ip.count("127.0.0.1") == 0, what="slots freed")
    finally:
        await server.close(timeout=2.0)


async def test_an_admitted_clients_token_is_not_logged_either(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server(on_handshake=lambda hs: None)
    caplog.set_level(logging.DEBUG, logger="wshub")
    async with connect(f"{srv.url}/room?token={TOKEN}"):
        await wait_for(lambda: bool(srv.ws.clients), what="open")
    await wait_for(lambda: not srv.ws.clients, what="close")
    records = [r for r in caplog.records if r.name.startswith("wshub")]
    assert [r for r in records if "opened /room" in r.getMessage()]
    assert TOKEN not in log_text(records)

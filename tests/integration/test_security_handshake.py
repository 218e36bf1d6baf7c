"""Attacks on the opening handshake of a running server, with a bystander being served.

Origin look-alikes (403), per-IP limits (429) with IPv6 /64s and forwarded
headers, slowloris (408), oversized heads (431), garbage (400), big bodies
(413), malformed targets, versions and hosts (400/426, never 500, with the
C upgrade reader and with httptools alike).  Each refusal: the right
status, exactly one log line, no traceback, and the bystander's echo still
works.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
import websockets

from tests.conftest import Running, StartServer, wait_for
from tests.integration.h2_client_support import H2Client
from tests.integration.security_support import (
    Bystander,
    echo,
    http_raw,
    read_close,
    refused,
    upgrade,
    wshub_lines,
)
from wshub import Handshake, HttpServer, Response, WebSocket
from wshub.transport import http1


@pytest.fixture(autouse=True)
def _log_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wshub")


async def assert_refused_once(
    srv: Running,
    caplog: pytest.LogCaptureFixture,
    data: bytes,
    status: int,
    host: str | None = None,
) -> None:
    caplog.clear()
    reply = await refused(srv, data, host)
    assert reply.status == status, reply.body
    await wait_for(lambda: len(wshub_lines(caplog)) >= 1, what="the refusal's log line")
    lines = wshub_lines(caplog)
    assert len(lines) == 1, lines
    assert str(status) in lines[0]


def host_of(srv: Running) -> str:
    return f"{srv.host}:{srv.port}"


# ------------------------------------------------------------------- origins

LOOK_ALIKES = [
    "https://example.com.evil.net",
    "http://example.com",  # http vs https
    "https://example.com:8443",  # other port
    "https://evil-example.com",
    "https://example.com@evil.net",
    "https://sub.example.com",
    "null",
    "https://example.com, https://evil.net",
]


async def test_origin_allow_list_refuses_look_alikes(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server(allow_origin=["https://example.com"])
    echo(srv)
    bystander = await Bystander.connect(srv)  # no Origin: not a browser, allowed
    for origin in LOOK_ALIKES:
        data = upgrade(host_of(srv), extra=[("Origin", origin)])
        await assert_refused_once(srv, caplog, data, 403)
        await bystander.check()
    # The same origin, spelled as browsers and people do, is let in.
    for origin in ("https://example.com", "https://EXAMPLE.com", "https://example.com."):
        async with websockets.connect(srv.url + "/", origin=origin, compression=None) as c:  # type: ignore[arg-type]
            await c.send("hi")
            assert await c.recv() == "hi"
    await bystander.close()


async def test_version_8_sec_websocket_origin(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server(allow_origin=["https://example.com"])
    echo(srv)
    bad = upgrade(host_of(srv), extra=[("Sec-WebSocket-Origin", "https://evil.net")], version="8")
    await assert_refused_once(srv, caplog, bad, 403)
    good = upgrade(
        host_of(srv), extra=[("Sec-WebSocket-Origin", "https://example.com")], version="8"
    )
    reply, _reader, writer = await http_raw(srv, good)
    assert reply.status == 101
    writer.close()


async def test_same_origin_default(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server()  # allow_origin=None: same origin only
    echo(srv)
    bystander = await Bystander.connect(srv)
    port = srv.port
    for origin in (
        f"http://127.0.0.1.evil.net:{port}",
        f"http://127.0.0.1:{port + 1}",
        "http://127.0.0.1",
        f"http://localhost:{port}",
    ):
        data = upgrade(host_of(srv), extra=[("Origin", origin)])
        await assert_refused_once(srv, caplog, data, 403)
    for origin in (f"http://127.0.0.1:{port}", f"https://127.0.0.1:{port}"):
        async with websockets.connect(srv.url + "/", origin=origin, compression=None) as c:  # type: ignore[arg-type]
            await c.send("same")
            assert await c.recv() == "same"
    # A look-alike Host does not help either: it is not a host at all (400).
    data = upgrade(f"evil.net@127.0.0.1:{port}", extra=[("Origin", f"http://127.0.0.1:{port}")])
    await assert_refused_once(srv, caplog, data, 400)
    await bystander.close()


# ------------------------------------------------------------------- per IP


async def test_limit_by_ip_429_and_table_empties(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server(limit_by_ip=3, allow_origin="*")
    echo(srv)
    ws = srv.ws
    bystander = await Bystander.connect(srv)  # holds one of the three slots
    held = [await websockets.connect(srv.url + "/", compression=None) for _ in range(2)]
    # Headers from an untrusted peer do not buy new slots.
    for extra in ([], [("X-Forwarded-For", "203.0.113.1")], [("Forwarded", "for=198.51.100.2")]):
        await assert_refused_once(srv, caplog, upgrade(host_of(srv), extra=extra), 429)
    await bystander.check()
    assert ws._per_ip.count("127.0.0.1") == 3
    for c in held:
        await c.close()
    await bystander.close()
    await wait_for(lambda: len(ws._per_ip) == 0, what="the per-IP table to empty")
    assert not ws._clients and not ws._reserved


async def test_the_count_from_accept_becomes_the_clients_or_is_given_back(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    # An HTTP/1.1 connection is counted from its accept; at the upgrade that
    # count is handed to the hub: kept as the client's, or given back when
    # the upgrade is refused at any step (before the hub, in its guards, or
    # by the hook after the per-IP guard).
    def hook(handshake: Handshake) -> Response | None:
        return Response.text(401, "no\n") if handshake.path == "/private" else None

    srv = await start_server(limit_by_ip=3, allow_origin=["https://example.com"], on_handshake=hook)
    echo(srv)
    ws = srv.ws
    held = await websockets.connect(srv.url + "/", compression=None)
    _, idle = await asyncio.open_connection(srv.host, srv.port)  # counted, says nothing
    await wait_for(lambda: ws._per_ip.count("127.0.0.1") == 2, what="the idle one counted")
    host = host_of(srv)
    for data, status in [
        (upgrade(host, version="12"), 426),  # refused before the hub
        (upgrade(host, extra=[("Origin", "https://evil.net")]), 403),  # by its guards
        (upgrade("x/admin?"), 400),
        (upgrade(host, "/private"), 401),  # by the hook
    ]:
        await assert_refused_once(srv, caplog, data, status)
        await wait_for(lambda: ws._per_ip.count("127.0.0.1") == 2, what="the count given back")
    # The third connection is admitted at exactly the limit, counted once;
    # a fourth is over it.
    third = await websockets.connect(srv.url + "/", compression=None)
    assert ws._per_ip.count("127.0.0.1") == 3
    await assert_refused_once(srv, caplog, upgrade(host), 429)
    await third.send("hi")
    assert await third.recv() == "hi"
    await third.close()
    await held.close()
    idle.close()
    await wait_for(lambda: len(ws._per_ip) == 0, what="the per-IP table to empty")
    assert not ws._clients and not ws._reserved


async def test_trusted_proxies_forwarded_headers(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server(limit_by_ip=2, trusted_proxies=["127.0.0.1/32"])
    echo(srv)
    ws = srv.ws
    conns = []

    async def connect(headers: dict[str, str]) -> None:
        conns.append(
            await websockets.connect(srv.url + "/", additional_headers=headers, compression=None)
        )

    # Two clients behind the proxy, each with its own limit.
    await connect({"X-Forwarded-For": "203.0.113.9"})
    await connect({"X-Forwarded-For": "1.2.3.4, ::ffff:203.0.113.9"})  # mapped: same client
    await connect({"Forwarded": 'for="[2001:db8:1:2::1]:5555"'})
    await connect({"X-Forwarded-For": "2001:db8:1:2:ffff::9"})  # same /64
    assert ws._per_ip.count("203.0.113.9") == 2
    assert ws._per_ip.count("2001:db8:1:2::/64") == 2
    for headers in (
        {"X-Forwarded-For": "203.0.113.9"},
        {"X-Forwarded-For": "10.9.9.9, 203.0.113.9"},  # a forged left part changes nothing
        {"X-Forwarded-For": "2001:db8:1:2::abcd"},
    ):
        extra = list(headers.items())
        await assert_refused_once(srv, caplog, upgrade(host_of(srv), extra=extra), 429)
    # Another /64 is another client.
    await connect({"X-Forwarded-For": "2001:db8:1:3::1"})
    for c in conns:
        await c.send("x")
        assert await c.recv() == "x"
        await c.close()
    await wait_for(lambda: len(ws._per_ip) == 0, what="the per-IP table to empty")


async def test_ipv6_per_64_and_loopback_keys() -> None:
    # One server on both loopbacks: ::1 and 127.0.0.1 are different keys.
    server = HttpServer()
    ws = WebSocket(server, limit_by_ip=1)
    ws.on("message", lambda cid, data: ws.send(cid, data))
    probe = socket.socket(socket.AF_INET6)
    try:
        probe.bind(("::1", 0))
    except OSError as exc:
        pytest.fail(f"this test needs IPv6 loopback (::1): {exc}")
    port = probe.getsockname()[1]
    probe.close()
    await server.serve(["::1", "127.0.0.1"], port)
    try:
        v6 = await websockets.connect(f"ws://[::1]:{port}/", compression=None)
        v4 = await websockets.connect(f"ws://127.0.0.1:{port}/", compression=None)
        assert ws._per_ip.count("::/64") == 1 and ws._per_ip.count("127.0.0.1") == 1
        with pytest.raises(websockets.exceptions.InvalidStatus) as info:
            await websockets.connect(f"ws://[::1]:{port}/", compression=None)
        assert info.value.response.status_code == 429
        for c in (v6, v4):
            await c.send("ok")
            assert await c.recv() == "ok"
            await c.close()
        await wait_for(lambda: len(ws._per_ip) == 0, what="the per-IP table to empty")
    finally:
        await server.close(timeout=2.0)


# ------------------------------------------------------------ HTTP limits


async def test_slowloris_is_dropped_with_408(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server(server_options={"handshake_timeout": 1.0})
    echo(srv)
    head = upgrade(host_of(srv))
    caplog.clear()

    async def trickle() -> int:
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        try:
            for i in range(len(head)):
                writer.write(head[i : i + 1])
                await writer.drain()
                done = asyncio.ensure_future(reader.read(4096))
                finished, _ = await asyncio.wait({done}, timeout=0.25)
                if finished:
                    data = done.result()
                    assert b"Traceback" not in data
                    return int(data.split(b" ")[1]) if data else 0
                done.cancel()
            return 101
        finally:
            writer.close()

    attackers = [asyncio.ensure_future(trickle()) for _ in range(20)]
    # A well-behaved client connects while twenty trickles are running.
    bystander = await Bystander.connect(srv)
    for _ in range(5):
        await bystander.check()
        await asyncio.sleep(0.1)
    statuses = await asyncio.gather(*attackers)
    assert statuses == [408] * 20
    lines = wshub_lines(caplog)
    assert len(lines) == 20 and all("408" in line for line in lines), lines
    # The bystander outlives the handshake timeout: it is a WebSocket now.
    await bystander.close()


async def test_idle_connection_closed_silently(start_server: StartServer) -> None:
    srv = await start_server(server_options={"handshake_timeout": 0.5})
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    assert await asyncio.wait_for(reader.read(), 10) == b""  # dropped, nothing sent
    writer.close()


async def test_oversized_and_malformed_requests(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server(server_options={"max_body_size": 1000})
    echo(srv)
    bystander = await Bystander.connect(srv)
    host = host_of(srv)
    big_header = upgrade(host, extra=[("X-Big", "a" * 20000)])
    await assert_refused_once(srv, caplog, big_header, 431)
    many = upgrade(host, extra=[(f"X-H{i}", "v") for i in range(150)])
    await assert_refused_once(srv, caplog, many, 431)
    long_target = upgrade(host, path="/" + "a" * 20000)
    await assert_refused_once(srv, caplog, long_target, 431)
    await assert_refused_once(srv, caplog, b"GARBAGE\x00\x01 nonsense\r\n\r\n", 400)
    await assert_refused_once(srv, caplog, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400)
    body = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + b"b" * 2000
    await assert_refused_once(srv, caplog, body, 413)
    # Not a valid upgrade: 400, not a page, not a crash.
    bad_key = upgrade(host).replace(b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Key: x")
    await assert_refused_once(srv, caplog, bad_key, 400)
    await assert_refused_once(srv, caplog, upgrade(host, version="7"), 426)
    await bystander.close()


async def test_garbage_after_upgrade_gets_a_close_code(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start_server()
    echo(srv)
    bystander = await Bystander.connect(srv)
    reply, reader, writer = await http_raw(srv, upgrade(host_of(srv)))
    assert reply.status == 101
    caplog.clear()
    writer.write(b"\x81\x05hello")  # unmasked: RFC 6455 §5.1
    assert await read_close(reader) == 1002
    writer.close()
    await wait_for(lambda: len(srv.ws.clients) == 1, what="the attacker to be gone")
    lines = wshub_lines(caplog)
    assert len(lines) == 1 and "1002" in lines[0], lines
    await bystander.close()


# ------------------------------------------ malformed input: 400/426, never 500

# Issue #15: the first read of a connection is offered to the C reader
# (_speedups.parse_upgrade_head), everything else is parsed by httptools.
# Both must give the same answer, so each case below runs with either.


@pytest.fixture(params=["c-reader", "httptools"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "c-reader":
        if http1._parse_upgrade_head is None:
            pytest.skip("no C accelerator on this path (WSHUB_NO_EXTENSIONS=1)")
    else:
        monkeypatch.setattr(http1, "_parse_upgrade_head", None)
    return str(request.param)


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.parametrize("target", ["?x", "chat", ";/a", "[x]", "[::1]", "@a", "%2F"])
async def test_targets_httptools_refuses_get_400_from_either_reader(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, reader: str, target: str
) -> None:
    # The C reader took any run of URI characters as the target: "?x",
    # "chat" and ";/a" got a 101 there and a 400 from httptools; "[x]" made
    # the URL "ws://host[x]", which urlsplit refuses: a 500 and a traceback.
    srv = await start_server()
    echo(srv)
    await assert_refused_once(srv, caplog, upgrade(host_of(srv), path=target), 400)
    assert_no_traceback(caplog)
    assert srv.ws.clients == []


@pytest.mark.parametrize(
    ("raw_version", "status"),
    [
        ("¹³".encode("latin-1"), 426),  # str.isdigit(), but int() raises: was a 500
        ("²".encode("latin-1"), 426),
        ("١٣".encode(), 426),  # UTF-8 read as latin-1: not digits at all
        (b"013", 426),
        (b"13", 101),
    ],
)
async def test_version_other_than_13_or_8_is_426_never_500(
    start_server: StartServer,
    caplog: pytest.LogCaptureFixture,
    reader: str,
    raw_version: bytes,
    status: int,
) -> None:
    srv = await start_server()
    echo(srv)
    data = upgrade(host_of(srv)).replace(b"Version: 13\r\n", b"Version: " + raw_version + b"\r\n")
    if status == 101:
        reply, _reader, writer = await http_raw(srv, data)
        assert reply.status == 101
        writer.close()
    else:
        await assert_refused_once(srv, caplog, data, status)
        reply = await refused(srv, data)
        assert reply.headers.get("sec-websocket-version") == "13, 8"
    assert_no_traceback(caplog)


@pytest.mark.parametrize("host", ["[::1", "a]", "[::1]]", "[[::1]", "]a[", "[x]", "a[b]"])
async def test_host_with_unbalanced_brackets_is_400_never_500(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, reader: str, host: str
) -> None:
    # urlsplit raises ValueError for these (unbalanced, or not an address
    # inside): it reached the transport as a 500 with a traceback.
    srv = await start_server()
    echo(srv)
    await assert_refused_once(srv, caplog, upgrade(host), 400)
    assert_no_traceback(caplog)
    # With an Origin too (the same-origin check reads the Host first).
    origin = [("Origin", f"http://127.0.0.1:{srv.port}")]
    await assert_refused_once(srv, caplog, upgrade(host, extra=origin), 400)
    assert_no_traceback(caplog)


async def test_malformed_host_between_good_ones_is_400(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, reader: str
) -> None:
    # The admission skips parsing a Host equal to the last valid one: a bad
    # Host that starts like it, between two good upgrades, is still a 400.
    srv = await start_server(allow_origin="*")
    echo(srv)
    good = upgrade(host_of(srv))
    for bad_host in (host_of(srv) + "/admin?", host_of(srv) + "@evil.net", "x y"):
        reply, _reader, writer = await http_raw(srv, good)
        assert reply.status == 101
        writer.close()
        await assert_refused_once(srv, caplog, upgrade(bad_host), 400)
    reply, _reader, writer = await http_raw(srv, good)
    assert reply.status == 101
    writer.close()
    assert_no_traceback(caplog)


@pytest.mark.parametrize("authority", ["[::1", "a]", "[::1]]", "[x]:80", "a[b]"])
async def test_http2_authority_with_unbalanced_brackets_is_400_never_500(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, authority: str
) -> None:
    srv = await start_server()
    echo(srv)
    client = await H2Client.connect("127.0.0.1", srv.port, tls=False)
    try:
        caplog.clear()
        sid = await client.open_ws("/", authority=authority, scheme="http")
        assert (await client.response(sid)).status == 400
        lines = wshub_lines(caplog)
        assert len(lines) <= 1 and all("400" in line for line in lines), lines
        assert_no_traceback(caplog)
        # The connection goes on: a well-formed stream on it is served.
        sid = await client.open_ws("/", authority=f"127.0.0.1:{srv.port}", scheme="http")
        assert (await client.response(sid)).status == 200
    finally:
        await client.close()

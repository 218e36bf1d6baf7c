"""Prometheus metrics (issue #18 item 2), scraped over plain HTTP after real traffic.

The hub is driven by third-party clients (``websockets``, ``h2``, uvicorn
for ASGI); the exposition is fetched with ``urllib`` and parsed with
``prometheus_client``'s own parser, and every counter is checked against
exactly what the test caused.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Running, StartServer, wait_for
from tests.integration.asgi_servers import AsgiServer, start
from tests.integration.cli_support import free_port, start_program, wshub_command
from tests.integration.cluster_support import RedisServer
from tests.integration.h2_client_support import OP_CLOSE, OP_TEXT, H2Client, close_payload
from wshub import HttpServer, WebSocket
from wshub.backplane import RedisBackplane
from wshub.http import Request, Response

ROOT = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fetch(url: str) -> tuple[int, str, str]:
    """GET ``url``: (status, content type, body); an HTTP error status is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers.get("content-type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read().decode()


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (name, sorted labels); fails on invalid text."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def scrape(base: str, path: str = "/metrics") -> Samples:
    status, ctype, body = await asyncio.to_thread(fetch, base + path)
    assert status == 200, (status, body)
    assert ctype.startswith("text/plain; version="), ctype
    return parse(body)


async def scrape_and_settle(srv: Running) -> Samples:
    """Scrape, then wait until the server let go of the scrape's connection
    (it counts under limit_by_ip until then)."""
    samples = await scrape(srv.http_url)
    table = srv.server.connections  # HTTP connections, and upgraded ones (links)
    await wait_for(
        lambda: len(table.protocols) + len(table.links) == connections(srv.ws),
        what="the scrape's close",
    )
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def connections(ws: WebSocket) -> int:
    """WebSocket connections the hub still counts as open (closing ones too)."""
    return sum(ws.stats.snapshot().open_by_carrier.values())


def rtt_count(samples: Samples) -> float:
    return value(samples, "wshub_ping_rtt_seconds_count")


@pytest.fixture
def link_counts() -> Iterator[list[Any]]:
    """The links of the clients a test opened (white box: to compare byte counts)."""
    yield []


def keep_links(ws: WebSocket, links: list[Any]) -> None:
    # White box: the client's link is what counts the bytes the metric adds up.
    ws.on("open", lambda cid: links.append(ws._clients[cid].link))


async def test_http1_counters_move_by_exactly_the_traffic(
    start_server: StartServer, link_counts: list[Any]
) -> None:
    srv = await start_server(
        metrics_path="/metrics",
        allow_origin=["http://good.example"],
        limit_by_ip=2,
        max_payload=1000,
        per_message_deflate=False,
        ping_delay=0,
    )
    ws = srv.ws
    keep_links(ws, link_counts)
    ws.on("message", lambda cid, data: ws.send(cid, data))
    origin = "http://good.example"

    before = await scrape_and_settle(srv)
    assert value(before, "wshub_open_connections", transport="http1") == 0
    assert value(before, "wshub_received_messages_total") == 0

    a = await websockets.connect(srv.url + "/", origin=origin)
    d = await websockets.connect(srv.url + "/", origin=origin)
    # A third connection from this address: over limit_by_ip, refused at accept.
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(srv.url + "/", origin=origin)
    assert refused.value.response.status_code == 429
    await d.close()
    await wait_for(lambda: connections(ws) == 1, what="d closed")

    during = await scrape_and_settle(srv)
    assert value(during, "wshub_open_connections", transport="http1") == 1
    assert value(during, "wshub_open_connections", transport="h2") == 0

    for i in range(3):
        await a.send(f"message {i}")
        assert await a.recv() == f"message {i}"
    (cid,) = ws.clients
    assert ws.ping(cid)
    await wait_for(lambda: ws.stats.rtt_count == 1, what="the pong")
    await a.close()
    await wait_for(lambda: connections(ws) == 0, what="a closed")

    c = await websockets.connect(srv.url + "/", origin=origin, max_size=None)
    await c.send("x" * 2000)  # over max_payload: the server closes with 1009
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await c.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    await wait_for(lambda: connections(ws) == 0, what="c closed")

    with pytest.raises(websockets.InvalidStatus) as forbidden:
        await websockets.connect(srv.url + "/", origin="http://evil.example")
    assert forbidden.value.response.status_code == 403

    after = await scrape(srv.http_url)
    assert value(after, "wshub_open_connections", transport="http1") == 0
    assert value(after, "wshub_handshakes_total", status="101") == 3  # a, d, c
    assert value(after, "wshub_handshakes_total", status="403") == 1
    assert value(after, "wshub_handshakes_total", status="429") == 1
    assert value(after, "wshub_received_messages_total") == 3  # c's was refused, not delivered
    assert value(after, "wshub_sent_messages_total") == 3
    assert value(after, "wshub_closes_total", code="1000") == 2  # a and d
    assert value(after, "wshub_closes_total", code="1009") == 1
    assert len(link_counts) == 3
    assert value(after, "wshub_received_bytes_total") == sum(li.bytes_read for li in link_counts)
    assert value(after, "wshub_sent_bytes_total") == sum(li.bytes_written for li in link_counts)
    # The RTT histogram: one observation, in the +Inf bucket and a finite one.
    assert rtt_count(after) == 1
    assert value(after, "wshub_ping_rtt_seconds_bucket", le="+Inf") == 1
    assert value(after, "wshub_ping_rtt_seconds_bucket", le="10.0") == 1
    assert 0 < value(after, "wshub_ping_rtt_seconds_sum") < 10
    assert value(after, "wshub_clients_over_write_high") == 0
    # The standard process figures come along.
    assert value(after, "process_resident_memory_bytes") > 0
    # No backplane: no backplane metrics.
    assert not any(name.startswith("wshub_backplane") for name, _ in after)


async def test_clients_over_write_high_counts_a_client_that_does_not_read(
    start_server: StartServer,
) -> None:
    srv = await start_server(
        metrics_path="/metrics", per_message_deflate=False, ping_delay=0, write_high=16 * 1024
    )
    ws = srv.ws
    # A raw client that never reads: the server's buffer fills past write_high.
    _reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await wait_for(lambda: len(ws.clients) == 1, what="the raw client")
    (cid,) = ws.clients
    chunk = b"x" * 65536
    while ws.send(cid, chunk):
        await asyncio.sleep(0)
    samples = await scrape(srv.http_url)
    assert value(samples, "wshub_clients_over_write_high") == 1
    writer.close()


async def test_h2_connections_have_their_label(start_server: StartServer) -> None:
    srv = await start_server(metrics_path="/metrics", ping_delay=0)
    ws = srv.ws
    ws.on("message", lambda cid, data: ws.send(cid, data))
    client = await H2Client.connect("127.0.0.1", srv.port, tls=False)
    try:
        authority = f"127.0.0.1:{srv.port}"
        sid = await client.open_ws("/", authority=authority, scheme="http")
        st = await client.response(sid)
        assert st.status == 200
        during = await scrape(srv.http_url)
        assert value(during, "wshub_open_connections", transport="h2") == 1
        assert value(during, "wshub_open_connections", transport="http1") == 0
        client.ws_send(sid, OP_TEXT, b"over h2")
        frame = await client.ws_recv(sid)
        assert frame.payload == b"over h2"
        client.ws_send(sid, OP_CLOSE, close_payload(1000))
        assert (await client.ws_recv(sid)).opcode == OP_CLOSE
        await wait_for(lambda: connections(ws) == 0, what="the h2 client closed")
    finally:
        await client.close()
    after = await scrape(srv.http_url)
    assert value(after, "wshub_open_connections", transport="h2") == 0
    assert value(after, "wshub_handshakes_total", status="101") == 1
    assert value(after, "wshub_received_messages_total") == 1
    assert value(after, "wshub_sent_messages_total") == 1
    assert value(after, "wshub_closes_total", code="1000") == 1


async def test_without_metrics_nothing_is_counted_per_message_or_connection(
    start_server: StartServer,
) -> None:
    srv = await start_server(ping_delay=0)
    ws = srv.ws
    ws.on("message", lambda cid, data: ws.send(cid, data))
    async with websockets.connect(srv.url + "/") as client:
        await client.send("not counted")
        assert await client.recv() == "not counted"
        snap = ws.stats.snapshot()
        assert snap.open_by_carrier == {}  # no connection tracked
    assert (snap.messages_received, snap.messages_sent) == (0, 0)
    assert snap.handshakes == {101: 1}  # one integer per handshake, kept anyway


async def test_metrics_off_leaves_the_path_to_the_handler(start_server: StartServer) -> None:
    plain = await start_server()
    status, _, _ = await asyncio.to_thread(fetch, plain.http_url + "/metrics")
    assert status == 404

    def handler(request: Request) -> Response:
        return Response(f"handler: {request.path}\n")

    with_handler = await start_server(handler=handler)
    status, _, body = await asyncio.to_thread(fetch, with_handler.http_url + "/metrics")
    assert (status, body) == (200, "handler: /metrics\n")


async def test_metrics_path_answers_before_the_handler_and_only_to_get(
    start_server: StartServer,
) -> None:
    def handler(request: Request) -> Response:
        return Response(f"handler: {request.path}\n")

    srv = await start_server(handler=handler, metrics_path="/internal/metrics")
    samples = await scrape(srv.http_url, "/internal/metrics")
    assert ("wshub_open_connections", (("transport", "http1"),)) in samples
    status, _, body = await asyncio.to_thread(fetch, srv.http_url + "/other")
    assert (status, body) == (200, "handler: /other\n")
    post = urllib.request.Request(srv.http_url + "/internal/metrics", data=b"", method="POST")
    status, _, _ = await asyncio.to_thread(fetch, post)
    assert status == 405


def test_a_bad_metrics_path_is_refused() -> None:
    with pytest.raises(ValueError, match="metrics_path"):
        WebSocket(HttpServer(), metrics_path="metrics")


async def test_backplane_metrics_follow_a_redis_outage(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    await redis.start()
    backplane = RedisBackplane(redis.url, heartbeat=0.5, ttl=2.0, backoff_max=0.5)
    server = HttpServer()
    ws = WebSocket(
        server,
        metrics_path="/metrics",
        backplane=backplane,
        ping_delay=0,
        secret="the metrics test's cluster secret",
    )
    await server.serve("127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        up = await scrape(base)
        assert value(up, "wshub_backplane_connected") == 1
        assert value(up, "wshub_backplane_queue_messages") == 0
        assert value(up, "wshub_backplane_dropped_messages_total") == 0
        assert value(up, "wshub_backplane_reconnects_total") == 0
        redis.stop()
        await wait_for(lambda: not backplane.connected, timeout=15, what="the loss of Redis")
        ws.broadcast("lost while Redis is down")  # for the other nodes: dropped
        down = await scrape(base)
        assert value(down, "wshub_backplane_connected") == 0
        assert value(down, "wshub_backplane_dropped_messages_total") == 1
        await redis.start()
        await wait_for(lambda: backplane.connected, timeout=15, what="the reconnection")
        again = await scrape(base)
        assert value(again, "wshub_backplane_connected") == 1
        assert value(again, "wshub_backplane_reconnects_total") == 1
        assert value(again, "wshub_backplane_dropped_messages_total") == 1
    finally:
        await server.close(timeout=2.0)
        redis.stop()


@pytest.fixture
def uvicorn_app() -> Iterator[AsgiServer]:
    srv = start("uvicorn", "tests.integration.metrics_asgi_app:app", "--ws", "websockets")
    yield srv
    srv.stop()


async def test_asgi_adapter_serves_metrics_before_the_wrapped_app(
    uvicorn_app: AsgiServer,
) -> None:
    base = uvicorn_app.http_url
    status, _, body = await asyncio.to_thread(fetch, base + "/elsewhere")
    assert (status, body) == (200, "inner app: /elsewhere\n")
    async with websockets.connect(uvicorn_app.url + "/") as client:
        during = await scrape(base)
        assert value(during, "wshub_open_connections", transport="asgi") == 1
        for i in range(3):
            await client.send(f"asgi {i}")
            assert await client.recv() == f"asgi {i}"
    # The close reaches the hub through uvicorn: wait until the gauge says so.
    for _ in range(500):
        after = await scrape(base)
        if value(after, "wshub_open_connections", transport="asgi") == 0:
            break
        await asyncio.sleep(0.02)
    assert value(after, "wshub_open_connections", transport="asgi") == 0
    assert value(after, "wshub_handshakes_total", status="101") == 1
    assert value(after, "wshub_received_messages_total") == 3
    assert value(after, "wshub_sent_messages_total") == 3
    # ASGI links count payload bytes: 3 messages of 6 bytes each way.
    assert value(after, "wshub_received_bytes_total") == 18
    assert value(after, "wshub_sent_bytes_total") == 18
    assert value(after, "wshub_closes_total", code="1000") == 1


async def test_cli_serve_metrics() -> None:
    port = free_port()
    program = await start_program(
        [*wshub_command(), "serve", "--port", str(port), "--metrics", "/metrics"], port
    )
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as client:
            await client.send("via the cli")
            assert await client.recv() == "via the cli"
            samples = await scrape(f"http://127.0.0.1:{port}")
            assert value(samples, "wshub_open_connections", transport="http1") == 1
            assert value(samples, "wshub_received_messages_total") == 1
            assert value(samples, "wshub_sent_messages_total") == 1
    finally:
        code, err = await program.stop()
    assert code == 0, err


def test_grafana_dashboard_is_json_and_uses_our_metric_names() -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert exprs, "the dashboard has no queries"
    names = {
        "wshub_open_connections",
        "wshub_clients_over_write_high",
        "wshub_handshakes_total",
        "wshub_received_messages_total",
        "wshub_sent_messages_total",
        "wshub_received_bytes_total",
        "wshub_sent_bytes_total",
        "wshub_closes_total",
        "wshub_ping_rtt_seconds_bucket",
        "wshub_backplane_connected",
        "wshub_backplane_queue_messages",
        "wshub_backplane_dropped_messages_total",
        "wshub_backplane_reconnects_total",
        "wshub_resumes_total",
    }
    used = {word for expr in exprs for word in _words(expr) if word.startswith("wshub_")}
    assert used <= names, used - names
    assert "wshub_open_connections" in used and "wshub_ping_rtt_seconds_bucket" in used


def _words(expr: str) -> list[str]:
    out, word = [], ""
    for ch in expr + " ":
        if ch.isalnum() or ch == "_":
            word += ch
        else:
            if word:
                out.append(word)
            word = ""
    return out


async def test_resumes_are_counted_by_outcome(start_server: StartServer) -> None:
    # "history recoveries" of #18: every wshub.v1 `since` answered counts
    # once, by outcome, whatever asked (subscribe or hello).
    from tests.integration.v1_support import V1Peer, allow_all

    srv = await start_server(
        pubsub=True, authorize=allow_all, history_size=3, metrics_path="/metrics"
    )
    ws = srv.ws
    peer = await V1Peer.connect(srv)
    await peer.hello()
    await peer.subscribe("t")
    ws.publish("t", "a")
    seen = await peer.recv_type("message")
    since = {"epoch": seen["epoch"], "seq": seen["seq"]}
    await peer.close()
    back = await V1Peer.connect(srv, peer.cookie)
    assert (await back.hello(since={"epoch": "made-up", "seq": 1}))["recovered"] is False
    assert (await back.recv_type("gap"))["reason"] == "reset"  # the direct stream's
    assert (await back.subscribe("t", since=since))["recovered"] is True  # nothing missed
    await back.send(type="unsubscribe", topic="t")
    await back.recv_type("unsubscribed")
    for i in range(5):  # more than the history keeps
        ws.publish("t", f"x{i}")
    assert (await back.subscribe("t", since=since))["recovered"] is False
    assert (await back.recv_type("gap"))["reason"] == "truncated"
    await back.close()
    samples = await scrape(srv.http_url)
    assert value(samples, "wshub_resumes_total", outcome="recovered") == 1
    assert value(samples, "wshub_resumes_total", outcome="truncated") == 1
    assert value(samples, "wshub_resumes_total", outcome="reset") == 1

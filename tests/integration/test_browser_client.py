"""The browser client (``wshub-client.js``) in headless Chromium, against a real hub.

The page imports the module the hub serves (``serve_client``) and records
what the client reports (tests/integration/browser_support.py).  The other
side of the wire is the hub in this process, and a ``wshub.v1`` publisher
written over the ``websockets`` client (tests/integration/v1_support.py).
Drops go through a loopback TCP proxy that can abort every connection and
refuse new ones while publications pile up, so every test knows the
client was away while messages were published: the resume is exercised,
not raced.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import Running, StartServer, wait_for
from tests.integration.browser_support import TcpProxy, harness_handler, open_harness
from tests.integration.chromium_support import chromium
from tests.integration.v1_support import V1Peer, allow_all
from wshub.browser import CLIENT_PATH, client_file, serve_client

pytestmark = pytest.mark.timeout(180)

#: Reconnect quickly: the tests wait for events, never for the clock.
FAST = {"min": 20, "max": 200, "factor": 2, "jitter": 1}
TOTAL = 400
WAIT = 30_000  # milliseconds, for Playwright's wait_for_function


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


@pytest.fixture
async def proxies() -> AsyncIterator[list[TcpProxy]]:
    started: list[TcpProxy] = []
    yield started
    for proxy in started:
        await proxy.close()


async def start_hub(start_server: StartServer, **options: Any) -> Running:
    options.setdefault("history_size", 1000)
    running = await start_server(
        handler=harness_handler, pubsub=True, authorize=allow_all, **options
    )
    serve_client(running.server)
    return running


async def start_proxy(proxies: list[TcpProxy], running: Running) -> TcpProxy:
    proxy = TcpProxy(running.port)
    await proxy.start()
    proxies.append(proxy)
    return proxy


async def start_client(page: Any, topics: list[str], **options: Any) -> str:
    """Connect the page's client, wait until it follows ``topics``; its client ID."""
    await page.evaluate(
        "([topics, options]) => { harness.start('/', {topics, ...options}); }",
        [topics, options],
    )
    await page.evaluate(
        "Promise.all(harness.client.topics.map((t) => harness.client.subscribe(t)))"
    )
    await page.wait_for_function("harness.client.state === 'open'", timeout=WAIT)
    client_id: str = await page.evaluate("harness.client.clientId")
    return client_id


async def wait_messages(page: Any, topic: str, count: int) -> list[list[Any]]:
    await page.wait_for_function(
        f"harness.messages({topic!r}).length >= {count}", timeout=WAIT, polling=50
    )
    events: list[list[Any]] = await page.evaluate("harness.events")
    return events


def closed_ids(running: Running) -> list[str]:
    seen: list[str] = []
    running.ws.on("close", lambda cid, event: seen.append(cid))
    return seen


def current_seq(running: Running, topic: str) -> int:
    position = running.ws.topic_position(topic)
    return 0 if position is None else position.seq


# ------------------------------------------------------------------ serving


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def test_the_hub_serves_the_module(start_server: StartServer) -> None:
    running = await start_hub(start_server)
    url = running.http_url + CLIENT_PATH
    status, headers, body = await asyncio.to_thread(fetch, url)
    assert status == 200
    assert headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    assert body == client_file().read_bytes()
    assert b"export function connect(" in body
    etag = headers["ETag"]
    status, headers, body = await asyncio.to_thread(fetch, url, headers={"If-None-Match": etag})
    assert (status, body, headers["ETag"]) == (304, b"", etag)
    status, headers, _ = await asyncio.to_thread(fetch, url, "POST")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")
    # The application's handler still answers the other paths.
    status, _, _ = await asyncio.to_thread(fetch, running.http_url + "/nothing-here")
    assert status == 404


# ----------------------------------------------------------------- delivery


async def test_subscribe_publish_unsubscribe_in_order(
    start_server: StartServer, browser: Any
) -> None:
    running = await start_hub(start_server)
    context = await browser.new_context()
    page = await open_harness(context, running.http_url)
    await start_client(page, ["news", "other"])

    for i in range(200):
        running.ws.publish("news", f"n{i}")
    running.ws.publish("other", b"\x00\x01\xff")
    await wait_messages(page, "news", 200)
    news = await page.evaluate("harness.messages('news')")
    assert [(m[3], m[4]) for m in news] == [(i + 1, f"n{i}") for i in range(200)]
    assert len({m[2] for m in news}) == 1  # one epoch
    await wait_messages(page, "other", 1)
    assert [m[4] for m in await page.evaluate("harness.messages('other')")] == [[0, 1, 255]]

    # What the page publishes reaches another wshub.v1 client and the page.
    peer = await V1Peer.connect(running)
    await peer.subscribe("news")
    position = await page.evaluate("harness.client.publish('news', 'from the page')")
    assert position == {"epoch": news[0][2], "seq": 201}
    await page.evaluate("harness.client.publish('news', new Uint8Array([1, 2, 3]))")
    got = [await peer.recv_type("message") for _ in range(2)]
    assert [(m["seq"], m["data"], m.get("binary", False)) for m in got] == [
        (201, "from the page", False),
        (202, "AQID", True),
    ]
    events = await wait_messages(page, "news", 202)
    assert [m[4] for m in events if m[1] == "news"][200:] == ["from the page", [1, 2, 3]]

    # After unsubscribe() resolves the server sends nothing more of "other".
    await page.evaluate("harness.client.unsubscribe('other')")
    running.ws.publish("other", "not for the page")
    running.ws.publish("news", "marker")
    await wait_messages(page, "news", 203)
    assert len(await page.evaluate("harness.messages('other')")) == 1
    assert await page.evaluate("harness.client.topics") == ["news"]
    assert await page.evaluate("harness.errors") == []
    await peer.close()
    await context.close()


async def publish_in_phases(
    peer: V1Peer, topic: str, away: asyncio.Event, back: asyncio.Event
) -> None:
    """``0 .. TOTAL-1`` steadily: the first 100 before the drop, the next 150
    while the browser is away, the rest while it comes back and catches up."""
    for i in range(TOTAL):
        if i == 100:
            await away.wait()
        elif i == 250:
            await back.wait()
        await peer.send(type="publish", topic=topic, data=str(i))
        await asyncio.sleep(0.002)


@pytest.mark.parametrize("drop", ["close-1012", "close-1001", "abort"])
async def test_every_message_once_in_order_across_a_drop(
    start_server: StartServer, browser: Any, proxies: list[TcpProxy], drop: str
) -> None:
    running = await start_hub(start_server)
    closed = closed_ids(running)
    proxy = await start_proxy(proxies, running)
    context = await browser.new_context()
    page = await open_harness(context, proxy.http_url)
    client_id = await start_client(page, ["ticks"], backoff=FAST)

    publisher = await V1Peer.connect(running)
    await publisher.hello()
    away, back = asyncio.Event(), asyncio.Event()
    publishing = asyncio.create_task(publish_in_phases(publisher, "ticks", away, back))
    try:
        await wait_messages(page, "ticks", 20)
        proxy.refuse = True  # the browser cannot come back until told
        if drop == "abort":
            assert proxy.cut() >= 1  # a reset on both sides, no Close frame
        else:
            assert running.ws.close(client_id, int(drop[-4:]), "going away for a while")
        await wait_for(lambda: client_id in closed, 10.0, "the hub's close event")
        away.set()
        await wait_for(lambda: current_seq(running, "ticks") >= 250, 20.0, "publications")
        assert not publishing.done(), "the publisher must still be publishing"
        proxy.refuse = False
        back.set()
        events = await wait_messages(page, "ticks", TOTAL)
        await publishing
    finally:
        publishing.cancel()
    # Every message exactly once, in order, no gap: the full sequence.
    assert [(e[0], e[3], e[4]) for e in events] == [
        ("message", i + 1, str(i)) for i in range(TOTAL)
    ]
    assert len({e[2] for e in events}) == 1
    states = await page.evaluate("harness.states")
    expected_code = 1006 if drop == "abort" else int(drop[-4:])
    assert ["reconnecting", expected_code] in states, states
    assert states[-1] == ["open", None]
    assert await page.evaluate("harness.client.connections") >= 2
    # The session cookie (sent by the browser itself) kept the client ID.
    assert await page.evaluate("harness.client.clientId") == client_id
    assert await page.evaluate("harness.errors") == []
    await publisher.close()
    await context.close()


async def test_publish_while_away_is_queued_and_sent_after_the_resume(
    start_server: StartServer, browser: Any, proxies: list[TcpProxy]
) -> None:
    running = await start_hub(start_server)
    reader = await V1Peer.connect(running)
    await reader.subscribe("t")
    page, proxy, client_id = await page_that_saw_one(browser, proxies, running)
    assert (await reader.recv_type("message"))["data"] == "a"
    await drop_and_hold(running, proxy, client_id)
    # Not connected: the publications wait in the client's queue, in order.
    await page.evaluate("window.queued = ['q1', 'q2'].map((d) => harness.client.publish('t', d))")
    assert await page.evaluate("harness.client.state") == "reconnecting"
    proxy.refuse = False
    positions = await page.evaluate("Promise.all(window.queued)")
    epoch = (await page.evaluate("harness.client.position('t')"))["epoch"]
    assert positions == [{"epoch": epoch, "seq": 2}, {"epoch": epoch, "seq": 3}]
    got = [await reader.recv_type("message") for _ in range(2)]
    assert [(m["seq"], m["data"]) for m in got] == [(2, "q1"), (3, "q2")]
    events = await wait_messages(page, "t", 3)
    assert [e[4] for e in events] == ["a", "q1", "q2"]
    await reader.close()
    await page.context.close()


async def test_async_iteration_and_backoff(start_server: StartServer, browser: Any) -> None:
    running = await start_hub(start_server)
    context = await browser.new_context()
    page = await open_harness(context, running.http_url)
    await start_client(page, ["t"])
    await page.evaluate(
        """() => {
          window.iterated = [];
          window.iteration = (async () => {
            for await (const event of harness.client) window.iterated.push(event);
            return "ended";
          })();
        }"""
    )
    running.ws.publish("t", "one")
    running.ws.publish("t", b"\x02")
    await page.wait_for_function("window.iterated.length === 2", timeout=WAIT)
    iterated = await page.evaluate(
        "window.iterated.map((e) => [e.type, e.topic, e.position.seq, "
        "typeof e.data === 'string' ? e.data : Array.from(e.data)])"
    )
    assert iterated == [["message", "t", 1, "one"], ["message", "t", 2, [2]]]
    # close() ends the iteration.
    await page.evaluate("harness.client.close()")
    assert await page.evaluate("window.iteration") == "ended"
    assert await page.evaluate("harness.states") == [["open", None], ["closed", 1000]]
    # The delay before attempt n: anywhere in [0, min(max, min * factor^n)].
    delays = await page.evaluate(
        """() => {
          const b = {min: 100, max: 1000, factor: 2, jitter: 1};
          const d = (n, r) => wshub.backoffDelay(b, n, () => r);
          return [[0, 1, 2, 3, 4, 10].map((n) => d(n, 1)), d(3, 0), d(3, 0.5),
                  wshub.backoffDelay({...b, jitter: 0}, 2, () => 0.3)];
        }"""
    )
    assert delays == [[100, 200, 400, 800, 1000, 1000], 0, 400, 400]
    await context.close()


# ------------------------------------------------------------ gaps, resets


async def page_that_saw_one(
    browser: Any, proxies: list[TcpProxy], running: Running
) -> tuple[Any, TcpProxy, str]:
    """A page following "t" through a proxy, after it got "a" (seq 1); and its client ID."""
    proxy = await start_proxy(proxies, running)
    context = await browser.new_context()
    page = await open_harness(context, proxy.http_url)
    client_id = await start_client(page, ["t"], backoff=FAST)
    running.ws.publish("t", "a")
    await wait_messages(page, "t", 1)
    return page, proxy, client_id


async def drop_and_hold(running: Running, proxy: TcpProxy, client_id: str) -> None:
    """Close the browser's connection (1012) and keep it from coming back."""
    closed = closed_ids(running)
    proxy.refuse = True
    assert running.ws.close(client_id, 1012, "restart")
    await wait_for(lambda: client_id in closed, 10.0, "the hub's close event")


async def test_a_gap_beyond_the_history_is_surfaced(
    start_server: StartServer, browser: Any, proxies: list[TcpProxy]
) -> None:
    running = await start_hub(start_server, history_size=5)
    page, proxy, client_id = await page_that_saw_one(browser, proxies, running)
    await drop_and_hold(running, proxy, client_id)
    for i in range(20):  # seq 2 .. 21: the history keeps the last 5
        running.ws.publish("t", f"x{i}")
    proxy.refuse = False
    events = await wait_messages(page, "t", 6)
    position = running.ws.topic_position("t")
    assert position is not None
    epoch = position.epoch
    assert events == [
        ["message", "t", epoch, 1, "a"],
        ["gap", "t", "truncated", 2, 16],
        *(["message", "t", epoch, seq, f"x{seq - 2}"] for seq in range(17, 22)),
    ]
    # Live messages follow the replay.
    running.ws.publish("t", "live")
    events = await wait_messages(page, "t", 7)
    assert events[-1] == ["message", "t", epoch, 22, "live"]
    await page.context.close()


async def test_a_reset_is_surfaced_when_the_history_is_gone(
    start_server: StartServer, browser: Any, proxies: list[TcpProxy]
) -> None:
    """The client comes back to a hub that never saw its epoch (a restarted
    node, in-memory history): told "reset", then live messages again."""
    first = await start_hub(start_server)
    second = await start_hub(start_server)
    page, proxy, client_id = await page_that_saw_one(browser, proxies, first)
    epoch = (await page.evaluate("harness.client.position('t')"))["epoch"]
    await drop_and_hold(first, proxy, client_id)
    proxy.upstream = second.port
    proxy.refuse = False
    await page.wait_for_function(
        "harness.events.some((e) => e[0] === 'gap' && e[1] === 't')", timeout=WAIT, polling=50
    )
    second.ws.publish("t", "b")
    events = await wait_messages(page, "t", 2)
    position = second.ws.topic_position("t")
    assert position is not None and position.epoch != epoch
    assert events == [
        ["message", "t", epoch, 1, "a"],
        ["gap", None, "reset", None, None],  # the direct stream: another hub's too
        ["gap", "t", "reset", None, None],
        ["message", "t", position.epoch, 1, "b"],
    ]
    await page.context.close()


async def test_direct_messages_sent_while_away_arrive_once(
    start_server: StartServer, browser: Any, proxies: list[TcpProxy]
) -> None:
    """``ws.send`` to a wshub.v1 client: kept while it is away, replayed after its hello."""
    running = await start_hub(start_server)
    page, proxy, client_id = await page_that_saw_one(browser, proxies, running)
    assert running.ws.send(client_id, "d0")
    await page.wait_for_function("harness.events.length === 2", timeout=WAIT, polling=50)
    await drop_and_hold(running, proxy, client_id)
    for i in range(1, 4):
        running.ws.send(client_id, f"d{i}")
    proxy.refuse = False
    await page.wait_for_function(
        "harness.events.filter((e) => e[0] === 'direct').length === 4", timeout=WAIT, polling=50
    )
    assert running.ws.send(client_id, "d4")
    await page.wait_for_function(
        "harness.events.filter((e) => e[0] === 'direct').length === 5", timeout=WAIT, polling=50
    )
    events = await page.evaluate("harness.events")
    direct = [e for e in events if e[0] == "direct"]
    assert [(e[3], e[4]) for e in direct] == [(i + 1, f"d{i}") for i in range(5)]
    assert len({e[2] for e in direct}) == 1
    assert await page.evaluate("harness.client.clientId") == client_id
    await page.context.close()


# ---------------------------------------------------------- close codes


async def test_a_policy_close_ends_the_client(start_server: StartServer, browser: Any) -> None:
    running = await start_hub(start_server)
    context = await browser.new_context()
    page = await open_harness(context, running.http_url)
    client_id = await start_client(page, ["t"], backoff=FAST)
    running.ws.close(client_id, 1008, "not welcome")
    await page.wait_for_function("harness.client.state === 'closed'", timeout=WAIT)
    assert await page.evaluate("harness.client.closeInfo.code") == 1008
    assert await page.evaluate("harness.states") == [["open", None], ["closed", 1008]]
    assert await page.evaluate("harness.errors") == [
        ["closed", "wshub: the server closed the connection with 1008 not welcome"]
    ]
    # A closed client refuses requests, saying why.
    refused = await page.evaluate(
        "harness.client.publish('t', 'x').then(() => 'sent', (e) => e.code + ': ' + e.message)"
    )
    assert refused == "closed: wshub: the server closed the connection with 1008 not welcome"
    assert await page.evaluate("harness.client.connections") == 1
    await context.close()


async def test_a_hub_without_wshub_v1_is_reported(start_server: StartServer, browser: Any) -> None:
    """Chromium fails a handshake whose answer picks no subprotocol: after
    ``maxAttempts`` such failures the client stops and says so."""
    running = await start_server(handler=harness_handler)  # no pub/sub layer
    serve_client(running.server)
    context = await browser.new_context()
    page = await open_harness(context, running.http_url)
    await page.evaluate(
        "(backoff) => { harness.start('/', {topics: ['t'], backoff, maxAttempts: 3}); }", FAST
    )
    await page.wait_for_function("harness.client.state === 'closed'", timeout=WAIT)
    assert await page.evaluate("harness.client.connections") == 0
    errors = await page.evaluate("harness.errors")
    assert errors == [["unreachable", f"wshub: no connection to {running.url}/ after 3 attempts"]]
    states = await page.evaluate("harness.states")
    assert states == [["reconnecting", 1006], ["reconnecting", 1006], ["closed", 1006]]
    await context.close()


async def test_an_open_socket_without_wshub_v1_stops_the_client(
    start_server: StartServer, browser: Any
) -> None:
    """Where a socket opens with another subprotocol (not Chromium's way: it
    fails such a handshake; other WebSocket implementations may not), the
    client sends nothing, closes it and stops, saying why.  The socket is a
    stand-in passed as ``options.WebSocket``."""
    running = await start_hub(start_server)
    context = await browser.new_context()
    page = await open_harness(context, running.http_url)
    await page.evaluate(
        """() => {
          window.offered = [];
          window.sent = [];
          class OtherProtocol {
            constructor(url, protocols) {
              window.offered.push([url, protocols]);
              this.protocol = "other";
              this.readyState = 0;
              setTimeout(() => { this.readyState = 1; this.onopen(); });
            }
            send(data) { window.sent.push(data); }
            addEventListener() {}
            close(code, reason) {
              window.closedWith = [code, reason];
              this.readyState = 3;
              setTimeout(() => this.onclose({code: 1000, reason}));
            }
          }
          harness.start("/", {topics: ["t"], WebSocket: OtherProtocol});
        }"""
    )
    await page.wait_for_function("harness.client.state === 'closed'", timeout=WAIT)
    assert await page.evaluate("window.offered") == [[running.url + "/", ["wshub.v1"]]]
    assert await page.evaluate("window.sent") == []
    assert await page.evaluate("window.closedWith") == [1000, "wshub.v1 expected"]
    errors = await page.evaluate("harness.errors")
    assert [code for code, _ in errors] == ["subprotocol"]
    assert 'does not speak wshub.v1 (it chose "other")' in errors[0][1]
    await context.close()


async def test_serve_mode_pubsub_serves_the_module(browser: Any) -> None:
    """``wshub serve --mode pubsub`` answers /wshub-client.js; a page of its
    origin imports it and publishes and receives through it."""
    from tests.integration.cli_support import free_port, start_program, wshub_command

    port = free_port()
    argv = [*wshub_command(), "serve", "--port", str(port), "--mode", "pubsub"]
    program = await start_program(argv, port)
    try:
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + CLIENT_PATH, timeout=10) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"] == "text/javascript; charset=utf-8"
            assert answer.read() == client_file().read_bytes()
        page = await browser.new_page()
        await page.goto(base + CLIENT_PATH)
        got = await page.evaluate(
            """async (url) => {
                const wshub = await import("/wshub-client.js");
                const received = [];
                let done;
                const arrived = new Promise((resolve) => { done = resolve; });
                const client = wshub.connect(url, {
                  onMessage(topic, position, data) {
                    received.push([topic, position.seq, data]);
                    if (received.length === 2) done();
                  },
                });
                await client.subscribe("news");
                await client.publish("news", "one");
                await client.publish("news", "two");
                await arrived;
                await client.close();
                return received;
            }""",
            f"ws://127.0.0.1:{port}/",
        )
        assert got == [["news", 1, "one"], ["news", 2, "two"]]
    finally:
        status, err = await program.stop()
    assert status == 0, err
    assert "Traceback" not in err


async def test_subscribe_with_the_last_messages(start_server: StartServer, browser: Any) -> None:
    """``subscribe(topic, {history: N})``: the last N kept, in order, then live."""
    running = await start_hub(start_server)
    for i in range(1, 11):
        running.ws.publish("news", f"n{i}")
    context = await browser.new_context()
    page = await open_harness(context, running.http_url)
    await start_client(page, [], backoff=FAST)
    answer = await page.evaluate("harness.client.subscribe('news', {history: 3})")
    assert answer["position"]["seq"] == 10 and answer["recovered"] is True
    await wait_messages(page, "news", 3)
    running.ws.publish("news", "n11")
    await wait_messages(page, "news", 4)
    news = await page.evaluate("harness.messages('news')")
    assert [(m[3], m[4]) for m in news] == [(8, "n8"), (9, "n9"), (10, "n10"), (11, "n11")]
    with pytest.raises(Exception, match="history is an integer"):
        await page.evaluate("harness.client.subscribe('other', {history: 5000})")
    await context.close()

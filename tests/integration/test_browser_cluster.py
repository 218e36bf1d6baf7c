"""The browser client in Chromium across ``kill -9`` of its node in a Redis cluster.

Two ``cluster_node.py`` processes (``--pubsub --history-size``: topic
histories in Redis Streams) and a real redis-server, each stopped by PID.
The page comes from a plain server in this process (the harness and
``/wshub-client.js``); its WebSocket goes through a loopback TCP proxy, the
stand-in for a load balancer: to node A, then, once A is killed, to node B.
A ``websockets`` client on node B publishes all along.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.integration.browser_support import TcpProxy, harness_handler, open_harness
from tests.integration.chromium_support import chromium
from tests.integration.cluster_support import Cluster, Node, RedisServer
from tests.integration.v1_support import V1Peer
from wshub import HttpServer
from wshub.browser import serve_client

pytestmark = pytest.mark.timeout(180)

NODE_OPTIONS = ("--ttl", "2", "--heartbeat", "0.5", "--pubsub", "--history-size", "1000")
FAST = {"min": 20, "max": 200, "factor": 2, "jitter": 1}
TOTAL = 300
WAIT = 30_000


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


@pytest.fixture
async def page_server() -> AsyncIterator[HttpServer]:
    """Serves the harness page and the module (no hub: the nodes are elsewhere)."""
    server = HttpServer(harness_handler)
    serve_client(server)
    await server.serve("127.0.0.1", 0)
    yield server
    await server.close(timeout=2.0)


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    started = TcpProxy(0)
    await started.start()
    yield started
    await started.close()


async def publish_acknowledged(
    publisher: V1Peer, killed: asyncio.Event, back: asyncio.Event, acknowledged: list[int]
) -> None:
    """``0 .. TOTAL-1``, each acknowledged: 100 of them while node A is dead
    and the page cannot connect, the rest while it catches up on node B."""
    for i in range(TOTAL):
        if i == 120:
            await killed.wait()
        elif i == 220:
            await back.wait()
        await publisher.send(type="publish", topic="feed", data=str(i), id=i)
        while (answer := await publisher.recv())["type"] != "published":
            assert answer["type"] == "message", answer
        assert answer["id"] == i, answer
        acknowledged.append(answer["position"]["seq"])


async def test_the_page_recovers_on_another_node_after_kill9(
    cluster: Cluster, browser: Any, page_server: HttpServer, proxy: TcpProxy
) -> None:
    a: Node = await cluster.node(*NODE_OPTIONS)
    b: Node = await cluster.node(*NODE_OPTIONS)
    proxy.upstream = a.port
    context = await browser.new_context()
    page = await open_harness(context, f"http://127.0.0.1:{page_server.port}")
    await page.evaluate(
        "([url, backoff]) => { harness.start(url, {topics: ['feed'], backoff}); }",
        [f"ws://127.0.0.1:{proxy.port}/", FAST],
    )
    answer = await page.evaluate("harness.client.subscribe('feed')")
    assert answer["position"]["seq"] == 0  # the stream exists in Redis from now on

    publisher = await V1Peer.connect(b)  # type: ignore[arg-type]  # a Node has .url
    await publisher.hello()
    killed, back = asyncio.Event(), asyncio.Event()
    acknowledged: list[int] = []
    publishing = asyncio.create_task(publish_acknowledged(publisher, killed, back, acknowledged))
    try:
        await page.wait_for_function(
            "harness.messages('feed').length >= 30", timeout=WAIT, polling=50
        )
        proxy.refuse = True
        a.kill9()
        await a.proc.wait()
        killed.set()
        # Publications go on through node B while A is dead.
        await wait_for(lambda: len(acknowledged) == 220, 30.0, "220 publications")
        assert len(await page.evaluate("harness.messages('feed')")) < 220
        proxy.upstream = b.port
        proxy.refuse = False
        back.set()
        await page.wait_for_function(
            f"harness.messages('feed').length >= {TOTAL}", timeout=WAIT, polling=50
        )
        await publishing
    finally:
        publishing.cancel()
    events = await page.evaluate("harness.events")
    feed = [e for e in events if e[1] == "feed"]
    assert [(e[0], e[4]) for e in feed] == [("message", str(i)) for i in range(TOTAL)]
    assert [e[3] for e in feed] == list(range(1, TOTAL + 1))
    # The direct stream: the same (nothing sent to it, so nothing shown) if
    # the cookie gave the page its ID back on B, a reset (said as such) if it
    # came back while A still listed its ID and got a new one.
    others = [e for e in events if e[1] != "feed"]
    assert others in ([], [["gap", None, "reset", None, None]]), others
    assert len({e[2] for e in feed}) == 1  # one epoch: the stream in Redis
    assert acknowledged == list(range(1, TOTAL + 1))
    states = await page.evaluate("harness.states")
    assert ["reconnecting", 1006] in states, states
    assert states[-1] == ["open", None]
    assert await page.evaluate("harness.client.connections") >= 2
    await publisher.close()
    await context.close()


async def test_the_page_retries_a_resubscribe_refused_unavailable(
    cluster: Cluster, redis: RedisServer, browser: Any, page_server: HttpServer, proxy: TcpProxy
) -> None:
    """The page reconnects while its node cannot reach Redis: its resubscribe
    is refused "unavailable" and asked again with backoff, never dropped;
    once Redis is back the topic flows again (a reset gap: the restarted
    Redis kept nothing, then the new publications)."""
    a: Node = await cluster.node(*NODE_OPTIONS)
    proxy.upstream = a.port
    context = await browser.new_context()
    page = await open_harness(context, f"http://127.0.0.1:{page_server.port}")
    await page.evaluate(
        "([url, backoff]) => { harness.start(url, {topics: ['feed'], backoff}); }",
        [f"ws://127.0.0.1:{proxy.port}/", FAST],
    )
    await page.evaluate("harness.client.subscribe('feed')")
    publisher = await V1Peer.connect(a)  # type: ignore[arg-type]  # a Node has .url
    await publisher.hello()
    await publisher.send(type="publish", topic="feed", data="before", id=1)
    await page.wait_for_function("harness.messages('feed').length === 1", timeout=WAIT)

    redis.stop()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20.0
    while (await a.state())["connected"]:
        assert loop.time() < deadline, "the node did not notice that Redis is gone"
        await asyncio.sleep(0.05)
    proxy.cut()  # the page reconnects to A, which cannot read the history
    refused = "history not readable"
    await wait_for(lambda: a.log_text().count(refused) >= 3, 30.0, "three refused subscribes")
    await redis.start()
    while not (await a.state())["connected"]:
        assert loop.time() < deadline + 20.0, "the node did not reconnect to Redis"
        await asyncio.sleep(0.05)
    await page.wait_for_function(
        "harness.events.some(e => e[0] === 'gap' && e[1] === 'feed')", timeout=WAIT
    )
    await publisher.send(type="publish", topic="feed", data="after", id=2)
    await page.wait_for_function("harness.messages('feed').length === 2", timeout=WAIT)
    feed = [e for e in await page.evaluate("harness.events") if e[1] == "feed"]
    assert [(e[0], e[2] if e[0] == "gap" else e[4]) for e in feed] == [
        ("message", "before"),
        ("gap", "reset"),
        ("message", "after"),
    ]
    assert "feed" in await page.evaluate("harness.client.topics")
    await publisher.close()
    await context.close()

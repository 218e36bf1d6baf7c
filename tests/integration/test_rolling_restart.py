"""Restarts of ``wshub serve --mode pubsub --workers 2`` under a steady stream
of publications: nothing is lost, nothing comes twice (#18 item 4).

Real parts only: a redis-server (the workers' backplane, and the topics'
history in Redis Streams), the ``wshub serve`` supervisor and its workers,
each stopped by PID.  The clients are two ``wshub.client`` clients on the
one port, where the kernel spreads connections over the workers:

- a publisher sends "1", "2", "3" ... without pause, each once the previous
  one was acknowledged; a publication answered ``unavailable`` (its worker
  is draining and has left the cluster) or cut off by the connection's close
  (``Disconnected``) is sent again;
- a subscriber follows the topic and, reconnected, resumes from the last
  position it saw.

After a rolling restart (SIGHUP: every worker replaced, checked by the PIDs
``/readyz`` names) or SIGTERM of one worker, the subscriber has every number
exactly once, in order, each at the next position; both clients were moved
and every connection attempt eventually succeeded (failed attempts are
counted from the client's log; neither client gave up).

What makes the re-sent publication safe: a draining worker leaves the
cluster before it closes its clients, and leaving answers every publication
it accepted (``published`` once Redis kept it, ``unavailable`` if it never
reached Redis) before the first close.  So in a graceful restart a
``Disconnected`` publication was never published, and sending it again
cannot make a duplicate; the exactly-once check below is what shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import wshub.client
from tests.integration.cluster_support import RedisServer
from tests.integration.workers_support import (
    Supervised,
    connect_tagged,
    serve_two_workers,
    worker_pids,
)

pytestmark = pytest.mark.timeout(240)

TOPIC = "feed"
END = "end"


@pytest.fixture
async def started() -> AsyncIterator[list[Supervised]]:
    programs: list[Supervised] = []
    yield programs
    for program in programs:
        program.kill_all()


def pubsub_workers(redis: RedisServer, tmp_path: Path, started: list[Supervised]) -> Supervised:
    program = serve_two_workers(
        redis.url,
        tmp_path,
        "--mode",
        "pubsub",
        "--history-size",
        "100000",
        "--drain-window",
        "1",
        "--drain-timeout",
        "20",
    )
    started.append(program)
    return program


class FailedAttempts(logging.Handler):
    """Counts the reconnection attempts ``wshub.client`` logs as failed."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "reconnect failed" in message:
            self.lines.append(message)


@contextlib.contextmanager
def failed_attempts() -> Iterator[FailedAttempts]:
    logger = logging.getLogger("wshub.client")
    handler = FailedAttempts()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class SteadyPublisher:
    """Publishes "1", "2" ... until stopped, then END; retries what was not published."""

    def __init__(self, client: wshub.client.Client) -> None:
        self.client = client
        self.acknowledged = 0  # the last number answered "published"
        self.unavailable = 0  # answers "unavailable" (a draining worker)
        self.cut_off = 0  # publications cut off by a close (Disconnected)
        self.stopping = False

    async def publish(self, data: str) -> None:
        # Each try is bounded by the client (open_timeout, and the server's
        # answer or close); 2,000 tries is "never got through": a failure.
        for _ in range(2000):
            try:
                await self.client.publish(TOPIC, data)
                return
            except wshub.client.Disconnected:
                self.cut_off += 1
            except wshub.client.RequestError as exc:
                if exc.code != "unavailable":
                    raise
                self.unavailable += 1
                await asyncio.sleep(0.01)
        raise AssertionError(f"publication {data} never got through")

    async def run(self) -> None:
        number = 0
        while not self.stopping:
            number += 1
            await self.publish(str(number))
            self.acknowledged = number
        await self.publish(END)


async def wait_for(condition: Any, what: str, tries: int = 3000) -> None:
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def collect(subscriber: wshub.client.Client, into: list[Any]) -> None:
    async for item in subscriber:
        into.append(item)
        if item[0] == TOPIC and item[2] == END:
            return
    raise AssertionError("the subscriber's iteration ended before the end marker")


def check_delivery(items: list[Any], sent: int) -> None:
    """Every number once, in order, at consecutive positions of one epoch;
    the only gaps allowed are the direct stream's (kept per worker)."""
    gaps = [item[2] for item in items if isinstance(item[2], wshub.client.Gap)]
    assert all(gap.topic is None and gap.reason == "reset" for gap in gaps), gaps
    feed = [item for item in items if item[0] == TOPIC]
    data = [item[2] for item in feed]
    expected = [str(i) for i in range(1, sent + 1)] + [END]
    if data != expected:
        seen = [d for d in data if d != END]
        missing = sorted(set(range(1, sent + 1)) - {int(d) for d in seen})
        twice = sorted({d for d in seen if seen.count(d) > 1}, key=int)
        raise AssertionError(
            f"{len(data)} delivered for {sent} + end: missing {missing[:20]}, twice {twice[:20]}"
        )
    positions = [item[1] for item in feed]
    assert len({p.epoch for p in positions}) == 1, positions[:3]
    seqs = [p.seq for p in positions]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs[:20]


class Stream:
    """A subscriber and a steady publisher on one port, and what the subscriber got."""

    def __init__(self, port: int) -> None:
        url = f"ws://127.0.0.1:{port}/"
        self.subscriber = wshub.client.connect(url, min_delay=0.05, max_delay=0.5)
        self.publisher = wshub.client.connect(url, min_delay=0.05, max_delay=0.5)
        self.steady = SteadyPublisher(self.publisher)
        self.items: list[Any] = []

    async def subscribe(self) -> None:
        await self.subscriber.start()
        await self.subscriber.subscribe(TOPIC)

    async def through(self, disturb: Callable[[], Awaitable[None]]) -> None:
        """Publish, ``disturb()`` once 50 came, publish 50 more, then END."""
        await self.publisher.start()
        steady = self.steady
        try:
            receiving = asyncio.ensure_future(collect(self.subscriber, self.items))
            publishing = asyncio.ensure_future(steady.run())
            await wait_for(lambda: len(self.items) >= 50 or publishing.done(), "50 delivered")
            await disturb()
            mark = steady.acknowledged
            await wait_for(
                lambda: steady.acknowledged >= mark + 50 or publishing.done(),
                "50 more published after it",
            )
            steady.stopping = True
            await asyncio.wait_for(publishing, 60)
            await asyncio.wait_for(receiving, 60)
        finally:
            await self.publisher.close()
            await self.subscriber.close()

    async def check(self, program: Supervised, attempts: FailedAttempts) -> None:
        """Stop the workers, then: every number once, in order; say how it went."""
        program.signal(signal.SIGTERM)
        assert await program.wait(60) == 0
        steady = self.steady
        check_delivery(self.items, steady.acknowledged)
        print(
            f"\n{steady.acknowledged} publications delivered once each; connections: "
            f"subscriber {self.subscriber.connections}, publisher {self.publisher.connections}; "
            f"publications re-sent: {steady.unavailable} unavailable, {steady.cut_off} cut off; "
            f"{len(attempts.lines)} connection attempts failed, then succeeded"
        )
        log = program.log_text()
        assert "Traceback" not in log
        assert "did not stop" not in log  # every drain ended by itself, none was killed


async def test_rolling_restarts_lose_no_publication(
    redis: RedisServer, tmp_path: Path, started: list[Supervised]
) -> None:
    program = pubsub_workers(redis, tmp_path, started)
    port = program.port
    await worker_pids(port, 2)

    async def rolling_restarts() -> None:
        # Two in a row: four drains, each a chance for a publication in flight.
        for done in (1, 2):
            before = await worker_pids(port, 2)
            program.signal(signal.SIGHUP)
            await wait_for(
                lambda: program.log_text().count("rolling restart done") >= done,  # noqa: B023
                f"rolling restart {done} done",
                tries=9000,
            )
            after = await worker_pids(port, 2)
            assert not before & after, (before, after)  # both workers were replaced

    with failed_attempts() as attempts:
        stream = Stream(port)
        await stream.subscribe()
        await stream.through(rolling_restarts)
    await stream.check(program, attempts)
    # Every worker was replaced: each client was moved at least once.
    assert stream.subscriber.connections >= 2, stream.subscriber.connections
    assert stream.publisher.connections >= 2, stream.publisher.connections


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def established_on(pid: int, port: int) -> int:
    """How many established TCP connections process ``pid`` holds on its
    local ``port`` (its socket inodes matched in /proc/net/tcp)."""
    inodes = socket_inodes(pid)
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count


async def test_sigterm_of_one_worker_moves_its_clients_to_the_other(
    redis: RedisServer, tmp_path: Path, started: list[Supervised]
) -> None:
    program = pubsub_workers(redis, tmp_path, started)
    port = program.port
    pids = await worker_pids(port, 2)
    with failed_attempts() as attempts:
        stream = Stream(port)
        await stream.subscribe()
        # The subscriber is the only client yet: its worker is the one with
        # an established connection on the port.
        await wait_for(
            lambda: sum(established_on(pid, port) for pid in pids) == 1, "one connection"
        )
        (doomed,) = [pid for pid in pids if established_on(pid, port) == 1]
        (other,) = pids - {doomed}

        async def sigterm_its_worker() -> None:
            os.kill(doomed, signal.SIGTERM)
            await wait_for(lambda: stream.subscriber.connections >= 2, "the subscriber is back")
            await program.wait_log(f"(pid {doomed}) exited with status 0")

        await stream.through(sigterm_its_worker)
    # The supervisor replaced the worker that went away (it did not ask it to).
    after = await worker_pids(port, 2, exclude=[doomed])
    assert other in after and doomed not in after, (other, doomed, after)
    await stream.check(program, attempts)


async def test_a_publication_on_one_worker_reaches_subscribers_on_the_other(
    redis: RedisServer, tmp_path: Path, started: list[Supervised]
) -> None:
    # wshub.v1 spoken by hand by websockets clients, each on a known worker.
    program = pubsub_workers(redis, tmp_path, started)
    port = program.port
    pids = await worker_pids(port, 2)
    by_pid: dict[int, list[Any]] = {pid: [] for pid in pids}
    try:
        for _ in range(60):
            pid, conn = await connect_tagged(port, subprotocols=["wshub.v1"])
            assert conn.subprotocol == "wshub.v1"
            by_pid[pid].append(conn)
            if all(len(conns) >= 2 for conns in by_pid.values()):
                break
        else:
            raise AssertionError(f"the kernel did not spread 60 connections: {by_pid}")
        first, second = sorted(pids)
        publisher = by_pid[first][0]
        subscribers = by_pid[first][1:] + by_pid[second]
        for number, conn in enumerate(subscribers):
            await conn.send(json.dumps({"type": "subscribe", "topic": TOPIC, "id": number}))
            answer = await next_of(conn, "subscribed")
            assert answer["topic"] == TOPIC
        await publisher.send(
            json.dumps({"type": "publish", "topic": TOPIC, "data": "across", "id": 99})
        )
        published = await next_of(publisher, "published")
        for conn in subscribers:
            message = await next_of(conn, "message")
            assert (message["topic"], message["data"]) == (TOPIC, "across")
            assert message["seq"] == published["position"]["seq"]
            assert message["epoch"] == published["position"]["epoch"]
    finally:
        for conns in by_pid.values():
            for conn in conns:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)


async def next_of(conn: Any, kind: str) -> dict[str, Any]:
    """The next wshub.v1 message of type ``kind`` (the ``welcome`` and others skipped)."""
    for _ in range(100):
        message = json.loads(await asyncio.wait_for(conn.recv(), 10))
        assert message["type"] != "error", message
        if message["type"] == kind:
            return message  # type: ignore[no-any-return]
    raise AssertionError(f"no {kind!r} in 100 messages")

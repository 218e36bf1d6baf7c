"""``wshub serve --workers N``: N processes on one port, one hub through a real redis-server.

The clients are ``websockets`` clients; each first asks ``/readyz`` on its
connection (the body names the worker's PID), then upgrades that connection,
so a test knows which worker serves which client.  Every process is stopped
by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.integration.cli_support import ROOT, free_port
from tests.integration.cluster_support import RedisServer
from tests.integration.workers_support import (
    Supervised,
    children_of,
    connect_tagged,
    serve_workers,
    worker_pids,
)
from wshub.workers import EXIT_CONFIG

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[list[Supervised]]:
    programs: list[Supervised] = []
    yield programs
    for program in programs:
        program.kill_all()


async def two_workers(
    redis: RedisServer, tmp_path: Path, started: list[Supervised], *extra: str
) -> tuple[Supervised, set[int]]:
    port = free_port()
    program = serve_workers(
        port,
        tmp_path,
        "--workers",
        "2",
        "--backplane",
        redis.url,
        "--deflate",
        "off",
        *extra,
    )
    started.append(program)
    pids = await worker_pids(port, 2)
    assert set(children_of(program.proc.pid)) == pids
    return program, pids


async def clients_on_every_worker(
    port: int, pids: set[int], path: str = "/"
) -> dict[int, list[Any]]:
    """Connect until every worker has at least two clients (at most 60 tries)."""
    by_pid: dict[int, list[Any]] = {pid: [] for pid in pids}
    for _ in range(60):
        pid, conn = await connect_tagged(port, path)
        by_pid[pid].append(conn)
        if all(len(c) >= 2 for c in by_pid.values()):
            return by_pid
    raise AssertionError(f"the kernel did not spread 60 connections: {by_pid}")


async def close_all(by_pid: dict[int, list[Any]]) -> None:
    for conns in by_pid.values():
        for conn in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)


async def test_a_broadcast_reaches_the_clients_of_every_worker(
    redis: RedisServer, tmp_path: Path, started: list[Supervised]
) -> None:
    program, pids = await two_workers(redis, tmp_path, started, "--mode", "broadcast")
    by_pid = await clients_on_every_worker(program.port, pids)
    try:
        everyone = [c for conns in by_pid.values() for c in conns]
        for pid in sorted(pids):  # from a client of each worker in turn
            sender = by_pid[pid][0]
            text = f"from a client of worker {pid}"
            await sender.send(text)
            for conn in everyone:
                assert await asyncio.wait_for(conn.recv(), 10) == text
    finally:
        await close_all(by_pid)
    log = program.log_text()
    assert "Traceback" not in log, log


async def test_a_killed_worker_is_replaced_and_its_clients_come_back(
    redis: RedisServer, tmp_path: Path, started: list[Supervised]
) -> None:
    program, pids = await two_workers(redis, tmp_path, started, "--mode", "broadcast")
    by_pid = await clients_on_every_worker(program.port, pids)
    victim, survivor = sorted(pids)
    try:
        os.kill(victim, signal.SIGKILL)
        for conn in by_pid[victim]:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(conn.recv(), 10)
            assert conn.close_code == 1006  # the process died: no closing handshake
        # The supervisor starts another worker on the port.
        (replacement,) = await worker_pids(program.port, 1, exclude=pids)
        await program.wait_log("was killed by SIGKILL")
        assert set(children_of(program.proc.pid)) == {survivor, replacement}
        # A client reconnecting is served, on whichever worker, as one hub.
        again: dict[int, list[Any]] = {survivor: [], replacement: []}
        for _ in range(60):
            pid, conn = await connect_tagged(program.port)
            again[pid].append(conn)
            if again[replacement] and again[survivor]:
                break
        assert again[replacement] and again[survivor], again
        await again[replacement][0].send("after the replacement")
        for conn in [*by_pid[survivor], *again[survivor], *again[replacement]]:
            assert await asyncio.wait_for(conn.recv(), 10) == "after the replacement"
        await close_all(again)
    finally:
        await close_all(by_pid)


async def run_script(script: str, *args: str) -> tuple[int, str]:
    """Run a Python script to its end (60 s at most): its exit status and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_several_workers_without_a_backplane_is_an_error(tmp_path: Path) -> None:
    port = free_port()
    program = serve_workers(port, tmp_path, "--workers", "2")
    status = await program.wait(30)
    assert status == 2
    log = program.log_text()
    assert "--workers 2 needs --backplane" in log, log
    assert "Traceback" not in log


async def test_several_workers_without_a_backplane_from_python(tmp_path: Path) -> None:
    # The Python equivalent: wshub.workers.run(factory, workers=N).
    script = textwrap.dedent(
        """
        import sys
        from wshub import HttpServer, WebSocket
        from wshub import workers

        def app():
            server = HttpServer()
            WebSocket(server)  # no backplane
            return server

        sys.exit(workers.run(app, workers=2, port=int(sys.argv[1])))
        """
    )
    status, text = await run_script(script, str(free_port()))
    assert status == EXIT_CONFIG, text
    assert "2 workers need a backplane" in text
    assert text.count("need a backplane") == 1, text  # said by the first worker only
    assert "Traceback" not in text


@pytest.mark.parametrize("code", [1012, 1001])
async def test_sigterm_drains_every_worker(
    code: int, redis: RedisServer, tmp_path: Path, started: list[Supervised]
) -> None:
    program, pids = await two_workers(
        redis,
        tmp_path,
        started,
        "--mode",
        "echo",
        "--drain-window",
        "1",
        "--drain-timeout",
        "10",
        "--drain-code",
        str(code),
    )
    by_pid = await clients_on_every_worker(program.port, pids)
    try:
        program.signal(signal.SIGTERM)
        for conns in by_pid.values():
            for conn in conns:
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(conn.recv(), 15)
                assert conn.close_code == code
        # Within the drain timeout (10 s) plus the supervisor's grace.
        assert await program.wait(25) == 0
    finally:
        await close_all(by_pid)
    log = program.log_text()
    assert "every worker has exited" in log
    assert "Traceback" not in log, log


async def test_a_worker_that_keeps_dying_is_restarted_with_backoff(tmp_path: Path) -> None:
    # The first worker starts; once it is killed, its replacements fail at once
    # (the factory raises when the flag file exists): each is started later.
    flag = tmp_path / "fail"
    script = textwrap.dedent(
        """
        import logging, os, sys
        from wshub import HttpServer, workers
        logging.basicConfig(level=logging.INFO)

        def app():
            if os.path.exists(sys.argv[2]):
                raise RuntimeError("no database")
            return HttpServer(health=True)

        sys.exit(workers.run(app, workers=1, port=int(sys.argv[1])))
        """
    )
    port = free_port()
    log_path = tmp_path / "backoff.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(port), str(flag)],
            cwd=str(ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    program = Supervised(proc, port, log_path)
    try:
        (first,) = await worker_pids(port, 1)
        flag.write_text("")
        os.kill(first, signal.SIGKILL)
        await program.wait_log("starting another in 0.4s")
        program.signal(signal.SIGTERM)
        assert await program.wait(30) == 0
    finally:
        program.kill_all()
    text = program.log_text()
    delays = [line.rsplit(" ", 1)[1] for line in text.splitlines() if "starting another" in line]
    assert delays[:4] == ["0.0s", "0.1s", "0.2s", "0.4s"], text
    assert "RuntimeError: no database" in text


async def test_a_first_worker_that_cannot_start_stops_the_supervisor(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from wshub import workers

        def app():
            raise RuntimeError("no database")

        sys.exit(workers.run(app, workers=2, port=int(sys.argv[1])))
        """
    )
    status, text = await run_script(script, str(free_port()))
    assert status == 1, text
    assert text.count("RuntimeError: no database") == 1, text  # no restart, no second worker

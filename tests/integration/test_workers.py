"""``wshub serve --workers N``: N processes on one port, one hub through a real redis-server.

The clients are ``websockets`` clients; each first asks ``/readyz`` on its
connection (the body names the worker's PID), then upgrades that connection,
so a test knows which worker serves which client.  Every process is stopped
by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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

from tests.conftest import wait_for
from tests.integration.cli_support import ROOT, free_port
from tests.integration.cluster_support import RedisServer
from tests.integration.workers_support import (
    CLUSTER_SECRET,
    Supervised,
    children_of,
    connect_tagged,
    serve_two_workers,
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
    program = serve_two_workers(redis.url, tmp_path, *extra)
    started.append(program)
    pids = await worker_pids(program.port, 2)
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


async def test_workers_without_a_cluster_secret_from_python(redis: RedisServer) -> None:
    # wshub serve makes one secret for its workers; from Python the hub needs
    # one (WSHUB_SECRET, WebSocket(secret=...)): without, one line, no traceback.
    script = textwrap.dedent(
        """
        import os, sys
        from wshub import HttpServer, WebSocket
        from wshub import workers

        os.environ.pop("WSHUB_SECRET", None)

        def app():
            server = HttpServer()
            WebSocket(server, backplane=sys.argv[2])
            return server

        sys.exit(workers.run(app, workers=2, port=int(sys.argv[1])))
        """
    )
    status, text = await run_script(script, str(free_port()), redis.url)
    assert status == EXIT_CONFIG, text
    assert text.count("no cluster secret") == 1, text  # said by the first worker only
    assert "WSHUB_SECRET" in text
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


async def test_sighup_during_the_drain_starts_no_worker(
    redis: RedisServer, tmp_path: Path, started: list[Supervised]
) -> None:
    program, pids = await two_workers(
        redis, tmp_path, started, "--mode", "echo", "--drain-window", "2", "--drain-timeout", "10"
    )
    by_pid = await clients_on_every_worker(program.port, pids)
    try:
        program.signal(signal.SIGTERM)
        # Once the supervisor took SIGTERM (both pending, Linux would hand
        # it SIGHUP first: the lower number).
        await wait_for(
            lambda: "SIGTERM: draining every worker" in program.log_text(), what="the drain"
        )
        program.signal(signal.SIGHUP)
        for conns in by_pid.values():
            for conn in conns:
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(conn.recv(), 15)
                assert conn.close_code == 1012
        assert await program.wait(25) == 0
    finally:
        await close_all(by_pid)
    log = program.log_text()
    assert "SIGHUP while draining: ignored" in log, log
    assert log.count(" started (pid ") == 2, log  # the first two only
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


async def test_limit_by_ip_counts_over_every_worker(
    redis: RedisServer, tmp_path: Path, started: list[Supervised]
) -> None:
    program, pids = await two_workers(
        redis, tmp_path, started, "--mode", "echo", "--limit-by-ip", "3"
    )
    admitted: dict[int, list[Any]] = {pid: [] for pid in pids}
    try:
        # Three clients of 127.0.0.1 on both workers (2 + 1): neither worker
        # reaches the limit alone, so only the cluster count can refuse more.
        for _ in range(40):
            count = sum(len(c) for c in admitted.values())
            if count == 3 and all(admitted.values()):
                break
            if count == 3:  # all on one worker: give one back and try again
                await admitted[max(admitted, key=lambda p: len(admitted[p]))].pop().close()
            pid, conn = await connect_tagged(program.port)
            admitted[pid].append(conn)
            await asyncio.sleep(0.2)  # its join reaches the other worker (one pub/sub hop)
        assert sorted(len(c) for c in admitted.values()) == [1, 2], admitted
        refused = 0
        for _ in range(10):
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(f"ws://127.0.0.1:{program.port}/", open_timeout=10)
            assert info.value.response.status_code == 429
            refused += 1
        assert refused == 10
        # One leaves: a place is free again, on whichever worker.
        await next(c for c in admitted.values() if len(c) == 2).pop().close()
        for _ in range(100):
            try:
                conn = await websockets.connect(f"ws://127.0.0.1:{program.port}/")
            except websockets.InvalidStatus:
                await asyncio.sleep(0.05)  # the leave has not reached that worker yet
                continue
            admitted[next(iter(admitted))].append(conn)
            break
        else:
            raise AssertionError("no place came free after a client left")
    finally:
        await close_all(admitted)


async def test_send_between_workers_from_python(redis: RedisServer, tmp_path: Path) -> None:
    # wshub.workers.run with an application of its own: every client learns
    # its ID and worker, and sends to another client by ID, on any worker.
    script = textwrap.dedent(
        """
        import json, logging, os, sys
        from wshub import HttpServer, WebSocket, workers
        logging.basicConfig(level=logging.INFO)

        def app():
            server = HttpServer()
            ws = WebSocket(server, backplane=sys.argv[2])

            @ws.on("open")
            def opened(client_id):
                ws.send(client_id, json.dumps({"id": client_id, "pid": os.getpid()}))

            @ws.on("message")
            def relay(client_id, data):
                order = json.loads(data)
                ws.send(order["to"], json.dumps({"from": client_id, "pid": os.getpid()}))

            return server

        sys.exit(workers.run(app, workers=2, port=int(sys.argv[1])))
        """
    )
    port = free_port()
    log_path = tmp_path / "python-workers.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(port), redis.url],
            cwd=str(ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, WSHUB_SECRET=CLUSTER_SECRET),
        )
    program = Supervised(proc, port, log_path)
    clients: dict[int, list[tuple[str, Any]]] = {}
    try:
        await program.wait_log("worker 0 (pid", timeout=30)
        await program.wait_log("worker 1 (pid", timeout=30)  # "... is listening"
        for _ in range(60):
            conn = await websockets.connect(f"ws://127.0.0.1:{port}/", open_timeout=10)
            welcome = json.loads(await asyncio.wait_for(conn.recv(), 10))
            clients.setdefault(welcome["pid"], []).append((welcome["id"], conn))
            if len(clients) == 2 and all(len(c) >= 2 for c in clients.values()):
                break
        assert len(clients) == 2, clients
        everyone = [c for per_worker in clients.values() for c in per_worker]
        ids = [client_id for client_id, _conn in everyone]
        assert len(set(ids)) == len(ids)  # unique over both workers
        (pid_a, on_a), (pid_b, on_b) = clients.items()
        # The relay runs on the sender's worker and names it: the message
        # crossed to the target's worker through the backplane.
        for (sender_id, sender), (target_id, target), sender_pid in [
            (on_a[0], on_b[0], pid_a),
            (on_b[1], on_a[1], pid_b),
        ]:
            await asyncio.sleep(0.2)  # the target's join reaches the other worker
            await sender.send(json.dumps({"to": target_id}))
            got = json.loads(await asyncio.wait_for(target.recv(), 10))
            assert got == {"from": sender_id, "pid": sender_pid}
        program.signal(signal.SIGTERM)
        for _client_id, conn in everyone:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(conn.recv(), 15)
            assert conn.close_code == 1012
        assert await program.wait(30) == 0
    finally:
        for per_worker in clients.values():
            for _client_id, conn in per_worker:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)
        program.kill_all()
    assert "Traceback" not in program.log_text()


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def test_workers_drain_when_the_supervisor_is_killed(
    redis: RedisServer, tmp_path: Path, started: list[Supervised]
) -> None:
    program, pids = await two_workers(redis, tmp_path, started, "--mode", "echo")
    by_pid = await clients_on_every_worker(program.port, pids)
    try:
        os.kill(program.proc.pid, signal.SIGKILL)
        program.proc.wait(10)
        for conns in by_pid.values():
            for conn in conns:
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(conn.recv(), 20)
                assert conn.close_code == 1012
        for _ in range(1000):
            if all(gone(pid) for pid in pids):
                break
            await asyncio.sleep(0.02)
        assert all(gone(pid) for pid in pids)
        assert "the supervisor" in program.log_text()
    finally:
        await close_all(by_pid)
        for pid in pids:  # orphans of a failed test: stopped by PID
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


async def test_a_worker_still_starting_when_the_supervisor_is_killed_never_serves(
    tmp_path: Path,
) -> None:
    # The supervisor dies while a worker is still building its app: the
    # worker must see that its parent changed, not take init for its
    # supervisor and serve on, unsupervised, for ever.
    script = textwrap.dedent(
        """
        import os, sys, time
        from pathlib import Path
        from wshub import HttpServer, WebSocket
        from wshub import workers

        def app():
            Path(sys.argv[2]).write_text(str(os.getpid()))
            time.sleep(1.5)  # the supervisor is killed meanwhile
            server = HttpServer()
            WebSocket(server)
            return server

        sys.exit(workers.run(app, workers=1, port=int(sys.argv[1])))
        """
    )
    port = free_port()
    pid_file = tmp_path / "worker.pid"
    log_path = tmp_path / "supervisor.log"
    with log_path.open("wb") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-c", script, str(port), str(pid_file)],
            cwd=str(ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    worker = 0
    try:
        await wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", timeout=30)
        worker = int(pid_file.read_text())
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.wait(10)
        for _ in range(1000):
            if gone(worker):
                break
            await asyncio.sleep(0.02)
        log_text = log_path.read_text()
        assert gone(worker), f"worker {worker} serves on without its supervisor:\n{log_text}"
        assert f"the supervisor {supervisor.pid} is gone" in log_text, log_text
        assert "Traceback" not in log_text, log_text
        with pytest.raises(OSError):  # it never listened
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(10)
        if worker and not gone(worker):  # the orphan of a failed test: stopped by PID
            os.kill(worker, signal.SIGKILL)

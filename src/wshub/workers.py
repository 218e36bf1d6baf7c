"""Workers: N processes serving one port as one hub (``wshub serve --workers N``).

:func:`run` is the supervisor.  It forks ``workers`` child processes; each
calls ``app_factory()`` to build its own :class:`~wshub.HttpServer` and hub,
runs its own event loop and listens on the same address with
``SO_REUSEPORT``, so the kernel spreads new connections over the workers.
The hubs are joined by their backplane (Redis): ``send``, ``broadcast``,
unique client IDs and the per-IP limit then work across workers as across
any cluster nodes (see ``docs/scaling.md``).

Why a factory called in each child rather than forking a server built in
the parent (gunicorn's ``--preload``): everything a hub holds is per
process - its event loop, its Redis connections, its node identity in the
cluster, its clients - and so is what an application builds around it
(database pools, threads).  A child that builds its own has nothing to
share by accident; a forked copy of a built one would share the node ID
and whatever the application had opened.

The supervisor (the parent) holds no socket and runs no event loop:

- a worker that dies is started again, at once the first time, then with
  an exponential backoff (0.1 s doubling to 10 s) while it keeps dying
  before it has served for 10 s; its clients reconnect to the others;
- the first worker starts alone and the others once it listens, so that
  a configuration that cannot work (several workers without a backplane,
  a factory that raises, a port in use) is reported once, by the first,
  and the supervisor returns non-zero instead of restarting it forever;
- SIGTERM or SIGINT: every worker drains (:meth:`HttpServer.drain`), the
  supervisor waits for them (killing one that outlives its
  ``drain_timeout`` by 10 s) and returns 0; a second one makes the workers
  close their remaining clients at once;
- SIGHUP: a rolling restart.  One worker at a time: a new one is started
  and the old one drains once the new one listens, so the port always has
  a listener; the next begins when the old one has exited.

Workers ignore SIGINT and SIGHUP (a terminal sends them to the whole
process group; the supervisor decides) and drain on SIGTERM, or when they
find that their supervisor is gone (checked every second).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import select
import signal
import ssl as ssl_module
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .backplane import ClusterSecretMissing
from .hub import WebSocket
from .transport.server import HttpServer, event_loop_factory, run_on_loop

__all__ = ["EXIT_CONFIG", "run"]

log = logging.getLogger("wshub.workers")

#: Exit status when the configuration cannot work (e.g. several workers
#: without a backplane): the supervisor stops instead of restarting.
EXIT_CONFIG = 78  # EX_CONFIG of sysexits.h

_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 10.0
_STABLE_AFTER = 10.0  # a worker that served this long resets its backoff
_KILL_GRACE = 10.0  # past its drain_timeout, a stopping worker is killed
_ORPHAN_CHECK = 1.0  # how often a worker checks that its supervisor lives


@dataclass
class _Listen:
    """Where and how every worker listens."""

    host: str | list[str] | None
    port: int
    ssl: ssl_module.SSLContext | None
    backlog: int


@dataclass
class _Worker:
    slot: int  # 0 .. workers-1: which place it fills
    pid: int
    ready_fd: int  # read end of the pipe the worker reports on
    started: float
    ready: bool = False
    drain_timeout: float = 30.0
    stop_sent: float | None = None  # when SIGTERM was sent
    buffer: bytes = b""


@dataclass
class _Rolling:
    """A rolling restart in progress: the slots still to restart."""

    slots: list[int]
    old: _Worker | None = None  # draining, or waiting for its replacement
    new: _Worker | None = None


@dataclass
class _State:
    workers: dict[int, _Worker] = field(default_factory=dict)  # by pid
    failures: dict[int, int] = field(default_factory=dict)  # by slot: quick deaths in a row
    restart_at: dict[int, float] = field(default_factory=dict)  # by slot
    stopping: bool = False
    hurry_asked: bool = False  # a second SIGTERM/SIGINT: the workers hurry
    status: int = 0
    rolling: _Rolling | None = None
    reload_asked: bool = False
    # Started once the first worker listens: it has checked the configuration.
    waiting_slots: list[int] = field(default_factory=list)
    ever_ready: bool = False  # some worker listened once: the configuration works


def run(
    app_factory: Callable[[], HttpServer],
    workers: int,
    host: str | list[str] | None = "127.0.0.1",
    port: int = 8080,
    ssl: ssl_module.SSLContext | None = None,
    *,
    loop: str = "auto",
    backlog: int = 1024,
    cluster_limit_by_ip: bool | None = True,
) -> int:
    """Serve ``app_factory()``'s server in ``workers`` processes on one port; block.

    ``app_factory`` is called once in each worker (and again in each
    replacement) and returns an :class:`HttpServer`, usually with a
    :class:`~wshub.WebSocket` attached.  With more than one worker the hub
    must have a cluster backplane (``backplane="redis://…"``): otherwise
    each worker would be a hub of its own, so the first worker says so on
    stderr and :func:`run` returns :data:`EXIT_CONFIG` without starting
    the others; the same when the backplane has no cluster secret (the
    hub's ``secret``, ``WSHUB_SECRET`` or ``RedisBackplane(secret=...)``:
    see ``docs/scaling.md``).  ``cluster_limit_by_ip``: set on each worker's hub (True:
    ``limit_by_ip`` counts over all workers; None: leave the hub's own).

    Returns the exit status for the process: 0 after SIGTERM or SIGINT
    once every worker has drained.  POSIX only (``fork``, ``SO_REUSEPORT``).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError("workers must be an int >= 1")
    if not hasattr(os, "fork") or not hasattr(signal, "SIGHUP"):
        raise RuntimeError("workers need a POSIX system (fork, SO_REUSEPORT)")
    event_loop_factory(loop)  # a bad loop name fails here, not in every worker
    listen = _Listen(host, port, ssl, backlog)
    # Read here, in the supervisor: a worker that asked os.getppid() itself
    # after the supervisor had died would take init for its supervisor.
    supervisor = os.getpid()

    def spawn(slot: int) -> _Worker:
        return _spawn(
            slot,
            lambda fd: _worker_main(
                app_factory, workers, fd, listen, loop, cluster_limit_by_ip, supervisor
            ),
        )

    return _Supervisor(workers, spawn).run()


# ================================================================ the parent


class _Supervisor:
    def __init__(self, count: int, spawn: Callable[[int], _Worker]) -> None:
        self.count = count
        self.spawn_worker = spawn
        self.state = _State()

    def run(self) -> int:
        state = self.state
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        previous = {
            sig: signal.getsignal(sig)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
        }
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes select()
        try:
            log.info("supervisor %d: starting %d workers", os.getpid(), self.count)
            self._start(0)
            state.waiting_slots = list(range(1, self.count))
            while state.workers or not state.stopping:
                self._wait(wake_r)
                self._reap()
                if state.stopping:
                    self._stop_all()
                    continue
                if state.waiting_slots and any(w.ready for w in state.workers.values()):
                    for slot in state.waiting_slots:
                        self._start(slot)
                    state.waiting_slots = []
                if state.reload_asked:
                    state.reload_asked = False
                    self._begin_rolling()
                self._step_rolling()
                self._restart_due()
            log.info("supervisor %d: every worker has exited", os.getpid())
            return state.status
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for worker in state.workers.values():
                os.close(worker.ready_fd)
            os.close(wake_r)
            os.close(wake_w)

    # ------------------------------------------------------------ signals

    def _on_stop(self, signum: int, frame: object) -> None:
        if self.state.stopping:
            log.info(
                "supervisor: %s again: the workers close their clients now",
                signal.Signals(signum).name,
            )
            self.state.hurry_asked = True
        else:
            log.info("supervisor: %s: draining every worker", signal.Signals(signum).name)
        self.state.stopping = True

    def _on_reload(self, signum: int, frame: object) -> None:
        if self.state.stopping:
            log.info("supervisor: SIGHUP while draining: ignored")
            return
        self.state.reload_asked = True

    # ------------------------------------------------------------ waiting

    def _wait(self, wake_r: int) -> None:
        state = self.state
        fds = {w.ready_fd: w for w in state.workers.values()}
        timeout = 1.0
        now = time.monotonic()
        for due in state.restart_at.values():
            timeout = min(timeout, max(0.0, due - now))
        try:
            readable, _, _ = select.select([wake_r, *fds], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries select()
            return
        for fd in readable:
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
            else:
                self._read_report(fds[fd])

    def _read_report(self, worker: _Worker) -> None:
        try:
            data = os.read(worker.ready_fd, 4096)
        except OSError:
            data = b""
        if not data:
            return  # the worker's end closed: it exited, _reap will see it
        worker.buffer += data
        while b"\n" in worker.buffer:
            line, _, worker.buffer = worker.buffer.partition(b"\n")
            try:
                report = json.loads(line)
            except ValueError:
                continue
            if report.get("ready"):
                worker.ready = True
                self.state.ever_ready = True
                worker.drain_timeout = float(report.get("drain_timeout", 30.0))
                log.info("worker %d (pid %d) is listening", worker.slot, worker.pid)

    # ------------------------------------------------------- exits, restarts

    def _reap(self) -> None:
        state = self.state
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = state.workers.pop(pid, None)
            if worker is None:
                continue
            os.close(worker.ready_fd)
            self._exited(worker, status)

    def _exited(self, worker: _Worker, status: int) -> None:
        state = self.state
        how = _describe(status)
        rolling = state.rolling
        if rolling is not None and worker is rolling.old:
            log.info("worker %d (pid %d) drained and %s", worker.slot, worker.pid, how)
            rolling.old = None
            return
        if state.stopping or worker.stop_sent is not None:
            log.info("worker %d (pid %d) %s", worker.slot, worker.pid, how)
            return
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_CONFIG:
            log.error("worker %d cannot run (see above): stopping", worker.slot)
            state.status = EXIT_CONFIG
            state.stopping = True
            return
        if not state.ever_ready:
            # The very first worker could not start (a factory that raises,
            # a port taken, a missing secret): restarting would not help.
            log.error(
                "worker %d (pid %d) %s before it listened, and none ever did: stopping",
                worker.slot,
                worker.pid,
                how,
            )
            state.status = 1
            state.stopping = True
            return
        if rolling is not None and worker is rolling.new:
            rolling.new = None  # the replacement died: the old one keeps serving
            log.error(
                "worker %d (pid %d) %s before it listened: rolling restart abandoned",
                worker.slot,
                worker.pid,
                how,
            )
            state.rolling = None
            return
        lived = time.monotonic() - worker.started
        if lived >= _STABLE_AFTER and worker.ready:
            state.failures[worker.slot] = 0
        failures = state.failures.get(worker.slot, 0)
        delay = 0.0 if failures == 0 else min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (failures - 1))
        state.failures[worker.slot] = failures + 1
        log.warning(
            "worker %d (pid %d) %s; starting another in %.1fs",
            worker.slot,
            worker.pid,
            how,
            delay,
        )
        state.restart_at[worker.slot] = time.monotonic() + delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot, due in list(self.state.restart_at.items()):
            if due <= now:
                del self.state.restart_at[slot]
                self._start(slot)

    def _start(self, slot: int) -> _Worker:
        worker = self.spawn_worker(slot)
        self.state.workers[worker.pid] = worker
        log.info("worker %d started (pid %d)", slot, worker.pid)
        return worker

    # ------------------------------------------------------------ stopping

    def _stop_all(self) -> None:
        now = time.monotonic()
        self.state.restart_at.clear()
        self.state.rolling = None
        self.state.waiting_slots = []
        hurry, self.state.hurry_asked = self.state.hurry_asked, False
        for worker in list(self.state.workers.values()):
            if worker.stop_sent is None:
                self._signal(worker, signal.SIGTERM)
                worker.stop_sent = now
            elif hurry:
                self._signal(worker, signal.SIGTERM)  # the second: skip the window
            elif now - worker.stop_sent > worker.drain_timeout + _KILL_GRACE:
                log.error("worker %d (pid %d) did not stop: killed", worker.slot, worker.pid)
                self._signal(worker, signal.SIGKILL)
                worker.stop_sent = now  # once more the grace, then again

    @staticmethod
    def _signal(worker: _Worker, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, sig)

    # ------------------------------------------------------ rolling restart

    def _begin_rolling(self) -> None:
        state = self.state
        if state.rolling is not None:
            log.info("supervisor: SIGHUP during a rolling restart: ignored")
            return
        slots = sorted(w.slot for w in state.workers.values() if w.stop_sent is None)
        log.info("supervisor: SIGHUP: restarting %d workers one by one", len(slots))
        state.rolling = _Rolling(slots)

    def _step_rolling(self) -> None:
        state = self.state
        rolling = state.rolling
        if rolling is None:
            return
        if rolling.new is not None:
            new = rolling.new
            if not new.ready:
                return  # the old one serves until its replacement listens
            old = rolling.old
            rolling.new = None
            if old is not None and old.stop_sent is None:
                self._signal(old, signal.SIGTERM)
                old.stop_sent = time.monotonic()
            return
        if rolling.old is not None:
            old = rolling.old
            if time.monotonic() - (old.stop_sent or 0) > old.drain_timeout + _KILL_GRACE:
                log.error("worker %d (pid %d) did not stop: killed", old.slot, old.pid)
                self._signal(old, signal.SIGKILL)
                old.stop_sent = time.monotonic()
            return  # wait until it has exited
        while rolling.slots:
            slot = rolling.slots.pop(0)
            current = [w for w in state.workers.values() if w.slot == slot and w.stop_sent is None]
            if not current:
                continue  # died meanwhile: the usual restart covers it
            rolling.old = current[0]
            rolling.new = self._start(slot)
            return
        log.info("supervisor: rolling restart done")
        state.rolling = None


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.WEXITSTATUS(status)}"


# ================================================================ a worker


def _spawn(slot: int, main: Callable[[int], int]) -> _Worker:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        status = 1
        try:
            os.close(read_fd)
            signal.set_wakeup_fd(-1)  # the parent's, inherited
            for sig in (signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            for sig in (signal.SIGTERM, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            status = main(write_fd)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    return _Worker(slot=slot, pid=pid, ready_fd=read_fd, started=time.monotonic())


def _worker_main(
    app_factory: Callable[[], HttpServer],
    workers: int,
    report_fd: int,
    listen: _Listen,
    loop: str,
    cluster_limit_by_ip: bool | None,
    supervisor: int,
) -> int:
    server = app_factory()
    if not isinstance(server, HttpServer):
        print(
            f"wshub workers: the app factory returned {type(server).__name__}, not an HttpServer",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    hub = server.websocket
    if isinstance(hub, WebSocket):
        if workers > 1 and hub.backplane.is_local:
            print(
                f"wshub workers: {workers} workers need a backplane to act as one hub "
                "(WebSocket(server, backplane='redis://...'), or wshub serve --backplane URL); "
                "without one each worker would be a hub of its own",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        if cluster_limit_by_ip is not None:
            hub.cluster_limit_by_ip = cluster_limit_by_ip
    try:
        run_on_loop(_serve_worker(server, report_fd, listen, supervisor), loop)
    except ClusterSecretMissing as exc:
        # Every worker would fail the same way: said once, by the first.
        print(f"wshub workers: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


async def _serve_worker(
    server: HttpServer, report_fd: int, listen: _Listen, supervisor: int
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_sigterm() -> None:
        if stop.is_set():
            server.hurry()  # a second one: skip the rest of the drain window
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)

    def orphaned() -> bool:
        # The supervisor died without a word (kill -9): drain rather than
        # serve on unsupervised.
        if os.getppid() == supervisor:
            return False
        log.error("worker %d: the supervisor %d is gone: draining", os.getpid(), supervisor)
        stop.set()
        return True

    def check_orphaned() -> None:
        if not orphaned():
            loop.call_later(_ORPHAN_CHECK, check_orphaned)

    if orphaned():  # gone while the app was being built: never serve
        return
    loop.call_later(_ORPHAN_CHECK, check_orphaned)
    await server.serve(
        listen.host, listen.port, listen.ssl, reuse_port=True, backlog=listen.backlog
    )
    report = {"ready": True, "pid": os.getpid(), "drain_timeout": server.drain_timeout}
    try:
        os.write(report_fd, json.dumps(report).encode() + b"\n")
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
    await stop.wait()
    await server.drain()

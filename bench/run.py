#!/usr/bin/env python3
"""wshub's benchmark driver: every scenario against every server, medians, ratios.

    python3 bench/run.py                   # full run: 3 trials (~15 min)
    python3 bench/run.py --quick           # 1 trial, shorter windows (a few minutes)
    python3 bench/run.py --servers wshub,websockets --scenarios S1,S5 --trials 5
    python3 bench/run.py --servers wshub,socketify --scenarios T1    # topic fan-out

``make bench`` and ``make bench-quick`` set everything up first (bench/README.md).
Standard library only.  Per trial: a fresh server process pinned to one core
(``taskset -c 0``), the C load generator pinned to the other (``-c 1``); trials
go round-robin over the servers.  The Markdown report goes to stdout, one
progress line per trial to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCH_PY = HERE / ".venv" / "bin" / "python"
LOADGEN = HERE / "loadgen" / "loadgen"
NODE_DIR = HERE / "node"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# --------------------------------------------------------------------------
# scenarios and servers


@dataclass
class Scenario:
    id: str
    title: str
    unit: str
    server_mode: str  # echo | broadcast | pubsub (topics, wshub.v1)
    deflate: bool
    loadgen: list[str]
    metric: str = "msgs_per_s"
    kind: str = "rate"  # rate | memory | cluster | sweep (E<size>x<conns>)
    nodes: int = 1
    lower_is_better: bool = False


#: Topic fan-out (T1, T2, T4): 100 topics x 50 subscribers and one publisher.
TOPIC_SUBSCRIBERS = 5000


def scenarios(idle_conns: int, topics_window: int = 100) -> dict[str, Scenario]:
    bcast = ["--mode", "broadcast", "-c", "500", "--size", "64", "--window", "8"]
    topics = [
        *("--mode", "topics", "-c", str(TOPIC_SUBSCRIBERS), "--topics", "100"),
        *("--size", "64", "--window", str(topics_window)),
    ]
    all_ = [
        Scenario(
            "S1",
            "small echo: 100 conns, 32 B text, depth 8",
            "msg/s",
            "echo",
            False,
            ["--mode", "echo", "-c", "100", "--size", "32", "--type", "text", "--depth", "8"],
        ),
        Scenario(
            "S2",
            "medium echo: 20 conns, 4 KiB binary, depth 4",
            "msg/s",
            "echo",
            False,
            ["--mode", "echo", "-c", "20", "--size", "4096", "--type", "binary", "--depth", "4"],
        ),
        Scenario(
            "S3",
            "large echo: 1 conn, 1 MiB binary, depth 2",
            "MB/s",
            "echo",
            False,
            ["--mode", "echo", "-c", "1", "--size", "1048576", "--type", "binary", "--depth", "2"],
            metric="mb_per_s",
        ),
        Scenario(
            "S4",
            "deflate echo: 20 conns, 4 KiB JSON-like text, depth 4, "
            "permessage-deflate without context takeover",
            "msg/s",
            "echo",
            True,
            ["--mode", "deflate", "-c", "20", "--size", "4096", "--depth", "4"],
        ),
        Scenario(
            "S5",
            "handshakes: 16 parallel connect-upgrade-close loops",
            "hs/s",
            "echo",
            False,
            ["--mode", "handshake", "-c", "16"],
        ),
        Scenario(
            "S6",
            f"idle memory: {idle_conns} idle connections, server RSS delta per connection",
            "KiB/conn",
            "echo",
            False,
            ["--mode", "idle", "-c", str(idle_conns), "--concurrency", "64", "--hold", "60"],
            metric="kib_per_conn",
            kind="memory",
            lower_is_better=True,
        ),
        Scenario(
            "S7",
            "broadcast: 1 sender, 500 receivers, 64 B text, at most 8 undelivered",
            "deliveries/s",
            "broadcast",
            False,
            bcast,
        ),
        Scenario(
            "C1",
            "cluster broadcast, 1 node + redis-server: as S7, through the backplane",
            "deliveries/s",
            "broadcast",
            False,
            bcast,
            kind="cluster",
            nodes=1,
        ),
        Scenario(
            "C2",
            "cluster broadcast, 2 nodes + redis-server: as S7, receivers on both, sender on node 1",
            "deliveries/s",
            "broadcast",
            False,
            bcast,
            kind="cluster",
            nodes=2,
        ),
        Scenario(
            "T1",
            "topic fan-out: 1 publisher, 100 topics x 50 subscribers (wshub.v1), 64 B, "
            f"at most {topics_window} publications undelivered",
            "deliveries/s",
            "pubsub",
            False,
            topics,
        ),
        Scenario(
            "T2",
            "topic fan-out over 2 nodes + redis-server: as T1, each topic's subscribers "
            "on both, publisher on node 1",
            "deliveries/s",
            "pubsub",
            False,
            topics,
            kind="cluster",
            nodes=2,
        ),
        Scenario(
            "T4",
            "topic fan-out over 4 nodes + redis-server: as T2 with 4 nodes",
            "deliveries/s",
            "pubsub",
            False,
            topics,
            kind="cluster",
            nodes=4,
        ),
    ]
    return {s.id: s for s in all_}


DEFAULT_SCENARIOS = ["S1", "S2", "S3", "S4", "S5", "S6", "S7", "C1", "C2", "T1", "T2", "T4"]

# --------------------------------------------------------------------------
# the sweep: binary echo over message sizes x connection counts (--sweep)

SWEEP_SIZES = [32, 1 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20]
SWEEP_CONNS = [1, 50, 1000]
#: Bytes in flight a sweep cell keeps to: its depth is lowered until size x
#: connections x depth fits, down to 1; past that (1 MiB x 1000 connections)
#: the connections take turns for SWEEP_IN_FLIGHT / size messages in flight in
#: all (the load generator's --in-flight), so the kernel's TCP memory stays
#: below its pressure mark (tcp_mem) and the server's below a few hundred MiB.
SWEEP_IN_FLIGHT = 256 << 20


def size_label(size: int) -> str:
    """32 B, 1 KiB, 1 MiB: the sweep's row names."""
    for shift, unit in ((20, "MiB"), (10, "KiB")):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} B"


def sweep_depth(size: int, conns: int) -> int:
    """4 messages in flight per connection below 256 KiB, 2 from there, fewer
    while size x conns x depth passes SWEEP_IN_FLIGHT."""
    depth = 4 if size < 256 << 10 else 2
    while depth > 1 and size * conns * depth > SWEEP_IN_FLIGHT:
        depth -= 1
    return depth


def sweep_id(size: int, conns: int) -> str:
    for shift, unit in ((20, "M"), (10, "K")):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"E{size >> shift}{unit}x{conns}"
    return f"E{size}x{conns}"


def sweep_scenario(sid: str) -> Scenario | None:
    """The echo cell named E<size>[K|M]x<conns>[d<depth>] (E64Kx50, E32x1000d8), or None."""
    m = re.fullmatch(r"E(\d+)([KM]?)x(\d+)(?:d(\d+))?", sid)
    if not m:
        return None
    size = int(m[1]) << {"": 0, "K": 10, "M": 20}[m[2]]
    conns = int(m[3])
    if size < 16 or conns < 1:
        return None
    depth = int(m[4]) if m[4] else sweep_depth(size, conns)
    in_flight = 0 if m[4] or size * conns * depth <= SWEEP_IN_FLIGHT else SWEEP_IN_FLIGHT // size
    return Scenario(
        sid,
        f"binary echo: {size_label(size)} over {conns} conn{'s' if conns > 1 else ''}, "
        f"depth {depth}" + (f", at most {in_flight} in flight in all" if in_flight else ""),
        "msg/s",
        "echo",
        False,
        [
            *("--mode", "echo", "-c", str(conns), "--size", str(size)),
            *("--type", "binary", "--depth", str(depth)),
            *(("--in-flight", str(in_flight)) if in_flight else ()),
        ],
        kind="sweep",
    )


def sweep_ids() -> list[str]:
    return [sweep_id(size, conns) for size in SWEEP_SIZES for conns in SWEEP_CONNS]


def loadgen_arg(scen: Scenario, flag: str) -> int:
    return int(scen.loadgen[scen.loadgen.index(flag) + 1])


@dataclass
class Server:
    name: str
    cmd: list[str]
    versions: list[str]  # "py:NAME" (bench venv) or "npm:NAME" (bench/node)
    env: dict[str, str] = field(default_factory=dict)
    cluster: bool = False  # takes --backplane URL
    label: str = ""
    # wshub serve --workers N: N > 1 needs a redis-server (--backplane) in
    # every scenario, and the trial waits until every worker listens.
    workers: int = 0
    only: tuple[str, ...] = ()  # the scenarios it runs in (empty: every one)
    pubsub: bool = False  # topics over wshub.v1 (--mode pubsub): T1, T2, T4


def workers_in(cmd: list[str]) -> int:
    """N of ``--workers N`` in a server command (0 without it)."""
    for flag, value in itertools.pairwise(cmd):
        if flag == "--workers" and value.isdigit():
            return int(value)
    return 0


def servers() -> dict[str, Server]:
    py = str(BENCH_PY)
    srv = HERE / "servers"
    wshub = str(HERE / ".venv" / "bin" / "wshub")
    all_ = [
        Server("websockets", [py, str(srv / "websockets_server.py")], ["py:websockets"]),
        Server("picows", [py, str(srv / "picows_server.py")], ["py:picows"]),
        Server("aiohttp", [py, str(srv / "aiohttp_server.py")], ["py:aiohttp"]),
        Server("socketify", [py, str(srv / "socketify_server.py")], ["py:socketify"], pubsub=True),
        Server(
            "socketify-z",
            [py, str(srv / "socketify_server.py")],
            ["py:socketify"],
            env={"BENCH_COMPRESS_REPLIES": "1"},
            label="socketify, echo replies sent with compress=True",
            only=("S4",),
        ),
        Server("granian", [py, str(srv / "granian_server.py")], ["py:granian"]),
        Server("node-ws", ["node", str(NODE_DIR / "ws_server.js")], ["npm:ws"]),
        Server(
            "wshub",
            [wshub, "serve"],
            ["py:wshub", "py:uvloop", "py:isal"],
            cluster=True,
            pubsub=True,
        ),
        Server(
            "wshub-rawreply",
            [wshub, "serve", "--deflate-min-size", str(4 << 20)],
            ["py:wshub", "py:uvloop", "py:isal"],
            label="wshub, echo replies sent uncompressed (--deflate-min-size 4 MiB), "
            "as socketify sends them",
            only=("S4",),
        ),
        Server(
            "wshub-w2",
            [wshub, "serve", "--workers", "2"],
            ["py:wshub", "py:uvloop", "py:isal"],
            cluster=True,
            label="wshub, 2 workers joined by redis-server",
            workers=2,
            only=("S1", "S7"),
        ),
        Server(
            "wshub-loopio",
            [wshub, "serve", "--io", "loop"],
            ["py:wshub", "py:uvloop", "py:isal"],
            label="wshub on uvloop's transports instead of its own epoll layer",
        ),
        Server(
            "wshub-pure",
            [wshub, "serve"],
            ["py:wshub"],
            env={"WSHUB_NO_EXTENSIONS": "1"},
            label="wshub, WSHUB_NO_EXTENSIONS=1",
            pubsub=True,
        ),
    ]
    return {s.name: s for s in all_}


def unavailable(server: Server) -> str | None:
    """Why this server cannot run here, or None."""
    exe = server.cmd[0]
    if exe == "node":
        if not shutil.which("node"):
            return "node is not installed"
        if not (NODE_DIR / "node_modules" / "ws").is_dir():
            return "bench/node/node_modules/ws missing (npm ci failed?)"
        return None
    if not (Path(exe).exists() or shutil.which(exe)):
        return f"{exe} missing (bench venv not set up?)"
    for v in server.versions:
        kind, _, name = v.partition(":")
        if kind == "py" and name not in ("wshub", "uvloop", "isal"):
            r = subprocess.run(
                [str(BENCH_PY), "-c", f"import {name}"], capture_output=True, text=True
            )
            if r.returncode:
                last = (r.stderr.strip().splitlines() or ["?"])[-1]
                return f"cannot import {name}: {last}"
    return None


# --------------------------------------------------------------------------
# processes: start, pin, measure, stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid: int) -> list[int]:
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def wait_workers(port: int, proc: subprocess.Popen[bytes], count: int, timeout: float = 30) -> str:
    """'ok' once /readyz answered from ``count`` worker PIDs, or why not."""
    seen: set[bytes] = set()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return f"exit {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
        except OSError:
            answer = b""
        if answer.startswith(b"HTTP/1.1 200") and b"(pid " in answer:
            seen.add(answer.rsplit(b"(pid ", 1)[1])
            if len(seen) >= count:
                return "ok"
        time.sleep(0.02)
    return f"only {len(seen)} of {count} workers listened"


def tree_cpu(pids: list[int]) -> tuple[float, int]:
    """CPU seconds (user + system) and minor page faults of these processes
    and their descendants."""
    seconds, faults = 0.0, 0
    for root in pids:
        for p in tree(root):
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                seconds += (int(fields[11]) + int(fields[12])) / CLK_TCK
                faults += int(fields[7])
            except (OSError, IndexError, ValueError):
                pass
    return seconds, faults


def tree_mem(pids: list[int]) -> tuple[float, float]:
    """(VmRSS, VmHWM) in KiB, summed over the process trees."""
    rss = hwm = 0.0
    for root in pids:
        for p in tree(root):
            try:
                with open(f"/proc/{p}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            rss += float(line.split()[1])
                        elif line.startswith("VmHWM:"):
                            hwm += float(line.split()[1])
            except OSError:
                pass
    return rss, hwm


def machine_busy() -> float:
    """CPU seconds spent by everything on the machine (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    steal = v[7] if len(v) > 7 else 0
    return (sum(v[:8]) - idle - steal) / CLK_TCK


class Runner:
    def __init__(self, opts: argparse.Namespace, logdir: Path) -> None:
        self.opts = opts
        self.logdir = logdir
        self.taskset = shutil.which("taskset")
        self.nice_cmd = shutil.which("nice")

    def prefix(self, cpu: int) -> list[str]:
        out: list[str] = []
        if self.taskset:
            out += [self.taskset, "-c", str(cpu)]
        if self.opts.nice is not None and self.nice_cmd:
            out += [self.nice_cmd, "-n", str(self.opts.nice)]
        return out

    def renice_group(self, pid: int) -> None:
        # with autogroup scheduling a task's nice only counts inside its own
        # session; the server and the load generator each get their own.
        if self.opts.nice is None:
            return
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(self.opts.nice))

    def start(
        self, cmd: list[str], env: dict[str, str], cpu: int, log: Path
    ) -> subprocess.Popen[bytes]:
        full_env = dict(os.environ, **env)
        with open(log, "ab") as f:
            proc = subprocess.Popen(
                self.prefix(cpu) + cmd,
                env=full_env,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.renice_group(proc.pid)
        return proc

    @staticmethod
    def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
        """'ok', or why not."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            rc = proc.poll()
            if rc is not None:
                return f"exit {rc}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return "ok"
            except OSError:
                time.sleep(0.05)
        return "did not listen"

    @staticmethod
    def stop(proc: subprocess.Popen[Any] | None) -> None:
        if proc is None or proc.poll() is not None:
            if proc is not None:
                proc.wait()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # a worker that outlived its parent (same process group)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def loadgen_cmd(self, scen: Scenario, ports: list[int]) -> list[str]:
        return [
            *self.prefix(self.opts.loadgen_cpu),
            str(LOADGEN),
            "--port",
            ",".join(map(str, ports)),
            *scen.loadgen,
            "--warmup",
            str(self.opts.warmup),
            "--duration",
            str(self.opts.duration),
        ]

    # -- one trial ----------------------------------------------------------

    def trial(self, server: Server, scen: Scenario, n: int) -> dict[str, Any]:
        log = self.logdir / f"{scen.id}-{server.name}-{n}.log"
        procs: list[subprocess.Popen[bytes]] = []
        tmp = tempfile.mkdtemp(prefix="redis-", dir=self.logdir)
        try:
            extra: list[str] = []
            env = server.env
            if scen.kind == "cluster" or server.workers > 1:
                redis_port = free_port()
                redis = self.start(
                    [
                        shutil.which("redis-server") or "redis-server",
                        "--port",
                        str(redis_port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        tmp,
                    ],
                    {},
                    self.opts.server_cpu,
                    log,
                )
                procs.append(redis)
                status = self.wait_listening(redis_port, redis)
                if status != "ok":
                    return {"failure": f"redis-server: {status}"}
                extra = ["--backplane", f"redis://127.0.0.1:{redis_port}/0"]
                # The cluster secret every node shares (it authenticates the backplane).
                env = {**env, "WSHUB_SECRET": os.urandom(16).hex()}
            ports = [free_port() for _ in range(scen.nodes)]
            nodes = []
            for port in ports:
                cmd = [
                    *server.cmd,
                    "--port",
                    str(port),
                    "--mode",
                    scen.server_mode,
                    "--deflate",
                    "on" if scen.deflate else "off",
                    *extra,
                    *(["--health"] if server.workers else []),
                ]
                nodes.append(self.start(cmd, env, self.opts.server_cpu, log))
            procs += nodes
            for port, proc in zip(ports, nodes, strict=True):
                status = self.wait_listening(port, proc)
                if status == "exit 3":
                    return {"na": unsupported_reason(log)}
                if status == "ok" and server.workers:
                    status = wait_workers(port, proc, server.workers)
                if status != "ok":
                    return {"failure": f"server {status} (log: {log})"}
            pids = [p.pid for p in procs]
            if scen.kind == "memory":
                return self.idle_trial(scen, ports, pids, log)
            return self.load_trial(scen, ports, pids, log)
        finally:
            for p in reversed(procs):
                self.stop(p)
            shutil.rmtree(tmp, ignore_errors=True)

    def load_trial(
        self, scen: Scenario, ports: list[int], pids: list[int], log: Path
    ) -> dict[str, Any]:
        opts = self.opts
        lg = subprocess.Popen(
            self.loadgen_cmd(scen, ports),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.renice_group(lg.pid)
        # server CPU over (about) the measured window: from the end of warm-up
        time.sleep(opts.warmup + 0.2)
        (cpu_a, faults_a), busy_a, t_a = tree_cpu(pids), machine_busy(), time.monotonic()
        try:
            out, err = lg.communicate(timeout=opts.warmup + opts.duration + 60)
        except subprocess.TimeoutExpired:
            self.stop(lg)
            return {"failure": "load generator did not finish"}
        (cpu_b, faults_b), busy_b, t_b = tree_cpu(pids), machine_busy(), time.monotonic()
        _, hwm = tree_mem(pids)
        res = last_json(out)
        if res is None:
            return {"failure": f"load generator: exit {lg.returncode}: {err.strip()[-200:]}"}
        span = max(t_b - t_a, 1e-3)
        res["srv_cpu"] = (cpu_b - cpu_a) / span
        rate = res.get("msgs_per_s")
        if isinstance(rate, (int, float)) and rate > 0:
            # per message the load generator counted (over about its window)
            res["srv_faults_per_msg"] = (faults_b - faults_a) / span / rate
            res["srv_us_per_msg"] = res["srv_cpu"] / rate * 1e6
        lg_cpu = float(res.get("loadgen_cpu", 0.0))
        res["foreign"] = max(0.0, (busy_b - busy_a) / span - res["srv_cpu"] - lg_cpu)
        res["peak_rss_kib"] = hwm
        if res.get("failure"):
            res["failure"] = str(res["failure"])
        with open(log, "a") as f:
            f.write("\nloadgen: " + out.strip() + "\n")
        return res

    def idle_trial(
        self, scen: Scenario, ports: list[int], pids: list[int], log: Path
    ) -> dict[str, Any]:
        time.sleep(0.5)  # let the server settle before its baseline
        rss0, _ = tree_mem(pids)
        lg = subprocess.Popen(
            self.loadgen_cmd(scen, ports),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.renice_group(lg.pid)
        ready: dict[str, Any] | None = None
        assert lg.stdout is not None
        end = time.monotonic() + 60
        lines = []
        while time.monotonic() < end:
            r, _, _ = select.select([lg.stdout], [], [], 0.5)
            if r:
                line = lg.stdout.readline()
                if not line:
                    break
                lines.append(line)
                with contextlib.suppress(ValueError):
                    obj = json.loads(line)
                    if obj.get("event") == "ready":
                        ready = obj
                        break
                    return {"failure": obj.get("failure", "load generator ended early"), **obj}
        if ready is None:
            self.stop(lg)
            return {"failure": "idle connections were not all opened"}
        time.sleep(1.0)
        rss1, hwm = tree_mem(pids)
        lg.send_signal(signal.SIGTERM)
        try:
            out, _err = lg.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.stop(lg)
            out = ""
        res = last_json(out) or {}
        conns = int(ready.get("connections", 0))
        res.update(
            {
                "connections": conns,
                "rss_start_kib": rss0,
                "rss_idle_kib": rss1,
                "peak_rss_kib": hwm,
                "kib_per_conn": (rss1 - rss0) / conns if conns else None,
                "open_s": ready.get("open_s"),
            }
        )
        if conns < int(scen.loadgen[scen.loadgen.index("-c") + 1]):
            res["errors"] = int(res.get("errors", 0)) or 1
        return res


def last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict) and "mode" in obj:
                return obj
    return None


def unsupported_reason(log: Path) -> str:
    with contextlib.suppress(OSError):
        for line in reversed(log.read_text(errors="replace").splitlines()):
            if line.startswith("unsupported:"):
                return line.split(":", 1)[1].strip()
    return "unsupported (exit 3)"


# --------------------------------------------------------------------------
# report


def fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    na: str | None = None
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def warn(self) -> bool:
        return bool(self.failures) or any(
            int(t.get("errors", 0) or 0) or int(t.get("close_timeouts", 0) or 0)
            for t in self.trials
        )

    def med(self, key: str) -> float | None:
        xs = [float(t[key]) for t in self.trials if t.get(key) is not None]
        return statistics.median(xs) if xs else None


def notes_of(cell: Cell) -> str:
    keys = (
        "conn_failed",
        "handshake_failed",
        "mismatches",
        "proto_errors",
        "closed_by_server",
        "lost",
        "dup",
        "deflate_refused",
        "stalled",
        "unclean_close",
        "close_timeouts",
    )
    parts = []
    for k in keys:
        total = sum(int(t.get(k, 0) or 0) for t in cell.trials)
        if total:
            parts.append(f"{k}={total}")
    replies = sum(int(t.get("received", 0) or 0) for t in cell.trials)
    if replies and any("compressed" in t for t in cell.trials):
        # S4: a server may answer uncompressed (socketify does by default).
        deflated = sum(int(t.get("compressed", 0) or 0) for t in cell.trials)
        parts.append(f"replies compressed {100 * deflated / replies:.0f} %")
    parts += [f"failed: {f}" for f in cell.failures]
    return "; ".join(parts)


def cell_text(cell: Cell, base: float | None, lower_better: bool) -> str:
    if cell.skipped:
        return "—"
    if cell.na is not None and cell.median is None:
        return "n/a"
    m = cell.median
    if m is None:
        return "failed"
    txt = fmt(m) + (" ⚠" if cell.warn else "")
    if base:
        txt += f" ({m / base:.2f}\u00d7)"
    return txt


def report(
    opts: argparse.Namespace,
    scens: list[Scenario],
    srvs: list[Server],
    cells: dict[tuple[str, str], Cell],
    meta: dict[str, Any],
) -> str:
    out: list[str] = []
    w = out.append
    w(f"# wshub benchmark — {meta['date']}")
    w("")
    w(
        f"- `{meta['command']}`; wall time {meta['wall_min']:.1f} min; "
        f"{opts.trials} trial(s) per server and scenario, round-robin, fresh server "
        f"process per trial; {opts.warmup:g} s warm-up + {opts.duration:g} s measured"
    )
    w(
        f"- server `taskset -c {opts.server_cpu}`, load generator `taskset -c "
        f"{opts.loadgen_cpu}`"
        + ("" if meta["taskset"] else " (taskset missing: NOT pinned)")
        + (f"; nice {opts.nice}" if opts.nice is not None else "")
    )
    w(f"- machine: {meta['machine']}; load average {meta['load_start']} → {meta['load_end']}")
    w(f"- versions: {meta['versions']}")
    w(f"- wshub: {meta['commit']}; server logs: {meta['logdir']}")
    w("")
    base_name = opts.baseline
    main = [s for s in scens if s.kind in ("rate", "memory")]
    if main:
        w(
            f"Medians over trials; (\u00d7) = ratio to `{base_name}` in this run "
            "(S6: lower is better); ⚠ = errors in a trial (see details); "
            "n/a = the server cannot do it; — = not run."
        )
        w("")
        w("| server | " + " | ".join(f"{s.id} {s.unit}" for s in main) + " |")
        w("|---|" + "---:|" * len(main))
        for srv in srvs:
            row = []
            for s in main:
                base = cells[(s.id, base_name)].median if (s.id, base_name) in cells else None
                row.append(cell_text(cells[(s.id, srv.name)], base, s.lower_is_better))
            w(f"| {srv.name} | " + " | ".join(row) + " |")
        w("")
        w("Scenarios: " + "; ".join(f"**{s.id}** {s.title}" for s in main) + ".")
        w("")
    clus = [s for s in scens if s.kind == "cluster"]
    cl_srvs = [srv for srv in srvs if srv.cluster]
    if clus and cl_srvs:
        w("## Cluster broadcast and topics (wshub nodes joined by redis-server)")
        w("")
        w(
            "Every node and redis-server share the server core; the load generator "
            "connects the receivers round-robin over the nodes (T2, T4: each topic's "
            "subscribers) and the sender to node 1. "
            "Compare with S7 (C1, C2) or T1 (T2, T4) of the same server: the cost of the "
            "backplane, not scaling (on one core, more nodes cannot add capacity)."
        )
        w("")
        w(
            "| server | scenario | deliveries/s | min\u2013max | cross-node deliveries/s | "
            "p50 µs | p99 µs | srv CPU (nodes + redis) | notes |"
        )
        w("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for srv in cl_srvs:
            for s in clus:
                c = cells[(s.id, srv.name)]
                rng = f"{fmt(min(c.values))}\u2013{fmt(max(c.values))}" if c.values else "—"
                w(
                    f"| {srv.name} | {s.id} ({s.nodes} node{'s' if s.nodes > 1 else ''}) | "
                    f"{cell_text(c, None, False)} | {rng} | "
                    f"{fmt(c.med('cross_deliveries_per_s'))} | "
                    f"{fmt(c.med('p50_us'))} | {fmt(c.med('p99_us'))} | {fmt(c.med('srv_cpu'))} | "
                    f"{c.na or notes_of(c)} |"
                )
        w("")
    sweep = [s for s in scens if s.kind == "sweep"]
    if sweep:
        out.extend(sweep_tables(sweep, srvs, cells, base_name))
    mem = [s for s in scens if s.kind == "memory"]
    if mem:
        s = mem[0]
        w("## Memory (S6)")
        w("")
        w(
            "| server | RSS at start MiB | RSS with idle conns MiB | idle conns | "
            "KiB/conn | open s |"
        )
        w("|---|---:|---:|---:|---:|---:|")
        for srv in srvs:
            c = cells[(s.id, srv.name)]
            if not c.trials:
                w(f"| {srv.name} | — | — | — | {cell_text(c, None, True)} | — |")
                continue
            r0, r1 = c.med("rss_start_kib"), c.med("rss_idle_kib")
            w(
                f"| {srv.name} | {fmt(r0 / 1024 if r0 else None)} | "
                f"{fmt(r1 / 1024 if r1 else None)} | {fmt(c.med('connections'))} | "
                f"{cell_text(c, None, True)} | {fmt(c.med('open_s'))} |"
            )
        w("")
    w("## Details")
    w("")
    w(
        "min\u2013max over trials; p50/p99: round trip (echo), whole cycle (S5) or send → "
        "delivery (S7, C*), medians over trials; lg/srv CPU: load generator/server CPU "
        "in the measured window (1.00 = one core); foreign: CPU cores used by other "
        "processes meanwhile."
    )
    for s in scens:
        if s.kind in ("memory", "sweep"):
            continue
        w("")
        w(f"**{s.id}** — {s.title} ({s.unit})")
        w("")
        w(
            "| server | median | min\u2013max | p50 µs | p99 µs | errors | lg CPU | srv CPU "
            "| foreign | peak RSS MiB | notes |"
        )
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for srv in srvs:
            c = cells[(s.id, srv.name)]
            if c.skipped:
                continue
            if not c.trials and c.na is not None:
                w(f"| {srv.name} | n/a | | | | | | | | | {c.na} |")
                continue
            rng = f"{fmt(min(c.values))}\u2013{fmt(max(c.values))}" if c.values else "—"
            errs = sum(int(t.get("errors", 0) or 0) for t in c.trials)
            hwm = c.med("peak_rss_kib")
            w(
                f"| {srv.name} | {fmt(c.median)} | {rng} | {fmt(c.med('p50_us'))} | "
                f"{fmt(c.med('p99_us'))} | {errs} | {fmt(c.med('loadgen_cpu'))} | "
                f"{fmt(c.med('srv_cpu'))} | {fmt(c.med('foreign'))} | "
                f"{fmt(hwm / 1024 if hwm else None)} | {notes_of(c)} |"
            )
    if sweep:
        out.extend(sweep_details(sweep, srvs, cells))
    na = [
        f"- {srv.name}, {s.id}: {cells[(s.id, srv.name)].na}"
        for s in scens
        for srv in srvs
        if cells[(s.id, srv.name)].na and not cells[(s.id, srv.name)].skipped
    ]
    if na:
        w("")
        w("## n/a")
        w("")
        out.extend(na)
    return "\n".join(out) + "\n"


def sweep_tables(
    sweep: list[Scenario], srvs: list[Server], cells: dict[tuple[str, str], Cell], base: str
) -> list[str]:
    """Per server, message sizes (rows) x connection counts (columns)."""
    shapes = {(loadgen_arg(s, "--size"), loadgen_arg(s, "-c")): s for s in sweep}
    sizes = sorted({size for size, _ in shapes})
    conns = sorted({n for _, n in shapes})
    out = [
        "## Message sizes and connection counts (binary echo)",
        "",
        "Each cell: messages/s and MB/s of echoed payload (10^6 B), medians over trials, "
        f"(\u00d7) = messages/s over `{base}`'s in this run; ⚠ = errors in a trial. "
        "Messages in flight: " + in_flight_text(sweep) + ".",
    ]
    for srv in srvs:
        out += ["", f"**{srv.name}**", ""]
        out.append(
            "| size | " + " | ".join(f"{n} conn{'s' if n > 1 else ''}" for n in conns) + " |"
        )
        out.append("|---|" + "---:|" * len(conns))
        for size in sizes:
            row = []
            for n in conns:
                s = shapes.get((size, n))
                if s is None:
                    row.append("—")
                    continue
                c = cells[(s.id, srv.name)]
                b = cells[(s.id, base)].median if (s.id, base) in cells else None
                text = cell_text(c, b if srv.name != base else None, False)
                mb = c.med("mb_per_s")
                if c.median is not None and mb is not None:
                    head, sep, ratio = text.partition(" (")
                    text = f"{head} · {fmt(mb)} MB/s" + (f" ({ratio}" if sep else "")
                row.append(text)
            out.append(f"| {size_label(size)} | " + " | ".join(row) + " |")
    out.append("")
    return out


def in_flight_text(sweep: list[Scenario]) -> str:
    """'depth 4 in E32x1, E32x50; depth 1, 256 in all in E1Mx1000': cells by load."""
    groups: dict[str, list[str]] = {}
    for s in sweep:
        text = f"depth {loadgen_arg(s, '--depth')}"
        if "--in-flight" in s.loadgen:
            text += f" and {loadgen_arg(s, '--in-flight')} in all, the connections taking turns"
        groups.setdefault(text, []).append(s.id)
    return "; ".join(f"{text} in {', '.join(ids)}" for text, ids in groups.items())


def sweep_details(
    sweep: list[Scenario], srvs: list[Server], cells: dict[tuple[str, str], Cell]
) -> list[str]:
    out = [
        "",
        "**Message sizes and connection counts** (msg/s; MB/s of echoed payload)",
        "",
        "| cell | server | msg/s | min\u2013max | MB/s | depth | p50 µs | p99 µs | errors | "
        "lg CPU | srv CPU | foreign | peak RSS MiB | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in sweep:
        for srv in srvs:
            c = cells[(s.id, srv.name)]
            if c.skipped:
                continue
            if not c.trials:
                out.append(f"| {s.id} | {srv.name} | n/a | | | | | | | | | | | {c.na or ''} |")
                continue
            rng = f"{fmt(min(c.values))}\u2013{fmt(max(c.values))}" if c.values else "—"
            errs = sum(int(t.get("errors", 0) or 0) for t in c.trials)
            hwm = c.med("peak_rss_kib")
            out.append(
                f"| {s.id} | {srv.name} | {fmt(c.median)} | {rng} | {fmt(c.med('mb_per_s'))} | "
                f"{loadgen_arg(s, '--depth')}"
                + (
                    f" ({loadgen_arg(s, '--in-flight')} in all)"
                    if "--in-flight" in s.loadgen
                    else ""
                )
                + f" | {fmt(c.med('p50_us'))} | {fmt(c.med('p99_us'))} | "
                f"{errs} | {fmt(c.med('loadgen_cpu'))} | {fmt(c.med('srv_cpu'))} | "
                f"{fmt(c.med('foreign'))} | {fmt(hwm / 1024 if hwm else None)} | {notes_of(c)} |"
            )
    return out


def versions(srvs: list[Server]) -> str:
    parts = [f"Python {platform.python_version()} (driver)"]
    wanted = sorted({v.split(":", 1)[1] for s in srvs for v in s.versions if v.startswith("py:")})
    if BENCH_PY.exists():
        code = (
            "import importlib.metadata as m, json, sys, platform\n"
            "out = {'python': platform.python_version()}\n"
            "for n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n"
            "    except Exception: pass\n"
            "print(json.dumps(out))"
        )
        r = subprocess.run([str(BENCH_PY), "-c", code, *wanted], capture_output=True, text=True)
        with contextlib.suppress(ValueError):
            vs = json.loads(r.stdout)
            parts = [f"Python {vs.pop('python')} (bench/.venv)"] + [
                f"{k} {v}" for k, v in vs.items()
            ]
    if shutil.which("node"):
        r = subprocess.run(["node", "--version"], capture_output=True, text=True)
        parts.append(f"Node {r.stdout.strip()}")
        pj = NODE_DIR / "node_modules" / "ws" / "package.json"
        with contextlib.suppress(OSError, ValueError):
            parts.append(f"ws {json.loads(pj.read_text())['version']}")
    if shutil.which("redis-server"):
        r = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        for tok in r.stdout.split():
            if tok.startswith("v="):
                parts.append(f"redis-server {tok[2:]}")
    return ", ".join(parts)


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs ({model}), {mem:.1f} GiB, kernel {platform.release()}"


def commit() -> str:
    r = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    )
    return f"commit `{r.stdout.strip()}`" if r.returncode == 0 else "commit unknown"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --------------------------------------------------------------------------
# main


def progress_line(i: int, total: int, s: Scenario, n: int, srv: Server, r: dict[str, Any]) -> str:
    head = f"[{i:>3}/{total}] {s.id} trial {n} {srv.name:<11}"
    if "na" in r:
        return f"{head} n/a: {r['na']}"
    v = r.get(s.metric)
    if s.kind == "memory":
        body = (
            f"{fmt(v)} KiB/conn ({fmt(r.get('connections'))} conns, RSS "
            f"{fmt((r.get('rss_start_kib') or 0) / 1024)} → "
            f"{fmt((r.get('rss_idle_kib') or 0) / 1024)} MiB)"
        )
    else:
        body = (
            f"{fmt(v)} {s.unit}  p50 {fmt(r.get('p50_us'))} µs  p99 {fmt(r.get('p99_us'))} µs"
            f"  err {r.get('errors', '?')}  lg {fmt(r.get('loadgen_cpu'))}"
            f"  srv {fmt(r.get('srv_cpu'))}  foreign {fmt(r.get('foreign'))}"
        )
        if r.get("srv_faults_per_msg") is not None:
            body += (
                f"  srv {fmt(r.get('srv_us_per_msg'))} µs/msg"
                f"  {fmt(r.get('srv_faults_per_msg'))} faults/msg"
            )
    if r.get("failure"):
        body += f"  FAILED: {r['failure']}"
    return f"{head} {body}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="wshub's benchmark: scenarios x servers, medians and ratios (bench/README.md)"
    )
    ap.add_argument("--quick", action="store_true", help="1 trial, 0.5 s + 2 s, 2000 idle conns")
    ap.add_argument("--trials", type=int, help="trials per server and scenario (default 3)")
    ap.add_argument("--servers", help="comma-separated (default: all); --list shows them")
    ap.add_argument(
        "--scenarios", help="comma-separated (default: " + ",".join(DEFAULT_SCENARIOS) + ")"
    )
    ap.add_argument(
        "--nice", type=int, help="run server and load generator at this nice (e.g. -10, root)"
    )
    ap.add_argument("--duration", type=float, help="measured seconds (default 3; quick 2)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds (default 1; quick 0.5)")
    ap.add_argument("--idle-conns", type=int, help="S6 connections (default 5000; quick 2000)")
    ap.add_argument(
        "--sweep",
        action="store_true",
        help="binary echo over message sizes x connection counts (E32x1 ... E1Mx1000) "
        "instead of the default scenarios (with --scenarios: after them)",
    )
    ap.add_argument(
        "--topics-window",
        type=int,
        default=100,
        help="T1, T2, T4: publications not yet delivered to every subscriber (default 100)",
    )
    ap.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="an extra server for this run (repeatable), e.g. "
        "'wshub-main=/path/to/venv/bin/wshub serve'; it gets --port --mode --deflate "
        "(and, when NAME starts with wshub, --backplane URL in C1/C2/T2/T4 and "
        "--mode pubsub in T1/T2/T4)",
    )
    ap.add_argument("--baseline", default="websockets", help="ratio column (default websockets)")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--loadgen-cpu", type=int, default=1)
    ap.add_argument("--json", metavar="FILE", help="also write every trial as JSON")
    ap.add_argument("--list", action="store_true", help="list servers and scenarios, then exit")
    opts = ap.parse_args(argv)
    q = opts.quick
    opts.trials = opts.trials or (1 if q else 3)
    opts.duration = opts.duration or (2.0 if q else 3.0)
    opts.warmup = opts.warmup if opts.warmup is not None else (0.5 if q else 1.0)
    opts.idle_conns = opts.idle_conns or (2000 if q else 5000)

    all_scens = scenarios(opts.idle_conns, opts.topics_window)
    all_srvs = servers()
    for spec in opts.server:
        name, _, command = spec.partition("=")
        if not name or not command:
            ap.error(f"--server wants NAME=COMMAND, not {spec!r}")
        cmd = shlex.split(command)
        # A wshub build given this way takes part in the cluster scenarios too.
        all_srvs[name] = Server(
            name,
            cmd,
            [],
            cluster=name.startswith("wshub"),
            workers=workers_in(cmd),
            pubsub=name.startswith("wshub"),
        )
    if opts.list:
        for s in all_scens.values():
            print(f"{s.id}: {s.title} ({s.unit})")
        for sweep in filter(None, map(sweep_scenario, sweep_ids())):
            print(f"{sweep.id} (--sweep): {sweep.title} (msg/s, MB/s)")
        for srv in all_srvs.values():
            print(f"{srv.name}: {' '.join(srv.cmd)}" + (f" [{srv.label}]" if srv.label else ""))
        return 0
    try:
        wanted = opts.scenarios.split(",") if opts.scenarios else []
        if opts.sweep:
            wanted += sweep_ids()
        scens = [
            all_scens.get(x.strip()) or sweep_scenario(x.strip()) or all_scens[x.strip()]
            for x in wanted or DEFAULT_SCENARIOS
        ]
        default = [*servers(), *(spec.partition("=")[0] for spec in opts.server)]
        srvs = [all_srvs[x.strip()] for x in (opts.servers or ",".join(default)).split(",")]
    except KeyError as e:
        ap.error(f"unknown server or scenario {e} (see --list)")
    if not LOADGEN.exists():
        ap.error(f"{LOADGEN} is missing: run `make -C bench setup` (or make bench-quick)")

    # S6, T1 and the sweep's 1,000 connections need thousands of descriptors in
    # the server and in the load generator
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    sweep_conns = [loadgen_arg(s, "-c") for s in scens if s.kind == "sweep"]
    want = max(opts.idle_conns, TOPIC_SUBSCRIBERS, *sweep_conns) + 1024
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    logdir = Path(tempfile.mkdtemp(prefix="wshub-bench-"))
    runner = Runner(opts, logdir)
    t0 = time.monotonic()
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "load_start": loadavg(),
        "versions": versions(srvs),
        "commit": commit(),
        "logdir": str(logdir),
        "taskset": bool(runner.taskset),
    }
    cells = {(s.id, srv.name): Cell() for s in scens for srv in srvs}
    missing = {srv.name: unavailable(srv) for srv in srvs}
    for srv in srvs:
        for s in scens:
            c = cells[(s.id, srv.name)]
            if s.kind == "cluster" and not srv.cluster:
                c.skipped = "no backplane"
            elif srv.only and s.id not in srv.only:
                c.skipped = f"{', '.join(srv.only)} only"
            elif s.server_mode == "pubsub" and not srv.pubsub:
                c.na = "no topics (pub/sub) in its server here"
            elif missing[srv.name]:
                c.na = f"not installed here: {missing[srv.name]}"
    if not shutil.which("redis-server"):
        for s in scens:
            for srv in srvs:
                needs_redis = s.kind == "cluster" or srv.workers > 1
                if needs_redis and not cells[(s.id, srv.name)].skipped:
                    cells[(s.id, srv.name)].na = "redis-server is not installed"

    todo = [
        (s, n, srv)
        for s in scens
        for n in range(1, opts.trials + 1)
        for srv in srvs
        if not cells[(s.id, srv.name)].skipped and cells[(s.id, srv.name)].na is None
    ]
    raw: list[dict[str, Any]] = []
    print(f"wshub bench: {len(todo)} trials, logs in {logdir}", file=sys.stderr)
    for i, (s, n, srv) in enumerate(todo, 1):
        c = cells[(s.id, srv.name)]
        if c.na is not None:  # exit 3 in an earlier trial: no use asking again
            continue
        t = time.monotonic()
        try:
            r = runner.trial(srv, s, n)
        except Exception as e:  # one broken trial must not end the run
            r = {"failure": f"{type(e).__name__}: {e}"}
        if "na" in r:
            c.na = r["na"]
        else:
            v = r.get(s.metric)
            if r.get("failure") or v is None:
                c.failures.append(str(r.get("failure", "no result")))
            else:
                c.values.append(float(v))
            c.trials.append(r)
        raw.append({"scenario": s.id, "server": srv.name, "trial": n, **r})
        print(
            progress_line(i, len(todo), s, n, srv, r) + f"  ({time.monotonic() - t:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    meta["wall_min"] = (time.monotonic() - t0) / 60
    meta["load_end"] = loadavg()
    text = report(opts, scens, srvs, cells, meta)
    sys.stdout.write(text)
    if opts.json:
        Path(opts.json).write_text(json.dumps({"meta": meta, "trials": raw}, indent=1))
    print(f"wshub bench: done in {meta['wall_min']:.1f} min; logs in {logdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Run the Autobahn|Testsuite fuzzingclient against ``wshub serve --mode echo`` and judge it.

Strict: every case must be OK or INFORMATIONAL in both ``behavior`` and
``behaviorClose``; NON-STRICT, UNIMPLEMENTED, FAILED, UNCLEAN, WRONG CODE or
a case that did not run fails the gate.  wstest (Python 2.7 code) is installed
inside the repository by ``tools/autobahn/wstest_env.py`` on first use.

    tools/conformance.py                      # all 517 cases, deflate on, every code path
    tools/conformance.py --smoke              # ~300 cases: no 9.*, 12.*/13.* sub-cases 1-5
    tools/conformance.py --cases '1.*,2.*'    # a selection
    tools/conformance.py --write-docs docs/conformance.md

"Every code path": when the optional C accelerator (``wshub._speedups``) is
built, the suite runs twice at once, with it (all cases) and with
``WSHUB_NO_EXTENSIONS=1`` (the pure-Python twin; by default every case but the
large-payload compression sub-cases 12.x.6-18 / 13.x.6-18, which alone take
most of a run: ``--pure-selection full`` adds them), so both stay conformant
within CI's time.

Each run writes to ``reports/autobahn/<path>/``: ``fuzzingclient.json`` (the
spec given to wstest), ``expected-cases.json`` (the case ids it selects, as
wstest resolves them), ``wstest.log``, ``run-info.json`` and wstest's own
``reports/servers/index.json`` (+ one JSON/HTML report per case).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools" / "autobahn"))
import wstest_env  # noqa: E402

PASSING = {"OK", "INFORMATIONAL"}
GROUP_NAMES = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8",
    "7": "Close",
    "9": "Limits/Performance",
    "10": "Misc",
    "12": "permessage-deflate",
    "13": "permessage-deflate (params)",
}


# The pure-Python path's default selection: every case except the
# permessage-deflate sub-cases with payloads of 8 KiB and more (12.x.6-18,
# 13.x.6-18).  Those take most of a full run (the Python 2 test client
# compresses 1,000 messages per case) and exercise zlib and the frame reader
# in the same way as the smaller sub-cases; large payloads on the pure path
# are still covered by group 9 (up to 16 MiB).  --pure-selection full runs all.
REDUCED_EXCLUDES = [f"{g}.{s}.{c}" for g in (12, 13) for s in range(1, 10) for c in range(6, 19)]
# --smoke: a quick look while developing (~300 cases): no group 9, and of
# 12.*/13.* only the sub-cases 1-5 (payloads of 16 B to 4 KiB).
SMOKE_EXCLUDES = ["9.*", *REDUCED_EXCLUDES]
AGENT = "wshub"

# Run by wstest's own Python 2.7: the case ids a fuzzingclient spec selects,
# resolved by the suite's CaseSet (the code wstest itself selects cases with),
# in suite order.  Used to tell a case that did not run from one that passed.
SELECTED_CASES_PY2 = """\
import json, sys
from autobahntestsuite import case
from autobahntestsuite.caseset import CaseSet
with open(sys.argv[1]) as f:
    spec = json.load(f)
suite = CaseSet(case.CaseSetname, case.CaseBasename, case.Cases,
                case.CaseCategories, case.CaseSubCategories)
ids = suite.parseSpecCases(spec)
unknown = sorted(set(ids) - set(suite.CasesById))
if unknown:
    sys.exit("no such case: " + ", ".join(unknown))
print(json.dumps(ids))
"""

# Child processes still running (servers, wstest): stopped if the run is interrupted.
_children: set[subprocess.Popen[bytes]] = set()
_children_lock = threading.Lock()


_stopping = threading.Event()


def _started(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    with _children_lock:
        _children.add(proc)
    if _stopping.is_set():  # started just as the run was interrupted
        stop(proc)
        raise RuntimeError("interrupted")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with _children_lock:
        _children.discard(proc)


def stop_all() -> None:
    _stopping.set()
    with _children_lock:
        running = list(_children)
    for proc in running:
        stop(proc)


def log(msg: str) -> None:
    print(f"conformance: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def has_accelerator() -> bool:
    probe = "import wshub._speedups"
    env = dict(os.environ)
    env.pop("WSHUB_NO_EXTENSIONS", None)
    return (
        subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode == 0
    )


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"wshub serve exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"wshub serve did not listen on port {port} within {timeout}s")


def write_spec(out: Path, port: int, cases: list[str], excludes: list[str]) -> Path:
    """The fuzzingclient spec for one run (wstest writes its reports below ``out``)."""
    spec = {
        "options": {"failByDrop": False},
        "outdir": "./reports/servers",
        "servers": [{"agent": AGENT, "url": f"ws://127.0.0.1:{port}"}],
        "cases": cases,
        "exclude-cases": excludes,
        "exclude-agent-cases": {},
    }
    path = out / "fuzzingclient.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def selected_cases(wstest: wstest_env.Wstest, spec: Path) -> list[str]:
    proc = subprocess.run(
        [str(wstest.python), "-c", SELECTED_CASES_PY2, str(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cannot resolve the case selection: {proc.stderr.strip()[-500:]}")
    ids: list[str] = json.loads(proc.stdout)
    return ids


def split_patterns(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def run_wstest(
    wstest: wstest_env.Wstest, name: str, out: Path, spec: Path, ncases: int, timeout: float
) -> tuple[int, float]:
    """Run ``wstest -m fuzzingclient``; return its exit code and wall time.

    Progress goes to stderr once a minute, read from the "Running test case ID"
    lines of ``wstest.log``.  wstest writes index.json only at the end.
    """
    log_path = out / "wstest.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    started = time.monotonic()
    with open(log_path, "wb") as log_file:
        proc = _started(
            subprocess.Popen(
                [str(wstest.wstest), "-m", "fuzzingclient", "-s", str(spec)],
                cwd=out,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        )
    next_report = started + 60
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if timeout and now - started > timeout:
                log(f"{name}: wstest still running after {timeout:.0f} s: stopping it")
                break
            if now >= next_report:
                next_report += 60
                lines = log_path.read_bytes().decode(errors="replace").splitlines()
                at = [line for line in lines if line.startswith("Running test case ID")]
                current = at[-1].split()[4] if at else "-"
                log(f"{name}: {now - started:.0f} s, case {len(at)}/{ncases} ({current})")
            time.sleep(0.5)
    finally:
        stop(proc)
    return proc.returncode, time.monotonic() - started


def run_variant(
    name: str, pure: bool, args: argparse.Namespace, out_root: Path, wstest: wstest_env.Wstest
) -> dict[str, object]:
    """Start a server, run the suite against it, return the judged result."""
    out = out_root / name
    port = free_port()
    env = dict(os.environ)
    if pure:
        env["WSHUB_NO_EXTENSIONS"] = "1"
    else:
        env.pop("WSHUB_NO_EXTENSIONS", None)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("run-info.json", "expected-cases.json", "wstest.log"):
        (out / stale).unlink(missing_ok=True)
    reports = out / "reports" / "servers"
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir(parents=True, exist_ok=True)

    excludes = split_patterns(args.exclude)
    if args.smoke:
        excludes += SMOKE_EXCLUDES
    if pure and args.pure_selection == "reduced":
        excludes += REDUCED_EXCLUDES
    spec = write_spec(out, port, split_patterns(args.cases) or ["*"], excludes)
    expected = selected_cases(wstest, spec)
    (out / "expected-cases.json").write_text(json.dumps(expected) + "\n")
    if not expected:
        raise RuntimeError(f"the selection {args.cases or '*'} (less {excludes}) has no case")

    cmd = [
        sys.executable,
        "-m",
        "wshub",
        "serve",
        "--port",
        str(port),
        "--mode",
        "echo",
        "--deflate",
        args.deflate,
        "--log-level",
        "warning",
    ]
    with open(out_root / f"{name}-server.log", "wb") as server_log:
        server = _started(
            subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=server_log, stderr=subprocess.STDOUT
            )
        )
    try:
        wait_listening(port, server)
        log(f"{name}: {len(expected)} cases against ws://127.0.0.1:{port} ({wstest.version})")
        started_utc = datetime.datetime.now(datetime.timezone.utc)
        rc, wall = run_wstest(wstest, name, out, spec, len(expected), args.timeout)
        alive = server.poll() is None
    finally:
        stop(server)
    info = {
        "url": f"ws://127.0.0.1:{port}",
        "agent": AGENT,
        "pure": pure,
        "cases": split_patterns(args.cases) or ["*"],
        "exclude": excludes,
        "cases_selected": len(expected),
        "wstest": wstest.version,
        "wstest_exit": rc,
        "duration_s": round(wall, 1),
        "started_utc": started_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (out / "run-info.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"{name}: wstest exited with {rc} after {wall:.1f} s")
    result = judge(out)
    tail = (out / "wstest.log").read_bytes().decode(errors="replace")[-1500:]
    result.update(
        name=name,
        pure=pure,
        wall_s=round(wall, 1),
        server_alive=alive,
        wstest_exit=rc,
        wstest_tail=tail,
    )
    return result


def judge(out: Path) -> dict[str, object]:
    index_path = out / "reports" / "servers" / "index.json"
    expected_path = out / "expected-cases.json"
    if not index_path.exists():
        return {"ok": False, "error": f"no results: {index_path} missing", "groups": {}, "bad": []}
    index = json.loads(index_path.read_text())
    cases: dict[str, dict[str, object]] = next(iter(index.values())) if index else {}
    expected: list[str] = (
        json.loads(expected_path.read_text()) if expected_path.exists() else list(cases)
    )
    groups: dict[str, dict[str, Counter[str]]] = {}
    bad: list[str] = []
    for case_id in expected:
        group = case_id.split(".", 1)[0]
        g = groups.setdefault(group, {"behavior": Counter(), "behaviorClose": Counter()})
        res = cases.get(case_id)
        if res is None:
            g["behavior"]["NOT RUN"] += 1
            g["behaviorClose"]["NOT RUN"] += 1
            bad.append(f"{case_id}: NOT RUN")
            continue
        b, c = str(res.get("behavior")), str(res.get("behaviorClose"))
        g["behavior"][b] += 1
        g["behaviorClose"][c] += 1
        if b not in PASSING or c not in PASSING:
            bad.append(
                f"{case_id}: behavior {b}, close {c}, close code {res.get('remoteCloseCode')}"
            )
    return {
        "ok": not bad and bool(expected),
        "cases": len(expected),
        "groups": {k: {kk: dict(vv) for kk, vv in v.items()} for k, v in groups.items()},
        "bad": bad,
    }


def _counts(counter: Counter[str]) -> str:
    """``OK 514, INFORMATIONAL 3``-style cell."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))


def table(result: dict[str, object]) -> str:
    groups = result["groups"]
    assert isinstance(groups, dict)
    lines = [
        "| group | cases | behavior | behaviorClose |",
        "| --- | ---: | --- | --- |",
    ]
    total_b: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    for key in sorted(groups, key=lambda k: int(k)):
        g = groups[key]
        b, c = Counter(g["behavior"]), Counter(g["behaviorClose"])
        total_b += b
        total_c += c
        name = f"{key} {GROUP_NAMES.get(key, '')}"
        lines.append(f"| {name} | {sum(b.values())} | {_counts(b)} | {_counts(c)} |")
    lines.append(f"| **all** | {sum(total_b.values())} | {_counts(total_b)} | {_counts(total_c)} |")
    return "\n".join(lines)


def write_docs(path: Path, results: list[dict[str, object]], args: argparse.Namespace) -> None:
    parts = [
        "# Conformance",
        "",
        "wshub is judged by the [Autobahn|Testsuite](https://github.com/crossbario/autobahn-testsuite)"
        " fuzzing client: every case of RFC 6455 and RFC 7692 (permessage-deflate), run against"
        " `wshub serve --mode echo --deflate on` with the library's default settings (the `serve`"
        " command raises only `max_payload`, to 64 MiB, because group 9 sends 16 MiB messages).",
        "",
        "The gate is strict: a case passes only when both `behavior` and `behaviorClose` are OK"
        " (or INFORMATIONAL, for the three cases the suite never judges: 7.1.6, 7.13.1, 7.13.2)."
        " NON-STRICT, UNIMPLEMENTED, FAILED, UNCLEAN, WRONG CODE and NOT RUN all fail it."
        " `make test` runs it on every change (`tests/conformance/test_autobahn.py`).",
        "",
        "Both code paths are judged: the default one (with the optional C accelerator) and the"
        " pure-Python twin (`WSHUB_NO_EXTENSIONS=1`). To fit CI's time, `make test` gives the pure"
        " path every case but the large-payload compression sub-cases 12.x.6-18 and 13.x.6-18;"
        " `--pure-selection full` runs those too.",
        "",
        "The suite is the repository's own: `tools/autobahn/wstest_env.py` installs wstest"
        " (Python 2.7 code) into a virtualenv under `.cache/autobahn/` on first use, with"
        " autobahntestsuite and every package it needs pinned in"
        " `tools/autobahn/requirements-py2.txt`; `tools/conformance.py` writes the"
        " fuzzingclient spec, runs wstest and judges its `index.json`.",
        "",
        "This page is generated by `make conformance-docs` (`tools/conformance.py --write-docs`).",
        "",
    ]
    for res in results:
        info_path = Path(str(args.out)) / str(res["name"]) / "run-info.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        label = "pure-Python path (`WSHUB_NO_EXTENSIONS=1`)" if res["pure"] else "default path"
        if res["pure"] and args.pure_selection == "reduced":
            label += ": every case but 12.x.6-18 and 13.x.6-18 (payloads of 8 KiB and more)"
        if res["name"] == "default" and not has_accelerator():
            label = "default path (pure Python: no C accelerator is built)"
        parts += [
            f"## {label}",
            "",
            f"{res['cases']} cases, {'**all pass**' if res['ok'] else '**failures**'};"
            f" wall time {res['wall_s']} s on the development machine (2 cores, shared);"
            f" {info.get('wstest', 'wstest')}; run started {info.get('started_utc', '?')}.",
            "",
            table(res),
            "",
        ]
        if res["bad"]:
            bad = res["bad"]
            assert isinstance(bad, list)
            parts += ["Not passing:", ""] + [f"- {b}" for b in bad[:50]] + [""]
    parts += [
        "## Reference results of other libraries",
        "",
        "Measured on the same machine with the same wstest (all 517 cases):"
        " `websockets` 17.4 has 7 FAILED (7.1.5, 9.3.1-9.3.3, 9.4.1-9.4.3) and 11 NON-STRICT;"
        " Node `ws` 8.23 has 4 FAILED (9.3/9.4: its fragment-count limit) and 4 NON-STRICT (6.4.x);"
        " `@jadsonlucena/websocket` fails 131 cases and never closes cleanly.",
        "",
        "How wshub passes the cases peers miss: UTF-8 is validated incrementally as payload bytes"
        " arrive, even in the middle of a frame (6.4.x fail fast); messages already complete in"
        " a read are delivered, in order, before a later protocol error fails the connection"
        " (3.2, 4.1.3, 5.15); a Close in the middle of a fragmented message is answered normally"
        " (7.1.5); and many-fragment messages (9.3, 9.4) are bounded by bytes (`max_payload`),"
        " not by a fragment count — each fragment's payload is appended to one buffer, so CPU"
        " and memory per message stay linear in its size.",
        "",
    ]
    path.write_text("\n".join(parts))


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cases", help="comma-separated case patterns (default: all)")
    p.add_argument("--exclude", help="comma-separated case patterns to leave out")
    p.add_argument(
        "--smoke", action="store_true", help="~300 cases: no 9.*, of 12.*/13.* sub-cases 1-5"
    )
    p.add_argument("--deflate", choices=["on", "off"], default="on")
    p.add_argument(
        "--paths",
        choices=["auto", "default", "pure", "both"],
        default="auto",
        help="which code paths (auto: both when the C accelerator is built)",
    )
    p.add_argument(
        "--pure-selection",
        choices=["reduced", "full"],
        default="reduced",
        help="cases for the pure-Python path (reduced: all but 12.x.6-18 and 13.x.6-18)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=3600,
        help="stop wstest after this many seconds per path (0: no limit; default 3600)",
    )
    p.add_argument("--python2", help="the Python 2.7 to install wstest with (default: search)")
    p.add_argument("--out", default=str(ROOT / "reports" / "autobahn"), help="report folder")
    p.add_argument("--write-docs", metavar="FILE", help="write the summary page (Markdown)")
    p.add_argument(
        "--from-reports",
        action="store_true",
        help="judge the reports already in --out (from an earlier run) instead of running",
    )
    args = p.parse_args()

    paths = args.paths
    if paths == "auto":
        paths = "both" if has_accelerator() else "default"
    variants = {
        "default": [("default", False)],
        "pure": [("pure", True)],
        "both": [("default", False), ("pure", True)],
    }[paths]
    out_root = Path(args.out)
    if args.from_reports:
        results = []
        for name, pure in variants:
            res = judge(out_root / name)
            info_path = out_root / name / "run-info.json"
            info = json.loads(info_path.read_text()) if info_path.exists() else {}
            res.update(name=name, pure=pure, wall_s=info.get("duration_s"), server_alive=True)
            results.append(res)
    else:
        # Installs wstest on first use (once, before the paths run in parallel).
        try:
            wstest = wstest_env.ensure(python2=args.python2)
        except wstest_env.SetupError as exc:
            print(f"conformance: cannot install Autobahn|Testsuite (wstest): {exc}")
            print("conformance: FAIL (the suite could not be installed)")
            return 2
        # SIGTERM (e.g. from a test runner's timeout) stops the servers and wstest too.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        pool = concurrent.futures.ThreadPoolExecutor(len(variants))
        try:
            futures = [
                pool.submit(run_variant, n, pure, args, out_root, wstest) for n, pure in variants
            ]
            results = [f.result() for f in futures]
        except RuntimeError as exc:
            print(f"conformance: {exc}")
            print("conformance: FAIL")
            return 2
        finally:
            stop_all()
            pool.shutdown()
    ok = True
    for res in results:
        print(
            f"== {res['name']} path: {res.get('cases', 0)} cases, wall {res.get('wall_s')} s, "
            f"server {'alive' if res.get('server_alive') else 'DIED'}"
        )
        if res.get("error"):
            print(f"   {res['error']}")
            print(res.get("wstest_tail", ""))
        else:
            print(table(res))
        for b in res["bad"][:40]:  # type: ignore[index]
            print("   NOT PASSING", b)
        if res.get("wstest_exit"):
            print(f"   wstest exited with {res['wstest_exit']}")
        ok = ok and bool(res["ok"]) and bool(res.get("server_alive"))
        ok = ok and not res.get("wstest_exit")
    if args.write_docs:
        write_docs(Path(args.write_docs), results, args)
        print(f"wrote {args.write_docs}")
    print("conformance:", "PASS (strict)" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

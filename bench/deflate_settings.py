"""Measure permessage-deflate settings: memory per connection, ratio, speed.

    .venv/bin/python bench/deflate_settings.py codec            # in-process, tracemalloc
    .venv/bin/python bench/deflate_settings.py server -n 1000   # real server, RSS

``codec``: for each setting, negotiates as a browser does
(``permessage-deflate; client_max_window_bits``), then measures with
tracemalloc (zlib allocates through PyMem, so its buffers are traced) the
bytes one codec holds idle, and after one 1 KiB message each way; then the
compression ratio and encode time on three workloads.

``server``: starts ``wshub`` in a child process per setting, opens N
connections with the websockets client (compression on, same offer), reads
the server's VmRSS idle and after every connection sent one 1 KiB JSON
message and got the echo.  KiB per connection = (RSS - RSS before) / N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import tracemalloc
import zlib

from wshub import DeflateOptions
from wshub.protocol.connection import Connection
from wshub.protocol.deflate import PerMessageDeflate, negotiate_extensions

OFFER = "permessage-deflate; client_max_window_bits"

SETTINGS: dict[str, dict[str, object]] = {
    "default (level 1, mem 5, 12 bits, takeover)": {},
    "default but level 6": {"level": 6},
    "15 bits, mem 8, level 6 (zlib's and Node ws' defaults)": {
        "max_window_bits": 15,
        "mem_level": 8,
        "level": 6,
    },
    "15 bits, mem 8, no takeover": {
        "max_window_bits": 15,
        "mem_level": 8,
        "no_context_takeover": True,
    },
    "default + no takeover": {"no_context_takeover": True},
    "10 bits, mem 4": {"max_window_bits": 10, "mem_level": 4},
    "9 bits, mem 1": {"max_window_bits": 9, "mem_level": 1},
}


def chat(i: int) -> bytes:
    return json.dumps(
        {"type": "chat", "room": "lobby", "user": f"user{i % 37}", "seq": i, "text": f"hi {i}"}
    ).encode()


def json_doc(i: int, size: int) -> bytes:
    rows = []
    n = 0
    while n < size:
        row = json.dumps({"id": i * 1000 + n, "name": f"item-{n % 97}", "price": n * 3 % 1000})
        rows.append(row)
        n += len(row) + 1
    return ("[" + ",".join(rows) + "]").encode()[:size]


ONE_KIB = json_doc(0, 1024)


def client_message(bits: int, data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -max(9, bits))
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


def masked_frame(payload: bytes) -> bytes:
    """A compressed binary client frame (n < 65536) with an all-zero mask."""
    n = len(payload)
    short = n < 126
    head = bytes((0xC2, 0x80 | (n if short else 126))) + (b"" if short else n.to_bytes(2, "big"))
    return head + b"\x00\x00\x00\x00" + payload


def codec_part() -> None:
    print(
        "| setting | idle B | after 1 msg each way B | chat ratio | 4 KiB ratio | 64 KiB ratio"
        " | encode µs (chat / 4 KiB / 64 KiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, kwargs in SETTINGS.items():
        opts = DeflateOptions(**kwargs)  # type: ignore[arg-type]
        n = 200
        best_of = 5  # timings: the best of 5 runs (the machine is shared)
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        conns = []
        for _ in range(n):
            accepted = negotiate_extensions(OFFER, opts)
            assert accepted is not None
            conns.append(Connection(codec=accepted[1]))
        idle = (tracemalloc.get_traced_memory()[0] - base) / n
        codec0 = conns[0].codec
        assert isinstance(codec0, PerMessageDeflate)
        wire = masked_frame(client_message(codec0.client_window_bits, ONE_KIB))
        for conn in conns:
            assert conn.receive_data(wire) == [ONE_KIB]
            conn.send_message(ONE_KIB, False)
        busy = (tracemalloc.get_traced_memory()[0] - base) / n
        tracemalloc.stop()
        del conns
        ratios = []
        times = []
        for workload in (
            [chat(i) for i in range(2000)],
            [json_doc(i, 4096) for i in range(300)],
            [json_doc(i, 65536) for i in range(20)],
        ):
            best = float("inf")
            for _ in range(best_of):
                accepted = negotiate_extensions(OFFER, opts)
                assert accepted is not None
                codec = accepted[1]
                raw = out = 0
                t = time.perf_counter()
                for m in workload:
                    enc = codec.encode(m)
                    raw += len(m)
                    out += len(enc) if enc is not None else len(m)
                best = min(best, (time.perf_counter() - t) / len(workload) * 1e6)
            times.append(best)
            ratios.append(out / raw)
        print(
            f"| {name} | {idle:.0f} | {busy:.0f} | "
            + " | ".join(f"{r:.2f}" for r in ratios)
            + " | "
            + " / ".join(f"{t:.0f}" for t in times)
            + " |"
        )


SERVER = """
import sys
from wshub import HttpServer, WebSocket, DeflateOptions
opts = {deflate}
server = HttpServer()
ws = WebSocket(server, per_message_deflate=opts, limit_by_ip=0, ping_delay=0)
ws.on("message", lambda cid, data: ws.send(cid, data))
server.run(host="127.0.0.1", port={port})
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def server_setting(name: str, kwargs: dict[str, object] | None, n: int, port: int) -> str:
    import websockets

    deflate = "False" if kwargs is None else f"DeflateOptions(**{kwargs!r})"
    code = SERVER.format(deflate=deflate, port=port)
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        before = rss_kib(proc.pid)
        clients = []
        for _ in range(n):
            clients.append(
                await websockets.connect(
                    f"ws://127.0.0.1:{port}/",
                    compression="deflate",
                    ping_interval=None,
                    max_size=None,
                )
            )
        await asyncio.sleep(1.0)
        idle = rss_kib(proc.pid)
        for c in clients:
            await c.send(ONE_KIB)
            assert await c.recv() == ONE_KIB
        await asyncio.sleep(1.0)
        busy = rss_kib(proc.pid)
        ext = clients[0].response.headers.get("Sec-WebSocket-Extensions")
        for c in clients:
            await c.close()
        return f"| {name} | `{ext}` | {(idle - before) / n:.1f} | {(busy - before) / n:.1f} |"
    finally:
        proc.terminate()
        proc.wait()


async def server_part(n: int, port: int) -> None:
    print(f"| setting | answer to `{OFFER}` | KiB/conn idle | KiB/conn after one message |")
    print("|---|---|---|---|")
    for i, (name, kwargs) in enumerate(SETTINGS.items()):
        print(await server_setting(name, kwargs, n, port + i), flush=True)
    name = "deflate off (per_message_deflate=False)"
    print(await server_setting(name, None, n, port + len(SETTINGS)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["codec", "server"])
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--port", type=int, default=19300)
    args = parser.parse_args()
    if args.part == "codec":
        codec_part()
    else:
        asyncio.run(server_part(args.n, args.port))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()

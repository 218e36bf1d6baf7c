"""Our own CPU cost per echoed message, in-process (no sockets, no kernel).

Like the echo scenarios of ``make bench``: an Http1Protocol with a fake
transport is upgraded (optionally with permessage-deflate, no context
takeover, as S4 offers it), then fed reads of ``--per-read`` masked frames;
an echo handler sends each message back.  Prints microseconds per message
(best of 5) and, with --profile, the functions that take the time.  The
real figures are S1-S4 of ``make bench``.

    python bench/echo_micro.py --deflate --size 4096 --per-read 4   # ~S4
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import time
import zlib

from wshub import HttpServer, WebSocket
from wshub.protocol.frames import apply_mask, build_frame
from wshub.transport.http1 import Http1Protocol

try:
    from bench.handshake_micro import FakeTransport, request
except ImportError:  # run as a script: python bench/echo_micro.py
    from handshake_micro import FakeTransport, request  # type: ignore[no-redef]


def json_payload(size: int) -> bytes:
    """JSON-like text much like the load generator's (--payload json)."""
    acts = ["update", "insert", "delete", "snapshot"]
    syms = ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "TSLA"]
    out = "["
    i = 0
    while len(out) < size:
        out += (
            f'{{"id":{i},"type":"{acts[i % 4]}","symbol":"{syms[i % 6]}",'
            f'"price":{i * 7 % 1000}.{i % 100:02d},"qty":{i * 13 % 500},'
            f'"user":"user_{i % 100:04d}","flags":["alpha","beta"]}},'
        )
        i += 1
    return out[:size].encode()


def masked_frame(opcode: int, payload: bytes, rsv1: bool) -> bytes:
    """A client frame: our own (unmasked) frame with the mask bit and a key."""
    frame = build_frame(opcode, payload, rsv1=rsv1)
    hlen = len(frame) - len(payload)
    mask = os.urandom(4)
    return bytes([frame[0], frame[1] | 0x80]) + frame[2:hlen] + mask + apply_mask(payload, mask)


def reads(args: argparse.Namespace, count: int) -> list[bytes]:
    payload = json_payload(args.size)
    frames = []
    for i in range(min(count * args.per_read, 256)):
        body = b"%016x" % i + payload[16:]
        if args.deflate:
            c = zlib.compressobj(1, zlib.DEFLATED, -15)
            body = (c.compress(body) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
        frames.append(masked_frame(1, body, args.deflate))
    per = args.per_read
    return [b"".join(frames[(k * per + j) % len(frames)] for j in range(per)) for k in range(count)]


async def run(args: argparse.Namespace, profile: bool = False) -> float:
    server = HttpServer()
    ws = WebSocket(server, ping_delay=0, allow_origin="*", per_message_deflate=args.deflate)
    ws.on("message", lambda cid, data: ws.send(cid, data))
    t = FakeTransport()
    proto = t.protocol = Http1Protocol(server)
    proto.connection_made(t)  # type: ignore[arg-type]
    req = request(8080)
    if args.deflate:
        offer = (
            "Sec-WebSocket-Extensions: permessage-deflate; "
            "client_no_context_takeover; server_no_context_takeover\r\n\r\n"
        )
        req = req[:-2] + offer.encode()
    proto.data_received(req)
    assert proto.link is not None, t.out
    link = t.protocol  # the transport's protocol after the 101
    batch = reads(args, 2000)
    for data in batch[:200]:  # warm up
        link.data_received(data)
    best = float("inf")
    prof = cProfile.Profile() if profile else None
    for _ in range(1 if profile else 5):
        t.out.clear()
        if prof is not None:
            prof.enable()
        start = time.perf_counter()
        for data in batch:
            link.data_received(data)
        elapsed = time.perf_counter() - start
        if prof is not None:
            prof.disable()
        best = min(best, elapsed / (len(batch) * args.per_read))
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--per-read", type=int, default=4)
    parser.add_argument("--deflate", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    best = asyncio.run(run(args, args.profile))
    print(f"{best * 1e6:.2f} us per echoed message (our code only)")


if __name__ == "__main__":
    main()

"""Our CPU cost per permessage-deflate echo, in-process (the core of S4).

A :class:`~wshub.protocol.connection.Connection` with the codec S4
negotiates (``client_no_context_takeover; server_no_context_takeover``,
the server's default :class:`~wshub.DeflateOptions`) is fed reads of
``--per-read`` masked frames, each a 4 KiB JSON-like text compressed the
way the load generator does it (zlib level 6, 15-bit window, once at
start); every message is echoed with ``send_message``.  No hub, no
transport: ``receive_data`` + ``send_message`` only.  Prints microseconds
per message (best of ``--repeat``) and, with ``--parts``, the codec's
inflate and deflate alone.

    .venv/bin/python bench/deflate_micro.py
    WSHUB_NO_EXTENSIONS=1 .venv/bin/python bench/deflate_micro.py   # pure path
    .venv/bin/python bench/deflate_micro.py --compare /tmp/base/src src --rounds 5
    .venv/bin/python bench/deflate_micro.py --levers

``--levers``: the ways around the compression library, timed against each
other in the same process (see :func:`levers`).

``--compare A B``: alternate child runs with ``PYTHONPATH=A`` and
``PYTHONPATH=B`` (two source trees: the ``src`` of a ``git archive`` of
the base and the work tree) and print the best of each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any

NAMES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
NAMES += ["golf", "hotel", "india", "juliet", "kilo", "lima"]
OFFER = "permessage-deflate; client_no_context_takeover; server_no_context_takeover"


def json_text(m: int, size: int, seed: int) -> bytes:
    """JSON-like text like the load generator's deflate mode (exactly ``size`` bytes)."""
    state = seed * 2654435761 + m + 1
    out = f'{m:016x}{{"msg":{m},"events":['
    k = 0
    while len(out) < size:
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        r = state
        out += (
            f'{"," if k else ""}{{"id":{k},"user":"{NAMES[r % 12]}_{(r >> 8) % 1000}",'
            f'"score":{(r >> 20) % 10000}.{(r >> 40) % 100:02d},'
            f'"active":{"true" if (r >> 50) & 1 else "false"},'
            f'"tags":["{NAMES[(r >> 54) % 12]}","{NAMES[(r >> 58) % 12]}"]}}'
        )
        k += 1
    return (out[: size - 3] + "]}\n").encode()


def client_frame(payload: bytes, mask: bytes) -> bytes:
    """A masked text frame with RSV1 (compressed), as a client sends it."""
    n = len(payload)
    if n < 126:
        head = bytes([0xC1, 0x80 | n])
    elif n < 65536:
        head = bytes([0xC1, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0xC1, 0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + mask + masked


def compressed(text: bytes) -> bytes:
    deflater = zlib.compressobj(6, zlib.DEFLATED, -15, 8)
    out = deflater.compress(text) + deflater.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4]


def run(args: argparse.Namespace) -> tuple[float, dict[str, float]]:
    from wshub.protocol.connection import Connection
    from wshub.protocol.deflate import negotiate_extensions

    texts = [json_text(m, args.size, 7) for m in range(64)]
    frames = [client_frame(compressed(t), os.urandom(4)) for t in texts]
    per = args.per_read
    reads = [b"".join(frames[(k * per + j) % len(frames)] for j in range(per)) for k in range(64)]
    conns = []
    for _ in range(args.conns):
        negotiated = negotiate_extensions(OFFER, True)
        assert negotiated is not None
        conns.append(Connection(codec=negotiated[1]))
    # Check once that every message comes back whole.
    check = conns[0].receive_data(reads[0])
    assert [m.encode() for m in check if isinstance(m, str)] == texts[:per], "bad echo"
    sent = 0
    for conn in conns:
        for data in reads:
            for event in conn.receive_data(data):
                sent += len(conn.send_message(event.encode(), True))  # type: ignore[union-attr]
    best = float("inf")
    for _ in range(args.repeat):
        start = time.perf_counter()
        for _ in range(args.loops):
            for conn in conns:
                for data in reads:
                    for event in conn.receive_data(data):
                        conn.send_message(event.encode(), True)  # type: ignore[union-attr]
        elapsed = time.perf_counter() - start
        best = min(best, elapsed / (args.loops * len(conns) * len(reads) * per))
    parts: dict[str, float] = {}
    if args.parts:
        codec = conns[0].codec
        assert codec is not None
        payloads = [compressed(t) for t in texts]
        for name, work in (
            ("inflate", lambda: [codec.decode(p, True, 1 << 20) for p in payloads]),
            ("deflate", lambda: [codec.encode(t) for t in texts]),
        ):
            cost = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                for _ in range(args.loops * 4):
                    work()
                cost = min(cost, (time.perf_counter() - start) / (args.loops * 4 * len(texts)))
            parts[name] = cost
        parts["ratio"] = sent / (len(conns) * len(reads) * per * args.size)
    return best, parts


def levers(args: argparse.Namespace) -> None:
    """The alternatives around the compression library for S4's messages,
    timed against each other in alternating rounds (best of ``--rounds``).

    Each line is one way of inflating or deflating a whole 4 KiB message on
    its own (no context takeover), with the bytes it produces; the codec's
    own ``decode_alone``/``encode`` are there to show what wshub adds around
    the library calls.  The one-shot forms are measured for the record, not
    usable as they are: the one-shot inflate has no output bound (a
    compression bomb would allocate all of it), and the one-shot deflate
    ends in a BFINAL block, which ws on Node.js 12 and later cannot inflate
    (websockets/ws#1669).  Needs the isal package.
    """
    from isal import igzip_lib, isal_zlib

    from wshub.protocol.deflate import negotiate_extensions

    negotiated = negotiate_extensions(OFFER, True)
    assert negotiated is not None
    codec: Any = negotiated[1]
    texts = [json_text(m, args.size, 7) for m in range(64)]
    tail = b"\x00\x00\xff\xff"
    payloads = [compressed(t) + tail for t in texts]
    # The client's payloads end in a sync flush: a one-shot inflate needs a
    # final block after it (an empty fixed-Huffman block, 03 00).
    finished = [p + b"\x03\x00" for p in payloads]
    bits = codec.server_window_bits
    shared = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -bits)
    zlib_inflater = zlib.decompressobj(-15)
    zlib_deflater = zlib.compressobj(1, zlib.DEFLATED, -bits, 5)

    def isal_shared(t: bytes) -> bytes:
        out: bytes = shared.compress(t) + shared.flush(zlib.Z_FULL_FLUSH)
        return out[:-4]

    def isal_per_message(t: bytes) -> bytes:
        deflater = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -bits)
        out: bytes = deflater.compress(t) + deflater.flush(zlib.Z_SYNC_FLUSH)
        return out[:-4]

    def zlib_copy(t: bytes) -> bytes:
        deflater = zlib_deflater.copy()
        return (deflater.compress(t) + deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]

    cases: list[tuple[str, Callable[[], list[bytes]]]] = [
        (
            "inflate: codec.decode_alone (isal_zlib.decompressobj)",
            lambda: [codec.decode_alone(p, -1) for p in payloads],
        ),
        (
            "inflate: bare isal_zlib.decompressobj(-15).decompress",
            lambda: [isal_zlib.decompressobj(-15).decompress(p) for p in payloads],
        ),
        (
            "inflate: isal_zlib.decompress one-shot (unbounded)",
            lambda: [isal_zlib.decompress(p, -15) for p in finished],
        ),
        (
            "inflate: zlib template copy (pure path)",
            lambda: [zlib_inflater.copy().decompress(p) for p in payloads],
        ),
        (
            "deflate: codec.encode (shared isal, full flush)",
            lambda: [codec.encode(t) for t in texts],
        ),
        (
            "deflate: bare shared isal compressobj, full flush",
            lambda: list(map(isal_shared, texts)),
        ),
        ("deflate: isal compressobj per message", lambda: list(map(isal_per_message, texts))),
        (
            "deflate: igzip_lib.compress one-shot (BFINAL block)",
            lambda: [
                igzip_lib.compress(t, 1, igzip_lib.COMP_DEFLATE, 1, bits) + b"\x00" for t in texts
            ],
        ),
        ("deflate: zlib level 1 template copy (pure path)", lambda: list(map(zlib_copy, texts))),
    ]
    best = dict.fromkeys(range(len(cases)), float("inf"))
    for _ in range(args.rounds * 4):
        for k, (_, work) in enumerate(cases):
            start = time.perf_counter()
            for _ in range(args.loops):
                work()
            best[k] = min(best[k], (time.perf_counter() - start) / (args.loops * len(texts)))
    for k, (name, work) in enumerate(cases):
        size = sum(map(len, work())) / len(texts)
        print(f"{best[k] * 1e6:7.2f} us  {size:7.1f} B  {name}")


def compare(args: argparse.Namespace) -> None:
    trees = args.compare
    best = dict.fromkeys(trees, float("inf"))
    child = [sys.executable, os.path.abspath(__file__), "--size", str(args.size)]
    child += ["--per-read", str(args.per_read), "--conns", str(args.conns)]
    child += ["--repeat", str(args.repeat), "--loops", str(args.loops), "--raw"]
    for _ in range(args.rounds):
        for tree in trees:
            env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
            out = subprocess.run(child, env=env, check=True, capture_output=True, text=True)
            best[tree] = min(best[tree], float(out.stdout.split()[0]))
    for tree in trees:
        print(f"{best[tree] * 1e6:7.2f} us per message  {tree}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--per-read", type=int, default=4, help="frames per read (S4: depth 4)")
    parser.add_argument("--conns", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--loops", type=int, default=5)
    parser.add_argument("--parts", action="store_true", help="also the codec's inflate/deflate")
    parser.add_argument("--compare", nargs=2, metavar="SRC", help="alternate two source trees")
    parser.add_argument(
        "--levers", action="store_true", help="time the alternatives around ISA-L (needs isal)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare:
        compare(args)
        return
    if args.levers:
        levers(args)
        return
    best, parts = run(args)
    if args.raw:
        print(best)
        return
    print(f"{best * 1e6:.2f} us per echoed message (receive_data + send_message)")
    for name, value in parts.items():
        if name == "ratio":
            print(f"  reply size / text size: {value:.3f}")
        else:
            print(f"  {name} alone: {value * 1e6:.2f} us per message")


if __name__ == "__main__":
    main()

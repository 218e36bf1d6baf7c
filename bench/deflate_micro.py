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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare:
        compare(args)
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

"""Granian (Rust I/O and framing) serving a plain ASGI WebSocket app.  No permessage-deflate."""

from __future__ import annotations

import os
import sys
from pathlib import Path

MODE = os.environ.get("BENCH_MODE", "echo")
clients: set = set()


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    if MODE == "broadcast":
        clients.add(send)
    try:
        while True:
            event = await receive()
            if event["type"] != "websocket.receive":
                break
            if event.get("text") is not None:
                out = {"type": "websocket.send", "text": event["text"]}
            else:
                out = {"type": "websocket.send", "bytes": event["bytes"]}
            if MODE == "echo":
                await send(out)
            else:
                for target in list(clients):
                    try:
                        await target(out)
                    except Exception:  # a client that left meanwhile
                        clients.discard(target)
    finally:
        clients.discard(send)


if __name__ == "__main__":
    from _args import parse, unsupported

    args = parse(__doc__)
    if args.deflate:
        unsupported("Granian's WebSockets have no permessage-deflate")
    os.environ["BENCH_MODE"] = args.mode
    from granian import Granian
    from granian.constants import Interfaces

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    Granian(
        "granian_server:app",
        address="127.0.0.1",
        port=args.port,
        interface=Interfaces.ASGI,
        workers=1,
        websockets=True,
        log_access=False,
        working_dir=here,
    ).serve()

"""websockets (asyncio API): echo, or broadcast to every client."""

from __future__ import annotations

import asyncio

from _args import parse
from websockets.asyncio.server import ServerConnection, broadcast, serve

args = parse(__doc__)
clients: set[ServerConnection] = set()


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def fan_out(ws: ServerConnection) -> None:
    clients.add(ws)
    try:
        async for message in ws:
            broadcast(clients, message)
    finally:
        clients.discard(ws)


async def main() -> None:
    async with serve(
        echo if args.mode == "echo" else fan_out,
        "127.0.0.1",
        args.port,
        compression="deflate" if args.deflate else None,
        ping_interval=None,
        max_size=None,
    ) as server:
        await server.serve_forever()


asyncio.run(main())

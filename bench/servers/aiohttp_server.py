"""aiohttp: echo, or broadcast to every client."""

from __future__ import annotations

from _args import parse
from aiohttp import WSMsgType, web

args = parse(__doc__)
clients: set[web.WebSocketResponse] = set()


async def handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=args.deflate, max_msg_size=0)
    await ws.prepare(request)
    if args.mode == "broadcast":
        clients.add(ws)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                targets = clients if args.mode == "broadcast" else (ws,)
                for target in list(targets):
                    await target.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                targets = clients if args.mode == "broadcast" else (ws,)
                for target in list(targets):
                    await target.send_bytes(msg.data)
    finally:
        clients.discard(ws)
    return ws


app = web.Application()
app.router.add_get("/", handler)
web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)

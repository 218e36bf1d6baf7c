"""The ASGI application of test_handshake_hook_asgi.py (served by uvicorn and Hypercorn).

An async ``on_handshake`` hook: ``?token=good`` is admitted (data attached),
anything else gets 401 with ``WWW-Authenticate``; ``/stuck`` never answers
(bounded by ``handshake_timeout``, 0.5 s here); ``/boom`` raises; on
``/cancelled`` what it awaits is cancelled under it.  Each admitted client
is sent one JSON message with what the hub kept: its data, subprotocol and
request, and how many times the hook ran for its path.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from wshub import Handshake, Response, WebSocket

calls: Counter[str] = Counter()


async def check(hs: Handshake) -> Response | None:
    calls[hs.path] += 1
    await asyncio.sleep(0.01)
    if hs.path == "/stuck":
        await asyncio.Event().wait()
    if hs.path == "/boom":
        raise RuntimeError("the hook's own bug")
    if hs.path == "/cancelled":  # a lookup cancelled under the hook
        lookup: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lookup.get_loop().call_soon(lookup.cancel)
        await lookup
    if hs.query_params.get("token") != ["good"]:
        return Response.text(401, "who are you?\n", [("WWW-Authenticate", 'Bearer realm="t"')])
    hs.data = {"user": "alice"}
    hs.response_headers.append(("X-Hooked", "yes"))
    return None


ws = WebSocket(on_handshake=check, subprotocols=["chat.v2", "chat.v1"])


@ws.on("open")
def opened(client_id: str) -> None:
    request = ws.request(client_id)
    assert request is not None
    report = {
        "data": ws.data(client_id),
        "subprotocol": ws.subprotocol(client_id),
        "path": request.path,
        "http_version": request.http_version,
        "method": request.method,
        "cookies": request.cookies,
        "client": request.client,
        "calls": calls[request.path],
    }
    ws.send(client_id, json.dumps(report))


app = ws.asgi(handshake_timeout=0.5)

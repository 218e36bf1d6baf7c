"""socketify.py (C++ uWebSockets): echo, publish to every client, or topics.

``--mode pubsub`` (scenario T1) answers the part of wshub.v1 that the load
generator speaks with uWebSockets' own topics: ``subscribe`` is
``ws.subscribe(topic)`` (answered ``subscribed``), ``publish`` is
``app.publish(topic, envelope)``, framed once by uWebSockets for every
subscriber.  The envelope is wshub.v1's ``message`` without a position
(socketify keeps no history).

Echo replies go out as socketify sends them by default (``ws.send`` has
``compress=False``): uncompressed even when permessage-deflate was
negotiated.  With ``BENCH_COMPRESS_REPLIES=1`` (the driver's
``socketify-z``) they are sent with ``compress=True``, as wshub, websockets,
aiohttp and Node's ws do by default, so S4 can also be compared like for like.
"""

from __future__ import annotations

import json
import os

from _args import parse
from socketify import App, AppListenOptions, CompressOptions, OpCode

args = parse(__doc__, modes=("echo", "broadcast", "pubsub"))
app = App()
compress_replies = os.environ.get("BENCH_COMPRESS_REPLIES") == "1"
dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def on_open(ws) -> None:  # type: ignore[no-untyped-def]
    if args.mode == "broadcast":
        ws.subscribe("all")


def on_request(ws, message) -> None:  # type: ignore[no-untyped-def]
    """One wshub.v1 request (the load generator's subset of it)."""
    request = json.loads(message)
    topic = request["topic"]
    if request["type"] == "publish":
        envelope = {"type": "message", "topic": topic, "data": request["data"]}
        app.publish(topic, dumps(envelope), OpCode.TEXT)
    elif request["type"] == "subscribe":
        ws.subscribe(topic)
        answer = {"type": "subscribed", "topic": topic, "position": None, "recovered": False}
        ws.send(dumps(answer), OpCode.TEXT)


def on_message(ws, message, opcode: OpCode) -> None:  # type: ignore[no-untyped-def]
    if args.mode == "echo":
        ws.send(message, opcode, compress_replies)
    elif args.mode == "pubsub":
        on_request(ws, message)
    else:
        app.publish("all", message, opcode)  # the app publishes: the sender gets it too


app.ws(
    "/*",
    {
        "compression": (
            CompressOptions.SHARED_COMPRESSOR if args.deflate else CompressOptions.DISABLED
        ),
        "max_payload_length": 64 * 1024 * 1024,
        "idle_timeout": 0,
        "send_pings_automatically": False,
        "open": on_open,
        "message": on_message,
    },
)
app.listen(AppListenOptions(port=args.port, host="127.0.0.1"), lambda _config: None)
app.run()

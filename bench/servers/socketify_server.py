"""socketify.py (C++ uWebSockets): echo, or publish to every client."""

from __future__ import annotations

from _args import parse
from socketify import App, AppListenOptions, CompressOptions, OpCode

args = parse(__doc__)
app = App()


def on_open(ws) -> None:  # type: ignore[no-untyped-def]
    if args.mode == "broadcast":
        ws.subscribe("all")


def on_message(ws, message, opcode: OpCode) -> None:  # type: ignore[no-untyped-def]
    if args.mode == "echo":
        ws.send(message, opcode)
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

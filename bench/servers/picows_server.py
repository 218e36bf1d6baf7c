"""picows (core frame API): echo frame by frame, or broadcast.  No permessage-deflate."""

from __future__ import annotations

import asyncio

from _args import parse, unsupported
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

args = parse(__doc__)
if args.deflate:
    unsupported("picows' core API has no permessage-deflate")

clients: set[WSTransport] = set()


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            # the load generator never fragments: a frame is a message
            transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)


class FanOut(WSListener):
    def on_ws_connected(self, transport: WSTransport) -> None:
        clients.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        clients.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            payload = frame.get_payload_as_bytes()
            for client in clients:
                client.send(frame.msg_type, payload)


async def main() -> None:
    listener = Echo if args.mode == "echo" else FanOut
    server = await ws_create_server(
        lambda _request: listener(), "127.0.0.1", args.port, max_frame_size=64 * 1024 * 1024
    )
    await server.serve_forever()


asyncio.run(main())

"""Helpers for the tests of the browser client (``wshub-client.js`` in Chromium).

- :data:`HARNESS_PAGE`: a page that imports the module the server serves
  (``/wshub-client.js``) and keeps, in ``window.harness``, everything the
  client reported: messages and gaps in the order they came, states, errors.
- :class:`TcpProxy`: a loopback TCP forwarder between Chromium and a hub.
  It can cut every connection at once (an abort: no Close frame, as when a
  network path dies), refuse new ones for a while (so that publications
  pile up while the client is away), and switch to another upstream (a
  fresh hub: its history knows nothing of the client's positions).
"""

from __future__ import annotations

import asyncio
from typing import Any

from wshub.http import Request, Response

HARNESS_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>wshub-client.js harness</title></head>
<body>
<script type="module">
import * as wshub from "/wshub-client.js";
const harness = {
  // ["message", topic, epoch, seq, data], ["direct", null, epoch, seq, data]
  // and ["gap", topic, reason, from, to], in the order the client gave them
  events: [],
  states: [],
  errors: [],
  client: null,
  start(url, options) {
    const events = this.events;
    this.client = wshub.connect(url, {
      ...options,
      onMessage(topic, position, data) {
        const shown = typeof data === "string" ? data : Array.from(data);
        const { epoch, seq } = position || { epoch: null, seq: null };
        events.push(["message", topic, epoch, seq, shown]);
      },
      onDirect(position, data) {
        const { epoch, seq } = position || { epoch: null, seq: null };
        events.push(["direct", null, epoch, seq, data]);
      },
      onGap(gap) { events.push(["gap", gap.topic, gap.reason, gap.from, gap.to]); },
      onState: (state, info) => this.states.push([state, info.code ?? null]),
      onError: (error) => this.errors.push([error.code, error.message]),
    });
    return this.client;
  },
  messages(topic) {
    return this.events.filter((e) => e[0] === "message" && e[1] === topic);
  },
};
window.wshub = wshub;
window.harness = harness;
</script>
</body></html>
"""


def harness_handler(request: Request) -> Response:
    """The plain-HTTP handler of the test hubs: the harness page on ``/``."""
    if request.path == "/":
        return Response(HARNESS_PAGE, content_type="text/html; charset=utf-8")
    return Response.text(404, "Not Found\n")


async def open_harness(context: Any, http_url: str) -> Any:
    """A new page of ``context`` at ``http_url`` with ``window.harness`` loaded."""
    page = await context.new_page()
    await page.goto(http_url + "/")
    await page.wait_for_function("window.harness !== undefined", timeout=10_000)
    return page


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``upstream`` (both directions)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        #: True: new connections are cut at once (the client cannot reach the hub).
        self.refuse = False
        self.port = 0
        self.accepted = 0
        self._server: asyncio.AbstractServer | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()  # the pipes see their connections end, and return
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        if self._server is not None:
            await self._server.wait_closed()

    def cut(self) -> int:
        """Abort every connection (both sides get a reset); how many there were."""
        pairs = list(self._pairs)
        self._pairs.clear()
        for downstream, upstream in pairs:
            downstream.transport.abort()
            upstream.transport.abort()
        return len(pairs)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._tasks.discard(task)
            self._pairs.discard(pair)
            writer.transport.close()
            up_writer.transport.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError, RuntimeError):
            writer.transport.abort()

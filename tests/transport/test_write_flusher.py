"""The per-loop write flusher must not keep finished event loops alive."""

from __future__ import annotations

import asyncio
import gc

from wshub.protocol.connection import Connection
from wshub.transport import link as link_module
from wshub.transport.link import FramedLink, LinkConfig


class MemoryLink(FramedLink):
    def __init__(self) -> None:
        super().__init__(Connection(), LinkConfig())
        self.written: list[bytes] = []

    def _write(self, data: bytes) -> None:
        self.written.append(data)

    def _write_many(self, chunks: list[bytes]) -> None:
        self.written.append(b"".join(chunks))  # one write call for the batch

    def _buffered(self) -> int:
        return 0


def test_frames_queued_outside_a_read_are_flushed_at_the_end_of_the_iteration() -> None:
    async def main() -> list[bytes]:
        link = MemoryLink()
        link._send(b"a")
        link._send(b"b")
        assert link.written == []  # queued, not yet written
        await asyncio.sleep(0)
        return link.written

    assert asyncio.run(main()) == [b"ab"]


def test_finished_loops_are_not_kept_alive() -> None:
    async def use_a_link() -> None:
        MemoryLink()._send(b"x")
        await asyncio.sleep(0)

    for _ in range(10):
        asyncio.run(use_a_link())
    gc.collect()
    assert len(link_module._flushers) == 0

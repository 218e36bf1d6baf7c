"""Queueing one message for many clients, the frame built once per group.

Shared by ``broadcast`` (every client, or those of one path) and ``publish``
(the subscribers of one topic): the receivers are grouped by their link's
``broadcast_key`` (no compression, or one compression setting without
context takeover), and the frame is built once per group.  Many receivers
share one batch per group (``transport/link.py``: ``queue_shared``, and
``queue_again`` for the next broadcasts of the loop iteration to the same
receivers); a few are queued one by one.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from typing import Protocol

from ..errors import ConnectionClosedError
from ..transport.link import SHARED_BATCH_FROM, Link, queue_again, queue_shared

__all__ = ["Receiver", "queue_to_all", "queue_to_links"]


class Receiver(Protocol):
    """A client as the fan-out sees it: its link."""

    @property
    def link(self) -> Link: ...


def queue_to_all(receivers: Collection[Receiver], payload: bytes, text: bool) -> int:
    """Queue one message for every receiver whose link is open; return how many."""
    return queue_to_links([receiver.link for receiver in receivers], payload, text)


def queue_to_links(links: Sequence[Link], payload: bytes, text: bool) -> int:
    """Queue one message for every open link of ``links``; return how many.

    A tuple that is passed again for the next broadcasts of a loop
    iteration (as the registry does for all its clients) costs nothing
    per link after the first (``queue_again``).
    """
    if len(links) >= SHARED_BATCH_FROM:
        again = queue_again(links, payload, text)
        return queue_shared(links, payload, text) if again is None else again
    frames: dict[Hashable, bytes] = {}
    # Nearly every receiver shares one key (same extension settings):
    # the last key and frame are kept at hand.
    last_key: Hashable | None = None
    last_frame = b""
    count = 0
    for link in links:
        key = link.broadcast_key
        try:
            if key is None:
                link.send_message(payload, text)
            elif key is last_key:
                link.queue_prepared(last_frame)  # raises if the client is closing
            else:
                frame = frames.get(key)
                if frame is None:
                    if not link.is_open:
                        continue
                    frame = frames[key] = link.prepare(payload, text)
                link.queue_prepared(frame)
                last_key, last_frame = key, frame
        except ConnectionClosedError:
            continue
        count += 1
    return count

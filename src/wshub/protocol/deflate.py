"""RFC 7692 permessage-deflate: negotiation and the per-connection codec.

Not implemented yet: :func:`negotiate_extensions` declines every offer, so
connections open without compression (RFC 7692 §5: a server may decline).
"""

from __future__ import annotations

from dataclasses import dataclass

from .connection import MessageCodec

__all__ = ["DeflateOptions", "negotiate_extensions"]


@dataclass(frozen=True)
class DeflateOptions:
    """Tuning of permessage-deflate (RFC 7692)."""

    level: int = 6
    mem_level: int = 8
    max_window_bits: int = 15
    no_context_takeover: bool = False
    min_size: int = 64


def negotiate_extensions(
    offer: str, options: bool | DeflateOptions
) -> tuple[str, MessageCodec] | None:
    """The ``Sec-WebSocket-Extensions`` answer and codec, or None to decline."""
    return None

"""The event loops the transport tests run on: asyncio's own and uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

LOOPS = ["asyncio", "uvloop"]


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A new-loop function for ``asyncio.Runner``; uvloop missing fails the test."""
    if name == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        pytest.fail("uvloop is not installed: it is part of the dev extras (make venv)")
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory

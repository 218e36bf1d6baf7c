"""Fixtures of the integration tests that several modules share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.cluster_support import Cluster, RedisServer


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A throw-away redis-server on a free loopback port, stopped by PID afterwards."""
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    server.stop()


@pytest.fixture
async def cluster(redis: RedisServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    """Node processes and clients on ``redis``; every one stopped (by PID) afterwards."""
    c = Cluster(redis, tmp_path)
    yield c
    await c.close()

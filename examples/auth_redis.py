"""An async handshake hook: tokens looked up in Redis, 503 with Retry-After while Redis is away.

Run, with a redis-server on localhost (``pip install 'wshub[redis]'``)::

    redis-cli set token:alice-token alice
    python examples/auth_redis.py --redis redis://127.0.0.1:6379/0 --port 8080

then connect to ``ws://127.0.0.1:8080/?token=alice-token``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging

import redis.asyncio as redis
from redis.exceptions import RedisError

from wshub import Handshake, HttpServer, Response, WebSocket

LOOKUP_TIMEOUT = 2.0  # seconds: well inside the server's handshake_timeout
UNAUTHORIZED = [("WWW-Authenticate", 'Bearer realm="live"')]

log = logging.getLogger("auth_redis")
server = HttpServer(handshake_timeout=5.0)  # also bounds the hook (it is cancelled)
ws = WebSocket(server)
tokens: redis.Redis  # made from --redis, below


async def check(hs: Handshake) -> Response | None:
    token = hs.query_params.get("token", [""])[0]
    if not token:
        return Response.text(401, "a token is required\n", UNAUTHORIZED)
    try:
        user = await asyncio.wait_for(tokens.get(f"token:{token}"), LOOKUP_TIMEOUT)
    except (RedisError, asyncio.TimeoutError) as exc:
        log.warning("token lookup failed (%s): refusing with 503", type(exc).__name__)
        return Response.text(503, "try again shortly\n", [("Retry-After", "5")])
    if user is None:
        return Response.text(401, "unknown token\n", UNAUTHORIZED)
    hs.data = {"user": user}
    return None


ws.on_handshake = check


@ws.on("open")
def welcome(client_id: str) -> None:
    ws.send(client_id, json.dumps(ws.data(client_id)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    tokens = redis.Redis.from_url(args.redis, decode_responses=True)
    server.run(args.host, args.port)  # until SIGINT/SIGTERM, then closes every client

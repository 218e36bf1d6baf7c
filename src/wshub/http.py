"""Plain HTTP requests and responses, for the ``HttpServer`` handler.

``HttpServer(handler)`` calls ``handler(request)`` for every request that is
not a WebSocket upgrade; the handler returns a :class:`Response` (or a
``str``/``bytes`` body for a 200), directly or from an ``async def``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from .protocol.http import reason_phrase

__all__ = [
    "Handler",
    "Request",
    "Response",
    "call_handler",
    "finished_response",
    "reason_phrase",
]

log = logging.getLogger("wshub")


class Request:
    """One plain HTTP request."""

    __slots__ = ("body", "client", "headers", "http_version", "method", "path", "query", "scheme")

    def __init__(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        client: tuple[str, int],
        scheme: str,
        http_version: str,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers  # lower-case names; repeated fields joined with ", "
        self.body = body
        self.client = client
        self.scheme = scheme  # "http" or "https"
        self.http_version = http_version  # "1.1", "1.0" or "2"

    @classmethod
    def from_target(
        cls,
        *,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        client: tuple[str, int],
        tls: bool,
        http_version: str,
    ) -> Request:
        """A request from its target as sent (``/path?query``), for the transports."""
        path, _, query = target.partition("?")
        return cls(
            method=method,
            path=path,
            query=query,
            headers=headers,
            body=body,
            client=client,
            scheme="https" if tls else "http",
            http_version=http_version,
        )

    @property
    def query_params(self) -> dict[str, list[str]]:
        return parse_qs(self.query)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


class Response:
    """A plain HTTP response."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        body: bytes | str = b"",
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
        content_type: str | None = None,
    ) -> None:
        if isinstance(body, str):
            body = body.encode("utf-8")
            if content_type is None:
                content_type = "text/plain; charset=utf-8"
        self.status = status
        self.body = body
        self.headers = list(headers or [])
        if content_type is not None:
            self.headers.append(("Content-Type", content_type))

    @classmethod
    def text(cls, status: int, text: str, headers: list[tuple[str, str]] | None = None) -> Response:
        return cls(text, status, headers)


HandlerResult = Response | str | bytes | None
Handler = Callable[[Request], "HandlerResult | Awaitable[HandlerResult]"]


def coerce_response(value: object) -> Response:
    """Turn what a handler returned into a :class:`Response`."""
    if isinstance(value, Response):
        status = value.status
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 999:
            # A 1xx cannot be a final answer (RFC 9110 §15.2), on either HTTP version.
            raise TypeError(f"a handler answered status {status!r}; it must be 200-999")
        return value
    if value is None:
        return Response.text(204, "")
    if isinstance(value, (str, bytes)):
        return Response(value)
    raise TypeError(
        f"a handler must return a Response, str, bytes or None, not {type(value).__name__}"
    )


def _response_or_500(value: object) -> Response:
    try:
        return coerce_response(value)
    except TypeError:
        log.exception("bad return value from the HTTP handler")
        return Response.text(500, "Internal Server Error\n")


def call_handler(handler: Handler, request: Request) -> Response | asyncio.Future[Response]:
    """Run ``handler(request)`` for a transport (HTTP/1.1 or HTTP/2).

    Returns the :class:`Response`, or, for an ``async`` handler, a future of
    it.  A handler that raises, or returns something that is not a response,
    answers 500 (logged); the client never sees a traceback.
    """
    try:
        result: Any = handler(request)
    except Exception:
        log.exception("error in the HTTP handler for %s %s", request.method, request.path)
        return Response.text(500, "Internal Server Error\n")
    if inspect.isawaitable(result):
        return asyncio.ensure_future(_await_response(result, request))
    return _response_or_500(result)


async def _await_response(result: Awaitable[object], request: Request) -> Response:
    try:
        value = await result
    except Exception:
        log.exception("error in the HTTP handler for %s %s", request.method, request.path)
        return Response.text(500, "Internal Server Error\n")
    return _response_or_500(value)


def finished_response(task: asyncio.Future[Response]) -> Response:
    """The answer of a finished :func:`call_handler` future (503 if it was cancelled)."""
    if task.cancelled():
        return Response.text(503, "Service Unavailable\n")
    return task.result()

"""The ``wshub`` command: ``wshub demo`` (a chat page) and ``wshub serve`` (echo/broadcast)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import ssl
import sys
from importlib import resources
from typing import Any

from . import allocator
from ._version import __version__
from .backplane import Backplane, make_backplane
from .browser import serve_client
from .http import Request, Response
from .hub import CloseEvent, WebSocket
from .hub.protocol_v1 import SUBPROTOCOL
from .protocol.deflate import DeflateOptions
from .protocol.handshake import is_token
from .transport.server import HttpServer, check_drain

__all__ = ["main"]

log = logging.getLogger("wshub")

EXIT_UNSUPPORTED = 3  # the benchmark contract: "cannot do the requested mode or option"


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not getattr(args, "tls", False):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if args.certfile:
        ctx.load_cert_chain(args.certfile, args.keyfile)
        return ctx
    try:
        from .tls import self_signed_context
    except ImportError:
        print("wshub: --tls without --certfile needs the 'cryptography' package", file=sys.stderr)
        raise SystemExit(EXIT_UNSUPPORTED) from None
    return self_signed_context()


def _common(p: argparse.ArgumentParser, default_port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=default_port, help=f"port (default {default_port})")
    p.add_argument(
        "--tls", action="store_true", help="serve https/wss (self-signed unless --certfile)"
    )
    p.add_argument("--certfile", help="PEM certificate chain for --tls")
    p.add_argument("--keyfile", help="PEM private key for --tls")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text lines (default) or one JSON object per line with the structured fields",
    )
    p.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="event loop (default auto: uvloop when installed)",
    )
    p.add_argument(
        "--io",
        default="auto",
        choices=["auto", "epoll", "loop"],
        help="what carries plain TCP: wshub's own epoll layer (auto: on Linux) "
        "or the event loop's transports",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wshub", description="wshub WebSocket server")
    parser.add_argument("--version", action="version", version=f"wshub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="an echo, broadcast or pub/sub server on path /")
    _common(serve, 9001)
    serve.add_argument(
        "--mode",
        choices=["echo", "broadcast", "pubsub"],
        default="echo",
        help="echo (default), broadcast, or pubsub: topics, history and resume for "
        "clients of the wshub.v1 subprotocol (docs/protocol.md; anyone may subscribe "
        "and publish), and the browser client at /wshub-client.js",
    )
    serve.add_argument(
        "--history-size",
        type=int,
        default=1000,
        metavar="N",
        help="--mode pubsub: publications kept per topic for resume (default 1000; 0: none)",
    )
    serve.add_argument(
        "--history-ttl",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="--mode pubsub: how long a publication is kept (default 300; 0: no age limit)",
    )
    serve.add_argument("--deflate", choices=["on", "off"], default="on")
    serve.add_argument(
        "--compressor",
        choices=["auto", "zlib", "isal"],
        default="auto",
        help="what compresses permessage-deflate messages (default auto: ISA-L when installed)",
    )
    serve.add_argument(
        "--busy-poll",
        type=int,
        default=0,
        metavar="MICROSECONDS",
        help="after I/O, poll without sleeping this long: lower latency for a core of CPU "
        "(default 0: off; own I/O layer only)",
    )
    serve.add_argument(
        "--deflate-min-size",
        type=int,
        default=DeflateOptions.min_size,
        metavar="BYTES",
        help="messages shorter than this are sent uncompressed "
        f"(default {DeflateOptions.min_size}; what arrives compressed is still inflated)",
    )
    serve.add_argument(
        "--loopback-congestion",
        default="system",
        metavar="NAME",
        help="TCP congestion control for large messages to clients on this host, "
        "e.g. cubic (default 'system': leave the system's choice)",
    )
    serve.add_argument(
        "--max-payload",
        type=int,
        default=64 * 1024 * 1024,
        help="largest message in bytes (default 64 MiB; < 1: no limit)",
    )
    serve.add_argument(
        "--ping-delay",
        type=float,
        default=0.0,
        help="seconds between server pings (default 0: off)",
    )
    serve.add_argument(
        "--limit-by-ip", type=int, default=0, help="connections per IP (default 0: no limit)"
    )
    serve.add_argument(
        "--allow-origin", default="*", help="'*' (default), 'same' or a comma-separated list"
    )
    serve.add_argument(
        "--metrics",
        default=None,
        metavar="PATH",
        help="serve Prometheus metrics at this path, e.g. /metrics (needs wshub[metrics])",
    )
    serve.add_argument(
        "--subprotocol",
        action="append",
        default=[],
        type=_subprotocol_name,
        metavar="NAME",
        help="a subprotocol the server speaks (repeatable); the client's first offer "
        "among them is answered in Sec-WebSocket-Protocol",
    )
    serve.add_argument(
        "--backplane",
        default=None,
        metavar="URL",
        help="join a cluster through Redis, e.g. redis://127.0.0.1:6379/0 (needs wshub[redis])",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="run N worker processes on one port (SO_REUSEPORT), joined by --backplane "
        "(needed when N > 1); SIGHUP restarts them one by one (default 0: one process, "
        "no supervisor)",
    )
    serve.add_argument(
        "--health",
        action="store_true",
        help="answer GET /livez and /readyz (Kubernetes probes, load balancers)",
    )
    serve.add_argument(
        "--drain-window",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="on SIGTERM, spread the clients' closes over this many seconds (default 5)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, cut what is still open after this many seconds (default 30)",
    )
    serve.add_argument(
        "--malloc-tuning",
        choices=["on", "off"],
        default="on",
        help="on glibc, keep freed memory up to 64 MiB for the next messages instead of "
        "giving it back to the kernel at once (default on; see docs/deploy.md)",
    )
    serve.add_argument(
        "--drain-code",
        type=int,
        choices=[1001, 1012],
        default=1012,
        help="close code on SIGTERM: 1012 service restart (default) or 1001 going away",
    )

    demo = sub.add_parser("demo", help="the demo chat page on http://127.0.0.1:8080")
    _common(demo, 8080)
    return parser


def _subprotocol_name(value: str) -> str:
    if not is_token(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a subprotocol name (an HTTP token)")
    return value


def _origin_option(value: str) -> str | list[str] | None:
    if value == "*":
        return "*"
    if value == "same":
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _backplane_option(url: str | None) -> Backplane | None:
    if not url:
        return None
    if not os.environ.get("WSHUB_SECRET"):
        print(
            "wshub serve: --backplane needs WSHUB_SECRET in the environment, the same on "
            "every node: it authenticates the nodes' messages to each other "
            "(see docs/scaling.md, 'Redis is a trust boundary')",
            file=sys.stderr,
        )
        raise SystemExit(2)
    try:
        return make_backplane(url)
    except ImportError as exc:
        print(f"wshub serve: --backplane: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_UNSUPPORTED) from None
    except ValueError as exc:
        print(f"wshub serve: --backplane: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _metrics_option(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        from .metrics import check_metrics_path
    except ImportError as exc:
        print(f"wshub serve: --metrics: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_UNSUPPORTED) from None
    try:
        return check_metrics_path(path)
    except ValueError as exc:
        print(f"wshub serve: --metrics: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _deflate_option(args: argparse.Namespace) -> bool | DeflateOptions:
    if args.deflate == "off":
        return False
    if args.deflate_min_size < 0:
        print("wshub serve: --deflate-min-size must be 0 or more", file=sys.stderr)
        raise SystemExit(2)
    if args.compressor == "auto" and args.deflate_min_size == DeflateOptions.min_size:
        return True
    try:
        return DeflateOptions(compressor=args.compressor, min_size=args.deflate_min_size)
    except ValueError as exc:
        print(f"wshub serve: --compressor: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_UNSUPPORTED) from None


def _serve(args: argparse.Namespace) -> int:
    if args.workers < 0:
        print("wshub serve: --workers must be >= 0", file=sys.stderr)
        return 2
    if args.workers > 1 and not args.backplane:
        print(
            f"wshub serve: --workers {args.workers} needs --backplane redis://HOST:PORT/DB "
            "so that the workers act as one hub (without one each worker would be a hub "
            "of its own: a broadcast would reach only its clients)",
            file=sys.stderr,
        )
        return 2
    try:
        check_drain(args.drain_window, args.drain_timeout, args.drain_code, "")
    except ValueError as exc:
        print(f"wshub serve: --drain-window/--drain-timeout: {exc}", file=sys.stderr)
        return 2
    if not 0 <= args.busy_poll <= 1_000_000 or (args.busy_poll and args.io == "loop"):
        print(
            "wshub serve: --busy-poll takes 0 to 1000000 microseconds, and not with --io loop",
            file=sys.stderr,
        )
        return 2
    try:
        HttpServer(**_server_options(args))
    except ValueError as exc:
        print(f"wshub serve: --loopback-congestion: {exc}", file=sys.stderr)
        return EXIT_UNSUPPORTED
    if args.workers and args.backplane and not os.environ.get("WSHUB_SECRET"):
        # The workers of one supervisor are one hub: they share a secret made
        # here (cookies, backplane); nodes on other hosts need WSHUB_SECRET.
        os.environ["WSHUB_SECRET"] = secrets.token_hex(32)
    # A bad URL, a missing redis-py or compressor: said once, here, not by every worker.
    _backplane_option(args.backplane)
    _deflate_option(args)
    _metrics_option(args.metrics)
    if args.malloc_tuning == "on":
        # before any worker is forked: they inherit it
        log.info("wshub serve: %s", allocator.keep_freed_memory())
    scheme = "wss" if args.tls else "ws"
    what = f"{args.workers} workers, " if args.workers else ""
    print(
        f"wshub serve: {what}{args.mode} on {scheme}://{args.host}:{args.port}/",
        file=sys.stderr,
        flush=True,
    )
    if args.workers:
        from . import workers

        return workers.run(
            lambda: _serve_app(args),
            args.workers,
            args.host,
            args.port,
            _tls_context(args),
            loop=args.loop,
        )
    _serve_app(args).run(args.host, args.port, _tls_context(args), loop=args.loop)
    return 0


def _pubsub_options(args: argparse.Namespace) -> dict[str, Any]:
    """The hub's options of ``--mode pubsub`` (none for the other modes)."""
    if args.mode != "pubsub":
        return {}
    if args.history_size < 0 or args.history_ttl < 0:
        raise SystemExit("wshub serve: --history-size and --history-ttl must be >= 0")

    def allow_all(client_id: str, action: str, topic: str) -> bool:
        return True

    return {
        "pubsub": True,
        "authorize": allow_all,
        "history_size": args.history_size,
        "history_ttl": args.history_ttl,
    }


def _server_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "loopback_congestion": None
        if args.loopback_congestion == "system"
        else args.loopback_congestion,
        "health": args.health,
        "drain_window": args.drain_window,
        "drain_timeout": args.drain_timeout,
        "drain_code": args.drain_code,
        "drain_reason": "service restart" if args.drain_code == 1012 else "going away",
        "io": args.io,
        "busy_poll": args.busy_poll / 1e6,
    }


def _serve_app(args: argparse.Namespace) -> HttpServer:
    """The server of ``wshub serve`` (built in each worker with ``--workers``)."""
    server = HttpServer(**_server_options(args))
    ws = WebSocket(
        server,
        allow_origin=_origin_option(args.allow_origin),
        max_payload=args.max_payload,
        ping_delay=args.ping_delay,
        limit_by_ip=args.limit_by_ip,
        metrics_path=_metrics_option(args.metrics),
        per_message_deflate=_deflate_option(args),
        backplane=_backplane_option(args.backplane),
        subprotocols=args.subprotocol,
        **_pubsub_options(args),
    )
    if args.mode == "pubsub":
        # wshub.v1 clients talk to the hub's pub/sub layer; raw ones are
        # ignored.  The browser client is served too, for a page to import.
        serve_client(server)
    elif args.mode == "echo":
        send = ws.send

        @ws.on("message")
        def echo(client_id: str, data: str | bytes) -> None:
            send(client_id, data)

    else:
        broadcast = ws.broadcast

        @ws.on("message")
        def fan_out(client_id: str, data: str | bytes) -> None:
            broadcast(data)

    return server


def _demo_page() -> bytes:
    return resources.files("wshub").joinpath("demo/index.html").read_bytes()


#: The demo page's topic: anyone may follow it and publish to it, no other.
DEMO_TOPIC = "chat"


def _demo_authorize(client_id: str, action: str, topic: str) -> bool:
    return topic == DEMO_TOPIC


def build_demo(server: HttpServer | None = None) -> tuple[HttpServer, WebSocket]:
    """The demo application: a page on ``/`` whose browser client (``/wshub-client.js``)
    follows and publishes to the topic ``chat`` (with history, so that a
    reload resumes), and an echo for raw clients on ``/echo``."""
    page = _demo_page()

    def handler(request: Request) -> Response:
        if request.path in ("/", "/index.html"):
            return Response(page, content_type="text/html; charset=utf-8")
        if request.path == "/healthz":
            return Response("ok\n")
        return Response.text(404, "Not Found\n")

    if server is None:
        server = HttpServer(handler)
    else:
        server.handler = handler
    ws = WebSocket(
        server, pubsub=True, authorize=_demo_authorize, history_size=500, history_ttl=3600.0
    )
    serve_client(server)

    def notice(kind: str, **fields: Any) -> str:
        return json.dumps({"type": kind, **fields})

    chatting: set[str] = set()  # the wshub.v1 clients: the page's

    @ws.on("open")
    def opened(client_id: str) -> None:
        url = ws.url(client_id)
        if ws.subprotocol(client_id) == SUBPROTOCOL:
            chatting.add(client_id)
            ws.publish(DEMO_TOPIC, notice("join", id=client_id))
        else:  # a raw client (of /echo, say) is told who it is first
            ws.send(client_id, notice("welcome", id=client_id, path=url.path))
        log.info("open %s %s", client_id, url.path)  # not the query: it may hold a token

    @ws.on("/echo")
    def echo(client_id: str, data: str | bytes) -> None:
        ws.send(client_id, data)

    @ws.on("close")
    def closed(client_id: str, event: CloseEvent) -> None:
        if client_id in chatting:
            chatting.discard(client_id)
            ws.publish(DEMO_TOPIC, notice("leave", id=client_id, code=event.code))
        log.info("close %s %s", client_id, event)

    @ws.on("error")
    def error(client_id: str, exc: Exception) -> None:
        log.info("error %s %s", client_id, exc)

    return server, ws


def _demo(args: argparse.Namespace) -> int:
    server, _ws = build_demo(HttpServer(io=args.io))
    scheme = "https" if args.tls else "http"
    print(
        f"wshub demo: open {scheme}://{args.host}:{args.port}/ in a browser",
        file=sys.stderr,
        flush=True,
    )
    server.run(args.host, args.port, _tls_context(args), loop=args.loop)
    return 0


def _setup_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        from .logging import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_format)
    if args.command == "serve":
        return _serve(args)
    return _demo(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""An I/O layer of our own for plain TCP on Linux: one ``epoll`` for all the
connections of a server, and a small transport per connection.

Why: an event loop's transport costs every connection about 1.2 KiB
(uvloop) or 2 KiB (asyncio's loop) before the protocol holds anything
(``bench/idle_floor.py``), and its accept path makes system calls per
connection that a WebSocket server does not need (getsockname, getpeername).
With the C accelerator a burst of connections is accepted in one call
(``_speedups.accept_burst``), without a Python socket object each.
Here each connection is one :class:`EpollTransport` (about a hundred bytes)
in a table by descriptor, and the event loop watches a single descriptor:
the epoll object's.  When it is readable, :meth:`EpollIO.ready` takes every
connection's events from the kernel in one call and runs them.

What it keeps of ``asyncio.Transport``'s contract, so that the protocols
above (HTTP/1.1, its WebSocket link, HTTP/2) cannot tell the difference:
``connection_made`` / ``data_received`` (or ``get_buffer`` /
``buffer_updated`` for a ``BufferedProtocol``) / ``eof_received`` (a falsy
answer closes the transport) / ``connection_lost`` exactly once, called
soon after the end, never from inside a call of the protocol's;
``pause_writing`` past the high-water mark and ``resume_writing`` at the
low one; ``pause_reading`` / ``resume_reading``; ``close`` (after what is
buffered is sent), ``abort``, ``write_eof`` (after it too);
``set_protocol``; ``get_extra_info`` for ``peername``, ``sockname`` and
``socket`` (the peer's address is kept for the first protocol only, which
reads it once; after a hand-over it is asked of the kernel, so it is not
known any more once the connection is over).  An exception raised by a
protocol's callback goes to the loop's exception handler (logged with its
traceback) and aborts that connection only; an ``OSError`` of the socket
ends it with that error, without a log line, as asyncio does.

Busy polling (``busy_poll`` seconds, off by default): after a pass that
found work, a callback that reschedules itself keeps the loop polling
without sleeping until that long has passed with no more work.

Not here: TLS (a server with an SSL context uses the loop's transports),
Unix sockets, other systems than Linux.  :func:`available` says whether it
can run.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import logging
import os
import select
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..protocol.frames import ACCELERATED

__all__ = ["EpollIO", "EpollServer", "EpollTransport", "available"]

log = logging.getLogger("wshub")

_EPOLL = getattr(select, "epoll", None)
_IN = getattr(select, "EPOLLIN", 1)
_OUT = getattr(select, "EPOLLOUT", 4)

# One read takes at most this much (what uvloop reads at once too).
READ_SIZE = 256 * 1024
# Events taken from the kernel per pass; the rest come at the next.
_MAX_EVENTS = 1024
# Buffers handed to one writev() (IOV_MAX on Linux).
_IOV_MAX = 1024
# Connections accepted per readiness of a listening socket.
_ACCEPT_BURST = 128
# After EMFILE and the like, accepting pauses this long (as asyncio's).
_ACCEPT_RETRY = 1.0
_OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))

# EpollTransport._state bits.
_READING = 1  # the protocol wants reads (not paused)
_CLOSING = 2  # close() or abort() called, or the connection failed
_EOF_SEEN = 4  # the peer's FIN was read: no more reads
_EOF_WANTED = 8  # write_eof() called: shut down writing once the buffer is out
_PAUSED = 16  # the protocol was told pause_writing()
_BUFFERED = 32  # the protocol is an asyncio.BufferedProtocol
_ENDING = 64  # connection_lost is scheduled
_WATCHED_IN = 128  # the epoll set has the descriptor for reads
_WATCHED_OUT = 256  # ... and for writes

_DEFAULT_HIGH = 64 * 1024

# The C accelerator's accept loop (None without it): accepted connections as
# (descriptor, peer), already non-blocking, and the errno that stopped it
# (0: none waiting).  TCP_NODELAY is set on the listening sockets (see
# listen()): Linux copies it to every connection they accept.
_accept_burst: Callable[[int, int], tuple[list[tuple[int, Any]], int]] | None = None
if ACCELERATED:
    _accept_burst = getattr(importlib.import_module("wshub._speedups"), "accept_burst", None)


def available() -> bool:
    """True where this layer can run (Linux: ``select.epoll``)."""
    return _EPOLL is not None


class EpollTransport(asyncio.Transport):
    """One accepted TCP connection on an :class:`EpollIO`."""

    __slots__ = (
        "_io",
        "_limits",
        "_peer",
        "_pending",
        "_protocol",
        "_size",
        "_sock",
        "_state",
        "fd",
    )

    def __init__(self, io: EpollIO, fd: int, peer: Any, protocol: asyncio.BaseProtocol) -> None:
        self._io = io
        self.fd = fd  # -1 once the connection is over
        # The peer's address, for the first protocol (which reads it once);
        # after a hand-over (set_protocol) it is asked of the kernel if wanted.
        self._peer = peer
        self._protocol = protocol
        self._state = _READING
        if isinstance(protocol, asyncio.BufferedProtocol):
            self._state |= _BUFFERED
        # What the kernel has not taken yet, oldest first, and its length.
        self._pending: list[Any] | None = None
        self._size = 0
        self._limits = io.default_limits  # (high, low), shared while unchanged
        self._sock: socket.socket | None = None  # made when asked for

    def fileno(self) -> int:
        """The socket's descriptor, -1 once the connection is over (for
        writes straight to the kernel while :meth:`get_write_buffer_size` is 0)."""
        return self.fd

    # -------------------------------------------------------------- asyncio API

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer if self._peer is not None else self._ask_peer(default)
        if name == "socket":
            return self._socket()
        if name == "sockname":
            sock = self._socket()
            return default if sock is None else sock.getsockname()
        return default

    def _ask_peer(self, default: Any) -> Any:
        if self.fd < 0:
            return default
        sock = self._sock
        probe = sock if sock is not None else socket.socket(fileno=self.fd)
        try:
            return probe.getpeername()
        except OSError:
            return default
        finally:
            if sock is None:
                probe.detach()  # (the descriptor stays ours)

    def _socket(self) -> socket.socket | None:
        sock = self._sock
        if sock is None and self.fd >= 0:
            sock = self._sock = socket.socket(fileno=self.fd)
        return sock

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._peer = None  # 88 bytes an idle WebSocket need not keep
        if isinstance(protocol, asyncio.BufferedProtocol):
            self._state |= _BUFFERED
        else:
            self._state &= ~_BUFFERED

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return bool(self._state & _CLOSING)

    def is_reading(self) -> bool:
        return self._state & (_READING | _CLOSING) == _READING

    def pause_reading(self) -> None:
        state = self._state
        if state & (_READING | _CLOSING) == _READING:
            self._state = state & ~_READING
            self._watch()

    def resume_reading(self) -> None:
        state = self._state
        if not state & (_READING | _CLOSING):
            self._state = state | _READING
            self._watch()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = _DEFAULT_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._limits = self._io.shared_limits(high, low)
        self._check_pause()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        high, low = self._limits
        return low, high

    def get_write_buffer_size(self) -> int:
        return self._size

    def can_write_eof(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        state = self._state
        if state & (_CLOSING | _EOF_WANTED):
            if state & _EOF_WANTED and not state & _CLOSING:
                raise RuntimeError("write() after write_eof()")
            return
        size = len(data)
        if not size:
            return
        if self._pending is None:
            try:
                sent = os.write(self.fd, data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fail(exc)
                return
            if sent == size:
                return
            self._pending = [_keep(data, sent)]
            self._size = size - sent
            self._watch()
        else:
            self._pending.append(_keep(data, 0))
            self._size += size
        self._check_pause()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        chunks = [_keep(chunk, 0) for chunk in list_of_data if len(chunk)]
        if len(chunks) <= 1 or self._pending is not None or self._state & (_CLOSING | _EOF_WANTED):
            for chunk in chunks:
                self.write(chunk)
            return
        try:
            sent = os.writev(self.fd, chunks[:_IOV_MAX])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fail(exc)
            return
        pending = _unsent(chunks, sent)
        if pending:
            self._pending = pending
            self._size = sum(map(len, chunks)) - sent
            self._watch()
            self._check_pause()

    def write_eof(self) -> None:
        state = self._state
        if state & (_CLOSING | _EOF_WANTED):
            return
        self._state = state | _EOF_WANTED
        if self._pending is None:
            self._shut_writing()

    def close(self) -> None:
        state = self._state
        if state & _CLOSING:
            return
        self._state = state | _CLOSING
        if self._pending is None:
            self._end(None)
        else:
            self._watch()  # no more reads; the writes go on

    def abort(self) -> None:
        self._pending = None
        self._size = 0
        self._end(None)

    # ------------------------------------------------------- the I/O layer's

    def can_read(self) -> None:
        """The descriptor is readable (or has an error or a hang-up)."""
        protocol = self._protocol
        fd = self.fd
        try:
            if self._state & _BUFFERED:
                window = protocol.get_buffer(-1)  # type: ignore[attr-defined]
                got = os.readv(fd, [window])
                if got:
                    protocol.buffer_updated(got)  # type: ignore[attr-defined]
                    return
            else:
                data = os.read(fd, READ_SIZE)
                if data:
                    protocol.data_received(data)  # type: ignore[attr-defined]
                    return
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        except BaseException as exc:
            self._protocol_failed(exc, "data_received")
            if not isinstance(exc, Exception):
                raise
            return
        self._eof()

    def can_write(self) -> None:
        """The descriptor is writable: send what is pending."""
        pending = self._pending
        if pending is None:
            self._watch()
            return
        try:
            if len(pending) == 1:
                sent = os.write(self.fd, pending[0])
            else:
                sent = os.writev(self.fd, pending[:_IOV_MAX])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        self._size -= sent
        self._pending = _unsent(pending, sent)
        self._check_pause()  # resume_writing at the low mark (which may write more)
        if not self._pending:
            self._pending = None
            state = self._state
            if state & _CLOSING:
                self._end(None)
                return
            self._watch()
            if state & _EOF_WANTED:
                self._shut_writing()

    # ------------------------------------------------------------- internals

    def _eof(self) -> None:
        self._state = (self._state | _EOF_SEEN) & ~_READING
        self._watch()
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        except BaseException as exc:
            self._protocol_failed(exc, "eof_received")
            if not isinstance(exc, Exception):
                raise
            return
        if not keep_open:
            self.close()

    def _watch(self) -> None:
        """Tell the epoll set what this connection waits for now."""
        state = self._state
        if self.fd < 0:
            return
        want = 0
        if state & (_READING | _CLOSING | _EOF_SEEN) == _READING:
            want = _WATCHED_IN
        if self._pending is not None:
            want |= _WATCHED_OUT
        had = state & (_WATCHED_IN | _WATCHED_OUT)
        if want != had:
            self._state = (state & ~(_WATCHED_IN | _WATCHED_OUT)) | want
            self._io.watch(self.fd, had, want)

    def _check_pause(self) -> None:
        state = self._state
        if not state & _PAUSED and self._size > self._limits[0]:
            self._state = state | _PAUSED
            self._tell("pause_writing")
        elif state & _PAUSED and self._size <= self._limits[1]:
            self._state = state & ~_PAUSED
            self._tell("resume_writing")

    def _tell(self, what: str) -> None:
        try:
            getattr(self._protocol, what)()
        except Exception as exc:
            _report(self, f"protocol.{what}() failed", exc)

    def _shut_writing(self) -> None:
        sock = self._socket()
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fail(exc)

    def _protocol_failed(self, exc: BaseException, what: str) -> None:
        _report(self, f"Fatal error: protocol.{what}() call failed.", exc)
        self.abort()

    def _fail(self, exc: OSError) -> None:
        # As asyncio: a socket error ends the connection without a log line
        # (a reset peer is ordinary); the protocol gets it in connection_lost.
        self._pending = None
        self._size = 0
        self._end(exc)

    def _end(self, exc: Exception | None) -> None:
        state = self._state
        if state & _ENDING:
            return
        self._state = state | _ENDING | _CLOSING
        fd = self.fd
        if fd >= 0:
            self.fd = -1
            self._io.forget(fd, state & (_WATCHED_IN | _WATCHED_OUT))
            sock = self._sock
            if sock is not None:
                self._sock = None
                sock.close()
            else:
                os.close(fd)
        self._io.loop.call_soon(self._lost, exc)

    def _lost(self, exc: Exception | None) -> None:
        protocol = self._protocol
        try:
            protocol.connection_lost(exc)
        finally:
            # No cycle left for the garbage collector: the protocol (a
            # link) holds this transport.
            self._protocol = _GONE
            self._pending = None
            self._io.transport_gone()


# What a transport's protocol is after connection_lost.
_GONE = asyncio.Protocol()


def _report(transport: EpollTransport, message: str, exc: BaseException) -> None:
    """A protocol's callback raised: to the loop's exception handler (which
    logs it with its traceback), as asyncio's transports do."""
    transport._io.loop.call_exception_handler(
        {
            "message": message,
            "exception": exc,
            "transport": transport,
            "protocol": transport.get_protocol(),
        }
    )


def _unsent(chunks: list[Any], sent: int) -> list[Any]:
    """What of ``chunks`` (each safe to keep: see :func:`_keep`) is left once
    their first ``sent`` bytes went out."""
    for i, chunk in enumerate(chunks):
        size = len(chunk)
        if sent < size:
            return [memoryview(chunk)[sent:], *chunks[i + 1 :]] if sent else chunks[i:]
        sent -= size
    return []


def _keep(data: bytes | bytearray | memoryview, sent: int) -> Any:
    """What of ``data`` is left after ``sent`` bytes, safe to keep: bytes
    (and read-only views) are kept as views, anything mutable is copied."""
    if type(data) is bytes:
        return memoryview(data)[sent:] if sent else data
    view = memoryview(data).cast("B")
    if view.readonly:
        return view[sent:]
    return bytes(view[sent:])


class EpollIO:
    """One epoll set for the connections of one server; the loop watches its descriptor."""

    def __init__(self, loop: asyncio.AbstractEventLoop, busy_poll: float = 0.0) -> None:
        if _EPOLL is None:
            raise RuntimeError("the epoll I/O layer needs Linux")
        self.loop = loop
        self._epoll = _EPOLL()
        # The transports by descriptor (descriptors are small and dense:
        # a list is 8 bytes a connection where a dict is about 36).
        self._transports: list[EpollTransport | None] = []
        self._limits: dict[tuple[int, int], tuple[int, int]] = {}
        self.default_limits = self.shared_limits(_DEFAULT_HIGH, _DEFAULT_HIGH // 4)
        self._live = 0  # transports whose connection_lost has not run yet
        self._closing = False
        # Busy polling (HttpServer(busy_poll=...)): for this many seconds
        # after a pass that found work, the loop is kept from sleeping.
        self._busy_poll = busy_poll
        self._awake_until = 0.0
        self._awake = False
        loop.add_reader(self._epoll.fileno(), self.ready)

    def shared_limits(self, high: int, low: int) -> tuple[int, int]:
        """One tuple per distinct pair of write limits, shared by the transports."""
        key = (high, low)
        return self._limits.setdefault(key, key)

    def fileno(self) -> int:
        """The epoll set's descriptor, which the event loop watches."""
        return int(self._epoll.fileno())

    @property
    def closed(self) -> bool:
        """True once the set is closed (after :meth:`close` and the last connection)."""
        return bool(self._epoll.closed)

    @property
    def live(self) -> int:
        """Connections whose ``connection_lost`` has not run yet."""
        return self._live

    def add(self, fd: int, peer: Any, protocol: asyncio.BaseProtocol) -> None:
        """Take over an accepted, non-blocking socket's descriptor and give
        the connection to ``protocol``."""
        transport = EpollTransport(self, fd, peer, protocol)
        transports = self._transports
        if fd >= len(transports):
            transports.extend([None] * (fd + 1 - len(transports)))
        transports[fd] = transport
        self._live += 1
        self._epoll.register(fd, _IN)
        transport._state |= _WATCHED_IN
        try:
            protocol.connection_made(transport)
        except Exception as exc:
            _report(transport, "protocol.connection_made() failed", exc)
            transport.abort()

    def watch(self, fd: int, had: int, want: int) -> None:
        events = (_IN if want & _WATCHED_IN else 0) | (_OUT if want & _WATCHED_OUT else 0)
        if not had:
            self._epoll.register(fd, events)
        elif not want:
            # Out of the set: a paused connection hears nothing, not even a
            # hang-up (which epoll reports whatever the mask), until it
            # resumes, as with the loop's own transports.
            self._epoll.unregister(fd)
        else:
            self._epoll.modify(fd, events)

    def forget(self, fd: int, watched: int) -> None:
        self._transports[fd] = None
        if watched:
            self._epoll.unregister(fd)

    def transport_gone(self) -> None:
        self._live -= 1
        if self._closing and not self._live:
            self._shut()

    def close(self) -> None:
        """No more connections will come: stop once the last one is gone."""
        self._closing = True
        if not self._live:
            self._shut()

    def _shut(self) -> None:
        if not self._epoll.closed:
            self.loop.remove_reader(self._epoll.fileno())
            self._epoll.close()

    def ready(self) -> None:
        """The loop saw the epoll descriptor readable: run every ready connection."""
        transports = self._transports
        try:
            events = self._epoll.poll(0, _MAX_EVENTS)
        except OSError:  # (closed under us)
            return
        if events and self._busy_poll:
            self._awake_until = time.monotonic() + self._busy_poll
            if not self._awake:
                self._awake = True
                self.loop.call_soon(self._keep_awake)
        for fd, mask in events:
            transport = transports[fd]
            if transport is None:  # (ended by an earlier one of this pass)
                continue
            if mask & _OUT or not transport._state & _WATCHED_IN:
                # Writable; or, watched for writes only (what is left of a
                # closed connection), an error or hang-up: the write says which.
                transport.can_write()
                if transport.fd != fd:
                    continue
            if mask & ~_OUT and transport._state & _WATCHED_IN:
                transport.can_read()

    def _keep_awake(self) -> None:
        # A callback always ready makes the loop poll without waiting (its
        # own epoll, which holds ours): a reply to what was just sent is
        # seen without the sleep and wake-up in between.
        if time.monotonic() < self._awake_until and not self._epoll.closed:
            self.loop.call_soon(self._keep_awake)
        else:
            self._awake = False


class EpollServer:
    """The listening sockets of one ``serve()`` on an :class:`EpollIO`, with
    the parts of ``asyncio.Server`` that :class:`HttpServer` uses."""

    def __init__(
        self,
        io: EpollIO,
        sockets: list[socket.socket],
        factory: Callable[[], asyncio.BaseProtocol],
    ) -> None:
        self._io = io
        self.sockets = sockets
        self._factory = factory
        self._serving = False
        self._retry: asyncio.TimerHandle | None = None
        self.start_serving()

    def is_serving(self) -> bool:
        return self._serving

    def start_serving(self) -> None:
        self._retry = None
        if self._serving or not self.sockets:
            return
        self._serving = True
        for sock in self.sockets:
            self._io.loop.add_reader(sock.fileno(), self._accept, sock)

    def _stop_accepting(self) -> None:
        if self._serving:
            self._serving = False
            for sock in self.sockets:
                self._io.loop.remove_reader(sock.fileno())

    def close(self) -> None:
        """Stop listening; the connections already accepted go on."""
        self._stop_accepting()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    async def wait_closed(self) -> None:
        return None

    def _accept(self, listener: socket.socket) -> None:
        io = self._io
        factory = self._factory
        if _accept_burst is not None:
            accepted, err = _accept_burst(listener.fileno(), _ACCEPT_BURST)
            for fd, peer in accepted:
                io.add(fd, peer, factory())
            if err and err != errno.ECONNABORTED:
                self._accept_failed(listener, OSError(err, os.strerror(err)))
            return
        for _ in range(_ACCEPT_BURST):
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                self._accept_failed(listener, exc)
                return
            try:
                conn.setblocking(False)
            except OSError as exc:  # (does not happen; as asyncio's accept loop)
                log.debug("accepted connection from %s failed: %s", peer, exc)
                conn.close()
                continue
            io.add(conn.detach(), peer, factory())

    def _accept_failed(self, listener: socket.socket, exc: OSError) -> None:
        if exc.errno in _OUT_OF_RESOURCES:
            log.error(
                "accept() on %s: %s; not accepting for %.0f s",
                listener.getsockname(),
                exc,
                _ACCEPT_RETRY,
            )
            self._stop_accepting()
            self._retry = self._io.loop.call_later(_ACCEPT_RETRY, self.start_serving)
            return
        log.debug("accept() on %s: %s", listener.getsockname(), exc)


async def listen(
    io: EpollIO,
    factory: Callable[[], asyncio.BaseProtocol],
    host: str | list[str] | None,
    port: int,
    *,
    reuse_port: bool = False,
    backlog: int = 100,
) -> EpollServer:
    """Bind and listen as ``loop.create_server`` does (every address of each
    host, all interfaces for None, IPv6 sockets IPv6-only, SO_REUSEADDR)."""
    loop = io.loop
    hosts: list[str | None] = [host] if host is None or isinstance(host, str) else list(host)
    infos: list[tuple[Any, ...]] = []
    for name in hosts:
        found = await loop.getaddrinfo(
            name or None,
            port,
            family=socket.AF_UNSPEC,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
        infos.extend(info for info in found if info not in infos)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in infos:
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:
                continue  # an address family this host does not support
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Set once here, not per connection: Linux gives a listening
            # socket's TCP_NODELAY to each connection it accepts.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"error while attempting to bind on address {address!r}: {exc}"
                ) from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise OSError(f"could not bind on any address out of {hosts!r}")
    return EpollServer(io, sockets, factory)

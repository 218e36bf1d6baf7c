"""What the hub counts, for metrics: plain integers, read when scraped.

The hub keeps these figures whether or not anything reads them; each costs
an integer addition where it happens (a message, a close, a handshake, a
pong), never a call into a metrics library.  :meth:`HubStats.snapshot`
adds up what the live links count themselves (bytes, buffered bytes) with
what closed clients left behind, and :mod:`wshub.metrics` turns the
snapshot into Prometheus metrics when ``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import NamedTuple

from ..backplane import Backplane, BackplaneStats
from ..transport.link import Link
from .options import HubOptions

__all__ = ["RTT_BUCKETS", "HubStats", "StatsSnapshot"]

#: Upper bounds (seconds) of the ping round-trip-time histogram's buckets.
RTT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class StatsSnapshot(NamedTuple):
    """The hub's figures at one instant (see :meth:`HubStats.snapshot`)."""

    open_by_carrier: dict[str, int]  # WebSockets not yet gone, per carrier: "http1", "h2", "asgi"
    over_write_high: int  # open clients with more than write_high bytes buffered
    handshakes: dict[int, int]  # HTTP status -> count (101: accepted)
    closes: dict[int, int]  # close code -> count
    messages_received: int
    messages_sent: int
    bytes_received: int
    bytes_sent: int
    rtt_buckets: list[int]  # per RTT_BUCKETS bound, then +Inf; not cumulative
    rtt_sum: float
    rtt_count: int
    resumes: dict[str, int]  # outcome ("recovered", "truncated", "reset") -> count
    backplane: BackplaneStats | None  # None without a cluster backplane


class HubStats:
    """The hub's running totals, and the links whose bytes are not in them yet.

    The registry calls :meth:`opened` when a client is admitted and
    :meth:`gone` when its connection is over (a closing client still
    counts as open, and its bytes as the link's, until then), and
    :meth:`closed_with` when the ``"close"`` event reports its code.

    The registry calls these only while :attr:`enabled` (metrics on);
    before, only what costs nothing measurable is kept (handshakes,
    pongs, per-call counts of broadcasts): no connection is tracked, no
    close or message counted.
    """

    __slots__ = (
        "_backplane",
        "_links",
        "_options",
        "accepted",
        "closed_bytes_received",
        "closed_bytes_sent",
        "closes",
        "enabled",
        "handshakes",
        "messages_received",
        "messages_sent",
        "resumes",
        "rtt_buckets",
        "rtt_count",
        "rtt_sum",
    )

    def __init__(
        self,
        options: HubOptions,
        backplane: Backplane,
    ) -> None:
        # The links of the clients whose connection is not over yet.
        self._links: set[Link] = set()
        self._options = options
        self._backplane = backplane
        #: Whether metrics are on (:meth:`enable`).
        self.enabled = False
        #: Messages the clients sent us / we queued for them (local clients).
        self.messages_received = 0
        self.messages_sent = 0
        #: Bytes counted by links of clients that have closed.
        self.closed_bytes_received = 0
        self.closed_bytes_sent = 0
        #: Close code -> clients closed with it.
        self.closes: dict[int, int] = {}
        #: Upgrades accepted (reported as status 101), and the refused ones:
        #: HTTP status of the answer -> count.
        self.accepted = 0
        self.handshakes: dict[int, int] = {}
        self.rtt_buckets = [0] * (len(RTT_BUCKETS) + 1)
        self.rtt_sum = 0.0
        self.rtt_count = 0
        #: Resumes of wshub.v1 clients (a ``since`` answered) by outcome:
        #: "recovered" (every missed message), "truncated" (the history no
        #: longer covered the gap), "reset" (another epoch, or unreadable).
        self.resumes: dict[str, int] = {}

    def enable(self) -> None:
        """Metrics are on: from now on, count every message and track the
        connections opened (their bytes, the open-connection figures)."""
        self.enabled = True

    def handshake(self, status: int) -> None:
        """An upgrade was refused with ``status`` (accepted ones: ``accepted``)."""
        handshakes = self.handshakes
        handshakes[status] = handshakes.get(status, 0) + 1

    def opened(self, link: Link) -> None:
        """With metrics on: a client admitted since is connected through ``link``
        (accepted upgrades are counted by the caller: ``accepted += 1``)."""
        self._links.add(link)

    def gone(self, link: Link) -> None:
        """``link``'s connection is over: its byte counts join the totals."""
        links = self._links
        if link in links:  # (not if it opened before metrics were on)
            links.remove(link)
            self.closed_bytes_received += link.bytes_read
            self.closed_bytes_sent += link.bytes_written

    def closed_with(self, code: int) -> None:
        """A ``"close"`` event reported ``code``."""
        closes = self.closes
        closes[code] = closes.get(code, 0) + 1

    def resumed(self, outcome: str) -> None:
        """A wshub.v1 client's ``since`` was answered with ``outcome``."""
        resumes = self.resumes
        resumes[outcome] = resumes.get(outcome, 0) + 1

    def pong_received(self, rtt: float) -> None:
        """A pong answered our ping after ``rtt`` seconds."""
        self.rtt_buckets[bisect_left(RTT_BUCKETS, rtt)] += 1
        self.rtt_sum += rtt
        self.rtt_count += 1

    def snapshot(self) -> StatsSnapshot:
        """Every figure now: the totals plus what the open clients' links count."""
        write_high = self._options.link_config.write_high
        open_by_carrier: dict[str, int] = {}
        over = 0
        bytes_received = self.closed_bytes_received
        bytes_sent = self.closed_bytes_sent
        for link in list(self._links):
            carrier = link.carrier
            open_by_carrier[carrier] = open_by_carrier.get(carrier, 0) + 1
            bytes_received += link.bytes_read
            bytes_sent += link.bytes_written
            if link.buffered_amount > write_high:
                over += 1
        backplane = self._backplane
        return StatsSnapshot(
            open_by_carrier=open_by_carrier,
            over_write_high=over,
            handshakes={101: self.accepted, **self.handshakes}
            if self.accepted
            else dict(self.handshakes),
            closes=dict(self.closes),
            messages_received=self.messages_received,
            messages_sent=self.messages_sent,
            bytes_received=bytes_received,
            bytes_sent=bytes_sent,
            rtt_buckets=list(self.rtt_buckets),
            rtt_sum=self.rtt_sum,
            rtt_count=self.rtt_count,
            resumes=dict(self.resumes),
            backplane=None if backplane.is_local else backplane.stats(),
        )

"""The ping-flood guard: how fast one peer's pings are answered (pure, time passed in)."""

from __future__ import annotations

__all__ = ["PingFloodGuard"]


class PingFloodGuard:
    """Bounds how fast one client's pings are answered (RFC 6455 §5.5.2 vs DoS).

    A token bucket answers a burst of ``burst`` pings at once and then
    ``rate`` per second; pings beyond that are coalesced (only the latest
    needs an answer, as RFC 6455 §5.5.3 allows).  Pings that keep arriving
    while the bucket is empty fill an excess counter that drains at ``rate``;
    past ``limit`` the client is flooding and should be closed with 1008.
    """

    ANSWER = 0
    DEFER = 1
    VIOLATION = 2

    __slots__ = ("_excess", "_last", "_tokens", "burst", "limit", "rate")

    def __init__(self, burst: int = 16, rate: float = 8.0, limit: int = 128) -> None:
        self.burst = burst
        self.rate = rate
        self.limit = limit
        self._tokens = float(burst)
        self._excess = 0.0
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        last = self._last
        self._last = now
        if last is None:
            return
        elapsed = max(0.0, now - last)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._excess = max(0.0, self._excess - elapsed * self.rate)

    def on_ping(self, now: float) -> int:
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return self.ANSWER
        self._excess += 1.0
        return self.VIOLATION if self._excess > self.limit else self.DEFER

    def take_deferred(self, now: float) -> bool:
        """For a coalesced ping waiting for an answer: may it be answered now?"""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def seconds_until_token(self) -> float:
        return max(0.0, (1.0 - self._tokens) / self.rate)

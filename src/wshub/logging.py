"""wshub's log lines: structured fields, a JSON formatter, rate-limited refusals.

wshub logs with the standard :mod:`logging` module under the ``"wshub"``
logger.  The lines that matter carry structured fields as record
attributes (``extra=``): ``client_id``, ``path``, ``address`` (the
client's address, as ``limit_by_ip`` counts it), ``peer`` (the TCP
peer), ``status`` (HTTP), ``close_code`` and ``transport``.  A plain
formatter shows the message; :class:`JsonFormatter` (``wshub serve
--log-format json``) writes one JSON object per line with every field.

Refused requests (bad handshakes, over the per-IP limit, malformed
heads ...), and what a connected client can cause at will (a refused
``wshub.v1`` request, a close for a protocol error or a policy violation)
are logged on the ``"wshub.refusals"`` logger (INFO, 1008 at WARNING), at
most :data:`REFUSAL_BURST` lines at once and :data:`REFUSAL_RATE` per
second after that (a token bucket for the whole process, so that a flood
of bad requests cannot flood the log); what it holds back is counted and
reported in one line, "suppressed N refusal log lines", about a second
later.  Every refusal is still counted in the metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

__all__ = [
    "REFUSAL_BURST",
    "REFUSAL_RATE",
    "JsonFormatter",
    "RefusalRateLimit",
    "refusal_log",
]

#: Refusal log lines allowed at once, and per second once those are spent.
REFUSAL_BURST = 50
REFUSAL_RATE = 10.0

# The attributes every LogRecord has; anything else on a record came from
# ``extra=`` (or a filter) and is a structured field.
_STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``,
    ``logger``, ``message``, the record's structured fields and, for an
    exception, ``exception`` (the formatted traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def _iso_utc(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class RefusalRateLimit(logging.Filter):
    """A token bucket over the records of one logger (``burst`` at once,
    ``rate`` per second).

    A record over the limit is dropped and counted; the count is reported
    by one INFO line ``summary_delay`` seconds after the first dropped one
    (from the running event loop; without one, before the next record that
    passes).  The summary record has a ``suppressed`` field and always passes.
    """

    def __init__(
        self, rate: float = REFUSAL_RATE, burst: int = REFUSAL_BURST, summary_delay: float = 1.0
    ) -> None:
        super().__init__()
        if not rate > 0 or burst < 1 or not summary_delay > 0:
            raise ValueError("need rate > 0, burst >= 1 and summary_delay > 0")
        self.rate = float(rate)
        self.burst = int(burst)
        self.summary_delay = float(summary_delay)
        self._summary: asyncio.TimerHandle | None = None
        self.reset()

    def reset(self) -> None:
        """A full bucket; what was held back is forgotten (tests start clean)."""
        if self._summary is not None:
            self._summary.cancel()
        self._tokens = float(self.burst)
        self._at = time.monotonic()
        self._suppressed = 0
        self._since = 0.0  # when the first of the suppressed lines came
        self._summary = None
        self._summary_due = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "suppressed"):
            return True  # our own summary
        now = time.monotonic()
        if self._summary is not None and now > self._summary_due + self.summary_delay:
            self._summary = None  # its loop stopped before it ran: report below
        tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            if self._suppressed and self._summary is None:
                self._report(record.name)
            return True
        self._tokens = tokens
        if not self._suppressed:
            self._since = now
        self._suppressed += 1
        if self._summary is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return False  # reported before the next line that passes
            self._summary = loop.call_later(self.summary_delay, self._report, record.name)
            self._summary_due = now + self.summary_delay
        return False

    def _report(self, name: str) -> None:
        self._summary = None
        count = self._suppressed
        if not count:
            return
        self._suppressed = 0
        logging.getLogger(name).info(
            "suppressed %d refusal log lines in %.1fs (over %g per second)",
            count,
            time.monotonic() - self._since,
            self.rate,
            extra={"suppressed": count},
        )


#: The logger of refused requests, rate-limited (see :class:`RefusalRateLimit`).
refusal_log = logging.getLogger("wshub.refusals")
if not any(isinstance(f, RefusalRateLimit) for f in refusal_log.filters):
    refusal_log.addFilter(RefusalRateLimit())

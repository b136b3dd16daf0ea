"""
A budget of log lines per second, so that a storm of transfers is not also
a storm of log lines.

Twisted's logging costs tens of microseconds a line (formatting the event,
the time stamp, the file write): at thousands of transfers a second, one
line per transfer would cost more CPU than the transfers themselves.  Up to
the budget every line is written; past it, lines are counted by kind and
one summary line closes the second.  The server's counters still count
every transfer.
"""

from __future__ import annotations

import collections
from typing import Callable

__all__ = ["LogBudget", "OccasionalLine", "path_for_log"]

#: Seconds in one budget period.
PERIOD = 1.0


class LogBudget:
    """
    Decide, line by line, whether a line may be logged now.

    @param clock: the C{IReactorTime} that measures periods and schedules
        the summary.
    @param summarize: called with a C{Counter} of the lines held back (by
        kind) and the length of the period in seconds, once at the end of
        every period that held lines back.
    """

    def __init__(
        self, clock, summarize: Callable[[collections.Counter, float], None]
    ) -> None:
        self._clock = clock
        self._summarize = summarize
        self._period_end = 0.0
        self._logged = 0
        self._held: collections.Counter[str] = collections.Counter()
        self._summary_call = None

    def allow(self, kind: str, rate: int) -> bool:
        """
        Whether a line of C{kind} may be logged now, at most C{rate} lines a
        period (C{0}: no limit).  A line refused is counted for the summary.
        """
        if not rate:
            return True
        now = self._clock.seconds()
        if now >= self._period_end:
            self._period_end = now + PERIOD
            self._logged = 0
        if self._logged < rate:
            self._logged += 1
            return True
        self._held[kind] += 1
        if self._summary_call is None:
            self._summary_call = self._clock.callLater(
                self._period_end - now, self.flush
            )
        return False

    def flush(self) -> None:
        """
        Write the summary of the lines held back so far, if any, now.
        """
        if self._summary_call is not None:
            if self._summary_call.active():
                self._summary_call.cancel()
            self._summary_call = None
        if self._held:
            held, self._held = self._held, collections.Counter()
            self._summarize(held, PERIOD)


class OccasionalLine:
    """
    A line that may be written once per interval, however often its cause
    recurs: the next one written says how many were held back meanwhile.
    For causes that come in floods (malformed datagrams, a process out of
    descriptors), where one line says all there is to say.

    @param clock: the C{IReactorTime} that measures the interval.
    @param interval: seconds between two lines.
    """

    def __init__(self, clock, interval: float) -> None:
        self._clock = clock
        self.interval = interval
        self._quiet_until = 0.0
        self._held = 0

    def allow(self) -> int | None:
        """
        Whether the line may be written now: L{None} if not (it is counted
        as held back), else how many were held back since the last one.
        """
        now = self._clock.seconds()
        if now < self._quiet_until:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._quiet_until = now + self.interval
        return held


#: The most characters of a client's path a log line shows.
PATH_IN_LOG = 120


def path_for_log(path: str, limit: int = PATH_IN_LOG) -> str:
    """
    A client's path as a log line shows it: whole up to C{limit}
    characters, else cut there with an ellipsis and its full length, so that
    a 64 KB path makes a line of ordinary length.
    """
    if len(path) <= limit:
        return path
    return f"{path[:limit]}... ({len(path)} characters)"

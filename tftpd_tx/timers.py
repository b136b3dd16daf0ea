"""
One reactor timer for the retransmit deadlines of every transfer.

Each transfer always has a deadline: the moment it retransmits or gives up
if no ACK comes.  As a Twisted C{DelayedCall} of its own, that deadline
costs some 420 bytes (an instance dictionary, its arguments, a bound
method) and a place in the reactor's list of timers; two thousand slow
transfers then hold most of a megabyte in timers alone, and the reactor
sorts two thousand calls.  L{TimerQueue} keeps the deadlines in a heap of
small entries and asks the reactor for one call, at the earliest of them.

A cancelled entry stays in the heap, marked, until it reaches the top or
until the marked ones outnumber the rest: the heap is then rebuilt.  When
no live deadline is left the reactor call is cancelled too, so an idle
server (or a test's clock) has no timer pending.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable

from twisted.logger import Logger

__all__ = ["Timer", "TimerQueue"]


class Timer:
    """
    A deadline in a L{TimerQueue}: C{action} is called once C{when} (on
    the queue's clock) has come, unless the timer was cancelled.
    """

    __slots__ = ("when", "action")

    def __init__(self, when: float, action: Callable[[], object]) -> None:
        self.when = when
        self.action: Callable[[], object] | None = action

    @property
    def active(self) -> bool:
        """
        Whether it has neither fired nor been cancelled.
        """
        return self.action is not None


class TimerQueue:
    """
    Deadlines of many transfers behind one C{IReactorTime.callLater}.

    @param clock: the C{IReactorTime} that tells the time and runs the one
        call.
    """

    #: Cancelled entries tolerated in the heap before it is rebuilt without
    #: them (and then only if they are at least half of it).
    COMPACT_AFTER = 64

    _log = Logger()

    def __init__(self, clock) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._live = 0
        self._call = None
        self._call_at = 0.0
        self._firing = False

    def __len__(self) -> int:
        """
        The deadlines still to come.
        """
        return self._live

    def call_at(self, when: float, action: Callable[[], object]) -> Timer:
        """
        Call C{action} once the clock reaches C{when}, in the order of the
        deadlines (equal ones in the order they were set).
        """
        timer = Timer(when, action)
        heapq.heappush(self._heap, (when, next(self._order), timer))
        self._live += 1
        if not self._firing and (self._call is None or when < self._call_at):
            self._wake_at(when)
        return timer

    def cancel(self, timer: Timer) -> None:
        """
        Forget C{timer}, if it is still to come.
        """
        if timer.action is None:
            return
        timer.action = None
        self._live -= 1
        if not self._live:
            self._heap.clear()
            if self._call is not None:
                self._call.cancel()
                self._call = None
            return
        # Every live timer is in the heap (but for those due now, while
        # they run): the rest of it is cancelled ones.
        cancelled = len(self._heap) - self._live
        if cancelled > self.COMPACT_AFTER and cancelled * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2].action is not None]
            heapq.heapify(self._heap)

    def _wake_at(self, when: float) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call_at = when
        self._call = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._fire)

    def _fire(self) -> None:
        """
        Run every action whose deadline has come, then ask the reactor for
        the next.  The due ones are taken out first: a deadline set by an
        action now is the next call's, however near.
        """
        self._call = None
        now = self._clock.seconds()
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            if timer.action is not None:
                due.append(timer)
        self._firing = True
        for timer in due:
            action = timer.action
            if action is not None:
                timer.action = None
                self._live -= 1
                # As the reactor does for its own calls: one that fails is
                # logged, and the others still run (each is a transfer's
                # only timer).
                try:
                    action()
                except Exception:
                    self._log.failure("A timer's action failed")
        self._firing = False
        self._next()

    def _next(self) -> None:
        heap = self._heap
        while heap and heap[0][2].action is None:
            heapq.heappop(heap)
        if not heap:
            if self._call is not None:
                self._call.cancel()
                self._call = None
        elif self._call is None or heap[0][0] < self._call_at:
            self._wake_at(heap[0][0])

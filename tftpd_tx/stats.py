"""
Statistics: one L{SessionStats} per transfer and one L{ServerStats} per
server.

These objects are the single source that the transfer log line, session
callbacks, the manhole and metrics read from, so every number is counted
once, where it happens.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import math
from dataclasses import dataclass, field

from .content import Request

__all__ = ["Histogram", "Outcome", "SessionStats", "ServerStats"]


class Outcome:
    """
    How a transfer ended (the C{outcome} of L{SessionStats}).
    """

    #: The client acknowledged the last block.
    COMPLETED = "completed"
    #: The client answered the OACK with an ERROR: typically a PXE ROM that
    #: only wanted the size (tsize) and will ask again.  Not a failure.
    PROBE = "probe"
    #: The client sent an ERROR during the transfer.
    PEER_ERROR = "peer-error"
    #: The client stopped answering and every retransmission was used.
    TIMEOUT = "timeout"
    #: The handler or the content refused or failed; the client got an ERROR.
    REFUSED = "refused"
    #: Stopped from outside (an operator, or the server shutting down).
    ABORTED = "aborted"
    #: Given up to make room under a cap before its client had answered at
    #: all (see L{tftpd_tx.policy.UnprovenSessions}).
    EVICTED = "evicted"


@dataclass(eq=False, slots=True)
class SessionStats:
    """
    Everything known about one transfer, filled in as it runs.

    Times come from the session's clock (seconds, as C{IReactorTime.seconds}
    returns them).  The field names follow fbtftp's C{SessionStats} where it
    has one.  C{server_addr} is the address the request was sent to;
    C{local_addr} is the transfer's own port (its TID).  C{session_id} is
    the transfer's number on its server (what the manhole's C{ls()} shows),
    and C{request} the L{tftpd_tx.content.Request} it serves, so that a
    session callback can tell which request a result belongs to without
    keying anything by peer.  C{srtt} is the smoothed round trip measured
    so far (L{None} before a sample, or when the client negotiated its
    timeout), and C{rto} the wait the retransmit timer runs with now.
    C{spurious_rtos} counts the timeouts the client shows were not
    needed: the ACK of the whole flight ended them and the client then
    acknowledged the same block again, answering the copy (a floor below
    the host's scheduling jitter shows here).

    A busy server keeps one for each of thousands of live transfers, so
    its fields live in slots, without a dictionary each: the fields above
    are all it has.
    """

    peer: tuple[str, int]
    server_addr: tuple[str, int]
    file_path: str
    local_addr: tuple[str, int] | None = None
    mode: str = "octet"
    options_in: dict[str, str] = field(default_factory=dict)
    options_acked: dict[str, str] = field(default_factory=dict)
    start_time: float = 0.0
    end_time: float | None = None
    first_data_time: float | None = None
    blksize: int = 512
    windowsize: int = 1
    size: int | None = None
    packets_sent: int = 0
    packets_acked: int = 0
    blocks_sent: int = 0
    bytes_sent: int = 0
    retransmits: int = 0
    spurious_rtos: int = 0
    last_ack_time: float | None = None
    outcome: str | None = None
    error_code: int | None = None
    error_message: str = ""
    session_id: int | None = None
    request: Request | None = None
    srtt: float | None = None
    rto: float | None = None

    @property
    def duration(self) -> float | None:
        """
        Seconds from the request to the end, or L{None} while running.
        """
        if self.end_time is None:
            return None
        return self.end_time - self.start_time

    @property
    def handler_latency(self) -> float | None:
        """
        Seconds from the request to the first DATA (or OACK) sent.
        """
        if self.first_data_time is None:
            return None
        return self.first_data_time - self.start_time


class Histogram:
    """
    How many observations fell at or below each bound, their count and
    their sum: what a Prometheus histogram exposes, kept without any
    metrics library so that the statistics stay the one source.

    @ivar bounds: the upper bounds of the buckets, ascending (an implicit
        last bucket takes everything above).
    @ivar counts: observations per bucket (not cumulative), one more entry
        than C{bounds}.
    """

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """
        C{(bound, observations at or below it)} for every bound and
        infinity, as Prometheus's C{le} buckets are.
        """
        return list(zip((*self.bounds, math.inf), itertools.accumulate(self.counts)))


#: Buckets of transfer durations, in seconds: a config file in milliseconds
#: to a large image over a slow link.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Buckets of the time from a request to its first reply, in seconds: the
#: handler's (and an origin's) latency.
FIRST_PACKET_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class ServerStats:
    """
    Counters for a whole server.

    Counters are named by strings (C{"requests"}, C{"outcome.completed"},
    C{"errors.1"}, ...) and only ever go up, except through
    L{get_and_reset_all_counters}.

    @ivar durations: a L{Histogram} of the durations of finished transfers.
    @ivar first_packet: a L{Histogram} of the time from each transfer's
        request to its first OACK or DATA.
    """

    def __init__(self) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        self.active_sessions = 0
        self.durations = Histogram(DURATION_BUCKETS)
        self.first_packet = Histogram(FIRST_PACKET_BUCKETS)

    def increment(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def session_started(self) -> None:
        self.active_sessions += 1

    def session_ended(self, session: SessionStats) -> None:
        """
        Fold a finished transfer into the counters.
        """
        self.active_sessions -= 1
        counters = self.counters
        counters["outcome." + (session.outcome or "unknown")] += 1
        counters["bytes_sent"] += session.bytes_sent
        counters["packets_sent"] += session.packets_sent
        counters["retransmits"] += session.retransmits
        counters["spurious_rtos"] += session.spurious_rtos
        if session.error_code is not None and session.outcome != Outcome.PROBE:
            counters[f"errors.{session.error_code}"] += 1
        if session.outcome == Outcome.TIMEOUT and session.packets_acked:
            # The client was there and went away mid-transfer: on an anycast
            # address, the sign that its path moved to another server.
            counters["transfers.abandoned"] += 1
        start = session.start_time
        if session.end_time is not None:
            self.durations.observe(session.end_time - start)
        if session.first_data_time is not None:
            self.first_packet.observe(session.first_data_time - start)

    def get_and_reset_all_counters(self) -> dict[str, int]:
        """
        Return every counter and start them all again from zero, as fbtftp's
        method of the same name does for periodic reporting.
        """
        snapshot = dict(self.counters)
        self.counters.clear()
        return snapshot

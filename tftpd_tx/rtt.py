"""
Round-trip estimation for the retransmit timer (RFC 6298), and a memory of
recent round trips per client prefix.

A fixed timer is what holds every TFTP server to a fraction of its link
under loss: a lost block costs the whole timeout (a second, typically)
whatever the path's round trip.  L{RoundTrip} keeps a smoothed round trip
(SRTT) and its variation (RTTVAR) from unambiguous DATA-to-ACK samples
(Karn's rule: never a sample from a retransmitted block), and sets the
retransmission timeout RTO = SRTT + 4 RTTVAR within bounds.  L{RoundTripMemory}
remembers, per client prefix, the SRTT of its last transfer, so that the
next one starts from it instead of from the configured timeout.
"""

from __future__ import annotations

import collections

from .prefixes import client_prefix

__all__ = ["RoundTrip", "RoundTripMemory"]


class RoundTrip:
    """
    One transfer's round-trip estimate and retransmission timeout.

    @param initial: the RTO before the first sample, in seconds.
    @param floor: the least RTO: a timer shorter than the host's scheduling
        jitter retransmits what is merely late.
    @param ceiling: the most RTO, backoff included.
    @param seed: a smoothed round trip to start from (a recent transfer's,
        from the same client prefix), or L{None}.
    @ivar srtt: the smoothed round trip, or L{None} before any sample.
    @ivar rttvar: its variation.
    @ivar rto: the current retransmission timeout (without backoff).
    """

    # One per transfer, thousands at once: no dictionary each.
    __slots__ = ("floor", "ceiling", "srtt", "rttvar", "rto")

    def __init__(
        self, initial: float, floor: float, ceiling: float, seed: float | None = None
    ) -> None:
        self.floor = floor
        self.ceiling = ceiling
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = min(max(initial, floor), ceiling)
        if seed is not None:
            self._first(seed)

    def _first(self, sample: float) -> None:
        self.srtt = sample
        self.rttvar = sample / 2
        self._set_rto()

    def _set_rto(self) -> None:
        rto = self.srtt + 4 * self.rttvar
        self.rto = self.floor if rto < self.floor else min(rto, self.ceiling)

    def sample(self, measured: float) -> None:
        """
        Take the round trip of a block sent once and acknowledged (RFC 6298
        section 2).  Every ACK of a lock-step transfer is one: kept to a
        few operations.
        """
        srtt = self.srtt
        if srtt is None:
            self._first(measured)
            return
        difference = srtt - measured
        self.rttvar = rttvar = 0.75 * self.rttvar + 0.25 * (
            difference if difference > 0 else -difference
        )
        self.srtt = srtt = 0.875 * srtt + 0.125 * measured
        rto = srtt + 4 * rttvar
        self.rto = self.floor if rto < self.floor else (
            rto if rto < self.ceiling else self.ceiling
        )

    def expired(self) -> None:
        """
        The timer ran out: double the RTO, within the ceiling (RFC 6298
        section 5.5).  It stays doubled until a sample of a block sent once
        sets it again (Karn's rule): after a spurious timeout the next
        window is not timed out as early again.
        """
        self.rto = min(self.rto * 2, self.ceiling)


class RoundTripMemory:
    """
    The smoothed round trip of the last transfer from each client prefix
    (an IPv4 /24, an IPv6 /64), for the next transfer to start from.

    @param size: prefixes remembered; the least recently used are
        forgotten first.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._srtt: collections.OrderedDict[str, float] = collections.OrderedDict()

    def recall(self, host: str) -> float | None:
        """
        The last SRTT seen for C{host}'s prefix, or L{None}.
        """
        key = client_prefix(host)
        value = self._srtt.get(key)
        if value is not None:
            self._srtt.move_to_end(key)
        return value

    def remember(self, host: str, srtt: float) -> None:
        key = client_prefix(host)
        self._srtt[key] = srtt
        self._srtt.move_to_end(key)
        if len(self._srtt) > self._size:
            self._srtt.popitem(last=False)

"""
The flap signal: clients whose path moves between the servers of an
anycast address.

When routing sends a client's packets now to one server and now to another,
its transfers never finish: the server that started a transfer sees the
client go silent (an I{abandoned} transfer: it timed out after the client
had acknowledged a block), and the other server sees DATA or ACKs for a
transfer it never had (I{strays}).  Either alone is noise; a client prefix
that keeps showing them is the signal.  L{FlapTable} counts both per prefix
over a sliding window, in a bounded table.
"""

from __future__ import annotations

import collections

from .prefixes import client_prefix

__all__ = ["FlapTable"]


class _Prefix:
    """
    The events of one prefix, by the minute they happened in.
    """

    __slots__ = ("abandoned", "strays", "last_seen")

    def __init__(self) -> None:
        self.abandoned: collections.Counter[int] = collections.Counter()
        self.strays: collections.Counter[int] = collections.Counter()
        self.last_seen = 0.0


class FlapTable:
    """
    Abandoned transfers and strays per client prefix, over the last
    C{window} seconds.

    @param clock: the C{IReactorTime} that dates the events.
    @param lengths: returns the lengths of an IPv4 and of an IPv6 client
        prefix (a /24 and a /64: one site's boot network, as routing sees
        it); asked at each event, so that a change of the settings applies
        from then on.
    @param window: seconds an event counts for.
    @param threshold: events in the window that make a prefix flap.
    @param size: prefixes remembered; the least recently seen are forgotten
        first, so that a flood of forged sources costs bounded memory.
    """

    #: Seconds in one slot of the sliding window.
    SLOT = 60.0

    def __init__(
        self,
        clock,
        *,
        lengths=lambda: (24, 64),
        window: float = 600.0,
        threshold: int = 3,
        size: int = 4096,
    ) -> None:
        self._clock = clock
        self._lengths = lengths
        self.window = window
        self.threshold = threshold
        self._size = size
        self._prefixes: collections.OrderedDict[str, _Prefix] = collections.OrderedDict()

    def prefix_of(self, host: str) -> str:
        """
        The prefix C{host} belongs to, as text (C{"192.0.2.0/24"}).
        """
        ipv4, ipv6 = self._lengths()
        return client_prefix(host, ipv4, ipv6)

    def _entry(self, host: str) -> tuple[_Prefix, int]:
        now = self._clock.seconds()
        key = self.prefix_of(host)
        entry = self._prefixes.get(key)
        if entry is None:
            if len(self._prefixes) >= self._size:
                self._prefixes.popitem(last=False)
            entry = self._prefixes[key] = _Prefix()
        else:
            self._prefixes.move_to_end(key)
        entry.last_seen = now
        return entry, int(now // self.SLOT)

    def abandoned(self, host: str) -> None:
        """
        A transfer to C{host} timed out after its client had acknowledged
        at least one block.
        """
        entry, slot = self._entry(host)
        entry.abandoned[slot] += 1

    def stray(self, host: str) -> None:
        """
        C{host} sent a DATA, an ACK or another datagram for a transfer this
        server does not have.
        """
        entry, slot = self._entry(host)
        entry.strays[slot] += 1

    def flapping(self, most: int = 10) -> list[dict]:
        """
        The prefixes with at least C{threshold} events in the window, most
        events first: C{[{"prefix": "192.0.2.0/24", "abandoned": 3,
        "strays": 0}, ...]}, at most C{most} of them.
        """
        oldest = int((self._clock.seconds() - self.window) // self.SLOT) + 1
        found = []
        for prefix, entry in self._prefixes.items():
            for counter in (entry.abandoned, entry.strays):
                for slot in [slot for slot in counter if slot < oldest]:
                    del counter[slot]
            abandoned = sum(entry.abandoned.values())
            strays = sum(entry.strays.values())
            if abandoned + strays >= self.threshold:
                found.append({"prefix": prefix, "abandoned": abandoned, "strays": strays})
        found.sort(key=lambda row: row["abandoned"] + row["strays"], reverse=True)
        return found[:most]

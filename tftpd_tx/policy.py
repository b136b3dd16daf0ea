"""
What the listener allows before it serves a request: caps on sessions, a
rate of new requests per client, and the descriptor budget the caps are
derived from.

Each piece is a small object with no I/O of its own; the listener
(L{tftpd_tx.server.TFTPServer.handle_read_request}) calls them in one place,
in order, and counts every refusal by reason.  A request over a cap is
dropped in silence: the client retries, perhaps at another server of the
fleet, and a spoofed flood draws nothing.
"""

from __future__ import annotations

import collections
import resource

__all__ = [
    "DESCRIPTORS_PER_TRANSFER",
    "DESCRIPTOR_RESERVE",
    "ClientRates",
    "SessionCounts",
    "UnprovenSessions",
    "raise_descriptor_limit",
    "session_cap",
]

#: Descriptors one transfer holds: its socket and its file.
DESCRIPTORS_PER_TRANSFER = 2
#: Descriptors kept for everything else of the process: the listener, the
#: manhole and its connections, the operations endpoint, log files, a
#: handler's own connections.
DESCRIPTOR_RESERVE = 64
#: Clients remembered by L{ClientRates}; the least recently seen are
#: forgotten first, so a flood of spoofed addresses costs bounded memory.
RATE_TABLE_SIZE = 65536


def raise_descriptor_limit() -> int:
    """
    Raise this process's soft limit on open descriptors to its hard limit
    (no privilege is needed for that), and return the limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            return soft
    return hard


def session_cap(descriptor_limit: int) -> int:
    """
    The most transfers that fit in C{descriptor_limit} descriptors, with
    L{DESCRIPTOR_RESERVE} kept back (at least one transfer).
    """
    return max(1, (descriptor_limit - DESCRIPTOR_RESERVE) // DESCRIPTORS_PER_TRANSFER)


class SessionCounts:
    """
    The requests in progress (handler at work or transfer running), in all
    and per client address.
    """

    def __init__(self) -> None:
        self.total = 0
        self._by_host: collections.Counter[str] = collections.Counter()

    def of(self, host: str) -> int:
        """
        How many requests of C{host} are in progress.
        """
        return self._by_host.get(host, 0)

    def add(self, host: str) -> None:
        self.total += 1
        self._by_host[host] += 1

    def remove(self, host: str) -> None:
        self.total -= 1
        left = self._by_host[host] - 1
        if left:
            self._by_host[host] = left
        else:
            del self._by_host[host]


class ClientRates:
    """
    A token bucket per client address: C{burst} requests at once, then
    C{rate} a second.

    Only the L{RATE_TABLE_SIZE} most recently seen addresses are kept; an
    address forgotten starts again with a full bucket, which is what a
    client seen that long ago deserves anyway.
    """

    def __init__(self, table_size: int = RATE_TABLE_SIZE) -> None:
        self._buckets: collections.OrderedDict[str, list[float]] = collections.OrderedDict()
        self._table_size = table_size

    def allow(self, host: str, now: float, rate: float, burst: int) -> bool:
        """
        Whether C{host} may make a new request at C{now}; if so, it spends a
        token.
        """
        buckets = self._buckets
        bucket = buckets.get(host)
        if bucket is None:
            if len(buckets) >= self._table_size:
                buckets.popitem(last=False)
            bucket = buckets[host] = [float(burst), now]
        else:
            buckets.move_to_end(host)
            tokens, then = bucket
            bucket[0] = min(float(burst), tokens + (now - then) * rate)
            bucket[1] = now
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True


class UnprovenSessions:
    """
    The transfers whose peer has not yet acknowledged anything, oldest
    first, in all and per client address: the ones to give up first when a
    cap is reached.

    A flood of requests with forged source addresses makes transfers that
    nobody will ever acknowledge; without this, they would hold every place
    under the caps until they time out, and no real client would get in.
    Evicting the oldest unproven one for a new request from a client that
    holds none itself keeps room for the clients that answer (they prove
    their address within a round trip), while a flood cannot make room for
    itself (its sources all hold unproven transfers) and so cannot make the
    server churn through transfers.
    A transfer leaves the table when it ends (L{discard}); one that has been
    proven meanwhile is skipped and forgotten when met, and each L{add}
    first forgets the oldest ones while they are proven.  Requests arrive
    in time order and their clients answer within a round trip, so the
    table holds about a round trip's worth of transfers, not an entry in
    each of its two tables for every long transfer still running; an
    unproven one keeps those behind it until it ends or is evicted (the
    hold time at most).
    """

    def __init__(self) -> None:
        self._all: collections.OrderedDict[object, None] = collections.OrderedDict()
        self._by_host: dict[str, collections.OrderedDict[object, None]] = {}

    def add(self, session) -> None:
        everyone = self._all
        # Each transfer is forgotten once at most: amortised, an add costs
        # the same whatever the table holds.
        while everyone:
            oldest = next(iter(everyone))
            if not oldest.ended and not oldest.proven:
                break
            self.discard(oldest)
        everyone[session] = None
        host = session.peer[0]
        sessions = self._by_host.get(host)
        if sessions is None:
            sessions = self._by_host[host] = collections.OrderedDict()
        sessions[session] = None

    def discard(self, session) -> None:
        """
        Forget C{session} (it has ended, or is no longer a candidate), if it
        is here.
        """
        self._all.pop(session, None)
        host = session.peer[0]
        sessions = self._by_host.get(host)
        if sessions is not None:
            sessions.pop(session, None)
            if not sessions:
                del self._by_host[host]

    def holds_any(self, host: str) -> bool:
        """
        Whether C{host} has a transfer still unproven.
        """
        sessions = self._by_host.get(host)
        while sessions:
            session = next(iter(sessions))
            if not session.ended and not session.proven:
                return True
            self.discard(session)
            sessions = self._by_host.get(host)
        return False

    def oldest(self, host: str | None = None):
        """
        The oldest transfer still unproven (of C{host}, if given), taken
        out of the table; L{None} if there is none.
        """
        while True:
            table = self._all if host is None else self._by_host.get(host)
            if not table:
                return None
            session = next(iter(table))
            self.discard(session)
            if not session.ended and not session.proven:
                return session

"""
The control channel between the supervisor of C{--workers} and each worker:
AMP commands on a stream socket pair, nothing else.

The supervisor asks; a worker answers:

  - L{Report}: its counters, histograms, health, caps and flapping
    prefixes, for the host's C{/metrics} and C{/health};
  - L{Transfers}: its live transfers, a page at a time (an AMP value holds
    at most 65,535 bytes), for the host's manhole;
  - L{Kill}, L{Drain}, L{Resume}, L{ChangeSetting}: the operator's controls;
  - L{Stop}: a graceful stop, answered once the worker has stopped.

A worker says L{Ready} once it serves.  Structured values travel as JSON
(L{JSON}); the shapes are documented on each command.
"""

from __future__ import annotations

import json
import socket

from twisted.internet.protocol import Factory
from twisted.protocols import amp

__all__ = [
    "JSON",
    "PAGE_BYTES",
    "Channel",
    "adopt",
    "ChangeSetting",
    "Drain",
    "Kill",
    "Ready",
    "Report",
    "Resume",
    "Stop",
    "Transfers",
]

#: The most bytes of JSON a worker puts in one AMP value: under AMP's
#: limit of 65,535, with room for the rest of the box.
PAGE_BYTES = 60_000


class JSON(amp.Argument):
    """
    A value that JSON can hold (dictionaries, lists, strings, numbers,
    booleans, L{None}); tuples arrive as lists.
    """

    def toString(self, inObject) -> bytes:
        return json.dumps(inObject, separators=(",", ":"), default=repr).encode()

    def fromString(self, inString: bytes):
        return json.loads(inString)


class Channel(amp.AMP):
    """
    One end of a control channel: AMP, without AMP's two log lines for
    every connection made and lost (the supervisor logs each worker's start
    and end itself).
    """

    def makeConnection(self, transport) -> None:
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason) -> None:
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None


class _One(Factory):
    def __init__(self, protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr):
        return self._protocol


def adopt(reactor, skt: socket.socket, channel: Channel) -> None:
    """
    Run C{channel} over C{skt}, one end of a stream socket pair (the
    reactor takes a duplicate of it; C{skt} is closed).
    """
    reactor.adoptStreamConnection(skt.fileno(), socket.AF_UNIX, _One(channel))
    skt.close()


class Ready(amp.Command):
    """
    Worker to supervisor: the worker's listener is open and it serves.
    """

    arguments = [(b"pid", amp.Integer())]
    response: list = []


class Report(amp.Command):
    """
    The worker's figures now: C{{"counters": {name: int},
    "active": int, "durations": histogram, "first_packet": histogram,
    "draining": bool, "caps": [total, per_client], "health": the worker's
    L{tftpd_tx.health.Health} report without its C{flapping}, "flaps":
    [{"prefix", "abandoned", "strays"}, ...]}}, where a histogram is
    C{{"counts": [int, ...], "sum": float}} over the buckets of
    L{tftpd_tx.stats}.
    """

    response = [(b"report", JSON())]


class Transfers(amp.Command):
    """
    The worker's live transfers with a session id above C{after}, in order
    of id, as many as fit in L{PAGE_BYTES}: each C{{"id": int, "peer":
    [host, port], "block": blocks acknowledged, "stats": every field of its
    L{tftpd_tx.stats.SessionStats} by name}}; C{more} says whether more
    follow.
    """

    arguments = [(b"after", amp.Integer())]
    response = [(b"rows", JSON()), (b"more", amp.Boolean())]


class Kill(amp.Command):
    """
    End the worker's transfer C{session} as L{tftpd_tx.operator.Operator.kill}
    does; C{killed} is false if it had none with that id.
    """

    arguments = [(b"session", amp.Integer())]
    response = [(b"killed", amp.Boolean())]


class Drain(amp.Command):
    """
    Ignore new requests; the transfers in flight go on.
    """

    response: list = []


class Resume(amp.Command):
    """
    Accept new requests again.
    """

    response: list = []


class ChangeSetting(amp.Command):
    """
    Change one setting for the transfers that start afterwards (the
    supervisor has checked the value already).
    """

    arguments = [(b"name", amp.Unicode()), (b"value", JSON())]
    response: list = []
    errors = {KeyError: b"NO_SUCH_SETTING", TypeError: b"BAD_TYPE", ValueError: b"BAD_VALUE"}


class Stop(amp.Command):
    """
    Stop serving: drain, let the transfers in flight finish for up to the
    shutdown grace (C{now}: abort them at once), close the listener.  The
    answer comes once that is done; C{cut} says whether transfers were
    cut.  The worker exits when the supervisor then closes the channel.
    """

    arguments = [(b"now", amp.Boolean())]
    response = [(b"cut", amp.Boolean())]

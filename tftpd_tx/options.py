"""
Option negotiation (RFC 2347, 2348, 2349, 7440) as one pure function.

L{negotiate} takes what the client asked for, what the server allows and what
it knows about the content, and returns the values the session runs with and
the options to put in an OACK.  It never raises on client input: an option
with a value out of range or not a number is left out of the OACK, which
RFC 2347 defines as "the server declines it", and the client falls back to
the RFC 1350 default.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

# The limits are settings, described with the others; the RFC bounds on
# blksize and windowsize are theirs too.
from .settings import MAX_BLKSIZE, MAX_WINDOWSIZE, MIN_BLKSIZE, Limits

__all__ = [
    "DEFAULT_BLKSIZE",
    "MIN_BLKSIZE",
    "MAX_BLKSIZE",
    "MAX_WINDOWSIZE",
    "Limits",
    "Negotiated",
    "buffer_charge",
    "negotiate",
]

#: RFC 1350's block size, used when the client asks for nothing else.
DEFAULT_BLKSIZE = 512
#: RFC 2349's bounds on the timeout option, in seconds.
MIN_TIMEOUT = 1
MAX_TIMEOUT = 255


@dataclass(frozen=True)
class Negotiated:
    """
    The outcome of negotiation.

    @ivar blksize: bytes per DATA block.
    @ivar windowsize: blocks sent before waiting for an ACK.
    @ivar timeout: the retransmit interval the client asked for, or L{None}
        to use the server's own.
    @ivar oack: the options to acknowledge, in the client's order, or L{None}
        when nothing was accepted and the transfer starts with DATA 1.
    """

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: int | None = None
    oack: dict[str, str] | None = None


def _integer(value: str, low: int, high: int) -> int | None:
    """
    Parse a decimal option value within C{[low, high]}, or L{None}.

    Only ASCII digits count: C{str.isdigit} alone also accepts other
    scripts' digits (which C{int} reads) and superscripts (which it rejects
    with an exception).
    """
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 10:
        return None
    number = int(value)
    if low <= number <= high:
        return number
    return None


@functools.lru_cache(maxsize=256)
def _decimal(number: int) -> str:
    """
    C{str(number)}, one copy for all the transfers that acknowledge the
    same value.

    The acknowledged options live as long as their transfer (they are its
    L{tftpd_tx.stats.SessionStats.options_acked}), and their values repeat:
    the block sizes clients ask for, the sizes of the few files a boot
    server serves.  With thousands of transfers running, a copy of each
    per transfer added up.
    """
    return str(number)


def buffer_charge(blksize: int) -> int:
    """
    What one DATA datagram of C{blksize} takes of a Linux receive buffer.

    The kernel charges a queued datagram its whole allocation: the
    datagram and its headers rounded up to a power of two while it fits
    in 16 KiB, to pages beyond, plus the socket buffer's own bookkeeping
    (measured on loopback with the default 212,992-byte buffer: 166
    datagrams of 516 bytes fit, 92 of 1,472, 48 of 2,052, 25 of 4,100, 12
    of 8,196 or 16,388, 6 of 32,772, 3 of 65,468).  This errs high, by an
    eighth and 256 bytes, so that a whole window fits with room to spare.
    """
    needed = blksize + 4 + 320
    if needed <= 16384:
        allocation = 1 << (needed - 1).bit_length()
    else:
        allocation = -(-needed // 4096) * 4096
    return allocation + allocation // 8 + 256


def negotiate(
    requested: dict[str, str],
    limits: Limits,
    size: int | None,
) -> Negotiated:
    """
    Decide the options of one read transfer.

    @param requested: the RRQ's options, names lower-cased (as
        L{tftpd_tx.wire.ReadRequest.options} has them).
    @param limits: the server's L{Limits}.
    @param size: the number of bytes the transfer will send, or L{None} when
        it is not known in advance (then C{tsize} is declined).
    """
    blksize = DEFAULT_BLKSIZE
    windowsize = 1
    timeout = None
    accepted: dict[str, str] = {}
    for name, value in requested.items():
        if name == "blksize":
            number = _integer(value, MIN_BLKSIZE, MAX_BLKSIZE)
            if number is not None:
                blksize = min(number, limits.max_blksize)
                accepted[name] = _decimal(blksize)
        elif name == "windowsize":
            number = _integer(value, 1, MAX_WINDOWSIZE)
            if number is not None:
                windowsize = min(number, limits.max_windowsize)
                accepted[name] = _decimal(windowsize)
        elif name == "timeout":
            number = _integer(value, MIN_TIMEOUT, MAX_TIMEOUT)
            if number is not None:
                timeout = number
                accepted[name] = _decimal(number)
        elif name == "tsize":
            # An empty file's tsize is declined: curl rejects "tsize 0" in
            # an OACK, and a size nobody needs to allocate for is no loss.
            if size:
                accepted[name] = _decimal(size)
    if "windowsize" in accepted:
        # The byte caps depend on the block size, which may come after the
        # windowsize option in the request: apply them once both are known.
        windowsize = min(windowsize, limits.max_window_bytes // blksize)
        if limits.client_buffer:
            windowsize = min(windowsize, limits.client_buffer // buffer_charge(blksize))
        windowsize = max(1, windowsize)
        accepted["windowsize"] = _decimal(windowsize)
    return Negotiated(blksize, windowsize, timeout, accepted or None)

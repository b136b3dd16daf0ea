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

from dataclasses import dataclass

__all__ = [
    "DEFAULT_BLKSIZE",
    "MIN_BLKSIZE",
    "MAX_BLKSIZE",
    "MAX_WINDOWSIZE",
    "Limits",
    "Negotiated",
    "negotiate",
]

#: RFC 1350's block size, used when the client asks for nothing else.
DEFAULT_BLKSIZE = 512
#: RFC 2348's bounds on the blksize option.
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464
#: RFC 7440's bound on the windowsize option.
MAX_WINDOWSIZE = 65535
#: RFC 2349's bounds on the timeout option, in seconds.
MIN_TIMEOUT = 1
MAX_TIMEOUT = 255


@dataclass(frozen=True)
class Limits:
    """
    What the server allows a client to negotiate.

    @ivar max_blksize: the largest block size accepted; larger requests are
        clamped to it.
    @ivar max_windowsize: the largest window, in blocks.
    @ivar max_window_bytes: the most payload bytes one window may hold, so a
        client asking for 64 blocks of 64 KiB does not get 4 MiB in flight;
        the window is clamped to C{max_window_bytes // blksize} (at least 1).
        The default, 192 KiB, is what a client's receive buffer holds with
        Linux's default size (212992 bytes, kernel overhead included): three
        64 KiB blocks arrive whole where four overflow it.
    """

    max_blksize: int = MAX_BLKSIZE
    max_windowsize: int = 64
    max_window_bytes: int = 192 * 1024

    def __post_init__(self) -> None:
        # A limit outside the RFC ranges would let negotiate() grant what no
        # RFC allows (a 0-byte block divides by zero below): refuse it here,
        # when the server is configured, not on some client's request.
        if not MIN_BLKSIZE <= self.max_blksize <= MAX_BLKSIZE:
            raise ValueError(
                f"max_blksize must be between {MIN_BLKSIZE} and {MAX_BLKSIZE}, "
                f"not {self.max_blksize!r}"
            )
        if not 1 <= self.max_windowsize <= MAX_WINDOWSIZE:
            raise ValueError(
                f"max_windowsize must be between 1 and {MAX_WINDOWSIZE}, "
                f"not {self.max_windowsize!r}"
            )
        if self.max_window_bytes < 1:
            raise ValueError(
                f"max_window_bytes must be positive, not {self.max_window_bytes!r}"
            )


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
                accepted[name] = str(blksize)
        elif name == "windowsize":
            number = _integer(value, 1, MAX_WINDOWSIZE)
            if number is not None:
                windowsize = min(number, limits.max_windowsize)
                accepted[name] = str(windowsize)
        elif name == "timeout":
            number = _integer(value, MIN_TIMEOUT, MAX_TIMEOUT)
            if number is not None:
                timeout = number
                accepted[name] = str(number)
        elif name == "tsize":
            # An empty file's tsize is declined: curl rejects "tsize 0" in
            # an OACK, and a size nobody needs to allocate for is no loss.
            if size:
                accepted[name] = str(size)
    if "windowsize" in accepted:
        # The byte cap depends on the block size, which may come after the
        # windowsize option in the request: apply it once both are known.
        windowsize = max(1, min(windowsize, limits.max_window_bytes // blksize))
        accepted["windowsize"] = str(windowsize)
    return Negotiated(blksize, windowsize, timeout, accepted or None)

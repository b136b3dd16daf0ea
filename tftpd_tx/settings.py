"""
The server's tunables: what clients may negotiate and how transfers behave.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .options import MAX_BLKSIZE, MAX_WINDOWSIZE, MIN_BLKSIZE, Limits

__all__ = ["Settings", "SETTING_BOUNDS"]


#: The type and range of each setting (of L{Settings} or of its L{Limits}),
#: for everything that sets them: the command line and the manhole.
SETTING_BOUNDS = {
    "max_blksize": (int, MIN_BLKSIZE, MAX_BLKSIZE),
    "max_windowsize": (int, 1, MAX_WINDOWSIZE),
    "max_window_bytes": (int, MIN_BLKSIZE, 64 * 1024 * 1024),
    "timeout": (float, 0.01, 255),
    "retries": (int, 0, 100),
    "rollover": (int, 0, 1),
    "log_rate": (int, 0, 1_000_000),
}


@dataclass
class Settings:
    """
    The server's tunables; new transfers read them when they start, so they
    can be changed while the server runs.

    @ivar limits: what clients may negotiate (L{tftpd_tx.options.Limits}).
    @ivar timeout: the first retransmit wait, in seconds, when the client
        does not negotiate one (RFC 2349).
    @ivar retries: retransmissions of the same packets before giving up.
    @ivar rollover: the block number after 65535 (0 or 1).
    @ivar log_rate: at most this many transfer lines (finished transfers
        and refused requests) are logged a second; the rest are summed up in
        one line per second (see L{tftpd_tx.logbudget}).  C{0}: every line.
    """

    limits: Limits = field(default_factory=Limits)
    timeout: float = 1.0
    retries: int = 5
    rollover: int = 0
    log_rate: int = 100
    linger: float = 0.0

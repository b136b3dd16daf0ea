"""
systemd's socket activation: the datagram sockets a C{.socket} unit (or
C{systemd-socket-activate --datagram}) hands the server.

As C{sd_listen_fds(3)} has it: C{LISTEN_PID} names the process the
descriptors are for, C{LISTEN_FDS} says how many there are, numbered from 3;
C{LISTEN_FDNAMES}, when set, names them (C{systemd-socket-activate} sets
none, and the names are not needed here: every datagram socket is served).
The variables are read once and removed, so that no child takes the
descriptors for its own.

Twisted reads and removes the same variables as soon as
C{twisted.internet.endpoints} is imported, and without C{LISTEN_FDNAMES}
keeps none of the descriptors: L{tftpd_tx.tap} calls L{listen_fds} as it is
imported, before it imports anything that imports Twisted's endpoints.
"""

from __future__ import annotations

import os
import socket

__all__ = ["LISTEN_FDS_START", "datagram_sockets", "listen_fds"]

#: The first descriptor systemd passes (C{SD_LISTEN_FDS_START}).
LISTEN_FDS_START = 3

_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_FAMILIES = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}


def listen_fds(environ=None, pid: int | None = None) -> list[int]:
    """
    The descriptors systemd passed this process, and the variables that
    said so removed from C{environ}; none when they are missing, malformed
    or meant for another process (whose variables are left alone).

    @param environ: the environment; C{os.environ} when omitted.
    @param pid: this process's id; C{os.getpid()} when omitted.
    """
    environ = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    if environ.get("LISTEN_PID", "").strip() != str(pid):
        return []
    count = environ.get("LISTEN_FDS", "").strip()
    for name in _VARIABLES:
        environ.pop(name, None)
    if not count.isdigit():
        return []
    return list(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))


def datagram_sockets(fds) -> list[socket.socket]:
    """
    The sockets behind C{fds}, checked: each must be a bound IPv4 or IPv6
    datagram socket.  Each is a duplicate of its descriptor (which stays
    open, and is made close-on-exec), non-blocking (systemd's sockets
    arrive blocking) and close-on-exec.

    @raise ValueError: naming the descriptor at fault and what it is.
    """
    sockets = []
    for fd in fds:
        try:
            duplicate = os.dup(fd)
        except OSError as error:
            raise ValueError(f"descriptor {fd} is not open ({error.strerror})") from None
        try:
            skt = socket.socket(fileno=duplicate)
        except OSError as error:
            os.close(duplicate)
            raise ValueError(f"descriptor {fd} is not a socket ({error.strerror})") from None
        os.set_inheritable(fd, False)
        sockets.append(skt)
        if skt.type != socket.SOCK_DGRAM:
            raise ValueError(
                f"descriptor {fd} is not a datagram socket: the socket unit "
                "must use ListenDatagram= (TFTP is UDP)"
            )
        if skt.family not in _FAMILIES:
            raise ValueError(f"descriptor {fd} is not an IPv4 or IPv6 socket")
        skt.set_inheritable(False)
        skt.setblocking(False)
    return sockets


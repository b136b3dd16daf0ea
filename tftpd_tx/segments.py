"""
UDP generic segmentation offload: a window of equal-sized datagrams handed
to the kernel in one C{sendmsg}.

With a C{UDP_SEGMENT} control message of size C{n} (Linux 4.18 and later),
one C{sendmsg} of a buffer leaves the kernel as datagrams of C{n} bytes each
(the last may be shorter): the client sees ordinary datagrams, and a window
of 16 blocks costs one system call instead of 16.  Both ways a transfer
sends (its own socket, L{tftpd_tx.multiplexer}; the listener's socket in
single-port mode, L{tftpd_tx.singleport}) go through L{Segmenter}.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys

__all__ = ["Segmenter"]

#: Python 3.11's socket module does not export the constant.
UDP_SEGMENT = 103 if sys.platform.startswith("linux") else None
#: The kernel's limits on one segmented send: segments, and bytes in all
#: (an IPv4 datagram's largest payload).
MAX_SEGMENTS = 64
MAX_BYTES = 65507
#: What the kernel says when a route or device cannot segment: too large a
#: segment for the path MTU, no checksum offload, an older kernel.
REFUSED = frozenset({errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EMSGSIZE})
_SEGMENT_SIZE = struct.Struct("@H")


class Segmenter:
    """
    Segmented sends on one socket, until the kernel refuses one: from then
    on, this socket's windows go a datagram at a time.
    """

    __slots__ = ("segmenting",)

    def __init__(self) -> None:
        self.segmenting = UDP_SEGMENT is not None

    def send(self, sendmsg, datagrams, control, addr) -> tuple[int, int]:
        """
        Send what of C{datagrams} can go segmented, C{MAX_SEGMENTS} at most
        a call, with C{control} (other control messages: a source address)
        beside the segment size.

        Segments must all be as long as the first but the last, or the
        kernel would cut the stream at other boundaries than ours: a window
        that is not so is left whole to the caller.

        @param sendmsg: the socket's C{sendmsg}.
        @return: C{(handled, taken)}: the first C{handled} datagrams were
            dealt with here (the caller sends the rest one at a time), and
            the kernel took C{taken} of them (the others count as lost: a
            full buffer).
        """
        size = len(datagrams[0])
        per_call = min(MAX_SEGMENTS, MAX_BYTES // size)
        last = len(datagrams) - 1
        if not (
            self.segmenting
            and per_call > 1
            and last
            and all(len(datagram) == size for datagram in datagrams[:last])
        ):
            return 0, 0
        segmented = [*control, (socket.SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(size))]
        start = taken = 0
        while start <= last:
            batch = datagrams[start : start + per_call]
            try:
                sendmsg(batch, segmented, socket.MSG_DONTWAIT, addr)
            except OSError as reason:
                if reason.errno in REFUSED:
                    self.segmenting = False
                    break
            else:
                taken += len(batch)
            start += len(batch)
        return start, taken

"""
L{tftpd_tx.multiplexer}: transfer sockets on a real reactor and real
loopback sockets.
"""

from __future__ import annotations

import errno
import socket

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from tftpd_tx.multiplexer import SessionMultiplexer


class _Quiet(DatagramProtocol):
    noisy = False


class _WatchedSocket:
    """
    A transfer socket's real socket, with its sends counted; with
    C{refuse}, a kernel that cannot segment UDP (as on a route whose MTU is
    smaller than a segment): C{sendmsg} with control data fails with
    C{EINVAL}.
    """

    def __init__(self, real: socket.socket, refuse: bool = False) -> None:
        self._real = real
        self._refuse = refuse
        self.calls: list[str] = []

    def sendmsg(self, buffers, ancillary=(), flags=0, address=None):
        self.calls.append("sendmsg")
        if ancillary and self._refuse:
            raise OSError(errno.EINVAL, "Invalid argument")
        return self._real.sendmsg(buffers, ancillary, flags, address)

    def sendto(self, datagram, *flags_and_address):
        self.calls.append("sendto")
        return self._real.sendto(datagram, *flags_and_address)

    def __getattr__(self, name):
        return getattr(self._real, name)


class SendDatagramsTests(TestCase):
    """
    A transfer socket sends a window of datagrams with as few system calls
    as the kernel allows, and the client receives them as separate
    datagrams, in order, whatever the kernel could do.
    """

    def setUp(self):
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.client.close)
        self.client.bind(("127.0.0.1", 0))
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.client.settimeout(5)
        self.multiplexer = SessionMultiplexer(reactor)
        self.transport = self.multiplexer.start_transfer(_Quiet(), "127.0.0.1")
        self.addCleanup(self.transport.stopListening)

    def received(self, count: int) -> list[bytes]:
        return [self.client.recv(65536) for _ in range(count)]

    def window(self, blocks: int, blksize: int, last: int) -> list[bytes]:
        """
        DATA-like datagrams: C{blocks - 1} of C{blksize + 4} bytes and a
        last one of C{last + 4}, each with its number in its first bytes.
        """
        sizes = [blksize] * (blocks - 1) + [last]
        return [n.to_bytes(4, "big") + bytes([n % 251]) * size for n, size in enumerate(sizes)]

    def watch(self, refuse: bool = False) -> _WatchedSocket:
        real = self.transport.socket
        watched = self.transport.socket = _WatchedSocket(real, refuse)
        self.addCleanup(setattr, self.transport, "socket", real)
        return watched

    def test_window_arrives_as_datagrams(self):
        """
        Sixteen full blocks and a short last one are one system call, and
        arrive as seventeen datagrams of their own sizes and contents.
        """
        watched = self.watch()
        datagrams = self.window(17, 1468, 100)
        sent = self.transport.send_window(datagrams, self.client.getsockname())
        assert sent == 17
        assert self.received(17) == datagrams
        assert watched.calls == ["sendmsg"]

    def test_more_than_one_send_can_hold(self):
        """
        A window of more datagrams than one segmented send may carry (64)
        or more bytes (64 KiB) still arrives whole and in order.
        """
        for blocks, blksize in ((200, 512), (60, 1468), (5, 20000)):
            datagrams = self.window(blocks, blksize, blksize)
            sent = self.transport.send_window(datagrams, self.client.getsockname())
            assert sent == blocks
            assert self.received(blocks) == datagrams

    def test_unequal_sizes_are_sent_one_by_one(self):
        """
        Datagrams of different sizes (not a window of one transfer) are
        still delivered with their own boundaries.
        """
        datagrams = [b"\0\3\0\1" + b"a" * 10, b"\0\3\0\2" + b"b" * 700, b"\0\3\0\3"]
        assert self.transport.send_window(datagrams, self.client.getsockname()) == 3
        assert self.received(3) == datagrams

    def test_kernel_refusing_segmentation(self):
        """
        Where the kernel refuses to segment, the window is sent one
        datagram at a time, and later windows do not ask the kernel again.
        """
        watched = self.watch(refuse=True)
        for _ in range(2):
            datagrams = self.window(16, 1468, 1468)
            sent = self.transport.send_window(datagrams, self.client.getsockname())
            assert sent == 16
            assert self.received(16) == datagrams
        assert watched.calls == ["sendmsg"] + ["sendto"] * 32

"""
Test doubles for tftpd_tx and for the handlers you write.

L{FakeUDPReactor} is a L{task.Clock} that also opens fake UDP ports, so a
L{tftpd_tx.server.TFTPServer} runs on it exactly as on a real reactor, with
time advanced by hand and every datagram recorded.  The fake ports implement
the same contract as the real ones (L{tftpd_tx.transport.IRequestPort} and
L{tftpd_tx.transport.ITransferPort}): a window goes through C{send_window},
a listener's reply through C{reply_from}, and datagrams can wait unread
(L{FakeUDPPort.arrive}) until the protocol asks for them.  L{MemoryHandler} serves
files held in a dictionary.  A complete exchange takes a few lines::

    reactor = FakeUDPReactor()
    server = TFTPServer(MemoryHandler({"boot.cfg": b"..."}), reactor=reactor)
    listener = reactor.listenUDP(69, server)
    listener.deliver(ReadRequest("boot.cfg", "octet").encode(), ("10.0.0.5", 2000))
    session_port = reactor.ports[-1]
    session_port.sent   # [(b"\\x00\\x03\\x00\\x01...", ("10.0.0.5", 2000))]
"""

from __future__ import annotations

import errno
import itertools

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from zope.interface import implementer

from .content import BytesResponseData, FileNotFound, Request
from .transport import IRequestPort, ITransferPort

__all__ = ["FakeUDPReactor", "FakeUDPPort", "MemoryHandler"]


@implementer(IRequestPort, ITransferPort)
class FakeUDPPort:
    """
    A UDP port that records what its protocol sends.

    @ivar sent: every C{(datagram, address)} sent, in order, however it was
        sent.
    @ivar windows: the size of each C{send_window} call, in order.
    @ivar replies: every C{(datagram, address, source)} of C{reply_from}.
    @ivar pending: datagrams that have arrived (L{arrive}) but that the
        protocol has not read yet.
    @ivar refuse: while true, every send raises C{OSError} (ENOBUFS), as a
        full socket buffer does.
    @ivar listening: L{False} once the protocol stopped listening.
    """

    def __init__(self, reactor: FakeUDPReactor, protocol, port: int, interface: str):
        self.reactor = reactor
        self.protocol = protocol
        self.port = port
        self.interface = interface
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.windows: list[int] = []
        self.replies: list[tuple[bytes, tuple[str, int], str | None]] = []
        self.pending: list[tuple[bytes, tuple[str, int]]] = []
        self.refuse = False
        self.listening = True

    def write(self, datagram: bytes, addr=None) -> None:
        if self.refuse:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        self.sent.append((bytes(datagram), addr))

    def send_window(self, datagrams, addr) -> int:
        self.windows.append(len(datagrams))
        if self.refuse:
            return 0
        for datagram in datagrams:
            self.sent.append((bytes(datagram), addr))
        return len(datagrams)

    def reply_from(self, datagram: bytes, addr, source) -> None:
        if self.refuse:
            return
        self.replies.append((bytes(datagram), addr, source))
        self.sent.append((bytes(datagram), addr))

    def read_pending(self) -> None:
        while self.pending and self.listening:
            self.protocol.datagramReceived(*self.pending.pop(0))

    def getHost(self):
        if ":" in self.interface:
            return IPv6Address("UDP", self.interface, self.port)
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)

    def stopListening(self):
        self.listening = False
        # A protocol may stop listening from its startProtocol, before the
        # port counts it as started: then listenUDP stops it afterwards.
        if self.protocol.numPorts:
            self.protocol.doStop()

    loseConnection = stopListening

    def deliver(self, datagram: bytes, addr, *extra) -> None:
        """
        Hand the protocol a datagram, as the reactor would when it arrives.
        """
        if not self.listening:
            raise RuntimeError(f"port {self.port} is closed")
        self.protocol.datagramReceived(datagram, addr, *extra)

    def arrive(self, datagram: bytes, addr) -> None:
        """
        Let a datagram arrive without the reactor handing it over yet: it
        waits in L{pending} until the protocol asks (C{read_pending}) or a
        test calls L{deliver_pending}.
        """
        self.pending.append((datagram, addr))

    def deliver_pending(self) -> None:
        """
        Hand the protocol what is pending, as the reactor would next.
        """
        self.read_pending()

    def take(self) -> list[bytes]:
        """
        Return the datagrams sent since the last call, and forget them.
        """
        datagrams = [datagram for datagram, _ in self.sent]
        del self.sent[:]
        return datagrams


class FakeUDPReactor(Clock):
    """
    A clock that also provides C{listenUDP}; ports get numbers from 50000 up
    when asked for port 0.

    @ivar ports: every port opened, in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakeUDPPort] = []
        self._numbers = itertools.count(50000)

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        fake = FakeUDPPort(self, protocol, port or next(self._numbers), interface)
        self.ports.append(fake)
        protocol.makeConnection(fake)
        if not fake.listening:
            protocol.doStop()
        return fake

    def open_ports(self) -> list[FakeUDPPort]:
        """
        The ports still listening.
        """
        return [port for port in self.ports if port.listening]


class MemoryHandler:
    """
    Serve files from a dictionary of path to bytes (or text).

    @ivar requests: every L{Request} received, in order.
    """

    def __init__(self, files: dict[str, bytes | str]) -> None:
        self.files = files
        self.requests: list[Request] = []

    def get_response_data(self, request: Request) -> BytesResponseData:
        self.requests.append(request)
        try:
            return BytesResponseData(self.files[request.normalized_path])
        except KeyError:
            raise FileNotFound() from None

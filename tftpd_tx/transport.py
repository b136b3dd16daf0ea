"""
The contract between the protocol code and the sockets under it.

L{tftpd_tx.server.TFTPServer} and L{tftpd_tx.session.ReadSession} speak to
ports through two interfaces, and get them from an L{INetwork}:

  - L{IRequestPort}: the server's listening port; it answers a request from
    the address the request was sent to.
  - L{ITransferPort}: the port of one transfer (its TID); it sends one
    datagram or a whole window, and hands its protocol what is already
    waiting when asked.
  - L{INetwork}: where both come from, chosen once where the server is put
    together (L{tftpd_tx.service.TFTPService}) and handed to the server.
  - L{ISharedRequestPort}: a request port whose transfers share its socket
    (single-port mode): the server opens a request's transfer on the port
    the request came in on, not from the network.

Every way of moving datagrams implements them: the epoll engine of
L{tftpd_tx.multiplexer}, L{UDPNetwork} over any reactor's C{listenUDP}, the
single-port network of L{tftpd_tx.singleport} over either, and the fakes of
L{tftpd_tx.testing}.  A plain Twisted UDP port becomes either
kind of port by adaptation (C{ITransferPort(port)}), so a L{TFTPServer}
given to C{reactor.listenUDP} by hand still works.
"""

from __future__ import annotations

from twisted.internet.interfaces import IUDPTransport
from twisted.python.components import registerAdapter
from zope.interface import Attribute, Interface, implementer

__all__ = [
    "INetwork",
    "IRequestPort",
    "ISharedRequestPort",
    "ITransferPort",
    "UDPNetwork",
    "MAX_DATAGRAM",
]

#: Receive buffer of every port: large enough for any TFTP datagram
#: (blksize 65464 plus the 4-byte header), so nothing is ever truncated
#: (Twisted's C{listenUDP} would cut at 8192 bytes by default).
MAX_DATAGRAM = 65536


class IRequestPort(Interface):
    """
    The server's listening port.

    It delivers datagrams to its protocol as
    C{datagramReceived(datagram, peer, local_host)}, where C{local_host} is
    the address the datagram was sent to when only the kernel could tell
    (a wildcard port), else L{None}.
    """

    def reply_from(datagram, addr, source):
        """
        Send C{datagram} to C{addr} with C{source} (a host, or L{None} for
        the port's own) as its source address.  Never raises: a lost reply
        is asked for again by the client.
        """

    def getHost():
        """
        The port's address, an C{IPv4Address} or C{IPv6Address}.
        """

    def stopListening():
        """
        Close the port.
        """


class ITransferPort(Interface):
    """
    The port of one transfer, which its protocol (a
    L{tftpd_tx.session.ReadSession}) sends and receives through.
    """

    def write(datagram, addr):
        """
        Send one datagram to C{addr}.

        @raise OSError: the kernel refused it (a full buffer); the caller
            counts it as lost.
        """

    def send_window(datagrams, addr):
        """
        Send several datagrams to C{addr}, in order, in as few system calls
        as the port can.

        @return: how many the kernel took; the others count as lost.
        """

    def read_pending():
        """
        Hand the protocol the datagrams that have already arrived for it,
        now rather than when the reactor next looks.
        """

    def getHost():
        """
        The transfer's own address (its TID), an C{IPv4Address} or
        C{IPv6Address}.
        """

    def stopListening():
        """
        Close the port; the protocol is stopped at once.
        """


class ISharedRequestPort(IRequestPort):
    """
    A request port that carries its transfers too (single-port mode): every
    datagram of a transfer leaves from the address and port its request was
    sent to, and what the client sends back is told apart by the client's
    address and port.  A request's transfer is opened here, on the port the
    request came in on, rather than by the L{INetwork}.
    """

    transfers = Attribute(
        "The live transfers' ports (L{ITransferPort}), by the C{(host, port)}"
        " of their peer."
    )

    def open_transfer(protocol, interface, peer):
        """
        Start C{protocol} on a new L{ITransferPort} that sends through this
        port's socket with C{interface} as the source address, and hands it
        what C{peer} sends to this port (requests aside: they still reach
        this port's own protocol), and return it.
        """


class INetwork(Interface):
    """
    Where a server's ports come from.
    """

    reactor = Attribute("The IReactorTime the ports' protocols run on.")

    def listen(port, protocol, interface):
        """
        Start C{protocol} on a listening L{IRequestPort} bound to
        C{(interface, port)} and return the port.
        """

    def adopt(socket, protocol):
        """
        Start C{protocol} on a listening L{IRequestPort} over C{socket}, a
        datagram socket already bound (by systemd's socket activation, or by
        a supervisor before it dropped privileges), and return the port.
        The socket is duplicated: the caller may close its own.
        """

    def open_transfer(protocol, interface):
        """
        Start C{protocol} on a new L{ITransferPort} on an ephemeral port of
        C{interface} and return the port.

        @raise twisted.internet.error.CannotListenError: no port could be
            had (its C{socketError} says why: out of descriptors, an
            address gone).
        """


@implementer(IRequestPort)
class _PlainRequestPort:
    """
    A Twisted UDP port seen as an L{IRequestPort}: it cannot choose a
    source address, so replies leave from its own.
    """

    def __init__(self, port) -> None:
        self._port = port

    def reply_from(self, datagram: bytes, addr, source) -> None:
        try:
            self._port.write(datagram, addr)
        except OSError:
            pass

    def getHost(self):
        return self._port.getHost()

    def stopListening(self):
        return self._port.stopListening()


@implementer(ITransferPort)
class _PlainTransferPort:
    """
    A Twisted UDP port seen as an L{ITransferPort}: a window is one
    C{write} a datagram, and what is waiting is read when the reactor looks.
    """

    def __init__(self, port) -> None:
        self._port = port

    def write(self, datagram: bytes, addr) -> None:
        self._port.write(datagram, addr)

    def send_window(self, datagrams, addr) -> int:
        sent = 0
        for datagram in datagrams:
            try:
                self._port.write(datagram, addr)
            except OSError:
                continue
            sent += 1
        return sent

    def read_pending(self) -> None:
        pass

    def getHost(self):
        return self._port.getHost()

    def stopListening(self):
        return self._port.stopListening()


registerAdapter(_PlainRequestPort, IUDPTransport, IRequestPort)
registerAdapter(_PlainTransferPort, IUDPTransport, ITransferPort)


@implementer(INetwork)
class UDPNetwork:
    """
    Ports from C{reactor.listenUDP}: any reactor, one reactor reader per
    transfer.  The listener cannot learn which address a request was sent
    to, so bind it to one address where that matters.

    @param reactor: provides C{IReactorUDP} and C{IReactorTime}.
    """

    def __init__(self, reactor) -> None:
        self.reactor = reactor

    def listen(self, port: int, protocol, interface: str):
        return IRequestPort(
            self.reactor.listenUDP(
                port, protocol, interface=interface, maxPacketSize=MAX_DATAGRAM
            )
        )

    def adopt(self, socket, protocol):
        socket.setblocking(False)
        return IRequestPort(
            self.reactor.adoptDatagramPort(
                socket.fileno(), socket.family, protocol, maxPacketSize=MAX_DATAGRAM
            )
        )

    def open_transfer(self, protocol, interface: str):
        return ITransferPort(
            self.reactor.listenUDP(
                0, protocol, interface=interface, maxPacketSize=MAX_DATAGRAM
            )
        )

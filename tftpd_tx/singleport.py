"""
Single-port mode: every transfer shares the socket its request came in on.

In classic TFTP each transfer has a port of its own (its TID), so a client
sends its RRQ to port 69 and its ACKs to another port.  A router that
spreads an anycast address over several servers by hashing the UDP ports
(per-flow ECMP) may then send the ACKs to a server that never saw the RRQ.
Here every reply leaves from the address and port the request was sent to,
and the transfers are told apart by the client's address and port on the
listening socket, so all of a client's datagrams form one flow.

L{SinglePortNetwork} is the L{INetwork} of this mode, over another one that
makes the listening sockets (the epoll engine's, or C{listenUDP}'s).  Its
request ports are L{SharedPort}s: the listening socket's protocol, which
hands each datagram from a peer that has a transfer to that transfer
(requests aside: a repeated RRQ still reaches the server, which applies its
duplicate rule as in classic mode), and everything else to the server; and
the server's L{ISharedRequestPort}, on which it opens each request's
transfer.

What a transfer sends goes through the listening socket with the address
the request was sent to as its source (a wildcard socket says so with
C{IP_PKTINFO}/C{IPV6_PKTINFO}), a window in one C{sendmsg} with UDP
segmentation offload where the kernel allows, as the epoll engine's
transfer sockets do.
"""

from __future__ import annotations

import errno
import socket

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import DatagramProtocol
from twisted.python.components import registerAdapter
from zope.interface import Interface, implementer

from .requestport import (
    _DONTWAIT,
    ILingeringProtocol,
    PacketInfoPort,
    plain_address,
    widen_buffer,
)
from .segments import Segmenter
from .transport import INetwork, IRequestPort, ISharedRequestPort, ITransferPort

__all__ = ["SinglePortNetwork", "SharedPort"]

#: The first two bytes of an RRQ and of a WRQ: requests go to the server
#: even from a peer with a transfer, so that the duplicate rule sees them.
_REQUESTS = frozenset({b"\0\1", b"\0\2"})

#: The send and receive buffers a listening socket asks for when every
#: transfer goes through it: what hundreds of transfers had, a socket each,
#: in classic mode.  The kernel grants up to C{net.core.wmem_max} and
#: C{rmem_max} (a socket unit's C{SendBuffer=} and C{ReceiveBuffer=} are not
#: bound by them); a socket that has more keeps it.
SHARED_BUFFER = 4 * 1024 * 1024


class ISocketSender(Interface):
    """
    How the transfers of a L{SharedPort} send through its listening socket.
    """

    def route(addr, source):
        """
        What L{send} and L{send_window} take to reach C{addr} from the source
        address C{source}: worked out once per transfer, not per datagram.
        """

    def send(datagram, route):
        """
        Send one datagram.

        @raise OSError: the kernel refused it.
        """

    def send_window(datagrams, route):
        """
        Send several datagrams, in order, in as few system calls as the
        socket can.

        @return: how many the kernel took.
        """


@implementer(ISocketSender)
class _ListenerSocketSender:
    """
    Sends through a L{PacketInfoPort}'s socket: C{sendto} on a socket bound
    to one address, C{sendmsg} with the source address on a wildcard one,
    and a window of equal-sized datagrams as one C{sendmsg} with a
    C{UDP_SEGMENT} control message too (until the kernel refuses it once).
    The socket's buffers are widened to L{SHARED_BUFFER} first: with the
    default ones, a few hundred transfers' blocks and ACKs at once overflow
    them, and each datagram lost so costs its transfer a timeout.
    """

    def __init__(self, port: PacketInfoPort) -> None:
        self._port = port
        self._segmenter = Segmenter()
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            widen_buffer(port.socket, option, SHARED_BUFFER)

    def route(self, addr, source):
        port = self._port
        return port.destination(addr), port.source_control(source)

    def send(self, datagram: bytes, route) -> None:
        destination, control = route
        if control:
            self._port.socket.sendmsg([datagram], control, _DONTWAIT, destination)
        else:
            self._port.socket.sendto(datagram, _DONTWAIT, destination)

    def send_window(self, datagrams, route) -> int:
        destination, control = route
        start, sent = self._segmenter.send(
            self._port.socket.sendmsg, datagrams, control, destination
        )
        for datagram in datagrams[start:]:
            try:
                self.send(datagram, route)
            except OSError:
                continue
            sent += 1
        return sent


@implementer(ISocketSender)
class _ReplySender:
    """
    Sends through any L{IRequestPort} (a plain Twisted port, the fakes of
    L{tftpd_tx.testing}) with its C{reply_from}, one datagram at a time; a
    datagram the kernel refuses is lost without a word, as a reply is.
    """

    def __init__(self, port) -> None:
        self._port = port

    def route(self, addr, source):
        return addr, source

    def send(self, datagram: bytes, route) -> None:
        self._port.reply_from(datagram, *route)

    def send_window(self, datagrams, route) -> int:
        for datagram in datagrams:
            self._port.reply_from(datagram, *route)
        return len(datagrams)


registerAdapter(_ListenerSocketSender, PacketInfoPort, ISocketSender)
registerAdapter(_ReplySender, IRequestPort, ISocketSender)


def _closed(*args) -> None:
    raise OSError(errno.EBADF, "The transfer's listening port is closed")


@implementer(ITransferPort)
class _SharedTransfer:
    """
    The port of one transfer of a L{SharedPort}: what it sends leaves
    through the listening socket from the address the request was sent to;
    what its peer sends is handed to it by the L{SharedPort}.

    @ivar protocol: the transfer's protocol.
    """

    def __init__(self, shared: SharedPort, protocol, interface: str, peer) -> None:
        self.protocol = protocol
        self._shared = shared
        self._interface = interface
        self._peer = peer
        sender = self._sender = shared.sender
        self._route = sender.route(peer, interface)
        self._send = sender.send
        self._send_window = sender.send_window
        port = shared.getHost().port
        self._host = (
            IPv6Address("UDP", interface, port)
            if ":" in interface
            else IPv4Address("UDP", interface, port)
        )

    def _route_to(self, addr):
        if addr == self._peer:
            return self._route
        return self._sender.route(addr, self._interface)

    def write(self, datagram: bytes, addr) -> None:
        self._send(datagram, self._route_to(addr))

    def send_window(self, datagrams, addr) -> int:
        return self._send_window(datagrams, self._route_to(addr))

    def read_pending(self) -> None:
        """
        Nothing to do: the transfer's datagrams arrive on the listening
        socket with the requests, in the order they were sent, so whatever
        its peer sent before a new request has already been handed over
        when the server sees that request.
        """

    def getHost(self):
        """
        The address the request was sent to, on the listening port.
        """
        return self._host

    @property
    def listening(self) -> bool:
        """
        Whether the transfer still has its share of the port.
        """
        return self._send is not _closed

    def stopListening(self) -> None:
        """
        Stop handing this transfer its peer's datagrams; the protocol is
        stopped at once, and sends from now on fail.
        """
        if not self.listening:
            return
        self._send = _closed
        self._send_window = lambda datagrams, route: 0
        transfers = self._shared.transfers
        if transfers.get(self._peer) is self:
            del transfers[self._peer]
        # A protocol may stop from its own startProtocol, before it counts
        # as started: then open_transfer stops it right after.
        if self.protocol.numPorts:
            self.protocol.doStop()


@implementer(ISharedRequestPort, ILingeringProtocol)
class SharedPort(DatagramProtocol):
    """
    A listening socket shared by a server and its transfers.

    It has two faces: to the listening port under it (a L{PacketInfoPort},
    a plain Twisted port, a fake) it is the protocol, which hands each
    datagram from a peer with a transfer to that transfer and the others to
    C{protocol}; to C{protocol} (the server) it is the transport, an
    L{ISharedRequestPort}.

    @param protocol: the server's protocol for this port, given datagrams as
        C{datagramReceived(datagram, peer, local_host)}.
    @param linger: returns the C{linger} setting: how long the listening
        port may wait for the next datagram of a lone transfer (see
        L{ILingeringProtocol}).

    @ivar transfers: the live transfers' ports, by peer.
    @ivar sender: the L{ISocketSender} the transfers send through.
    """

    noisy = False

    def __init__(self, protocol, linger=lambda: 0.0) -> None:
        self._protocol = protocol
        self._linger = linger
        self.transfers: dict[tuple[str, int], _SharedTransfer] = {}
        self._port = None
        self.sender = None

    # -- the listening port's protocol --------------------------------------

    def startProtocol(self) -> None:
        self._port = IRequestPort(self.transport)
        self.sender = ISocketSender(self._port)
        self._protocol.makeConnection(self)

    def stopProtocol(self) -> None:
        for transfer in list(self.transfers.values()):
            transfer.stopListening()
        self._protocol.doStop()

    def datagramReceived(self, datagram: bytes, addr, local: str | None = None) -> None:
        if len(addr) != 2:
            addr = plain_address(addr)
        transfer = self.transfers.get(addr)
        if transfer is not None and datagram[:2] not in _REQUESTS:
            transfer.protocol.datagramReceived(datagram, addr)
        else:
            self._protocol.datagramReceived(datagram, addr, local)

    def linger(self) -> float:
        """
        The linger while one transfer runs, as the epoll engine's lone
        transfer has it; none with two or more, or none at all.
        """
        return self._linger() if len(self.transfers) == 1 else 0.0

    # -- the server's request port ------------------------------------------

    def reply_from(self, datagram: bytes, addr, source) -> None:
        self._port.reply_from(datagram, addr, source)

    def getHost(self):
        return self._port.getHost()

    def stopListening(self):
        return self._port.stopListening()

    def open_transfer(self, protocol, interface: str, peer):
        transfer = _SharedTransfer(self, protocol, interface, peer)
        self.transfers[peer] = transfer
        protocol.makeConnection(transfer)
        if not transfer.listening:
            protocol.doStop()
        return transfer


@implementer(INetwork)
class SinglePortNetwork:
    """
    Single-port mode over C{network}, which makes the listening sockets:
    each of them is wrapped in a L{SharedPort}, and a request's transfer
    runs on the port the request came in on.

    @param network: an L{INetwork}: the epoll engine's (its listener learns
        each request's destination address on a wildcard socket, sends
        windows with segmentation offload and lingers for a lone transfer),
        or L{tftpd_tx.transport.UDPNetwork}.
    @param linger: see L{SharedPort}.
    """

    def __init__(self, network, linger=lambda: 0.0) -> None:
        self._network = network
        self._linger = linger
        self.reactor = network.reactor

    def listen(self, port: int, protocol, interface: str):
        shared = SharedPort(protocol, self._linger)
        self._network.listen(port, shared, interface)
        return shared

    def adopt(self, socket, protocol):
        shared = SharedPort(protocol, self._linger)
        self._network.adopt(socket, shared)
        return shared

    def open_transfer(self, protocol, interface: str):
        """
        A transfer asked of the network rather than of one of its request
        ports has no request to share a port with: it gets a port of its own
        from the network underneath.  (A server asks its L{SharedPort}s.)
        """
        return self._network.open_transfer(protocol, interface)

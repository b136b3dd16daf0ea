"""
The transfer engine: one reactor reader for the sockets of every transfer.

Each transfer still has its own UDP socket (its TID), but the reactor
watches one epoll descriptor for all of them (L{SessionMultiplexer}), so a
busy server pays Twisted's per-event dispatch once per wakeup, not once per
ACK.  Its transfer sockets (L{ITransferPort}) send a window in one system
call with UDP segmentation offload, and a lone transfer may be served as a
blocking server would (see L{SessionMultiplexer._serve_alone}).
L{EpollNetwork} is the L{INetwork} that puts it together with the
L{tftpd_tx.requestport.PacketInfoPort} listener.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from typing import Callable

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorFDSet
from twisted.logger import Logger
from zope.interface import implementer

from .requestport import PacketInfoPort
from .segments import Segmenter
from .transport import MAX_DATAGRAM, INetwork, ITransferPort

__all__ = ["EpollNetwork", "SessionMultiplexer", "epoll_available"]

#: Rounds of reading ready transfer sockets before the reactor has a turn,
#: and datagrams read in all: the reactor's other readers (the listener, an
#: origin's connection, the operations endpoint) wait no longer than that.
_ROUNDS_PER_WAKEUP = 64
_DATAGRAMS_PER_WAKEUP = 256

#: How many lingers (the C{linger} setting: the wait on the socket of a lone
#: transfer for its next datagram) the multiplexer may spend in all before
#: it gives the reactor back (see L{SessionMultiplexer._serve_alone}).
_LINGERS_PER_WAKEUP = 5
_TIMEVAL = struct.Struct("@ll")
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)



@implementer(ITransferPort)
class _TransferSocket:
    """
    The transport of one transfer: a UDP socket on an ephemeral port, read
    by a L{SessionMultiplexer}.

    Writes go straight to C{sendto}: a session writes only to addresses its
    own socket produced, so there is nothing to check, and any error is the
    caller's to handle.

    The socket is in blocking mode, so that L{wait_and_read} can sleep in
    C{recvfrom} itself (with a receive timeout of the linger, set the first
    time it is needed: most transfers of a busy server never wait); every
    other call passes C{MSG_DONTWAIT} and never blocks.

    One per transfer, thousands at once: no dictionary each, and nothing
    made for a transfer that does not need it (a lock-step transfer never
    sends a window, so it has no L{Segmenter}).
    """

    __slots__ = (
        "socket", "protocol", "_multiplexer", "_interface", "_max_packet_size", "_trim",
        "_segmenter", "_wait_bound",
    )

    def __init__(self, multiplexer, protocol, interface: str, max_packet_size: int):
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.socket.bind((interface, 0))
        except OSError as reason:
            self.socket.close()
            raise error.CannotListenError(interface, 0, reason)
        self.protocol = protocol
        self._multiplexer = multiplexer
        self._interface = interface
        self._max_packet_size = max_packet_size
        self._trim = family == socket.AF_INET6
        self._segmenter: Segmenter | None = None
        self._wait_bound = 0.0

    def write(self, datagram: bytes, addr) -> None:
        self.socket.sendto(datagram, _DONTWAIT, addr)

    def send_window(self, datagrams: list[bytes], addr) -> int:
        """
        Send C{datagrams} to C{addr} in as few system calls as the kernel
        allows: where it segments UDP, a window of equal-sized datagrams
        (the last may be shorter) is one C{sendmsg} per 64 of them, instead
        of a C{sendto} each (L{Segmenter}).

        @return: how many datagrams the kernel took; the rest were refused
            (a full buffer) and count as lost.
        """
        segmenter = self._segmenter
        if segmenter is None:
            segmenter = self._segmenter = Segmenter()
        start, sent = segmenter.send(self.socket.sendmsg, datagrams, (), addr)
        write = self.socket.sendto
        for datagram in datagrams[start:]:
            try:
                write(datagram, _DONTWAIT, addr)
            except OSError:
                continue
            sent += 1
        return sent

    def getHost(self):
        host, port = self.socket.getsockname()[:2]
        if host == self._interface:
            # The transfer keeps its address, and its request already holds
            # this text: no copy of it for each transfer.
            host = self._interface
        if self._trim:
            return IPv6Address("UDP", host, port)
        return IPv4Address("UDP", host, port)

    def read(self, flags: int = _DONTWAIT) -> bool:
        """
        Hand the protocol the next datagram, if there is one.

        @return: whether there was one.
        """
        try:
            data, addr = self.socket.recvfrom(self._max_packet_size, flags)
        except OSError:
            # Nothing there after all, or an ICMP error queued on the
            # socket (a client that went away): the timer deals with it.
            return False
        try:
            self.protocol.datagramReceived(data, addr[:2] if self._trim else addr)
        except BaseException:
            self._multiplexer.log.failure(
                "Unhandled error in {protocol}", protocol=self.protocol
            )
        return True

    def wait_and_read(self, linger: float) -> bool:
        """
        Wait up to C{linger} seconds for the next datagram and hand it to the
        protocol; the wait blocks the whole reactor (see
        L{SessionMultiplexer._serve_alone} for when that is worth it).

        @return: whether one came.
        """
        if linger != self._wait_bound:
            seconds, fraction = divmod(linger, 1.0)
            bound = _TIMEVAL.pack(int(seconds), max(1, int(fraction * 1e6)))
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bound)
            self._wait_bound = linger
        return self.read(0)

    def read_pending(self, most: int = 16) -> None:
        """
        Hand the protocol the datagrams already waiting, up to C{most},
        now rather than at the multiplexer's next round.
        """
        for _ in range(most):
            if self.socket is None or not self.read():
                return

    def stopListening(self) -> None:
        """
        Close now; the protocol is stopped at once.
        """
        if self.socket is None:
            return
        self._multiplexer.remove(self)
        self.socket.close()
        self.socket = None
        # A protocol may stop from its own startProtocol, before it counts
        # as started: then start_transfer stops it right after.
        if self.protocol.numPorts:
            self.protocol.doStop()


class SessionMultiplexer:
    """
    One reactor reader for the sockets of every transfer.

    The reactor watches a single epoll descriptor; when it is readable,
    L{doRead} asks it which transfer sockets have datagrams and reads one
    from each.  Compared with a reactor reader per socket, a busy server
    pays the reactor's per-event dispatch once per wakeup instead of once
    per datagram, and never reads a socket just to learn it is empty.  It
    also keeps Twisted's two log lines per opened and closed port out of
    the log.

    @param linger: returns the C{linger} setting, in seconds: how long to
        wait on the socket of a lone transfer (0: never).  Asked at every
        wakeup, so that a change made while the server runs takes effect.
    """

    log = Logger()

    def __init__(self, reactor, linger: Callable[[], float] = lambda: 0.0) -> None:
        self._reactor = reactor
        self._linger = linger
        self._poller = select.epoll()
        self._sockets: dict[int, _TransferSocket] = {}
        self._watched = False

    def fileno(self) -> int:
        return self._poller.fileno()

    def logPrefix(self) -> str:
        return "tftpd_tx transfers"

    def start_transfer(self, protocol, interface: str):
        """
        Open a transfer socket on an ephemeral port of C{interface} for
        C{protocol}, and start the protocol.
        """
        transport = _TransferSocket(self, protocol, interface, MAX_DATAGRAM)
        fd = transport.socket.fileno()
        self._sockets[fd] = transport
        self._poller.register(fd, select.EPOLLIN)
        if not self._watched:
            self._reactor.addReader(self)
            self._watched = True
        protocol.makeConnection(transport)
        if transport.socket is None:
            protocol.doStop()
        return transport

    def remove(self, transport: _TransferSocket) -> None:
        """
        Stop watching a transfer socket; with none left, leave the reactor
        alone (a server at rest holds no reader but its own port).
        """
        # Closing the socket, which follows, takes it out of the epoll set:
        # no unregister call needed.
        del self._sockets[transport.socket.fileno()]
        if not self._sockets and self._watched:
            self._reactor.removeReader(self)
            self._watched = False

    def doRead(self) -> None:
        sockets = self._sockets
        if len(sockets) == 1:
            self._serve_alone(next(iter(sockets.values())))
            return
        # Datagrams that arrive while the ready ones are handled (a client
        # on the same CPU answers at once) are picked up by the next round
        # without going back to the reactor, up to a budget of datagrams:
        # with a thousand windowed transfers, 64 rounds of every ready
        # socket held the reactor for seconds, and the listener's requests
        # and other connections waited as long.
        budget = _DATAGRAMS_PER_WAKEUP
        for _ in range(_ROUNDS_PER_WAKEUP):
            ready = self._poller.poll(0, budget)
            if not ready:
                return
            for fd, _ in ready:
                transport = sockets.get(fd)
                if transport is not None:
                    transport.read()
            budget -= len(ready)
            if budget <= 0:
                return

    def _serve_alone(self, transport: _TransferSocket) -> None:
        """
        Serve the only transfer there is as a blocking server would: after
        its datagram, wait in C{recvfrom} on its socket for the next one,
        for at most the linger each time and L{_LINGERS_PER_WAKEUP} lingers
        in all; with no linger, read what is there and return.

        A lock-step client close by answers within tens of microseconds,
        and sleeping in C{recvfrom} then costs less than sleeping in the
        reactor's C{epoll_wait} and then in this multiplexer's, and reading
        after: a lone transfer runs at the speed of a blocking server
        instead of an event loop's.  The reactor waits meanwhile, for a few
        milliseconds at most: new requests, timers and other connections
        are that much later.  Once a second transfer runs, every round goes
        through C{poll} again and nothing waits.
        """
        if not transport.read():
            return
        linger = self._linger()
        if not linger:
            return
        # Wall time, not the reactor's clock: this bounds real blocking
        # system calls, which no fake clock can stand in for.
        give_back = time.monotonic() + linger * _LINGERS_PER_WAKEUP
        for _ in range(_ROUNDS_PER_WAKEUP):
            if (
                transport.socket is None
                or len(self._sockets) != 1
                or not transport.wait_and_read(linger)
                or time.monotonic() >= give_back
            ):
                return

    def connectionLost(self, reason) -> None:
        """
        The reactor is shutting down: close every transfer socket.
        """
        for transport in list(self._sockets.values()):
            transport.stopListening()
        self._watched = False


def epoll_available(reactor) -> bool:
    """
    Whether L{EpollNetwork} can run on C{reactor}: a reactor with
    file-descriptor readers (C{IReactorFDSet}) on a platform with epoll.
    """
    return hasattr(select, "epoll") and IReactorFDSet.providedBy(reactor)


@implementer(INetwork)
class EpollNetwork:
    """
    The ports of a production server: a L{PacketInfoPort} listener that
    answers from the address each request was sent to, and transfers on a
    L{SessionMultiplexer}.

    @param reactor: a reactor for which L{epoll_available} holds.
    @param linger: see L{SessionMultiplexer}.
    """

    def __init__(self, reactor, linger: Callable[[], float] = lambda: 0.0) -> None:
        self.reactor = reactor
        self._multiplexer = SessionMultiplexer(reactor, linger)

    def listen(self, port: int, protocol, interface: str):
        listener = PacketInfoPort(port, protocol, interface, MAX_DATAGRAM, self.reactor)
        listener.startListening()
        return listener

    def adopt(self, socket, protocol):
        return PacketInfoPort.adopt(self.reactor, socket, protocol, MAX_DATAGRAM)

    def open_transfer(self, protocol, interface: str):
        return self._multiplexer.start_transfer(protocol, interface)

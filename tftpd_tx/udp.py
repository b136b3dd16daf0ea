"""
A UDP listening port that knows which local address each datagram was sent
to, and can answer from that address.

A server listening on the wildcard address of a multi-homed or anycast host
must reply from the address the client used, or the client drops the reply.
The kernel tells us that address with C{IP_PKTINFO} / C{IPV6_PKTINFO}
ancillary data; L{PacketInfoPort} reads it with C{recvmsg} and hands it to
the protocol as a third argument of C{datagramReceived}, and
L{PacketInfoPort.write_from} sends with it as the source address.

The wildcard IPv6 port is dual-stack (C{IPV6_V6ONLY} off): one socket serves
both families, and L{plain_address} turns the IPv4-mapped addresses it sees
back into plain IPv4.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import sys
import time

from twisted.internet import error, udp
from twisted.internet.abstract import isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger

__all__ = [
    "PacketInfoPort",
    "SessionMultiplexer",
    "listen_server",
    "session_opener",
    "plain_address",
    "plain_host",
]

#: Linux's value; Python 3.11's socket module does not export it.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IN_PKTINFO = struct.Struct("@i4s4s")
_IN6_PKTINFO = struct.Struct("@16sI")
_ANCILLARY_SPACE = socket.CMSG_SPACE(_IN6_PKTINFO.size) + socket.CMSG_SPACE(
    _IN_PKTINFO.size
)


_MAPPED_PREFIX = "::ffff:"

#: Rounds of reading ready transfer sockets before the reactor has a turn.
_ROUNDS_PER_WAKEUP = 64

#: How long the multiplexer waits on the socket of a lone transfer for its
#: next datagram, and how long it may keep the reactor waiting in all,
#: before it gives the reactor back (see L{SessionMultiplexer._serve_alone}).
_LINGER = 0.001
_LINGER_BUDGET = 0.005
_LINGER_TIMEOUT = struct.pack("@ll", 0, int(_LINGER * 1e6))
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)

#: UDP generic segmentation offload (Linux 4.18 and later): one C{sendmsg}
#: with a C{UDP_SEGMENT} control message of size C{n} leaves the kernel as
#: datagrams of C{n} bytes each (the last may be shorter).  Python 3.11's
#: socket module does not export the constant.
_UDP_SEGMENT = 103 if sys.platform.startswith("linux") else None
#: The kernel's limits on one segmented send: segments, and bytes in all
#: (an IPv4 datagram's largest payload).
_GSO_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65507
#: What the kernel says when a route or device cannot segment: too large a
#: segment for the path MTU, no checksum offload, an older kernel.
_GSO_REFUSED = frozenset(
    {errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EMSGSIZE}
)
_SEGMENT_SIZE = struct.Struct("@H")


def plain_host(host: str) -> str:
    """
    C{"::ffff:192.0.2.1"} becomes C{"192.0.2.1"}; other hosts stay as they are.
    """
    if host.startswith(_MAPPED_PREFIX) and "." in host:
        return host[len(_MAPPED_PREFIX) :]
    return host


def plain_address(address) -> tuple[str, int]:
    """
    A C{(host, port)} with IPv4-mapped IPv6 hosts shown as plain IPv4, and
    IPv6 flow information and scope id dropped.
    """
    return (plain_host(address[0]), address[1])


class PacketInfoPort(udp.Port):
    """
    A listening UDP port whose protocol learns the destination address of
    every datagram: C{protocol.datagramReceived(data, peer, local_host)}.
    On a port bound to one address, C{local_host} is L{None}: the port's own
    address is the answer.

    Its protocol must accept that third argument; L{tftpd_tx.server.TFTPServer}
    does, and treats it as optional so that it also runs on an ordinary port.
    """

    _log = Logger()

    @property
    def _wildcard(self) -> bool:
        """
        Whether this port listens on every address, so that only the kernel
        can tell which one a datagram was sent to.  On one address, that
        address is the answer and C{recvfrom} suffices.
        """
        return self.interface in ("", "::", "0.0.0.0")

    def createInternetSocket(self):
        skt = super().createInternetSocket()
        if self.addressFamily == socket.AF_INET6:
            if self.interface in ("::", ""):
                skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if self._wildcard:
                skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        elif self._wildcard:
            skt.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        return skt

    def doRead(self):
        """
        Read what is waiting, as L{udp.Port.doRead} does, with C{recvmsg}
        where the destination address must come from the kernel.
        """
        receive = self._receive_with_destination if self._wildcard else self._receive
        read = 0
        while read < self.maxThroughput:
            try:
                data, addr, local = receive()
            except OSError as reason:
                # Nothing waiting, or an ICMP error queued on the socket by
                # an earlier reply: either way, nothing to read now.
                if reason.args[0] in udp._sockErrReadIgnore + udp._sockErrReadRefuse:
                    return
                raise
            read += len(data)
            try:
                self.protocol.datagramReceived(data, plain_address(addr), local)
            except BaseException:
                self._log.failure("Unhandled error in {protocol}", protocol=self.protocol)

    def _receive(self):
        data, addr = self.socket.recvfrom(self.maxPacketSize)
        return data, addr, None

    def _receive_with_destination(self):
        data, ancillary, _, addr = self.socket.recvmsg(
            self.maxPacketSize, _ANCILLARY_SPACE
        )
        return data, addr, self._destination(ancillary)

    def _destination(self, ancillary) -> str | None:
        for level, kind, payload in ancillary:
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                address = payload[:16]
                return plain_host(socket.inet_ntop(socket.AF_INET6, address))
            if level == socket.IPPROTO_IP and kind == _IP_PKTINFO:
                _, _, address = _IN_PKTINFO.unpack(payload[: _IN_PKTINFO.size])
                return socket.inet_ntoa(address)
        return None

    def write_from(self, datagram: bytes, addr, source: str | None) -> None:
        """
        Send C{datagram} to C{addr} with C{source} as its source address (or
        the kernel's choice when C{source} is L{None}).  Errors from the
        kernel are ignored: this is used for one-off replies that the client
        will ask for again if they are lost.
        """
        host, port = addr
        ancillary = []
        if self.addressFamily == socket.AF_INET6:
            if not isIPv6Address(host):
                host = _MAPPED_PREFIX + host
            if source is not None:
                if not isIPv6Address(source):
                    source = _MAPPED_PREFIX + source
                packed = socket.inet_pton(socket.AF_INET6, source)
                ancillary.append(
                    (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, _IN6_PKTINFO.pack(packed, 0))
                )
        elif source is not None:
            packed = _IN_PKTINFO.pack(0, socket.inet_aton(source), b"\0\0\0\0")
            ancillary.append((socket.IPPROTO_IP, _IP_PKTINFO, packed))
        try:
            self.socket.sendmsg([datagram], ancillary, 0, (host, port))
        except OSError:
            pass


class _TransferSocket:
    """
    The transport of one transfer: a UDP socket on an ephemeral port, read
    by a L{SessionMultiplexer}.

    It offers what a L{DatagramProtocol} uses of a port: C{write},
    C{getHost} and C{stopListening}.  Writes go straight to C{sendto}: a
    session writes only to addresses its own socket produced, so there is
    nothing to check, and any error is the caller's to handle.

    The socket is in blocking mode, so that L{wait_and_read} can sleep in
    C{recvfrom} itself (with a receive timeout of L{_LINGER}, set the first
    time it is needed: most transfers of a busy server never wait); every
    other call passes C{MSG_DONTWAIT} and never blocks.
    """

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
        self._max_packet_size = max_packet_size
        self._trim = family == socket.AF_INET6
        self._segmenting = _UDP_SEGMENT is not None
        self._sendto = self.socket.sendto
        self._wait_bounded = False

    def write(self, datagram: bytes, addr) -> None:
        self._sendto(datagram, _DONTWAIT, addr)

    def send_datagrams(self, datagrams: list[bytes], addr) -> int:
        """
        Send C{datagrams} to C{addr} in as few system calls as the kernel
        allows: where it segments UDP, a window of equal-sized datagrams
        (the last may be shorter) is one C{sendmsg} per 64 of them, instead
        of a C{sendto} each.  Where it refuses (the path's MTU is smaller
        than a datagram, the device cannot segment), this socket sends one
        at a time from then on.

        @return: how many datagrams the kernel took; the rest were refused
            (a full buffer) and count as lost.
        """
        size = len(datagrams[0])
        per_call = min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // size)
        start = sent = 0
        if self._segmenting and per_call > 1 and len(datagrams) > 1:
            # Segments must all be C{size} long but the last, or the kernel
            # would cut the stream at other boundaries than ours.
            last = len(datagrams) - 1
            if all(len(datagram) == size for datagram in datagrams[:last]):
                control = [(socket.SOL_UDP, _UDP_SEGMENT, _SEGMENT_SIZE.pack(size))]
                sendmsg = self.socket.sendmsg
                while start < len(datagrams):
                    batch = datagrams[start : start + per_call]
                    try:
                        sendmsg(batch, control, _DONTWAIT, addr)
                    except OSError as reason:
                        if reason.errno in _GSO_REFUSED:
                            self._segmenting = False
                            break
                    else:
                        sent += len(batch)
                    start += len(batch)
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

    def wait_and_read(self) -> bool:
        """
        Wait up to L{_LINGER} for the next datagram and hand it to the
        protocol; the wait blocks the whole reactor (see
        L{SessionMultiplexer._serve_alone} for when that is worth it).

        @return: whether one came.
        """
        if not self._wait_bounded:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _LINGER_TIMEOUT)
            self._wait_bounded = True
        return self.read(0)

    def read_waiting(self, most: int = 16) -> None:
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
    """

    log = Logger()

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self._poller = select.epoll()
        self._sockets: dict[int, _TransferSocket] = {}
        self._watched = False

    def fileno(self) -> int:
        return self._poller.fileno()

    def logPrefix(self) -> str:
        return "tftpd_tx transfers"

    def start_transfer(self, protocol, interface: str, max_packet_size: int):
        """
        Open a transfer socket on an ephemeral port of C{interface} for
        C{protocol}, and start the protocol.
        """
        transport = _TransferSocket(self, protocol, interface, max_packet_size)
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
        # without going back to the reactor.
        for _ in range(_ROUNDS_PER_WAKEUP):
            ready = self._poller.poll(0)
            if not ready:
                return
            for fd, _ in ready:
                transport = sockets.get(fd)
                if transport is not None:
                    transport.read()

    def _serve_alone(self, transport: _TransferSocket) -> None:
        """
        Serve the only transfer there is as a blocking server would: after
        its datagram, wait in C{recvfrom} on its socket for the next one,
        for at most L{_LINGER} each time and L{_LINGER_BUDGET} in all.

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
        # Wall time, not the reactor's clock: this bounds real blocking
        # system calls, which no fake clock can stand in for.
        give_back = time.monotonic() + _LINGER_BUDGET
        for _ in range(_ROUNDS_PER_WAKEUP):
            if (
                transport.socket is None
                or len(self._sockets) != 1
                or not transport.wait_and_read()
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


def session_opener(reactor):
    """
    A function C{open(protocol, interface, max_packet_size)} that starts a
    transfer on an ephemeral port: through a L{SessionMultiplexer} where the
    reactor and platform allow, else with C{reactor.listenUDP} (as on the
    fakes of L{tftpd_tx.testing}).
    """
    if isinstance(reactor, PosixReactorBase) and hasattr(select, "epoll"):
        return SessionMultiplexer(reactor).start_transfer

    def listen_udp(protocol, interface, max_packet_size):
        return reactor.listenUDP(
            0, protocol, interface=interface, maxPacketSize=max_packet_size
        )

    return listen_udp


def listen_server(reactor, number: int, protocol, interface: str, max_packet_size: int):
    """
    Open the server port: a L{PacketInfoPort} on the reactors that can run
    it, C{listenUDP} on any other (such as the fakes of L{tftpd_tx.testing}).
    """
    if isinstance(reactor, PosixReactorBase):
        port = PacketInfoPort(number, protocol, interface, max_packet_size, reactor)
        port.startListening()
        return port
    return reactor.listenUDP(
        number, protocol, interface=interface, maxPacketSize=max_packet_size
    )

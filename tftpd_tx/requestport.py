"""
The request port: a UDP listening port that knows which local address each
datagram was sent to, and can answer from that address.

A server listening on the wildcard address of a multi-homed or anycast host
must reply from the address the client used, or the client drops the reply.
The kernel tells us that address with C{IP_PKTINFO} / C{IPV6_PKTINFO}
ancillary data; L{PacketInfoPort} reads it with C{recvmsg} and hands it to
the protocol as a third argument of C{datagramReceived}, and
L{PacketInfoPort.reply_from} sends with it as the source address.

The wildcard IPv6 port is dual-stack (C{IPV6_V6ONLY} off): one socket serves
both families, and L{plain_address} turns the IPv4-mapped addresses it sees
back into plain IPv4.
"""

from __future__ import annotations

import functools
import socket
import struct
import time

from twisted.internet import udp
from twisted.internet.abstract import isIPv6Address
from twisted.logger import Logger
from zope.interface import Interface, implementer

from .transport import IRequestPort

__all__ = ["ILingeringProtocol", "PacketInfoPort", "plain_address", "plain_host"]

_TIMEVAL = struct.Struct("@ll")
#: Every send passes it: the socket may be blocking while it lingers.
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)

#: What C{recvfrom} says when there is nothing to read now.
_NOTHING_TO_READ = frozenset(udp._sockErrReadIgnore + udp._sockErrReadRefuse)

#: How many lingers a port may spend waiting, in all, and how many times
#: it may wait, before it gives the reactor back (the bounds of the epoll
#: engine's lone transfer).
LINGERS_PER_WAKEUP = 5
WAITS_PER_WAKEUP = 64

#: Linux's value; Python 3.11's socket module does not export it.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IN_PKTINFO = struct.Struct("@i4s4s")
_IN6_PKTINFO = struct.Struct("@16sI")
_ANCILLARY_SPACE = socket.CMSG_SPACE(_IN6_PKTINFO.size) + socket.CMSG_SPACE(
    _IN_PKTINFO.size
)


_MAPPED_PREFIX = "::ffff:"

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


def widen_buffer(skt: socket.socket, option: int, size: int) -> None:
    """
    Ask for a C{SO_RCVBUF} or C{SO_SNDBUF} of C{size} bytes, unless the
    socket has that much already (the kernel grants up to its C{rmem_max} or
    C{wmem_max}).
    """
    # Linux reports twice what was set (its bookkeeping included).
    if skt.getsockopt(socket.SOL_SOCKET, option) < 2 * size:
        skt.setsockopt(socket.SOL_SOCKET, option, size)


class ILingeringProtocol(Interface):
    """
    A protocol that may have its L{PacketInfoPort} wait a little for the
    next datagram when none is waiting, rather than give the reactor back
    at once: a lone lock-step transfer whose client answers within tens of
    microseconds then runs at a blocking server's speed (see
    L{tftpd_tx.multiplexer.SessionMultiplexer._serve_alone}, which does the
    same for transfer sockets).
    """

    def linger():
        """
        Seconds to wait for the next datagram now, 0 for not at all; asked
        each time the port finds nothing waiting.
        """


@implementer(IRequestPort)
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
    #: The receive timeout set on the socket (see L{_linger_for_more}).
    _receive_timeout = 0.0

    @property
    def wildcard(self) -> bool:
        """
        Whether this port listens on every address, so that only the kernel
        can tell which one a datagram was sent to.  On one address, that
        address is the answer and C{recvfrom} suffices.
        """
        return self.interface in ("", "::", "0.0.0.0")

    @classmethod
    def adopt(cls, reactor, skt: socket.socket, protocol, max_packet_size: int):
        """
        A port over C{skt}, a datagram socket already bound by someone else
        (systemd's socket activation, a supervisor that bound it before
        dropping privileges), started for C{protocol}.  C{skt} is
        duplicated: the caller may close its own.
        """
        port = cls._fromListeningDescriptor(
            reactor, skt.fileno(), skt.family, protocol, max_packet_size
        )
        # Sockets handed down may be blocking (systemd's are) and know
        # nothing of the destination addresses this port must learn.
        port._preexistingSocket.setblocking(False)
        port._ask_destination(port._preexistingSocket)
        port.startListening()
        return port

    def createInternetSocket(self):
        skt = super().createInternetSocket()
        if self.addressFamily == socket.AF_INET6 and self.interface in ("::", ""):
            skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self._ask_destination(skt)
        return skt

    def _ask_destination(self, skt: socket.socket) -> None:
        """
        On a wildcard socket, have the kernel say where each datagram was
        sent.
        """
        if not self.wildcard:
            return
        if skt.family == socket.AF_INET6:
            skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            skt.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)

    def doRead(self):
        """
        Read what is waiting, as L{udp.Port.doRead} does, with C{recvmsg}
        where the destination address must come from the kernel; then, for
        a protocol that asks it (L{ILingeringProtocol}), wait a little for
        more before giving the reactor back.
        """
        receive = self._receive_with_destination if self.wildcard else self._receive
        if self._read_waiting(receive) and ILingeringProtocol.providedBy(self.protocol):
            self._linger_for_more(receive)

    def _read_waiting(self, receive) -> bool:
        """
        Hand the protocol what is waiting, up to C{maxThroughput} bytes.

        @return: whether the socket was emptied.
        """
        read = 0
        while read < self.maxThroughput:
            try:
                data, addr, local = receive()
            except OSError as reason:
                # Nothing waiting, or an ICMP error queued on the socket by
                # an earlier reply: either way, nothing to read now.
                if reason.args[0] in _NOTHING_TO_READ:
                    return True
                raise
            read += len(data)
            self._deliver(data, addr, local)
        return False

    def _linger_for_more(self, receive) -> None:
        """
        Wait for the next datagram as a blocking server would: in
        C{recvfrom} itself, with the socket blocking for the while and a
        receive timeout of the protocol's linger, asked again after every
        datagram; at most L{WAITS_PER_WAKEUP} datagrams and
        L{LINGERS_PER_WAKEUP} lingers of wall time (this bounds real system
        calls, which no fake clock stands in for).  The reactor waits
        meanwhile.
        """
        linger = self.protocol.linger()
        if not linger:
            return
        skt = self.socket
        give_back = time.monotonic() + linger * LINGERS_PER_WAKEUP
        skt.setblocking(True)
        try:
            for _ in range(WAITS_PER_WAKEUP):
                if linger != self._receive_timeout:
                    seconds, fraction = divmod(linger, 1.0)
                    bound = _TIMEVAL.pack(int(seconds), max(1, int(fraction * 1e6)))
                    skt.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bound)
                    self._receive_timeout = linger
                try:
                    data, addr, local = receive()
                except OSError as reason:
                    if reason.args[0] in _NOTHING_TO_READ:
                        return
                    raise
                self._deliver(data, addr, local)
                linger = self.protocol.linger()
                if not linger or time.monotonic() >= give_back:
                    return
        finally:
            if skt.fileno() != -1:
                skt.setblocking(False)

    def _deliver(self, data: bytes, addr, local) -> None:
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

    def destination(self, addr) -> tuple[str, int]:
        """
        C{addr} as this port's socket takes it: an IPv4 peer of a dual-stack
        socket as its IPv4-mapped IPv6 address.
        """
        host, port = addr
        if self.addressFamily == socket.AF_INET6 and not isIPv6Address(host):
            return (_MAPPED_PREFIX + host, port)
        return (host, port)

    def source_control(self, source: str | None) -> list:
        """
        The ancillary data that makes C{source} the source address of a
        datagram sent with C{sendmsg}: none on a port bound to one address
        (its own is the only one it can have), or for L{None}.
        """
        if source is None or not self.wildcard:
            return []
        return list(_source_control(self.addressFamily, source))

    def reply_from(self, datagram: bytes, addr, source: str | None) -> None:
        """
        Send C{datagram} to C{addr} with C{source} as its source address (or
        the kernel's choice when C{source} is L{None}).  Errors from the
        kernel are ignored: this is used for one-off replies that the client
        will ask for again if they are lost.
        """
        try:
            self.socket.sendmsg(
                [datagram], self.source_control(source), _DONTWAIT, self.destination(addr)
            )
        except OSError:
            pass


@functools.lru_cache(maxsize=256)
def _source_control(family: int, source: str) -> tuple:
    """
    The C{IP_PKTINFO} or C{IPV6_PKTINFO} control message that makes C{source}
    the source address of a datagram on a socket of C{family}; a server
    answers from few addresses, so each is built once.
    """
    if family == socket.AF_INET6:
        if not isIPv6Address(source):
            source = _MAPPED_PREFIX + source
        packed = socket.inet_pton(socket.AF_INET6, source)
        return ((socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, _IN6_PKTINFO.pack(packed, 0)),)
    packed = _IN_PKTINFO.pack(0, socket.inet_aton(source), b"\0\0\0\0")
    return ((socket.IPPROTO_IP, _IP_PKTINFO, packed),)

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

import socket
import struct
import sys

from twisted.internet import error, udp
from twisted.internet.abstract import isIPv6Address
from twisted.internet.base import BasePort
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger

__all__ = [
    "PacketInfoPort",
    "SessionPort",
    "listen",
    "plain_address",
    "plain_host",
    "packet_info_supported",
]

#: Linux's value; Python 3.11's socket module does not export it.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IN_PKTINFO = struct.Struct("@i4s4s")
_IN6_PKTINFO = struct.Struct("@16sI")
_ANCILLARY_SPACE = socket.CMSG_SPACE(_IN6_PKTINFO.size) + socket.CMSG_SPACE(
    _IN_PKTINFO.size
)

#: Whether this platform can report destination addresses.
packet_info_supported = sys.platform.startswith("linux")

_MAPPED_PREFIX = "::ffff:"

#: Datagrams a session port reads before letting other ports have a turn.
_READS_PER_WAKEUP = 64


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

    Its protocol must accept that third argument; L{tftpd_tx.server.TFTPServer}
    does, and treats it as optional so that it also runs on an ordinary port.
    """

    _log = Logger()

    def createInternetSocket(self):
        skt = super().createInternetSocket()
        if self.addressFamily == socket.AF_INET6:
            if self.interface in ("::", ""):
                skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            skt.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        return skt

    def doRead(self):
        """
        Read what is waiting, as L{udp.Port.doRead} does, with C{recvmsg}.
        """
        read = 0
        while read < self.maxThroughput:
            try:
                data, ancillary, _, addr = self.socket.recvmsg(
                    self.maxPacketSize, _ANCILLARY_SPACE
                )
            except OSError as error:
                if error.args[0] in udp._sockErrReadIgnore:
                    return
                if error.args[0] in udp._sockErrReadRefuse:
                    return
                raise
            read += len(data)
            try:
                self.protocol.datagramReceived(
                    data, plain_address(addr), self._destination(ancillary)
                )
            except BaseException:
                self._log.failure("Unhandled error in {protocol}", protocol=self.protocol)

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


class SessionPort(udp.Port):
    _log = Logger()

    """
    The port of one transfer: a L{udp.Port} that is quiet and quick.

    Twisted's port logs a line when it opens and when it closes, which is two
    lines per transfer at thousands of transfers a second; and its C{write}
    re-parses the destination address on every datagram.  A session always
    writes to addresses that came from its own socket, so this one sends
    straight away and leaves every error to the caller.
    """

    def createInternetSocket(self):
        # Non-blocking and close-on-exec from the start: three system calls
        # fewer per transfer than setting them afterwards.
        return socket.socket(
            self.addressFamily,
            self.socketType | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
        )

    def _bindSocket(self):
        try:
            skt = self.createInternetSocket()
            skt.bind((self.interface, self.port))
        except OSError as le:
            raise error.CannotListenError(self.interface, self.port, le)
        self._realPortNumber = skt.getsockname()[1]
        self.connected = 1
        self.socket = skt
        self.fileno = skt.fileno

    def write(self, datagram: bytes, addr=None):
        return self.socket.sendto(datagram, addr)

    def doRead(self):
        """
        Read the datagrams waiting, as L{udp.Port.doRead} does, with the
        per-datagram work cut to the call of the protocol.
        """
        recvfrom, size = self.socket.recvfrom, self.maxPacketSize
        received = self.protocol.datagramReceived
        trim = self.addressFamily == socket.AF_INET6
        for _ in range(_READS_PER_WAKEUP):
            try:
                data, addr = recvfrom(size)
            except OSError as error:
                if error.args[0] in udp._sockErrReadIgnore:
                    return
                if error.args[0] in udp._sockErrReadRefuse:
                    continue
                raise
            try:
                received(data, addr[:2] if trim else addr)
            except BaseException:
                self._log.failure("Unhandled error in {protocol}", protocol=self.protocol)

    def connectionLost(self, reason=None):
        self._realPortNumber = None
        self.maxThroughput = -1
        BasePort.connectionLost(self, reason)
        self.protocol.doStop()
        self.socket.close()
        del self.socket
        del self.fileno
        if hasattr(self, "d"):
            self.d.callback(None)
            del self.d


def listen(reactor, port_class, number: int, protocol, interface: str, max_packet_size: int):
    """
    Open a UDP port of C{port_class} (L{PacketInfoPort} or L{SessionPort})
    on the reactors that can run it, or C{listenUDP} on any other (such as
    the fakes of L{tftpd_tx.testing}).
    """
    if isinstance(reactor, PosixReactorBase):
        port = port_class(number, protocol, interface, max_packet_size, reactor)
        port.startListening()
        return port
    return reactor.listenUDP(
        number, protocol, interface=interface, maxPacketSize=max_packet_size
    )

"""
Strays handed back: the servers of an anycast fleet pass each other the
datagrams of transfers they do not have.

When a server is drained, the router stops preferring it, and in single-port
mode every datagram of the transfers still running on it (the client's ACKs,
all sent to the anycast address and port 69) reaches another server of the
fleet instead.  That server has no such transfer: the datagram is a stray
(see L{tftpd_tx.server.TFTPServer}).  With a hand-back configured, it sends
the stray on, wrapped with the client's address, to the other servers it is
told of; the one that has the transfer takes it as if it had come straight
from the client, and goes on answering from the anycast address.  A transfer
under way when its server is drained then finishes, however long it is.

In classic mode this cannot work: a transfer's datagrams go to its own port
(its TID), on which the other servers have no socket, so the kernel drops
them before any server sees them; L{tftpd_tx.tap} refuses the combination.
Under C{--workers}, each worker has a socket of the host's hand-back port,
and the kernel steers each hand-back to the worker that the client's own
datagrams reach (L{tftpd_tx.reuseport}).

The wire format (L{encode}, L{decode}) is pure.  L{HandbackProtocol} is the
UDP port the servers exchange strays on: it accepts hand-backs only from the
servers it is told of, hands back at most L{RATE} strays a second (a flood
of forged ACKs costs the fleet no more than that), and never hands on what
was handed to it, so nothing loops.
"""

from __future__ import annotations

import ipaddress
import struct

from twisted.application.service import Service
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

__all__ = ["HandbackProtocol", "HandbackService", "decode", "encode", "parse_address"]

#: The first bytes of a hand-back: a tag and a version.
MAGIC = b"TFTPHB\x01"
_HEADER = struct.Struct("!7sBH")
_FAMILIES = {4: 4, 6: 16}
#: Where in a hand-back its client's IP version (a byte), port (two) and
#: address (4 or 16 bytes) are, for those that steer it by them
#: (L{tftpd_tx.reuseport}).
VERSION_AT, PORT_AT, ADDRESS_AT = len(MAGIC), len(MAGIC) + 1, _HEADER.size

#: Strays handed back a second, at most, in bursts of up to a second's worth.
RATE = 20000.0


def encode(peer: tuple[str, int], datagram: bytes) -> bytes:
    """
    Wrap C{datagram}, which came from C{peer} (the client's C{(host, port)}),
    for another server.
    """
    address = ipaddress.ip_address(peer[0])
    return _HEADER.pack(MAGIC, address.version, peer[1]) + address.packed + datagram


def decode(payload: bytes) -> tuple[tuple[str, int], bytes]:
    """
    The client's C{(host, port)} and its datagram from a hand-back.

    @raise ValueError: C{payload} is not a hand-back.
    """
    if len(payload) < _HEADER.size:
        raise ValueError("too short for a hand-back")
    magic, version, port = _HEADER.unpack_from(payload)
    size = _FAMILIES.get(version)
    if magic != MAGIC or size is None or not port:
        raise ValueError("not a hand-back")
    start = _HEADER.size
    if len(payload) < start + size + 4:
        raise ValueError("too short for a hand-back")
    host = str(ipaddress.ip_address(payload[start : start + size]))
    return (host, port), payload[start + size :]


def parse_address(text: str) -> tuple[str, int]:
    """
    C{(host, port)} from C{"192.0.2.11:6969"} or C{"[2001:db8::11]:6969"}.

    @raise ValueError: naming what is wrong.
    """
    host, separator, port = text.rpartition(":")
    if not separator:
        raise ValueError(f"{text!r} has no port: give ADDRESS:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{port!r} is not a port number (1-65535)")
    return (str(address), int(port))


class HandbackProtocol(DatagramProtocol):
    """
    The port a server exchanges strays on with the rest of its fleet.

    @param server: the L{tftpd_tx.server.TFTPServer} whose strays go out
        (it calls L{hand_back}) and that takes the datagrams handed in
        (L{tftpd_tx.server.TFTPServer.take_handed_back}).
    @param peers: the C{(host, port)} of every other server's hand-back
        port; hand-backs from other sources are refused.
    @param clock: an C{IReactorTime}, for the rate.
    """

    noisy = False
    _log = Logger()

    def __init__(self, server, peers, clock) -> None:
        self._server = server
        self._peers = list(peers)
        self._trusted = {host for host, _ in self._peers}
        self._clock = clock
        self._tokens = RATE
        self._then = clock.seconds()

    def hand_back(self, datagram: bytes, peer: tuple[str, int]) -> None:
        """
        Send a stray from C{peer} to every other server, within the rate.
        """
        if self.transport is None:
            return
        stats = self._server.stats
        now = self._clock.seconds()
        self._tokens = min(RATE, self._tokens + (now - self._then) * RATE)
        self._then = now
        if self._tokens < 1.0:
            stats.increment("handback.over_rate")
            return
        self._tokens -= 1.0
        payload = encode(peer, datagram)
        for address in self._peers:
            try:
                self.transport.write(payload, address)
            except OSError:
                # A full buffer or an unreachable peer: the client's
                # retransmission is another chance.
                stats.increment("handback.send_failed")
                continue
            stats.increment("handback.sent")

    def datagramReceived(self, payload: bytes, addr) -> None:
        stats = self._server.stats
        if addr[0] not in self._trusted:
            stats.increment("handback.refused")
            return
        try:
            peer, datagram = decode(payload)
        except ValueError:
            stats.increment("handback.refused")
            return
        if self._server.take_handed_back(datagram, peer):
            stats.increment("handback.delivered")
        else:
            stats.increment("handback.unknown")


class HandbackService(Service):
    """
    Listen for hand-backs on C{address} and hand this server's strays to
    C{peers} from there, while running.

    @param socket: a datagram socket already bound to C{address}, to serve
        instead of binding it (a worker of C{--workers} is handed its
        supervisor's); it is duplicated at start, the caller may close its
        own.
    """

    def __init__(self, server, address: tuple[str, int], peers, reactor, socket=None) -> None:
        self._server = server
        self._address = address
        self._peers = peers
        self._reactor = reactor
        self._socket = socket
        self._port = None

    def privilegedStartService(self) -> None:
        # Bound before twistd -u/-g drops privileges, as the listener is.
        super().privilegedStartService()
        protocol = HandbackProtocol(self._server, self._peers, self._reactor)
        if self._socket is None:
            host, port = self._address
            self._port = self._reactor.listenUDP(port, protocol, interface=host)
        else:
            self._socket.setblocking(False)
            self._port = self._reactor.adoptDatagramPort(
                self._socket.fileno(), self._socket.family, protocol
            )
        self._server.hand_back = protocol.hand_back

    def stopService(self):
        super().stopService()
        self._server.hand_back = None
        port, self._port = self._port, None
        if port is not None:
            return port.stopListening()
        return None

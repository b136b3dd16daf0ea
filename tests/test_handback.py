"""
Strays handed back (L{tftpd_tx.handback}): the wire format, and two
single-port servers on the fakes passing a transfer's ACKs between them as
a router that moved the client's path would make them.
"""

from __future__ import annotations

import os
import socket

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx import TFTPServer, tap, wire
from tftpd_tx.handback import RATE, HandbackProtocol, decode, encode, parse_address
from tftpd_tx.singleport import SinglePortNetwork
from tftpd_tx.stats import Outcome
from tftpd_tx.testing import FakeUDPReactor, MemoryHandler
from tftpd_tx.transport import UDPNetwork

VIP = "203.0.113.69"
CLIENT = ("198.51.100.10", 40000)
SERVER_1, SERVER_2 = ("192.0.2.11", 6970), ("192.0.2.12", 6970)
CONTENT = bytes(range(256)) * 20  # ten blocks of 512 and a short one


def ack(number: int) -> bytes:
    return wire.Ack(number).encode()


class WireTests(SynchronousTestCase):
    def test_round_trip(self):
        """
        A hand-back carries the client's address, port and datagram, IPv4
        and IPv6 alike.
        """
        for peer in (CLIENT, ("2001:db8::10", 65535)):
            self.assertEqual(decode(encode(peer, ack(7))), (peer, ack(7)))

    def test_not_a_hand_back(self):
        """
        Anything else is refused with C{ValueError}: too short, another
        tag, an unknown family, port 0, an address cut short.
        """
        good = encode(CLIENT, ack(1))
        for payload in (b"", good[:9], b"X" + good[1:], good[:7] + b"\x05" + good[8:],
                        good[:8] + b"\0\0" + good[10:], good[:12]):  # fmt: skip
            with self.assertRaises(ValueError):
                decode(payload)

    def test_parse_address(self):
        self.assertEqual(parse_address("192.0.2.11:6970"), SERVER_1)
        self.assertEqual(parse_address("[2001:db8::11]:6970"), ("2001:db8::11", 6970))
        for text in ("192.0.2.11", "name:6970", "192.0.2.11:0", "192.0.2.11:70000"):
            with self.assertRaises(ValueError):
                parse_address(text)


class _Server:
    """
    One server of the fleet on the fakes: single-port on the VIP, and its
    hand-back port.
    """

    def __init__(self, reactor, address, peers) -> None:
        self.finished = []
        self.server = TFTPServer(
            MemoryHandler({"f": CONTENT}),
            reactor=reactor,
            session_callback=self.finished.append,
            network=SinglePortNetwork(UDPNetwork(reactor)),
        )
        self.server.network.listen(69, self.server, VIP)
        self.listener = reactor.ports[-1]
        self.handback = HandbackProtocol(self.server, peers, reactor)
        self.handback_port = reactor.listenUDP(address[1], self.handback, interface=address[0])
        self.server.hand_back = self.handback.hand_back
        self.address = address

    def counter(self, name: str) -> int:
        return self.server.stats.counters[name]


class FleetTests(SynchronousTestCase):
    """
    Server 1 starts a transfer; then the router sends the client's
    datagrams to server 2.
    """

    def setUp(self):
        self.reactor = FakeUDPReactor()
        self.one = _Server(self.reactor, SERVER_1, [SERVER_2])
        self.two = _Server(self.reactor, SERVER_2, [SERVER_1])

    def pass_on(self, source: _Server, target: _Server) -> int:
        """
        Carry what C{source} handed back to C{target}'s hand-back port, as
        the network between the servers would; how many datagrams.
        """
        payloads = [
            payload for payload, addr in source.handback_port.sent if addr == target.address
        ]
        del source.handback_port.sent[:]
        for payload in payloads:
            target.handback_port.deliver(payload, source.address)
        return len(payloads)

    def data_to_client(self, server: _Server) -> list[bytes]:
        replies = [
            datagram for datagram, addr, _ in server.listener.replies if addr == CLIENT
        ]
        del server.listener.replies[:]
        return replies

    def test_transfer_finishes_through_the_other_server(self):
        """
        Every ACK after the move reaches server 1 through server 2's
        hand-back; the DATA still leaves server 1 from the VIP, and the
        client gets the whole file.
        """
        self.one.listener.deliver(wire.ReadRequest("f", "octet", {}).encode(), CLIENT, VIP)
        received = b""
        block = 0
        while True:
            (reply,) = self.data_to_client(self.one)
            packet = wire.decode(reply)
            self.assertIsInstance(packet, wire.Data)
            self.assertEqual(packet.block, block + 1)
            block = packet.block
            received += packet.payload
            # The path has moved: the ACK reaches server 2.
            self.two.listener.deliver(ack(block), CLIENT, VIP)
            self.assertEqual(self.pass_on(self.two, self.one), 1)
            if len(packet.payload) < 512:
                break
        self.assertEqual(received, CONTENT)
        self.assertEqual([s.outcome for s in self.one.finished], [Outcome.COMPLETED])
        self.assertEqual(self.two.finished, [])
        self.assertEqual(self.data_to_client(self.two), [])
        self.assertEqual(self.two.counter("handback.sent"), block)
        self.assertEqual(self.one.counter("handback.delivered"), block)

    def test_unknown_everywhere_goes_no_further(self):
        """
        A stray that no server has a transfer for is counted where it is
        handed in and never handed on: nothing loops.
        """
        self.two.listener.deliver(ack(3), CLIENT, VIP)
        self.assertEqual(self.pass_on(self.two, self.one), 1)
        self.assertEqual(self.one.counter("handback.unknown"), 1)
        self.assertEqual(self.one.handback_port.sent, [])
        self.assertEqual(self.data_to_client(self.one), [])

    def test_only_from_the_fleet(self):
        """
        A hand-back from an address that is not a peer's, or that is not a
        hand-back, reaches no transfer.
        """
        self.one.listener.deliver(wire.ReadRequest("f", "octet", {}).encode(), CLIENT, VIP)
        self.data_to_client(self.one)
        self.one.handback_port.deliver(encode(CLIENT, ack(1)), ("192.0.2.99", 6970))
        self.one.handback_port.deliver(ack(1), SERVER_2)
        self.assertEqual(self.one.counter("handback.refused"), 2)
        self.assertEqual(self.data_to_client(self.one), [])

    def test_requests_are_served_not_handed_back(self):
        """
        A request that reaches server 2 is its own to answer, and so is a
        client's RRQ retransmission: only ACKs and ERRORs are handed back.
        """
        self.two.listener.deliver(wire.ReadRequest("f", "octet", {}).encode(), CLIENT, VIP)
        self.assertEqual(len(self.data_to_client(self.two)), 1)
        self.two.listener.deliver(wire.Data(1, b"x").encode(), ("198.51.100.11", 40000), VIP)
        self.assertEqual(self.pass_on(self.two, self.one), 0)

    def test_rate(self):
        """
        At most L{RATE} strays a second are handed back; the rest are
        counted, and the budget refills with time.
        """
        for _ in range(int(RATE) + 10):
            self.two.server.hand_back(ack(1), CLIENT)
        self.assertEqual(self.two.counter("handback.over_rate"), 10)
        self.reactor.advance(0.5)
        self.two.server.hand_back(ack(1), CLIENT)
        self.assertEqual(self.two.counter("handback.sent"), int(RATE) + 1)


class ClassicTests(SynchronousTestCase):
    def test_classic_strays_are_not_handed_back(self):
        """
        In classic mode a datagram at the listener from a peer with no
        transfer is silence, as before: there is no hand-back to make.
        """
        reactor = FakeUDPReactor()
        server = TFTPServer(MemoryHandler({"f": b"f"}), reactor=reactor)
        calls = []
        server.hand_back = lambda *args: calls.append(args)
        port = reactor.listenUDP(69, server, interface=VIP)
        port.deliver(ack(1), CLIENT)
        self.assertEqual(calls, [])
        self.assertEqual(server.stats.counters["datagrams.ignored"], 1)


class OptionsTests(SynchronousTestCase):
    """
    C{twistd tftp --handback ADDRESS:PORT --handback-peer ADDRESS:PORT ...}.
    """

    def setUp(self):
        self.root = self.mktemp()
        os.mkdir(self.root)

    def parse(self, *arguments: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(
            ["--root", self.root, "--port", "0", "--interface", "127.0.0.1", *arguments]
        )
        return options

    def refused(self, arguments, message: str) -> None:
        error = self.assertRaises(usage.UsageError, self.parse, *arguments)
        self.assertIn(message, str(error))

    def test_service(self):
        """
        The hand-back is a service of its own beside the listener, which
        hands the listener's strays to the peers while it runs.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        options = self.parse("--single-port", "--handback", f"127.0.0.1:{port}",
                             "--handback-peer", "127.0.0.2:6970",
                             "--handback-peer", "[::1]:6970")  # fmt: skip
        self.assertEqual(options["handback"], ("127.0.0.1", port))
        self.assertEqual(options["handback-peers"], [("127.0.0.2", 6970), ("::1", 6970)])
        service = tap.makeService(options)
        handback = service.getServiceNamed("handback")
        server = service.getServiceNamed("tftp").server
        handback.privilegedStartService()
        handback.startService()
        self.addCleanup(handback.stopService)
        self.assertIsNotNone(server.hand_back)

    def test_refused(self):
        """
        Each way of getting it wrong names the option and the fix.
        """
        self.refused(["--handback", "127.0.0.1:7000"], "--handback needs --single-port")
        self.refused(["--single-port", "--handback", "127.0.0.1:7000"],
                     "--handback without --handback-peer")  # fmt: skip
        self.refused(["--handback-peer", "127.0.0.1:7001"], "--handback-peer without --handback")
        self.refused(["--single-port", "--handback", "127.0.0.1"], "has no port")
        self.refused(["--single-port", "--handback", "127.0.0.1:7000",
                      "--handback-peer", "127.0.0.1:7000"], "this server's own")  # fmt: skip
        self.refused(["--handback-peer", "peer.example:7000"], "is not an IP address")
        self.refused(["--single-port", "--handback", "192.0.2.250:7000",
                      "--handback-peer", "127.0.0.2:7000"], "cannot be bound")  # fmt: skip
        self.refused(["--single-port", "--workers", "2", "--handback", "127.0.0.1:7000",
                      "--handback-peer", "127.0.0.2:7000"], "--handback with --workers")  # fmt: skip

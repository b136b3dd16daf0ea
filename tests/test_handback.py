"""
Strays handed back (L{tftpd_tx.handback}): the wire format, and two
single-port servers on the fakes passing a transfer's ACKs between them as
a router that moved the client's path would make them; then two real
C{twistd tftp --workers 2} hosts doing it.
"""

from __future__ import annotations

import collections
import os
import re
import socket
import struct

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

from tftpd_tx import TFTPServer, tap, wire
from tftpd_tx.handback import RATE, HandbackProtocol, decode, encode, parse_address
from tftpd_tx.singleport import SinglePortNetwork
from tftpd_tx.stats import Outcome
from tftpd_tx.testing import FakeUDPReactor, MemoryHandler
from tftpd_tx.transport import UDPNetwork

from clients import (
    TWISTD,
    bytes_problem,
    free_udp_port,
    make_directory,
    random_file,
    spawn,
    twistd_environment,
)

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


# -- twistd tftp --workers 2 --handback ------------------------------------------


class SplitReader(DatagramProtocol):
    """
    A client whose path moved as soon as it asked: its RRQ goes to one
    server and every ACK to another, from the one port; it resends its last
    datagram after half a second of silence, up to ten times.

    @ivar done: fires with the bytes read, or with the error.
    """

    noisy = False

    def __init__(self, request_to, acks_to, path: str) -> None:
        self._request_to, self._acks_to = request_to, acks_to
        self._path = path
        self._last = None
        self._block = 0
        self._chunks: list[bytes] = []
        self._timer = None
        self._tries = 0
        self.done: Deferred[bytes] = Deferred()

    def startProtocol(self) -> None:
        self._send(wire.ReadRequest(self._path, "octet").encode(), self._request_to)

    def _send(self, datagram: bytes, address) -> None:
        self._last = (datagram, address)
        self.transport.write(datagram, address)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = reactor.callLater(0.5, self._again)

    def _again(self) -> None:
        self._tries += 1
        if self._tries > 10:
            self._end(AssertionError(f"no answer after block {self._block}"))
            return
        self._send(*self._last)

    def datagramReceived(self, datagram: bytes, addr) -> None:
        if self.done.called:
            return
        opcode, block = struct.unpack("!HH", datagram[:4])
        if opcode != 3:
            self._end(AssertionError(f"got {datagram!r}"))
            return
        if block == self._block + 1:
            self._block = block
            self._tries = 0
            self._chunks.append(datagram[4:])
        self._send(ack(block), self._acks_to)
        if block == self._block and len(datagram) - 4 < 512:
            self._end(b"".join(self._chunks))

    def _end(self, result) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.transport.stopListening()
        if isinstance(result, Exception):
            self.done.errback(result)
        else:
            self.done.callback(result)


class _Host:
    """
    C{twistd -n tftp --workers 2 --single-port} on C{host}, with its
    hand-back port and its peer's, and C{--ops}.
    """

    def __init__(self, testcase, root, host, handback, peer) -> None:
        self.address = (host, free_udp_port(host))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.ops = probe.getsockname()[1]
        self.process = spawn(
            [*TWISTD, "-n", "--pidfile=", "tftp", "--workers", "2", "--single-port",
             "--interface", host, "--port", str(self.address[1]), "--root", root,
             "--handback", f"{handback[0]}:{handback[1]}",
             "--handback-peer", f"{peer[0]}:{peer[1]}",
             "--ops", f"tcp:{self.ops}:interface=127.0.0.1", "--shutdown-grace", "1"],
            cwd=os.path.dirname(root), env=twistd_environment(),
        )  # fmt: skip
        testcase.addCleanup(self.kill)

    def log(self) -> str:
        return self.process.output().decode("utf-8", "replace")

    def kill(self):
        if not self.process.ended.called:
            pids = re.findall(r"Worker \d+ started \(pid (\d+)\)", self.log())
            self.process.signal("KILL")
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            return self.process.ended

    async def ready(self, testcase) -> None:
        for _ in range(300):
            testcase.assertFalse(self.process.ended.called, self.log())
            if len(re.findall(r"Worker \d serving", self.log())) == 2:
                return
            await deferLater(reactor, 0.1, lambda: None)
        testcase.fail(f"not serving: {self.log()}")

    def served(self) -> collections.Counter:
        """
        How many transfers each worker has logged as completed.
        """
        line = r"\[worker (\d+) tftpd_tx\.server\.TFTPServer#info\] completed:"
        return collections.Counter(re.findall(line, self.log()))

    async def handback_counts(self) -> dict[str, float]:
        response = await Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{self.ops}/metrics".encode()
        )
        text = (await readBody(response)).decode()
        return {
            sample.labels["result"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "tftpd_handback_datagrams_total"
        }


class WorkersTests(TestCase):
    """
    Two hosts of C{twistd tftp --workers 2 --single-port}, on 127.0.0.1 and
    127.0.0.2, each the other's C{--handback-peer}: a client that asks host
    A and sends its ACKs to host B is served by A to the end, whichever
    worker of each host its port reaches.
    """

    timeout = 120

    async def test_transfers_finish_through_the_other_host(self):
        """
        Twenty-four clients, each from its own port, read a file of eleven
        blocks asking A and acknowledging to B: every one gets the file
        byte for byte; both of A's workers served some; every hand-back B
        sent reached the worker of A that has its transfer (none was
        unknown there), and A never answered a client from B's side.
        """
        directory = make_directory(self)
        root = os.path.join(directory, "root")
        os.mkdir(root)
        content = random_file(root, "file", 512 * 10 + 100)
        handback_a = ("127.0.0.1", free_udp_port("127.0.0.1"))
        handback_b = ("127.0.0.2", free_udp_port("127.0.0.2"))
        a = _Host(self, root, "127.0.0.1", handback_a, handback_b)
        b = _Host(self, root, "127.0.0.2", handback_b, handback_a)
        await a.ready(self)
        await b.ready(self)
        readers = [SplitReader(a.address, b.address, "file") for _ in range(24)]
        for reader in readers:
            reactor.listenUDP(0, reader, interface="127.0.0.1")
        got = await gatherResults([reader.done for reader in readers])
        for each in got:
            self.assertIsNone(bytes_problem(each, content))
        for _ in range(100):
            if sum(a.served().values()) == 24:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(set(a.served()), {"1", "2"}, a.served())
        self.assertEqual(sum(b.served().values()), 0)
        for _ in range(50):
            sent, taken = await b.handback_counts(), await a.handback_counts()
            if sent.get("sent", 0) == taken.get("delivered", 0) >= 24 * 11:
                break
            await deferLater(reactor, 0.2, lambda: None)
        self.assertGreaterEqual(sent.get("sent", 0), 24 * 11, sent)
        self.assertEqual(taken.get("delivered", 0), sent.get("sent", 0), (sent, taken))
        self.assertEqual(taken.get("unknown", 0), 0, taken)

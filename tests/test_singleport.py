"""
Single-port mode (L{tftpd_tx.singleport}): every reply leaves from the
address and port the request was sent to, and transfers are told apart by
the client's address and port on the listening socket.

The listener's own tests (L{test_server}) run again here in single-port
mode on the fakes, then single-port behaviour on the fakes, then real
sockets: every installed client downloading every awkward size, windows
and rollover, wildcard listeners, strays.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from twisted.internet import defer
from twisted.internet import reactor as real_reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

import test_interop
import test_server
from clients import (
    assert_fetched,
    assert_same_bytes,
    atftp,
    curl,
    fetch,
    ipv6_loopback_available,
    make_directory,
    random_file,
    read_raw,
    rrq,
)
from test_robustness import RawClient
from test_server import CLIENT, FILES, ack
from tftpd_tx import FilesystemHandler, TFTPServer, TFTPService, wire
from tftpd_tx.multiplexer import EpollNetwork, epoll_available
from tftpd_tx.options import Limits
from tftpd_tx.settings import Settings
from tftpd_tx.singleport import SHARED_BUFFER, SharedPort, SinglePortNetwork
from tftpd_tx.stats import Outcome
from tftpd_tx.testing import FakeUDPReactor, MemoryHandler
from tftpd_tx.transport import INetwork, ISharedRequestPort, ITransferPort, UDPNetwork


class _TransferView:
    """
    One single-port transfer as its client sees it, shaped like the fake
    port a classic transfer has (C{sent}, C{take}, C{deliver}, C{arrive},
    C{listening}), so that the listener's tests run unchanged: what the
    shared listener sent the transfer's peer, and datagrams from the peer
    delivered to the listener.
    """

    def __init__(self, listener, transfer, peer, local: str, start: int) -> None:
        self._listener = listener
        self._transfer = transfer
        self._start = self._seen = start
        self.peer = peer
        self.interface = local

    @property
    def sent(self):
        return [
            (datagram, addr)
            for datagram, addr, _ in self._listener.replies[self._start :]
            if addr == self.peer
        ]

    def take(self):
        replies = self._listener.replies
        taken = [datagram for datagram, addr, _ in replies[self._seen :] if addr == self.peer]
        self._seen = len(replies)
        return taken

    def deliver(self, datagram: bytes, addr) -> None:
        self._listener.deliver(datagram, addr, self.interface)

    # One socket keeps the order datagrams arrived in: one that has arrived
    # is ahead of anything that comes after it.
    arrive = deliver

    @property
    def listening(self) -> bool:
        return self._transfer.listening


class SinglePortMixin(test_server.ServerMixin):
    """
    The listener's test set-up in single-port mode: the server's network is
    a L{SinglePortNetwork} over the fake reactor, and each transfer opened
    shows up in C{self.reactor.ports} as a L{_TransferView}.
    """

    def setUp(self):
        self.reactor = FakeUDPReactor()
        self.handler = MemoryHandler(dict(FILES))
        self.finished = []
        self.server = TFTPServer(
            self.handler,
            Settings(limits=Limits(max_blksize=1024)),
            reactor=self.reactor,
            session_callback=self.finished.append,
            network=SinglePortNetwork(UDPNetwork(self.reactor)),
        )
        self.shared = self.server.network.listen(69, self.server, "0.0.0.0")
        (self.listener,) = self.reactor.ports
        open_transfer = self.shared.open_transfer

        def recording(protocol, interface, peer):
            start = len(self.listener.replies)
            transfer = open_transfer(protocol, interface, peer)
            view = _TransferView(self.listener, transfer, peer, interface, start)
            self.reactor.ports.append(view)
            return transfer

        self.shared.open_transfer = recording

    def errors_sent(self):
        """
        The ERRORs the listener sent (its transfers' DATA go out there too).
        """
        return [wire.decode(datagram) for datagram in self.listener.take() if datagram[:2] == b"\0\5"]


class SinglePortReadRequestTests(SinglePortMixin, test_server.ReadRequestTests):
    """
    L{test_server.ReadRequestTests} in single-port mode.
    """

    def test_transfer_on_own_port_at_request_address(self):
        """
        In single-port mode no port is opened: the transfer's DATA leaves
        through the listener, with the address the request was sent to as
        its source.
        """
        self.request(rrq("/boot/pxelinux.0"))
        self.assertEqual(self.reactor.open_ports()[0], self.listener)
        self.assertEqual(len(self.reactor.ports), 2)
        self.assertEqual(
            self.listener.replies, [(b"\0\3\0\1" + b"p" * 512, CLIENT, "192.0.2.1")]
        )


class SinglePortDuplicateRequestTests(SinglePortMixin, test_server.DuplicateRequestTests):
    """
    L{test_server.DuplicateRequestTests} in single-port mode: a repeated
    RRQ from a peer with a transfer still reaches the server's duplicate
    rule.
    """


class SinglePortRefusalTests(SinglePortMixin, test_server.RefusalTests):
    """
    L{test_server.RefusalTests} in single-port mode.
    """


class SinglePortMalformedDatagramTests(SinglePortMixin, test_server.MalformedDatagramTests):
    """
    L{test_server.MalformedDatagramTests} in single-port mode.
    """


def rrq_packet(path, **options):
    return wire.ReadRequest(path, "octet", {k: str(v) for k, v in options.items()}).encode()


class SinglePortTests(SinglePortMixin, SynchronousTestCase):
    """
    What single-port mode changes, on the fakes.
    """

    def test_contracts(self):
        """
        The network is an L{INetwork}, its listening port an
        L{ISharedRequestPort}, and a transfer's port an L{ITransferPort}.
        """
        self.assertTrue(verifyObject(INetwork, self.server.network))
        self.assertTrue(verifyObject(ISharedRequestPort, self.shared))
        self.request(rrq_packet("small.cfg"))
        (transfer,) = self.shared.transfers.values()
        self.assertTrue(verifyObject(ITransferPort, transfer))
        host = transfer.getHost()
        self.assertEqual((host.host, host.port), ("192.0.2.1", 69))

    def test_every_datagram_from_the_request_address(self):
        """
        The OACK, every window and the retransmissions all leave from the
        address and port the request was sent to.
        """
        self.handler.files["big"] = b"b" * 5000
        self.request(rrq_packet("big", blksize=512, windowsize=4), local="192.0.2.9")
        self.listener.deliver(ack(0), CLIENT, "192.0.2.9")
        self.reactor.advance(1)
        self.listener.deliver(ack(4), CLIENT, "192.0.2.9")
        # After a loss the next window waits a moment (RFC 7440 section 6).
        self.reactor.advance(0.1)
        blocks = [
            struct.unpack("!H", datagram[2:4])[0]
            for datagram, _, _ in self.listener.replies
            if datagram[:2] == b"\0\3"
        ]
        # The timeout sent block 4 alone (a tail loss probe).
        self.assertEqual(blocks, [1, 2, 3, 4, 4, 5, 6, 7, 8])
        self.assertEqual(
            {(peer, source) for _, peer, source in self.listener.replies},
            {(CLIENT, "192.0.2.9")},
        )
        self.assertEqual(len(self.reactor.ports), 2)

    def test_clients_told_apart_by_port(self):
        """
        Two transfers to one host, from two ports, each get their own
        client's ACKs, interleaved.
        """
        self.handler.files["a"] = b"a" * 600
        self.handler.files["b"] = b"b" * 600
        other = (CLIENT[0], CLIENT[1] + 1)
        self.request(rrq_packet("a"))
        self.request(rrq_packet("b"), peer=other)
        first, second = self.reactor.ports[1:]
        self.assertEqual(first.take(), [b"\0\3\0\1" + b"a" * 512])
        self.assertEqual(second.take(), [b"\0\3\0\1" + b"b" * 512])
        second.deliver(ack(1), other)
        first.deliver(ack(1), CLIENT)
        self.assertEqual(first.take(), [b"\0\3\0\2" + b"a" * 88])
        self.assertEqual(second.take(), [b"\0\3\0\2" + b"b" * 88])
        first.deliver(ack(2), CLIENT)
        second.deliver(ack(2), other)
        self.assertEqual([stats.outcome for stats in self.finished], [Outcome.COMPLETED] * 2)
        self.assertEqual(self.shared.transfers, {})

    def test_stray_counted_not_answered(self):
        """
        DATA or an ACK from a peer with no transfer here (one that ended, or
        one another server of the fleet has) is a stray: counted, counted
        for the flap signal, and never answered (an ERROR 5 would end a
        transfer that runs elsewhere).  An ERROR is counted, but no flap.
        """
        stray = ("203.0.113.7", 40000)
        for block in (5, 6, 7):
            self.request(ack(block), peer=stray)
        self.request(b"\0\3\0\x08data", peer=stray)
        self.request(wire.Error(0, "bye").encode(), peer=("198.51.100.99", 40000))
        self.assertEqual(self.listener.sent, [])
        self.assertEqual(self.server.stats.counters["datagrams.stray"], 5)
        self.assertEqual(self.server.stats.counters["datagrams.ignored"], 0)
        self.assertEqual(
            self.server.flaps.flapping(),
            [{"prefix": "203.0.113.0/24", "abandoned": 0, "strays": 4}],
        )

    def test_peer_noise_goes_to_its_transfer(self):
        """
        Anything but a request from a peer with a transfer is that
        transfer's: a malformed ACK changes nothing and is not a stray.
        """
        self.request(rrq_packet("boot/pxelinux.0"))
        port = self.session_port()
        port.take()
        port.deliver(b"\0\4", CLIENT)
        port.deliver(b"\0\x63junk", CLIENT)
        self.assertEqual(port.take(), [])
        self.assertEqual(self.listener.sent[-1][0][:4], b"\0\3\0\1")
        self.assertNotIn("datagrams.stray", self.server.stats.counters)
        self.assertNotIn("datagrams.malformed", self.server.stats.counters)
        port.deliver(ack(1), CLIENT)
        self.assertEqual(port.take(), [b"\0\3\0\2" + b"p" * 512])

    def test_repeated_request_leaves_the_transfer_alone(self):
        """
        A retransmitted RRQ from a peer whose transfer runs reaches the
        server (counted as a duplicate) and not the transfer, which goes on
        where it was.
        """
        self.request(rrq_packet("boot/pxelinux.0"))
        port = self.session_port()
        port.deliver(ack(1), CLIENT)
        port.take()
        self.request(rrq_packet("boot/pxelinux.0"))
        self.assertEqual(port.take(), [])
        self.assertEqual(self.server.stats.counters["requests.duplicate"], 1)
        port.deliver(ack(2), CLIENT)
        self.assertEqual(port.take(), [b"\0\3\0\3" + b"p" * 276])

    def test_drain(self):
        """
        While draining, a new request gets no answer at all and a running
        transfer completes through the listener.
        """
        self.request(rrq_packet("boot/pxelinux.0"))
        running = self.session_port()
        self.server.drain()
        newcomer = ("198.51.100.30", 4001)
        self.request(rrq_packet("small.cfg"), peer=newcomer)
        for block in (1, 2, 3):
            running.deliver(ack(block), CLIENT)
        self.assertEqual(self.finished[0].outcome, Outcome.COMPLETED)
        self.assertEqual([addr for _, addr in self.listener.sent if addr == newcomer], [])
        self.assertEqual(self.server.stats.counters["requests.drained"], 1)

    def test_closing_the_listener_stops_its_transfers(self):
        """
        When the listening port closes, the transfers sharing it are
        stopped and forgotten, and what they would send fails.
        """
        self.request(rrq_packet("boot/pxelinux.0"))
        (transfer,) = self.shared.transfers.values()
        self.shared.stopListening()
        self.assertEqual(self.shared.transfers, {})
        self.assertFalse(transfer.listening)
        error = self.assertRaises(OSError, transfer.write, b"x", CLIENT)
        self.assertEqual(error.errno, errno.EBADF)
        self.assertEqual(transfer.send_window([b"x", b"y"], CLIENT), 0)

    def test_network_transfer_of_its_own(self):
        """
        A transfer asked of the network, not of a request port, gets a port
        of its own from the network underneath.
        """
        port = self.server.network.open_transfer(_Quiet(), "192.0.2.1")
        self.assertIs(port, self.reactor.ports[-1])
        self.assertNotEqual(port, self.listener)


class SinglePortServiceTests(SynchronousTestCase):
    """
    L{TFTPService} with C{single_port=True}, on the fakes.
    """

    def setUp(self):
        self.reactor = FakeUDPReactor()
        self.service = TFTPService(
            MemoryHandler({"f": b"x" * 1300}),
            port=6969,
            interface="192.0.2.1",
            settings=Settings(shutdown_grace=5),
            reactor=self.reactor,
            single_port=True,
        )
        self.service.privilegedStartService()
        self.service.startService()
        self.listener = self.reactor.ports[0]

    def test_single_port_network(self):
        """
        The service's server runs on a L{SinglePortNetwork}, and its port is
        shared with the transfers.
        """
        self.assertIsInstance(self.service.server.network, SinglePortNetwork)
        self.assertIsInstance(self.service.port, SharedPort)

    def test_graceful_stop(self):
        """
        A stop with a grace lets the transfer in flight finish through the
        listener, ignores new requests meanwhile, then closes the port and
        leaves no timer.
        """
        self.listener.deliver(rrq_packet("f"), CLIENT)
        stopped = self.service.stopService()
        self.listener.deliver(rrq_packet("f"), ("192.0.2.77", 5000))
        for block in (1, 2, 3):
            self.listener.deliver(ack(block), CLIENT)
        self.reactor.advance(0.05)
        self.assertIsNone(self.successResultOf(stopped))
        data = [datagram for datagram, addr in self.listener.sent if addr == CLIENT]
        self.assertEqual(len(data), 3)
        self.assertEqual([addr for _, addr in self.listener.sent if addr != CLIENT], [])
        self.assertFalse(self.listener.listening)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertFalse(self.service.cut)

    def test_stop_at_the_deadline(self):
        """
        Transfers still running at the grace deadline get ERROR 0 from the
        listener, and nothing is left behind.
        """
        self.listener.deliver(rrq_packet("f"), CLIENT)
        self.listener.deliver(ack(1), CLIENT)
        self.service.stopService()
        self.reactor.advance(5)
        self.assertEqual(self.listener.take()[-1], wire.Error(0, "Server shutting down").encode())
        self.assertFalse(self.listener.listening)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertTrue(self.service.cut)


class SeveralRequestPortsTests(SynchronousTestCase):
    """
    One server on several request ports (systemd's sockets: IPv4 and IPv6,
    several addresses): each request is answered through the port it came
    in on, in classic and in single-port mode.
    """

    single_port = False

    def setUp(self):
        self.reactor = FakeUDPReactor()
        network = UDPNetwork(self.reactor)
        if self.single_port:
            network = SinglePortNetwork(network)
        self.server = TFTPServer(MemoryHandler({"f": b"f"}), reactor=self.reactor, network=network)
        network.listen(69, self.server.listener(), "192.0.2.1")
        network.listen(69, self.server.listener(), "2001:db8::1")
        network.listen(6969, self.server.listener(), "192.0.2.1")
        self.v4, self.v6, self.other = self.reactor.ports

    def test_errors_through_the_port_asked(self):
        """
        An ERROR leaves through the port its request came in on, from the
        address that port listens on.
        """
        for port, peer in ((self.v4, CLIENT), (self.v6, ("2001:db8::50", 4000)), (self.other, CLIENT)):
            port.deliver(rrq_packet("missing"), peer)
        self.assertEqual(
            [(len(port.replies), port.replies[0][1]) for port in (self.v4, self.v6, self.other)],
            [(1, CLIENT), (1, ("2001:db8::50", 4000)), (1, CLIENT)],
        )

    def test_transfers_from_the_port_asked(self):
        """
        A transfer's DATA comes from the address of the port its request
        came in on (in single-port mode: through that very port).
        """
        self.other.deliver(rrq_packet("f"), CLIENT)
        self.v6.deliver(rrq_packet("f"), ("2001:db8::50", 4000))
        if self.single_port:
            self.assertEqual(self.other.take(), [b"\0\3\0\1f"])
            self.assertEqual(self.v6.take(), [b"\0\3\0\1f"])
            self.assertEqual(self.v4.take(), [])
        else:
            first, second = self.reactor.ports[3:]
            self.assertEqual((first.interface, second.interface), ("192.0.2.1", "2001:db8::1"))
            self.assertEqual(first.take(), [b"\0\3\0\1f"])


class SeveralSharedRequestPortsTests(SeveralRequestPortsTests):
    """
    L{SeveralRequestPortsTests} in single-port mode.
    """

    single_port = True


# -- real sockets ----------------------------------------------------------------


def start_single_port(testcase, root, interface="127.0.0.1", settings=None) -> TFTPService:
    """
    A running in-process single-port L{TFTPService} serving C{root} on an
    ephemeral port of C{interface}, stopped when C{testcase} ends.
    """
    service = TFTPService(
        FilesystemHandler(root), port=0, interface=interface, settings=settings, single_port=True
    )
    service.privilegedStartService()
    service.startService()
    testcase.addCleanup(service.stopService)
    return service


def port_of(service: TFTPService) -> int:
    return service.port.getHost().port


class SinglePortFetchMatrixTests(test_interop.FetchMatrixTests):
    """
    L{test_interop.FetchMatrixTests} in single-port mode: each installed
    client, with the options it can negotiate, downloads files of every
    awkward size intact.
    """

    def setUp(self):
        self.directory = make_directory(self)
        self.root = os.path.join(self.directory, "root")
        os.mkdir(self.root)
        self.files = {
            f"file-{size}": random_file(self.root, f"file-{size}", size)
            for size in test_interop.SIZES
        }
        self.port = port_of(start_single_port(self, self.root))


class SinglePortRealSocketTests(TestCase):
    """
    Single-port mode on real loopback sockets.
    """

    timeout = 120

    def setUp(self):
        self.directory = make_directory(self)
        self.root = os.path.join(self.directory, "root")
        os.mkdir(self.root)

    async def test_every_reply_from_the_listener(self):
        """
        The OACK, every window and the last block all come from the
        listener's address and port, and the content arrives intact.
        """
        content = random_file(self.root, "file", 1468 * 40 + 7)
        port = port_of(start_single_port(self, self.root))
        transfer = await read_raw(
            ("127.0.0.1", port), rrq("file", options={"blksize": "1468", "windowsize": "8"})
        )
        self.assertIsNone(transfer.error)
        self.assertEqual(transfer.oack, {"blksize": "1468", "windowsize": "8"})
        self.assertEqual(transfer.sources, {("127.0.0.1", port)})
        assert_same_bytes(self, transfer.content, content, "single-port window")

    async def check_wildcard(self, interface):
        content = random_file(self.root, "file", 3000)
        port = port_of(start_single_port(self, self.root, interface=interface))
        transfer = await read_raw(("127.0.0.2", port), rrq("file", options={"blksize": "1024"}))
        self.assertEqual(transfer.sources, {("127.0.0.2", port)})
        assert_same_bytes(self, transfer.content, content, f"single-port on {interface!r}")

    async def test_ipv4_wildcard(self):
        """
        On a 0.0.0.0 listener, a request sent to 127.0.0.2 is answered, to
        its last block, from 127.0.0.2 and the listener's port.
        """
        await self.check_wildcard("0.0.0.0")

    async def test_dual_stack_wildcard(self):
        """
        The same on the dual-stack wildcard listener, over IPv4.
        """
        if not ipv6_loopback_available():
            raise SkipTest("no IPv6 here")
        await self.check_wildcard("")

    async def test_ipv6(self):
        """
        Over IPv6 (::1), the transfer comes from [::1] and the listener's port.
        """
        if not ipv6_loopback_available():
            raise SkipTest("no IPv6 on loopback here")
        content = random_file(self.root, "file", 5000)
        port = port_of(start_single_port(self, self.root, interface="::1"))
        transfer = await read_raw(("::1", port), rrq("file", options={"windowsize": "4"}))
        self.assertEqual(transfer.sources, {("::1", port)})
        assert_same_bytes(self, transfer.content, content, "single-port over IPv6")

    async def test_rollover_to_one(self):
        """
        With rollover 1 and windows of 64 blocks, block 65535 is followed by
        block 1 and the content arrives intact through the listener.
        """
        blocks = 65535 + 100
        content = random_file(self.root, "wraps", blocks * 8 + 3)
        service = start_single_port(self, self.root, settings=Settings(rollover=1))
        transfer = await read_raw(
            ("127.0.0.1", port_of(service)),
            rrq("wraps", options={"blksize": "8", "windowsize": "64"}),
            rollover=1,
        )
        self.assertIsNone(transfer.error)
        self.assertEqual(transfer.blocks[65533:65537], [65534, 65535, 1, 2])
        self.assertEqual(len(transfer.blocks), blocks + 1)
        assert_same_bytes(self, transfer.content, content, "single-port rollover 1")

    async def test_curl_past_the_wrap(self):
        """
        curl downloads 40 MiB at blksize 512 (block numbers wrap to 0) intact.
        """
        content = random_file(self.root, "big", 40 * 1024 * 1024)
        port = port_of(start_single_port(self, self.root))
        fetched = await fetch(curl("--tftp-blksize", "512"), "127.0.0.1", port, "big", self.directory)
        assert_fetched(self, fetched, content, "curl past the wrap, single-port")

    async def test_atftp_windows_past_the_wrap(self):
        """
        atftp with windowsize 16 at blksize 512 downloads 40 MiB intact.
        """
        content = random_file(self.root, "big", 40 * 1024 * 1024)
        port = port_of(start_single_port(self, self.root))
        fetched = await fetch(
            atftp("blksize 512", "windowsize 16"), "127.0.0.1", port, "big", self.directory
        )
        assert_fetched(self, fetched, content, "atftp windows past the wrap, single-port")

    @defer.inlineCallbacks
    def test_other_port_is_a_stray(self):
        """
        A datagram from another port of the client during a transfer is a
        stray: no answer (the ERROR 5 of classic mode does not apply: there
        is no transfer port to send to), counted, and the transfer goes on.
        A retransmitted RRQ draws nothing either.
        """
        content = os.urandom(512 * 3 + 10)
        with open(os.path.join(self.root, "file"), "wb") as f:
            f.write(content)
        service = start_single_port(self, self.root)
        address = ("127.0.0.1", port_of(service))

        def scenario():
            client, intruder = RawClient(address), RawClient(address)
            try:
                client.send(wire.ReadRequest("file", "octet").encode())
                first, source = client.receive()
                intruder.send(ack(1))
                client.send(wire.ReadRequest("file", "octet").encode())
                silent = intruder.nothing_within(0.3)
                received = [first.payload]
                block = first.block
                while len(received[-1]) == 512:
                    client.send(ack(block))
                    packet, source = client.receive()
                    received.append(packet.payload)
                    block = packet.block
                client.send(ack(block))
                return silent, source, b"".join(received)
            finally:
                client.close()
                intruder.close()

        silent, source, data = yield deferToThread(scenario)
        self.assertTrue(silent)
        self.assertEqual(source, address)
        self.assertEqual(data, content)
        counters = service.server.stats.counters
        self.assertEqual(counters["datagrams.stray"], 1)
        self.assertEqual(counters["requests.duplicate"], 1)
        self.assertEqual(counters["outcome.completed"], 1)

    @defer.inlineCallbacks
    def test_lone_fast_transfer_leaves_room_for_new_requests(self):
        """
        With the linger on, a lone lock-step transfer is served by waiting
        on the listening socket; a request from another client in the
        middle of it is answered while it runs, not after it.
        """
        big = os.urandom(512 * 3000)
        with open(os.path.join(self.root, "big"), "wb") as f:
            f.write(big)
        service = start_single_port(self, self.root, settings=Settings(linger=0.005))
        address = ("127.0.0.1", port_of(service))

        def scenario():
            client, other = RawClient(address), RawClient(address)
            try:
                client.send(wire.ReadRequest("big", "octet").encode())
                received, answered_at = [], None
                while True:
                    packet, _ = client.receive()
                    received.append(packet.payload)
                    if len(received) == 100:
                        other.send(wire.ReadRequest("missing", "octet").encode())
                        other.socket.setblocking(False)
                    if answered_at is None and len(received) > 100:
                        try:
                            other.socket.recvfrom(2048)
                        except BlockingIOError:
                            pass
                        else:
                            answered_at = len(received)
                    client.send(ack(packet.block))
                    if len(packet.payload) < 512:
                        return b"".join(received), answered_at
            finally:
                client.close()
                other.close()

        data, answered_at = yield deferToThread(scenario)
        self.assertEqual(data, big)
        self.assertIsNotNone(answered_at, "the other client waited for the whole transfer")
        self.assertLess(answered_at, 2500)
        # The listening socket is non-blocking again once it stops waiting.
        self.assertFalse(service.port.transport.socket.getblocking())


class _Quiet(DatagramProtocol):
    noisy = False


class _CountingSocket:
    """
    A listening socket with its sending calls counted.
    """

    def __init__(self, real: socket.socket) -> None:
        self._real = real
        self.calls: list[str] = []

    def sendmsg(self, *arguments):
        self.calls.append("sendmsg")
        return self._real.sendmsg(*arguments)

    def sendto(self, *arguments):
        self.calls.append("sendto")
        return self._real.sendto(*arguments)

    def __getattr__(self, name):
        return getattr(self._real, name)


class SharedWindowTests(TestCase):
    """
    A window through the listening socket leaves in one C{sendmsg} with
    UDP segmentation offload, and arrives as separate datagrams from the
    listener's address, in order.
    """

    def setUp(self):
        if not epoll_available(real_reactor):
            raise SkipTest("this reactor has no epoll")
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.client.close)
        self.client.bind(("127.0.0.1", 0))
        self.client.settimeout(2)

    def open(self, interface):
        shared = SinglePortNetwork(EpollNetwork(real_reactor)).listen(0, _Quiet(), interface)
        self.addCleanup(shared.stopListening)
        listener = shared.transport
        counting = listener.socket = _CountingSocket(listener.socket)
        transfer = shared.open_transfer(_Quiet(), "127.0.0.1", self.client.getsockname())
        return shared, transfer, counting

    def check(self, interface):
        shared, transfer, counting = self.open(interface)
        window = [struct.pack("!HH", 3, n) + bytes([n]) * 1024 for n in range(1, 17)]
        window[-1] = window[-1][:100]
        self.assertEqual(transfer.send_window(window, self.client.getsockname()), 16)
        received = [self.client.recvfrom(4096) for _ in window]
        self.assertEqual([datagram for datagram, _ in received], window)
        port = shared.getHost().port
        self.assertEqual({source for _, source in received}, {("127.0.0.1", port)})
        return counting.calls

    def test_bound_listener(self):
        """
        On a listener bound to one address, one C{sendmsg} carries the
        window (where the kernel segments UDP, as Linux does since 4.18).
        """
        self.assertEqual(self.check("127.0.0.1"), ["sendmsg"])

    def test_wildcard_listener(self):
        """
        On a wildcard listener, the source address and the segmentation go
        in the same C{sendmsg}.
        """
        self.assertEqual(self.check("0.0.0.0"), ["sendmsg"])

    def test_buffers_for_every_transfer(self):
        """
        The listening socket, which every transfer's blocks and ACKs go
        through, has its send and receive buffers widened to
        L{SHARED_BUFFER}, as far as the kernel grants (Linux doubles what
        is set, for its bookkeeping).
        """
        shared, _, _ = self.open("127.0.0.1")
        skt = shared.transport.socket
        for option, limit in ((socket.SO_SNDBUF, "wmem_max"), (socket.SO_RCVBUF, "rmem_max")):
            try:
                with open(f"/proc/sys/net/core/{limit}") as sysctl:
                    most = int(sysctl.read())
            except OSError:
                raise SkipTest("no /proc/sys/net/core here")
            granted = skt.getsockopt(socket.SOL_SOCKET, option)
            self.assertEqual(granted, 2 * min(SHARED_BUFFER, most), limit)

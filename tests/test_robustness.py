"""
The real server on loopback against a hand-driven client: strays, repeated
requests and duplicate ACKs over real sockets.
"""

from __future__ import annotations

import os
import socket
import struct

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tftpd_tx import FilesystemHandler, TFTPService, wire

BLOCK = 512


class RawClient:
    """
    A blocking TFTP client on a plain socket, run in a thread by the tests,
    that does exactly what it is told.
    """

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(5)
        self.tid = None

    def send(self, datagram: bytes, to=None) -> None:
        self.socket.sendto(datagram, to or self.tid or self.server)

    def receive(self, timeout: float = 5.0):
        self.socket.settimeout(timeout)
        datagram, source = self.socket.recvfrom(70000)
        if self.tid is None:
            self.tid = source
        return wire.decode(datagram), source

    def nothing_within(self, seconds: float) -> bool:
        try:
            self.receive(seconds)
        except socket.timeout:
            return True
        return False

    def close(self) -> None:
        self.socket.close()


class RealSocketTests(TestCase):
    """
    Behaviour that matters on a real network path.
    """

    timeout = 30

    def setUp(self):
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.content = os.urandom(BLOCK * 6 + 100)
        with open(os.path.join(self.root, "file.bin"), "wb") as f:
            f.write(self.content)
        self.service = TFTPService(
            FilesystemHandler(self.root), port=0, interface="127.0.0.1"
        )
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.address = ("127.0.0.1", self.service.port.getHost().port)
        self.client = RawClient(self.address)
        self.addCleanup(self.client.close)

    def in_thread(self, function):
        return deferToThread(function)

    @defer.inlineCallbacks
    def test_stray_gets_error_5_and_transfer_goes_on(self):
        """
        A datagram from another port to the transfer's port gets ERROR 5,
        and the client's transfer completes intact.
        """

        def scenario():
            client = self.client
            client.send(wire.ReadRequest("file.bin", "octet").encode())
            received = []
            packet, _ = client.receive()
            received.append(packet.payload)
            stranger = RawClient(client.tid)
            try:
                stranger.send(struct.pack("!HH", 4, 1), client.tid)
                error, source = stranger.receive()
            finally:
                stranger.close()
            while len(packet.payload) == BLOCK:
                client.send(struct.pack("!HH", 4, packet.block))
                packet, _ = client.receive()
                received.append(packet.payload)
            client.send(struct.pack("!HH", 4, packet.block))
            return error, source, b"".join(received)

        error, source, data = yield self.in_thread(scenario)
        self.assertEqual(error.code, wire.ErrorCode.UNKNOWN_TID)
        self.assertEqual(source, self.client.tid)
        self.assertEqual(data, self.content)

    @defer.inlineCallbacks
    def test_repeated_rrq_and_duplicate_acks(self):
        """
        A retransmitted RRQ does not start a second transfer, and duplicate
        ACKs get no DATA: after DATA 1 and its ACK sent three times, exactly
        one DATA 2 arrives.
        """

        def scenario():
            client = self.client
            request = wire.ReadRequest("file.bin", "octet").encode()
            client.send(request)
            client.send(request, self.address)
            first, _ = client.receive()
            silent_after_rrq = client.nothing_within(0.3)
            for _ in range(3):
                client.send(struct.pack("!HH", 4, 1))
            second, _ = client.receive()
            silent_after_acks = client.nothing_within(0.3)
            return first, silent_after_rrq, second, silent_after_acks

        first, silent_after_rrq, second, silent_after_acks = yield self.in_thread(
            scenario
        )
        self.assertEqual(first.block, 1)
        self.assertTrue(silent_after_rrq)
        self.assertEqual(second.block, 2)
        self.assertTrue(silent_after_acks)
        self.assertEqual(len(self.service.server.sessions), 1)

    @defer.inlineCallbacks
    def test_new_request_right_after_a_size_probe(self):
        """
        A PXE ROM ends its size probe with an ERROR to the transfer port and
        asks again from the same port at once.  Even when the server reads
        the new RRQ before the ERROR (they wait on different sockets), the
        new request is served at once, not taken for a retransmission that
        leaves the client to time out.
        """
        from twisted.internet import reactor
        from twisted.internet.threads import blockingCallFromThread

        server = self.service.server
        request = wire.ReadRequest("file.bin", "octet", {"tsize": "0"}).encode()

        def listener_reads_first(client):
            client.send(wire.Error(8, "size probe done").encode())
            server.datagramReceived(request, client.socket.getsockname(), "127.0.0.1")

        def scenario():
            client = self.client
            client.send(request)
            oack, probe_port = client.receive()
            blockingCallFromThread(reactor, listener_reads_first, client)
            client.tid = None
            second, transfer_port = client.receive(timeout=0.5)
            client.send(struct.pack("!HH", 4, 0), transfer_port)
            data, _ = client.receive()
            client.send(wire.Error(0, "enough").encode(), transfer_port)
            return oack, probe_port, second, transfer_port, data

        oack, probe_port, second, transfer_port, data = yield self.in_thread(scenario)
        self.assertEqual(oack.options, {"tsize": str(len(self.content))})
        self.assertEqual(second, oack)
        self.assertNotEqual(transfer_port, probe_port)
        self.assertEqual(data.payload, self.content[:BLOCK])
        self.assertEqual(server.stats.counters["outcome.probe"], 1)
        self.assertEqual(server.stats.counters["requests.duplicate"], 0)

    @defer.inlineCallbacks
    def test_lone_fast_transfer_leaves_room_for_new_requests(self):
        """
        A lone transfer whose client answers at once is served by waiting on
        its socket rather than in the reactor; a request from another client
        in the middle of it is still answered while it runs, not after it.
        """
        big = os.urandom(BLOCK * 4000)
        with open(os.path.join(self.root, "big.bin"), "wb") as f:
            f.write(big)

        def scenario():
            client, other = self.client, RawClient(self.address)
            try:
                client.send(wire.ReadRequest("big.bin", "octet").encode())
                received, answered_at = [], None
                while True:
                    packet, _ = client.receive()
                    received.append(packet.payload)
                    if len(received) == 100:
                        other.send(wire.ReadRequest("file.bin", "octet").encode())
                        other.socket.setblocking(False)
                    if answered_at is None and len(received) > 100:
                        try:
                            other.socket.recvfrom(2048)
                        except BlockingIOError:
                            pass
                        else:
                            answered_at = len(received)
                    client.send(struct.pack("!HH", 4, packet.block))
                    if len(packet.payload) < BLOCK:
                        return b"".join(received), answered_at
            finally:
                other.close()

        data, answered_at = yield self.in_thread(scenario)
        self.assertEqual(data, big)
        self.assertIsNotNone(answered_at, "the other client waited for the whole transfer")
        self.assertLess(answered_at, 3000)

    @defer.inlineCallbacks
    def test_reply_comes_from_address_used(self):
        """
        On a wildcard listener, a request sent to 127.0.0.2 is answered by a
        transfer port on 127.0.0.2, and an error to 127.0.0.3 comes from
        127.0.0.3.
        """
        wildcard = TFTPService(FilesystemHandler(self.root), port=0, interface="")
        wildcard.privilegedStartService()
        wildcard.startService()
        self.addCleanup(wildcard.stopService)
        port = wildcard.port.getHost().port

        def scenario():
            client = RawClient(("127.0.0.2", port))
            try:
                client.send(wire.ReadRequest("file.bin", "octet").encode())
                _, data_source = client.receive()
                client.send(wire.Error(0, "enough").encode())
                client.tid = None
                client.send(wire.ReadRequest("missing", "octet").encode(), ("127.0.0.3", port))
                error, error_source = client.receive()
                return data_source, error, error_source
            finally:
                client.close()

        data_source, error, error_source = yield self.in_thread(scenario)
        self.assertEqual(data_source[0], "127.0.0.2")
        self.assertEqual(error.code, 1)
        self.assertEqual(error_source, ("127.0.0.3", port))

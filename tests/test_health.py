"""
Graded health, the disable file, the reactor-lag probe, the canary and the
flap signal, on a fake reactor.
"""

from __future__ import annotations

import os
import struct

from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx import wire
from tftpd_tx.flaps import FlapTable
from tftpd_tx.health import Canary, DisableFile, Health, HealthService, ReactorLag
from tftpd_tx.server import TFTPServer
from tftpd_tx.settings import Settings
from tftpd_tx.testing import FakeUDPReactor, MemoryHandler

CLIENT = ("198.51.100.20", 3000)


def rrq(path):
    return wire.ReadRequest(path, "octet", {}).encode()


class _Server:
    def make(self, **settings):
        self.reactor = FakeUDPReactor()
        self.server = TFTPServer(
            MemoryHandler({"f": b"x" * 600}), Settings(**settings), reactor=self.reactor
        )
        self.listener = self.reactor.listenUDP(69, self.server, interface="0.0.0.0")
        self.listening = True
        self.failures = []
        self.health = Health(
            self.server,
            listening=lambda: self.listening,
            checks=(lambda: self.failures[-1] if self.failures else None,),
            descriptors=lambda: 10,
        )


class GradeTests(_Server, SynchronousTestCase):
    """
    ok, degraded, draining and down, and why.
    """

    def test_ok(self):
        """
        A server at rest is ok, for no reason.
        """
        self.make()
        report = self.health.report()
        self.assertEqual((report["state"], report["reasons"]), ("ok", []))

    def test_degraded_near_the_cap(self):
        """
        At 90 % of the session cap the server is degraded: still serving,
        its route to be made inferior.
        """
        self.make(max_sessions=10, max_sessions_per_client=10)
        for port in range(5000, 5009):
            self.listener.deliver(rrq("f"), (CLIENT[0], port), "192.0.2.1")
        report = self.health.report()
        self.assertEqual(report["state"], "degraded")
        self.assertEqual(report["reasons"], ["9 transfers, near the cap of 10"])

    def test_degraded_by_a_check(self):
        """
        Another cause (an origin that fails) degrades it too.
        """
        self.make()
        self.failures.append("origin failing")
        self.assertEqual(self.health.report()["reasons"], ["origin failing"])

    def test_draining(self):
        """
        A draining server says so: still 200 on /health, inferior route.
        """
        self.make()
        self.server.drain()
        self.assertEqual(self.health.report()["state"], "draining")

    def test_down_wins(self):
        """
        A server that lost its listener is down, draining or not.
        """
        self.make()
        self.server.drain()
        self.listening = False
        report = self.health.report()
        self.assertEqual(report["state"], "down")
        self.assertEqual(report["reasons"], ["listener closed", "draining"])

    def test_descriptors(self):
        """
        Near the descriptor limit the server is degraded.
        """
        self.make()
        self.server.descriptor_limit = 10
        self.assertIn("descriptors open", self.health.report()["reasons"][0])


class DisableFileTests(SynchronousTestCase):
    """
    The disable file is there exactly when asked, and never half written.
    """

    def test_present_and_absent(self):
        """
        Made with its reason, made again or removed twice harmlessly, and
        no temporary file left beside it.
        """
        path = os.path.join(self.mktemp())
        disable = DisableFile(path)
        disable.set(True, "draining")
        with open(path) as f:
            self.assertEqual(f.read(), "draining\n")
        disable.set(True, "still")
        disable.set(False)
        self.assertFalse(os.path.exists(path))
        disable.set(False)
        self.assertEqual(os.listdir(os.path.dirname(os.path.abspath(path)) or "."), [])


class HealthServiceTests(_Server, SynchronousTestCase):
    """
    The keeper follows the grade every second.
    """

    def test_file_follows_the_grade(self):
        """
        Draining makes the file appear at the next evaluation; resuming
        removes it; stopping removes it too.
        """
        self.make()
        path = self.mktemp()
        keeper = HealthService(self.server, self.health, self.reactor,
                               disable_file=DisableFile(path))  # fmt: skip
        keeper.startService()
        self.assertFalse(os.path.exists(path))
        self.server.drain()
        self.reactor.advance(1)
        self.assertTrue(os.path.exists(path))
        self.server.resume()
        self.reactor.advance(1)
        self.assertFalse(os.path.exists(path))
        self.server.drain()
        self.reactor.advance(1)
        keeper.stopService()
        self.assertFalse(os.path.exists(path))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_down_has_no_file(self):
        """
        While the server cannot serve, the file is absent, so that the
        failing check decides.
        """
        self.make()
        path = self.mktemp()
        keeper = HealthService(self.server, self.health, self.reactor,
                               disable_file=DisableFile(path))  # fmt: skip
        keeper.startService()
        self.server.drain()
        self.listening = False
        self.reactor.advance(1)
        self.assertFalse(os.path.exists(path))
        keeper.stopService()


class ReactorLagTests(SynchronousTestCase):
    """
    How late the reactor runs a timer.
    """

    def test_lateness(self):
        """
        A timer run 0.3 s late is observed as 0.3 s of lag.
        """
        clock = FakeUDPReactor()
        lag = ReactorLag(clock, interval=0.5)
        lag.start()
        clock.advance(0.5)
        clock.advance(0.8)
        self.assertAlmostEqual(lag.recent, 0.3)
        self.assertEqual(lag.histogram.count, 2)
        lag.stop()
        self.assertEqual(clock.getDelayedCalls(), [])


class CanaryTests(SynchronousTestCase):
    """
    The canary fetches a path through the listener, as a client.
    """

    def setUp(self):
        self.reactor = FakeUDPReactor()
        self.canary = Canary(self.reactor, lambda: ("0.0.0.0", 69), "c.txt",
                             interval=5, timeout=2)  # fmt: skip
        self.canary.start()
        self.reactor.advance(0)
        self.port = self.reactor.ports[0]

    def test_success(self):
        """
        It asks 127.0.0.1 for the path, ACKs the short block, and counts a
        success.
        """
        ((request, to),) = self.port.sent
        self.assertEqual((wire.decode(request).filename, to), ("c.txt", ("127.0.0.1", 69)))
        self.port.deliver(b"\0\3\0\1hello", ("127.0.0.1", 40000))
        self.assertEqual(self.port.sent[-1], (struct.pack("!HH", 4, 1), ("127.0.0.1", 40000)))
        self.assertEqual((self.canary.fetches, self.canary.failures), (1, 0))
        self.canary.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_failures_in_a_row(self):
        """
        No answer within the timeout is a failure; two in a row make a
        L{Health} down; a success resets the count.
        """
        self.reactor.advance(2)
        self.reactor.advance(5)
        self.reactor.advance(2)
        self.assertEqual(self.canary.failures, 2)
        server = TFTPServer(MemoryHandler({}), reactor=self.reactor)
        health = Health(server, listening=lambda: True, canary=self.canary,
                        descriptors=lambda: None)  # fmt: skip
        self.assertEqual(health.report()["state"], "down")
        self.reactor.advance(5)
        self.port.deliver(b"\0\3\0\1", ("127.0.0.1", 40001))
        self.assertEqual(self.canary.failures, 0)
        self.canary.stop()


class FlapTableTests(SynchronousTestCase):
    """
    Abandoned transfers and strays per client prefix, over a window.
    """

    def setUp(self):
        self.clock = FakeUDPReactor()
        self.flaps = FlapTable(self.clock, window=600, threshold=3, size=3)

    def test_prefixes(self):
        """
        Clients are grouped by /24 and /64 by default.
        """
        self.assertEqual(self.flaps.prefix_of("192.0.2.77"), "192.0.2.0/24")
        self.assertEqual(self.flaps.prefix_of("2001:db8::1"), "2001:db8::/64")

    def test_threshold_and_order(self):
        """
        A prefix shows once it has three events in the window, most first.
        """
        for host in ("192.0.2.1", "192.0.2.2"):
            self.flaps.abandoned(host)
        self.assertEqual(self.flaps.flapping(), [])
        self.flaps.stray("192.0.2.3")
        for _ in range(5):
            self.flaps.stray("198.51.100.9")
        self.assertEqual(
            self.flaps.flapping(),
            [{"prefix": "198.51.100.0/24", "abandoned": 0, "strays": 5},
             {"prefix": "192.0.2.0/24", "abandoned": 2, "strays": 1}],
        )  # fmt: skip

    def test_window_slides(self):
        """
        Events older than the window no longer count.
        """
        for _ in range(3):
            self.flaps.abandoned("192.0.2.1")
        self.clock.advance(700)
        self.assertEqual(self.flaps.flapping(), [])

    def test_bounded(self):
        """
        Past its size the table forgets the least recently seen prefix.
        """
        for _ in range(3):
            self.flaps.stray("192.0.2.1")
        for network in ("198.51.100.1", "203.0.113.1", "192.0.3.1"):
            self.flaps.stray(network)
        self.assertEqual(self.flaps.flapping(), [])

    def test_server_feeds_it(self):
        """
        A server counts a stray to a transfer's port and an abandoned
        transfer (a timeout after an ACK) for the client's prefix.
        """
        reactor = FakeUDPReactor()
        server = TFTPServer(MemoryHandler({"f": b"x" * 2000}), reactor=reactor)
        listener = reactor.listenUDP(69, server, interface="0.0.0.0")
        listener.deliver(rrq("f"), ("192.0.2.8", 4000), "192.0.2.1")
        transfer = reactor.ports[1]
        transfer.deliver(struct.pack("!HH", 4, 1), ("192.0.2.8", 4000))
        transfer.deliver(struct.pack("!HH", 4, 1), ("192.0.2.9", 4001))
        listener.deliver(struct.pack("!HH", 4, 7), ("192.0.2.10", 4002), "192.0.2.1")
        reactor.pump([1.0] * 40)
        self.assertEqual(
            server.flaps.flapping(),
            [{"prefix": "192.0.2.0/24", "abandoned": 1, "strays": 2}],
        )
        self.assertEqual(server.stats.counters["transfers.abandoned"], 1)

"""
Round trips (RFC 6298) and the retransmit timer that follows them.
"""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx import wire
from tftpd_tx.rtt import RoundTrip, RoundTripMemory
from tftpd_tx.server import TFTPServer
from tftpd_tx.settings import Settings
from tftpd_tx.testing import FakeUDPReactor, MemoryHandler

CLIENT = ("198.51.100.20", 3000)


def ack(block):
    return struct.pack("!HH", 4, block)


class RoundTripTests(SynchronousTestCase):
    """
    The estimator itself.
    """

    def test_first_sample(self):
        """
        The first sample sets SRTT to it and RTTVAR to half of it: RTO is
        three round trips, within the bounds.
        """
        rtt = RoundTrip(1.0, floor=0.05, ceiling=8.0)
        self.assertEqual(rtt.rto, 1.0)
        rtt.sample(0.1)
        self.assertAlmostEqual(rtt.srtt, 0.1)
        self.assertAlmostEqual(rtt.rto, 0.3)

    def test_smoothing_and_floor(self):
        """
        Later samples are smoothed (1/8 and 1/4), and the RTO never goes
        below the floor, however short the path.
        """
        rtt = RoundTrip(1.0, floor=0.05, ceiling=8.0)
        for _ in range(50):
            rtt.sample(0.0001)
        self.assertLess(rtt.srtt, 0.001)
        self.assertEqual(rtt.rto, 0.05)

    def test_backoff(self):
        """
        Each expiry doubles the RTO, up to the ceiling.
        """
        rtt = RoundTrip(1.0, floor=0.05, ceiling=8.0, seed=0.1)
        waits = []
        for _ in range(6):
            waits.append(round(rtt.rto, 3))
            rtt.expired()
        self.assertEqual(waits, [0.3, 0.6, 1.2, 2.4, 4.8, 8.0])

    def test_backoff_lasts_until_a_sample(self):
        """
        The doubled RTO stays until a block sent once is acknowledged
        (Karn): a spurious timeout does not repeat on every window.
        """
        rtt = RoundTrip(1.0, floor=0.05, ceiling=8.0, seed=0.01)
        rtt.expired()
        self.assertEqual(rtt.rto, 0.1)
        rtt.sample(0.06)
        self.assertGreater(rtt.rto, 0.05)

    def test_memory(self):
        """
        The memory keeps the last SRTT per /24, and forgets the least
        recently used past its size.
        """
        memory = RoundTripMemory(size=2)
        memory.remember("192.0.2.7", 0.02)
        self.assertEqual(memory.recall("192.0.2.200"), 0.02)
        memory.remember("198.51.100.1", 0.03)
        memory.recall("192.0.2.1")
        memory.remember("203.0.113.1", 0.04)
        self.assertIsNone(memory.recall("198.51.100.9"))
        self.assertEqual(memory.recall("192.0.2.1"), 0.02)


class AdaptiveTimerTests(SynchronousTestCase):
    """
    A transfer whose client did not negotiate a timeout retransmits after
    its measured round trip, not after a fixed second.
    """

    def setUp(self):
        self.reactor = FakeUDPReactor()
        self.server = TFTPServer(
            MemoryHandler({"f": b"x" * 512 * 20}), Settings(), reactor=self.reactor
        )
        self.listener = self.reactor.listenUDP(69, self.server, interface="0.0.0.0")

    def start(self, peer=CLIENT, **options):
        request = wire.ReadRequest("f", "octet", {k: str(v) for k, v in options.items()})
        self.listener.deliver(request.encode(), peer, "192.0.2.1")
        return self.reactor.ports[-1]

    def test_loss_recovered_after_the_rto(self):
        """
        With a 10 ms round trip measured, a lost block goes again after the
        RTO floor (50 ms), not after the 1 s timeout; the stats show SRTT
        and RTO.
        """
        port = self.start()
        for block in range(1, 6):
            self.reactor.advance(0.01)
            port.take()
            port.deliver(ack(block), CLIENT)
        port.take()
        session = self.server.sessions[1]
        self.assertAlmostEqual(session.stats.srtt, 0.01, places=3)
        self.assertEqual(session.stats.rto, 0.05)
        self.reactor.advance(0.049)
        self.assertEqual(port.take(), [])
        self.reactor.advance(0.001)
        self.assertEqual(len(port.take()), 1)
        self.assertEqual(session.stats.retransmits, 1)

    def test_oack_round_trip(self):
        """
        The ACK of the OACK is the first sample, timed from the OACK's
        sending (on a clock at the epoch's time, as a real one is).
        """
        self.reactor.advance(1.8e9)
        port = self.start(blksize=1024)
        self.reactor.advance(0.01)
        port.deliver(ack(0), CLIENT)
        self.assertAlmostEqual(self.server.sessions[1].stats.srtt, 0.01)

    def test_karn(self):
        """
        The ACK of a retransmitted block is no sample: a 3 s answer to a
        block sent twice leaves the estimate as it was.
        """
        port = self.start()
        port.deliver(ack(1), CLIENT)
        self.reactor.advance(0.02)
        port.deliver(ack(2), CLIENT)
        session = self.server.sessions[1]
        srtt = session.stats.srtt
        self.reactor.pump([0.05] * 60)
        port.deliver(ack(3), CLIENT)
        self.assertEqual(session.stats.srtt, srtt)

    def test_negotiated_timeout_is_used_as_given(self):
        """
        A client that negotiated C{timeout 2} gets a retransmission after
        2 s, however short its round trip.
        """
        port = self.start(timeout=2)
        port.deliver(ack(0), CLIENT)
        port.take()
        self.reactor.advance(0.01)
        port.deliver(ack(1), CLIENT)
        port.take()
        self.reactor.advance(1.99)
        self.assertEqual(port.take(), [])
        self.reactor.advance(0.01)
        self.assertEqual(len(port.take()), 1)

    def test_next_transfer_starts_from_the_prefix(self):
        """
        A new transfer from the same /24 starts from the round trip the
        last one measured: its first loss waits the RTO, not the timeout.
        """
        port = self.start()
        for block in range(1, 22):
            self.reactor.advance(0.01)
            port.deliver(ack(block), CLIENT)
        self.assertEqual(self.server.sessions, {})
        other = self.start(peer=("198.51.100.21", 4000))
        other.deliver(ack(1), ("198.51.100.21", 4000))
        other.take()
        self.reactor.advance(0.05)
        self.assertEqual(len(other.take()), 1)

    def test_silent_client_given_up_in_patience(self):
        """
        With an RTO of 50 ms the waits double to 8 s, and a client that
        went silent is given up when the configured schedule's time has
        passed without progress (31 s with the defaults), not after five
        short waits.
        """
        port = self.start()
        for block in range(1, 4):
            self.reactor.advance(0.01)
            port.deliver(ack(block), CLIENT)
        self.reactor.pump([0.05] * 800)
        self.assertEqual(self.server.sessions, {})
        self.assertEqual(self.server.stats.counters["outcome.timeout"], 1)
        self.assertFalse(port.listening)

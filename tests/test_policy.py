"""
What the listener allows before it serves: session caps, request rates,
source ports, request sizes, hold times, and running out of descriptors;
on a fake reactor.
"""

from __future__ import annotations

import collections
import errno
import resource
import struct
import weakref

from twisted.internet.error import CannotListenError
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx import wire
from tftpd_tx.policy import (
    ClientRates,
    SessionCounts,
    UnprovenSessions,
    raise_descriptor_limit,
    session_cap,
)
from tftpd_tx.server import TFTPServer
from tftpd_tx.settings import Settings
from tftpd_tx.stats import Outcome
from tftpd_tx.testing import FakeUDPReactor, MemoryHandler
from tftpd_tx.transport import UDPNetwork

CLIENT = ("198.51.100.20", 3000)
OTHER = ("203.0.113.5", 4000)
FILES = {"boot.img": b"b" * 100_000, "small.cfg": b"default local\n"}


def rrq(path, mode="octet", **options):
    return wire.ReadRequest(path, mode, {k: str(v) for k, v in options.items()}).encode()


def ack(block):
    return struct.pack("!HH", 4, block)


class _Setup:
    def make(self, handler=None, network=None, **settings):
        self.reactor = FakeUDPReactor()
        self.handler = handler if handler is not None else MemoryHandler(dict(FILES))
        self.finished = []
        self.server = TFTPServer(
            self.handler,
            Settings(**settings),
            reactor=self.reactor,
            session_callback=self.finished.append,
            network=network,
        )
        self.listener = self.reactor.listenUDP(69, self.server, interface="0.0.0.0")

    def request(self, datagram, peer=CLIENT):
        self.listener.deliver(datagram, peer, "192.0.2.1")

    def transfers(self) -> int:
        return len(self.reactor.ports) - 1

    def counter(self, name: str) -> int:
        return self.server.stats.counters[name]


class SessionCapTests(_Setup, SynchronousTestCase):
    """
    Requests over a cap are dropped in silence and counted by reason.
    """

    def test_server_cap(self):
        """
        With C{max_sessions} transfers running, a new request from anyone
        gets no answer; once one ends, requests are served again.
        """
        self.make(max_sessions=2, max_sessions_per_client=2)
        self.request(rrq("boot.img"), CLIENT)
        self.reactor.ports[1].deliver(ack(1), CLIENT)
        self.request(rrq("boot.img"), (OTHER[0], 2000))
        self.reactor.ports[2].deliver(ack(1), (OTHER[0], 2000))
        self.request(rrq("small.cfg"), (OTHER[0], 2001))
        self.assertEqual(self.transfers(), 2)
        self.assertEqual(self.listener.sent, [])
        self.assertEqual(self.counter("requests.over_sessions"), 1)
        self.reactor.ports[1].deliver(wire.Error(0, "bye").encode(), CLIENT)
        self.request(rrq("small.cfg"), (OTHER[0], 2001))
        self.assertEqual(self.transfers(), 3)

    def test_client_cap(self):
        """
        One address holds at most C{max_sessions_per_client}; another
        address is still served.
        """
        self.make(max_sessions=100, max_sessions_per_client=2)
        for port in range(5000, 5005):
            self.request(rrq("boot.img"), (CLIENT[0], port))
            self.reactor.ports[-1].deliver(ack(1), (CLIENT[0], port))
        self.request(rrq("boot.img"), OTHER)
        self.assertEqual(self.transfers(), 3)
        self.assertEqual(self.counter("requests.over_client_sessions"), 3)

    def test_unproven_evicted_first(self):
        """
        Transfers whose clients never answered (forged requests, say) do
        not lock others out: at the cap, the oldest of them is given up,
        in silence, for each new request; a transfer whose client answered
        is never given up for it.
        """
        self.make(max_sessions=3, max_sessions_per_client=3)
        self.request(rrq("boot.img"), OTHER)
        self.reactor.ports[1].deliver(ack(1), OTHER)
        forged = [(f"192.0.2.{n}", 4000) for n in range(1, 4)]
        for peer in forged:
            self.request(rrq("boot.img"), peer)
        self.request(rrq("small.cfg"), CLIENT)
        outcomes = [stats.outcome for stats in self.finished]
        self.assertEqual(outcomes, [Outcome.EVICTED, Outcome.EVICTED])
        self.assertEqual([stats.peer for stats in self.finished], forged[:2])
        self.assertEqual(self.counter("sessions.evicted"), 2)
        self.assertTrue(self.reactor.ports[1].listening)
        self.assertTrue(self.reactor.ports[-1].listening)
        # Nothing was sent to the forged addresses but the first reply.
        for port in self.reactor.ports[2:4]:
            self.assertEqual(len(port.sent), 1)

    def test_flood_cannot_make_room_for_itself(self):
        """
        A client that holds an unanswered transfer itself does not evict
        others': a flood's sources all do, so at the cap its requests are
        dropped, not traded for transfers.
        """
        self.make(max_sessions=2, max_sessions_per_client=2)
        for port in (5000, 5001, 5002, 5003):
            self.request(rrq("boot.img"), (CLIENT[0], port))
        self.assertEqual(self.finished, [])
        self.assertEqual(self.counter("requests.over_sessions"), 2)


class ClientRateTests(_Setup, SynchronousTestCase):
    """
    C{client_rate} and C{client_burst}: a token bucket of new requests per
    client address.
    """

    def test_burst_then_rate(self):
        """
        A client gets its burst at once, then C{client_rate} a second; a
        client at another address is not affected.
        """
        self.make(client_rate=2.0, client_burst=3)
        for port in range(5000, 5010):
            self.request(rrq("small.cfg"), (CLIENT[0], port))
        self.assertEqual(self.transfers(), 3)
        self.assertEqual(self.counter("requests.over_client_rate"), 7)
        self.request(rrq("small.cfg"), OTHER)
        self.assertEqual(self.transfers(), 4)
        self.reactor.advance(1.0)
        for port in range(6000, 6010):
            self.request(rrq("small.cfg"), (CLIENT[0], port))
        self.assertEqual(self.transfers(), 6)

    def test_off_by_default(self):
        """
        With no C{client_rate}, a client may ask as fast as it likes.
        """
        self.make()
        for port in range(5000, 5100):
            self.request(rrq("small.cfg"), (CLIENT[0], port))
        self.assertEqual(self.transfers(), 100)

    def test_bucket_table_is_bounded(self):
        """
        The table forgets the least recently seen clients first.
        """
        rates = ClientRates(table_size=2)
        self.assertTrue(rates.allow("a", 0.0, 1.0, 1))
        self.assertFalse(rates.allow("a", 0.0, 1.0, 1))
        rates.allow("b", 0.0, 1.0, 1)
        rates.allow("c", 0.0, 1.0, 1)
        self.assertTrue(rates.allow("a", 0.0, 1.0, 1))


class _Transfer:
    """
    What L{UnprovenSessions} reads of a transfer: its peer, and whether it
    is proven or ended.
    """

    def __init__(self, host: str) -> None:
        self.peer = (host, 4000)
        self.proven = False
        self.ended = False


class UnprovenSessionsTests(SynchronousTestCase):
    """
    L{UnprovenSessions} gives up the oldest unproven transfer, and holds
    on to no transfer once it is proven.
    """

    def test_proven_forgotten(self):
        """
        Transfers whose clients answer within a round trip (here, ten
        requests later) are let go of as new requests come: of 1,000
        transfers still running, the table keeps only the last round
        trip's.
        """
        table = UnprovenSessions()
        running = []
        in_flight: collections.deque[_Transfer] = collections.deque()
        for n in range(1000):
            transfer = _Transfer(f"192.0.2.{n % 250}")
            table.add(transfer)
            running.append(weakref.ref(transfer))
            in_flight.append(transfer)
            if len(in_flight) > 10:
                in_flight.popleft().proven = True
        del transfer
        in_flight.clear()
        held = [ref for ref in running if ref() is not None]
        self.assertEqual(held, running[-11:])

    def test_oldest_unproven_still_first(self):
        """
        An unproven transfer older than many proven ones is still the one
        given up first, and its client still holds one; once it is taken,
        the proven ones behind it are let go of at the next request.
        """
        table = UnprovenSessions()
        silent = _Transfer("203.0.113.9")
        table.add(silent)
        proven = []
        for n in range(100):
            transfer = _Transfer(f"192.0.2.{n}")
            table.add(transfer)
            transfer.proven = True
            proven.append(weakref.ref(transfer))
        del transfer
        self.assertTrue(table.holds_any("203.0.113.9"))
        self.assertFalse(table.holds_any("192.0.2.1"))
        self.assertIs(table.oldest(), silent)
        table.add(_Transfer("198.51.100.1"))
        self.assertEqual([ref for ref in proven if ref() is not None], [])


class SessionCountsTests(SynchronousTestCase):
    """
    L{SessionCounts} counts in all and per address, and forgets addresses
    with nothing in progress.
    """

    def test_counts(self):
        """
        Adds and removes balance, per address and in all.
        """
        counts = SessionCounts()
        counts.add("a")
        counts.add("a")
        counts.add("b")
        counts.remove("a")
        self.assertEqual((counts.total, counts.of("a"), counts.of("b")), (2, 1, 1))
        counts.remove("a")
        self.assertEqual(counts.of("a"), 0)


class DescriptorLimitTests(SynchronousTestCase):
    """
    At start the soft descriptor limit is raised to the hard one.
    """

    def test_raised_to_hard(self):
        """
        The soft limit ends up at the hard one, and the figure is returned.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        if hard != resource.RLIM_INFINITY and hard > 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        limit = raise_descriptor_limit()
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], limit)
        self.assertGreaterEqual(limit, 256)


class SourcePortTests(_Setup, SynchronousTestCase):
    """
    Datagrams from source ports below 1024 are never answered (the Loop DoS
    of CVE-2024-2169), unless C{allow_low_ports} is set.
    """

    def test_low_port_dropped(self):
        """
        A request or anything else from port 19 or 7 gets no answer.
        """
        self.make()
        self.request(rrq("small.cfg"), (CLIENT[0], 19))
        self.request(b"\0\x09garbage", (CLIENT[0], 7))
        self.assertEqual(self.transfers(), 0)
        self.assertEqual(self.listener.sent, [])
        self.assertEqual(self.counter("datagrams.low_port"), 2)

    def test_low_port_allowed(self):
        """
        With C{allow_low_ports}, a legacy device on port 1023 is served.
        """
        self.make(allow_low_ports=True)
        self.request(rrq("small.cfg"), (CLIENT[0], 1023))
        self.assertEqual(self.transfers(), 1)

    def test_low_port_stray_not_answered(self):
        """
        A stray datagram from a low port to a transfer's port gets no
        ERROR 5 (chargen would answer it, and so on for ever); it is
        counted as a stray.
        """
        self.make()
        self.request(rrq("boot.img"))
        transfer = self.reactor.ports[1]
        transfer.take()
        transfer.deliver(ack(1), (OTHER[0], 19))
        transfer.deliver(ack(1), (OTHER[0], 4000))
        self.assertEqual([peer for _, peer in transfer.sent], [(OTHER[0], 4000)])
        self.assertEqual(self.counter("datagrams.stray"), 2)


class RequestSizeTests(_Setup, SynchronousTestCase):
    """
    RFC 2347: a request is at most 512 octets.
    """

    def test_oversized_request(self):
        """
        A longer request gets ERROR 4, is counted, and starts nothing.
        """
        self.make()
        options = {f"opt{i}": "x" * 10 for i in range(40)}
        self.request(wire.ReadRequest("small.cfg", "octet", options).encode())
        (reply,) = self.listener.take()
        self.assertEqual(wire.decode(reply).code, wire.ErrorCode.ILLEGAL_OPERATION)
        self.assertEqual(self.counter("requests.too_large"), 1)
        self.assertEqual(self.transfers(), 0)

    def test_long_path_logged_short(self):
        """
        A refused request's path is cut in the log line, with its length.
        """
        self.make()
        with capturedLogs() as events:
            self.request(rrq("m" * 400))
        (line,) = [e for e in events if "Refused" in e["log_format"]]
        self.assertIn("... (400 characters)", line["path"])
        self.assertLess(len(line["path"]), 160)


class HoldTimeTests(_Setup, SynchronousTestCase):
    """
    A negotiated timeout is the retransmission interval (RFC 2349), and no
    transfer without progress outlives C{hold_time}.
    """

    def test_negotiated_timeout_is_the_interval(self):
        """
        With C{timeout 3}, an acknowledged transfer retransmits every 3 s,
        not 3, 6, 12...
        """
        self.make(retries=3)
        self.request(rrq("boot.img", timeout=3))
        transfer = self.reactor.ports[1]
        transfer.deliver(ack(0), CLIENT)
        transfer.take()
        sent_at = []
        for _ in range(40):
            self.reactor.advance(0.5)
            if transfer.take():
                sent_at.append(self.reactor.seconds())
        self.assertEqual(sent_at, [3.0, 6.0, 9.0])

    def test_timeout_255_held_for_hold_time(self):
        """
        A client that negotiates 255 s and then goes silent holds its
        transfer for C{hold_time}, not 255 s times the retries.
        """
        self.make(hold_time=60.0)
        self.request(rrq("boot.img", timeout=255))
        transfer = self.reactor.ports[1]
        transfer.deliver(ack(0), CLIENT)
        self.reactor.pump([1.0] * 70)
        (stats,) = self.finished
        self.assertEqual(stats.outcome, Outcome.TIMEOUT)
        self.assertLessEqual(stats.duration, 60.0)
        self.assertFalse(transfer.listening)


class _EmfileNetwork(UDPNetwork):
    """
    A network whose every transfer port fails as a process out of
    descriptors does.
    """

    def open_transfer(self, protocol, interface):
        raise CannotListenError(interface, 0, OSError(errno.EMFILE, "Too many open files"))


class OutOfDescriptorsTests(_Setup, SynchronousTestCase):
    """
    Out of descriptors: one clear line in a while, a counter, silence to the
    client, never a traceback per request.
    """

    def test_handler_cannot_open(self):
        """
        A handler that cannot open its file for want of descriptors: the
        client hears nothing, one line says it, and the server serves again
        as soon as the handler can.
        """

        class Exhausted:
            def get_response_data(self, request):
                raise OSError(errno.EMFILE, "Too many open files")

        self.make(handler=Exhausted())
        with capturedLogs() as events:
            for port in range(5000, 5050):
                self.request(rrq("small.cfg"), (CLIENT[0], port))
        self.assertEqual(self.listener.sent, [])
        self.assertEqual(self.counter("requests.no_descriptors"), 50)
        lines = [e for e in events if "file descriptors" in e["log_format"]]
        self.assertEqual(len(lines), 1)
        self.assertNotIn("log_failure", lines[0])
        self.server.handler = MemoryHandler(dict(FILES))
        self.request(rrq("small.cfg"), (CLIENT[0], 5000))
        self.assertEqual(self.transfers(), 1)

    def test_port_cannot_open(self):
        """
        A transfer port that cannot be had for want of descriptors is the
        same; the requests refused hold no place, so with descriptors back
        the next request is served even under a cap of one.
        """
        self.make(max_sessions=1)
        network = self.server.network
        self.server.network = _EmfileNetwork(self.reactor)
        with capturedLogs() as events:
            for port in range(5000, 5050):
                self.request(rrq("small.cfg"), (CLIENT[0], port))
        self.assertEqual(self.listener.sent, [])
        self.assertEqual(self.counter("requests.no_descriptors"), 50)
        self.assertEqual(len([e for e in events if "log_failure" in e]), 0)
        self.assertEqual(len([e for e in events if "file descriptors" in e["log_format"]]), 1)
        self.server.network = network
        self.request(rrq("small.cfg"), OTHER)
        self.assertEqual(self.transfers(), 1)

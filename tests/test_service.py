"""
TFTPService: binding, periodic statistics, stopping.
"""

from __future__ import annotations


from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx import TFTPService, wire
from tftpd_tx.testing import FakeUDPReactor, MemoryHandler

CLIENT = ("192.0.2.50", 4000)


class TFTPServiceTests(SynchronousTestCase):
    """
    The service around the server protocol.
    """

    def setUp(self):
        self.reactor = FakeUDPReactor()
        self.reports = []
        self.service = TFTPService(
            MemoryHandler({"f": b"x" * 700}),
            port=6969,
            interface="192.0.2.1",
            reactor=self.reactor,
            stats_callback=self.reports.append,
            stats_interval=10,
        )
        self.service.privilegedStartService()
        self.service.startService()

    def test_listens_where_asked(self):
        """
        The listener is bound to the port and address given.
        """
        host = self.service.port.getHost()
        self.assertEqual((host.host, host.port), ("192.0.2.1", 6969))

    def test_stats_every_interval(self):
        """
        The stats callback gets the ServerStats every interval; resetting
        the counters there reports per interval.
        """
        self.service.port.deliver(wire.ReadRequest("f", "octet").encode(), CLIENT)
        self.reactor.advance(9.9)
        self.assertEqual(self.reports, [])
        self.reactor.advance(0.1)
        (stats,) = self.reports
        self.assertIs(stats, self.service.server.stats)
        counters = stats.get_and_reset_all_counters()
        self.assertEqual(counters["requests.read"], 1)
        self.assertEqual(stats.active_sessions, 1)
        self.reactor.advance(10)
        self.assertEqual(stats.counters["requests.read"], 0)
        self.assertEqual(len(self.reports), 2)

    def test_stop_leaves_nothing(self):
        """
        Stopping aborts running transfers, closes every port and leaves no
        timer behind.
        """
        self.service.port.deliver(wire.ReadRequest("f", "octet").encode(), CLIENT)
        session_port = self.reactor.ports[-1]
        self.service.stopService()
        self.assertEqual(
            session_port.take()[-1], wire.Error(0, "Server shutting down").encode()
        )
        self.assertEqual(self.reactor.open_ports(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

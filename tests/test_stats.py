"""
Statistics: what a session callback finds in L{SessionStats}, and how
L{ServerStats} counts, as a stats callback or the manhole reads them.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx import Outcome, ServerStats, SessionStats, TFTPServer, wire
from tftpd_tx.content import Request
from tftpd_tx.testing import FakeUDPReactor, MemoryHandler

PEER = ("198.51.100.4", 2000)
SERVER = ("192.0.2.1", 69)


def session(**fields) -> SessionStats:
    return SessionStats(peer=PEER, server_addr=SERVER, file_path="pxelinux.0", **fields)


class SessionStatsTests(SynchronousTestCase):
    """
    One transfer's L{SessionStats}.
    """

    def test_defaults(self):
        """
        A new SessionStats names its transfer and has counted nothing: no
        end, no outcome, no error, RFC 1350's block size and a window of
        one, no session id or request.
        """
        stats = session()
        self.assertEqual(
            (stats.peer, stats.server_addr, stats.file_path), (PEER, SERVER, "pxelinux.0")
        )
        self.assertEqual((stats.local_addr, stats.mode), (None, "octet"))
        self.assertEqual((stats.options_in, stats.options_acked), ({}, {}))
        self.assertEqual((stats.blksize, stats.windowsize, stats.size), (512, 1, None))
        self.assertEqual(
            (
                stats.packets_sent,
                stats.packets_acked,
                stats.blocks_sent,
                stats.bytes_sent,
                stats.retransmits,
            ),
            (0, 0, 0, 0, 0),
        )
        self.assertEqual(
            (stats.outcome, stats.error_code, stats.error_message), (None, None, "")
        )
        self.assertEqual(
            (stats.end_time, stats.first_data_time, stats.last_ack_time),
            (None, None, None),
        )
        self.assertEqual((stats.session_id, stats.request), (None, None))

    def test_options_not_shared(self):
        """
        Each SessionStats has option dictionaries of its own.
        """
        first, second = session(), session()
        first.options_in["blksize"] = "1468"
        self.assertEqual(second.options_in, {})
        self.assertIsNot(first.options_acked, second.options_acked)

    def test_duration(self):
        """
        C{duration} is L{None} while the transfer runs, then the seconds from
        the request to the end.
        """
        stats = session(start_time=100.0)
        self.assertIsNone(stats.duration)
        stats.end_time = 102.5
        self.assertEqual(stats.duration, 2.5)

    def test_handler_latency(self):
        """
        C{handler_latency} is L{None} until the first DATA or OACK is sent,
        then the seconds from the request to it.
        """
        stats = session(start_time=100.0)
        self.assertIsNone(stats.handler_latency)
        stats.first_data_time = 100.25
        self.assertEqual(stats.handler_latency, 0.25)

    def test_identity_carried(self):
        """
        The session id and the request given are kept as they are, so a
        callback can tell which request a result belongs to.
        """
        request = Request(PEER, SERVER, "/pxelinux.0", "pxelinux.0")
        stats = session(session_id=7, request=request)
        self.assertEqual(stats.session_id, 7)
        self.assertIs(stats.request, request)

    def test_compared_by_identity(self):
        """
        Two SessionStats with the same figures are still two transfers, and
        each can be kept in a set or as a dictionary key.
        """
        first, second = session(), session()
        self.assertNotEqual(first, second)
        self.assertEqual(len({first, second}), 2)

    def test_fields_only(self):
        """
        A SessionStats has its fields and nothing else: a misspelt field is
        an error, not a new attribute that nothing reads.
        """
        stats = session()
        with self.assertRaises(AttributeError):
            stats.retransmit = 1


class SessionIdentityTests(SynchronousTestCase):
    """
    The L{SessionStats} a L{TFTPServer} gives its session callback say which
    transfer and which request they are about.
    """

    def serve(self, handler, *paths):
        """
        Fetch each of C{paths} in turn from the same peer and port on a new
        server, and return the stats its session callback got.
        """
        reactor = FakeUDPReactor()
        finished = []
        server = TFTPServer(handler, reactor=reactor, session_callback=finished.append)
        listener = reactor.listenUDP(69, server, interface="0.0.0.0")
        for path in paths:
            listener.deliver(wire.ReadRequest(path, "octet").encode(), PEER, SERVER[0])
            reactor.ports[-1].deliver(wire.Ack(1).encode(), PEER)
        return finished

    def test_session_ids_count_from_one(self):
        """
        A server numbers its transfers from 1; another server starts again
        from 1.
        """
        files = {"a": b"first", "b": b"second"}
        ids = [stats.session_id for stats in self.serve(MemoryHandler(files), "a", "b")]
        self.assertEqual(ids, [1, 2])
        (again,) = self.serve(MemoryHandler(files), "a")
        self.assertEqual(again.session_id, 1)

    def test_request_is_the_handlers(self):
        """
        C{request} is the very L{Request} the handler was asked about, even
        when one peer fetches twice from one port.
        """
        handler = MemoryHandler({"a": b"first", "b": b"second"})
        finished = self.serve(handler, "a", "b")
        self.assertEqual([stats.outcome for stats in finished], [Outcome.COMPLETED] * 2)
        self.assertIs(finished[0].request, handler.requests[0])
        self.assertIs(finished[1].request, handler.requests[1])


class ServerStatsTests(SynchronousTestCase):
    """
    A server's L{ServerStats}: counters by name, and the transfers in
    flight.
    """

    def test_increment(self):
        """
        C{increment} adds one, or the amount given; a counter never counted
        reads as 0.
        """
        stats = ServerStats()
        stats.increment("requests.read")
        stats.increment("requests.read", 2)
        self.assertEqual(stats.counters["requests.read"], 3)
        self.assertEqual(stats.counters["requests.write"], 0)

    def test_active_sessions(self):
        """
        C{active_sessions} counts transfers started and not yet ended.
        """
        stats = ServerStats()
        stats.session_started()
        stats.session_started()
        stats.session_ended(session(outcome=Outcome.COMPLETED))
        self.assertEqual(stats.active_sessions, 1)

    def test_ended_sessions_folded_in(self):
        """
        Each ended transfer counts its outcome, and adds its bytes, packets,
        retransmissions and spurious timeouts to the server's.
        """
        stats = ServerStats()
        for outcome, sent, packets, retransmits, spurious in [
            (Outcome.COMPLETED, 1300, 3, 0, 0),
            (Outcome.COMPLETED, 512, 2, 1, 1),
            (Outcome.TIMEOUT, 1024, 8, 6, 0),
        ]:
            stats.session_started()
            stats.session_ended(
                session(
                    outcome=outcome,
                    bytes_sent=sent,
                    packets_sent=packets,
                    retransmits=retransmits,
                    spurious_rtos=spurious,
                )
            )
        counters = stats.counters
        self.assertEqual(counters["outcome.completed"], 2)
        self.assertEqual(counters["outcome.timeout"], 1)
        self.assertEqual(counters["bytes_sent"], 2836)
        self.assertEqual(counters["packets_sent"], 13)
        self.assertEqual(counters["retransmits"], 7)
        self.assertEqual(counters["spurious_rtos"], 1)
        self.assertEqual(stats.active_sessions, 0)

    def test_errors_by_code_except_probes(self):
        """
        A transfer that ended with an error counts in C{errors.<code>};
        a size probe (the client's ERROR after the OACK) is not an error and
        counts only as a probe.
        """
        stats = ServerStats()
        for outcome, code in [
            (Outcome.PEER_ERROR, 0),
            (Outcome.REFUSED, 1),
            (Outcome.REFUSED, 1),
            (Outcome.PROBE, 8),
            (Outcome.COMPLETED, None),
        ]:
            stats.session_started()
            stats.session_ended(session(outcome=outcome, error_code=code))
        errors = {
            name: count
            for name, count in stats.counters.items()
            if name.startswith("errors.")
        }
        self.assertEqual(errors, {"errors.0": 1, "errors.1": 2})
        self.assertEqual(stats.counters["outcome.probe"], 1)

    def test_get_and_reset_all_counters(self):
        """
        C{get_and_reset_all_counters} returns every counter as a dictionary
        of its own and starts them all again from zero, so each periodic
        report has the counts of its interval; transfers in flight stay
        counted.
        """
        stats = ServerStats()
        stats.increment("requests.read", 4)
        stats.session_started()
        first = stats.get_and_reset_all_counters()
        self.assertEqual(first, {"requests.read": 4})
        stats.increment("requests.read")
        self.assertEqual(stats.get_and_reset_all_counters(), {"requests.read": 1})
        self.assertEqual(first, {"requests.read": 4})
        self.assertEqual(stats.get_and_reset_all_counters(), {})
        self.assertEqual(stats.active_sessions, 1)

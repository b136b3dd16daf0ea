"""
The real server on loopback under a bounded storm of random datagrams, to
its listener and to the ports of transfers running meanwhile: the run of
C{benchmarks/fuzz.py} (see its docstring for the roles of the client
sockets and the rules each one checks), a few thousand datagrams long.
"""

from __future__ import annotations

import importlib.util
import os
import random
import socket
import time

from twisted.internet import defer, task
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tftpd_tx import FilesystemHandler, ResponseData, Settings, TFTPService

_spec = importlib.util.spec_from_file_location(
    "fuzz", os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "fuzz.py")
)
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

#: Datagrams the run sends: about a second of sending.
COUNT = 5000
#: Short waits, so that every transfer the run leaves behind ends within a
#: second: 0.05 + 0.1 + 0.2 s after its last progress, and the hold time
#: for those that negotiated a timeout.
SETTINGS = dict(timeout=0.05, retries=2, hold_time=1.0)


class RandomDatagramTests(TestCase):
    """
    Random datagrams from every kind of sender.
    """

    timeout = 60

    def setUp(self):
        self.seed = random.randrange(2**32)
        self.content = fuzz.files(self.seed)
        root = self.mktemp()
        os.makedirs(root)
        for name, data in self.content.items():
            with open(os.path.join(root, name), "wb") as f:
                f.write(data)
        self.service = TFTPService(
            FilesystemHandler(root),
            port=0,
            interface=fuzz.SERVER_HOST,
            settings=Settings(**SETTINGS),
        )
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.address = (fuzz.SERVER_HOST, self.service.port.getHost().port)

    def transfer_ports(self):
        """
        The ports of the transfers running now (called from the fuzzing
        thread: the copy of the dictionary's values is atomic).
        """
        sessions = list(self.service.server.sessions.values())
        return {session.stats.local_addr for session in sessions} - {None}

    @defer.inlineCallbacks
    def until_no_transfers(self, most: float = 10.0):
        """
        Wait until every transfer has ended.
        """
        from twisted.internet import reactor

        deadline = time.monotonic() + most
        while self.service.server.sessions and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.service.server.sessions, {}, f"seed {self.seed}")

    @defer.inlineCallbacks
    def test_random_datagrams(self):
        """
        After a few thousand random datagrams to the listener and to
        running transfers, from high ports and from ports below 1024: no
        error was logged; nothing reached a port below 1024 or a sender of
        ERRORs; no sender got more than the rules allow for what it sent
        (one reply a datagram, two for an RRQ never acknowledged, one window
        and its retransmissions for an ACK); every DATA of the transfers
        run meanwhile held the file's bytes; every transfer ended; and the
        server still serves the file byte for byte, lock-step and windowed.
        """
        fuzzer = fuzz.Fuzzer(
            self.address, self.content, self.seed, os.geteuid() == 0, self.transfer_ports
        )
        self.addCleanup(fuzzer.close)
        yield deferToThread(fuzzer.run, COUNT)
        fuzzer.end_transfers()
        yield self.until_no_transfers()
        yield deferToThread(fuzzer.settle, 0.3)
        resends = fuzz.most_resends(**SETTINGS)
        self.assertEqual(fuzzer.violations(resends), [], f"seed {self.seed}")
        self.assertGreaterEqual(fuzzer.sent, COUNT)
        # The run reached running transfers, and transfers ran through it.
        self.assertGreater(fuzzer.replies()["ERROR 5"], 0)
        self.assertGreater(sum(client.completed for client in fuzzer.by_role["client"]), 0)
        plain = yield deferToThread(fuzz.fetch, self.address, "big.bin")
        windowed = yield deferToThread(
            fuzz.fetch, self.address, "big.bin", {"blksize": "1428", "windowsize": "8"}
        )
        self.assertEqual(plain, self.content["big.bin"], f"seed {self.seed}")
        self.assertEqual(windowed, self.content["big.bin"], f"seed {self.seed}")


class NeverAnswered(ResponseData):
    """
    Content whose read never comes back (a handler stuck on a backend).
    """

    def read(self, n):
        return defer.Deferred()


class StuckHandler:
    def get_response_data(self, request):
        return NeverAnswered()


class SlowContentTests(TestCase):
    """
    Content that does not come, on the real transfer sockets.
    """

    timeout = 30

    @defer.inlineCallbacks
    def test_read_that_never_returns_ends_on_schedule(self):
        """
        A transfer whose first read has not come back when its first wait
        ends has nothing to send again: the timer sends nothing (the
        transfer socket is never handed an empty window), and the transfer
        ends as a timeout when its schedule does (here after 0.05 and 0.1 s:
        its peer never acknowledged anything), with no error logged.
        """
        from twisted.internet import reactor

        outcomes = []
        service = TFTPService(
            StuckHandler(),
            port=0,
            interface="127.0.0.1",
            settings=Settings(**SETTINGS),
            session_callback=lambda stats: outcomes.append(stats.outcome),
        )
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(client.close)
        client.sendto(b"\0\1file\0octet\0", ("127.0.0.1", service.port.getHost().port))
        yield task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(outcomes, ["timeout"])
        self.assertEqual(service.server.sessions, {})

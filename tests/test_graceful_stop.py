"""
SIGTERM to C{twistd tftp} drains: the transfers in flight go on for up to
C{--shutdown-grace} seconds, the ones still running then get ERROR 0, and
the process exits cleanly; a second SIGTERM stops at once.  A real process,
raw-socket clients whose pace the test sets (the fast ones acknowledge at
once, the slow ones one block a second).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from clients import make_directory, random_file
from ops_helpers import PacedTransfer, Twistd, start_transfers, wait_for

FAST, SLOW = 15, 5
GRACE = 3.0
#: blksize 512: the fast file is 61 blocks, the slow one 40 (40 s at one
#: block a second, far past the grace).
FAST_SIZE, SLOW_SIZE = 30 * 1024 + 100, 40 * 512 - 7

#: A clean twistd stop after SIGTERM: twistd ends itself with the signal it
#: got once the reactor has stopped (or exits 0).
CLEAN_EXITS = (0, -signal.SIGTERM)


class GracefulStopTests(SynchronousTestCase):
    """
    C{twistd tftp --shutdown-grace 3}, stopped by SIGTERM with 20 transfers
    running, 5 of them slow; the fast ones wait at their second block until
    the test lets them go.
    """

    def setUp(self):
        directory = make_directory(self)
        root = os.path.join(directory, "root")
        os.mkdir(root)
        self.fast_content = random_file(root, "fast.bin", FAST_SIZE)
        self.slow_content = random_file(root, "slow.bin", SLOW_SIZE)
        self.disable_file = os.path.join(directory, "disabled")
        self.server = Twistd(
            root, "--shutdown-grace", f"{GRACE:g}", "--disable-file", self.disable_file,
            cwd=directory,
        )  # fmt: skip
        self.addCleanup(self.server.stop)
        self.server.wait_ready()
        self.gate = threading.Event()
        address = self.server.address
        self.fast = [PacedTransfer(address, "fast.bin", gate=self.gate) for _ in range(FAST)]
        self.slow = [PacedTransfer(address, "slow.bin", pace=1.0) for _ in range(SLOW)]
        self.thread = start_transfers(self.fast + self.slow, 40)
        self.addCleanup(self.thread.join, 45)
        self.addCleanup(self.gate.set)
        wait_for(
            lambda: all(t.acknowledged for t in self.fast + self.slow),
            10,
            "every transfer's first block acknowledged",
        )

    def test_fast_finish_slow_cut_clean_exit(self):
        """
        The 15 fast transfers complete byte for byte; the 5 slow ones get
        ERROR 0 "Server shutting down" at the grace deadline, 3 s after
        SIGTERM; twistd exits cleanly and logs the counts; the disable file
        is gone after exit.
        """
        server = self.server
        code, body = server.get("/health")
        self.assertEqual((code, json.loads(body)["transfers"]), (200, FAST + SLOW))
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        server.wait_line(lambda line: f"Stopping: {FAST + SLOW} transfers in flight" in line, 5)
        self.gate.set()
        self.thread.join(20)
        status = server.wait(20)
        log = server.output()

        self.assertIn(status, CLEAN_EXITS, log)
        for transfer in self.fast:
            self.assertEqual((transfer.completed, transfer.error), (True, None))
            self.assertEqual(bytes(transfer.content), self.fast_content)
        for transfer in self.slow:
            self.assertEqual(transfer.error, (0, "Server shutting down"), transfer)
            cut_after = transfer.error_at - signalled
            self.assertTrue(GRACE - 0.5 <= cut_after <= GRACE + 1.5, cut_after)
            self.assertTrue(0 < len(transfer.content) < SLOW_SIZE, len(transfer.content))
            self.assertTrue(self.slow_content.startswith(bytes(transfer.content)))
        self.assertIn(
            f"Stopped: {FAST} of {FAST + SLOW} transfers finished while draining,"
            f" {SLOW} cut at the grace deadline",
            log,
        )
        self.assertIn("Server Shut Down.", log)
        self.assertNotIn("Traceback", log)
        self.assertFalse(os.path.exists(self.disable_file))

    def test_health_says_draining_during_the_drain(self):
        """
        Between SIGTERM and exit, C{/health} answers 200 "draining",
        C{/ready} 503, and the disable file exists; it is gone after exit.
        """
        server = self.server
        server.signal(signal.SIGTERM)
        server.wait_line(lambda line: "Stopping: " in line, 5)

        def draining():
            code, body = server.get("/health", 0.5)
            return code == 200 and json.loads(body)["state"] == "draining"

        try:
            wait_for(draining, 1.5, "/health saying draining")
            self.assertEqual(server.get("/ready")[0], 503)
            wait_for(lambda: os.path.exists(self.disable_file), 1.5, "the disable file")
        finally:
            self.gate.set()
            server.wait(20)
        self.assertFalse(os.path.exists(self.disable_file))

    def test_second_sigterm_stops_at_once(self):
        """
        A second SIGTERM during the drain ends it at once: every transfer
        still running (the fast ones, held, and the slow ones) gets ERROR 0
        "Server shutting down" well before the grace deadline, and twistd
        exits cleanly, saying why.
        """
        server = self.server
        server.signal(signal.SIGTERM)
        server.wait_line(lambda line: "Stopping: " in line, 5)
        # The drain logs "Stopping" just before it takes SIGTERM and SIGINT
        # over from twistd: a signal in between is twistd's.
        time.sleep(0.5)
        second = time.monotonic()
        server.signal(signal.SIGTERM)
        status = server.wait(10)
        exited = time.monotonic() - second
        self.thread.join(10)
        log = server.output()

        self.assertIn(status, CLEAN_EXITS, log)
        self.assertLess(exited, GRACE - 1, log)
        for transfer in self.fast + self.slow:
            self.assertEqual(transfer.error, (0, "Server shutting down"), transfer)
            self.assertLess(transfer.error_at - second, 1)
        self.assertIn(
            f"Stopped: 0 of {FAST + SLOW} transfers finished while draining,"
            f" {FAST + SLOW} cut at a second signal",
            log,
        )
        self.assertNotIn("Traceback", log)

"""
The BGP speaker's side of the operations plane, run for real: ExaBGP's own
healthcheck (Debian's C{exabgp}) with C{--disable} on the server's disable
file, and contrib/exabgp/tftpd-health.py, each against C{twistd tftp --ops},
read through the announcements they print for ExaBGP.

The route is 203.0.113.69/32 (TEST-NET-3); ExaBGP's healthcheck is told
C{--no-ip-setup}, so no interface is touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

from twisted.trial.unittest import SynchronousTestCase

from clients import make_directory, random_file
from ops_helpers import (
    CONTRIB_HEALTH,
    Child,
    PacedTransfer,
    Twistd,
    require_program,
    start_transfers,
    wait_for,
)

PREFIX = "203.0.113.69/32"
UP_MED, DISABLED_MED, DOWN_MED = 100, 500, 1000
UP = f"announce route {PREFIX} next-hop self med {UP_MED}"
DISABLED = f"announce route {PREFIX} next-hop self med {DISABLED_MED}"
DOWN = f"announce route {PREFIX} next-hop self med {DOWN_MED}"
WITHDRAWN = f"withdraw route {PREFIX} next-hop self"

#: Checks are a second apart: a change shows within a few.
CHANGE_WITHIN = 8.0


def _routes(speaker: Child) -> list[str]:
    """
    The commands for ExaBGP that C{speaker} printed, in order (its log lines
    left out).
    """
    return [line for line in speaker.lines() if line.startswith(("announce ", "withdraw "))]


def _changes(routes: list[str]) -> list[str]:
    """
    C{routes} with repeats collapsed: ExaBGP's healthcheck says its state
    again at every check.
    """
    return [line for i, line in enumerate(routes) if i == 0 or routes[i - 1] != line]


class _Speakers(SynchronousTestCase):
    """
    A C{twistd tftp} with C{--ops} and C{--disable-file}, and the speaker
    under test started against it.
    """

    #: More arguments for twistd.
    twistd_arguments: tuple[str, ...] = ()

    def setUp(self):
        self.directory = make_directory(self)
        self.root = os.path.join(self.directory, "root")
        os.mkdir(self.root)
        random_file(self.root, "slow.bin", 64 * 512)
        self.disable_file = os.path.join(self.directory, "tftpd.disabled")
        self.server = Twistd(
            self.root, "--disable-file", self.disable_file, "--shutdown-grace", "10",
            *self.twistd_arguments, cwd=self.directory,
        )  # fmt: skip
        self.addCleanup(self.server.stop)
        self.server.wait_ready()
        self.health_url = self.server.url("/health")

    def expect(self, speaker: Child, line: str) -> None:
        """
        Wait until the last route C{speaker} printed is C{line}.
        """
        wait_for(
            lambda: _routes(speaker)[-1:] == [line],
            CHANGE_WITHIN,
            lambda: f"{line!r}; it printed:\n{speaker.output()}",
            interval=0.1,
        )

    def next_change(self, speaker: Child, timeout: float = CHANGE_WITHIN) -> str:
        """
        The first route C{speaker} prints that differs from its last one.
        """
        last = _routes(speaker)[-1]
        return wait_for(
            lambda: next((r for r in _routes(speaker)[::-1] if r != last), None),
            timeout,
            lambda: f"a change from {last!r}; it printed:\n{speaker.output()}",
            interval=0.1,
        )

    def hold_transfers(self, count: int) -> threading.Event:
        """
        Start C{count} transfers of C{slow.bin} that stay under way (each
        waits at its second block) until the Event returned is set.
        """
        gate = threading.Event()
        transfers = [
            PacedTransfer(self.server.address, "slow.bin", gate=gate) for _ in range(count)
        ]
        thread = start_transfers(transfers, 60)
        self.addCleanup(thread.join, 65)
        self.addCleanup(gate.set)
        wait_for(lambda: all(t.acknowledged for t in transfers), 10, "transfers under way")
        return gate

    def kill_while_draining(self, speaker: Child) -> None:
        """
        POST /drain, wait for the disable file and for C{speaker} to say
        the disabled metric, then C{kill -9} the server: the file stays
        behind.
        """
        self.assertEqual(self.server.post("/drain")[0], 200)
        wait_for(lambda: os.path.exists(self.disable_file), 3, "the disable file")
        self.expect(speaker, DISABLED)
        self.server.signal(signal.SIGKILL)
        self.server.wait(10)
        self.assertTrue(os.path.exists(self.disable_file))


class HealthcheckTests(_Speakers):
    """
    ExaBGP's healthcheck: C{curl -fsS} on C{/health}, C{--disable} on the
    server's disable file, one check a second, one check to rise or fall.
    """

    def healthcheck(self, *more: str) -> Child:
        program = require_program("exabgp-healthcheck")
        require_program("curl")
        speaker = Child(
            [
                program, "--no-syslog", "--no-ack", "--interval", "1", "--fast-interval", "1",
                "--rise", "1", "--fall", "1", "--timeout", "3",
                "--cmd", f"curl -fsS --noproxy '*' --max-time 2 {self.health_url}",
                "--disable", self.disable_file, "--ip", PREFIX, "--no-ip-setup",
                "--up-metric", str(UP_MED), "--disabled-metric", str(DISABLED_MED),
                "--down-metric", str(DOWN_MED), *more,
            ],
            cwd=self.directory,
        )  # fmt: skip
        self.addCleanup(speaker.stop)
        return speaker

    def test_drain_resume_kill(self):
        """
        The up metric at start; the disabled metric after POST /drain (the
        disable file appears); the up metric again after POST /resume; the
        down metric once the server is killed.
        """
        speaker = self.healthcheck()
        self.expect(speaker, UP)
        self.assertEqual(self.server.post("/drain")[0], 200)
        self.expect(speaker, DISABLED)
        self.assertEqual(self.server.post("/resume")[0], 200)
        self.expect(speaker, UP)
        self.server.signal(signal.SIGKILL)
        self.expect(speaker, DOWN)
        self.assertEqual(_changes(_routes(speaker)), [UP, DISABLED, UP, DOWN])

    def test_withdraw_on_down(self):
        """
        With C{--withdraw-on-down}, a server killed has its route withdrawn;
        but so has a server that drains: that option withdraws in the
        disabled state too, so the stock healthcheck cannot both keep a
        draining server's route, inferior, and withdraw a dead one's.
        """
        speaker = self.healthcheck("--withdraw-on-down")
        self.expect(speaker, UP)
        self.assertEqual(self.server.post("/drain")[0], 200)
        self.expect(speaker, WITHDRAWN)
        self.assertEqual(self.server.post("/resume")[0], 200)
        self.expect(speaker, UP)
        self.server.signal(signal.SIGKILL)
        self.expect(speaker, WITHDRAWN)
        self.assertEqual(_changes(_routes(speaker)), [UP, WITHDRAWN, UP, WITHDRAWN])

    def test_disable_file_left_behind_wins(self):
        """
        Why the contrib process exists: a server killed while draining
        leaves its disable file, and ExaBGP's healthcheck, for which the
        file wins over the failing check, goes on announcing the route with
        the disabled metric (here for 4 more checks) to a server that is
        gone, never the down metric.
        """
        speaker = self.healthcheck()
        self.expect(speaker, UP)
        self.kill_while_draining(speaker)
        killed = len(_routes(speaker))
        wait_for(lambda: len(_routes(speaker)) >= killed + 4, 10, "4 more checks")
        self.assertEqual(_changes(_routes(speaker)), [UP, DISABLED])

    def test_sigterm_with_a_grace(self):
        """
        SIGTERM while a transfer runs (grace 10 s): the disabled metric
        while it drains, not the down metric.
        """
        speaker = self.healthcheck()
        self.expect(speaker, UP)
        self.hold_transfers(1)
        self.server.signal(signal.SIGTERM)
        self.assertEqual(self.next_change(speaker), DISABLED)


class ContribProcessTests(_Speakers):
    """
    contrib/exabgp/tftpd-health.py: C{GET /health} itself, one line per
    change.
    """

    twistd_arguments = ("--max-sessions", "2", "--max-sessions-per-client", "2")

    def contrib(self) -> Child:
        speaker = Child(
            [
                sys.executable, CONTRIB_HEALTH, "--url", self.health_url, "--prefix", PREFIX,
                "--up-med", str(UP_MED), "--disabled-med", str(DISABLED_MED),
                "--interval", "1", "--timeout", "2",
            ],
            cwd=self.directory,
            # ExaBGP's acknowledgements would come here; open, it keeps the
            # process running.
            stdin=subprocess.PIPE,
        )  # fmt: skip
        self.addCleanup(speaker.stop)
        return speaker

    def test_drain_resume_degraded_kill_while_draining(self):
        """
        The up MED at start; the disabled MED while draining and the up MED
        after resume; the disabled MED while degraded (2 transfers, at the
        cap of 2); and a withdrawal when the server is killed while
        draining, though its disable file is left behind.  One line each.
        """
        speaker = self.contrib()
        self.expect(speaker, UP)
        self.assertEqual(self.server.post("/drain")[0], 200)
        self.expect(speaker, DISABLED)
        self.assertEqual(self.server.post("/resume")[0], 200)
        self.expect(speaker, UP)
        gate = self.hold_transfers(2)
        code, body = self.server.get("/health")
        self.assertEqual((code, json.loads(body)["state"]), (200, "degraded"))
        self.expect(speaker, DISABLED)
        gate.set()
        self.expect(speaker, UP)
        self.kill_while_draining(speaker)
        self.expect(speaker, WITHDRAWN)
        self.assertEqual(_routes(speaker), [UP, DISABLED, UP, DISABLED, UP, DISABLED, WITHDRAWN])

    def test_sigterm_stops_announcing(self):
        """
        SIGTERM to the process withdraws what it announced, and it exits 0.
        """
        speaker = self.contrib()
        self.expect(speaker, UP)
        speaker.signal(signal.SIGTERM)
        self.assertEqual(speaker.wait(5), 0)
        self.assertEqual(_routes(speaker), [UP, WITHDRAWN])

    def test_server_sigterm_with_a_grace(self):
        """
        SIGTERM to the server while a transfer runs (grace 10 s): the
        disabled MED while it drains, then a withdrawal once it has exited.
        """
        speaker = self.contrib()
        self.expect(speaker, UP)
        self.hold_transfers(1)
        self.server.signal(signal.SIGTERM)
        self.assertEqual(self.next_change(speaker), DISABLED)


class ContribConfigurationTests(SynchronousTestCase):
    """
    The example configuration in contrib/exabgp.
    """

    def test_exabgp_accepts_it(self):
        """
        C{exabgp --validate} accepts contrib/exabgp/exabgp.conf.
        """
        program = require_program("exabgp")
        directory = make_directory(self)
        config = os.path.join(os.path.dirname(CONTRIB_HEALTH), "exabgp.conf")
        result = subprocess.run(
            [program, "--validate", config], cwd=directory, capture_output=True,
            text=True, timeout=60, env={**os.environ, "exabgp_log_destination": "stdout"},
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

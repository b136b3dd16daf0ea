"""
The operator core without SSH: L{tftpd_tx.operator.Operator}'s data, the
text made of it and the prompt namespace, against a server on a fake
reactor.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

import tftpd_tx
from tftpd_tx import wire
from tftpd_tx.operator import KILL_MESSAGE, Operator, make_namespace
from tftpd_tx.options import Limits
from tftpd_tx.server import TFTPServer
from tftpd_tx.settings import SCHEMA, Settings
from tftpd_tx.stats import Outcome
from tftpd_tx.testing import FakeUDPReactor, MemoryHandler

CLIENT = ("198.51.100.20", 3000)
OTHER = ("198.51.100.21", 4000)
FILES = {"boot/pxelinux.0": b"p" * 5000, "small.cfg": b"default local\n"}


def rrq(path, **options):
    options = {name: str(value) for name, value in options.items()}
    return wire.ReadRequest(path, "octet", options).encode()


def ack(block):
    return struct.pack("!HH", 4, block)


class ServerMixin:
    """
    A server on a fake reactor, a transfer port per request, the
    L{Operator} of that server and a prompt namespace for it.
    """

    def setUp(self):
        self.reactor = FakeUDPReactor()
        self.reactor.advance(1000)
        self.finished = []
        self.server = TFTPServer(
            MemoryHandler(dict(FILES)),
            Settings(limits=Limits(max_blksize=1024)),
            reactor=self.reactor,
            session_callback=self.finished.append,
        )
        self.listener = self.reactor.listenUDP(69, self.server, interface="0.0.0.0")
        self.operator = Operator(self.server, self.reactor)
        self.ns = make_namespace(self.server, self.reactor)

    def start(self, path="boot/pxelinux.0", peer=CLIENT, **options):
        """
        Start a transfer of C{path} for C{peer}; return its port.
        """
        self.listener.deliver(rrq(path, **options), peer, "192.0.2.1")
        return self.reactor.ports[-1]


class ImportTests(SynchronousTestCase):
    """
    The operator core stands apart from SSH.
    """

    def test_no_conch(self):
        """
        Importing L{tftpd_tx.operator} imports nothing of Twisted Conch.
        """
        code = (
            "import sys, tftpd_tx.operator\n"
            "print([m for m in sys.modules if m.startswith('twisted.conch')])"
        )
        checkout = os.path.dirname(os.path.dirname(tftpd_tx.__file__))
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": checkout},
        )
        self.assertEqual(result.stdout.strip(), "[]")


class StatusTests(ServerMixin, SynchronousTestCase):
    """
    L{Operator.status}, L{Operator.drain} and L{Operator.resume}.
    """

    def test_idle(self):
        """
        A new server serves, with no transfer.
        """
        self.assertEqual(self.operator.status(), {"draining": False, "transfers": 0})

    def test_drain_and_resume(self):
        """
        C{drain()} and C{resume()} return the status after them, which
        counts the transfers still in flight.
        """
        self.start()
        self.assertEqual(self.operator.drain(), {"draining": True, "transfers": 1})
        self.assertTrue(self.server.draining)
        self.assertEqual(self.operator.resume(), {"draining": False, "transfers": 1})
        self.assertFalse(self.server.draining)


class TransfersTests(ServerMixin, SynchronousTestCase):
    """
    L{Operator.transfers}: each live transfer as a dictionary.
    """

    def test_idle(self):
        """
        No transfer, no row.
        """
        self.assertEqual(self.operator.transfers(), [])

    def test_one_transfer(self):
        """
        A transfer's row has its id, peer, local address (its own port),
        path, blocks acknowledged, block size, window, bytes sent and in
        all, retransmits, age, seconds since the last ACK, and its round
        trip (RFC 6298: samples of 0.5 and 0.75 s) and retransmit wait.
        """
        port = self.start(blksize=1000)
        self.reactor.advance(0.5)
        port.deliver(ack(0), CLIENT)
        self.reactor.advance(0.75)
        port.deliver(ack(1), CLIENT)
        self.reactor.advance(0.25)
        self.assertEqual(
            self.operator.transfers(),
            [
                {
                    "id": 1,
                    "peer": CLIENT,
                    "local": ("192.0.2.1", port.port),
                    "path": "boot/pxelinux.0",
                    "block": 1,
                    "blksize": 1000,
                    "window": 1,
                    "sent": 2000,
                    "total": 5000,
                    "retransmits": 0,
                    "age": 1.5,
                    "since_last_ack": 0.25,
                    "srtt": 0.53125,
                    "rto": 1.53125,
                }
            ],
        )

    def test_by_id(self):
        """
        Transfers are listed by id; one never acknowledged has no time since
        its last ACK, and one of unknown size no total.
        """
        self.start()
        self.start("small.cfg", peer=OTHER)
        rows = self.operator.transfers()
        self.assertEqual([row["id"] for row in rows], [1, 2])
        self.assertEqual([row["since_last_ack"] for row in rows], [None, None])

    def test_plain_values(self):
        """
        Every answer is plain data: it survives a round trip through JSON.
        """
        port = self.start()
        port.deliver(ack(1), CLIENT)
        operator = self.operator
        for data in [operator.status(), operator.transfers(), operator.transfer(1),
                     operator.counters(), operator.settings()]:  # fmt: skip
            json.dumps(data)


class TransferTests(ServerMixin, SynchronousTestCase):
    """
    L{Operator.transfer}: everything about one transfer.
    """

    def test_everything(self):
        """
        One transfer's dictionary is its row, every field of its
        SessionStats (the request as a dictionary, the duration and handler
        latency too), and the clock reading of the ages.
        """
        port = self.start()
        self.reactor.advance(0.5)
        port.deliver(ack(1), CLIENT)
        transfer = self.operator.transfer(1)
        self.assertEqual(transfer["block"], 1)
        self.assertEqual(transfer["now"], 1000.5)
        stats = transfer["stats"]
        self.assertEqual(stats["size"], 5000)
        self.assertEqual(stats["last_ack_time"], 1000.5)
        self.assertEqual(stats["session_id"], 1)
        self.assertEqual(stats["request"]["normalized_path"], "boot/pxelinux.0")
        self.assertEqual(stats["request"]["peer"], CLIENT)
        self.assertIsNone(stats["duration"])
        self.assertEqual(list(stats)[-2:], ["duration", "handler_latency"])

    def test_unknown(self):
        """
        An id that is not a live transfer gives L{None}.
        """
        self.assertIsNone(self.operator.transfer(7))


class KillTests(ServerMixin, SynchronousTestCase):
    """
    L{Operator.kill}.
    """

    def test_kill(self):
        """
        The transfer ends, its client reads L{KILL_MESSAGE}, the kill is
        counted, and the answer is the transfer's row as it was.
        """
        port = self.start()
        port.take()
        before = self.operator.transfers()
        killed = self.operator.kill(1)
        self.assertEqual([killed], before)
        self.assertEqual(port.take(), [wire.Error(0, KILL_MESSAGE).encode()])
        self.assertEqual(self.operator.transfers(), [])
        self.assertEqual(self.finished[0].outcome, Outcome.ABORTED)
        self.assertEqual(self.operator.counters()["sessions.killed"], 1)

    def test_unknown(self):
        """
        Killing an id that is not live gives L{None} and counts nothing.
        """
        self.assertIsNone(self.operator.kill(3))
        self.assertNotIn("sessions.killed", self.operator.counters())


class CountersTests(ServerMixin, SynchronousTestCase):
    """
    L{Operator.counters}.
    """

    def test_sorted_copy(self):
        """
        The counters are a plain dictionary sorted by name, a copy: changing
        it changes nothing on the server, and reading resets nothing.
        """
        port = self.start("small.cfg")
        port.deliver(ack(1), CLIENT)
        counters = self.operator.counters()
        self.assertIs(type(counters), dict)
        self.assertEqual(list(counters), sorted(counters))
        self.assertEqual(counters["outcome.completed"], 1)
        counters["outcome.completed"] = 7
        self.assertEqual(self.operator.counters()["outcome.completed"], 1)


class SettingsTests(ServerMixin, SynchronousTestCase):
    """
    L{Operator.settings} and L{Operator.change_setting}.
    """

    def test_settings(self):
        """
        The settings are one flat dictionary, limits included.
        """
        settings = self.operator.settings()
        self.assertEqual(settings, self.server.settings.as_dict())
        self.assertEqual(settings["max_blksize"], 1024)
        self.assertEqual(settings["linger"], 0.0)

    def test_change(self):
        """
        A change says what the setting was and is, is logged, and is what
        the server's settings hold.
        """
        with capturedLogs() as events:
            change = self.operator.change_setting("max_blksize", 1428)
        self.assertEqual(change, {"setting": "max_blksize", "old": 1024, "new": 1428})
        self.assertEqual(self.server.settings.limits.max_blksize, 1428)
        (event,) = [e for e in events if e.get("setting")]
        self.assertEqual((event["old"], event["new"]), (1024, 1428))

    def test_bad_change(self):
        """
        An unknown setting, a value of the wrong type or out of bounds
        raises and changes nothing.
        """
        before = self.operator.settings()
        for name, value, error in [
            ("blksize", 512, KeyError),
            ("retries", "3", TypeError),
            ("linger", 0.5, ValueError),
        ]:
            self.assertRaises(error, self.operator.change_setting, name, value)
        self.assertEqual(self.operator.settings(), before)


class NamespaceTests(ServerMixin, SynchronousTestCase):
    """
    The names an operator finds at the prompt.
    """

    def test_live_objects(self):
        """
        C{server}, C{stats} and C{sessions} are the live objects themselves.
        """
        self.assertIs(self.ns["server"], self.server)
        self.assertIs(self.ns["stats"], self.server.stats)
        self.assertIs(self.ns["sessions"], self.server.sessions)

    def test_fresh_namespace_each_time(self):
        """
        Each login gets its own dictionary: one operator's variables do not
        appear at another's prompt.
        """
        other = make_namespace(self.server, self.reactor)
        self.ns["mine"] = 1
        self.assertNotIn("mine", other)

    def test_helpers_have_one_line_docstrings(self):
        """
        Every helper has a docstring of exactly one line.
        """
        for name in ("ls", "show", "kill", "counters", "drain", "resume", "help"):
            doc = self.ns[name].__doc__
            self.assertTrue(doc, name)
            self.assertEqual(len(doc.strip().splitlines()), 1, name)

    def test_help_lists_helpers(self):
        """
        C{help()} lists every helper with its docstring, the live objects and
        the settings, without reading from the terminal.
        """
        text = self.ns["help"]()
        for name in ("ls", "show", "kill", "counters", "drain", "resume", "help"):
            self.assertIn(self.ns[name].__doc__.strip(), text)
        for name in ("server", "stats", "sessions", "settings", "max_blksize"):
            self.assertIn(name, text)

    def test_help_on_a_thing(self):
        """
        C{help(thing)} returns its documentation as text.
        """
        self.assertIn("Stop accepting new requests", self.ns["help"](TFTPServer.drain))

    def test_text_shows_as_is(self):
        """
        Helpers return text whose representation is the text itself, so the
        prompt shows a table and not a quoted string.
        """
        listing = self.ns["ls"]()
        self.assertEqual(repr(listing), str(listing))


class ListTextTests(ServerMixin, SynchronousTestCase):
    """
    C{ls()}: the table of live transfers.
    """

    def test_idle(self):
        """
        With no transfer, C{ls()} says the server is serving and lists
        nothing.
        """
        self.assertEqual(self.ns["ls"](), "serving: 0 transfer(s) in flight")

    def test_transfer_row(self):
        """
        A row shows id, peer, local address (the transfer's port), path,
        blocks acknowledged, block size, window, bytes sent of the total,
        retransmits, age and time since the last ACK.
        """
        port = self.start(blksize=1000)
        self.reactor.advance(0.5)
        port.deliver(ack(0), CLIENT)
        self.reactor.advance(0.75)
        port.deliver(ack(1), CLIENT)
        self.reactor.advance(0.25)
        header, row = self.ns["ls"]().splitlines()[1:]
        self.assertEqual(
            header.split(),
            ["ID", "PEER", "LOCAL", "PATH", "BLOCK", "BLKSIZE", "WINDOW",
             "SENT/TOTAL", "RETX", "AGE", "LAST-ACK"],
        )  # fmt: skip
        self.assertEqual(
            row.split(),
            ["1", "198.51.100.20:3000", f"192.0.2.1:{port.port}", "boot/pxelinux.0",
             "1", "1000", "1", "2.0K/4.9K", "40%", "0", "1.5s", "0.2s"],
        )  # fmt: skip

    def test_retransmits_and_no_ack(self):
        """
        Retransmissions are counted, and a transfer never acknowledged shows
        no last-ACK time.
        """
        self.start("small.cfg")
        self.reactor.advance(1)
        (row,) = self.ns["ls"]().splitlines()[2:]
        cells = row.split()
        self.assertEqual(cells[7:9], ["14/14", "100%"])
        self.assertEqual(cells[9], "1")
        self.assertEqual(cells[11], "-")

    def test_draining_state(self):
        """
        While draining, C{ls()} says so, with the transfers still in flight.
        """
        self.start()
        self.server.drain()
        listing = self.ns["ls"]()
        self.assertTrue(listing.startswith("DRAINING: new requests are ignored; 1"))


class ShowTextTests(ServerMixin, SynchronousTestCase):
    """
    C{show(id)}: everything about one transfer.
    """

    def test_everything(self):
        """
        C{show(id)} has the progress and every field of the SessionStats so
        far.
        """
        port = self.start()
        self.reactor.advance(0.5)
        port.deliver(ack(1), CLIENT)
        text = self.ns["show"](1)
        self.assertIn("transfer 1: 'boot/pxelinux.0' to 198.51.100.20:3000", text)
        self.assertIn("1 block(s) acknowledged", text)
        for name in ("peer", "server_addr", "local_addr", "bytes_sent", "size",
                     "retransmits", "windowsize", "blksize", "start_time",
                     "last_ack_time", "packets_sent", "options_in"):  # fmt: skip
            self.assertRegex(text, rf"\n    {name} +")
        self.assertIn("size             5000", text)
        self.assertIn("last_ack_time    1000.5 (0.0s ago)", text)

    def test_unknown(self):
        """
        An id that is not a live transfer gets a hint, not a traceback.
        """
        self.assertEqual(self.ns["show"](7), "No live transfer 7; ls() lists them")


class KillTextTests(ServerMixin, SynchronousTestCase):
    """
    C{kill(id)}: the operator ends a transfer.
    """

    def test_kill(self):
        """
        The client gets ERROR 0 "terminated by operator", the transfer ends
        as aborted and lets go of its port, and the kill is counted and
        logged.
        """
        port = self.start()
        port.take()
        with capturedLogs() as events:
            text = self.ns["kill"](1)
        self.assertEqual(
            port.take(), [wire.Error(0, "terminated by operator").encode()]
        )
        self.assertFalse(port.listening)
        self.assertEqual(self.server.sessions, {})
        (stats,) = self.finished
        self.assertEqual(stats.outcome, Outcome.ABORTED)
        self.assertEqual(stats.error_message, "terminated by operator")
        self.assertEqual(self.server.stats.counters["sessions.killed"], 1)
        self.assertEqual(self.server.stats.counters["outcome.aborted"], 1)
        self.assertIn("Killed transfer 1: 'boot/pxelinux.0'", text)
        kills = [e for e in events if "session_id" in e and "outcome" not in e]
        self.assertEqual([e["session_id"] for e in kills], [1])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_kill_one_of_two(self):
        """
        Killing one transfer leaves the other running.
        """
        self.start()
        other = self.start(peer=OTHER)
        other.take()
        self.ns["kill"](1)
        self.assertEqual(list(self.server.sessions), [2])
        other.deliver(ack(1), OTHER)
        self.assertEqual(len(other.take()), 1)

    def test_kill_unknown(self):
        """
        Killing an id that is not live changes nothing and says so.
        """
        self.assertEqual(self.ns["kill"](3), "No live transfer 3; ls() lists them")
        self.assertNotIn("sessions.killed", self.server.stats.counters)


class CountersTextTests(ServerMixin, SynchronousTestCase):
    """
    C{counters()}: the server counters.
    """

    def test_counters(self):
        """
        C{counters()} is a dictionary of the counters, sorted by name, shown
        as an aligned table; reading it resets nothing.
        """
        port = self.start("small.cfg")
        port.deliver(ack(1), CLIENT)
        counters = self.ns["counters"]()
        self.assertEqual(counters["outcome.completed"], 1)
        self.assertEqual(counters["requests.read"], 1)
        self.assertEqual(list(counters), sorted(counters))
        self.assertIn("outcome.completed  1", repr(counters))
        self.assertEqual(self.ns["counters"](), counters)

    def test_no_counters(self):
        """
        Before anything happened, the table says so.
        """
        self.assertEqual(repr(self.ns["counters"]()), "(no counters yet)")


class DrainTextTests(ServerMixin, SynchronousTestCase):
    """
    C{drain()} and C{resume()}.
    """

    def test_drain_and_resume(self):
        """
        After C{drain()} a new request gets no answer at all while the
        running transfer completes; after C{resume()} requests are served.
        """
        running = self.start("small.cfg")
        self.assertIn("DRAINING", self.ns["drain"]())
        self.assertTrue(self.server.draining)
        self.listener.deliver(rrq("small.cfg"), OTHER, "192.0.2.1")
        self.assertEqual(self.listener.sent, [])
        self.assertEqual(len(self.reactor.ports), 2)
        running.deliver(ack(1), CLIENT)
        self.assertEqual(self.finished[0].outcome, Outcome.COMPLETED)
        self.assertEqual(self.ns["resume"](), "serving: 0 transfer(s) in flight")
        self.listener.deliver(rrq("small.cfg"), OTHER, "192.0.2.1")
        self.assertEqual(len(self.reactor.ports), 3)
        self.assertEqual(self.server.stats.counters["requests.drained"], 1)


class LiveSettingsTests(ServerMixin, SynchronousTestCase):
    """
    The live settings.
    """

    def test_read(self):
        """
        Every setting reads as the server's current value, and the object
        shows them all.
        """
        settings = self.ns["settings"]
        self.assertEqual(settings.max_blksize, 1024)
        self.assertEqual(settings.max_windowsize, 64)
        self.assertEqual(settings.timeout, 1.0)
        self.assertEqual(settings.retries, 5)
        self.assertEqual(settings.rollover, 0)
        self.assertEqual(settings.log_rate, 100)
        self.assertIn("max_blksize      1024", repr(settings))
        self.assertEqual(sorted(dir(settings)), sorted(row.name for row in SCHEMA))

    def test_new_transfers_use_new_limits(self):
        """
        A new max_blksize applies to transfers that start afterwards; a
        running transfer keeps what it negotiated.
        """
        running = self.start(blksize=1024)
        with capturedLogs() as events:
            self.ns["settings"].max_blksize = 600
        self.assertEqual(self.server.settings.limits.max_blksize, 600)
        self.assertEqual(self.server.settings.limits.max_windowsize, 64)
        self.assertEqual(running.take(), [wire.OptionAck({"blksize": "1024"}).encode()])
        fresh = self.start(peer=OTHER, blksize=1024)
        self.assertEqual(fresh.take(), [wire.OptionAck({"blksize": "600"}).encode()])
        running.deliver(ack(0), CLIENT)
        self.assertEqual(len(running.take()[0]), 4 + 1024)
        (event,) = [e for e in events if e.get("setting")]
        self.assertEqual((event["old"], event["new"]), (1024, 600))

    def test_new_timeout_and_retries(self):
        """
        A new timeout and retry count shape the retransmissions of new
        transfers.
        """
        settings = self.ns["settings"]
        settings.timeout = 3
        settings.retries = 0
        self.assertEqual(settings.timeout, 3.0)
        port = self.start("small.cfg")
        first = port.take()
        self.reactor.advance(2.9)
        self.assertEqual(port.take(), [])
        self.assertTrue(port.listening)
        self.reactor.advance(0.1)
        self.assertEqual(port.take(), [])
        self.assertFalse(port.listening)
        self.assertEqual(self.finished[0].outcome, Outcome.TIMEOUT)
        self.assertTrue(first)

    def test_bad_values_change_nothing(self):
        """
        A value of the wrong type or out of range raises with the allowed
        range and leaves the setting as it was.
        """
        settings = self.ns["settings"]
        for name, value, error in [
            ("max_blksize", 7, ValueError),
            ("max_blksize", 70000, ValueError),
            ("max_windowsize", 0, ValueError),
            ("timeout", 0, ValueError),
            ("retries", -1, ValueError),
            ("rollover", 2, ValueError),
            ("retries", 2.5, TypeError),
            ("max_blksize", "1428", TypeError),
            ("timeout", True, TypeError),
        ]:
            before = getattr(settings, name)
            exc = self.assertRaises(error, setattr, settings, name, value)
            self.assertIn(name, str(exc))
            self.assertEqual(getattr(settings, name), before)

    def test_unknown_setting(self):
        """
        A misspelt setting is refused with the list of real ones, instead of
        silently creating an attribute.
        """
        settings = self.ns["settings"]
        exc = self.assertRaises(AttributeError, setattr, settings, "blksize", 512)
        self.assertIn("max_blksize", str(exc))
        self.assertRaises(AttributeError, getattr, settings, "blksize")

"""
C{twistd tftp --workers N}: one supervisor and N worker processes on one
address and port that still look like one server.

The parts first, each on its own (the command line a worker parses, the
restart delays, the kernel's hash over C{SO_REUSEPORT} sockets, the host's
face over fake workers, a worker's answers on a fake reactor, the log
events a worker hands up); then real workers under an in-process
supervisor (the operator's ids and kill, drain); then C{twistd tftp
--workers 2} as an operator runs it: fetches on both workers, a
retransmitted RRQ, C{kill -9} of a worker, C{/metrics}, SIGTERM.
"""

from __future__ import annotations

import bisect
import collections
import io
import json
import os
import re
import signal
import socket
import struct
import time

from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger, formatEvent
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

import tftpd_tx
from tftpd_tx import control, wire
from tftpd_tx.host import (
    HostServer,
    Totals,
    TransferId,
    WorkersCollector,
    session_stats,
    worker_problem,
)
from tftpd_tx.operator import KILL_MESSAGE, Operator, format_transfers
from tftpd_tx.service import TFTPService
from tftpd_tx.settings import Settings
from tftpd_tx.stats import DURATION_BUCKETS, FIRST_PACKET_BUCKETS, SessionStats
from tftpd_tx.tap import Options, makeService, settings_from
from tftpd_tx.testing import FakeUDPReactor, MemoryHandler
from tftpd_tx.transport import UDPNetwork
from tftpd_tx.worker import JSONEventLines, Worker, WorkerControl, transfer_page
from tftpd_tx.workers import (
    RESTART_DELAYS,
    Supervisor,
    WorkerProcess,
    bind_sockets,
    restart_delay,
    worker_command_line,
    worker_count,
    worker_environment,
)

from clients import (
    TWISTD,
    bytes_problem,
    free_udp_port,
    make_directory,
    random_file,
    read_raw,
    rrq,
    spawn,
    twistd_environment,
)

CLIENT = ("198.51.100.20", 3000)
OTHER = ("198.51.100.21", 4000)


# -- the parts -----------------------------------------------------------------


class WorkerCountTests(SynchronousTestCase):
    """
    C{--workers}: a number, or C{auto}.
    """

    def test_number(self):
        """
        A positive number is that many workers.
        """
        self.assertEqual(worker_count("3"), 3)

    def test_auto(self):
        """
        C{auto} is one worker per CPU this process may run on.
        """
        options = Options()
        options.parseOptions(["--workers", "auto", "--root", "/", "--port", str(free_udp_port())])
        self.assertEqual(options["workers"], len(os.sched_getaffinity(0)))

    def test_refused(self):
        """
        Zero, a negative number or a word is refused, naming the option.
        """
        for text in ("0", "-2", "many"):
            options = Options()
            with self.assertRaises(usage.UsageError) as caught:
                options.parseOptions(["--workers", text, "--root", "/"])
            self.assertIn("workers", str(caught.exception))

    def test_default(self):
        """
        One worker is today's single process: C{makeService} makes a plain
        L{TFTPService}, no supervisor.
        """
        options = Options()
        options.parseOptions(["--root", "/", "--port", str(free_udp_port())])
        self.assertEqual(options["workers"], 1)
        self.assertIsInstance(makeService(options).getServiceNamed("tftp"), TFTPService)


class WorkerCommandLineTests(SynchronousTestCase):
    """
    A worker parses the command line of C{twistd tftp}, less what is the
    supervisor's.
    """

    def command_line(self, arguments):
        options = Options()
        options.parseOptions(arguments)
        return worker_command_line(options)

    def test_supervisor_options_left_out(self):
        """
        The port, the operations endpoint, the health canary, the disable
        file, the manhole and C{--workers} stay with the supervisor; the
        worker is told port 0 (it binds nothing: it is given its socket).
        """
        directory = make_directory(self)
        got = self.command_line(
            [
                "--workers", "2", "-p", str(free_udp_port()), "--interface", "127.0.0.1",
                "--root", directory, "--ops", "tcp:0:interface=127.0.0.1",
                "--health-canary", "canary", "--disable-file",
                os.path.join(directory, "disabled"), "--timeout", "3",
            ]
        )  # fmt: skip
        self.assertEqual(
            got, ["--interface=127.0.0.1", f"--root={directory}", "--timeout=3", "--port=0"]
        )

    def test_short_options_and_flags(self):
        """
        Short options become long ones, and flags stay flags.
        """
        directory = make_directory(self)
        got = self.command_line(
            ["-r", directory, "--port", str(free_udp_port()), "--allow-low-ports"]
        )
        self.assertEqual(got, [f"--root={directory}", "--allow-low-ports", "--port=0"])

    def test_parsed_again(self):
        """
        What a worker is given parses to the same settings.
        """
        directory = make_directory(self)
        given = Options()
        given.parseOptions(
            ["--root", directory, "--port", str(free_udp_port()), "--max-blksize", "1428",
             "--workers", "2"]
        )  # fmt: skip
        again = Options()
        again.parseOptions(worker_command_line(given))
        self.assertEqual(settings_from(again), settings_from(given))
        self.assertEqual(again["workers"], 1)

    def test_environment(self):
        """
        A worker imports this C{tftpd_tx}: its directory comes first on
        C{PYTHONPATH}.
        """
        environ = worker_environment({"PYTHONPATH": "/elsewhere"})
        here = os.path.dirname(os.path.dirname(os.path.abspath(tftpd_tx.__file__)))
        self.assertEqual(environ["PYTHONPATH"], os.pathsep.join([here, "/elsewhere"]))


class RestartDelayTests(SynchronousTestCase):
    """
    A worker that keeps ending is started again less and less often.
    """

    def test_grows_then_stays(self):
        """
        The first end waits the first delay; each end in a row waits the
        next; past the last, the last.
        """
        delays = [restart_delay(ends) for ends in range(1, len(RESTART_DELAYS) + 3)]
        self.assertEqual(delays[0], RESTART_DELAYS[0])
        self.assertEqual(delays, sorted(delays))
        self.assertEqual(delays[-3:], [RESTART_DELAYS[-1]] * 3)


class ReusePortTests(SynchronousTestCase):
    """
    The kernel's hash over the supervisor's C{SO_REUSEPORT} sockets keeps
    one client on one socket: what the host's duplicate-RRQ rule rests on.
    """

    def setUp(self):
        self.sockets = bind_sockets("127.0.0.1", 0, 4)
        for skt in self.sockets:
            skt.setblocking(False)
            self.addCleanup(skt.close)
        self.address = self.sockets[0].getsockname()

    def receivers(self, client: socket.socket, count: int) -> collections.Counter:
        """
        Send C{count} datagrams from C{client}; which socket got each.
        """
        for number in range(count):
            client.sendto(struct.pack("!H", number), self.address)
        got = collections.Counter()
        for _ in range(100):
            for index, skt in enumerate(self.sockets):
                try:
                    while True:
                        skt.recv(16)
                        got[index] += 1
                except BlockingIOError:
                    pass
            if sum(got.values()) == count:
                break
            time.sleep(0.01)
        return got

    def test_same_port_number(self):
        """
        Every socket is bound to the same address and port (port 0: the one
        the kernel chose for the first).
        """
        self.assertEqual({skt.getsockname() for skt in self.sockets}, {self.address})
        self.assertNotEqual(self.address[1], 0)

    def test_one_client_one_socket(self):
        """
        Fifty datagrams from one client port all reach one socket, and
        clients on many ports reach more than one.
        """
        seen = set()
        for _ in range(16):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.bind(("127.0.0.1", 0))
                got = self.receivers(client, 50)
                self.assertEqual(sum(got.values()), 50)
                self.assertEqual(len(got), 1, got)
                seen.update(got)
        self.assertGreater(len(seen), 1)


class FakeSlot:
    """
    A worker slot whose worker reports what a test says, and records what
    it is sent.
    """

    def __init__(self, index, report=None, rows=(), serving=True, reported_at=0.0):
        self.index = index
        self.report = report
        self.rows = list(rows)
        self.serving = serving
        self.state = "serving" if serving else "restarting in 0.5s"
        self.restarts = 0
        self.reported_at = reported_at
        self.retired = Totals()
        self.sent = []

    def send(self, command, **arguments):
        self.sent.append((command, arguments))


def report(completed=0, active=0, caps=(100, 25), health=None, flaps=(), durations=None):
    """
    A worker's L{control.Report}.
    """
    counts = [0] * (len(DURATION_BUCKETS) + 1)
    for value in durations or ():
        counts[bisect.bisect_left(DURATION_BUCKETS, value)] += 1
    return {
        "counters": {"outcome.completed": completed, "requests.accepted": completed + active},
        "active": active,
        "durations": {"counts": counts, "sum": float(sum(durations or ()))},
        "first_packet": {"counts": [0] * (len(FIRST_PACKET_BUCKETS) + 1), "sum": 0.0},
        "draining": False,
        "caps": list(caps),
        "health": health or {"state": "ok", "reasons": []},
        "flaps": list(flaps),
    }


def row(session_id, peer, path="boot.img", sent=1024):
    """
    A worker's L{control.Transfers} row.
    """
    return {
        "id": session_id,
        "peer": list(peer),
        "block": sent // 512,
        "stats": {
            "peer": list(peer), "server_addr": ["192.0.2.1", 69], "file_path": path,
            "local_addr": ["192.0.2.1", 40000 + session_id], "start_time": 990.0,
            "bytes_sent": sent, "size": 4096, "session_id": session_id,
            "request": {"peer": list(peer), "local": ["192.0.2.1", 69], "path": path,
                        "normalized_path": path, "mode": "octet", "options": {}},
        },
    }  # fmt: skip


class HostServerTests(SynchronousTestCase):
    """
    The workers as one server, for the operator core, the health grade and
    the metrics.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.slots = [
            FakeSlot(1, report(completed=3, active=1, durations=[0.02, 0.3]),
                     rows=[row(1, CLIENT)], reported_at=1000.0),
            FakeSlot(2, report(completed=4, active=1, durations=[0.02]),
                     rows=[row(1, OTHER, sent=2048)], reported_at=1000.0),
        ]  # fmt: skip
        self.host = HostServer(self.slots, Settings())
        self.host.update()
        self.operator = Operator(self.host, self.clock)

    def test_counters_sum(self):
        """
        The host's counters and histograms are the sums of the workers'.
        """
        self.assertEqual(self.host.stats.counters["outcome.completed"], 7)
        self.assertEqual(self.host.stats.active_sessions, 2)
        self.assertEqual(self.host.stats.durations.count, 3)
        self.assertAlmostEqual(self.host.stats.durations.sum, 0.34)

    def test_ended_worker_stays_counted(self):
        """
        What a worker that ended had counted stays in the host's counters
        (they never go down), and its successor's counts add to it.
        """
        slot = self.slots[0]
        slot.retired.add(slot.report)
        slot.report, slot.rows = report(completed=1), []
        self.host.update()
        self.assertEqual(self.host.stats.counters["outcome.completed"], 8)
        self.assertEqual(self.host.stats.durations.count, 3)

    def test_transfer_ids_say_the_worker(self):
        """
        Both workers number their transfers from 1; the host's ids say
        which worker: C{1:1} and C{2:1}, shown as such by C{ls()}.
        """
        transfers = self.operator.transfers()
        self.assertEqual([str(t["id"]) for t in transfers], ["1:1", "2:1"])
        self.assertEqual([t["peer"] for t in transfers], [CLIENT, OTHER])
        self.assertEqual(transfers[1]["sent"], 2048)
        self.assertEqual(transfers[0]["age"], 10.0)
        text = format_transfers(self.operator.status(), transfers)
        self.assertIn("serving: 2 transfer(s) in flight", text)
        self.assertRegex(text, r"\n2:1 +198\.51\.100\.21:4000")

    def test_show(self):
        """
        C{show("2:1")} has the transfer's stats, its request included.
        """
        shown = self.operator.transfer("2:1")
        self.assertEqual(shown["stats"]["peer"], OTHER)
        self.assertEqual(shown["stats"]["request"]["path"], "boot.img")
        self.assertIsNone(self.operator.transfer("3:1"))
        self.assertIsNone(self.operator.transfer(1))

    def test_kill_reaches_its_worker(self):
        """
        C{kill("2:1")} sends worker 2, and only it, the kill of its transfer
        1; the host lists it no more.
        """
        killed = self.operator.kill("2:1")
        self.assertEqual(killed["peer"], OTHER)
        self.assertEqual(self.slots[1].sent, [(control.Kill, {"session": 1})])
        self.assertEqual(self.slots[0].sent, [])
        self.assertEqual([str(t["id"]) for t in self.operator.transfers()], ["1:1"])
        self.assertIsNone(self.operator.kill("2:1"))

    def test_drain_and_resume_fan_out(self):
        """
        Drain and resume go to every worker, and a worker started while
        the host drains is told to drain, with the settings changed live.
        """
        self.operator.drain()
        self.assertTrue(self.operator.status()["draining"])
        self.operator.change_setting("max_blksize", 1428)
        for slot in self.slots:
            self.assertEqual(
                slot.sent,
                [(control.Drain, {}),
                 (control.ChangeSetting, {"name": "max_blksize", "value": 1428})],
            )  # fmt: skip
        late = FakeSlot(3)
        self.host.greet(late)
        self.assertEqual(late.sent, self.slots[0].sent)
        self.operator.resume()
        self.assertEqual(self.slots[0].sent[-1], (control.Resume, {}))

    def test_bad_setting_changes_nothing(self):
        """
        A bad value is refused here, and no worker hears of it.
        """
        with self.assertRaises(ValueError):
            self.operator.change_setting("max_blksize", 1)
        self.assertEqual(self.slots[0].sent, [])

    def test_caps_and_flaps(self):
        """
        The host's cap is the workers' caps added up; a prefix flapping on
        two workers is counted once, with both counts.
        """
        self.assertEqual(self.host.session_caps(), (200, 25))
        flap = {"prefix": "192.0.2.0/24", "abandoned": 2, "strays": 1}
        for slot in self.slots:
            slot.report["flaps"] = [flap]
        self.assertEqual(
            self.host.flaps.flapping(),
            [{"prefix": "192.0.2.0/24", "abandoned": 4, "strays": 2}],
        )

    def test_problems(self):
        """
        Each worker's health counts in the host's: one down, degraded, or
        silent is named; a worker that is well says nothing.
        """
        first, second = self.slots
        self.assertIsNone(worker_problem(first, self.clock))
        second.report["health"] = {"state": "degraded", "reasons": ["reactor lag 0.300s"]}
        self.assertEqual(
            worker_problem(second, self.clock), "worker 2 degraded: reactor lag 0.300s"
        )
        self.clock.advance(6)
        self.assertEqual(worker_problem(first, self.clock), "worker 1 not answering for 6s")
        first.serving, first.state = False, "restarting in 0.5s"
        self.assertEqual(worker_problem(first, self.clock), "worker 1 down (restarting in 0.5s)")

    def test_metrics(self):
        """
        The workers' own metrics: how many, and for each whether it serves
        and how often it was restarted.
        """
        self.slots[1].serving, self.slots[1].restarts = False, 2
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in WorkersCollector(self.slots).collect()
            for sample in family.samples
        }
        self.assertEqual(samples[("tftpd_workers", ())], 2)
        self.assertEqual(samples[("tftpd_worker_up", (("worker", "1"),))], 1)
        self.assertEqual(samples[("tftpd_worker_up", (("worker", "2"),))], 0)
        self.assertEqual(samples[("tftpd_worker_restarts_total", (("worker", "2"),))], 2)


class TransferIdTests(SynchronousTestCase):
    """
    A host transfer id is written C{worker:session}.
    """

    def test_parse(self):
        self.assertEqual(TransferId.parse("2:17"), TransferId(2, 17))
        self.assertEqual(TransferId.parse((2, 17)), TransferId(2, 17))
        self.assertEqual(str(TransferId(2, 17)), "2:17")
        for bad in ("17", 17, "a:b", None, (1, 2, 3)):
            self.assertIsNone(TransferId.parse(bad))


class WorkerAnswersTests(SynchronousTestCase):
    """
    What a worker answers its supervisor, on a fake reactor.
    """

    def setUp(self):
        self.reactor = FakeUDPReactor()
        self.reactor.advance(1000)
        files = {"boot.img": b"b" * 5000, "small": b"s"}
        tftp = TFTPService(
            MemoryHandler(files), port=69, interface="192.0.2.1", reactor=self.reactor,
            network=UDPNetwork(self.reactor),
        )  # fmt: skip
        tftp.setName("tftp")
        top = MultiService()
        tftp.setServiceParent(top)
        self.worker = Worker(top, self.reactor)
        tftp.privilegedStartService()
        self.listener = self.reactor.ports[0]
        self.answers = WorkerControl(self.worker)

    def start(self, peer):
        self.listener.deliver(wire.ReadRequest("boot.img", "octet").encode(), peer)
        return self.reactor.ports[-1]

    def test_report(self):
        """
        The report has the counters, the live count, the histograms, the
        caps and the worker's own health.
        """
        self.start(CLIENT)
        got = self.answers.report()["report"]
        self.assertEqual(got["counters"]["requests.accepted"], 1)
        self.assertEqual(got["active"], 1)
        self.assertEqual(got["caps"], list(self.worker.tftp.server.session_caps()))
        self.assertEqual(got["health"]["state"], "ok")
        self.assertNotIn("flapping", got["health"])
        durations = self.worker.tftp.server.stats.durations
        self.assertEqual(len(got["durations"]["counts"]), len(durations.counts))
        self.assertLess(len(control.JSON().toString(got)), control.PAGE_BYTES)

    def test_transfers_in_pages(self):
        """
        Transfers come in pages of at most the limit, in order of id, until
        none are left; each row rebuilds the transfer's stats.
        """
        for port in range(3000, 3010):
            self.start(("198.51.100.20", port))
        first, more = transfer_page(self.worker.tftp.server, 0, limit=3000)
        self.assertTrue(more)
        self.assertLessEqual(len(control.JSON().toString(first)), 3000 + len(first))
        rest, more = transfer_page(self.worker.tftp.server, first[-1]["id"])
        self.assertFalse(more)
        rows = first + rest
        self.assertEqual([r["id"] for r in rows], list(range(1, 11)))
        stats = session_stats(control.JSON().fromString(control.JSON().toString(rows[0]))["stats"])
        self.assertEqual(stats.peer, ("198.51.100.20", 3000))
        self.assertEqual(stats.request.path, "boot.img")

    def test_kill(self):
        """
        C{Kill} ends the transfer: its client gets ERROR 0 "terminated by
        operator"; an id it has not is said so.
        """
        port = self.start(CLIENT)
        port.take()
        self.assertEqual(self.answers.kill(1), {"killed": True})
        error = port.take()[-1]
        self.assertEqual(error[:4], struct.pack("!HH", 5, 0))
        self.assertIn(KILL_MESSAGE.encode(), error)
        self.assertEqual(self.answers.kill(1), {"killed": False})

    def test_drain_resume_setting(self):
        """
        C{Drain}, C{Resume} and C{ChangeSetting} act on the worker's server.
        """
        server = self.worker.tftp.server
        self.answers.drain()
        self.assertTrue(server.draining)
        self.answers.resume()
        self.assertFalse(server.draining)
        self.answers.change_setting("timeout", 2)
        self.assertEqual(server.settings.timeout, 2)

    def test_stop(self):
        """
        C{Stop} answers once the worker has stopped; with C{now}, its
        transfers are cut and it says so.
        """
        self.start(CLIENT)
        self.worker.tftp.startService()
        answered = []
        self.answers.stop(True).addCallback(answered.append)
        self.reactor.advance(1)
        self.assertEqual(answered, [{"cut": True}])
        self.assertEqual(self.worker.tftp.server.sessions, {})


class WorkerLogTests(SynchronousTestCase):
    """
    A worker's log events reach the supervisor's log whole: text, level,
    fields and traceback, naming the worker.
    """

    def relay(self, emit):
        stream = io.StringIO()
        log = Logger(namespace="tftpd_tx.server.TFTPServer", observer=JSONEventLines(stream))
        emit(log)
        published, ended = [], []
        process = WorkerProcess(2, ended.append, published.append)
        data = stream.getvalue().encode() + b"Python said something\n"
        for i in range(0, len(data), 7):
            process.childDataReceived(1, data[i : i + 7])
        process.childDataReceived(2, b"Traceback (most recent call last):")
        process.processEnded("the reason")
        self.assertEqual(ended, ["the reason"])
        return published

    def test_event(self):
        """
        A transfer line keeps its text, its level and its fields (a tuple
        as a list, a dataclass as its fields), with the worker's number.
        """
        published = self.relay(
            lambda log: log.info(
                "completed: {path!r} to {peer} {{n}}", path="a", peer=CLIENT,
                session=SessionStats(CLIENT, ("192.0.2.1", 69), "a"),
            )
        )  # fmt: skip
        event = published[0]
        self.assertEqual(formatEvent(event), "completed: 'a' to ('198.51.100.20', 3000) {n}")
        self.assertEqual(event["log_level"].name, "info")
        self.assertEqual(event["worker"], 2)
        self.assertEqual(event["log_system"], "worker 2 tftpd_tx.server.TFTPServer#info")
        self.assertEqual(event["peer"], list(CLIENT))
        self.assertEqual(event["session"]["file_path"], "a")

    def test_failure(self):
        """
        A failure arrives with its traceback and its message.
        """

        def emit(log):
            try:
                1 / 0
            except ZeroDivisionError:
                log.failure("Handler failed")

        event = self.relay(emit)[0]
        traceback = event["log_failure"].getTraceback()
        self.assertIn("ZeroDivisionError: division by zero", traceback)
        self.assertIn("test_workers.py", traceback)

    def test_other_output(self):
        """
        What a worker writes that is not an event is logged as a warning
        naming the worker.
        """
        published = self.relay(lambda log: None)
        lines = [formatEvent(event) for event in published]
        self.assertEqual(
            lines,
            ["Worker 2: Python said something", "Worker 2: Traceback (most recent call last):"],
        )


# -- real workers --------------------------------------------------------------


class SlowReader(DatagramProtocol):
    """
    A TFTP client that acknowledges each block C{delay} seconds after it
    came: its transfer is in flight for a while.
    """

    noisy = False

    def __init__(self, server, path, delay):
        self.server = server
        self.path = path
        self.delay = delay
        self.chunks = []
        self.error = None
        self.tid = None
        self.done = Deferred()
        self.started = Deferred()

    def startProtocol(self):
        self.transport.write(rrq(self.path), self.server)

    def datagramReceived(self, datagram, addr):
        if self.done.called:
            return
        opcode, number = struct.unpack("!HH", datagram[:4])
        if opcode == 5:
            self.error = datagram[4:].split(b"\0")[0].decode()
            self.finish()
            return
        if opcode != 3 or number != len(self.chunks) + 1:
            return
        self.tid = addr
        if not self.started.called:
            self.started.callback(self)
        self.chunks.append(datagram[4:])
        last = len(datagram) - 4 < 512
        self.call = reactor.callLater(self.delay, self.acknowledge, number, addr, last)

    def acknowledge(self, number, addr, last):
        self.transport.write(struct.pack("!HH", 4, number), addr)
        if last:
            self.finish()

    def finish(self):
        if not self.done.called:
            self.done.callback(b"".join(self.chunks))

    def close(self):
        call = getattr(self, "call", None)
        if call is not None and call.active():
            call.cancel()
        return self.transport.stopListening() if self.transport else None


def open_reader(testcase, server, path, delay=0.05):
    reader = SlowReader(server, path, delay)
    reactor.listenUDP(0, reader, interface="127.0.0.1")
    testcase.addCleanup(reader.close)
    return reader


async def wait_until(predicate, timeout, what):
    """
    Poll C{predicate} every 50 ms until it holds; fail after C{timeout}.
    """
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"not within {timeout}s: {what}")


class InProcessSupervisorTests(TestCase):
    """
    A L{Supervisor} in this process with two real workers: the operator's
    view of the host through it.
    """

    timeout = 60

    def setUp(self):
        directory = make_directory(self)
        self.root = os.path.join(directory, "root")
        os.mkdir(self.root)
        self.content = random_file(self.root, "file", 512 * 200 + 7)
        self.supervisor = Supervisor(
            ["--root", self.root, "--interface", "127.0.0.1", "--port=0"], 2, "127.0.0.1",
            0, Settings(), reactor, refresh_interval=0.1,
            environ=worker_environment(twistd_environment()),
        )  # fmt: skip
        self.supervisor.privilegedStartService()
        self.supervisor.startService()
        self.addCleanup(self.supervisor.stopService)
        self.address = ("127.0.0.1", self.supervisor.port.getHost().port)
        self.host = self.supervisor.server
        self.operator = Operator(self.host, reactor)

    async def test_kill_reaches_the_right_worker(self):
        """
        With transfers on both workers, C{transfers()} lists each under the
        id of its worker (both workers have a transfer 1), and C{kill}
        of C{w:1} ends that worker's transfer only: its client gets ERROR 0
        "terminated by operator", the other's keeps going.
        """
        await wait_until(self.supervisor.serving, 20, "a worker serves")
        await wait_until(lambda: all(s.serving for s in self.supervisor.slots), 20, "both serve")
        readers = {}
        for _ in range(40):
            reader = open_reader(self, self.address, "file", delay=0.2)
            await reader.started
            readers[reader.transport.getHost().port] = reader
            await wait_until(lambda: len(self.host.sessions) == len(readers), 5, "reported")
            if {t.worker for t in self.host.sessions} == {1, 2}:
                break
        ids = [transfer["id"] for transfer in self.operator.transfers()]
        self.assertIn(TransferId(1, 1), ids)
        self.assertIn(TransferId(2, 1), ids)
        victim = self.operator.transfer("2:1")
        spared = self.operator.transfer("1:1")
        self.assertIsNotNone(self.operator.kill("2:1"))
        killed = readers[victim["peer"][1]]
        await killed.done
        self.assertEqual(killed.error, KILL_MESSAGE)
        self.assertIsNone(readers[spared["peer"][1]].error)
        await wait_until(
            lambda: self.host.stats.counters["sessions.killed"] == 1, 5, "killed counted"
        )
        self.assertFalse(readers[spared["peer"][1]].done.called)

    async def test_drain_fans_out(self):
        """
        While the host drains, no worker answers a new request; once it
        resumes, they do.
        """
        await wait_until(lambda: all(s.serving for s in self.supervisor.slots), 20, "both serve")
        self.operator.drain()
        await deferLater(reactor, 0.3, lambda: None)
        ignored = await gatherResults(
            [read_raw(self.address, rrq("file"), timeout=0.3, retries=0) for _ in range(8)]
        )
        self.assertTrue(all(transfer.timed_out for transfer in ignored))
        self.operator.resume()
        await deferLater(reactor, 0.3, lambda: None)
        served = await gatherResults([read_raw(self.address, rrq("file")) for _ in range(8)])
        for transfer in served:
            self.assertIsNone(bytes_problem(transfer.content, self.content))


# -- twistd tftp --workers 2 -----------------------------------------------------


def free_tcp_port() -> int:
    with socket.socket() as skt:
        skt.bind(("127.0.0.1", 0))
        return skt.getsockname()[1]


class Host:
    """
    C{twistd -n tftp --workers 2} serving a directory, with C{--ops}.
    """

    def __init__(self, testcase, root, *extra):
        self.testcase = testcase
        self.port = free_udp_port()
        self.ops = free_tcp_port()
        self.process = spawn(
            [*TWISTD, "-n", "--pidfile=", "tftp", "--workers", "2", "--port", str(self.port),
             "--interface", "127.0.0.1", "--root", root,
             "--ops", f"tcp:{self.ops}:interface=127.0.0.1", *extra],
            cwd=os.path.dirname(root), env=twistd_environment(),
        )  # fmt: skip
        self.address = ("127.0.0.1", self.port)
        self.agent = Agent(reactor)
        testcase.addCleanup(self.kill)

    def kill(self):
        if not self.process.ended.called:
            self.process.signal("KILL")
            pids = self.worker_pids().values()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return self.process.ended

    def log(self) -> str:
        return self.process.output().decode("utf-8", "replace")

    def worker_pids(self) -> dict[int, int]:
        """
        The pid of each worker, from the supervisor's log (the last one
        started).
        """
        return {
            int(worker): int(pid)
            for worker, pid in re.findall(r"Worker (\d+) started \(pid (\d+)\)", self.log())
        }

    def served(self) -> collections.Counter:
        """
        How many transfers each worker has logged as completed.
        """
        line = r"\[worker (\d+) tftpd_tx\.server\.TFTPServer#info\] completed:"
        return collections.Counter(int(worker) for worker in re.findall(line, self.log()))

    async def ready(self):
        def serving():
            return len(re.findall(r"Worker \d serving", self.log())) >= 2

        await wait_until(
            lambda: self.process.ended.called or serving(), 30, "both workers serving"
        )
        self.testcase.assertFalse(self.process.ended.called, self.log())

    async def metrics(self) -> dict:
        response = await self.agent.request(
            b"GET", f"http://127.0.0.1:{self.ops}/metrics".encode()
        )
        text = (await readBody(response)).decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def health(self) -> dict:
        response = await self.agent.request(
            b"GET", f"http://127.0.0.1:{self.ops}/health".encode()
        )
        return json.loads(await readBody(response))

    async def wait_for_metric(self, name, labels, value, timeout=20):
        key = (name, tuple(sorted(labels.items())))
        last = None
        for _ in range(int(timeout / 0.2)):
            last = (await self.metrics()).get(key)
            if last == value:
                return
            await deferLater(reactor, 0.2, lambda: None)
        raise AssertionError(f"{name}{labels} is {last}, not {value}; log: {self.log()[-3000:]}")


def completed(value):
    return ("tftpd_transfers_total", {"outcome": "completed"}, value)


class TwistdWorkersTests(TestCase):
    """
    C{twistd -n tftp --workers 2}, a real supervisor and real workers on
    loopback.
    """

    timeout = 90

    def setUp(self):
        directory = make_directory(self)
        self.root = os.path.join(directory, "root")
        os.mkdir(self.root)
        self.content = random_file(self.root, "file", 100_000)
        self.small = random_file(self.root, "small", 3000)

    async def test_fetches_land_on_both_workers(self):
        """
        Thirty fetches from as many client ports all get the file byte for
        byte; both workers served some, and C{/metrics} counts all thirty.
        """
        host = Host(self, self.root)
        await host.ready()
        fetched = await gatherResults([read_raw(host.address, rrq("file")) for _ in range(30)])
        for transfer in fetched:
            self.assertIsNone(bytes_problem(transfer.content, self.content))
        await wait_until(lambda: sum(host.served().values()) == 30, 10, "30 lines logged")
        self.assertEqual(set(host.served()), {1, 2}, host.served())
        await host.wait_for_metric(*completed(30))
        metrics = await host.metrics()
        self.assertEqual(metrics[("tftpd_workers", ())], 2)

    async def test_single_port_on_both_workers(self):
        """
        With C{--single-port}, every reply of every transfer comes from the
        host's address and port, whichever worker serves it, and both do:
        the hash keeps all of a client's datagrams on its worker.
        """
        host = Host(self, self.root, "--single-port")
        await host.ready()
        fetched = await gatherResults([read_raw(host.address, rrq("file")) for _ in range(20)])
        for transfer in fetched:
            self.assertIsNone(bytes_problem(transfer.content, self.content))
            self.assertEqual(transfer.sources, {host.address})
        await wait_until(lambda: sum(host.served().values()) == 20, 10, "20 lines logged")
        self.assertEqual(set(host.served()), {1, 2}, host.served())

    async def test_metrics_sum_the_workers(self):
        """
        Fetches served by the two workers, one after the other, add up in
        the host's C{/metrics}: C{tftpd_transfers_total{outcome="completed"}}
        is their number, though each worker served only some.
        """
        host = Host(self, self.root)
        await host.ready()
        count = 0
        while len(host.served()) < 2 and count < 20:
            transfer = await read_raw(host.address, rrq("small"))
            self.assertIsNone(bytes_problem(transfer.content, self.small))
            count += 1
            await wait_until(lambda: sum(host.served().values()) == count, 10, "logged")
        self.assertEqual(set(host.served()), {1, 2})
        await host.wait_for_metric(*completed(count))

    async def test_retransmitted_rrq_starts_one_transfer(self):
        """
        From each of four client ports, the same RRQ sent twelve times
        starts one transfer (one TID answers), whichever worker the port
        reaches: the host counts four accepted requests and forty-four
        duplicates.
        """
        host = Host(self, self.root)
        await host.ready()
        probes = []
        for _ in range(4):
            probe = Prober()
            port = reactor.listenUDP(0, probe, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            probes.append(probe)
        for _ in range(12):
            for probe in probes:
                probe.transport.write(rrq("file"), host.address)
        await host.wait_for_metric("tftpd_requests_total", {"result": "accepted"}, 4)
        await host.wait_for_metric("tftpd_requests_total", {"result": "duplicate"}, 44)
        for probe in probes:
            self.assertEqual(len(probe.sources), 1, probe.sources)
            self.assertNotIn(host.address, probe.sources)
            tid = next(iter(probe.sources))
            probe.transport.write(struct.pack("!HH", 5, 0) + b"done\0", tid)

    async def test_killed_worker_is_restarted(self):
        """
        C{kill -9} of worker 1: it is started again, counted in
        C{tftpd_worker_restarts_total} and logged, and fetches from new
        client ports keep succeeding meanwhile (those that reach its socket
        wait in it until the new worker reads them).
        """
        host = Host(self, self.root)
        await host.ready()
        old = host.worker_pids()[1]
        os.kill(old, signal.SIGKILL)
        fetched = []
        for _ in range(6):
            batch = await gatherResults([read_raw(host.address, rrq("small")) for _ in range(5)])
            fetched.extend(batch)
        for transfer in fetched:
            self.assertIsNone(bytes_problem(transfer.content, self.small))
        await wait_until(lambda: host.worker_pids()[1] != old, 10, "a new worker 1")
        self.assertRegex(host.log(), rf"Worker 1 \(pid {old}\) ended \(signal 9\)")
        await wait_until(
            lambda: f"Worker 1 serving (pid {host.worker_pids()[1]})" in host.log(), 20,
            "the new worker 1 serving",
        )  # fmt: skip
        await host.wait_for_metric("tftpd_worker_restarts_total", {"worker": "1"}, 1)
        await host.wait_for_metric("tftpd_worker_up", {"worker": "1"}, 1)
        metrics = await host.metrics()
        self.assertEqual(metrics[("tftpd_worker_restarts_total", (("worker", "2"),))], 0)
        again = await gatherResults([read_raw(host.address, rrq("small")) for _ in range(10)])
        for transfer in again:
            self.assertIsNone(bytes_problem(transfer.content, self.small))

    async def test_sigterm_drains_every_worker(self):
        """
        SIGTERM to the supervisor: every worker drains (a new request gets
        no answer) while its transfers in flight finish, byte for byte,
        then the workers and the supervisor exit cleanly.
        """
        host = Host(self, self.root, "--shutdown-grace", "20")
        await host.ready()
        content = random_file(self.root, "slow", 512 * 30 + 100)
        readers = [open_reader(self, host.address, "slow", delay=0.05) for _ in range(8)]
        await gatherResults([reader.started for reader in readers])
        pids = host.worker_pids()
        host.process.signal("TERM")
        await wait_until(lambda: "Stopping 2 workers" in host.log(), 5, "stopping")
        self.assertEqual((await host.health())["state"], "draining")
        ignored = await read_raw(host.address, rrq("small"), timeout=0.3, retries=1)
        self.assertTrue(ignored.timed_out)
        for reader in readers:
            got = await reader.done
            self.assertIsNone(reader.error)
            self.assertIsNone(bytes_problem(got, content))
        result = await host.process.ended
        log = host.log()
        self.assertIn(result.signal, (signal.SIGTERM, None), result.describe())
        drained = re.findall(
            r"\[worker \d tftpd_tx\.service\._GracefulStop#info\] Stopped: (\d+) of (\d+)"
            r" transfers finished while draining, 0 cut",
            log,
        )
        self.assertEqual(sum(int(finished) for finished, _ in drained), 8, log)
        self.assertIn("Workers stopped\n", log)
        self.assertNotIn("transfers were cut", log)
        for pid in pids.values():
            self.assertFalse(os.path.exists(f"/proc/{pid}"), f"worker {pid} still runs")


class Prober(DatagramProtocol):
    """
    Sends what it is told; remembers where replies came from.
    """

    noisy = False

    def __init__(self):
        self.sources = set()

    def datagramReceived(self, datagram, addr):
        self.sources.add(addr[:2])

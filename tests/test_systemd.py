"""
systemd: socket activation (L{tftpd_tx.systemd}, C{twistd tftp --systemd})
and the units of C{contrib/systemd}.

The descriptors and variables are checked in process; then
C{systemd-socket-activate --datagram} (Debian's systemd package) hands
sockets to a real C{twistd tftp --systemd}, and C{systemd-analyze verify}
reads the units.  A missing program skips its tests, except under
C{CI=true}, where it fails them (.ci/run must install it).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from clients import (
    REPO_ROOT,
    TWISTD,
    assert_fetched,
    bytes_problem,
    curl,
    fetch,
    free_udp_port,
    ipv6_loopback_available,
    make_directory,
    random_file,
    read_raw,
    require_program,
    rrq,
    spawn,
    twistd_environment,
)
from tftpd_tx import tap
from tftpd_tx.service import TFTPService
from tftpd_tx.singleport import SharedPort
from tftpd_tx.systemd import datagram_sockets, listen_fds
from tftpd_tx.workers import AUTO, Supervisor, worker_command_line, worker_sockets

UNITS = os.path.join(REPO_ROOT, "contrib", "systemd")
UNIT_NAMES = ("tftpd_tx.socket", "tftpd_tx.service")


class ListenFdsTests(SynchronousTestCase):
    """
    C{LISTEN_PID} and C{LISTEN_FDS}, read once.
    """

    def test_for_this_process(self):
        """
        The descriptors from 3 on, as many as C{LISTEN_FDS} says, and the
        variables removed (names or not) so that no child takes them.
        """
        environ = {"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "X": "1"}
        self.assertEqual(listen_fds(environ, pid=4242), [3, 4])
        self.assertEqual(environ, {"X": "1"})

    def test_without_names(self):
        """
        C{systemd-socket-activate} sets no C{LISTEN_FDNAMES}: the
        descriptors are taken all the same.
        """
        self.assertEqual(listen_fds({"LISTEN_PID": "7", "LISTEN_FDS": "1"}, pid=7), [3])

    def test_for_another_process(self):
        """
        Variables meant for another process (a parent's, inherited) give
        nothing and are left alone.
        """
        environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
        self.assertEqual(listen_fds(environ, pid=4242), [])
        self.assertEqual(environ, {"LISTEN_PID": "1", "LISTEN_FDS": "1"})

    def test_missing_or_malformed(self):
        """
        No variables, or a count that is not a number, give nothing.
        """
        self.assertEqual(listen_fds({}, pid=7), [])
        environ = {"LISTEN_PID": "7", "LISTEN_FDS": "two"}
        self.assertEqual(listen_fds(environ, pid=7), [])
        self.assertEqual(environ, {})


class DatagramSocketsTests(SynchronousTestCase):
    """
    The descriptors are checked to be datagram sockets of IPv4 or IPv6.
    """

    def socket(self, family=socket.AF_INET, kind=socket.SOCK_DGRAM):
        skt = socket.socket(family, kind)
        self.addCleanup(skt.close)
        return skt

    def test_datagram_socket(self):
        """
        A blocking, bound UDP socket (as systemd hands them over) becomes a
        non-blocking duplicate; the descriptor itself stays open and is no
        longer inherited by children.
        """
        skt = self.socket()
        skt.bind(("127.0.0.1", 0))
        os.set_inheritable(skt.fileno(), True)
        (taken,) = datagram_sockets([skt.fileno()])
        self.addCleanup(taken.close)
        self.assertNotEqual(taken.fileno(), skt.fileno())
        self.assertEqual(taken.getsockname(), skt.getsockname())
        self.assertFalse(taken.getblocking())
        self.assertFalse(os.get_inheritable(skt.fileno()))
        self.assertTrue(skt.getblocking())

    def test_stream_socket(self):
        """
        A stream socket (C{ListenStream=}) is refused, naming the fix.
        """
        skt = self.socket(kind=socket.SOCK_STREAM)
        error = self.assertRaises(ValueError, datagram_sockets, [skt.fileno()])
        self.assertIn("ListenDatagram=", str(error))
        self.assertIn(f"descriptor {skt.fileno()}", str(error))

    def test_unix_socket(self):
        """
        A Unix datagram socket is refused.
        """
        skt = self.socket(family=socket.AF_UNIX)
        error = self.assertRaises(ValueError, datagram_sockets, [skt.fileno()])
        self.assertIn("not an IPv4 or IPv6 socket", str(error))

    def test_not_a_socket(self):
        """
        A descriptor that is not a socket, or not open, is refused.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        os.close(write)
        self.assertIn("not a socket", str(self.assertRaises(ValueError, datagram_sockets, [read])))
        self.assertIn("not open", str(self.assertRaises(ValueError, datagram_sockets, [write])))


def _reuseport_pair(testcase, host="127.0.0.1", option=socket.SO_REUSEPORT):
    """
    Two datagram sockets bound to one address and port (with C{option} set
    on both), closed when C{testcase} ends.
    """
    pair = []
    port = 0
    for _ in range(2):
        skt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        testcase.addCleanup(skt.close)
        skt.setsockopt(socket.SOL_SOCKET, option, 1)
        skt.bind((host, port))
        port = skt.getsockname()[1]
        pair.append(skt)
    return pair


class WorkerSocketsTests(SynchronousTestCase):
    """
    C{--systemd --workers N}: the sockets handed over, grouped by address,
    N on each, one of each address for each worker.
    """

    def bind(self, host):
        skt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(skt.close)
        skt.bind((host, 0))
        return skt

    def pair(self, host, option=socket.SO_REUSEPORT):
        return _reuseport_pair(self, host, option)

    def test_one_of_each_address_per_worker(self):
        """
        Two sockets on each of two addresses, in the order a socket unit
        with each C{ListenDatagram=} line given twice hands them over: each
        of two workers gets the next socket of each address.
        """
        a1, a2 = self.pair("127.0.0.1")
        b1, b2 = self.pair("127.0.0.2")
        self.assertEqual(worker_sockets([a1, b1, a2, b2], 2), [[a1, b1], [a2, b2]])
        self.assertEqual(worker_sockets([a1, a2, b1, b2], 2), [[a1, b1], [a2, b2]])

    def test_auto(self):
        """
        For C{--workers auto}, as many workers as each address has sockets.
        """
        a1, a2 = self.pair("127.0.0.1")
        self.assertEqual(worker_sockets([a1, a2], AUTO), [[a1], [a2]])
        self.assertEqual(worker_sockets([a1], AUTO), [[a1]])

    def test_too_few_or_too_many(self):
        """
        An address with another number of sockets than the workers is
        refused, naming the address and the two ways out.
        """
        a1, a2 = self.pair("127.0.0.1")
        b1 = self.bind("127.0.0.2")
        name = f"127.0.0.2:{b1.getsockname()[1]}"
        error = self.assertRaises(ValueError, worker_sockets, [a1, a2, b1], 2)
        self.assertIn(
            f"1 socket(s) on {name}: repeat ListenDatagram={name} 2 times with ReusePort=yes",
            str(error),
        )
        self.assertIn("set --workers to the count", str(error))
        self.assertRaises(ValueError, worker_sockets, [a1, a2], 3)

    def test_auto_uneven(self):
        """
        For C{--workers auto}, addresses with different numbers of sockets
        are refused, listing them.
        """
        a1, a2 = self.pair("127.0.0.1")
        b1 = self.bind("127.0.0.2")
        error = self.assertRaises(ValueError, worker_sockets, [a1, a2, b1], AUTO)
        self.assertIn("different numbers of sockets", str(error))
        self.assertIn(f"127.0.0.2:{b1.getsockname()[1]}: 1", str(error))

    def test_without_reuseport(self):
        """
        Sockets sharing an address with C{SO_REUSEADDR} only (a unit without
        C{ReusePort=yes}) are refused: one of them would get every datagram.
        One socket per address needs no C{SO_REUSEPORT}.
        """
        a1, a2 = self.pair("127.0.0.1", socket.SO_REUSEADDR)
        error = self.assertRaises(ValueError, worker_sockets, [a1, a2], 2)
        self.assertIn("lack SO_REUSEPORT", str(error))
        self.assertIn("set ReusePort=yes in the socket unit", str(error))
        self.assertEqual(worker_sockets([a1], 1), [[a1]])


class TapTests(TestCase):
    """
    C{twistd tftp --systemd}: options and service.
    """

    def setUp(self):
        self.root = self.mktemp()
        os.makedirs(self.root)

    def options(self, *arguments, fds=()):
        self.patch(tap, "_ACTIVATED_FDS", list(fds))
        options = tap.Options()
        options.parseOptions(["--root", self.root, *arguments])
        return options

    def test_nothing_handed_over(self):
        """
        C{--systemd} without sockets from systemd stops at start, naming the
        option and how to start the server.
        """
        error = self.assertRaises(usage.UsageError, self.options, "--systemd")
        self.assertIn("--systemd", str(error))
        self.assertIn("systemd-socket-activate", str(error))

    def test_stream_socket_handed_over(self):
        """
        A stream socket from systemd stops the server at start, naming
        C{ListenDatagram=}.
        """
        skt = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(skt.close)
        error = self.assertRaises(usage.UsageError, self.options, "--systemd", fds=[skt.fileno()])
        self.assertIn("ListenDatagram=", str(error))

    def test_workers_share_the_sockets(self):
        """
        C{--systemd --workers 2} with two sockets on one address runs a
        supervisor over them; C{--workers auto} is as many workers as the
        address has sockets, one socket being one process.
        """
        first, second = _reuseport_pair(self)
        fds = [first.fileno(), second.fileno()]
        options = self.options("--systemd", "--workers", "2", fds=fds)
        self.assertIsInstance(tap.makeService(options).getServiceNamed("tftp"), Supervisor)
        self.assertEqual(self.options("--systemd", "--workers", "auto", fds=fds)["workers"], 2)
        alone = self.options("--systemd", "--workers", "auto", fds=fds[:1])
        self.assertEqual(alone["workers"], 1)
        self.assertIsInstance(tap.makeService(alone).getServiceNamed("tftp"), TFTPService)

    def test_workers_are_not_given_systemd(self):
        """
        A worker serves the sockets its supervisor hands it: C{--systemd}
        is not on its command line.
        """
        first, second = _reuseport_pair(self)
        options = self.options(
            "--systemd", "--workers", "2", fds=[first.fileno(), second.fileno()]
        )
        self.assertNotIn("--systemd", worker_command_line(options))

    def test_workers_count_mismatch(self):
        """
        C{--systemd --workers 2} with one socket on the address stops at
        start, naming the fix.
        """
        skt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(skt.close)
        skt.bind(("127.0.0.1", 0))
        error = self.assertRaises(
            usage.UsageError, self.options, "--systemd", "--workers", "2", fds=[skt.fileno()]
        )
        self.assertIn("--systemd --workers 2:", str(error))
        self.assertIn("ReusePort=yes", str(error))

    async def test_serves_the_sockets(self):
        """
        With C{--systemd}, the service listens on every socket handed over
        and binds nothing itself (the port given is not even checked); with
        C{--single-port} too, each of them is shared with its transfers.
        """
        handed = []
        for host in ("127.0.0.1", "127.0.0.2"):
            skt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.addCleanup(skt.close)
            skt.bind((host, 0))
            handed.append(skt)
        options = self.options(
            "--systemd", "--single-port", "--port", "1", fds=[skt.fileno() for skt in handed]
        )
        service = tap.makeService(options).getServiceNamed("tftp")
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        self.assertEqual(
            [port.getHost().port for port in service.ports],
            [skt.getsockname()[1] for skt in handed],
        )
        self.assertTrue(all(isinstance(port, SharedPort) for port in service.ports))


class ImportOrderTests(SynchronousTestCase):
    """
    Importing C{twisted.internet.endpoints} reads and removes the
    variables, and keeps no descriptor when C{LISTEN_FDNAMES} is missing:
    L{tftpd_tx.tap} takes them first.
    """

    def test_tap_takes_them_before_twisted(self):
        """
        A process given one nameless socket that imports L{tftpd_tx.tap}
        (which imports Twisted's endpoints) still has it for C{--systemd}.
        """
        program = (
            "import os, socket, sys\n"
            "skt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "os.dup2(skt.fileno(), 3)\n"
            "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
            "import tftpd_tx.tap\n"
            "print(tftpd_tx.tap._ACTIVATED_FDS, 'LISTEN_FDS' in os.environ,\n"
            "      'twisted.internet.endpoints' in sys.modules)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", program],
            capture_output=True,
            env=twistd_environment(),
            timeout=60,
            check=True,
        )
        self.assertEqual(result.stdout.split(), [b"[3]", b"False", b"True"])


def _port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as skt:
        try:
            skt.bind((host, port))
        except OSError:
            return False
    return True


class ActivatedRoot(TestCase):
    """
    A root with one random C{file} of L{size} bytes, and
    C{systemd-socket-activate} to start the server under.
    """

    size = 100_000

    def setUp(self):
        self.activate = require_program("systemd-socket-activate")
        self.directory = make_directory(self)
        self.root = os.path.join(self.directory, "root")
        os.mkdir(self.root)
        self.content = random_file(self.root, "file", self.size)

    def activated(self, launcher, *options):
        """
        Spawn C{launcher} (the command line that ends in
        C{systemd-socket-activate} and its sockets) starting C{twistd tftp
        --systemd} with C{options}.
        """
        env = twistd_environment()
        return spawn(
            [
                # It hands its child a fresh environment: the checkout must
                # be passed on to be the code under test.
                *launcher, "-E", f"PYTHONPATH={env['PYTHONPATH']}",
                *TWISTD, "-n", "--pidfile=", "tftp", "--systemd", "--root", self.root,
                "--shutdown-grace", "1", *options,
            ],
            cwd=self.directory,
            env=env,
        )  # fmt: skip


class SocketActivationTests(ActivatedRoot):
    """
    C{systemd-socket-activate --datagram -l ADDR:PORT ... twistd tftp
    --systemd}: the sockets it binds are the ones served.
    """

    timeout = 90

    async def start(self, addresses, *options):
        """
        Start C{twistd tftp --systemd} under C{systemd-socket-activate} on
        C{addresses} (C{(host, port)}), and wait until it serves on the
        first (the first datagram is what starts it).
        """
        listen = []
        for host, port in addresses:
            listen += ["-l", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        process = self.activated([self.activate, "--datagram", *listen], *options)

        def stop():
            if not process.ended.called:
                process.signal("KILL")
            return process.ended

        self.addCleanup(stop)
        for _ in range(100):
            self.assertFalse(process.ended.called, f"exited: {process.output()!r}")
            probe = await read_raw(addresses[0], rrq("file"), timeout=0.2, retries=0)
            if probe.content == self.content:
                return process
        self.fail(f"never answered: {process.output()!r}")

    async def check(self, *options):
        addresses = [("127.0.0.1", free_udp_port()), ("127.0.0.2", free_udp_port("127.0.0.2"))]
        if ipv6_loopback_available():
            addresses.append(("::1", free_udp_port()))
        addresses = [address for address in addresses if _port_is_free(*address)]
        process = await self.start(addresses, *options)
        for host, port in addresses:
            transfer = await read_raw(
                (host, port), rrq("file", options={"blksize": "1468", "windowsize": "4"})
            )
            self.assertEqual(transfer.content, self.content, f"[{host}]:{port}")
            if "--single-port" in options:
                self.assertEqual(transfer.sources, {(host, port)})
            else:
                self.assertEqual({source[0] for source in transfer.sources}, {host})
        host, port = addresses[1]
        fetched = await fetch(curl(), host, port, "file", self.directory)
        assert_fetched(self, fetched, self.content, f"curl from [{host}]:{port}")
        process.signal("TERM")
        result = await process.ended
        self.assertIn(result.signal, (None, signal.SIGTERM), result.describe())
        for host, port in addresses:
            self.assertIn(
                f"TFTP server listening on [{host}]:{port} (a socket handed over".encode(),
                result.out,
            )
        self.assertIn(b"Server Shut Down.", result.out)
        self.assertNotIn(b"Traceback", result.out + result.err)

    async def test_classic(self):
        """
        Sockets on 127.0.0.1, 127.0.0.2 and [::1] (where there is IPv6) are
        each served, replies leaving from the address asked, and the server
        stops cleanly on SIGTERM.
        """
        await self.check()

    async def test_single_port(self):
        """
        The same with C{--single-port}: every reply of a transfer leaves
        through the socket its request came in on.
        """
        await self.check("--single-port")


#: Hands its program sockets with SO_REUSEPORT, as a socket unit would.
ACTIVATE = [sys.executable, os.path.join(REPO_ROOT, "tests", "activate.py")]


class SocketActivationWorkersTests(ActivatedRoot):
    """
    C{twistd tftp --systemd --workers 2} under C{systemd-socket-activate},
    handed two C{SO_REUSEPORT} sockets on each of two addresses as a socket
    unit repeating each C{ListenDatagram=} line with C{ReusePort=yes} would
    (L{ACTIVATE} binds them: C{systemd-socket-activate} passes on what it
    was given).
    """

    timeout = 120
    size = 30_000

    def setUp(self):
        super().setUp()
        self.addresses = [
            ("127.0.0.1", free_udp_port()), ("127.0.0.2", free_udp_port("127.0.0.2"))
        ]

    def spawn(self, sockets, *options):
        """
        Start C{twistd tftp --systemd} under C{systemd-socket-activate},
        handed C{sockets} (C{"HOST:PORT"}, and C{--plain} first for no
        C{SO_REUSEPORT}), and send it the datagram that starts it.
        """
        process = self.activated([*ACTIVATE, *sockets, "--", self.activate, "--datagram"], *options)

        def stop():
            if not process.ended.called:
                pids = re.findall(rb"Worker \d+ started \(pid (\d+)\)", process.output())
                process.signal("KILL")
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            return process.ended

        self.addCleanup(stop)
        return process

    def interleaved(self) -> list[str]:
        return [f"{host}:{port}" for host, port in self.addresses] * 2

    async def serve(self, *options):
        process = self.spawn(self.interleaved(), "--workers", "2", *options)
        for _ in range(200):
            self.assertFalse(process.ended.called, f"exited: {process.output()!r}")
            if len(re.findall(rb"Worker \d serving", process.output())) == 2:
                break
            # Any datagram starts twistd; this one completes no transfer.
            await read_raw(self.addresses[0], rrq("missing"), timeout=0.2, retries=0)
        else:
            self.fail(f"never served: {process.output()!r}")
        log = process.output().decode("utf-8", "replace")
        for worker in (1, 2):
            for host, port in self.addresses:
                self.assertRegex(
                    log,
                    rf"\[worker {worker} tftpd_tx\.service\.TFTPService#info\] TFTP server"
                    rf" listening on \[{re.escape(host)}\]:{port} \(a socket handed over",
                )
        fetched = await gatherResults(
            [read_raw(address, rrq("file")) for address in self.addresses for _ in range(20)]
        )
        for number, transfer in enumerate(fetched):
            address = self.addresses[number // 20]
            self.assertIsNone(bytes_problem(transfer.content, self.content), address)
            if "--single-port" in options:
                self.assertEqual(transfer.sources, {address})
        for host, port in self.addresses:
            got = await fetch(curl(), host, port, "file", self.directory)
            assert_fetched(self, got, self.content, f"curl from {host}:{port}")
        served = collections.Counter()
        for _ in range(100):
            log = process.output().decode("utf-8", "replace")
            served = collections.Counter(re.findall(_COMPLETED, log))
            if sum(served.values()) >= 42:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(sum(served.values()), 42, served)
        everywhere = {(worker, host) for worker in "12" for host, _ in self.addresses}
        self.assertEqual(set(served), everywhere, served)
        process.signal("TERM")
        result = await process.ended
        self.assertIn(result.signal, (None, signal.SIGTERM), result.describe())
        self.assertIn(b"Workers stopped\n", result.out)
        self.assertNotIn(b"Traceback", result.out + result.err)
        return served

    async def test_classic(self):
        """
        Forty fetches from as many client ports and two with curl, half on
        each address, get the file byte for byte; each worker listens on
        both addresses (one socket of each), and each served on both;
        SIGTERM stops them all cleanly.
        """
        await self.serve()

    async def test_single_port(self):
        """
        The same with C{--single-port}: every reply leaves from the address
        and port asked, whichever worker has the transfer.
        """
        await self.serve("--single-port")

    async def refused(self, sockets, message):
        process = self.spawn(sockets, "--workers", "2")
        for _ in range(50):
            if process.ended.called:
                break
            await read_raw(self.addresses[0], rrq("file"), timeout=0.2, retries=0)
        result = await process.ended
        self.assertNotEqual(result.code, 0, result.describe())
        self.assertIn(message.encode(), result.out + result.err)
        self.assertNotIn(b"Traceback", result.out + result.err)

    async def test_count_mismatch(self):
        """
        One socket on an address for two workers stops twistd at start,
        naming the fix.
        """
        host, port = self.addresses[0]
        await self.refused(
            [f"{host}:{port}"],
            f"--systemd --workers 2: systemd handed over 1 socket(s) on {host}:{port}:"
            f" repeat ListenDatagram={host}:{port} 2 times with ReusePort=yes",
        )

    async def test_without_reuseport(self):
        """
        Two sockets on an address without C{SO_REUSEPORT} (a unit without
        C{ReusePort=yes}) stop twistd at start, naming the fix.
        """
        host, port = self.addresses[0]
        await self.refused(
            ["--plain", f"{host}:{port}", f"{host}:{port}"], "set ReusePort=yes in the socket unit"
        )


#: A worker's log line for a transfer it completed: the worker's number and
#: the server's address.
_COMPLETED = (
    r"\[worker (\d+) tftpd_tx\.server\.TFTPServer#info\] completed: 'file' to \S+ \S+"
    r" from \('([\d.]+)'"
)


#: The commented example of the units for two workers, as one would edit
#: them: the service's second C{ExecStart=} in place of the first, the
#: socket's second C{ListenDatagram=69} uncommented.
_WORKERS = (
    (r"^ExecStart=.*\n((?:#.*\n)*?)#(ExecStart=.*--workers)", r"\1\2"),
    (r"^#(ListenDatagram=69)$", r"\1"),
)


def _edited(path: str, *edits) -> str:
    """
    The text of a unit file, with each C{(pattern, replacement)} of
    C{edits} made (on lines: C{re.M}).
    """
    with open(path) as unit:
        text = unit.read()
    for pattern, replacement in edits:
        text = re.sub(pattern, replacement, text, flags=re.M)
    return text


def _units(section_of_interest: str, path: str, edits=()) -> dict[str, list[str]]:
    """
    The C{Key=value} lines of one section of a unit file (with C{edits},
    see L{_edited}).
    """
    values: dict[str, list[str]] = {}
    section = None
    for line in _edited(path, *edits).splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#") and section == section_of_interest:
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


class UnitFileTests(SynchronousTestCase):
    """
    The units of C{contrib/systemd}.
    """

    def test_socket_unit(self):
        """
        The socket unit listens for datagrams on port 69, dual-stack, and
        lets workers share the port.
        """
        socket_unit = _units("Socket", os.path.join(UNITS, "tftpd_tx.socket"))
        self.assertEqual(socket_unit["ListenDatagram"], ["69"])
        self.assertEqual(socket_unit["ReusePort"], ["yes"])
        self.assertEqual(socket_unit["BindIPv6Only"], ["both"])

    def test_service_unit(self):
        """
        The service runs C{twistd tftp --systemd} as a user of its own,
        keeps no capability, gains no privilege and sees a read-only system
        but for its state and runtime directories.
        """
        service = _units("Service", os.path.join(UNITS, "tftpd_tx.service"))
        (command,) = service["ExecStart"]
        self.assertRegex(command, r"^/\S+/twistd --nodaemon --pidfile= tftp --systemd ")
        expected = {
            "DynamicUser": ["yes"],
            "CapabilityBoundingSet": [""],
            "AmbientCapabilities": [""],
            "NoNewPrivileges": ["yes"],
            "ProtectSystem": ["strict"],
            "ProtectHome": ["yes"],
            "StateDirectory": ["tftpd_tx"],
            "RuntimeDirectory": ["tftpd_tx"],
        }
        self.assertEqual({key: service.get(key) for key in expected}, expected)
        self.assertNotIn("ReadWritePaths", service)

    def test_workers_example(self):
        """
        The commented example for two workers repeats the dual-stack
        C{ListenDatagram=} line, and runs C{--workers auto}.
        """
        socket_unit = _units("Socket", os.path.join(UNITS, "tftpd_tx.socket"), _WORKERS)
        self.assertEqual(socket_unit["ListenDatagram"], ["69", "69"])
        service = _units("Service", os.path.join(UNITS, "tftpd_tx.service"), _WORKERS)
        (command,) = service["ExecStart"]
        self.assertIn(" tftp --systemd --workers auto ", command)

    def test_systemd_analyze_verify(self):
        """
        C{systemd-analyze verify} accepts both units without a word, with
        C{ExecStart=} pointed at the C{twistd} these tests run (verify
        checks that the program exists).
        """
        self.verify()

    def test_systemd_analyze_verify_workers(self):
        """
        And the units of the example for two workers too.
        """
        self.verify(*_WORKERS)

    def verify(self, *edits):
        analyze = require_program("systemd-analyze")
        twistd = shutil.which("twistd") or os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            raise SkipTest("no twistd program to point ExecStart= at")
        directory = self.mktemp()
        os.makedirs(directory)
        for name in UNIT_NAMES:
            text = _edited(os.path.join(UNITS, name), *edits)
            text = re.sub(r"^ExecStart=\S+", f"ExecStart={twistd}", text, flags=re.M)
            with open(os.path.join(directory, name), "w") as copy:
                copy.write(text)
        result = subprocess.run(
            [analyze, "verify", *(os.path.join(directory, name) for name in UNIT_NAMES)],
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr), (0, b"", b""), result.stderr
        )

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

import os
import re
import shutil
import signal
import socket
import subprocess
import sys

from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from clients import (
    REPO_ROOT,
    TWISTD,
    assert_fetched,
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
from tftpd_tx.singleport import SharedPort
from tftpd_tx.systemd import datagram_sockets, listen_fds

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


class SocketActivationTests(TestCase):
    """
    C{systemd-socket-activate --datagram -l ADDR:PORT ... twistd tftp
    --systemd}: the sockets it binds are the ones served.
    """

    timeout = 90

    def setUp(self):
        self.activate = require_program("systemd-socket-activate")
        self.directory = make_directory(self)
        self.root = os.path.join(self.directory, "root")
        os.mkdir(self.root)
        self.content = random_file(self.root, "file", 100_000)

    async def start(self, addresses, *options):
        """
        Start C{twistd tftp --systemd} under C{systemd-socket-activate} on
        C{addresses} (C{(host, port)}), and wait until it serves on the
        first (the first datagram is what starts it).
        """
        listen = []
        for host, port in addresses:
            listen += ["-l", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        env = twistd_environment()
        process = spawn(
            [
                # It hands its child a fresh environment: the checkout must
                # be passed on to be the code under test.
                self.activate, "--datagram", *listen, "-E", f"PYTHONPATH={env['PYTHONPATH']}",
                *TWISTD, "-n", "--pidfile=", "tftp", "--systemd", "--root", self.root,
                "--shutdown-grace", "1", *options,
            ],
            cwd=self.directory,
            env=env,
        )  # fmt: skip

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


def _units(section_of_interest: str, path: str) -> dict[str, list[str]]:
    """
    The C{Key=value} lines of one section of a unit file.
    """
    values: dict[str, list[str]] = {}
    section = None
    with open(path) as unit:
        for line in unit:
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

    def test_systemd_analyze_verify(self):
        """
        C{systemd-analyze verify} accepts both units without a word, with
        C{ExecStart=} pointed at the C{twistd} these tests run (verify
        checks that the program exists).
        """
        analyze = require_program("systemd-analyze")
        twistd = shutil.which("twistd") or os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            raise SkipTest("no twistd program to point ExecStart= at")
        directory = self.mktemp()
        os.makedirs(directory)
        for name in UNIT_NAMES:
            with open(os.path.join(UNITS, name)) as source:
                text = re.sub(r"^ExecStart=\S+", f"ExecStart={twistd}", source.read(), flags=re.M)
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

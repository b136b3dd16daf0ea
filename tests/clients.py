"""
Helpers for the tests that talk to a real server over real sockets: find
and run the installed TFTP clients without blocking the reactor, start an
in-process server, and speak raw TFTP from a UDP port in the reactor.

The raw reader here encodes and decodes packets with its own few lines of
C{struct}, not with L{tftpd_tx.wire}, so that a codec bug cannot hide
itself by being on both ends.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import sys
import tempfile
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

from twisted.internet import reactor
from twisted.internet.defer import (
    Deferred,
    FirstError,
    ensureDeferred,
    gatherResults,
    succeed,
)
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import DatagramProtocol, ProcessProtocol
from twisted.trial.unittest import SkipTest

from tftpd_tx.filesystem import FilesystemHandler
from tftpd_tx.service import TFTPService

#: The repository root, where C{tftpd_tx} and C{twisted/plugins} live.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Under CI every client must be there: a missing one is a broken .ci/run.
IN_CI = os.environ.get("CI") == "true"

#: The longest any client process may run before it is killed.
PROCESS_TIMEOUT = 90.0


# -- processes -----------------------------------------------------------------


def require_program(name: str) -> str:
    """
    The full path of the program C{name}.

    @raise SkipTest: it is not installed (outside CI).
    @raise AssertionError: it is not installed and C{CI=true}.
    """
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            raise AssertionError(f"missing client {name}: .ci/run must install it")
        raise SkipTest(f"{name} is not installed")
    return path


@dataclass(frozen=True)
class Result:
    """
    How a process ended.

    @ivar code: its exit status, or L{None} when a signal ended it.
    @ivar signal: the signal that ended it, or L{None}.
    """

    out: bytes
    err: bytes
    code: int | None
    signal: int | None

    def describe(self) -> str:
        """
        A summary for assertion messages.
        """
        how = f"exit {self.code}" if self.signal is None else f"signal {self.signal}"
        return (
            f"{how}; stdout={self.out[-2000:]!r}; stderr={self.err[-2000:]!r}"
        )


class _Collector(ProcessProtocol):
    def __init__(self, stdin: bytes | None = None) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.ended: Deferred[Result] = Deferred()
        self._stdin = stdin

    def connectionMade(self) -> None:
        if self._stdin is not None:
            self.transport.write(self._stdin)
            self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason) -> None:
        value = reason.value
        if isinstance(value, (ProcessDone, ProcessTerminated)):
            code, sig = value.exitCode, value.signal
        else:
            code, sig = None, None
        self.ended.callback(Result(b"".join(self.out), b"".join(self.err), code, sig))


class RunningProcess:
    """
    A child process started with L{spawn}.

    @ivar ended: fires with its L{Result} once it has exited.
    """

    def __init__(self, transport, collector: _Collector) -> None:
        self._transport = transport
        self._collector = collector
        self.ended = collector.ended

    @property
    def pid(self) -> int | None:
        return self._transport.pid

    def output(self) -> bytes:
        """
        Everything it has written to stdout and stderr so far.
        """
        return b"".join(self._collector.out) + b"".join(self._collector.err)

    def signal(self, name: str) -> None:
        """
        Send signal C{name} (C{"TERM"}, C{"KILL"}) to this process only.
        """
        if self._transport.pid is not None:
            self._transport.signalProcess(name)


def spawn(
    argv: Sequence[str], *, cwd: str | None = None, env=None, stdin: bytes | None = None
) -> RunningProcess:
    """
    Start C{argv} (its first item a full path) without a shell; C{stdin},
    when given, is written to it and its standard input closed.
    """
    collector = _Collector(stdin)
    transport = reactor.spawnProcess(
        collector,
        argv[0],
        list(argv),
        env=dict(os.environ) if env is None else env,
        path=cwd,
    )
    return RunningProcess(transport, collector)


def run(
    argv: Sequence[str], *, cwd: str | None = None, env=None, timeout=PROCESS_TIMEOUT
) -> Deferred[Result]:
    """
    Run C{argv} to completion without blocking the reactor, killing it
    after C{timeout} seconds so that a hung client cannot outlive its test.
    """
    process = spawn(argv, cwd=cwd, env=env)
    killer = reactor.callLater(timeout, process.signal, "KILL")

    def ended(result: Result) -> Result:
        if killer.active():
            killer.cancel()
        return result

    return process.ended.addBoth(ended)


# -- clients -------------------------------------------------------------------


def url_host(host: str) -> str:
    """
    C{host} as it appears in a URL: IPv6 addresses in brackets.
    """
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class Client:
    """
    One way of running one TFTP client to download a file.

    @ivar label: what the test names it by.
    @ivar program: the executable's name, looked up on C{PATH}.
    @ivar arguments: C{(host, port, remote, local)} to the arguments after
        the program name.
    @ivar quiet: whether a successful run prints nothing at all; for
        tftp-hpa, which exits 0 even when the transfer failed, its message
        (on stdout) is the only sign of failure.
    """

    label: str
    program: str
    arguments: Callable[[str, int, str, str], list[str]]
    quiet: bool = False

    def __str__(self) -> str:
        return self.label


def curl(*options: str) -> Client:
    """
    curl, with extra command-line C{options} such as C{--tftp-blksize 1468}.
    """

    def arguments(host, port, remote, local):
        return [
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--max-time",
            "60",
            *options,
            "--output",
            local,
            f"tftp://{url_host(host)}:{port}/{remote}",
        ]

    return Client(" ".join(["curl", *options]), "curl", arguments, quiet=True)


def tftp_hpa(mode: str = "octet") -> Client:
    """
    The tftp-hpa client (no options negotiated), in C{mode}.
    """

    def arguments(host, port, remote, local):
        return [host, str(port), "-m", mode, "-c", "get", remote, local]

    return Client(f"tftp-hpa -m {mode}", "tftp", arguments, quiet=True)


def atftp(*options: str) -> Client:
    """
    atftp, with RFC 2347 C{options} such as C{"blksize 1468"}.
    """

    def arguments(host, port, remote, local):
        extra = [word for option in options for word in ("--option", option)]
        return [*extra, "-g", "-r", remote, "-l", local, host, str(port)]

    label = " ".join(["atftp", *(f"--option '{option}'" for option in options)])
    return Client(label, "atftp", arguments)


def busybox(*options: str) -> Client:
    """
    busybox's tftp applet, with extra C{options} such as C{-b 1468}.
    """

    def arguments(host, port, remote, local):
        return ["tftp", "-g", "-r", remote, "-l", local, *options, host, str(port)]

    return Client(" ".join(["busybox tftp", *options]), "busybox", arguments)


@dataclass(frozen=True)
class Fetched:
    """
    What a client got: its process L{Result} and the downloaded bytes (or
    L{None} if it wrote no file).
    """

    client: Client
    result: Result
    content: bytes | None


async def fetch(
    client: Client, host: str, port: int, remote: str, directory: str
) -> Fetched:
    """
    Download C{remote} with C{client} into a fresh file under C{directory}
    (also the client's working directory: atftp writes there).
    """
    program = require_program(client.program)
    workdir = tempfile.mkdtemp(dir=directory)
    local = os.path.join(workdir, "downloaded")
    result = await run(
        [program, *client.arguments(host, port, remote, local)], cwd=workdir
    )
    content = None
    if os.path.exists(local):
        with open(local, "rb") as f:
            content = f.read()
    return Fetched(client, result, content)


async def fetch_all(
    downloads: Sequence[tuple[Client, str, int, str]], directory: str
) -> list[Fetched]:
    """
    Run C{downloads} (each C{(client, host, port, remote)}) all at once.

    Every client is looked for first, so that a missing one skips (or, under
    CI, fails) the test plainly instead of inside a L{gatherResults}.
    """
    for program in {client.program for client, *_ in downloads}:
        require_program(program)
    try:
        return await gatherResults(
            [
                ensureDeferred(fetch(client, host, port, remote, directory))
                for client, host, port, remote in downloads
            ],
            consumeErrors=True,
        )
    except FirstError as error:
        error.subFailure.raiseException()


def assert_fetched(testcase, fetched: Fetched, expected: bytes, what: str) -> None:
    """
    Fail unless the client exited 0 and got exactly C{expected}.  Large
    contents are compared by length, digest and first differing offset, so
    that a failure message stays readable.
    """
    problem = fetch_problem(fetched, expected)
    if problem is not None:
        testcase.fail(f"{what}: {problem}")


def fetch_problem(fetched: Fetched, expected: bytes) -> str | None:
    """
    What is wrong with C{fetched}, or L{None} if its client exited 0 (and,
    for a quiet client, printed nothing) and got exactly C{expected}.
    """
    result = fetched.result
    if result.code != 0 or (fetched.client.quiet and (result.out or result.err)):
        return f"{fetched.client} failed: {result.describe()}"
    if fetched.content is None:
        return f"{fetched.client} wrote no file: {result.describe()}"
    return bytes_problem(fetched.content, expected)


def assert_same_bytes(testcase, got: bytes, expected: bytes, what: str) -> None:
    """
    Fail unless C{got == expected}, saying where they first differ.
    """
    problem = bytes_problem(got, expected)
    if problem is not None:
        testcase.fail(f"{what}: {problem}")


def bytes_problem(got: bytes, expected: bytes) -> str | None:
    """
    Where C{got} first differs from C{expected}, or L{None} if it does not;
    large contents are described by length and digest, so that a failure
    message stays readable.
    """
    if got == expected:
        return None
    first = next(
        (i for i, (a, b) in enumerate(zip(got, expected)) if a != b),
        min(len(got), len(expected)),
    )
    return (
        f"got {len(got)} bytes (sha256 {hashlib.sha256(got).hexdigest()[:16]}),"
        f" expected {len(expected)} (sha256 "
        f"{hashlib.sha256(expected).hexdigest()[:16]}); first difference at "
        f"offset {first}: {got[first:first + 16]!r} vs {expected[first:first + 16]!r}"
    )


# -- files and servers ---------------------------------------------------------


def make_directory(testcase) -> str:
    """
    A fresh temporary directory, removed when C{testcase} ends.
    """
    path = tempfile.mkdtemp(prefix="tftpd_tx-test-")
    testcase.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def random_file(directory: str, name: str, size: int) -> bytes:
    """
    Write C{size} random bytes to C{directory/name} and return them.
    """
    content = os.urandom(size)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(content)
    return content


def start_server(
    testcase,
    root: str,
    interface: str = "127.0.0.1",
    settings=None,
    session_callback=None,
) -> TFTPService:
    """
    A running in-process L{TFTPService} serving C{root} on an ephemeral
    port of C{interface}, stopped when C{testcase} ends.
    """
    service = TFTPService(
        FilesystemHandler(root),
        port=0,
        interface=interface,
        settings=settings,
        session_callback=session_callback,
    )
    service.privilegedStartService()
    service.startService()
    testcase.addCleanup(service.stopService)
    return service


def server_port(service: TFTPService) -> int:
    return service.port.getHost().port


def ipv6_loopback_available() -> bool:
    """
    Whether C{::1} can be bound here (containers often run without IPv6).
    """
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as skt:
            skt.bind(("::1", 0))
    except OSError:
        return False
    return True


def free_udp_port(host: str = "127.0.0.1") -> int:
    """
    A UDP port that nobody had bound a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as skt:
        skt.bind((host, 0))
        return skt.getsockname()[1]


# -- raw TFTP ------------------------------------------------------------------

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6


def rrq(
    path: bytes | str, mode: bytes | str = b"octet", options: dict | None = None
) -> bytes:
    """
    An RRQ datagram, built by hand.
    """

    def raw(value) -> bytes:
        return value.encode("latin-1") if isinstance(value, str) else value

    body = raw(path) + b"\0" + raw(mode) + b"\0"
    for name, value in (options or {}).items():
        body += raw(name) + b"\0" + raw(str(value)) + b"\0"
    return struct.pack("!H", RRQ) + body


def ack(block: int) -> bytes:
    return struct.pack("!HH", ACK, block)


def parse_error(datagram: bytes) -> tuple[int, str] | None:
    """
    C{(code, message)} of an ERROR datagram, or L{None} for anything else.
    """
    if len(datagram) < 4 or struct.unpack("!H", datagram[:2])[0] != ERROR:
        return None
    code = struct.unpack("!H", datagram[2:4])[0]
    return code, datagram[4:].split(b"\0", 1)[0].decode("latin-1")


def _parse_options(body: bytes) -> dict[str, str]:
    parts = body.split(b"\0")[:-1]
    return {
        parts[i].decode("latin-1").lower(): parts[i + 1].decode("latin-1")
        for i in range(0, len(parts) - 1, 2)
    }


class Probe(DatagramProtocol):
    """
    A UDP port in the reactor that sends what it is told and queues what it
    receives, with the source address of each datagram.
    """

    noisy = False

    def __init__(self) -> None:
        self._received: deque[tuple[bytes, tuple]] = deque()
        self._waiting: deque[Deferred] = deque()

    def datagramReceived(self, datagram: bytes, addr) -> None:
        if self._waiting:
            self._waiting.popleft().callback((datagram, addr[:2]))
        else:
            self._received.append((datagram, addr[:2]))

    def send(self, datagram: bytes, addr) -> None:
        self.transport.write(datagram, addr)

    def receive(self, timeout: float = 1.0) -> Deferred:
        """
        The next C{(datagram, source)} received, or L{None} if nothing
        arrives within C{timeout} seconds.
        """
        if self._received:
            return succeed(self._received.popleft())
        waiting: Deferred = Deferred()
        self._waiting.append(waiting)

        def expire() -> None:
            self._waiting.remove(waiting)
            waiting.callback(None)

        timer = reactor.callLater(timeout, expire)

        def arrived(result):
            if timer.active():
                timer.cancel()
            return result

        return waiting.addCallback(arrived)


def open_probe(testcase, interface: str = "127.0.0.1") -> Probe:
    """
    A L{Probe} on an ephemeral port of C{interface}, closed when
    C{testcase} ends.
    """
    probe = Probe()
    port = reactor.listenUDP(0, probe, interface=interface, maxPacketSize=65536)
    testcase.addCleanup(port.stopListening)
    return probe


@dataclass
class RawTransfer:
    """
    What L{RawReader} saw.

    @ivar content: the data received, in order.
    @ivar blocks: the wire numbers of the DATA blocks accepted, in order.
    @ivar sources: every address a reply came from.
    @ivar oack: the options acknowledged, or L{None} if there was no OACK.
    @ivar error: C{(code, message)} of an ERROR received, or L{None}.
    @ivar timed_out: the server stopped answering.
    """

    content: bytes = b""
    blocks: list[int] = field(default_factory=list)
    sources: set[tuple[str, int]] = field(default_factory=set)
    oack: dict[str, str] | None = None
    error: tuple[int, str] | None = None
    timed_out: bool = False


class RawReader(DatagramProtocol):
    """
    A minimal TFTP client in the reactor: RRQ, OACK, windowed DATA and
    ACKs, block numbers rolling over to C{rollover} after 65535.

    It acknowledges every C{windowsize} blocks and the last one; on a block
    out of order it acknowledges the last good block once (RFC 7440); on
    silence it repeats its last packet, C{retries} times.
    """

    noisy = False

    def __init__(
        self,
        server: tuple[str, int],
        request: bytes,
        *,
        rollover: int = 0,
        timeout: float = 1.0,
        retries: int = 5,
    ) -> None:
        self.server = server
        self.done: Deferred[RawTransfer] = Deferred()
        self.transfer = RawTransfer()
        self._request = request
        self._rollover = rollover
        self._timeout = timeout
        self._retries = retries
        self._tid = None
        self._last_sent = request
        self._blksize = 512
        self._window = 1
        self._in_window = 0
        self._next = 1
        self._nacked = False
        self._chunks: list[bytes] = []
        self._attempts = 0
        self._timer = None

    def startProtocol(self) -> None:
        self._send(self._request, self.server)

    def _send(self, datagram: bytes, addr) -> None:
        self._last_sent = datagram
        self.transport.write(datagram, addr)
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._timeout)
        else:
            self._timer = reactor.callLater(self._timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._attempts += 1
        if self._attempts > self._retries:
            self.transfer.timed_out = True
            self._finish()
            return
        self._send(self._last_sent, self._tid or self.server)

    def datagramReceived(self, datagram: bytes, addr) -> None:
        addr = addr[:2]
        if self.done.called:
            return
        self.transfer.sources.add(addr)
        if self._tid is None:
            self._tid = addr
        elif addr != self._tid:
            return
        if len(datagram) < 4:
            return
        opcode, number = struct.unpack("!HH", datagram[:4])
        if opcode == ERROR:
            self.transfer.error = parse_error(datagram)
            self._finish()
        elif opcode == OACK and not self.transfer.blocks:
            self.transfer.oack = _parse_options(datagram[2:])
            self._blksize = int(self.transfer.oack.get("blksize", 512))
            self._window = int(self.transfer.oack.get("windowsize", 1))
            self._attempts = 0
            self._send(ack(0), addr)
        elif opcode == DATA:
            self._data(number, datagram[4:], addr)

    def _data(self, number: int, payload: bytes, addr) -> None:
        if number != self._next:
            if not self._nacked and self.transfer.blocks:
                self._nacked = True
                self._in_window = 0
                self._send(ack(self.transfer.blocks[-1]), addr)
            return
        self._nacked = False
        self._attempts = 0
        self.transfer.blocks.append(number)
        self._chunks.append(payload)
        self._next = (number + 1) & 0xFFFF
        if self._next == 0 and self._rollover == 1:
            self._next = 1
        self._in_window += 1
        if len(payload) < self._blksize:
            self.transport.write(ack(number), addr)
            self._finish()
        elif self._in_window >= self._window:
            self._in_window = 0
            self._send(ack(number), addr)
        elif self._timer is not None and self._timer.active():
            self._timer.reset(self._timeout)

    def _finish(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.transfer.content = b"".join(self._chunks)
        self._chunks = []
        port = self.transport
        self.done.callback(self.transfer)
        port.stopListening()


def read_raw(
    server: tuple[str, int],
    request: bytes,
    *,
    interface: str | None = None,
    rollover: int = 0,
    timeout: float = 1.0,
    retries: int = 5,
    receive_buffer: int | None = None,
) -> Deferred[RawTransfer]:
    """
    Send C{request} (usually from L{rrq}) to C{server} from a fresh port and
    read the transfer with a L{RawReader}; fires with its L{RawTransfer}.

    @param receive_buffer: the C{SO_RCVBUF} to set on the port, in bytes
        of payload and bookkeeping (Linux doubles the value set: 106496
        gives its default buffer of 212992), so that a test does not depend
        on the host's C{net.core.rmem_default}.
    """
    if interface is None:
        interface = "::1" if ":" in server[0] else "127.0.0.1"
    reader = RawReader(
        server, request, rollover=rollover, timeout=timeout, retries=retries
    )
    port = reactor.listenUDP(0, reader, interface=interface, maxPacketSize=65536)
    if receive_buffer is not None:
        port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    return reader.done


# -- twistd ---------------------------------------------------------------------


#: C{twistd} for the Python running the tests (C{twisted.scripts.twistd}
#: has no C{__main__}, and C{python -m twisted} is the other runner,
#: C{twist}), as a child that dies with the test run.
TWISTD = [
    sys.executable,
    "-c",
    # PR_SET_PDEATHSIG (1): the server gets SIGTERM if the test run dies, so
    # an interrupted run leaves no server behind.
    "import ctypes, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
    "sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]


def twistd_environment() -> dict[str, str]:
    """
    The environment for C{twistd}: this checkout first on the path, so that
    the code and plugin under test are the ones in the repository.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    return env

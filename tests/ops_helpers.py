"""
Helpers for the tests of the operations plane against real programs
(Prometheus, ExaBGP's healthcheck, the contrib process): a C{twistd tftp}
child with C{--ops}, HTTP on loopback, child processes read line by line,
and raw-socket TFTP clients whose pace the test sets.

Everything here blocks, in plain pytest tests (as C{test_flood.py} does),
and every wait is bounded.  Processes are started by these helpers and
stopped by their pid, never by name.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable

from clients import REPO_ROOT, TWISTD, free_udp_port, require_program, rrq, twistd_environment

__all__ = [
    "CONTRIB_HEALTH",
    "Child",
    "PacedTransfer",
    "Twistd",
    "free_tcp_port",
    "http",
    "require_program",
    "run_transfers",
    "start_transfers",
    "wait_for",
]

#: The contrib process for ExaBGP's API.
CONTRIB_HEALTH = os.path.join(REPO_ROOT, "contrib", "exabgp", "tftpd-health.py")

#: HTTP without a proxy, whatever the environment says: every server here
#: is on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """
    A TCP port that nobody had bound a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as skt:
        skt.bind((host, 0))
        return skt.getsockname()[1]


def http(method: str, url: str, timeout: float = 2.0) -> tuple[int | None, bytes]:
    """
    C{(status, body)} of one request, or C{(None, b"")} when nothing
    answered.
    """
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return None, b""


def wait_for(predicate: Callable[[], object], timeout: float, what, interval=0.05):
    """
    The first true value C{predicate()} returns within C{timeout} seconds.

    @param what: what is waited for, or a callable returning it (so that it
        can tell what happened meanwhile).
    @raise AssertionError: naming C{what}, if none came.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g}s: {what() if callable(what) else what}")
        time.sleep(interval)


class Child:
    """
    A child process whose standard output and error are read, line by line,
    as they come.

    @ivar started: C{time.monotonic()} when it was started.
    """

    def __init__(self, argv, *, cwd=None, env=None, stdin=subprocess.DEVNULL) -> None:
        self.argv = list(argv)
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            self.argv, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
        )  # fmt: skip
        self._lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self._lines.append((time.monotonic(), line.rstrip("\n")))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def lines(self) -> list[str]:
        with self._changed:
            return [line for _, line in self._lines]

    def timed_lines(self) -> list[tuple[float, str]]:
        with self._changed:
            return list(self._lines)

    def output(self) -> str:
        return "\n".join(self.lines())

    def wait_line(self, match: Callable[[str], bool], timeout: float, start: int = 0):
        """
        C{(index, line)} of the first line from index C{start} on for which
        C{match} is true, waiting up to C{timeout} seconds for it.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(start, len(self._lines)):
                    if match(self._lines[index][1]):
                        return index, self._lines[index][1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no such line within {timeout:g}s from {self.argv[0]} "
                        f"(pid {self.pid}, exit {self.process.poll()}); it wrote:\n"
                        + "\n".join(line for _, line in self._lines[-60:])
                    )
                self._changed.wait(min(left, 0.2))

    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        """
        Send C{signum} to this process (by its pid), if it still runs.
        """
        if self.running():
            os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        """
        Its exit status (negative: the signal that ended it), once it has
        exited; at most C{timeout} seconds.
        """
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        """
        Kill it if it still runs, and reap it.
        """
        if self.running():
            os.kill(self.pid, signal.SIGKILL)
        try:
            self.process.wait(10)
        finally:
            self._reader.join(5)
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    stream.close()


class Twistd(Child):
    """
    C{twistd -n tftp} serving C{root} on a free port of 127.0.0.1, with
    C{--ops} on a free TCP port of 127.0.0.1 unless C{ops=False}, and more
    C{arguments}.

    @ivar port: the TFTP port.
    @ivar ops_port: the operations endpoint's port, or L{None}.
    """

    def __init__(self, root: str, *arguments: str, cwd: str, ops: bool = True) -> None:
        self.port = free_udp_port()
        self.ops_port = free_tcp_port() if ops else None
        argv = [
            *TWISTD, "-n", "--pidfile=", "tftp", "--root", root, "--port", str(self.port),
            "--interface", "127.0.0.1", *arguments,
        ]  # fmt: skip
        if ops:
            argv += ["--ops", f"tcp:{self.ops_port}:interface=127.0.0.1"]
        super().__init__(argv, cwd=cwd, env=twistd_environment())

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ops_port}{path}"

    def get(self, path: str, timeout: float = 2.0) -> tuple[int | None, bytes]:
        return http("GET", self.url(path), timeout)

    def post(self, path: str, timeout: float = 2.0) -> tuple[int | None, bytes]:
        return http("POST", self.url(path), timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """
        Wait until it serves: C{/health} says ok (with C{--ops}), or the
        listener answers an RRQ for a missing file (without).
        """

        def ready():
            if not self.running():
                raise AssertionError(f"twistd exited early:\n{self.output()}")
            if self.ops_port is not None:
                return self.get("/health", 0.5)[0] == 200
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind(("127.0.0.1", 0))
                probe.settimeout(0.2)
                probe.sendto(rrq("no such file, a readiness probe"), self.address)
                try:
                    return probe.recvfrom(1024)
                except socket.timeout:
                    return None

        wait_for(ready, timeout, f"twistd serving on port {self.port}", interval=0.1)


# -- raw TFTP clients at a set pace ----------------------------------------------

DATA, ACK, ERROR = 3, 4, 5


@dataclass
class PacedTransfer:
    """
    One octet RRQ at blksize 512 from its own socket, acknowledged at the
    pace the test sets, for L{run_transfers}.

    @ivar pace: seconds between a DATA's arrival and its ACK (0: at once).
    @ivar gate: if given, every ACK after the first waits until it is set.
    @ivar content: the payload received, in order.
    @ivar error: C{(code, message)} of the ERROR that ended it, if one did.
    @ivar error_at: C{time.monotonic()} when that ERROR came.
    @ivar completed: the last (short) block arrived and was acknowledged.
    """

    server: tuple[str, int]
    path: str
    pace: float = 0.0
    gate: threading.Event | None = None
    content: bytearray = field(default_factory=bytearray)
    error: tuple[int, str] | None = None
    error_at: float | None = None
    completed: bool = False
    acknowledged: int = 0
    _socket: socket.socket | None = None
    _tid: tuple[str, int] | None = None
    _expected: int = 1
    _due: tuple[float, int] | None = None
    _last_short: bool = False

    @property
    def finished(self) -> bool:
        return self.completed or self.error is not None

    def _start(self) -> socket.socket:
        skt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        skt.bind(("127.0.0.1", 0))
        skt.setblocking(False)
        skt.sendto(rrq(self.path), self.server)
        self._socket = skt
        return skt

    def _received(self, datagram: bytes, source, now: float) -> None:
        if self.finished or len(datagram) < 4:
            return
        if self._tid is None:
            self._tid = source
        elif source != self._tid:
            return
        opcode, number = struct.unpack("!HH", datagram[:4])
        if opcode == ERROR:
            self.error = (number, datagram[4:].split(b"\0", 1)[0].decode("latin-1"))
            self.error_at = now
        elif opcode == DATA and number == self._expected & 0xFFFF and self._due is None:
            self.content += datagram[4:]
            self._expected += 1
            self._last_short = len(datagram) - 4 < 512
            self._due = (now + (self.pace if self.acknowledged else 0.0), number)

    def _tick(self, now: float) -> float | None:
        """
        Send the ACK that is due; the time of the next one, if waiting.
        """
        if self._due is None or self.finished:
            return None
        at, number = self._due
        if self.acknowledged and self.gate is not None and not self.gate.is_set():
            return now + 0.01
        if at > now:
            return at
        self._socket.sendto(struct.pack("!HH", ACK, number), self._tid)
        self.acknowledged += 1
        self._due = None
        if self._last_short:
            self.completed = True
        return None


def run_transfers(transfers: list[PacedTransfer], deadline: float) -> None:
    """
    Run C{transfers} from one thread's selector until each has finished or
    C{time.monotonic()} passes C{deadline}; their sockets are closed at the
    end.
    """
    selector = selectors.DefaultSelector()
    try:
        for transfer in transfers:
            selector.register(transfer._start(), selectors.EVENT_READ, transfer)
        while not all(t.finished for t in transfers) and time.monotonic() < deadline:
            now = time.monotonic()
            wake = [t._tick(now) for t in transfers]
            soonest = min([w for w in wake if w is not None], default=now + 0.05)
            timeout = max(0.0, min(soonest, deadline) - time.monotonic())
            for key, _ in selector.select(min(timeout, 0.05)):
                transfer = key.data
                while True:
                    try:
                        datagram, source = key.fileobj.recvfrom(65536)
                    except BlockingIOError:
                        break
                    transfer._received(datagram, source[:2], time.monotonic())
    finally:
        for transfer in transfers:
            if transfer._socket is not None:
                selector.unregister(transfer._socket)
                transfer._socket.close()
        selector.close()


def start_transfers(transfers: list[PacedTransfer], seconds: float) -> threading.Thread:
    """
    L{run_transfers} in a new thread for at most C{seconds}; join it.
    """
    thread = threading.Thread(
        target=run_transfers, args=(transfers, time.monotonic() + seconds), daemon=True
    )
    thread.start()
    return thread

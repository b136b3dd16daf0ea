"""
The hostile review's findings (issue 10), re-run against this checkout's
`twistd tftp` and tftpd-hpa in the same run.

    sudo python3 benchmarks/hostile.py [--quick] [--servers project,hpa[,atftpd]]
                                       [--hold-time S] [--margin S] [--findings 2,3,...]

Starts every server itself on loopback high ports (127.0.0.0/8 only), each
finding on a fresh instance, sends each finding's reproduction from plain UDP
and TCP sockets, prints a markdown table with the figure the review found
("then") and what each server does now, and stops every process it started,
and their children, by pid. Progress goes to stderr, the table to stdout.

Must run as root: finding 2 lowers the server's descriptor limit to 256
(soft and hard), tftpd-hpa chroots, and clients bind 127.0.0.2 and 127.0.1.x.

Standard library only; Linux only (/proc/net/udp, /proc/PID/stat, prctl).
The package itself is only started, as `twistd tftp`, never imported.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import os
import platform
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
IN_TFTPD = "/usr/sbin/in.tftpd"
ATFTPD = "/tmp/bench/.peers/atftpd/usr/sbin/atftpd"
HOST = "127.0.0.1"
#: A second client address, for "another client" (finding 2).
OTHER = "127.0.0.2"

PROJECT, HPA, ATFTP = "project", "hpa", "atftpd"
COLUMNS = {PROJECT: "tftpd_tx now", HPA: "tftpd-hpa now", ATFTP: "atftpd now"}

#: The files of the temporary root. "m.bin" makes a 14-byte RRQ, as in the review.
BIG, SMALL = "m.bin", "small.txt"
BIG_SIZE = 1 << 20
SMALL_DATA = b"hello from the hostile run\n"

#: Every wait on a socket, unless a finding says otherwise.
RECV_TIMEOUT = 1.0
#: The longest a server may take to serve its first request.
START_TIMEOUT = 15.0
#: Seconds between the sends of a burst of requests (a burst faster than
#: this would measure the kernel's receive buffer, not the server).
BURST_GAP = 0.001

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6

#: What the review found (issue 10's table), by finding.
THEN = {
    "1": "a symlink swapped in mid-request: 1,939 of 4,000 RRQs (directory) and 472 of "
         "4,000 (file) got the outside file",
    "2": "at ulimit -n 256, 123 never-ACKed RRQs made every later request (any client) fail "
         "with ERROR 0 until they expired; no cap (5,000 and 9,000 held sessions accepted)",
    "3": "one RRQ with timeout 255 holds its session and 2 descriptors for 7,905 s",
    "4": "one 14-byte RRQ, never ACKed, draws 6 DATA of 516 B (0, 1, 3, 7, 15, 23 s): "
         "×221 (tftpd-hpa 5.2 the same)",
    "5": "64 KiB requests accepted; a 64 KB RRQ with 16,000 options costs 4.7 ms: "
         "~275 a second saturate the event loop",
    "6": "log lines outside --log-rate, full paths (up to 65 KB): one sender grew the log "
         "6–18 MB in under a second",
    "7": "\"Cannot read file\" or a traceback per request, depending on which open fails",
    "8": "keys file: mode bits checked, not owner or directories: nobody got a root prompt",
    "9": "unauthenticated manhole connections never time out: 200 idle connections "
         "stayed open",
}


def say(*words) -> None:
    print(*words, file=sys.stderr, flush=True)


# -- packets -------------------------------------------------------------------


def request(opcode: int, path: bytes | str, mode: str = "octet", **options) -> bytes:
    if isinstance(path, str):
        path = path.encode()
    out = struct.pack("!H", opcode) + path + b"\0" + mode.encode() + b"\0"
    for name, value in options.items():
        out += name.encode() + b"\0" + str(value).encode() + b"\0"
    return out


def ack(block: int) -> bytes:
    return struct.pack("!HH", ACK, block & 0xFFFF)


def error(code: int, message: str) -> bytes:
    return struct.pack("!HH", ERROR, code) + message.encode() + b"\0"


def opcode(packet: bytes) -> int:
    return struct.unpack("!H", packet[:2])[0] if len(packet) >= 2 else -1


def describe(packet: bytes | None) -> str:
    """
    One packet in a few words: "DATA 1 (516 B)", "ERROR 4 'Request over 512 octets'".
    """
    if packet is None:
        return "nothing"
    kind = opcode(packet)
    if kind == DATA:
        if len(packet) < 4:
            return f"DATA without a block number ({len(packet)} B)"
        return f"DATA {struct.unpack('!H', packet[2:4])[0]} ({len(packet)} B)"
    if kind == ERROR and len(packet) >= 4:
        message = packet[4:].split(b"\0", 1)[0].decode("utf-8", "replace")
        return f"ERROR {struct.unpack('!H', packet[2:4])[0]} '{message[:60]}'"
    if kind == OACK:
        fields = packet[2:].split(b"\0")
        pairs = [f"{fields[i].decode()} {fields[i + 1].decode()}" for i in range(0, len(fields) - 1, 2)]
        return f"OACK ({', '.join(pairs)})"
    return f"opcode {kind} ({len(packet)} B)"


# -- sockets -------------------------------------------------------------------


class Sockets:
    """
    Every client socket of a finding, closed together when it ends.
    """

    def __init__(self) -> None:
        self.all: list[socket.socket] = []

    def udp(self, address: str = HOST, timeout: float = RECV_TIMEOUT) -> socket.socket:
        if not address.startswith("127."):
            raise ValueError(f"{address} is not a loopback address")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.all.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((address, 0))
        s.settimeout(timeout)
        return s

    def tcp(self, port: int, timeout: float = 5.0) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.all.append(s)
        s.settimeout(timeout)
        s.connect((HOST, port))
        return s

    def close(self) -> None:
        for s in self.all:
            s.close()
        self.all.clear()

    def __enter__(self) -> "Sockets":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def receive(s: socket.socket, timeout: float):
    """
    One datagram and its source, or (None, None) after C{timeout} seconds.
    """
    s.settimeout(max(timeout, 0.001))
    try:
        return s.recvfrom(65536)
    except (socket.timeout, ConnectionRefusedError):
        return None, None


def drain(s: socket.socket) -> list[bytes]:
    """
    Every datagram waiting on C{s}, without waiting for more.
    """
    packets = []
    s.setblocking(False)
    try:
        while True:
            packets.append(s.recv(65536))
    except (BlockingIOError, ConnectionRefusedError):
        pass
    return packets


def fetch(sockets: Sockets, port: int, name: str, expected: bytes, source: str = HOST,
          limit: float = 5.0) -> tuple[bool, float, str]:
    """
    Fetch C{name} in lock-step at blksize 512 from C{source}, resending the
    RRQ (or the last ACK) after 1 s of silence, for C{limit} seconds at most.

    @return: whether the right bytes arrived, the seconds it took, and what
        happened in a few words.
    """
    s = sockets.udp(source)
    started = time.monotonic()
    deadline = started + limit
    s.sendto(request(RRQ, name), (HOST, port))
    last, peer, received, block = request(RRQ, name), (HOST, port), b"", 1
    while time.monotonic() < deadline:
        packet, source_address = receive(s, min(1.0, deadline - time.monotonic()))
        if packet is None:
            s.sendto(last, peer)
            continue
        kind = opcode(packet)
        if kind == ERROR:
            return False, time.monotonic() - started, describe(packet)
        if kind != DATA or len(packet) < 4:
            continue
        if block == 1:
            peer = source_address
        if source_address != peer or struct.unpack("!H", packet[2:4])[0] != block & 0xFFFF:
            continue
        received += packet[4:]
        last = ack(block)
        s.sendto(last, peer)
        if len(packet) < 516:
            elapsed = time.monotonic() - started
            if received == expected:
                return True, elapsed, f"served in {elapsed * 1000:.1f} ms"
            return False, elapsed, "wrong bytes"
        block += 1
    return False, limit, f"not served within {limit:g} s"


# -- processes -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
        try:
            t.bind((HOST, port))  # free for TCP too (the manhole)
        except OSError:
            return free_port()
        return port


def children_of(pid: int) -> list[int]:
    """
    The pids of every descendant of C{pid} (tftpd-hpa forks one per transfer).
    """
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """
    CPU seconds of C{pid} and of its children it has reaped.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def udp_port_bound(port: int) -> bool:
    """
    Whether a UDP socket is bound to 127.0.0.1:C{port} (from /proc/net/udp).
    """
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as f:
        return any(line.split()[1] == wanted for line in f.readlines()[1:])


def udp_port_free(port: int) -> bool:
    """
    Whether nothing holds UDP port C{port} on 127.0.0.1: this script can
    bind it (and lets go at once).  Unlike a line missing from
    /proc/net/udp, which a read may skip while other sockets come and go,
    this does not err.  Only for a port a server chose at random, never for
    one it is about to bind.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _child_setup(nofile: int | None):
    def setup() -> None:
        # PR_SET_PDEATHSIG (1): the server gets SIGTERM if this script dies.
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    return setup


class Server:
    """
    One server under test, started in the foreground with its stdout and
    stderr in C{log}.
    """

    running: list["Server"] = []

    def __init__(self, kind: str, work: str, tag: str, extra: list[str] = (),
                 nofile: int | None = None) -> None:
        self.kind = kind
        self.port = free_port()
        self.root = os.path.join(work, "root")
        self.log = os.path.join(work, f"{kind}-{tag}.log")
        if kind == PROJECT:
            argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "tftp",
                    "--port", str(self.port), "--interface", HOST, "--root", self.root, *extra]
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [TOP, *filter(None, [os.environ.get("PYTHONPATH")])]))
        elif kind == HPA:
            argv = [IN_TFTPD, "-L", "-a", f"{HOST}:{self.port}", "-s", self.root,
                    "-u", "root", "-B", "65464", *extra]
            env = dict(os.environ)
        else:
            argv = [ATFTPD, "--daemon", "--no-fork", "--port", str(self.port),
                    "--bind-address", HOST, "--user", "root", "--group", "root",
                    "--logfile", "-", *extra, self.root]
            env = dict(os.environ)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=_child_setup(nofile),
            )
        Server.running.append(self)
        self.wait_ready()

    def wait_ready(self) -> None:
        # Bound first, then one fetch: an RRQ sent before the port is bound and
        # resent as it binds would leave a transfer behind that counts
        # against 127.0.0.1's caps.
        deadline = time.monotonic() + START_TIMEOUT
        while not udp_port_bound(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} did not bind within {START_TIMEOUT:g} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)
        with Sockets() as sockets:
            ok, _, what = fetch(sockets, self.port, SMALL, SMALL_DATA, limit=5.0)
            if ok:
                return
        raise RuntimeError(f"{self.kind} did not serve {SMALL}: {what}\n{self.log_tail()}")

    def log_size(self) -> int:
        return os.path.getsize(self.log)

    def log_lines(self) -> list[str]:
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()

    def log_tail(self) -> str:
        return "\n".join(self.log_lines()[-15:])

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        """
        Freeze the server (no new children), kill its children by pid, then
        end it: SIGTERM, and SIGKILL after 5 s.
        """
        if self in Server.running:
            Server.running.remove(self)
        pid = self.process.pid
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
            for child in children_of(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGCONT)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def log_kinds(server: Server, *words: str, most: int = 5) -> str:
    """
    The server's log lines that contain one of C{words} (any case), without
    their timestamps: each kind of line once, with how many there were of it.
    """
    kinds: dict[str, list] = {}
    for line in server.log_lines():
        if not any(word in line.lower() for word in words):
            continue
        text = line.split(" ", 1)[-1]
        shape = re.sub(r"\('[\d.]+', \d+\)|[\d.:]+", "N", text)
        kinds.setdefault(shape, [text, 0])[1] += 1
    if not kinds:
        return "none"
    shown = [f"`{text[:170]}{'…' if len(text) > 170 else ''}`" + (f" ×{count}" if count > 1 else "")
             for text, count in list(kinds.values())[:most]]
    if len(kinds) > most:
        shown.append(f"and {len(kinds) - most} more kinds")
    return "; ".join(shown)


# -- findings ------------------------------------------------------------------
#
# Each returns {row key: figure}; a row key is (finding number, what is shown).


def held_rrqs(sockets: Sockets, port: int, count: int, spread: bool = False,
              path: str = BIG) -> list[socket.socket]:
    """
    Send C{count} RRQs, one from each new socket, and never ACK them: from
    127.0.0.1, or with C{spread} from as many addresses 127.0.1.1 onwards.
    """
    held = []
    for i in range(count):
        address = f"127.0.{1 + i // 250}.{1 + i % 250}" if spread else HOST
        s = sockets.udp(address)
        s.sendto(request(RRQ, path), (HOST, port))
        held.append(s)
        time.sleep(BURST_GAP)
    return held


def first_replies(held: list[socket.socket]) -> list[bytes | None]:
    return [(drain(s) or [None])[0] for s in held]


def finding_2_7(kind: str, work: str) -> dict:
    """
    Descriptors: the server at ulimit -n 256 (soft and hard), never-ACKed
    RRQs, and a fetch from another address.
    """
    rows = {}
    nofile = 256
    small = os.path.join(work, "root", SMALL)
    with open(small, "rb") as f:
        expected = f.read()

    say(f"  [{kind}] 2: 123 held RRQs, then a fetch from {OTHER}")
    with Server(kind, work, "f2a", nofile=nofile) as server, Sockets() as sockets:
        held = held_rrqs(sockets, server.port, 123)
        ok, _, what = fetch(sockets, server.port, SMALL, expected, source=OTHER)
        time.sleep(0.3)
        replied = sum(r is not None for r in first_replies(held))
        rows[("2", "ulimit -n 256: 123 never-ACKed RRQs (one address), then a fetch from "
                   "127.0.0.2")] = f"{what}; {replied} of the 123 answered"
        rows[("2", "its log lines about descriptors")] = log_kinds(server, "descriptor")

    for spread in (False, True):
        where = "300 addresses" if spread else "one address"
        say(f"  [{kind}] 2/7: 300 held RRQs from {where}")
        with Server(kind, work, f"f2b{int(spread)}", nofile=nofile) as server, \
                Sockets() as sockets:
            held = held_rrqs(sockets, server.port, 300, spread=spread)
            ok, _, what = fetch(sockets, server.port, SMALL, expected, source=OTHER)
            time.sleep(1.5)  # the retransmissions arrive after 1 s
            replies = first_replies(held)
            replied = sum(r is not None for r in replies)
            rows[("2", f"300 never-ACKed RRQs from {where}: answered; then a fetch from "
                       "127.0.0.2")] = f"{replied} of 300; {what}"
            rows[("7", f"what the 200th never-ACKed client ({where}) sees")] = describe(replies[199])

    if kind == PROJECT:
        say(f"  [{kind}] 7: caps lifted, 300 held RRQs until descriptors run out")
        lifted = ["--max-sessions", "100000", "--max-sessions-per-client", "100000"]
        with Server(kind, work, "f7", extra=lifted, nofile=nofile) as server, \
                Sockets() as sockets:
            held = held_rrqs(sockets, server.port, 300)
            _, _, during = fetch(sockets, server.port, SMALL, expected, source=OTHER, limit=2.0)
            time.sleep(0.5)
            replies = first_replies(held)
            replied = sum(r is not None for r in replies)
            # Unproven transfers end after their two sends (about 3 s at --timeout 1).
            time.sleep(3.0)
            _, _, after = fetch(sockets, server.port, SMALL, expected, source=OTHER)
            log = log_kinds(server, "descriptor")
            rows[("7", "caps lifted (--max-sessions 100000): 300 never-ACKed RRQs, the 200th "
                       "sees; fetch from 127.0.0.2 while out, and 3.5 s later")] = (
                f"{replied} of 300 answered; the 200th sees {describe(replies[199])}; fetch "
                f"while out: {during}; later: {after}")
            rows[("7", "caps lifted: the log lines about descriptors")] = log
    return rows


def hold_probe(server: Server, bound: float, result: dict) -> None:
    """
    Finding 3: RRQ with timeout 255 and tsize, ACK the OACK, then silence;
    watch the retransmissions and the transfer's port until it is closed
    or C{bound} seconds have passed; then one ACK of DATA 1 checks that no
    one answers any more.
    """
    with Sockets() as sockets:
        s = sockets.udp()
        started = time.monotonic()
        s.sendto(request(RRQ, BIG, timeout=255, tsize=0), (HOST, server.port))
        packet, peer = receive(s, 5.0)
        if packet is None or opcode(packet) != OACK:
            result["first"] = describe(packet)
            return
        result["first"] = describe(packet)
        s.sendto(ack(0), peer)
        arrivals = []
        gone = None
        deadline = started + bound
        while time.monotonic() < deadline:
            packet, _ = receive(s, min(0.5, deadline - time.monotonic()))
            if packet is not None:
                arrivals.append((time.monotonic() - started, describe(packet)))
                continue
            if udp_port_free(peer[1]):
                gone = time.monotonic() - started
                break
        result["arrivals"] = arrivals
        result["gone"] = gone
        if gone is not None:
            with contextlib.suppress(OSError):
                s.sendto(ack(1), peer)  # anyone still there would answer
            late, _ = receive(s, 0.5)
            result["after"] = describe(late)


def reflection_probe(server: Server, window: float, options: dict, result: dict) -> None:
    """
    Finding 4: one RRQ for the 1 MiB file, never ACKed: every datagram back
    within C{window} seconds.
    """
    with Sockets() as sockets:
        s = sockets.udp()
        packet = request(RRQ, BIG, **options)
        started = time.monotonic()
        s.sendto(packet, (HOST, server.port))
        arrivals = []
        deadline = started + window
        while time.monotonic() < deadline:
            reply, _ = receive(s, deadline - time.monotonic())
            if reply is not None:
                arrivals.append((time.monotonic() - started, reply))
        result.update(sent=len(packet), arrivals=arrivals)


def finding_3_4(kinds: list[str], work: str, hold: float, margin: float, window: float,
                quick: bool) -> dict:
    """
    Findings 3 and 4 wait for timers: every server at once, each probe in its
    own thread on its server.
    """
    rows = {}
    bound = hold + margin
    results: dict[str, dict] = {}
    threads = []
    servers = []
    try:
        for kind in kinds:
            extra = ["--hold-time", f"{hold:g}"] if kind == PROJECT else []
            servers.append(server := Server(kind, work, "f34", extra=extra))
            results[kind] = {"hold": {}, "plain": {}, "options": {}}
            threads += [
                threading.Thread(target=hold_probe, args=(server, bound, results[kind]["hold"])),
                threading.Thread(target=reflection_probe,
                                 args=(server, window, {}, results[kind]["plain"])),
                threading.Thread(target=reflection_probe,
                                 args=(server, window,
                                       {"blksize": 1468, "windowsize": 16, "tsize": 0},
                                       results[kind]["options"])),
            ]
        say(f"  3 and 4 on {', '.join(kinds)} at once: up to {max(bound, window):g} s")
        for thread in threads:
            thread.daemon = True
            thread.start()
        for thread in threads:
            thread.join(timeout=max(bound, window) + 30)
    finally:
        for server in servers:
            server.stop()

    used = "--hold-time %g (%s)" % (hold, "--quick" if quick else "given" if hold != 120 else
                                    "the default")
    for kind in kinds:
        hold_result = results[kind]["hold"]
        arrivals = hold_result.get("arrivals", [])
        times = ", ".join(f"{t:.1f}" for t, _ in arrivals) or "none"
        if "arrivals" not in hold_result:
            figure = f"no OACK: {hold_result.get('first', 'nothing')}"
        elif hold_result.get("gone") is not None:
            figure = (f"gave up after {hold_result['gone']:.1f} s (port closed); "
                      f"{len(arrivals)} DATA after the ACK of the OACK, at {times} s")
            if hold_result.get("after", "nothing") != "nothing":
                figure += f"; an ACK then drew {hold_result['after']}"
        else:
            figure = (f"> {bound:g} s (still held at the bound); {len(arrivals)} DATA after "
                      f"the ACK of the OACK, at {times} s")
        if kind == PROJECT:
            figure += f" [{used}]"
        rows.setdefault(("3", f"RRQ timeout 255 + tsize, OACK ACKed, then silence: until "
                              f"the server gives up (watched up to {bound:g} s)"), {})[kind] = figure

        for key, label in (("plain", "no options"),
                           ("options", "blksize 1468 windowsize 16 tsize")):
            r = results[kind][key]
            arrivals = r.get("arrivals", [])
            out = sum(len(p) for _, p in arrivals)
            sizes = sorted({len(p) for _, p in arrivals})
            kinds_seen = sorted({describe(p).split(" (")[0].split(" '")[0] for _, p in arrivals},
                                key=lambda k: (len(k), k))
            at = ", ".join(f"{t:.0f}" for t, _ in arrivals)
            figure = (f"{len(arrivals)} datagrams ({'/'.join(kinds_seen) or '-'}, "
                      f"{'/'.join(map(str, sizes)) or '-'} B) at {at or '-'} s: "
                      f"{out} B for {r.get('sent', 0)} B in, ×{out / max(r.get('sent', 1), 1):.0f}")
            rows.setdefault(("4", f"one RRQ for 1 MiB, {label}, never ACKed: datagrams and bytes "
                                  f"back within {window:g} s"), {})[kind] = figure
    return rows


def rate(server: Server, packet: bytes, count: int, concurrency: int = 4,
         limit: float = 60.0) -> tuple[float, int, str, float]:
    """
    Send C{packet} from C{concurrency} sockets, each sending the next one
    once it is answered (DATA is ACKed, an OACK is answered with an ERROR,
    so no transfer stays behind), until C{count} are answered.

    @return: answers a second, requests resent after 1 s without an answer,
        the first answer in words, and the server's CPU ms per answer.
    """
    import selectors

    answered = resent = 0
    first = None
    with Sockets() as sockets, selectors.DefaultSelector() as selector:
        sent_at = {}
        cpu0 = server.cpu()
        started = time.monotonic()
        for _ in range(concurrency):
            s = sockets.udp()
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ)
            s.sendto(packet, (HOST, server.port))
            sent_at[s] = time.monotonic()
        while answered < count and time.monotonic() - started < limit:
            for key, _ in selector.select(timeout=0.1):
                s = key.fileobj
                try:
                    reply, peer = s.recvfrom(65536)
                except (BlockingIOError, ConnectionRefusedError):
                    continue
                first = first or describe(reply)
                if opcode(reply) == DATA:
                    s.sendto(ack(struct.unpack("!H", reply[2:4])[0]), peer)
                elif opcode(reply) == OACK:
                    s.sendto(error(0, "enough"), peer)
                answered += 1
                s.sendto(packet, (HOST, server.port))
                sent_at[s] = time.monotonic()
            now = time.monotonic()
            for s, when in sent_at.items():
                if now - when > 1.0:
                    s.sendto(packet, (HOST, server.port))
                    sent_at[s] = now
                    resent += 1
        elapsed = time.monotonic() - started
        time.sleep(0.2)  # let the last children be reaped
        cpu = server.cpu() - cpu0
    return answered / elapsed, resent, first or "nothing", cpu * 1000 / max(answered, 1)


def finding_5(server: Server) -> dict:
    big = request(RRQ, SMALL) + b"o\x001\x00" * 16000
    with Sockets() as sockets:
        s = sockets.udp()
        s.sendto(big, (HOST, server.port))
        reply, peer = receive(s, 2.0)
        if reply is not None and opcode(reply) == DATA:
            s.sendto(ack(1), peer)
    big_rate, big_resent, _, big_cpu = rate(server, big, 1000)
    plain_rate, plain_resent, _, plain_cpu = rate(server, request(RRQ, SMALL), 1000)
    resent = f", {big_resent + plain_resent} resent" if big_resent + plain_resent else ""
    return {
        ("5", f"a {len(big):,}-byte RRQ with 16,000 options: the reply"): describe(reply),
        ("5", "1,000 of them: answers a second (server CPU each), beside 1,000 normal RRQs "
              "of a 1-block file (4 clients at a time)"): (
            f"{big_rate:,.0f}/s ({big_cpu:.2f} ms) vs normal {plain_rate:,.0f}/s "
            f"({plain_cpu:.2f} ms){resent}"),
    }


def paced(s: socket.socket, packets, count: int, destination, seconds: float = 1.0) -> float:
    """
    Send C{count} datagrams from C{packets(i)} to C{destination}, spread over
    about C{seconds}; return how long it took.
    """
    started = time.monotonic()
    for i in range(count):
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError, socket.timeout):
            s.sendto(packets(i), destination)
        if i % 100 == 99:
            ahead = started + seconds * (i + 1) / count - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return time.monotonic() - started


def finding_6(server: Server, count: int) -> dict:
    """
    Log growth: one sender, C{count} datagrams of each kind in about a
    second, the bytes the server's stdout and stderr grew.
    """
    destination = (HOST, server.port)
    grown = {}

    def measure(label: str, sockets: Sockets, packet: bytes, to=destination) -> None:
        s = sockets.udp(timeout=1.0)  # a full send buffer waits, on loopback briefly
        before = server.log_size()
        took = paced(s, lambda i: packet, count, to)
        time.sleep(2.0)  # the log budget sums up each second
        replies = drain(s)
        grown[label] = (server.log_size() - before, took,
                        describe(replies[0]).split(" '")[0] if replies else "nothing")

    with Sockets() as sockets:
        measure("WRQ", sockets, request(WRQ, "w.bin"))
        measure("bad mode", sockets, request(RRQ, SMALL, mode="mail"))
        # Strays: a transfer whose client has proven itself (ACKed DATA 1),
        # and another socket sending ACKs to its port.
        owner = sockets.udp()
        owner.sendto(request(RRQ, BIG), destination)
        packet, transfer = receive(owner, 2.0)
        if packet is not None and opcode(packet) == DATA:
            owner.sendto(ack(1), transfer)
            receive(owner, 1.0)
            measure("strays", sockets, ack(1), to=transfer)
            owner.sendto(error(0, "done"), transfer)
        else:
            grown["strays"] = (None, 0.0, "no transfer to stray into")
        measure("60 KB paths", sockets, request(RRQ, "a" * 60000))
        measure("ACKs to the request port", sockets, ack(7))

    total = sum(b for b, _, _ in grown.values() if b)
    parts = ", ".join(
        f"{label} {'n/a' if b is None else format_bytes(b)} ({reply}"
        + (f", sent in {t:.1f} s)" if t > 1.5 else ")")
        for label, (b, t, reply) in grown.items())
    figure = f"{format_bytes(total)} in all: {parts}"
    if server.kind == HPA:
        figure += " (tftpd-hpa logs to syslog only, and there is no /dev/log here)" \
            if not os.path.exists("/dev/log") else " (its syslog lines are not counted)"
    return {("6", f"{count:,} each of WRQs, bad-mode RRQs, strays to a transfer's port, "
                  f"RRQs with 60 KB paths (and ACKs to the request port), about a second "
                  f"each: the log grew"): figure}


def format_bytes(n: int) -> str:
    if n >= 10**6:
        return f"{n / 10**6:.1f} MB"
    if n >= 10**4:
        return f"{n / 10**3:.0f} kB"
    return f"{n:,} B"


def finding_9(work: str, wait: float = 35.0, count: int = 200) -> dict:
    """
    Manhole: C{count} idle TCP connections; how many the server has closed
    after C{wait} seconds.
    """
    key = os.path.join(work, "operator")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hostile", "-f", key],
                   check=True, stdin=subprocess.DEVNULL, timeout=30)
    keys = os.path.join(work, "authorized_keys")
    shutil.copy(key + ".pub", keys)
    os.chmod(keys, 0o600)
    state = os.path.join(work, "state")
    os.makedirs(state, mode=0o700, exist_ok=True)
    manhole = free_port()
    extra = ["--manhole", f"tcp:{manhole}:interface={HOST}", "--manhole-keys", keys,
             "--state-dir", state]
    with Server(PROJECT, work, "f9", extra=extra) as server, Sockets() as sockets:
        deadline = time.monotonic() + 10
        while True:
            try:
                sockets.tcp(manhole, timeout=1.0).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    return {("9", "manhole"): "did not listen: " + server.log_tail()[-200:]}
                time.sleep(0.2)
        connections = []
        refused = 0
        for _ in range(count):
            try:
                connections.append(sockets.tcp(manhole))
            except OSError:
                refused += 1

        def still_open() -> int:
            open_ = 0
            for c in connections:
                c.setblocking(False)
                try:
                    while True:
                        data = c.recv(65536)
                        if not data:
                            break  # closed by the server
                except BlockingIOError:
                    open_ += 1
                except OSError:
                    pass
            return open_

        time.sleep(2.0)
        at_start = still_open()
        say(f"  9: {count} idle manhole connections, waiting {wait:g} s")
        time.sleep(max(wait - 2.0, 0))
        at_end = still_open()
        note = "; log: " + log_kinds(server, "closed: no login", "refused:")
    return {("9", f"{count} idle TCP connections to the manhole: open after 2 s and after "
                  f"{wait:g} s"): f"{at_start} and {at_end} of {count}"
                                  + (f" ({refused} refused)" if refused else "") + note}


# -- the run -------------------------------------------------------------------


def make_root(work: str) -> None:
    root = os.path.join(work, "root")
    os.makedirs(root)
    with open(os.path.join(root, BIG), "wb") as f:
        f.write(os.urandom(BIG_SIZE))
    with open(os.path.join(root, SMALL), "wb") as f:
        f.write(SMALL_DATA)
    os.chmod(work, 0o755)


def checkout_state() -> str:
    try:
        head = subprocess.run(["git", "-C", TOP, "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", TOP, "status", "--porcelain", "--untracked-files=no",
                                "tftpd_tx", "twisted"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head[:70] + (" (with uncommitted changes to tftpd_tx/)" if dirty else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a run under 2 minutes: --hold-time 10, 15 s reflection window, "
                             "2,000 datagrams per log kind, no manhole")
    parser.add_argument("--servers", default=f"{PROJECT},{HPA}",
                        help="comma-separated: project, hpa, atftpd (default: project,hpa)")
    parser.add_argument("--hold-time", type=float, default=None,
                        help="tftpd_tx's --hold-time for finding 3 (default 120, --quick 10)")
    parser.add_argument("--margin", type=float, default=10.0,
                        help="finding 3 watches up to hold time + this (default 10 s)")
    parser.add_argument("--findings", default="2,3,4,5,6,7,9",
                        help="which to run (default all: 2,3,4,5,6,7,9; 3 and 4 run together, "
                             "as do 2 and 7)")
    args = parser.parse_args()

    if os.geteuid() != 0:
        print("hostile.py must run as root: it lowers the servers' descriptor limit to 256, "
              "tftpd-hpa chroots, and clients bind 127.0.0.2 and 127.0.1.x", file=sys.stderr)
        return 2
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    for kind in kinds:
        if kind not in COLUMNS:
            parser.error(f"unknown server {kind!r}: choose from {', '.join(COLUMNS)}")
    if HPA in kinds and not os.access(IN_TFTPD, os.X_OK):
        parser.error(f"{IN_TFTPD} is not installed: pass --servers project")
    if ATFTP in kinds and not os.access(ATFTPD, os.X_OK):
        parser.error(f"{ATFTPD} is not there")
    wanted = set(args.findings.split(","))
    hold = args.hold_time if args.hold_time is not None else (10.0 if args.quick else 120.0)
    window = 15.0 if args.quick else 60.0
    log_count = 2000 if args.quick else 10000

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 300+ client sockets
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    work = tempfile.mkdtemp(prefix="hostile-")
    rows: dict[tuple[str, str], dict[str, str]] = {}

    def add(kind: str, found: dict) -> None:
        for key, figure in found.items():
            rows.setdefault(key, {})[kind] = figure

    started = time.monotonic()
    try:
        make_root(work)
        if wanted & {"2", "7"}:
            for kind in kinds:
                say(f"2 and 7 on {kind}")
                add(kind, finding_2_7(kind, work))
        if wanted & {"3", "4"}:
            for key, by_kind in finding_3_4(kinds, work, hold, args.margin, window,
                                            args.quick).items():
                rows.setdefault(key, {}).update(by_kind)
        if wanted & {"5", "6"}:
            for kind in kinds:
                with Server(kind, work, "f56") as server:
                    if "5" in wanted:
                        say(f"5 on {kind}")
                        add(kind, finding_5(server))
                    if "6" in wanted:
                        say(f"6 on {kind}: {log_count:,} datagrams of each kind")
                        add(kind, finding_6(server, log_count))
        if "9" in wanted and PROJECT in kinds:
            if args.quick:
                rows[("9", "idle TCP connections to the manhole")] = {PROJECT: "skipped (--quick)"}
            else:
                say("9 on project")
                add(PROJECT, finding_9(work))
    finally:
        for server in list(Server.running):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    rows[("1", "symlink swapped in mid-request")] = {
        PROJECT: "see tests/test_filesystem_race.py (renameat2 exchange loops: nothing from "
                 "outside is sent)"}
    rows[("8", "manhole keys file ownership")] = {
        PROJECT: "see tests/test_manhole.py (owner and every directory above are checked)"}

    print(f"Hostile run of {datetime.date.today()}: {'quick' if args.quick else 'full'}, "
          f"{os.cpu_count()} CPUs, {platform.platform(terse=True)}, Python "
          f"{platform.python_version()}; checkout {checkout_state()}; finding 3 with tftpd_tx "
          f"--hold-time {hold:g}; {time.monotonic() - started:.0f} s.\n")
    header = ["#", "finding", "figure then (from the issue)"] + [COLUMNS[k] for k in kinds]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    shown = set()
    for key in sorted(rows, key=lambda k: int(k[0])):
        number, what = key
        then = THEN[number] if number not in shown else "″"
        shown.add(number)
        cells = [number, what, then] + [rows[key].get(k, "—") for k in kinds]
        print("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

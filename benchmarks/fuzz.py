#!/usr/bin/env python3
"""
A long random-datagram run against this checkout's C{twistd tftp}.

Five kinds of client sockets on loopback send random datagrams (random
bytes; mutated RRQs, ACKs, ERRORs and OACKs; valid opcodes with garbage;
oversized ones) to the listener and to the ports of running transfers, and
count what comes back.  What the server must do holds socket by socket:

 - I{requesters} (high ports) write only to the listener: each datagram
   draws one reply at most, and a datagram that may be an RRQ two (the
   first reply of a transfer they never acknowledge, and its one
   retransmission); no DATA larger than 512 bytes of payload reaches them;
 - I{strays} (high ports) write only to the transfer ports of others: each
   datagram draws ERROR 5 at most, and nothing else;
 - I{low ports} (below 1024, when run as root) and I{error senders} (only
   ERRORs) write to both: nothing ever reaches them;
 - I{clients} run real transfers and act at random on them (new,
   duplicate, stale and future ACKs, garbage, ERRORs): every DATA carries
   the file's bytes at its block's offset, and each datagram draws one
   window and its retransmissions at most (L{most_resends}).

Then a plain fetch and a windowed one must return the file byte for byte.
The suite runs this for a few thousand datagrams against an in-process
server (C{tests/test_fuzz_server.py}); run from the command line it starts
C{twistd tftp} from this checkout, sends C{--count} datagrams and prints
what happened, the server's tracebacks (which must be none) and its memory::

    python3 benchmarks/fuzz.py --count 1000000 --seed 1

It runs on loopback only (the server on 127.0.0.3, the clients on
127.0.0.2, the other sockets on 127.0.0.1), and stops only the server it
started.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
HOST = "127.0.0.1"
#: The clients' address: they bind a new port for each transfer, and on an
#: address of their own no such port can be one a transfer of the server
#: had a moment ago, which the strays may still be writing to.
CLIENT_HOST = "127.0.0.2"

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
#: The most bytes a datagram to an unproven peer may carry but an OACK: a
#: DATA of RFC 1350's 512 bytes.
FIRST_REPLY_MOST = 4 + 512
#: A UDP datagram's largest payload over IPv4.
LARGEST = 65507
#: Seconds without a datagram after which a client takes its transfer for
#: dead and asks again.
CLIENT_PATIENCE = 0.5

#: The server's address: one of its own, so that a transfer port it
#: closed is less likely to be another program's by the time a stray
#: writes to it (see L{Fuzzer}).
SERVER_HOST = "127.0.0.3"
#: Seconds between looks at which transfer ports the server holds.
LOOK_INTERVAL = 0.02

#: Socket roles and how often each takes a turn.
ROLES = {"requester": 40, "stray": 20, "low": 4, "error": 6, "client": 30}
SOCKETS = {"requester": 32, "stray": 8, "low": 4, "error": 4, "client": 8}


def files(seed: int) -> dict[str, bytes]:
    """
    The files to serve: one of a few blocks, one of many.
    """
    rng = random.Random(seed)
    return {
        "file.bin": rng.randbytes(3 * 512 + 100),
        "big.bin": rng.randbytes(100_000),
    }


def request(path: bytes, mode: bytes = b"octet", options=()) -> bytes:
    body = struct.pack("!H", RRQ) + path + b"\0" + mode + b"\0"
    for name, value in options:
        body += name + b"\0" + value + b"\0"
    return body


def error(code: int, message: bytes = b"") -> bytes:
    return struct.pack("!HH", ERROR, code) + message + b"\0"


def mutate(rng: random.Random, datagram: bytes) -> bytes:
    """
    One to four random edits: a byte changed, inserted, deleted or
    repeated, or the end cut off.
    """
    data = bytearray(datagram)
    for _ in range(rng.randint(1, 4)):
        where = rng.randrange(len(data) + 1)
        edit = rng.randrange(5)
        if edit == 0 and where < len(data):
            data[where] = rng.randrange(256)
        elif edit == 1:
            data[where:where] = bytes([rng.choice([0, 0xFF, rng.randrange(256)])])
        elif edit == 2:
            del data[where : where + rng.randint(1, 4)]
        elif edit == 3:
            data[where:where] = data[where : where + rng.randint(1, 8)] * rng.randint(1, 50)
        else:
            del data[where:]
    return bytes(data)


PATHS = [b"file.bin", b"big.bin", b"/file.bin", b"missing.bin", b"../../etc/passwd",
         b"\\file.bin", b"dir/", b"", b"x" * 400, "f\u00e9".encode()]  # fmt: skip
MODES = [b"octet", b"netascii", b"OCTET", b"mail", b"binary", b""]
OPTIONS = [b"blksize", b"windowsize", b"tsize", b"timeout", b"rollover", b"multicast", b"x"]
VALUES = [b"0", b"1", b"8", b"512", b"1428", b"65464", b"65465", b"99999999999", b"-1",
          b"", b"abc", b"\xd9\xa3", b"255", b"256"]  # fmt: skip


def random_request(rng: random.Random) -> bytes:
    options = [(rng.choice(OPTIONS), rng.choice(VALUES)) for _ in range(rng.randint(0, 4))]
    return request(rng.choice(PATHS), rng.choice(MODES), options)


def random_datagram(rng: random.Random) -> bytes:
    """
    A datagram of any kind: well-formed, mutated, garbage, or oversized.
    """
    kind = rng.randrange(20)
    if kind < 5:
        return mutate(rng, random_request(rng))
    if kind < 7:
        return random_request(rng)
    if kind < 10:
        if rng.random() < 0.8:
            return struct.pack("!HH", ACK, rng.randrange(0x10000))
        return mutate(rng, struct.pack("!HH", ACK, rng.randrange(0x10000)))
    if kind < 12:
        message = rng.randbytes(rng.randint(0, 40))
        datagram = error(rng.randrange(10), message)
        return mutate(rng, datagram) if rng.random() < 0.5 else datagram
    if kind < 13:
        options = [(rng.choice(OPTIONS), rng.choice(VALUES)) for _ in range(rng.randint(0, 3))]
        datagram = struct.pack("!H", OACK) + b"".join(n + b"\0" + v + b"\0" for n, v in options)
        return mutate(rng, datagram) if rng.random() < 0.5 else datagram
    if kind < 14:
        return struct.pack("!HH", DATA, rng.randrange(0x10000)) + rng.randbytes(
            rng.choice([0, 1, 511, 512, 513])
        )
    if kind < 15:
        return struct.pack("!H", WRQ) + mutate(rng, random_request(rng)[2:])
    if kind < 17:
        return struct.pack("!H", rng.randrange(8)) + rng.randbytes(rng.randint(0, 80))
    if kind < 19:
        return rng.randbytes(rng.randint(0, 600))
    size = rng.randint(513, 1500) if rng.random() < 0.5 else rng.randint(1500, LARGEST)
    return struct.pack("!H", rng.randrange(8)) + rng.randbytes(size - 2)


def random_error(rng: random.Random) -> bytes:
    """
    Something that claims to be an ERROR, well-formed or not.
    """
    if rng.random() < 0.5:
        return error(rng.randrange(10), rng.randbytes(rng.randint(0, 40)))
    return b"\0\5" + rng.randbytes(rng.randint(0, 60))


def kind_of(datagram: bytes) -> str:
    """
    How a reply is counted: its packet kind, and an ERROR's code.
    """
    opcode = datagram[1] if len(datagram) > 1 and datagram[0] == 0 else None
    if opcode == ERROR and len(datagram) >= 4:
        return f"ERROR {struct.unpack('!H', datagram[2:4])[0]}"
    return {DATA: "DATA", OACK: "OACK", ACK: "ACK"}.get(opcode, "other")


class Socket:
    """
    One client socket, its role and what went through it.
    """

    def __init__(self, role: str, port: int = 0, host: str = HOST) -> None:
        self.role = role
        self.host = host
        self.sent = 0
        self.requests = 0
        self.received: collections.Counter[str] = collections.Counter()
        self.oversized = 0
        self.socket = None
        self.bind(port)

    def bind(self, port: int = 0) -> None:
        """
        Close the socket, if any, and open one on a new address.
        """
        if self.socket is not None:
            self.socket.close()
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.socket.bind((self.host, port))
        self.socket.setblocking(False)
        self.address = self.socket.getsockname()

    def send(self, datagram: bytes, to) -> None:
        try:
            self.socket.sendto(datagram, to)
        except OSError:
            return
        self.sent += 1
        self.requests += datagram[:2] == b"\0\1"

    def close(self) -> None:
        self.socket.close()


class Client(Socket):
    """
    A socket that runs transfers and acts at random on them, each transfer
    from a new port, so that nothing of an earlier one is taken for it.

    @ivar window: the largest window it negotiated.
    @ivar wrong: DATA whose payload was not the file's at its offset.
    """

    def __init__(self, content: dict[str, bytes]) -> None:
        super().__init__("client", host=CLIENT_HOST)
        self.content = content
        self.transfer = None
        self.finished = False
        self.window = 1
        self.wrong = 0
        self.completed = 0
        self.heard = 0.0

    def start(self, rng: random.Random, fuzzer: Fuzzer) -> None:
        fuzzer.rebind(self)
        self.path = rng.choice(sorted(self.content))
        self.blksize, window = rng.choice([(512, 1), (8, 1), (512, 4), (1428, 8), (100, 3)])
        self.options = (self.blksize, window) != (512, 1) or rng.random() < 0.5
        options = []
        if self.options:
            options = [(b"blksize", b"%d" % self.blksize), (b"windowsize", b"%d" % window),
                       (b"tsize", b"0")]  # fmt: skip
        self.window = max(self.window, window)
        self.transfer, self.finished, self.next = None, False, 1
        self.heard = time.monotonic()
        self.send(request(self.path.encode(), b"octet", options), fuzzer.server)

    def receive(self, datagram: bytes, source) -> None:
        kind = kind_of(datagram)
        if self.transfer is None and kind == ("OACK" if self.options else "DATA"):
            self.transfer = source
        if source != self.transfer:
            return
        self.heard = time.monotonic()
        if kind.startswith("ERROR"):
            self.transfer, self.heard = None, 0.0
        elif kind == "DATA" and not self.finished:
            block = struct.unpack("!H", datagram[2:4])[0]
            if block != self.next & 0xFFFF:
                return
            start = (self.next - 1) * self.blksize
            if datagram[4:] != self.content[self.path][start : start + self.blksize]:
                self.wrong += 1
            self.next += 1
            if len(datagram) - 4 < self.blksize:
                self.finished = True
                self.completed += 1

    def turn(self, rng: random.Random, fuzzer: Fuzzer) -> None:
        """
        Act once: start a transfer if none runs (or it went silent), end
        one that is complete with its last ACK, else send its port an ACK
        (mostly of the last block in order, else of one near it), garbage
        or an ERROR.
        """
        if time.monotonic() - self.heard > CLIENT_PATIENCE:
            self.start(rng, fuzzer)
            return
        if self.transfer is None:
            return
        last = self.next - 1
        choice = rng.random()
        if self.finished or choice < 0.7:
            datagram = struct.pack("!HH", ACK, last & 0xFFFF)
        elif choice < 0.85:
            datagram = struct.pack("!HH", ACK, (last + rng.randint(-5, 20)) & 0xFFFF)
        elif choice < 0.97:
            datagram = random_datagram(rng)
        else:
            datagram = random_error(rng)
        self.send(datagram, self.transfer)
        if self.finished or datagram[:2] == b"\0\5":
            self.transfer, self.heard = None, 0.0


class Fuzzer:
    """
    The client sockets and the run.

    @param server: the listener's address.
    @param content: the files it serves, by name.
    @param low_ports: whether to send from ports below 1024 (needs root).
    @param transfer_ports: returns the addresses of the server's transfer
        ports at the moment; the strays write only to those, looked up
        every L{LOOK_INTERVAL}, never to a port the server may have closed
        a while ago, which another program on the host may have now.
    """

    def __init__(
        self, server, content: dict[str, bytes], seed: int, low_ports: bool, transfer_ports
    ) -> None:
        self.server = server
        self.transfer_ports = transfer_ports
        self.rng = random.Random(seed)
        self.sockets: list[Socket] = []
        roles = dict(SOCKETS, low=SOCKETS["low"] if low_ports else 0)
        for role, count in roles.items():
            for _ in range(count):
                if role == "client":
                    self.sockets.append(Client(content))
                elif role == "low":
                    self.sockets.append(Socket(role, self._free_low_port()))
                else:
                    self.sockets.append(Socket(role))
        self.by_role = collections.defaultdict(list)
        for skt in self.sockets:
            self.by_role[skt.role].append(skt)
        self.turns = [role for role in ROLES if self.by_role[role]]
        self.weights = [ROLES[role] for role in self.turns]
        self.by_fd = {skt.socket.fileno(): skt for skt in self.sockets}
        self.poller = select.epoll()
        for fd in self.by_fd:
            self.poller.register(fd, select.EPOLLIN)
        self.ports: list[tuple[str, int]] = []
        self.looked = 0.0

    def rebind(self, skt: Socket) -> None:
        """
        Move a socket to a new address.
        """
        self.poller.unregister(skt.socket.fileno())
        del self.by_fd[skt.socket.fileno()]
        skt.bind()
        self.by_fd[skt.socket.fileno()] = skt
        self.poller.register(skt.socket.fileno(), select.EPOLLIN)

    def _free_low_port(self) -> int:
        used = {skt.address[1] for skt in self.sockets}
        for port in range(600 + self.rng.randrange(300), 1024):
            if port in used:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((HOST, port))
                except OSError:
                    continue
            return port
        raise RuntimeError("no free port below 1024")

    @property
    def sent(self) -> int:
        return sum(skt.sent for skt in self.sockets)

    def run(self, count: int, rate: float = 0.0, progress=None) -> None:
        """
        Send C{count} datagrams (a few more, as the count is looked at every
        32 turns), at most C{rate} a second if given, reading replies as
        they come.
        """
        rng = self.rng
        started = time.monotonic()
        number = reported = sent = 0
        while sent < count:
            number += 1
            role = rng.choices(self.turns, self.weights)[0]
            skt = rng.choice(self.by_role[role])
            if role == "client":
                skt.turn(rng, self)
            else:
                chosen = self._datagram(role)
                if chosen is not None:
                    skt.send(*chosen)
            if number % 32 == 0:
                self.read()
                sent = self.sent
                if rate:
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                if progress is not None and sent >= reported + 100_000:
                    reported = sent
                    progress(reported, time.monotonic() - started)
        self.read()

    def _datagram(self, role: str):
        """
        A random datagram for a socket of C{role}, and where it goes; or
        L{None} for a stray when no live transfer is known.
        """
        rng = self.rng
        if role == "stray" or (role in ("low", "error") and rng.random() < 0.5):
            target = self._transfer_port()
            if target is None:
                return None
        else:
            target = self.server
        if role == "error":
            return random_error(rng), target
        return random_datagram(rng), target

    def _transfer_port(self):
        """
        The port of a transfer the server holds, at random, or L{None}.
        """
        now = time.monotonic()
        if now - self.looked > LOOK_INTERVAL:
            self.ports = sorted(self.transfer_ports())
            self.looked = now
        return self.rng.choice(self.ports) if self.ports else None

    def read(self, timeout: float = 0.0) -> int:
        """
        Read every reply waiting, up to C{timeout} seconds for the first.

        @return: how many were read.
        """
        read = 0
        for fd, _ in self.poller.poll(timeout):
            skt = self.by_fd[fd]
            while True:
                try:
                    datagram, source = skt.socket.recvfrom(LARGEST + 1)
                except BlockingIOError:
                    break
                read += 1
                self._note(skt, datagram, source)
        return read

    def _note(self, skt: Socket, datagram: bytes, source) -> None:
        kind = kind_of(datagram)
        skt.received[kind] += 1
        if kind == "DATA" and len(datagram) > FIRST_REPLY_MOST:
            skt.oversized += 1
        if isinstance(skt, Client):
            skt.receive(datagram, source)

    def settle(self, quiet: float = 0.5, most: float = 60.0) -> None:
        """
        Read replies until none came for C{quiet} seconds (retransmissions
        of transfers the run left behind included), for C{most} at most.
        """
        deadline = time.monotonic() + most
        while time.monotonic() < deadline and self.read(quiet):
            pass

    def end_transfers(self) -> None:
        """
        The clients end their transfers with an ERROR, as a client that
        gives up does.
        """
        for client in self.by_role["client"]:
            if client.transfer is not None:
                client.send(error(0, b"done"), client.transfer)
                client.transfer = None

    def violations(self, resends: int) -> list[str]:
        """
        Every way in which what the sockets received breaks the server's
        rules (see the module's docstring); empty when all is well.

        @param resends: the most times the server sends a window again
            without progress (L{most_resends}).
        """
        found = []
        for skt in self.sockets:
            got = sum(skt.received.values())
            name = f"{skt.role} {skt.address[0]}:{skt.address[1]}"
            if skt.role in ("low", "error") and got:
                found.append(f"{name} received {dict(skt.received)}")
            elif skt.role == "stray":
                if got > skt.sent or set(skt.received) - {"ERROR 5"}:
                    found.append(f"{name} sent {skt.sent}, received {dict(skt.received)}")
            elif skt.role == "requester":
                if got > skt.sent + skt.requests or skt.oversized:
                    found.append(
                        f"{name} sent {skt.sent} ({skt.requests} may be RRQs), received "
                        f"{dict(skt.received)}, {skt.oversized} DATA over 512 bytes"
                    )
            elif skt.role == "client":
                if got > skt.sent * skt.window * (1 + resends) or skt.wrong:
                    found.append(
                        f"{name} sent {skt.sent} (window {skt.window}), received "
                        f"{dict(skt.received)}, {skt.wrong} DATA with wrong bytes"
                    )
        return found

    def replies(self) -> collections.Counter[str]:
        total: collections.Counter[str] = collections.Counter()
        for skt in self.sockets:
            total.update(skt.received)
        return total

    def close(self) -> None:
        self.poller.close()
        for skt in self.sockets:
            skt.close()


def most_resends(
    timeout: float = 1.0, retries: int = 5, hold_time: float = 120.0, rto_floor: float = 0.05
) -> int:
    """
    The most times a server with these settings sends the same window
    again without progress: its C{retries}; or, for a transfer it times by
    the round trip, as many expiries of a timeout doubling from its floor
    (to 8 times C{timeout} at most) as fit in the time the retries' waits
    add up to.
    """
    patience = min(sum(timeout * min(2**n, 8) for n in range(retries + 1)), hold_time)
    floor = min(rto_floor, timeout)
    waited = expiries = 0
    while waited < patience:
        waited += min(floor * 2**expiries, 8 * timeout)
        expiries += 1
    return max(retries, expiries - 1)


def fetch(server, path: str, options: dict[str, str] | None = None, tries: int = 5) -> bytes:
    """
    Fetch a file as a plain client does (RFC 1350, or with the options
    given: blksize and windowsize), acknowledging the last block of each
    window, or the last in order after a gap, and asking again after one
    second of silence.
    """
    blksize = int((options or {}).get("blksize", 512))
    window = int((options or {}).get("windowsize", 1))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as skt:
        skt.bind((HOST, 0))
        skt.settimeout(1.0)
        rrq = request(path.encode(), b"octet", [(k.encode(), v.encode()) for k, v in
                                                (options or {}).items()])  # fmt: skip
        skt.sendto(rrq, server)
        received, transfer, last, silent, since = [], None, None, 0, 0
        while True:
            try:
                datagram, source = skt.recvfrom(LARGEST + 1)
            except socket.timeout:
                silent += 1
                if silent > tries:
                    raise RuntimeError(f"no answer fetching {path!r}") from None
                skt.sendto(last or rrq, transfer or server)
                continue
            silent = 0
            transfer = transfer or source
            opcode = datagram[1]
            if opcode == ERROR:
                raise RuntimeError(f"ERROR fetching {path!r}: {datagram!r}")
            if opcode == OACK:
                last = struct.pack("!HH", ACK, 0)
                skt.sendto(last, transfer)
                continue
            block = struct.unpack("!H", datagram[2:4])[0]
            if block == (len(received) + 1) & 0xFFFF:
                received.append(datagram[4:])
                since += 1
                end = len(datagram) - 4 < blksize
                if end or since == window:
                    since = 0
                    last = struct.pack("!HH", ACK, block)
                    skt.sendto(last, transfer)
                if end:
                    return b"".join(received)
            elif last is not None:
                since = 0
                skt.sendto(last, transfer)


def udp_sockets(pid: int, host: str) -> dict[tuple[str, int], int]:
    """
    The UDP sockets process C{pid} holds on C{host}, from C{/proc} (Linux):
    for each address, how many datagrams the kernel dropped for it (a full
    receive buffer).
    """
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    # /proc/net/udp writes an IPv4 address as one number in host order.
    wanted = struct.unpack("=I", socket.inet_aton(host))[0]
    found = {}
    with open("/proc/net/udp") as table:
        next(table)
        for line in table:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[9] in inodes and int(address, 16) == wanted:
                found[(host, int(port, 16))] = int(fields[-1])
    return found


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1))


def kernel_drops() -> int:
    """
    UDP datagrams the kernel dropped for a full receive buffer, host-wide.
    """
    with open("/proc/net/snmp") as snmp:
        lines = [line.split() for line in snmp if line.startswith("Udp:")]
    return int(dict(zip(lines[0], lines[1]))["RcvbufErrors"])


def stop(server: subprocess.Popen) -> None:
    """
    Stop the server: SIGTERM, and a second one at once, which skips the
    grace a stop gives the transfers in flight.
    """
    server.terminate()
    try:
        server.wait(1)
    except subprocess.TimeoutExpired:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="datagrams to send")
    parser.add_argument("--seed", type=int, default=0, help="random seed (files and datagrams)")
    # At 10,000 a second the listener keeps up (drops about 0.1%) on a
    # 2-CPU machine shared with this script; at 20,000 it drops 10%.
    parser.add_argument("--rate", type=float, default=10_000,
                        help="most datagrams a second (0: as fast as possible)")  # fmt: skip
    args = parser.parse_args(argv)
    content = files(args.seed)
    with tempfile.TemporaryDirectory(prefix="tftp-fuzz-") as work:
        root = os.path.join(work, "root")
        os.mkdir(root)
        for name, data in content.items():
            with open(os.path.join(root, name), "wb") as f:
                f.write(data)
        log = os.path.join(work, "twistd.log")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((SERVER_HOST, 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", f"--logfile={log}", "tftp",
             "--port", str(port), "--interface", SERVER_HOST, "--root", root],
            env=dict(os.environ, PYTHONPATH=TOP),
            cwd=work,
        )  # fmt: skip
        address = (SERVER_HOST, port)
        try:
            for _ in range(100):
                try:
                    fetch(address, "file.bin", tries=0)
                    break
                except (RuntimeError, OSError):
                    time.sleep(0.1)
            rss_before = rss_kib(server.pid)
            drops_before = kernel_drops()
            fuzzer = Fuzzer(
                address,
                content,
                args.seed,
                low_ports=os.geteuid() == 0,
                transfer_ports=lambda: udp_sockets(server.pid, SERVER_HOST).keys() - {address},
            )
            started = time.monotonic()
            fuzzer.run(
                args.count,
                args.rate,
                lambda n, t: sys.stderr.write(f"{n:,} datagrams in {t:.1f} s\n"),
            )
            elapsed = time.monotonic() - started
            fuzzer.end_transfers()
            fuzzer.settle(quiet=4.0)
            drops = kernel_drops() - drops_before
            listener_drops = udp_sockets(server.pid, SERVER_HOST)[address]
            rss_after = rss_kib(server.pid)
            violations = fuzzer.violations(most_resends())
            replies = fuzzer.replies()
            plain = fetch(address, "big.bin") == content["big.bin"]
            windowed = fetch(address, "big.bin", {"blksize": "1428", "windowsize": "8"})
            windowed = windowed == content["big.bin"]
            completed = sum(c.completed for c in fuzzer.by_role["client"])
            fuzzer.close()
            alive = server.poll() is None
        finally:
            stop(server)
        with open(log, errors="replace") as f:
            text = f.read()
    tracebacks = text.count("Traceback")
    critical = len(re.findall(r"#(?:critical|error)\]", text))
    print(f"datagrams sent:      {fuzzer.sent:,} in {elapsed:.1f} s "
          f"({fuzzer.sent / elapsed:,.0f}/s), seed {args.seed}")
    print("sent by role:        " + ", ".join(
        f"{role} {sum(s.sent for s in fuzzer.by_role[role]):,}" for role in SOCKETS))
    print(f"replies received:    {sum(replies.values()):,}: " + ", ".join(
        f"{kind} {n:,}" for kind, n in sorted(replies.items())))
    print(f"client transfers completed amid the noise: {completed:,}")
    print(f"kernel drops (full buffers): {listener_drops:,} at the listener, "
          f"{drops:,} host-wide")  # fmt: skip
    print(f"server log:          {tracebacks} tracebacks, {critical} error lines")
    print(f"server RSS:          {rss_before:,} KiB before, {rss_after:,} KiB after")
    print(f"server alive:        {alive}")
    print(f"rule violations:     {len(violations)}")
    for line in violations:
        print(f"  {line}")
    print(f"final fetch:         plain {'ok' if plain else 'WRONG'}, "
          f"blksize 1428 windowsize 8 {'ok' if windowed else 'WRONG'}")  # fmt: skip
    return 0 if alive and plain and windowed and not (violations or tracebacks or critical) else 1


if __name__ == "__main__":
    sys.exit(main())

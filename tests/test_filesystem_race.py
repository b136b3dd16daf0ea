"""
The real server on loopback while another process swaps, as fast as it can,
a directory or a file inside the root with a symbolic link to outside it
(C{renameat2} with C{RENAME_EXCHANGE}, so that one of the two is always
there): thousands of requests for the raced path are answered, and not one
answer holds a byte from outside the root.

This is finding 1 of issue 10: a check-then-open handler sent the outside
file to about half of such requests.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tftpd_tx import FilesystemHandler, TFTPService
from tftpd_tx.filesystem import (
    open_beneath_openat2,
    open_beneath_walk,
    openat2_available,
)

#: The requests sent per race, and the most time they may take.
REQUESTS = 3000
SECONDS = 6.0

INSIDE = b"inside the root\n"
SECRET = b"SECRET: outside the root\n"

RENAME_EXCHANGE = 2
AT_FDCWD = -100

#: Run by the swapping process: exchange its two arguments until killed.
SWAPPER = f"""
import ctypes, os, sys
renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
a, b = os.fsencode(sys.argv[1]), os.fsencode(sys.argv[2])
print("swapping", flush=True)
while renameat2({AT_FDCWD}, a, {AT_FDCWD}, b, {RENAME_EXCHANGE}) == 0:
    pass
sys.exit(ctypes.get_errno())
"""


def exchange(a: str, b: str) -> None:
    """
    Swap C{a} and C{b} at once, as the swapping process does.

    @raise OSError: this system or filesystem cannot.
    """
    renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@dataclass
class Tally:
    """
    What the requests for the raced path got.
    """

    inside: int = 0
    outside: int = 0
    not_found: int = 0
    access_violation: int = 0
    other: int = 0

    @property
    def requests(self) -> int:
        return (
            self.inside
            + self.outside
            + self.not_found
            + self.access_violation
            + self.other
        )


def fetch_many(server: tuple[str, int], path: str, count: int, seconds: float) -> Tally:
    """
    Fetch C{path} from C{server} C{count} times, one after another, or for
    C{seconds} if that comes first; each from a new port, each DATA acked.
    """
    tally = Tally()
    request = b"\0\1" + path.encode() + b"\0octet\0"
    deadline = time.monotonic() + seconds
    while tally.requests < count and time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            client.settimeout(5)
            client.sendto(request, server)
            try:
                datagram, source = client.recvfrom(70000)
            except socket.timeout:
                tally.other += 1
                continue
            opcode, number = struct.unpack("!HH", datagram[:4])
            if opcode == 3:
                client.sendto(struct.pack("!HH", 4, number), source)
                payload = datagram[4:]
                if SECRET in payload:
                    tally.outside += 1
                elif payload == INSIDE:
                    tally.inside += 1
                else:
                    tally.other += 1
            elif opcode == 5 and number == 1:
                tally.not_found += 1
            elif opcode == 5 and number == 2:
                tally.access_violation += 1
            else:
                tally.other += 1
    return tally


class Race:
    """
    A root holding C{race/x.txt} and C{race.txt} (inside content), a link
    beside each to an outside C{x.txt} (the secret), and a process that
    swaps one of them with its link until stopped.
    """

    def __init__(self) -> None:
        self.top = tempfile.mkdtemp(prefix="tftpd_tx-race-")
        self.root = os.path.join(self.top, "root")
        outside = os.path.join(self.top, "outside")
        os.makedirs(os.path.join(self.root, "race"))
        os.makedirs(outside)
        for path, content in [
            (os.path.join(self.root, "race", "x.txt"), INSIDE),
            (os.path.join(self.root, "race.txt"), INSIDE),
            (os.path.join(outside, "x.txt"), SECRET),
        ]:
            with open(path, "wb") as f:
                f.write(content)
        # The directory's link is absolute, the file's relative: both kinds
        # of target are raced.
        os.symlink(outside, os.path.join(self.root, "race-link"))
        os.symlink("../outside/x.txt", os.path.join(self.root, "race-link.txt"))
        self.swapper = None

    def check(self) -> None:
        """
        @raise SkipTest: this system or filesystem cannot exchange names.
        """
        a, b = os.path.join(self.root, "race"), os.path.join(self.root, "race-link")
        try:
            exchange(a, b)
            exchange(a, b)
        except (OSError, AttributeError) as error:
            raise SkipTest(f"renameat2(RENAME_EXCHANGE) unavailable: {error}")

    def start(self, name: str) -> None:
        """
        Start swapping C{root/name} with C{root/name}'s link.
        """
        stem, dot, extension = name.partition(".")
        link = f"{stem}-link{dot}{extension}"
        self.swapper = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SWAPPER,
                os.path.join(self.root, name),
                os.path.join(self.root, link),
            ],
            stdout=subprocess.PIPE,
        )
        assert self.swapper.stdout.readline() == b"swapping\n"

    def stop(self) -> int | None:
        """
        Stop swapping.

        @return: the swapper's exit status if it stopped by itself (an
            exchange failed), else L{None}.
        """
        if self.swapper is None:
            return None
        swapper, self.swapper = self.swapper, None
        failed = swapper.poll()
        swapper.kill()
        swapper.wait()
        swapper.stdout.close()
        return failed

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.top, ignore_errors=True)


class RaceTests(TestCase):
    """
    Nothing from outside the root is sent while a directory or a file on
    the requested path is swapped with a link that leads outside, whatever
    the moment: the answers are the inside file, or a refusal.
    """

    timeout = 120

    #: How the handler opens paths beneath its root.
    opener = staticmethod(open_beneath_openat2)
    if not openat2_available():
        skip = "this kernel has no openat2"

    def setUp(self):
        self.race = Race()
        self.addCleanup(self.race.remove)
        self.race.check()
        self.service = TFTPService(
            FilesystemHandler(self.race.root, opener=self.opener),
            port=0,
            interface="127.0.0.1",
        )
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.address = ("127.0.0.1", self.service.port.getHost().port)

    @defer.inlineCallbacks
    def raced(self, swapped: str, path: str):
        """
        Fetch C{path} while C{swapped} is swapped with its link.
        """
        self.race.start(swapped)
        try:
            tally = yield deferToThread(
                fetch_many, self.address, path, REQUESTS, SECONDS
            )
        finally:
            failed = self.race.stop()
        self.assertIsNone(failed, "the swapping process stopped by itself")
        return tally

    def assert_nothing_outside(self, tally: Tally) -> None:
        """
        No answer held the outside file, every answer was the inside file or
        a refusal, and both were seen (so the race was run).
        """
        self.assertEqual(tally.outside, 0, tally)
        self.assertEqual(tally.other, 0, tally)
        self.assertGreater(tally.inside, 0, tally)
        self.assertGreater(tally.not_found + tally.access_violation, 0, tally)
        self.assertGreaterEqual(tally.requests, 500, tally)

    @defer.inlineCallbacks
    def test_directory_swapped(self):
        """
        C{race/x.txt}, while the directory C{race} is swapped with a link to
        an outside directory holding its own C{x.txt}.
        """
        tally = yield self.raced("race", "race/x.txt")
        self.assert_nothing_outside(tally)

    @defer.inlineCallbacks
    def test_file_swapped(self):
        """
        C{race.txt}, while it is swapped with a link to an outside file.
        """
        tally = yield self.raced("race.txt", "race.txt")
        self.assert_nothing_outside(tally)


class WalkRaceTests(RaceTests):
    """
    The same with the walk of L{open_beneath_walk}, where the kernel has no
    C{openat2}.
    """

    opener = staticmethod(open_beneath_walk)
    skip = None

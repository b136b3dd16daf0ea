"""
What the server's Python costs, apart from the system calls: a 1 KiB
transfer (request, OACK, DATA, ACKs) and a lock-step ACK of a 1 MiB
transfer, served from a root on disk through the fake reactor of
L{tftpd_tx.testing}.

    python3 benchmarks/micro.py

prints microseconds of process time (the best of five rounds) and Python
calls per 1 KiB transfer.  Run it from two checkouts to compare them (with
C{PYTHONPATH} set to each): the figures move with the machine, the calls do
not.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import tempfile
import time

from tftpd_tx.filesystem import FilesystemHandler
from tftpd_tx.server import TFTPServer
from tftpd_tx.testing import FakeUDPReactor

SMALL_RRQ = b"\0\1small\0octet\0blksize\0001468\0tsize\0000\0"
LARGE_RRQ = b"\0\1large\0octet\0blksize\0001468\0tsize\0000\0"
LARGE_BLOCKS = (1 << 20) // 1468 + 1


def _ack(number: int) -> bytes:
    return b"\0\4" + (number & 0xFFFF).to_bytes(2, "big")


def _server(root: str):
    reactor = FakeUDPReactor()
    server = TFTPServer(FilesystemHandler(root), reactor=reactor)
    return reactor, reactor.listenUDP(6969, server, interface="127.0.0.1")


def small_transfers(root: str, count: int) -> float:
    """
    Microseconds of process time per 1 KiB transfer, C{count} of them from
    200 client addresses.
    """
    reactor, port = _server(root)
    started = time.process_time()
    for index in range(count):
        peer = (f"192.0.2.{index % 200}", 10000 + index % 50000)
        port.deliver(SMALL_RRQ, peer)
        transfer = reactor.ports[-1]
        transfer.deliver(_ack(0), peer)
        transfer.deliver(_ack(1), peer)
        reactor.advance(0.0001)
        if index % 1000 == 999:
            del reactor.ports[1:]
    return (time.process_time() - started) / count * 1e6


def lock_step_acks(root: str, transfers: int) -> float:
    """
    Microseconds of process time per ACK of a lock-step 1 MiB transfer.
    """
    reactor, port = _server(root)
    spent = 0.0
    for index in range(transfers):
        peer = ("192.0.2.1", 20000 + index)
        port.deliver(LARGE_RRQ, peer)
        transfer = reactor.ports[-1]
        started = time.process_time()
        for number in range(LARGE_BLOCKS - 1):
            transfer.deliver(_ack(number), peer)
            del transfer.sent[:]
        spent += time.process_time() - started
        transfer.deliver(_ack(LARGE_BLOCKS - 1), peer)
        reactor.advance(0.001)
    return spent / (transfers * (LARGE_BLOCKS - 1)) * 1e6


def calls_per_transfer(root: str, count: int = 5000) -> float:
    profile = cProfile.Profile()
    profile.runcall(small_transfers, root, count)
    return pstats.Stats(profile).total_calls / count


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        with open(os.path.join(root, "small"), "wb") as small:
            small.write(os.urandom(1024))
        with open(os.path.join(root, "large"), "wb") as large:
            large.write(os.urandom(1 << 20))
        small_transfers(root, 2000)
        per_transfer = min(small_transfers(root, 5000) for _ in range(5))
        per_ack = min(lock_step_acks(root, 10) for _ in range(5))
        calls = calls_per_transfer(root)
    print(f"1 KiB transfer: {per_transfer:.1f} us, {calls:.0f} Python calls")
    print(f"lock-step ACK:  {per_ack:.2f} us")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""
The anycast lab's client: TFTP read requests in a loop, each from a fresh
UDP socket (so a fresh source port, as a new client would have), lockstep,
with the retransmissions and retries that PXE firmware and the common
clients make.  Run inside the lab's client namespace; it prints one JSON
object a line per fetch, then a summary line.

    tftpget.py --server 203.0.113.69 --file whoami.txt --count 300 --parallel 16

A fetch is tried up to C{--attempts} times (a new socket each time); an
attempt fails on an ERROR packet, or when C{--retransmits} retransmissions
of the RRQ or of the last ACK, C{--timeout} seconds apart, bring nothing.
The first two bytes of each payload name the server in the lab
(C{whoami.txt} is written per server), and are reported as C{server}.

Python standard library only.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time

RRQ, DATA, ACK, ERROR, OACK = 1, 3, 4, 5, 6


def attempt(server: str, port: int, name: str, timeout: float, retransmits: int, blksize: int):
    """
    One transfer: C{(ok, payload or None, why)}.
    """
    options = b""
    if blksize != 512:
        options = b"blksize\0" + str(blksize).encode() + b"\0"
    request = struct.pack("!H", RRQ) + name.encode() + b"\0octet\0" + options
    size = blksize if options else 512
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as skt:
        skt.bind(("0.0.0.0", 0))
        skt.settimeout(timeout)
        last, destination, peer = request, (server, port), None
        expected, chunks, tries = 1, [], 0
        skt.sendto(last, destination)
        while True:
            try:
                datagram, source = skt.recvfrom(65536)
            except socket.timeout:
                tries += 1
                if tries > retransmits:
                    return False, None, f"timeout waiting for block {expected}"
                skt.sendto(last, destination)
                continue
            except OSError as error:  # ICMP port unreachable, for one
                return False, None, f"socket error: {error}"
            if peer is None:
                peer = destination = source
            elif source != peer:
                continue  # another TID: RFC 1350 says answer ERROR 5; ignore it
            kind = struct.unpack("!H", datagram[:2])[0] if len(datagram) >= 2 else 0
            if kind == ERROR:
                return False, None, "ERROR %d %r" % (
                    struct.unpack("!H", datagram[2:4])[0], datagram[4:-1].decode("ascii", "replace"),
                )  # fmt: skip
            if kind == OACK:
                size = blksize
                last = struct.pack("!HH", ACK, 0)
                skt.sendto(last, destination)
                continue
            if kind != DATA:
                continue
            block = struct.unpack("!H", datagram[2:4])[0]
            if block == expected & 0xFFFF:
                tries = 0
                chunks.append(datagram[4:])
                expected += 1
                last = struct.pack("!HH", ACK, block)
                skt.sendto(last, destination)
                if len(datagram) - 4 < size:
                    return True, b"".join(chunks), ""
            elif block == (expected - 1) & 0xFFFF:
                skt.sendto(last, destination)  # our ACK was lost: say it again


def fetch(options) -> dict:
    started = time.monotonic()
    whys = []
    for number in range(1, options.attempts + 1):
        ok, payload, why = attempt(
            options.server, options.port, options.file, options.timeout,
            options.retransmits, options.blksize,
        )  # fmt: skip
        if ok:
            return {
                "ok": True, "attempts": number, "seconds": round(time.monotonic() - started, 3),
                "server": payload[:2].decode("ascii", "replace"), "bytes": len(payload),
                "failed_attempts": whys, "at": round(time.time(), 3),
            }  # fmt: skip
        whys.append(why)
    return {
        "ok": False, "attempts": options.attempts, "seconds": round(time.monotonic() - started, 3),
        "server": None, "failed_attempts": whys, "at": round(time.time(), 3),
    }  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, default=69)
    parser.add_argument("--file", required=True)
    parser.add_argument("--count", type=int, default=0, help="fetches in all (0: --duration)")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to go on for")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between fetches")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--retransmits", type=int, default=3)
    parser.add_argument("--blksize", type=int, default=512)
    options = parser.parse_args(argv)
    lock = threading.Lock()
    results: list[dict] = []
    deadline = time.monotonic() + options.duration
    taken = [0]

    def more() -> bool:
        with lock:
            if options.count:
                if taken[0] >= options.count:
                    return False
            elif time.monotonic() >= deadline:
                return False
            taken[0] += 1
            return True

    def worker():
        while more():
            result = fetch(options)
            with lock:
                results.append(result)
                sys.stdout.write(json.dumps(result) + "\n")
                sys.stdout.flush()
            if options.pause:
                time.sleep(options.pause)

    threads = [threading.Thread(target=worker) for _ in range(options.parallel)]
    for each in threads:
        each.start()
    for each in threads:
        each.join()
    servers: dict[str, int] = {}
    for each in results:
        if each["ok"]:
            servers[each["server"]] = servers.get(each["server"], 0) + 1
    summary = {
        "summary": True,
        "fetches": len(results),
        "failed": sum(not each["ok"] for each in results),
        "retried": sum(each["ok"] and each["attempts"] > 1 for each in results),
        "failed_attempts": sum(len(each["failed_attempts"]) for each in results),
        "servers": servers,
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

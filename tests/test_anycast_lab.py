"""
The anycast lab, run for real (tests/lab/netlab.py): two C{twistd tftp}
servers behind 203.0.113.69 in network namespaces, BIRD 2 routing to them
by the MEDs that ExaBGP announces from each server's C{/health}, and a
client that fetches through the router.  Each test prints its figures
(run with C{-s} to see them).

Needs root, iproute2, bird2 and exabgp; a host where they or network
namespaces are missing skips (under CI=true: fails).

    sudo python3 -m pytest -q -s tests/test_anycast_lab.py
"""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import sys
import time
from typing import Callable
from unittest import SkipTest

import pytest
from twisted.trial.unittest import SynchronousTestCase

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lab"))

import netlab  # noqa: E402
from netlab import CLIENT_PREFIX, SERVER_ADDRESSES, VIP, Lab, LabUnavailable, wait_for  # noqa: E402

IN_CI = os.environ.get("CI") == "true"

S1, S2 = SERVER_ADDRESSES[1], SERVER_ADDRESSES[2]

#: The large transfer's size (the issue's 64 MiB).
LARGE = 64 * 1024 * 1024


class TransferLost(Exception):
    """
    The large transfer did not complete (what the strict xfail expects, so
    that any other failure fails the test).
    """


def _unavailable(why: str):
    if IN_CI:
        raise LabUnavailable(f"the anycast lab cannot run under CI=true: {why}")
    raise SkipTest(f"the anycast lab cannot run here: {why}")


@functools.lru_cache(maxsize=1)
def _large_file() -> bytes:
    # Not compressible and the same every run: a counter's SHA-256 blocks.
    seed = hashlib.sha256(b"tftpd_tx anycast lab").digest()
    block = b"".join(hashlib.sha256(seed + bytes([i])).digest() for i in range(128))
    return block * (LARGE // len(block))


def _figure(name: str, value) -> None:
    print(f"[anycast lab] {name}: {value}", flush=True)


class _LabTests(SynchronousTestCase):
    """
    One lab per test, torn down whatever happens.
    """

    single_port = False
    handback = False
    meds = {1: (100, 500), 2: (200, 600)}
    #: The files both servers serve, made when a test starts (not at
    #: collection: the large one is 64 MiB).
    files: Callable[[], dict[str, bytes]] = dict

    def setUp(self):
        if os.geteuid() != 0:
            _unavailable("it needs root (network namespaces, BIRD on port 179)")
        missing = netlab.missing_programs()
        if missing:
            _unavailable(
                f"missing {', '.join(missing)} (apt-get install iproute2 bird2 exabgp)"
            )
        self.started = time.monotonic()
        self.contents = self.files()
        self.lab = Lab(
            self.contents, single_port=self.single_port, meds=self.meds, handback=self.handback
        )
        try:
            self.lab.__enter__()
        except LabUnavailable as error:
            _unavailable(str(error))
        self.addCleanup(self._close)
        _figure(f"{self.id().rsplit('.', 1)[-1]}: lab up in", f"{time.monotonic() - self.started:.1f}s")

    def _close(self):
        self.lab.close()
        _figure(
            f"{self.id().rsplit('.', 1)[-1]}: lab run time (up, test, down)",
            f"{time.monotonic() - self.started:.1f}s",
        )

    def both_routes(self, timeout: float = 30.0) -> None:
        """
        Wait until BIRD has a route to the VIP from each server.
        """
        wait_for(
            lambda: all(
                f"via {address} " in self.lab.birdc("show", "route", f"{VIP}/32")
                for address in (S1, S2)
            ),
            timeout,
            f"a route from each server; bird:\n{self.lab.birdc('show', 'route', 'all')}",
            interval=0.2,
        )

    def transfers(self, number: int) -> int:
        status, report = self.lab.health(number)
        return report["transfers"] if report else -1

    def start_large(self) -> tuple[netlab.Process, str]:
        """
        curl fetches big.bin through the router (blksize 512: 131,072
        blocks, so that it is still under way when the test acts).
        """
        target = os.path.join(self.lab.directory, f"big-{len(self.lab.processes)}.out")
        process = self.lab.start(
            "client",
            ["curl", "-sS", "--max-time", "120", "--speed-limit", "1000", "--speed-time", "5",
             "-o", target,
             f"tftp://{VIP}/big.bin"],
            f"curl-{len(self.lab.processes)}",
        )  # fmt: skip
        return process, target

    def large_outcome(self, process: netlab.Process, target: str, timeout: float) -> str:
        """
        C{"complete"} if curl fetched the whole file right, else what went
        wrong.
        """
        try:
            process.popen.wait(timeout)
        except Exception:
            return f"still running after {timeout}s"
        if process.popen.returncode:
            return f"curl exit {process.popen.returncode}: {process.output().strip()}"
        with open(target, "rb") as got:
            digest = hashlib.sha256(got.read()).hexdigest()
        if digest != hashlib.sha256(self.contents["big.bin"]).hexdigest():
            return f"wrong bytes ({os.path.getsize(target)} of {LARGE})"
        return "complete"


class _DrainLab(_LabTests):
    """
    Server 1 is preferred (MED 100 against 200); a drain makes it inferior
    (MED 500).
    """

    files = staticmethod(lambda: {"big.bin": _large_file()})

    def drain(self, large: bool) -> dict:
        """
        A client loop (and with C{large}, the large transfer) under way on
        server 1, then C{POST /drain} on it; the figures.
        """
        lab = self.lab
        lab.wait_for_hops([S1])
        self.both_routes()
        loop = lab.client("--file", "whoami-64k.txt", "--duration", "10", "--pause", "0.05",
                          "--parallel", "4")  # fmt: skip
        time.sleep(2)
        if large:
            transfer, target = self.start_large()
            wait_for(lambda: self.transfers(1) >= 1, 10, "the large transfer on server 1")
        drained_at, started = time.time(), time.monotonic()
        status, answer = lab.http(1, "POST", "/drain")
        self.assertEqual(status, 200)
        lab.wait_for_hops([S2], 20)
        switch = time.monotonic() - started
        fetches, summary = lab.client_results(loop, 60)
        before = [f for f in fetches if f["at"] < drained_at]
        after = [f for f in fetches if f["at"] >= drained_at + switch + 0.5]
        _figure("drain: transfers under way on server 1 at the drain", answer["transfers"])
        _figure("drain: route moved to server 2 in", f"{switch:.2f}s")
        _figure("drain: client loop", summary)
        _figure(
            "drain: servers before / after the switch",
            f"{sorted({f['server'] for f in before if f['ok']})} / "
            f"{sorted({f['server'] for f in after if f['ok']})}",
        )
        figures = {"switch": switch, "summary": summary, "after": after}
        if large:
            figures["large"] = self.large_outcome(transfer, target, 150)
            _figure(f"drain: the {LARGE >> 20} MiB transfer under way on server 1",
                    figures["large"])  # fmt: skip
        return figures


class DrainTests(_DrainLab):
    """
    The drain in classic mode.
    """

    def test_drain_moves_the_route_and_no_fetch_fails(self):
        """
        After C{POST /drain} on server 1 the router sends the VIP to server
        2 within seconds, and a client loop fetching meanwhile (four
        clients, three tries a fetch, as clients retry) loses no fetch.
        """
        figures = self.drain(large=False)
        self.assertLess(figures["switch"], 10)
        self.assertEqual(figures["summary"]["failed"], 0, figures["summary"])
        self.assertEqual({f["server"] for f in figures["after"]}, {"s2"})

    @pytest.mark.xfail(
        strict=True,
        raises=TransferLost,
        reason="the transfer's packets follow the route: once the router prefers server 2, "
        "the client's ACKs to 203.0.113.69:TID reach server 2, which has no socket on that "
        "port, so the kernel drops them (in single-port mode they are handed back: "
        "DrainHandbackTests)",
    )
    def test_large_transfer_under_way_completes(self):
        """
        The large transfer under way on server 1 when it is drained is lost
        in classic mode (see the reason; L{DrainHandbackTests} shows it
        completing in single-port mode with C{--handback}).
        """
        figures = self.drain(large=True)
        if figures["large"] != "complete":
            raise TransferLost(figures["large"])


class DrainHandbackTests(_DrainLab):
    """
    The drain in single-port mode with the servers handing each other their
    strays (C{--handback}): once the router prefers server 2, the client's
    ACKs of the large transfer reach server 2, which hands them to server 1.
    """

    single_port = True
    handback = True

    def test_large_transfer_under_way_completes(self):
        """
        The large transfer under way on server 1 when it is drained
        completes, its ACKs handed back by server 2, and no fetch of the
        client loop fails.
        """
        figures = self.drain(large=True)
        self.assertEqual(figures["large"], "complete")
        self.assertEqual(figures["summary"]["failed"], 0, figures["summary"])


class CrashTests(_LabTests):
    """
    Server 1 is preferred; its twistd gets C{kill -9}.
    """

    files = staticmethod(lambda: {"big.bin": _large_file()})

    def test_crash_withdraws_the_route(self):
        """
        When server 1's twistd is killed, its route is withdrawn (no answer
        from C{/health}) and the fetches go to server 2; the large transfer
        that was under way on server 1 is lost, and no fetch of the client
        loop fails (an attempt or two may).
        """
        lab = self.lab
        lab.wait_for_hops([S1])
        self.both_routes()
        loop = lab.client("--file", "whoami-64k.txt", "--duration", "12", "--pause", "0.05",
                          "--parallel", "4")  # fmt: skip
        time.sleep(2)
        large, target = self.start_large()
        wait_for(lambda: self.transfers(1) >= 1, 10, "the large transfer on server 1")
        killed_at, started = time.time(), time.monotonic()
        lab.servers[1].kill(signal.SIGKILL)
        lab.wait_for_hops([S2], 20)
        withdrawn = time.monotonic() - started
        fetches, summary = lab.client_results(loop, 60)
        outcome = self.large_outcome(large, target, 150)
        after = [f for f in fetches if f["at"] >= killed_at + withdrawn + 0.5]
        _figure("crash: route withdrawn, server 2 serving, in", f"{withdrawn:.2f}s")
        _figure("crash: client loop", summary)
        _figure("crash: servers after", sorted({f["server"] for f in after if f["ok"]}))
        _figure(f"crash: the {LARGE >> 20} MiB transfer under way on server 1", outcome)
        self.assertLess(withdrawn, 10)
        self.assertEqual(summary["failed"], 0, summary)
        self.assertEqual({f["server"] for f in after}, {"s2"})
        self.assertNotEqual(outcome, "complete")


class _ECMP(_LabTests):
    """
    Equal MEDs: BIRD merges both paths into one multipath kernel route, and
    the router hashes each flow on its UDP ports too
    (C{fib_multipath_hash_policy=1}).
    """

    meds = {1: (100, 500), 2: (100, 500)}
    fetches = 300

    def spread(self) -> dict:
        self.lab.wait_for_hops([S1, S2])
        loop = self.lab.client(
            "--file", "whoami.txt", "--count", str(self.fetches), "--parallel", "16",
            "--attempts", "1", "--timeout", "0.5", "--retransmits", "3",
        )  # fmt: skip
        fetches, summary = self.lab.client_results(loop, 300)
        mode = "single-port" if self.single_port else "classic"
        share = summary["failed"] / summary["fetches"]
        _figure(f"ECMP {mode}: failed or stalled", f"{summary['failed']} of {summary['fetches']} ({share:.0%})")
        _figure(f"ECMP {mode}: client", summary)
        for number in (1, 2):
            _figure(f"ECMP {mode}: server {number} /health", self.lab.health(number)[1])
        return summary


class ECMPClassicTests(_ECMP):
    def test_classic_mode_breaks_under_l4_ecmp(self):
        """
        In classic mode the RRQ (to port 69) and the ACKs (to the
        transfer's port) hash apart: a large share of transfers fails.
        """
        summary = self.spread()
        self.assertGreater(summary["failed"], summary["fetches"] * 0.2)


class ECMPSinglePortTests(_ECMP):
    single_port = True

    def test_single_port_mode_survives_l4_ecmp(self):
        """
        With C{--single-port} every packet of a transfer has the same ports,
        so one flow, one server: every transfer completes, on both servers.
        """
        summary = self.spread()
        self.assertEqual(summary["failed"], 0, summary)
        self.assertEqual(set(summary["servers"]), {"s1", "s2"})


class FlapTests(_LabTests):
    """
    The preferred path alternates between the servers (drain and resume
    server 1 every few seconds) while a client fetches a large file in a
    loop.
    """

    single_port = True
    files = staticmethod(lambda: {"large.bin": os.urandom(4 * 1024 * 1024)})

    def test_both_servers_name_the_flapping_prefix(self):
        """
        Both servers' C{/health} lists the client's prefix in C{flapping}.
        """
        lab = self.lab
        lab.wait_for_hops([S1])
        self.both_routes()
        loop = lab.client("--file", "large.bin", "--duration", "60", "--attempts", "1",
                          "--timeout", "0.5", "--retransmits", "2")  # fmt: skip
        started = time.monotonic()
        flips = 0

        def named(number):
            report = lab.health(number)[1] or {}
            return [f for f in report.get("flapping", []) if f["prefix"] == CLIENT_PREFIX]

        try:
            drained = False
            while time.monotonic() - started < 55 and not (named(1) and named(2)):
                lab.http(1, "POST", "/resume" if drained else "/drain")
                drained = not drained
                flips += 1
                time.sleep(3)
        finally:
            loop.kill(signal.SIGTERM)
        seconds = time.monotonic() - started
        _figure("flap: flips of the preferred path", flips)
        _figure("flap: until both servers named the prefix", f"{seconds:.1f}s")
        for number in (1, 2):
            _figure(f"flap: server {number} flapping", named(number))
        self.assertTrue(named(1) and named(2))

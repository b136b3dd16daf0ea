"""
Graded health, for the BGP speaker that announces the server's anycast
route.

A health check that only says up or down pulls the route whenever anything
is wrong, and pulls every route of the fleet when the check itself breaks.
L{Health} grades instead:

  - C{ok}: serving, nothing wrong;
  - C{degraded}: serving, but near a limit (sessions, descriptors), late
    (the reactor lags), or with a failing dependency: keep the route, make
    it inferior;
  - C{draining}: serving the transfers in flight, accepting none: keep the
    route, inferior, until the speaker withdraws it;
  - C{down}: cannot serve (the listener is gone, the canary fails, a stop
    has passed its grace): withdraw.

The first three are HTTP 200 on C{/health} (only C{ok} is 200 on
C{/ready}); C{down} is 503 on both.  The disable file that ExaBGP's
healthcheck reads (C{--disable}) is present exactly while the server is
degraded or draining, so that while it is down the failing check, not the
file, decides.
"""

from __future__ import annotations

import os
import struct
from typing import Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from . import wire
from .stats import Histogram

__all__ = ["Canary", "DisableFile", "Health", "HealthService", "ReactorLag"]

OK = "ok"
DEGRADED = "degraded"
DRAINING = "draining"
DOWN = "down"
STATES = (OK, DEGRADED, DRAINING, DOWN)

#: Fractions of a limit past which the server is degraded.
NEAR_LIMIT = 0.9
#: Reactor lag, in seconds, past which the server is degraded.
LAG_DEGRADED = 0.25
#: Consecutive canary failures that make the server down.
CANARY_FAILURES_DOWN = 2

#: Buckets of the reactor's lateness, in seconds.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class ReactorLag:
    """
    How late the reactor runs a timer: every C{interval} seconds a call is
    scheduled, and how much later than asked it runs is observed.  A
    reactor that lags answers every client that much later.

    @ivar histogram: a L{Histogram} of every lateness observed, in seconds.
    @ivar recent: the largest lateness of the last few observations.
    """

    def __init__(self, clock, interval: float = 0.5, remembered: int = 10) -> None:
        self._clock = clock
        self._interval = interval
        self._recent: list[float] = []
        self._remembered = remembered
        self._call = None
        self.histogram = Histogram(LAG_BUCKETS)

    @property
    def recent(self) -> float:
        return max(self._recent, default=0.0)

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        due = self._clock.seconds() + self._interval
        self._call = self._clock.callLater(self._interval, self._ran, due)

    def _ran(self, due: float) -> None:
        late = max(0.0, self._clock.seconds() - due)
        self.histogram.observe(late)
        self._recent = (self._recent + [late])[-self._remembered :]
        self._schedule()


class DisableFile:
    """
    A file that exists while the route should be kept but made inferior.

    It is made atomically (written under another name, then renamed), so a
    reader never sees it half there, and removed when not wanted; making or
    removing it twice does nothing.

    @param path: where it lies.
    """

    _log = Logger()

    def __init__(self, path: str) -> None:
        self.path = path
        self._present: bool | None = None

    def set(self, present: bool, reason: str = "") -> None:
        if present == self._present:
            return
        try:
            if present:
                temporary = f"{self.path}.{os.getpid()}.tmp"
                with open(temporary, "w") as f:
                    f.write(reason + "\n")
                os.rename(temporary, self.path)
            else:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
        except OSError as error:
            self._log.error(
                "Cannot {action} the disable file {path}: {error}",
                action="create" if present else "remove",
                path=self.path,
                error=error,
            )
            return
        self._present = present


class _CanaryClient(DatagramProtocol):
    """
    The canary's client socket, one for its lifetime (so that the log shows
    it open once, not at every fetch): fetches a path as a client would,
    RRQ without options, ACK each block, done at the short one.
    """

    noisy = False

    def __init__(self) -> None:
        self._finished = True

    def fetch(self, server: tuple[str, int], path: str, done: Callable[[bool], None]):
        self._server = server
        self._done = done
        self._expected = 1
        self._finished = False
        self.transport.write(wire.ReadRequest(path, "octet").encode(), server)

    def datagramReceived(self, datagram: bytes, addr) -> None:
        if self._finished or addr[0] != self._server[0]:
            return
        if datagram[:2] != b"\0\3" or len(datagram) < 4:
            self.finish(False)
            return
        (block,) = struct.unpack("!H", datagram[2:4])
        if block == self._expected & 0xFFFF:
            self._expected += 1
            self.transport.write(struct.pack("!HH", 4, block), addr)
            if len(datagram) - 4 < 512:
                self.finish(True)

    def finish(self, success: bool) -> None:
        if not self._finished:
            self._finished = True
            self._done(success)


class Canary:
    """
    A real fetch through the server's own listener every C{interval}
    seconds, over loopback: the proof that the whole path (listener,
    handler, content, a transfer) works, not just the process.

    @param reactor: provides C{IReactorUDP} and C{IReactorTime}.
    @param server: returns the listener's C{(host, port)} (known once it is
        bound); a wildcard host is reached on loopback.
    @param path: what to fetch (a small file: it is fetched at blksize 512).
    @ivar failures: consecutive failed fetches.
    """

    _log = Logger()

    def __init__(
        self, reactor, server: tuple[str, int], path: str, interval: float = 5.0,
        timeout: float = 2.0,
    ) -> None:  # fmt: skip
        self._reactor = reactor
        self._server = server
        self._path = path
        self._interval = interval
        self._timeout = timeout
        self._call = None
        self._port = None
        self._client = _CanaryClient()
        self._expiry = None
        self.failures = 0
        self.fetches = 0

    def start(self) -> None:
        self._call = self._reactor.callLater(0, self._fetch)

    def stop(self) -> None:
        for call in (self._call, self._expiry):
            if call is not None and call.active():
                call.cancel()
        self._call = self._expiry = None
        if self._port is not None:
            port, self._port = self._port, None
            port.stopListening()

    def _target(self) -> tuple[str, int]:
        host, port = self._server()
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return host, port

    def _fetch(self) -> None:
        self._call = None
        target = self._target()
        if self._port is None:
            try:
                self._port = self._reactor.listenUDP(
                    0, self._client, interface="::1" if ":" in target[0] else "127.0.0.1"
                )
            except Exception as error:
                self._log.error("The health canary cannot open a socket: {error}", error=error)
                self._done(False)
                return
        self._client.fetch(target, self._path, self._done)
        self._expiry = self._reactor.callLater(self._timeout, self._client.finish, False)

    def _done(self, success: bool) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        self.fetches += 1
        if success:
            if self.failures:
                self._log.info("The health canary {path!r} is served again", path=self._path)
            self.failures = 0
        else:
            self.failures += 1
            self._log.warn(
                "The health canary {path!r} failed ({failures} in a row)",
                path=self._path,
                failures=self.failures,
            )
        self._call = self._reactor.callLater(self._interval, self._fetch)


def open_descriptors() -> int | None:
    """
    How many descriptors this process has open, where the system says
    (Linux's C{/proc/self/fd}).
    """
    try:
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError:
        return None


class Health:
    """
    The server's grade, from what it can observe of itself.

    @param server: the L{tftpd_tx.server.TFTPServer}.
    @param listening: returns whether the listener is open.
    @param lag: the L{ReactorLag}, or L{None}.
    @param canary: the L{Canary}, or L{None}.
    @param checks: more causes of degradation: callables returning a reason
        (a short text) or L{None} (an origin's health, say).
    @param cut: returns whether a graceful stop has cut the transfers it
        waited for: the server is then down.
    """

    def __init__(
        self,
        server,
        listening: Callable[[], bool],
        *,
        lag: ReactorLag | None = None,
        canary: Canary | None = None,
        checks: tuple[Callable[[], str | None], ...] = (),
        descriptors: Callable[[], int | None] = open_descriptors,
        cut: Callable[[], bool] = lambda: False,
    ) -> None:
        self._server = server
        self._listening = listening
        self._lag = lag
        self._canary = canary
        self._checks = checks
        self._descriptors = descriptors
        self._cut = cut

    def report(self) -> dict:
        """
        The grade and why: C{{"state": ..., "reasons": [...], "transfers":
        N, "sessions_cap": N, "reactor_lag_seconds": x, "flapping":
        [...]}}.
        """
        server = self._server
        down, degraded = [], []
        if not self._listening():
            down.append("listener closed")
        if self._canary is not None and self._canary.failures >= CANARY_FAILURES_DOWN:
            down.append(f"canary failed {self._canary.failures} times in a row")
        if self._cut():
            down.append("stopped: the shutdown grace has passed")
        cap, _ = server.session_caps()
        transfers = len(server.sessions)
        if transfers >= NEAR_LIMIT * cap:
            degraded.append(f"{transfers} transfers, near the cap of {cap}")
        lag = self._lag.recent if self._lag is not None else 0.0
        if lag > LAG_DEGRADED:
            degraded.append(f"reactor lag {lag:.3f}s")
        descriptors = self._descriptors()
        if descriptors is not None and descriptors >= NEAR_LIMIT * server.descriptor_limit:
            degraded.append(
                f"{descriptors} descriptors open, near the limit of {server.descriptor_limit}"
            )
        for check in self._checks:
            reason = check()
            if reason:
                degraded.append(reason)
        if down:
            state = DOWN
        elif server.draining:
            state = DRAINING
        elif degraded:
            state = DEGRADED
        else:
            state = OK
        reasons = down + (["draining"] if server.draining else []) + degraded
        return {
            "state": state,
            "reasons": reasons,
            "transfers": transfers,
            "sessions_cap": cap,
            "draining": server.draining,
            "reactor_lag_seconds": round(lag, 6),
            "open_descriptors": descriptors,
            "flapping": server.flaps.flapping(),
        }


class HealthService(Service):
    """
    Keep the grade current where the BGP speaker looks: evaluate it every
    second, keep the disable file present exactly while the server is
    degraded or draining, log each change of grade, and once a minute the
    client prefixes that flap.

    It starts the reactor-lag probe and the canary with it, and stops only
    after C{keep_until} (the TFTP service's graceful stop) has fired, so
    that the file and the grade follow the drain to its end; the disable
    file is removed at exit.

    @param server: the L{tftpd_tx.server.TFTPServer} (for its flap table).
    @param health: the L{Health}.
    @param reactor: the C{IReactorTime}.
    @param disable_file: a L{DisableFile}, or L{None}.
    """

    _log = Logger()
    INTERVAL = 1.0
    FLAPS_INTERVAL = 60.0

    def __init__(
        self, server, health: Health, reactor, *, lag: ReactorLag | None = None,
        canary: Canary | None = None, disable_file: DisableFile | None = None,
        keep_until=None,
    ) -> None:  # fmt: skip
        self._server = server
        self._health = health
        self._reactor = reactor
        self._lag = lag
        self._canary = canary
        self._disable_file = disable_file
        self._keep_until = keep_until
        self._loop = None
        self._flaps_loop = None
        self._state = None

    def startService(self) -> None:
        super().startService()
        for part in (self._lag, self._canary):
            if part is not None:
                part.start()
        self._loop = LoopingCall(self.evaluate)
        self._loop.clock = self._reactor
        self._loop.start(self.INTERVAL, now=True)
        self._flaps_loop = LoopingCall(self._log_flaps)
        self._flaps_loop.clock = self._reactor
        self._flaps_loop.start(self.FLAPS_INTERVAL, now=False)

    def evaluate(self) -> dict:
        """
        Grade the server now, and act on it.
        """
        report = self._health.report()
        state = report["state"]
        if state != self._state:
            self._log.info(
                "Health: {state}{why}",
                state=state,
                why=f" ({'; '.join(report['reasons'])})" if report["reasons"] else "",
                health=report,
            )
            self._state = state
        if self._disable_file is not None:
            self._disable_file.set(state in (DEGRADED, DRAINING), "; ".join(report["reasons"]))
        return report

    def _log_flaps(self) -> None:
        flapping = self._server.flaps.flapping()
        if flapping:
            self._log.warn(
                "Client prefixes that flap between servers: {prefixes}",
                prefixes=", ".join(
                    f"{row['prefix']} ({row['abandoned']} abandoned, {row['strays']} strays)"
                    for row in flapping
                ),
                flapping=flapping,
            )

    def stopService(self):
        super().stopService()
        waited = self._keep_until() if self._keep_until is not None else defer.succeed(None)

        def stop(_):
            for loop in (self._loop, self._flaps_loop):
                if loop is not None and loop.running:
                    loop.stop()
            for part in (self._lag, self._canary):
                if part is not None:
                    part.stop()
            if self._disable_file is not None:
                self._disable_file.set(False)

        return waited.addBoth(stop)

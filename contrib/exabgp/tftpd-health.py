#!/usr/bin/env python3
"""
A process for ExaBGP's API that announces a TFTP server's anycast route by
the grade its operations endpoint gives (tftpd_tx's C{GET /health}).

    tftpd-health.py --url http://127.0.0.1:9669/health --prefix 203.0.113.69/32 \\
                    [--up-med 100] [--disabled-med 500] [--interval 1] [--fall 1]

Every C{--interval} seconds it fetches C{--url} and decides:

  - 200 and C{"state": "ok"}: announce each prefix with the up MED;
  - 200 and C{"degraded"} or C{"draining"}: announce it with the disabled
    MED (the route is kept, inferior: routers prefer the servers that are
    well, and clients already here finish);
  - 503, any other answer, or none within C{--timeout}: withdraw it.

It prints one ExaBGP text command per prefix when the decision changes
(C{announce route 203.0.113.69/32 next-hop self med 100},
C{withdraw route 203.0.113.69/32 next-hop self}), and says why on standard
error, which ExaBGP logs.

Why not ExaBGP's own healthcheck with C{--disable FILE}: there, an existing
disable file wins over a failing check, and a server killed while draining
(C{kill -9}, an out-of-memory kill) leaves its file behind, so the route
stays announced, de-preferred, to a server that is gone.  Here only the
server's answer counts.

ExaBGP acknowledges each command on standard input (C{done}); this process
reads and discards that, and exits when its standard input closes (ExaBGP
has gone).  On SIGTERM or SIGINT it withdraws what it announced and exits.

Python standard library only.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import sys
import threading
import urllib.error
import urllib.request

UP, DISABLED, DOWN = "up", "disabled", "down"

#: The grade of each state C{/health} may report.
GRADES = {"ok": UP, "degraded": DISABLED, "draining": DISABLED}


def arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Announce a TFTP server's anycast route to ExaBGP by its /health grade."
    )
    parser.add_argument(
        "--url", default="http://127.0.0.1:9669/health",
        help="the server's /health (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--prefix", action="append", type=prefix, required=True,
        help="a prefix to announce, e.g. 203.0.113.69/32; may be repeated",
    )  # fmt: skip
    parser.add_argument("--next-hop", default="self", help="default: %(default)s")
    parser.add_argument("--up-med", type=int, default=100, help="MED while ok (%(default)s)")
    parser.add_argument(
        "--disabled-med", type=int, default=500,
        help="MED while degraded or draining (%(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between checks (%(default)s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=2.0,
        help="seconds to wait for an answer (%(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--fall", type=int, default=1,
        help="failed checks in a row before the route is withdrawn (%(default)s)",
    )  # fmt: skip
    options = parser.parse_args(argv)
    if options.interval <= 0 or options.timeout <= 0 or options.fall < 1:
        parser.error("--interval and --timeout must be above 0, --fall at least 1")
    if options.up_med == options.disabled_med:
        parser.error("--up-med and --disabled-med must differ, or draining changes nothing")
    return options


def prefix(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


#: No proxy: the server is on this host, whatever C{http_proxy} says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def grade(url: str, timeout: float) -> tuple[str, str]:
    """
    C{(grade, why)} from one fetch of C{url}.
    """
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            status, body = response.status, response.read(65536)
    except urllib.error.HTTPError as error:
        return DOWN, f"HTTP {error.code}"
    except (OSError, ValueError) as error:
        return DOWN, f"no answer ({getattr(error, 'reason', error)})"
    if status != 200:
        return DOWN, f"HTTP {status}"
    try:
        report = json.loads(body)
        state = report["state"]
        reasons = "; ".join(str(reason) for reason in report.get("reasons", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        return DOWN, "HTTP 200 without a grade"
    found = GRADES.get(state)
    if found is None:
        return DOWN, f"unknown state {state!r}"
    return found, state + (f" ({reasons})" if reasons else "")


class Announcer:
    """
    Say to ExaBGP what changed, one command a line.
    """

    def __init__(self, options, out=sys.stdout, err=sys.stderr) -> None:
        self._options = options
        self._out = out
        self._err = err
        self._lock = threading.Lock()
        self.current: str | None = None
        self._failures = 0

    def observe(self, found: str, why: str) -> None:
        """
        Act on one check's C{found} grade.
        """
        if found == DOWN:
            self._failures += 1
            if self.current is not None and self._failures < self._options.fall:
                return
        else:
            self._failures = 0
        self.change(found, why)

    def change(self, found: str, why: str) -> None:
        with self._lock:
            if found == self.current:
                return
            options = self._options
            self._err.write(f"tftpd-health: {why}: {found}\n")
            for each in options.prefix:
                route = f"route {each} next-hop {options.next_hop}"
                if found == DOWN:
                    self._out.write(f"withdraw {route}\n")
                else:
                    med = options.up_med if found == UP else options.disabled_med
                    self._out.write(f"announce {route} med {med}\n")
            self._out.flush()
            self._err.flush()
            self.current = found


def _discard_acknowledgements(gone: threading.Event, stopped: threading.Event) -> None:
    for _ in sys.stdin:
        pass
    gone.set()
    stopped.set()


def main(argv=None) -> int:
    options = arguments(argv)
    announcer = Announcer(options)
    stopped = threading.Event()
    # ExaBGP has gone (our standard input closed): nobody to tell.
    gone = threading.Event()
    threading.Thread(
        target=_discard_acknowledgements, args=(gone, stopped), daemon=True
    ).start()

    def stop(signum, frame):
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopped.is_set():
            announcer.observe(*grade(options.url, options.timeout))
            stopped.wait(options.interval)
        if not gone.is_set() and announcer.current in (UP, DISABLED):
            announcer.change(DOWN, "stopping")
    except BrokenPipeError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

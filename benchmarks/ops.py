"""
What the operations endpoint costs (issue 11): scenario b (64 clients
fetching a 1 KiB file over and over) against `twistd tftp` with `--ops`,
scraped every second (GET /metrics and GET /health), beside the same server
without `--ops`, in one run; and how long one scrape takes while 2,000
slow transfers are live (scenario f's load: 1 MiB each, blksize 1468, an
emulated round trip of 50 ms).

    python3 benchmarks/ops.py [--reps 3] [--seconds 5] [--sessions 2000]
                              [--load /tmp/bench/tftpload] [--quick]

The load generator is ../shared/bench's C `tftpload` (built in /tmp/bench
by its setup.sh), called where it is.  The server runs on CPU 1, the load
generator and this harness (its scraper included) on CPU 0, as run.py's
scenario b does.  Loopback only (127.0.0.1), high ports; every process is
started here and stopped by its pid.  Standard library only: the package is
only started, as `twistd tftp`, never imported.  Progress goes to stderr,
the tables to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
TWISTD = (
    "import ctypes, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
    "sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
)
HOST = "127.0.0.1"
CLK = os.sysconf("SC_CLK_TCK")
SMALL, LARGE = "f1k.bin", "f1m.bin"
#: No proxy: everything here is on loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as skt:
        skt.bind((HOST, 0))
        return skt.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """
    User and system time of process C{pid} (from /proc), in seconds.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def get(url: str, timeout: float = 30.0) -> tuple[int | None, bytes, float]:
    """
    C{(status, body, seconds)} of one GET on a fresh connection.
    """
    started = time.perf_counter()
    try:
        with OPENER.open(url, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    except OSError:
        return None, b"", time.perf_counter() - started
    return status, body, time.perf_counter() - started


class Server:
    """
    `twistd -n tftp` serving C{root} on 127.0.0.1, with `--ops` when
    C{ops}, pinned to C{cpus}.
    """

    def __init__(self, root: str, logdir: str, name: str, *, ops: bool, cpus) -> None:
        self.port = free_port(socket.SOCK_DGRAM)
        self.ops_port = free_port(socket.SOCK_STREAM) if ops else None
        argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "tftp", "--root", root,
                "--port", str(self.port), "--interface", HOST]  # fmt: skip
        if ops:
            argv += ["--ops", f"tcp:{self.ops_port}:interface={HOST}"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([TOP, *filter(None, [env.get("PYTHONPATH")])])
        self.log_path = os.path.join(logdir, name + ".log")
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=logdir,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )  # fmt: skip
        self._wait_ready()

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.ops_port}{path}"

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((HOST, 0))
            probe.settimeout(0.2)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise SystemExit(f"twistd exited: see {self.log_path}")
                # A missing file: the answer is one ERROR, and no transfer
                # is left behind.
                probe.sendto(b"\0\1readiness-probe\0octet\0", (HOST, self.port))
                try:
                    probe.recvfrom(2048)
                except socket.timeout:
                    continue
                return
        self.stop()
        raise SystemExit(f"twistd did not serve within {timeout:g}s: see {self.log_path}")

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


class Scraper(threading.Thread):
    """
    GET /metrics and GET /health every C{period} seconds, as Prometheus and
    a BGP speaker's check would, until stopped.
    """

    def __init__(self, server: Server, period: float = 1.0) -> None:
        super().__init__(daemon=True)
        self._server = server
        self._period = period
        self._halt = threading.Event()
        self.metrics: list[float] = []
        self.health: list[float] = []
        self.failures = 0

    def run(self) -> None:
        while not self._halt.wait(self._period):
            for path, times in (("/metrics", self.metrics), ("/health", self.health)):
                status, _, seconds = get(self._server.url(path), 10.0)
                times.append(seconds)
                self.failures += status != 200

    def stop(self) -> None:
        self._halt.set()
        self.join(15)


def load(tool: str, arguments: list[str], cpus, timeout: float) -> dict:
    result = subprocess.run(
        [tool, *arguments], capture_output=True, text=True, timeout=timeout,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"tftpload exited {result.returncode}: {result.stderr[-500:]}")
    return json.loads(lines[-1])


def storm(args, root, logdir, cpus, rep: int, ops: bool) -> dict:
    """
    One run of scenario b, with or without the endpoint (then scraped).
    """
    server_cpus, load_cpus = cpus
    server = Server(root, logdir, f"b-{rep}-{'ops' if ops else 'plain'}", ops=ops,
                    cpus=server_cpus)  # fmt: skip
    scraper = None
    try:
        if ops:
            scraper = Scraper(server)
            scraper.start()
        before = server.cpu()
        result = load(
            args.load,
            ["-s", HOST, "-p", str(server.port), "-f", SMALL, "-b", "1468", "-T",
             "-c", "64", "-d", str(args.seconds), "--root", root],
            load_cpus, args.seconds + 60,
        )  # fmt: skip
        used = server.cpu() - before
    finally:
        if scraper is not None:
            scraper.stop()
        server.stop()
    row = {
        "transfers_s": result["transfers_s"],
        "p50": result["lat_ms"]["p50"],
        "p99": result["lat_ms"]["p99"],
        "failed": result["failed"],
        "completed": result["completed"],
        "cpu_ms_per_transfer": 1000 * used / max(1, result["completed"]),
    }
    if scraper is not None:
        row["scrapes"] = len(scraper.metrics)
        row["scrape_failures"] = scraper.failures
        row["metrics_ms"] = 1000 * statistics.median(scraper.metrics or [0])
        row["health_ms"] = 1000 * statistics.median(scraper.health or [0])
    return row


def scrape_times(server: Server, rounds: int, gap: float) -> dict:
    """
    C{rounds} of GET /metrics, GET /health and GET of a path that is not
    there (a 404: what any request waits for the reactor), C{gap} seconds
    apart; the grades and reactor lags /health reported.
    """
    times: dict[str, list[float]] = {"metrics": [], "health": [], "404": []}
    sizes, states, lags, failed = [], [], [], 0
    for _ in range(rounds):
        for key, path, expected in (("metrics", "/metrics", 200), ("health", "/health", 200),
                                    ("404", "/not-there", 404)):  # fmt: skip
            status, body, seconds = get(server.url(path))
            if status != expected:
                failed += 1
                continue
            times[key].append(seconds)
            if key == "metrics":
                sizes.append(len(body))
            elif key == "health":
                report = json.loads(body)
                states.append(report["state"])
                lags.append(report["reactor_lag_seconds"])
        time.sleep(gap)
    return {**times, "bytes": max(sizes, default=0), "states": states, "lags": lags,
            "failed": failed}  # fmt: skip


def live_transfers(server: Server) -> int:
    try:
        with OPENER.open(server.url("/health"), timeout=10) as response:
            body = response.read()
    except (OSError, urllib.error.HTTPError):
        return -1
    return json.loads(body)["transfers"]


def many(args, root, logdir, cpus) -> dict:
    """
    Scrape times at rest, then with C{args.sessions} slow transfers live.
    """
    server_cpus, load_cpus = cpus
    server = Server(root, logdir, "f-ops", ops=True, cpus=server_cpus)
    try:
        idle = scrape_times(server, args.rounds, 0.1)
        done: dict = {}
        ramp = max(0.2, args.sessions / 1000)

        def run_load():
            done.update(load(
                args.load,
                ["-s", HOST, "-p", str(server.port), "-f", LARGE, "-b", "1468", "-T",
                 "-c", str(args.sessions), "-n", str(args.sessions), "--rtt-ms", "50",
                 "--ramp", f"{ramp:g}", "--root", root, "--max-time", "170"],
                load_cpus, 200,
            ))  # fmt: skip

        thread = threading.Thread(target=run_load, daemon=True)
        thread.start()
        deadline = time.monotonic() + ramp + 20
        live = 0
        while time.monotonic() < deadline:
            live = live_transfers(server)
            if live >= 0.98 * args.sessions:
                break
            time.sleep(0.2)
        say(f"  {live} transfers live; scraping")
        busy = scrape_times(server, args.rounds, 0.25)
        live_after = live_transfers(server)
        thread.join(210)
    finally:
        server.stop()
    return {"idle": idle, "busy": busy, "live": (live, live_after), "load": done}


def render_cost(sessions: int, rounds: int) -> dict:
    """
    What one scrape costs the server's CPU, apart from the reactor's delays:
    C{/metrics}' and C{/health}'s bodies made in this process, from a
    L{tftpd_tx.server.TFTPServer} on the fake UDP reactor with C{sessions}
    transfers live and two descriptors open for each, as a real server has.
    (This is the one place the package is imported, from this checkout.)
    """
    sys.path.insert(0, TOP)
    from tftpd_tx.health import Health, ReactorLag
    from tftpd_tx.metrics import ServerCollector, make_registry, render
    from tftpd_tx.server import TFTPServer
    from tftpd_tx.testing import FakeUDPReactor, MemoryHandler

    reactor = FakeUDPReactor()
    server = TFTPServer(MemoryHandler({"f": b"x" * 4096}), reactor=reactor)
    listener = reactor.listenUDP(69, server, interface="0.0.0.0")
    for number in range(sessions):
        peer = (f"198.51.100.{number % 250 + 1}", 2000 + number)
        listener.deliver(b"\0\1f\0octet\0", peer, "192.0.2.1")
    pipes = [os.pipe() for _ in range(sessions)]
    try:
        lag = ReactorLag(reactor)
        health = Health(server, listening=lambda: True, lag=lag)
        registry = make_registry(ServerCollector(server, health, lag, "bench"))
        timings: dict[str, list[float]] = {"metrics": [], "health": []}
        for _ in range(rounds):
            started = time.perf_counter()
            render(registry)
            timings["metrics"].append(time.perf_counter() - started)
            started = time.perf_counter()
            json.dumps(health.report(), sort_keys=True)
            timings["health"].append(time.perf_counter() - started)
    finally:
        for pair in pipes:
            for fd in pair:
                os.close(fd)
    return {**timings, "live": len(server.sessions)}


def ms(values: list[float], digits: int = 1) -> str:
    if not values:
        return "n/a"
    return f"{1000 * statistics.median(values):.{digits}f} / {1000 * max(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="scenario b's -d")
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20, help="scrapes timed per state")
    parser.add_argument("--load", default="/tmp/bench/tftpload")
    parser.add_argument("--quick", action="store_true", help="1 rep of 1 s, 200 sessions")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.seconds, args.sessions, args.rounds = 1, 1.0, 200, 5
    if not os.access(args.load, os.X_OK):
        raise SystemExit(f"{args.load} is not there: build it (../shared/bench: sh setup.sh)")
    available = sorted(os.sched_getaffinity(0))
    cpus = ({available[1]}, {available[0]}) if len(available) > 1 else (None, None)
    if cpus[1]:
        os.sched_setaffinity(0, cpus[1])
    work = tempfile.mkdtemp(prefix="tftpd_tx-ops-bench-")
    try:
        root = os.path.join(work, "root")
        os.mkdir(root)
        for name, size in ((SMALL, 1024), (LARGE, 1 << 20)):
            with open(os.path.join(root, name), "wb") as f:
                f.write(os.urandom(size))
        rows: dict[bool, list[dict]] = {False: [], True: []}
        for rep in range(args.reps):
            for ops in ((False, True) if rep % 2 == 0 else (True, False)):
                say(f"b, rep {rep + 1}/{args.reps}, {'with' if ops else 'without'} --ops")
                rows[ops].append(storm(args, root, work, cpus, rep, ops))
        say(f"{args.sessions} live transfers")
        scrapes = many(args, root, work, cpus)
        say("the bodies' cost in-process")
        costs = {0: render_cost(0, 200), args.sessions: render_cost(args.sessions, 200)}
        report(args, rows, scrapes, costs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args, rows, scrapes, costs) -> None:
    def med(ops, key):
        return statistics.median(row[key] for row in rows[ops])

    out = print
    out(f"### b: 64 clients, 1 KiB, blksize 1468, {args.seconds:g} s; "
        f"medians of {args.reps} runs each, interleaved")  # fmt: skip
    out("")
    out("| server | transfers/s [min-max] | p50 / p99 ms | failed | server CPU ms/transfer "
        "| scrapes | GET /metrics, /health ms (median) |")
    out("|---|---|---|---|---|---|---|")
    for ops, label in ((False, "without --ops"), (True, "with --ops, scraped every 1 s")):
        figures = [row["transfers_s"] for row in rows[ops]]
        extra = "- | -"
        if ops:
            extra = (
                f"{sum(row['scrapes'] for row in rows[ops])} "
                f"({sum(row['scrape_failures'] for row in rows[ops])} failed) | "
                f"{med(True, 'metrics_ms'):.1f}, {med(True, 'health_ms'):.1f}"
            )
        out(f"| {label} | {statistics.median(figures):.0f} [{min(figures):.0f}-"
            f"{max(figures):.0f}] | {med(ops, 'p50'):.1f} / {med(ops, 'p99'):.1f} | "
            f"{sum(row['failed'] for row in rows[ops])} | "
            f"{med(ops, 'cpu_ms_per_transfer'):.3f} | {extra} |")  # fmt: skip
    ratios = [on["transfers_s"] / off["transfers_s"] for on, off in zip(rows[True], rows[False])]
    out("")
    out(f"with/without, per repetition: {', '.join(f'{r:.2f}' for r in ratios)} "
        f"(median {statistics.median(ratios):.2f})")
    live, live_after = scrapes["live"]
    done = scrapes["load"]
    out("")
    out(f"### One scrape, at rest and with {args.sessions} slow transfers live "
        f"(1 MiB, blksize 1468, RTT 50 ms); {args.rounds} of each, on a fresh connection")
    out("")
    out("| while | live transfers | GET /metrics ms median / max | /metrics bytes "
        "| GET /health ms median / max | GET of a 404 ms median / max | /health said |")
    out("|---|---|---|---|---|---|---|")
    for label, key, count in (("at rest", "idle", "0"),
                              (f"{args.sessions} transfers", "busy", f"{live}-{live_after}")):
        figures = scrapes[key]
        states = ", ".join(f"{state} {figures['states'].count(state)}"
                           for state in sorted(set(figures["states"])))  # fmt: skip
        lag = max(figures["lags"], default=0)
        out(f"| {label} | {count} | {ms(figures['metrics'])} | {figures['bytes']} | "
            f"{ms(figures['health'])} | {ms(figures['404'])} | {states}; reactor lag up to "
            f"{lag:.3f} s |")  # fmt: skip
        if figures["failed"]:
            out(f"| | {figures['failed']} requests failed | | | | | |")
    if done:
        out("")
        out(f"The {args.sessions} transfers: {done.get('completed')} completed, "
            f"{done.get('failed')} failed, {done.get('retransmits')} client retransmissions.")
    out("")
    out("### What making the bodies costs, in-process (CPU, no reactor): median / max of 200")
    out("")
    out("| live transfers (2 descriptors each) | /metrics body ms | /health body ms |")
    out("|---|---|---|")
    for count, figures in costs.items():
        out(f"| {figures['live']} | {ms(figures['metrics'], 2)} | {ms(figures['health'], 2)} |")


if __name__ == "__main__":
    main()

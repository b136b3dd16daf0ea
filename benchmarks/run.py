"""
tftpd_tx beside tftpd-hpa under the same load, in the same run.

    python3 benchmarks/run.py [--reps 3] [--scenarios a512,a1468,a1468w16,b,c] [--quick]

Builds benchmarks/tftpbench.c (a C load generator that checks every byte it
receives) into benchmarks/build/, writes random test files into a temporary
root, starts this checkout's `twistd tftp` and, when installed and run as root,
tftpd-hpa's `in.tftpd`, on loopback ports, runs every scenario against each
server in turn (alternating which goes first), and prints a markdown table of
medians and tftpd_tx/hpa ratios, with each server's CPU time and the load
generator's own CPU share. Only the processes it starts are stopped, by pid.

Standard library only; Linux only (/proc, sched_setaffinity, optional cgroup v2).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
SOURCE = os.path.join(HERE, "tftpbench.c")
BINARY = os.path.join(HERE, "build", "tftpbench")
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
TX, HPA, FLOOR = "tftpd_tx", "hpa", "floor"
#: The scenarios the floor server (floor.py: one lock-step transfer at a
#: time) takes part in.
FLOOR_SCENARIOS = ("a512", "a1468")
#: A run that has not finished by then has failed; tftpbench stops itself first.
CLIENT_MAX_TIME = 120
#: tftpd_tx's line per transfer: "... [tftpd_tx.server.TFTPServer#info] completed: ... N retransmits".
TRANSFER_LINE = re.compile(r"#\w+\] (\w+): .* (\d+) retransmits, ")
#: Its line for the transfer lines held back by --log-rate.
HELD_LINES = re.compile(r"\d+ more transfer lines not logged in the last [\d.]+s \(([^)]*)\)")


@dataclass
class Scenario:
    name: str
    what: str
    file: str  # which test file: "large", "medium" or "small"
    client: list[str]  # tftpbench options
    unit: str  # the figure compared: "MB/s" or "transfers/s"
    split: bool  # server on CPU 1 and client on CPU 0, rather than both on CPU 0
    curl: bool = False  # fetched once with curl instead of tftpbench


def scenarios(quick: bool) -> dict[str, Scenario]:
    seconds = "1" if quick else "5"
    return {s.name: s for s in [
        Scenario("a512", "1 client, large file, blksize 512, lock-step", "large",
                 ["-b", "512"], "MB/s", split=False),
        Scenario("a1468", "1 client, large file, blksize 1468, lock-step", "large",
                 ["-b", "1468"], "MB/s", split=False),
        Scenario("a1468w16", "1 client, large file, blksize 1468, windowsize 16", "large",
                 ["-b", "1468", "-w", "16"], "MB/s", split=False),
        Scenario("b", f"64 clients, small file, new transfers for {seconds} s", "small",
                 ["-b", "1468", "-c", "64", "-d", seconds], "transfers/s", split=True),
        Scenario("c", "200 clients x medium file, all at once", "medium",
                 ["-b", "1468", "-c", "200", "-n", "200"], "MB/s", split=True),
        Scenario("curl", "1 curl fetch, large file, blksize 1468 (cross-check)", "large",
                 [], "MB/s", split=False, curl=True),
    ]}


DEFAULT_SCENARIOS = "a512,a1468,a1468w16,b,c"


def build() -> str:
    """
    Compile tftpbench unless the binary is newer than its source.
    """
    if not os.path.exists(BINARY) or os.path.getmtime(BINARY) < os.path.getmtime(SOURCE):
        os.makedirs(os.path.dirname(BINARY), exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-o", BINARY + ".tmp", SOURCE], check=True)
        os.replace(BINARY + ".tmp", BINARY)
    return BINARY


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(pid: int, cpu: int | None) -> None:
    """
    Pin every thread of a process to one CPU (no-op when there is no choice).
    """
    if cpu is None:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except ProcessLookupError:
            pass  # the thread (or an hpa child) ended meanwhile


class CpuGroup:
    """
    A cgroup v2 folder of our own, to count the CPU time of a server and of
    every child it forks (tftpd-hpa forks one per transfer), exited or not.
    """

    def __init__(self, pid: int) -> None:
        mount = cgroup2_mount()
        if mount is None:
            raise OSError("no cgroup v2 mount")
        self.path = os.path.join(mount, f"tftpbench-{os.getpid()}")
        self.parent = mount
        os.mkdir(self.path)
        try:
            self.usage()
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        except OSError:
            os.rmdir(self.path)
            raise

    def usage(self) -> float:
        with open(os.path.join(self.path, "cpu.stat")) as f:
            for line in f:
                key, value = line.split()
                if key == "usage_usec":
                    return int(value) / 1e6
        raise OSError("cpu.stat has no usage_usec")

    def pids(self) -> list[int]:
        with open(os.path.join(self.path, "cgroup.procs")) as f:
            return [int(line) for line in f]

    def remove(self) -> None:
        """
        Remove the folder; hpa children still finishing a transfer go back to
        the parent group (they end on their own, we did not start them).
        """
        for _ in range(20):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)
        for pid in self.pids():
            with open(os.path.join(self.parent, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        os.rmdir(self.path)


def cgroup2_mount() -> str | None:
    mounts = []
    with open("/proc/self/mounts") as f:
        for line in f:
            _, mount, kind, *_ = line.split()
            if kind == "cgroup2":
                mounts.append(mount)
    if "/sys/fs/cgroup" in mounts:
        return "/sys/fs/cgroup"
    return mounts[0] if mounts else None  # e.g. /sys/fs/cgroup/unified on hybrid hosts


class Server:
    def __init__(self, label: str, argv: list[str], port: int, forks: bool, **popen) -> None:
        self.label = label
        self.port = port
        self.forks = forks  # a child process per transfer: /proc/PID/stat misses their CPU
        self.process = subprocess.Popen(argv, **popen)
        self.group: CpuGroup | None = None

    def cpu(self) -> float | None:
        """
        CPU seconds (user + system) used so far, or None when unknown.
        """
        if self.group is not None:
            return self.group.usage()
        if self.forks:
            return None
        with open(f"/proc/{self.process.pid}/stat") as f:  # utime and stime, all threads
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def pin(self, cpu: int | None) -> None:
        pin(self.process.pid, cpu)
        if self.group is not None:  # hpa children still alive from a previous scenario
            for pid in self.group.pids():
                pin(pid, cpu)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.group is not None:
            self.group.remove()


def start_servers(root: str, log: str, servers: list[Server], floor: bool) -> str | None:
    """
    Start tftpd_tx, the floor server if asked, and, when possible, tftpd-hpa,
    adding each to servers as soon as it runs; return why hpa is absent, or
    None.
    """
    servers.append(Server(
        TX,
        [sys.executable, "-c", TWISTD, "-n", "--pidfile=", f"--logfile={log}",
         "tftp", "--port", str(port := free_port()), "--interface", "127.0.0.1", "--root", root],
        port,
        forks=False,
        cwd=os.path.dirname(root),
        env=dict(os.environ, PYTHONPATH=TOP),
    ))
    if floor:
        servers.append(Server(
            FLOOR,
            [sys.executable, os.path.join(HERE, "floor.py"), str(port := free_port()), root],
            port,
            forks=False,
        ))
    hpa = shutil.which("in.tftpd")
    if hpa is None:
        return "in.tftpd is not installed"
    if os.geteuid() != 0:
        return "in.tftpd needs root for its chroot"
    server = Server(
        HPA,
        [hpa, "-L", "-a", f"127.0.0.1:{(port := free_port())}", "-s", root, "-u", "root",
         "-B", "65464"],
        port,
        forks=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    servers.append(server)
    try:
        server.group = CpuGroup(server.process.pid)
    except OSError as e:
        print(f"hpa CPU: n/a (no writable cgroup v2: {e})", file=sys.stderr)
    return None


def tftpbench(server: Server, root: str, name: str, options: list[str],
              cpu: int | None, max_time: float = CLIENT_MAX_TIME) -> dict:
    argv = [BINARY, "-p", str(server.port), "-r", root, "-f", name, "-m", str(max_time), *options]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=max_time + 30,
        preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}),
    )
    if done.returncode != 0:
        raise SystemExit(f"tftpbench failed: {' '.join(argv)}\n{done.stderr}")
    return json.loads(done.stdout)


def curl(server: Server, root: str, name: str, cpu: int | None) -> dict:
    """
    One fetch with curl, reported like tftpbench does (the file is compared).
    """
    output = os.path.join(os.path.dirname(root), "curl.out")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        ["curl", "-s", "--max-time", str(CLIENT_MAX_TIME), "--tftp-blksize", "1468",
         "-o", output, f"tftp://127.0.0.1:{server.port}/{name}"],
        preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}),
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ok = done.returncode == 0 and filecmp.cmp(output, os.path.join(root, name), shallow=False)
    size = os.path.getsize(os.path.join(root, name))
    return {
        "completed": int(ok), "failed": int(not ok), "bytes": size * ok, "wall_s": wall,
        "mb_per_s": size * ok / wall / 1e6, "transfers_per_s": ok / wall, "retransmits": None,
        "cpu_user_s": after.ru_utime - before.ru_utime,
        "cpu_sys_s": after.ru_stime - before.ru_stime,
    }


def wait_ready(server: Server, root: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(f"{server.label} exited with status {server.process.returncode}")
        if tftpbench(server, root, "small", ["-t", "200", "-R", "0"], None, 1)["completed"]:
            return
        time.sleep(0.2)
    raise SystemExit(f"{server.label} did not answer on port {server.port}")


def run_one(scenario: Scenario, server: Server, root: str, cpus: tuple) -> dict:
    server_cpu, client_cpu = (cpus[1], cpus[0]) if scenario.split else (cpus[0], cpus[0])
    server.pin(server_cpu)
    before = server.cpu()
    if scenario.curl:
        result = curl(server, root, scenario.file, client_cpu)
    else:
        result = tftpbench(server, root, scenario.file, scenario.client, client_cpu)
    time.sleep(0.2)  # let the last server-side work (an hpa child's exit) be counted
    after = server.cpu()
    result["server_cpu_s"] = None if before is None else after - before
    result["server_share"] = None if before is None else result["server_cpu_s"] / result["wall_s"]
    result["client_share"] = (result["cpu_user_s"] + result["cpu_sys_s"]) / result["wall_s"]
    if server.process.poll() is not None:
        raise SystemExit(f"{server.label} exited during {scenario.name}")
    return result


def figure(result: dict, unit: str) -> float:
    return result["mb_per_s"] if unit == "MB/s" else result["transfers_per_s"]


def cpu_ms_per_mb(result: dict) -> float | None:
    if result["server_cpu_s"] is None or not result["bytes"]:
        return None
    return result["server_cpu_s"] * 1e3 / (result["bytes"] / 1e6)


def cpu_ms_per_transfer(result: dict) -> float | None:
    if result["server_cpu_s"] is None or not result["completed"]:
        return None
    return result["server_cpu_s"] * 1e3 / result["completed"]


def median_of(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(runs: dict[str, list[dict]], measure) -> float | None:
    """
    The median of per-repetition tftpd_tx/hpa ratios (each from adjacent runs).
    """
    if HPA not in runs:
        return None
    pairs = zip(map(measure, runs[TX]), map(measure, runs[HPA]))
    return median_of([tx / hpa if tx is not None and hpa else None for tx, hpa in pairs])


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def share(runs: dict[str, list[dict]], labels: list[str], key: str) -> str:
    """
    The median CPU share (CPU seconds / wall seconds) of each server's runs.
    """
    values = [median_of([r[key] for r in runs[label]]) for label in labels]
    return " / ".join("n/a" if v is None else f"{v:.0%}" for v in values)


def table(results: dict[str, dict[str, list[dict]]], plan: dict[str, Scenario],
          labels: list[str]) -> list[str]:
    pair = " / ".join(labels)
    lines = [
        f"| scenario | what | unit | {' | '.join(labels)} | tftpd_tx/hpa | "
        f"server CPU share ({pair}) | client CPU share ({pair}) | failed ({pair}) | "
        f"client retransmits ({pair}) |",
        "|---" * (8 + len(labels)) + "|",
    ]
    for name, runs in results.items():
        unit = plan[name].unit
        medians = [fmt(median_of([figure(r, unit) for r in runs[label]])) for label in labels]
        failed = " / ".join(str(sum(r["failed"] for r in runs[label])) for label in labels)
        resent = " / ".join(
            "n/a" if not runs[label] or runs[label][0]["retransmits"] is None
            else str(sum(r["retransmits"] for r in runs[label])) for label in labels)
        lines.append(
            f"| {name} | {plan[name].what} | {unit} | {' | '.join(medians)} | "
            f"{fmt(ratio(runs, lambda r: figure(r, unit)), 2)} | "
            f"{share(runs, labels, 'server_share')} | {share(runs, labels, 'client_share')} | "
            f"{failed} | {resent} |")
    for name, unit, measure in [("a512", "ms per MB", cpu_ms_per_mb),
                                ("b", "ms per transfer", cpu_ms_per_transfer)]:
        if name in results:
            runs = results[name]
            medians = [fmt(median_of([measure(r) for r in runs[label]]), 3) for label in labels]
            lines.append(
                f"| {name} CPU | server CPU (lower is better) | {unit} | {' | '.join(medians)} | "
                f"{fmt(ratio(runs, measure), 2)} |" + "  |" * 4)
    return lines


def log_summary(path: str) -> str:
    """
    What tftpd_tx's own log says: transfers by outcome (the readiness probes
    included), its retransmissions, and its warnings and errors.
    """
    outcomes: dict[str, int] = {}
    retransmits = problems = 0
    with open(path) as f:
        for line in f:
            if match := TRANSFER_LINE.search(line):
                outcomes[match[1]] = outcomes.get(match[1], 0) + 1
                retransmits += int(match[2])
            elif match := HELD_LINES.search(line):
                for kind_count in match[1].split(", "):
                    kind, count = kind_count.rsplit(" ", 1)
                    outcomes[kind] = outcomes.get(kind, 0) + int(count)
            elif re.search(r"#(warn|error|critical)\] ", line):
                problems += 1
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
    return (f"transfers {counts or 'none'}; server retransmits {retransmits} (in the "
            f"transfer lines logged: see --log-rate); warnings and errors {problems}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS,
                        help=f"comma-separated, from {DEFAULT_SCENARIOS},curl "
                             f"(default {DEFAULT_SCENARIOS})")
    parser.add_argument("--quick", action="store_true",
                        help="small files, b for 1 s, 1 repetition: checks that it all works")
    parser.add_argument("--floor", action="store_true",
                        help="also run floor.py, the least a Python server can do per "
                             f"block, in {' and '.join(FLOOR_SCENARIOS)}")
    args = parser.parse_args()
    plan = scenarios(args.quick)
    chosen = args.scenarios.split(",")
    if unknown := [name for name in chosen if name not in plan]:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(plan)}")
    if "curl" in chosen and shutil.which("curl") is None:
        parser.error("the curl scenario needs curl")
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    reps = 1 if args.quick else args.reps
    sizes = {"large": (2 if args.quick else 32) << 20,
             "medium": (128 << 10) if args.quick else (1 << 20), "small": 1 << 10}
    build()
    # SIGTERM unwinds like Ctrl-C, through the finally that stops the servers.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    allowed = sorted(os.sched_getaffinity(0))
    cpus = (allowed[0], allowed[1]) if len(allowed) > 1 else (None, None)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tftpbench-") as work:
        root = os.path.join(work, "root")
        os.mkdir(root)
        for name, size in sizes.items():
            with open(os.path.join(root, name), "wb") as f:
                f.write(os.urandom(size))
        servers: list[Server] = []
        try:
            missing = start_servers(root, os.path.join(work, "twistd.log"), servers, args.floor)
            for server in servers:
                wait_ready(server, root)
            results = {name: {server.label: [] for server in servers} for name in chosen}
            for rep in range(reps):
                for name in chosen:
                    # Alternate which server goes first, so neither always meets
                    # the machine in the same state.
                    for server in servers[rep % len(servers):] + servers[:rep % len(servers)]:
                        if server.label == FLOOR and name not in FLOOR_SCENARIOS:
                            continue
                        result = run_one(plan[name], server, root, cpus)
                        results[name][server.label].append(result)
                        print(f"rep {rep + 1}/{reps} {name:9s} {server.label:8s} "
                              f"{figure(result, plan[name].unit):9.1f} {plan[name].unit:12s} "
                              f"failed {result['failed']} retransmits {result['retransmits']}",
                              file=sys.stderr)
        except (Exception, SystemExit):  # a failure, not an interrupt: show the server's side
            log = os.path.join(work, "twistd.log")
            if os.path.exists(log):
                with open(log) as f:
                    sys.stderr.write("twistd log (last lines):\n" + "".join(f.readlines()[-20:]))
            raise
        finally:
            for server in servers:
                server.stop()
        twistd_log = log_summary(os.path.join(work, "twistd.log"))

    labels = [server.label for server in servers]
    pinning = ("none (one CPU)" if cpus[0] is None else
               f"a: server and client on CPU {cpus[0]}; b, c: server on CPU {cpus[1]}, "
               f"client on CPU {cpus[0]}")
    print(f"tftpd_tx vs tftpd-hpa, {time.strftime('%Y-%m-%d')}, {platform.node()}: "
          f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}")
    print(f"files: large {sizes['large'] >> 10} KiB, medium {sizes['medium'] >> 10} KiB, "
          f"small {sizes['small']} B; median of {reps}; every byte verified; run took "
          f"{time.monotonic() - started:.0f} s")
    print(f"pinning: {pinning}")
    print(f"tftpd_tx log: {twistd_log}")
    if missing:
        print(f"tftpd-hpa: not run ({missing}); tftpd_tx alone")
    print()
    print("\n".join(table(results, plan, labels)))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; the servers were stopped")

"""
The HTTP origin, measured: many clients fetching one file through
C{OriginHandler} cold (nothing cached), then warm (cached), beside the same
file from a local root, in one run.

    python3 benchmarks/origin.py                    # 1000 clients, 16 MiB
    python3 benchmarks/origin.py --clients 200 --size-mib 4 --tftpload PATH
    python3 benchmarks/origin.py --workers 2        # twistd tftp --workers 2

Needs Linux, Debian's nginx (C{/usr/sbin/nginx}) and the C load generator
C{tftpload} (C{--tftpload}, or C{$TFTPLOAD}).  Everything listens on
loopback; only the processes started here are stopped, by their pids.

The cold run comes first; then warm and local runs alternate
(C{--rounds}), each warm run compared with the local run after it, so that
the rest of the machine's load weighs on both alike.  For each run it
prints the GETs nginx logged (and how many were 304s), the time from each
request to its first DATA (p50, p99, measured in the server), the clients'
aggregate MB/s (10^6 bytes), the server's CPU seconds (user and system: on
a shared machine a steadier measure of its cost than MB/s), the failures,
and the server's peak resident memory in that run.  The servers are this
script itself in child processes (C{--serve}), so their figures come from
their SessionStats.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FILE = "big.img"


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as skt:
        skt.bind(("127.0.0.1", 0))
        return skt.getsockname()[1]


def wait_for(predicate, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not start")


def tcp_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop(process):
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def start_nginx(directory, root):
    port = free_port()
    config = os.path.join(directory, "nginx.conf")
    user = "user root;" if os.geteuid() == 0 else ""
    with open(config, "w") as f:
        f.write(
            f"""{user}
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log;
events {{ worker_connections 1024; }}
http {{
    log_format bench '$status $request';
    access_log {directory}/access.log bench;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""
        )
    process = subprocess.Popen(
        ["/usr/sbin/nginx", "-p", directory, "-c", config, "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: tcp_open(port), "nginx")
    return process, port, os.path.join(directory, "access.log")


def logged(access_log):
    """
    C{(GETs, 304s)} nginx has logged so far.
    """
    if not os.path.exists(access_log):
        return 0, 0
    with open(access_log) as f:
        lines = [line for line in f if f"GET /{FILE} " in line]
    return len(lines), sum(line.startswith("304 ") for line in lines)


# -- the server (a child process) ---------------------------------------------


def serve(args):
    """
    Serve until SIGTERM; on SIGUSR1, write the phase's figures to
    C{args.report} and start a new phase.
    """
    sys.path.insert(0, REPO)
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    log = open(args.report + ".log", "a")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(log)], redirectStandardIO=False)

    from tftpd_tx.cache import DiskCache
    from tftpd_tx.filesystem import FilesystemHandler
    from tftpd_tx.origin import OriginHandler
    from tftpd_tx.service import TFTPService

    if args.origin:
        cache = DiskCache(args.cache_dir, 1 << 34)
        handler = OriginHandler(args.origin, reactor, cache=cache, timeout=30)
    else:
        handler = FilesystemHandler(args.root)
    waits = []

    def ended(stats):
        if stats.first_data_time is not None:
            waits.append(stats.first_data_time - stats.start_time)

    service = TFTPService(
        handler, port=args.port, interface="127.0.0.1", session_callback=ended
    )
    service.privilegedStartService()
    service.startService()

    cpu = [sum(os.times()[:2])]

    def report():
        waits.sort()
        with open("/proc/self/status") as f:
            status = dict(line.split(":", 1) for line in f)
        now = sum(os.times()[:2])
        figures = {
            "cpu_s": now - cpu[0],
            "transfers": len(waits),
            "first_data_p50": waits[len(waits) // 2] if waits else None,
            "first_data_p99": waits[min(len(waits) - 1, int(len(waits) * 0.99))] if waits else None,
            "rss_peak_kib": int(status["VmHWM"].split()[0]),
            "rss_kib": int(status["VmRSS"].split()[0]),
        }
        if args.origin:
            figures["origin"] = handler.stats.as_dict()
            figures["origin"].pop("latency_buckets")
        with open(args.report, "w") as f:
            json.dump(figures, f)
        waits.clear()
        cpu[0] = now
        # Each phase's peak is its own: "5" resets VmHWM to the current RSS.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(report))
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run()


# -- the run -------------------------------------------------------------------


def start_server(directory, port, extra, workers=0):
    """
    A server on C{port} with the options C{extra}: this script in a child
    process, or with C{workers} C{twistd tftp --workers} (then the report
    is L{None}: see L{phase_report}).
    """
    if workers:
        report = None
        process = subprocess.Popen(
            [sys.executable, "-c",
             "import sys; sys.argv[0] = 'twistd'; "
             "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "tftp", "--workers", str(workers), "--port", str(port),
             "--interface", "127.0.0.1", *extra],
            cwd=directory, env=dict(os.environ, PYTHONPATH=REPO),
            stdout=open(os.path.join(directory, f"twistd-{port}.log"), "w"),
            stderr=subprocess.STDOUT,
        )
    else:
        report = os.path.join(directory, f"report-{port}.json")
        process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", "--port", str(port),
             "--report", report, *extra],
        )
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def answering():
        probe.settimeout(0.2)
        probe.sendto(b"\x00\x01nothing\x00octet\x00", ("127.0.0.1", port))
        try:
            probe.recvfrom(1024)
            return True
        except OSError:
            return False

    wait_for(answering, "the TFTP server")
    probe.close()
    return process, report


def _family(pid):
    """
    C{pid} and its children (a supervisor and its workers).
    """
    pids = [pid]
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    pids.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


_cpu_before = {}


def phase_report(process, report):
    """
    The figures of the phase that just ended, and a new phase begun.  For
    C{twistd --workers} (no report file): the CPU seconds and the peak
    resident memory of the supervisor and its workers together, from
    C{/proc}; no first-DATA times.
    """
    if report is None:
        cpu = peak = 0
        for pid in _family(process.pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/status") as f:
                    status = dict(line.split(":", 1) for line in f)
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                continue
            cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            peak += int(status["VmHWM"].split()[0])
        figures = {"cpu_s": cpu - _cpu_before.get(process.pid, 0.0),
                   "first_data_p50": None, "first_data_p99": None, "rss_peak_kib": peak}
        _cpu_before[process.pid] = cpu
        return figures
    if os.path.exists(report):
        os.unlink(report)
    os.kill(process.pid, signal.SIGUSR1)
    wait_for(lambda: os.path.exists(report) and os.path.getsize(report) > 0, "the report")
    time.sleep(0.1)
    with open(report) as f:
        return json.load(f)


def load(args, port, size):
    out = subprocess.run(
        [args.tftpload, "-s", "127.0.0.1", "-p", str(port), "-f", FILE,
         "-c", str(args.clients), "-n", str(args.clients), "-b", str(args.blksize),
         "-w", str(args.windowsize), "--size", str(size), "--max-time", "600",
         "--ramp", str(args.ramp)],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(args):
    directory = tempfile.mkdtemp(prefix="tftpd_tx-origin-bench-")
    print(f"server logs: {directory}/report-*.json.log (removed at the end "
          "unless --keep)", file=sys.stderr)
    processes = []
    try:
        www = os.path.join(directory, "www")
        root = os.path.join(directory, "root")
        os.makedirs(www)
        os.makedirs(root)
        size = args.size_mib * 1024 * 1024
        with open(os.path.join(www, FILE), "wb") as f:
            f.write(os.urandom(size))
        shutil.copy(os.path.join(www, FILE), os.path.join(root, FILE))
        nginx, nginx_port, access_log = start_nginx(directory, www)
        processes.append(nginx)
        origin_port = free_port(socket.SOCK_DGRAM)
        origin = start_server(
            directory, origin_port,
            ["--origin", f"http://127.0.0.1:{nginx_port}/",
             "--cache-dir", os.path.join(directory, "cache")],
            args.workers,
        )
        processes.append(origin[0])
        local_port = free_port(socket.SOCK_DGRAM)
        local = start_server(directory, local_port, ["--root", root], args.workers)
        processes.append(local[0])
        phase_report(*origin)
        phase_report(*local)

        def origin_phase(name):
            before = logged(access_log)
            result = load(args, origin_port, size)
            after = logged(access_log)
            return (name, result, phase_report(*origin),
                    (after[0] - before[0], after[1] - before[1]))

        rows = [origin_phase("origin, cold")]
        # Warm and local alternate, so that what else the machine does
        # weighs on both alike; each warm run is compared with the local
        # run right after it.
        for n in range(1, args.rounds + 1):
            rows.append(origin_phase(f"origin, warm {n}"))
            rows.append((f"local root {n}", load(args, local_port, size),
                         phase_report(*local), None))
        print_table(args, rows)
    finally:
        for process in reversed(processes):
            stop(process)
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


def print_table(args, rows):
    servers = f", twistd tftp --workers {args.workers}" if args.workers else ""
    print(
        f"{args.clients} clients started over {args.ramp:g} s, one {args.size_mib} MiB "
        f"file, blksize {args.blksize}, windowsize {args.windowsize}{servers}\n"
    )
    print("| run | GETs (304s) | first DATA p50 / p99 | MB/s (× local) | server CPU s "
          "| failed | server peak RSS |")
    print("|---|---|---|---|---|---|---|")
    locals_ = [row for row in rows if row[3] is None]
    ratios = []
    for index, (name, result, server, gets) in enumerate(rows):
        # The local run of the same round: the next one, or the first.
        local = next((row for row in rows[index:] if row[3] is None), locals_[0])
        ratio = result["mb_s"] / local[1]["mb_s"] if local[1]["mb_s"] else 0.0
        if "warm" in name:
            ratios.append((ratio, server["cpu_s"] / local[2]["cpu_s"]))
        print(
            f"| {name} | {'—' if gets is None else f'{gets[0]} ({gets[1]})'} "
            f"| {_first_data(server)} "
            f"| {result['mb_s']:.0f} ({ratio:.2f}×) | {server['cpu_s']:.1f} | {_failures(result)} "
            f"| {server['rss_peak_kib'] / 1024:.0f} MiB |"
        )
    print()
    for n, (speed, cpu) in enumerate(ratios, 1):
        print(f"warm {n} / local {n}: {speed:.2f}× the MB/s, {cpu:.2f}× the server CPU")


def _first_data(server) -> str:
    if server["first_data_p50"] is None:
        return "—"
    return f"{server['first_data_p50'] * 1000:.1f} / {server['first_data_p99'] * 1000:.1f} ms"


def _failures(result) -> str:
    """
    How many transfers failed, and how.
    """
    kinds = {k: v for k, v in result["failures"].items() if v and k != "error"}
    kinds.update(
        {f"ERROR {k} {result['error_msgs'].get(k, '')!r}": v
         for k, v in result["failures"]["error"].items()}
    )
    details = ", ".join(f"{v} {k}" for k, v in kinds.items())
    return f"{result['failed']} ({details})" if details else str(result["failed"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--size-mib", type=int, default=16)
    parser.add_argument("--blksize", type=int, default=1468)
    parser.add_argument("--windowsize", type=int, default=16)
    parser.add_argument(
        "--ramp", type=float, default=1.0,
        help="seconds over which the clients start (a boot storm's spread); "
        "0 sends every request at once",
    )
    parser.add_argument(
        "--tftpload", default=os.environ.get("TFTPLOAD", "/tmp/bench/tftpload")
    )
    parser.add_argument(
        "--rounds", type=int, default=2,
        help="warm and local runs, alternating, after the cold one",
    )
    parser.add_argument(
        "--workers", type=int, default=0,
        help="serve with twistd tftp --workers N (both servers), the workers sharing "
        "the cache directory; no first-DATA times then",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    parser.add_argument("--origin", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
    else:
        run(args)


if __name__ == "__main__":
    main()

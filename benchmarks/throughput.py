"""
Single-transfer throughput of tftpd_tx beside tftpd-hpa, in the same run.

    python3 benchmarks/throughput.py [--size-mib 32] [--blksize 1468] [--reps 5]

Starts this checkout's `twistd tftp` and, when installed, tftpd-hpa's
`in.tftpd` on loopback ports, fetches the same file from each with curl,
alternating servers so that both see the same machine noise, and prints the
median MB/s of each and their ratio. MB is 10^6 bytes. Loopback only; both
servers are stopped (by their own process ids) at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(port: int, name: str, blksize: int, output: str) -> float:
    """
    Fetch once with curl; return the seconds taken, or raise on failure.
    """
    started = time.perf_counter()
    subprocess.run(
        ["curl", "-s", "--max-time", "120", "--tftp-blksize", str(blksize),
         "-o", output, f"tftp://127.0.0.1:{port}/{name}"],
        check=True,
    )
    return time.perf_counter() - started


def wait_ready(port: int, name: str, output: str) -> None:
    for _ in range(100):
        try:
            subprocess.run(
                ["curl", "-s", "--max-time", "1", "-o", output,
                 f"tftp://127.0.0.1:{port}/{name}"],
                check=True,
            )
            return
        except subprocess.CalledProcessError:
            time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not answer")


def start_servers(root: str) -> dict[str, tuple[subprocess.Popen, int]]:
    servers = {}
    port = free_port()
    servers["tftpd_tx"] = (
        subprocess.Popen(
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile=/dev/null",
             "tftp", "--port", str(port), "--interface", "127.0.0.1", "--root", root],
            cwd=root,
            env=dict(os.environ, PYTHONPATH=TOP),
        ),
        port,
    )
    hpa = shutil.which("in.tftpd")
    if hpa and os.geteuid() == 0:
        port = free_port()
        servers["tftpd-hpa"] = (
            subprocess.Popen(
                [hpa, "-L", "-a", f"127.0.0.1:{port}", "-s", root, "-u", "root",
                 "-B", "65464"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            port,
        )
    else:
        print("tftpd-hpa: not run (needs in.tftpd on PATH and root for its chroot)")
    return servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--blksize", type=int, default=1468)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed")
    with tempfile.TemporaryDirectory() as root:
        name = "payload.bin"
        size = args.size_mib * 1024 * 1024
        with open(os.path.join(root, name), "wb") as f:
            f.write(os.urandom(size))
        with open(os.path.join(root, "ready.txt"), "wb") as f:
            f.write(b"ready\n")
        servers = start_servers(root)
        output = os.path.join(root, "fetched.out")
        try:
            for _, port in servers.values():
                wait_ready(port, "ready.txt", output)
            seconds: dict[str, list[float]] = {label: [] for label in servers}
            for _ in range(args.reps):
                for label, (_, port) in servers.items():
                    seconds[label].append(fetch(port, name, args.blksize, output))
                    if os.path.getsize(output) != size:
                        raise SystemExit(f"{label}: short transfer")
        finally:
            for process, _ in servers.values():
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=10)
    print(f"{args.size_mib} MiB, blksize {args.blksize}, curl, median of {args.reps}:")
    rates = {label: size / statistics.median(runs) / 1e6 for label, runs in seconds.items()}
    for label, rate in rates.items():
        print(f"  {label:10s} {rate:8.1f} MB/s")
    if "tftpd-hpa" in rates:
        print(f"  ratio tftpd_tx / tftpd-hpa: {rates['tftpd_tx'] / rates['tftpd-hpa']:.2f}")


if __name__ == "__main__":
    main()

"""
How the round-trip timer behaves on a loaded host (issue 14): 200 clients
fetching 1 MiB in lock-step (scenario c's load) from `twistd tftp --ops`
while 0, 2 and 4 busy loops share the CPUs with it, unpinned; then what the
server's /metrics counted.

A timeout that the client shows was not needed (it acknowledges the first
copy of the block, then the second: `tftpd_spurious_timeouts_total`) is
what a timer shorter than the host's scheduling delay costs.  The RTO
floor (`--rto-floor`, 50 ms) is there to keep them rare when the reactor
runs late.

    python3 benchmarks/loaded.py [--loops 0,2,4] [--reps 1]
                                 [--load /tmp/bench/tftpload]

The load generator is ../shared/bench's C `tftpload` (built in /tmp/bench
by its setup.sh).  Loopback only, high ports; every process is started here
and stopped by its pid; a busy loop ends by itself after at most 120 s.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

from ops import HOST, Server, get, load, say

LARGE = "f1m.bin"
#: A busy loop that stops by itself, whatever happens to this script.
BUSY = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end: pass"
COUNTERS = (
    "tftpd_datagrams_sent_total",
    "tftpd_retransmits_total",
    "tftpd_spurious_timeouts_total",
)


def counters(server: Server) -> dict[str, float]:
    status, body, _ = get(server.url("/metrics"))
    if status != 200:
        raise SystemExit(f"GET /metrics answered {status}")
    found = {}
    for name in COUNTERS:
        match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", body.decode(), re.M)
        found[name] = float(match.group(1)) if match else 0.0
    return found


def one(args, root: str, logdir: str, loops: int, rep: int) -> dict:
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(loops)]
    try:
        server = Server(root, logdir, f"loaded-{loops}-{rep}", ops=True, cpus=None)
        try:
            result = load(
                args.load,
                ["-s", HOST, "-p", str(server.port), "-f", LARGE, "-b", "1468", "-T",
                 "-c", "200", "-n", "200", "--root", root, "--verify"],
                None, 120,
            )  # fmt: skip
            figures = counters(server)
        finally:
            server.stop()
    finally:
        for process in busy:
            process.kill()
            process.wait()
    return {
        "loops": loops,
        "completed": result["completed"],
        "failed": result["failed"],
        "client_timeouts": result["retransmits"],
        "sent": int(figures["tftpd_datagrams_sent_total"]),
        "resent": int(figures["tftpd_retransmits_total"]),
        "spurious": int(figures["tftpd_spurious_timeouts_total"]),
        "mb_s": result["mb_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", default="0,2,4", help="busy loops per run, comma-separated")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--load", default="/tmp/bench/tftpload")
    args = parser.parse_args()
    if not os.access(args.load, os.X_OK):
        raise SystemExit(f"{args.load}: build ../shared/bench first (its setup.sh)")
    work = tempfile.mkdtemp(prefix="tftpd_tx-loaded-bench-")
    root = os.path.join(work, "root")
    os.mkdir(root)
    with open(os.path.join(root, LARGE), "wb") as f:
        f.write(os.urandom(1 << 20))
    rows = []
    for rep in range(args.reps):
        for loops in (int(text) for text in args.loops.split(",")):
            say(f"rep {rep}: {loops} busy loops")
            rows.append(one(args, root, work, loops, rep))
    print("| busy loops | completed | failed | client timeouts | datagrams sent "
          "| resent | of them spurious | MB/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['loops']} | {row['completed']} | {row['failed']} | "
            f"{row['client_timeouts']} | {row['sent']} | {row['resent']} | "
            f"{row['spurious']} | {row['mb_s']:.1f} |"
        )
    say(f"logs in {work}")


if __name__ == "__main__":
    main()

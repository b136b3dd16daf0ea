"""
The anycast lab: network namespaces on one Linux host for a client, a
router and two TFTP servers behind one anycast address, BIRD 2 on the
router peering over BGP with ExaBGP on each server, ExaBGP announcing the
address by the server's graded C{/health} (contrib/exabgp/tftpd-health.py).

    client 198.51.100.10 --- 198.51.100.1 router 192.0.2.1 (bridge) --+-- 192.0.2.11 server 1
                                                                       +-- 192.0.2.12 server 2
    each server: 203.0.113.69/32 on lo, twistd tftp, ExaBGP

Every address is from the documentation ranges (RFC 5737), the AS numbers
from RFC 5398, and nothing is routed outside the namespaces: the lab's
namespaces have no link to the host's.  L{Lab} is a context manager: on
the way out, whatever happened, it kills the processes it started (by
their pid) and deletes its namespaces.

Needs root, C{ip} (iproute2), C{bird} and C{birdc} (Debian's bird2) and
C{exabgp} (Debian's exabgp).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
CLIENT_SCRIPT = os.path.join(HERE, "tftpget.py")
CONTRIB_HEALTH = os.path.join(REPO_ROOT, "contrib", "exabgp", "tftpd-health.py")
CONTRIB_BIRD = os.path.join(REPO_ROOT, "contrib", "bird", "bird.conf")

VIP = "203.0.113.69"
CLIENT_ADDRESS, CLIENT_GATEWAY = "198.51.100.10", "198.51.100.1"
CLIENT_PREFIX = "198.51.100.0/24"
ROUTER_ADDRESS = "192.0.2.1"
SERVER_ADDRESSES = {1: "192.0.2.11", 2: "192.0.2.12"}
OPS_PORT = 9669
HANDBACK_PORT = 6970

#: The programs the lab runs.
PROGRAMS = ("ip", "bird", "birdc", "exabgp")

#: twistd for this Python, dying with its parent (as tests/clients.py's).
TWISTD = [
    sys.executable,
    "-c",
    "import ctypes, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
    "sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LabUnavailable(Exception):
    """
    This host cannot run the lab; the message says why.
    """


def missing_programs() -> list[str]:
    return [name for name in PROGRAMS if shutil.which(name) is None]


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG (1): SIGKILL if the test run dies; survives the exec
    # of ip netns exec and of the program it runs.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """
    The first true value of C{predicate()} within C{timeout} seconds, or
    AssertionError naming C{what}.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(interval)


class Process:
    """
    A process the lab started in a namespace, its output in a file.
    """

    def __init__(self, lab: "Lab", namespace: str, argv, name: str, env=None) -> None:
        self.name = name
        self.log_path = os.path.join(lab.directory, f"{name}.log")
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *argv],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=env, cwd=lab.directory, preexec_fn=_die_with_parent,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        with open(self.log_path, "rb") as log:
            return log.read().decode("utf-8", "replace")

    def kill(self, signum=signal.SIGKILL, timeout: float = 10.0) -> None:
        if self.running():
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(5)
        self._log.close()


class Lab:
    """
    The namespaces, links, routes and processes of one lab run.

    @ivar servers: the server number's twistd L{Process}.
    """

    def __init__(self, root_files: dict[str, bytes], single_port: bool = False,
                 meds: dict[int, tuple[int, int]] | None = None,
                 handback: bool = False) -> None:  # fmt: skip
        """
        @param root_files: the files both servers serve (C{whoami.txt}, 4
            KiB, and C{whoami-64k.txt} are added per server: their payload
            starts with C{s1} or C{s2}).
        @param meds: the server number's C{(up, disabled)} MEDs; equal up
            MEDs make the router spread by flow (ECMP).
        @param handback: the servers hand each other their strays
            (C{--handback} on their own addresses, port L{HANDBACK_PORT};
            needs C{single_port}).
        """
        self.root_files = root_files
        self.single_port = single_port
        self.handback = handback
        self.meds = meds or {1: (100, 500), 2: (200, 600)}
        tag = f"tl{os.getpid()}"
        self.ns = {name: f"{tag}-{name}" for name in ("client", "router", "s1", "s2")}
        self._tag = tag
        self.processes: list[Process] = []
        self.servers: dict[int, Process] = {}
        self.speakers: dict[int, Process] = {}
        self.directory = ""

    # -- setting up and tearing down -------------------------------------------

    def __enter__(self) -> "Lab":
        self.directory = tempfile.mkdtemp(prefix="tftpd-anycast-lab-")
        try:
            self._make_network()
            self._start_router()
            for number in (1, 2):
                self.start_server(number)
                self._start_speaker(number)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for process in reversed(self.processes):
            try:
                process.kill()
            except Exception:
                pass
        for namespace in self.ns.values():
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
        if self.directory and not os.environ.get("TFTPD_LAB_KEEP"):
            shutil.rmtree(self.directory, ignore_errors=True)

    def _make_network(self) -> None:
        t, ns = self._tag, self.ns
        _delete_abandoned_namespaces()
        try:
            run(["ip", "netns", "add", ns["client"]])
        except subprocess.CalledProcessError as error:
            raise LabUnavailable(f"cannot make a network namespace: {error.stderr.strip()}")
        for name in ("router", "s1", "s2"):
            run(["ip", "netns", "add", ns[name]])
        for name in ns:
            self.ip(name, "link", "set", "lo", "up")
        # client <-> router
        run(["ip", "link", "add", f"{t}c", "netns", ns["client"], "type", "veth",
             "peer", "name", f"{t}rc", "netns", ns["router"]])  # fmt: skip
        self.ip("client", "address", "add", f"{CLIENT_ADDRESS}/24", "dev", f"{t}c")
        self.ip("client", "link", "set", f"{t}c", "up")
        self.ip("client", "route", "add", "default", "via", CLIENT_GATEWAY)
        self.ip("router", "address", "add", f"{CLIENT_GATEWAY}/24", "dev", f"{t}rc")
        self.ip("router", "link", "set", f"{t}rc", "up")
        # router's bridge <-> each server
        self.ip("router", "link", "add", "br0", "type", "bridge")
        self.ip("router", "address", "add", f"{ROUTER_ADDRESS}/24", "dev", "br0")
        self.ip("router", "link", "set", "br0", "up")
        for number, address in SERVER_ADDRESSES.items():
            server = ns[f"s{number}"]
            run(["ip", "link", "add", f"{t}s", "netns", server, "type", "veth",
                 "peer", "name", f"{t}r{number}", "netns", ns["router"]])  # fmt: skip
            self.ip(f"s{number}", "address", "add", f"{address}/24", "dev", f"{t}s")
            self.ip(f"s{number}", "link", "set", f"{t}s", "up")
            self.ip(f"s{number}", "route", "add", "default", "via", ROUTER_ADDRESS)
            self.ip(f"s{number}", "address", "add", f"{VIP}/32", "dev", "lo")
            self.ip("router", "link", "set", f"{t}r{number}", "master", "br0")
            self.ip("router", "link", "set", f"{t}r{number}", "up")
        self.sysctl("router", "net.ipv4.ip_forward=1")
        # ECMP by flow: the hash takes the UDP ports (a no-op without two paths).
        self.sysctl("router", "net.ipv4.fib_multipath_hash_policy=1")

    def ip(self, name: str, *arguments: str) -> str:
        return run(["ip", "-n", self.ns[name], *arguments])

    def sysctl(self, name: str, setting: str) -> str:
        return self.exec(name, "sysctl", "-q", "-w", setting)

    def exec(self, name: str, *argv: str, timeout: float = 30.0) -> str:
        return run(["ip", "netns", "exec", self.ns[name], *argv], timeout=timeout)

    def start(self, name: str, argv, label: str, env=None) -> Process:
        process = Process(self, self.ns[name], argv, label, env)
        self.processes.append(process)
        return process

    def _start_router(self) -> None:
        with open(CONTRIB_BIRD) as source:
            config = source.read().replace("log syslog all;", "log stderr all;")
        path = os.path.join(self.directory, "bird.conf")
        with open(path, "w") as out:
            out.write(config)
        self.bird_socket = os.path.join(self.directory, "bird.ctl")
        self.start("router", ["bird", "-f", "-c", path, "-s", self.bird_socket], "bird")
        wait_for(lambda: os.path.exists(self.bird_socket), 10, "bird's control socket")

    def root(self, number: int) -> str:
        return os.path.join(self.directory, f"root{number}")

    def start_server(self, number: int) -> Process:
        """
        Start (or start again) server C{number}'s twistd, and wait until its
        C{/health} answers.
        """
        root = self.root(number)
        if not os.path.isdir(root):
            os.mkdir(root)
            for name, content in self.root_files.items():
                shared = os.path.join(self.directory, name)
                if not os.path.exists(shared):
                    with open(shared, "wb") as out:
                        out.write(content)
                os.link(shared, os.path.join(root, name))
            for name, size in (("whoami.txt", 4000), ("whoami-64k.txt", 65536)):
                with open(os.path.join(root, name), "wb") as out:
                    out.write((f"s{number}\n" + "x" * size + "\n").encode())
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, *filter(None, [env.get("PYTHONPATH")])])
        argv = [
            *TWISTD, "-n", "--pidfile=", "tftp", "--root", root, "--port", "69",
            "--ops", f"tcp:{OPS_PORT}:interface=127.0.0.1",
            "--disable-file", os.path.join(self.directory, f"s{number}.disabled"),
            "--shutdown-grace", "120",
        ]  # fmt: skip
        if self.single_port:
            argv.append("--single-port")
        if self.handback:
            argv += ["--handback", f"{SERVER_ADDRESSES[number]}:{HANDBACK_PORT}"]
            for other, address in SERVER_ADDRESSES.items():
                if other != number:
                    argv += ["--handback-peer", f"{address}:{HANDBACK_PORT}"]
        process = self.start(f"s{number}", argv, f"tftpd{number}-{len(self.processes)}", env)
        self.servers[number] = process

        def ready():
            if not process.running():
                raise AssertionError(f"twistd {number} exited:\n{process.output()}")
            return self.health(number)[0] == 200

        wait_for(ready, 30, f"server {number}'s /health", interval=0.2)
        return process

    def _start_speaker(self, number: int) -> None:
        up, disabled = self.meds[number]
        address = SERVER_ADDRESSES[number]
        config = f"""
process tftpd {{
    run {sys.executable} {CONTRIB_HEALTH} --url http://127.0.0.1:{OPS_PORT}/health --prefix {VIP}/32 --up-med {up} --disabled-med {disabled} --interval 0.5 --timeout 1;
    encoder text;
}}
neighbor {ROUTER_ADDRESS} {{
    router-id {address};
    local-address {address};
    local-as 64511;
    peer-as 64496;
    hold-time 9;
    family {{ ipv4 unicast; }}
    api tftpd {{ processes [ tftpd ]; }}
}}
"""
        path = os.path.join(self.directory, f"exabgp{number}.conf")
        with open(path, "w") as out:
            out.write(config)
        env = dict(os.environ)
        env.update(
            exabgp_daemon_user="root", exabgp_daemon_drop="false", exabgp_api_cli="false",
            exabgp_log_destination="stdout", exabgp_daemon_daemonize="false",
        )  # fmt: skip
        self.speakers[number] = self.start(f"s{number}", ["exabgp", path], f"exabgp{number}", env)

    # -- looking ------------------------------------------------------------------

    def http(self, number: int, method: str, path: str, timeout: float = 2.0):
        """
        C{(status, JSON or None)} from server C{number}'s endpoint, asked
        from inside its namespace (loopback there).
        """
        script = (
            "import json, sys, urllib.request, urllib.error\n"
            "o = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
            f"r = urllib.request.Request('http://127.0.0.1:{OPS_PORT}{path}', method='{method}',"
            f" data=b'' if '{method}' == 'POST' else None)\n"
            "try:\n"
            f"    f = o.open(r, timeout={timeout}); s, b = f.status, f.read()\n"
            "except urllib.error.HTTPError as e:\n"
            "    s, b = e.code, e.read()\n"
            "except OSError:\n"
            "    s, b = None, b''\n"
            "print(json.dumps([s, b.decode('utf-8', 'replace')]))\n"
        )
        out = self.exec(f"s{number}", sys.executable, "-c", script, timeout=timeout + 10)
        status, body = json.loads(out)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, None

    def health(self, number: int):
        return self.http(number, "GET", "/health", 1.0)

    def next_hops(self) -> list[str]:
        """
        The next hops of the router's kernel route to the VIP (BIRD's).
        """
        out = self.ip("router", "-j", "route", "show", f"{VIP}/32")
        hops = []
        for route in json.loads(out or "[]"):
            if "gateway" in route:
                hops.append(route["gateway"])
            for hop in route.get("nexthops", []):
                hops.append(hop["gateway"])
        return sorted(hops)

    def wait_for_hops(self, hops: list[str], timeout: float = 30.0) -> float:
        """
        Seconds until the router's route to the VIP goes via C{hops}.
        """
        started = time.monotonic()
        wait_for(
            lambda: self.next_hops() == sorted(hops), timeout,
            f"the route to {VIP} via {hops} (now {self.next_hops()}); "
            f"bird: {self.birdc('show', 'protocols')}",
        )  # fmt: skip
        return time.monotonic() - started

    def birdc(self, *command: str) -> str:
        try:
            return run(["birdc", "-s", self.bird_socket, *command], timeout=10)
        except Exception as error:
            return f"birdc failed: {error}"

    def client(self, *arguments: str) -> Process:
        """
        Start the lab's client (tftpget.py) in the client namespace.
        """
        argv = [sys.executable, CLIENT_SCRIPT, "--server", VIP, *arguments]
        return self.start("client", argv, f"client-{len(self.processes)}")

    def client_results(self, process: Process, timeout: float) -> tuple[list[dict], dict]:
        """
        Wait for a client to finish: its fetches and its summary.
        """
        try:
            process.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the client ran over {timeout}s") from None
        lines = [json.loads(line) for line in process.output().splitlines() if line.startswith("{")]
        summary = next(line for line in lines if line.get("summary"))
        return [line for line in lines if not line.get("summary")], summary


def _delete_abandoned_namespaces() -> None:
    """
    Delete the namespaces of lab runs that were killed before they could
    (named C{tl<pid>-...} for a pid that no longer runs).
    """
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return
    for name in names:
        match = re.fullmatch(r"tl(\d+)-(client|router|s1|s2)", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def run(argv, timeout: float = 30.0) -> str:
    """
    Run C{argv}; its output, or CalledProcessError with its stderr.
    """
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return done.stdout

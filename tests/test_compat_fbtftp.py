"""
tftpd_tx.compat.fbtftp: fbtftp's README server, with only its imports
changed, serves real clients on the reactor, and its two callbacks get
fbtftp's statistics.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import threading
import time

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol, ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tftpd_tx import IllegalOperation, wire
from tftpd_tx.compat.fbtftp import (
    BaseHandler,
    BaseServer,
    ServerStats,
    SessionStats,
    StringResponseData,
    constants,
)

from clients import require_program

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The example of fbtftp 0.5's README ("Writing your own server is simple"),
# as published, except the three import lines, which named fbtftp.base_handler
# and fbtftp.base_server.
README_EXAMPLE = """\
from tftpd_tx.compat.fbtftp import BaseHandler
from tftpd_tx.compat.fbtftp import ResponseData
from tftpd_tx.compat.fbtftp import BaseServer

import os

class FileResponseData(ResponseData):
    def __init__(self, path):
        self._size = os.stat(path).st_size
        self._reader = open(path, 'rb')

    def read(self, n):
        return self._reader.read(n)

    def size(self):
        return self._size

    def close(self):
        self._reader.close()

def print_session_stats(stats):
    print(stats)

def print_server_stats(stats):
    counters = stats.get_and_reset_all_counters()
    print('Server stats - every {} seconds'.format(stats.interval))
    print(counters)

class StaticHandler(BaseHandler):
    def __init__(self, server_addr, peer, path, options, root, stats_callback):
        self._root = root
        super().__init__(server_addr, peer, path, options, stats_callback)

    def get_response_data(self):
        return FileResponseData(os.path.join(self._root, self._path))

class StaticServer(BaseServer):
    def __init__(self, address, port, retries, timeout, root,
                 handler_stats_callback, server_stats_callback=None):
        self._root = root
        self._handler_stats_callback = handler_stats_callback
        super().__init__(address, port, retries, timeout, server_stats_callback)

    def get_handler(self, server_addr, peer, path, options):
        return StaticHandler(
            server_addr, peer, path, options, self._root,
            self._handler_stats_callback)

def main():
    server = StaticServer(address='::', port=69, retries=3, timeout=5,
                          root='/var/tftproot', 
                          handler_stats_callback=print_session_stats,
                          server_stats_callback=print_server_stats)
    try:
        server.run()
    except KeyboardInterrupt:
        server.close()

if __name__ == '__main__':
    main()
"""

# A program around the example: serve one session on a port the system
# chooses, print it, and close from the session callback (a thread).
RUN_PROGRAM = """\
import sys
namespace = {"__name__": "example"}
exec(sys.stdin.read(), namespace)
def session_over(stats):
    namespace["print_session_stats"](stats)
    server.close()
server = namespace["StaticServer"](
    address="127.0.0.1", port=0, retries=3, timeout=5, root=sys.argv[1],
    handler_stats_callback=session_over)
print("port", server.bound_address[1], flush=True)
server.run()
print("run returned", flush=True)
"""


def load_example() -> dict:
    namespace = {"__name__": "fbtftp_readme_example"}
    exec(compile(README_EXAMPLE, "fbtftp-readme-example", "exec"), namespace)
    return namespace



def curl(port: int, path: str, output: str, *options: str):
    """
    Fetch C{path} with curl without blocking the reactor; fire with curl's
    exit code.
    """
    url = f"tftp://127.0.0.1:{port}/{path}"
    fetching = getProcessOutputAndValue(
        require_program("curl"),
        ["-s", "--max-time", "10", *options, "-o", output, url],
        env=os.environ,
    )
    return fetching.addCallback(lambda result: result[2])


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class StaticServerMixin:
    """
    The README's C{StaticServer} on loopback, its callbacks recording into
    queues (they run in threads, so they hand over to the reactor).
    """

    timeout = 30

    def setUp(self):
        require_program("curl")
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.files = {
            "hello.txt": b"hello from fbtftp's example\n",
            "big.bin": os.urandom(100_000),
        }
        for name, content in self.files.items():
            with open(os.path.join(self.root, name), "wb") as f:
                f.write(content)
        self.example = load_example()
        self.sessions = defer.DeferredQueue()
        self.reports = defer.DeferredQueue()
        self.server = self.example["StaticServer"](
            address="127.0.0.1",
            port=0,
            retries=3,
            timeout=5,
            root=self.root,
            handler_stats_callback=self.session_stats,
            server_stats_callback=self.server_stats,
        )
        self.server.server_stats.interval = 0.2
        self.addCleanup(self.server.stop)
        self.port = self.server.bound_address[1]
        return self.server.start()

    def session_stats(self, stats):
        self.example["print_session_stats"](stats)
        reactor.callFromThread(self.sessions.put, (stats, threading.current_thread()))

    def server_stats(self, stats):
        report = (
            time.monotonic(),
            stats.interval,
            stats.get_and_reset_all_counters(),
            threading.current_thread(),
        )
        reactor.callFromThread(self.reports.put, report)

    def out(self, name: str) -> str:
        return os.path.join(self.root, name + ".out")


class ReadmeStaticServerTests(StaticServerMixin, TestCase):
    """
    The README's static-file server, served by tftpd_tx.
    """

    @defer.inlineCallbacks
    def test_serves_files_byte_for_byte(self):
        """
        A real client gets each file exactly as it is on disk.
        """
        for name, content in self.files.items():
            code = yield curl(self.port, name, self.out(name))
            self.assertEqual(code, 0)
            self.assertEqual(read(self.out(name)), content)

    @defer.inlineCallbacks
    def test_session_stats_describe_the_transfer(self):
        """
        The handler's stats callback runs once the session is over, in a
        thread, with fbtftp's attributes: the path, the peer, the server
        address, the negotiated block size, every byte once, the packets
        sent and acknowledged, no error.
        """
        before = time.time()
        code = yield curl(self.port, "big.bin", self.out("big"), "--tftp-blksize", "1024")
        after = time.time()
        self.assertEqual(code, 0)
        stats, thread = yield self.sessions.get()
        self.assertIsInstance(stats, SessionStats)
        self.assertIsNot(thread, threading.main_thread())
        size = len(self.files["big.bin"])
        blocks = math.ceil(size / 1024)
        self.assertEqual(stats.file_path, "big.bin")
        self.assertEqual(stats.peer[0], "127.0.0.1")
        self.assertEqual(stats.server_addr, ("127.0.0.1", self.port))
        self.assertEqual(stats.error, {})
        self.assertEqual(stats.blksize, 1024)
        self.assertEqual(stats.bytes_sent, size)
        self.assertEqual(stats.options_in["mode"], "octet")
        self.assertEqual(stats.options_in["blksize"], "1024")
        self.assertNotIn("retries", stats.options_in)
        self.assertEqual(stats.options_acked["blksize"], "1024")
        self.assertEqual(stats.options_acked["tsize"], str(size))
        # The OACK, then each block; ACK 0 and each block's ACK.
        self.assertEqual(stats.packets_sent, 1 + blocks + stats.retransmits)
        self.assertEqual(stats.packets_acked, 1 + blocks)
        self.assertTrue(before <= stats.start_time <= after)
        self.assertTrue(0 <= stats.duration() <= after - before)

    @defer.inlineCallbacks
    def test_missing_file(self):
        """
        A missing file gets the client TFTP error 1 (curl exits with 68,
        "file not found"), and the stats callback reports error 1 with the
        exception's text, as fbtftp does.
        """
        code = yield curl(self.port, "missing.txt", self.out("missing"))
        self.assertEqual(code, 68)
        stats, _ = yield self.sessions.get()
        self.assertEqual(stats.file_path, "missing.txt")
        self.assertEqual(stats.error["error_code"], constants.ERR_FILE_NOT_FOUND)
        self.assertIn("No such file or directory", stats.error["error_message"])
        self.assertEqual((stats.bytes_sent, stats.packets_sent), (0, 0))

    @defer.inlineCallbacks
    def test_server_stats_every_interval(self):
        """
        The server stats callback runs every interval in a thread, with the
        interval set; the counters it takes (and resets) add up to the
        transfers: handlers created, outcomes, errors, bytes.
        """
        for name in ("hello.txt", "big.bin", "missing.txt"):
            yield curl(self.port, name, self.out(name))
        totals: dict[str, int] = {}
        times = []
        while totals.get("process_count", 0) < 3:
            when, interval, counters, thread = yield self.reports.get()
            self.assertEqual(interval, 0.2)
            self.assertIsNot(thread, threading.main_thread())
            times.append(when)
            for name, value in counters.items():
                totals[name] = totals.get(name, 0) + value
        self.assertEqual(totals["process_count"], 3)
        self.assertEqual(totals["requests.read"], 3)
        self.assertEqual(totals["outcome.completed"], 2)
        self.assertEqual(totals["errors.1"], 1)
        self.assertEqual(totals["bytes_sent"], sum(map(len, self.files.values())))
        # The counters were reset: the next report has nothing new.
        when, _, counters, _ = yield self.reports.get()
        times.append(when)
        self.assertEqual({name: n for name, n in counters.items() if n}, {})
        gaps = [later - earlier for earlier, later in zip(times, times[1:])]
        self.assertTrue(all(gap >= 0.19 for gap in gaps), gaps)


class BlockingHandlerTests(TestCase):
    """
    Handlers are synchronous, and run in threads: one that blocks holds up
    only its own client.
    """

    timeout = 30

    @defer.inlineCallbacks
    def test_blocked_handler_delays_no_one_else(self):
        """
        While one handler's C{get_response_data} blocks, another client is
        served; the blocked one is served when it returns.
        """
        require_program("curl")
        release = threading.Event()
        self.addCleanup(release.set)
        root = self.mktemp()
        os.makedirs(root)

        class Handler(BaseHandler):
            def get_response_data(self):
                if self._path == "slow":
                    release.wait(10)
                return StringResponseData(f"content of {self._path}\n")

        class Server(BaseServer):
            def get_handler(self, server_addr, peer, path, options):
                return Handler(server_addr, peer, path, options, None)

        server = Server("127.0.0.1", 0, 3, 5)
        self.addCleanup(server.stop)
        yield server.start()
        port = server.bound_address[1]
        slow = curl(port, "slow", os.path.join(root, "slow"))
        code = yield curl(port, "fast", os.path.join(root, "fast"))
        self.assertEqual(code, 0)
        self.assertEqual(read(os.path.join(root, "fast")), b"content of fast\n")
        self.assertFalse(slow.called)
        release.set()
        code = yield slow
        self.assertEqual(code, 0)
        self.assertEqual(read(os.path.join(root, "slow")), b"content of slow\n")


class _OneReply(DatagramProtocol):
    noisy = False

    def __init__(self):
        self.reply = defer.Deferred()

    def datagramReceived(self, datagram, addr):
        if not self.reply.called:
            self.reply.callback(wire.decode(datagram))


class HandlerFailureTests(TestCase):
    """
    A handler that raises: the client gets a generic error, the stats get
    fbtftp's error, the log gets the traceback.
    """

    timeout = 30

    @defer.inlineCallbacks
    def test_unexpected_exception(self):
        """
        An exception in C{get_response_data} gets the client ERROR 0
        "Internal server error" (the text stays on the server); the stats
        callback gets error 0 with the exception's text, as fbtftp reports
        it; the traceback is logged.
        """
        reported = defer.Deferred()

        class Handler(BaseHandler):
            def get_response_data(self):
                raise ValueError("no config for /srv/secret")

        class Server(BaseServer):
            def get_handler(self, server_addr, peer, path, options):
                return Handler(
                    server_addr,
                    peer,
                    path,
                    options,
                    lambda stats: reactor.callFromThread(reported.callback, stats),
                )

        reply = yield self.ask(Server, "pxelinux.cfg/default")
        self.assertEqual(reply, wire.Error(0, "Internal server error"))
        stats = yield reported
        self.assertEqual(
            stats.error, {"error_code": 0, "error_message": "no config for /srv/secret"}
        )
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @defer.inlineCallbacks
    def ask(self, server_class, path="x", retries=3, timeout=5):
        """
        Start a server, send one RRQ from a UDP socket, fire with the
        decoded reply.
        """
        server = server_class("127.0.0.1", 0, retries, timeout)
        self.addCleanup(server.stop)
        yield server.start()
        client = _OneReply()
        port = reactor.listenUDP(0, client, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        port.write(wire.ReadRequest(path, "octet").encode(), server.bound_address)
        reply = yield client.reply
        return reply

    @defer.inlineCallbacks
    def test_get_handler_returns_none(self):
        """
        A C{get_handler} that returns None serves nothing: the client gets
        ERROR 0 (fbtftp would leave it to time out).
        """

        class Server(BaseServer):
            def get_handler(self, server_addr, peer, path, options):
                return None

        reply = yield self.ask(Server)
        self.assertEqual(reply, wire.Error(0, "Request not served"))

    @defer.inlineCallbacks
    def test_get_handler_raises(self):
        """
        A C{get_handler} that raises gets the client ERROR 0 with a generic
        message, and its traceback logged.
        """

        class Server(BaseServer):
            def get_handler(self, server_addr, peer, path, options):
                raise RuntimeError("database down")

        reply = yield self.ask(Server)
        self.assertEqual(reply, wire.Error(0, "Internal server error"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_read_fails(self):
        """
        A C{read} that raises ends the transfer with fbtftp's error 0 "Error
        while reading from source", to the client and in the stats.
        """
        reported = defer.Deferred()

        class Broken(StringResponseData):
            def read(self, n):
                raise OSError("disk gone")

        class Handler(BaseHandler):
            def get_response_data(self):
                return Broken("never read")

        class Server(BaseServer):
            def get_handler(self, server_addr, peer, path, options):
                return Handler(
                    server_addr,
                    peer,
                    path,
                    options,
                    lambda stats: reactor.callFromThread(reported.callback, stats),
                )

        reply = yield self.ask(Server)
        self.assertEqual(reply, wire.Error(0, "Error while reading from source"))
        stats = yield reported
        self.assertEqual(
            stats.error, {"error_code": 0, "error_message": "Error while reading from source"}
        )
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    @defer.inlineCallbacks
    def test_client_goes_away(self):
        """
        A client that never acknowledges: after the retransmissions the
        session ends and its stats report fbtftp's timeout error, with the
        retransmissions counted.
        """
        reported = defer.Deferred()

        class Handler(BaseHandler):
            def get_response_data(self):
                return StringResponseData("unacknowledged")

        class Server(BaseServer):
            def get_handler(self, server_addr, peer, path, options):
                return Handler(
                    server_addr,
                    peer,
                    path,
                    options,
                    lambda stats: reactor.callFromThread(reported.callback, stats),
                )

        reply = yield self.ask(Server, retries=1, timeout=0.05)
        self.assertEqual(reply, wire.Data(1, b"unacknowledged"))
        stats = yield reported
        self.assertEqual(
            stats.error, {"error_code": 0, "error_message": "timeout after 1 retransmits."}
        )
        self.assertEqual((stats.retransmits, stats.packets_sent), (1, 2))
        self.assertEqual((stats.bytes_sent, stats.packets_acked), (14, 0))


class _Datagrams(DatagramProtocol):
    """
    A client socket that queues each datagram it gets, decoded, with its
    source address.
    """

    noisy = False

    def __init__(self):
        self.received = defer.DeferredQueue()

    def datagramReceived(self, datagram, addr):
        self.received.put((wire.decode(datagram), addr))


class SessionIdentityTests(TestCase):
    """
    Each session is reported to its own handler's callback, whatever other
    transfers its client made from the same address and port.
    """

    timeout = 30

    @defer.inlineCallbacks
    def test_size_probe_then_fetch_from_one_port(self):
        """
        A PXE ROM asks for the size, ends that transfer with an ERROR in
        answer to the OACK, then fetches the file from the same port: each
        handler gets its own session once, the probe with the client's error
        and nothing sent, the fetch complete.
        """
        content = "kernel image\n"
        reports = defer.DeferredQueue()
        handlers = []

        class Handler(BaseHandler):
            def get_response_data(self):
                return StringResponseData(content)

        class Server(BaseServer):
            def get_handler(self, server_addr, peer, path, options):
                number = len(handlers)
                handlers.append(number)

                def report(stats):
                    reactor.callFromThread(reports.put, (number, stats))

                return Handler(server_addr, peer, path, options, report)

        server = Server("127.0.0.1", 0, 3, 5)
        self.addCleanup(server.stop)
        yield server.start()
        client = _Datagrams()
        port = reactor.listenUDP(0, client, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        port.write(
            wire.ReadRequest("pxelinux.0", "octet", {"tsize": "0"}).encode(),
            server.bound_address,
        )
        oack, probe_port = yield client.received.get()
        self.assertEqual(oack, wire.OptionAck({"tsize": str(len(content))}))
        port.write(wire.Error(8, "tsize only").encode(), probe_port)
        port.write(wire.ReadRequest("pxelinux.0", "octet").encode(), server.bound_address)
        data, fetch_port = yield client.received.get()
        self.assertEqual(data, wire.Data(1, content.encode()))
        port.write(wire.Ack(1).encode(), fetch_port)
        first = yield reports.get()
        second = yield reports.get()
        (_, probe), (_, fetch) = sorted([first, second], key=lambda report: report[0])
        self.assertEqual(handlers, [0, 1])
        self.assertEqual(probe.options_in, {"mode": "octet", "tsize": "0"})
        self.assertEqual(probe.error, {"error_code": 8, "error_message": "tsize only"})
        self.assertEqual((probe.bytes_sent, probe.packets_sent), (0, 1))
        self.assertEqual(probe.tftpd_stats.outcome, "probe")
        self.assertEqual(fetch.options_in, {"mode": "octet"})
        self.assertEqual(fetch.error, {})
        self.assertEqual((fetch.bytes_sent, fetch.packets_acked), (len(content), 1))
        self.assertEqual(fetch.tftpd_stats.outcome, "completed")
        self.assertEqual(
            (probe.tftpd_stats.session_id, fetch.tftpd_stats.session_id), (1, 2)
        )
        self.assertEqual(probe.peer, fetch.peer)


class _Lines(ProcessProtocol):
    def __init__(self):
        self.output = b""
        self.port = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output += data
        if not self.port.called and b"\n" in self.output:
            first = self.output.split(b"\n", 1)[0].split()
            self.port.callback(int(first[1]))

    def processEnded(self, reason):
        if not self.port.called:
            self.port.errback(reason)
        self.ended.callback(reason.value.exitCode)


class RunAndCloseTests(TestCase):
    """
    C{run()} and C{close()}, as fbtftp programs use them.
    """

    timeout = 30

    @defer.inlineCallbacks
    def test_run_blocks_until_close(self):
        """
        In a program of its own, C{run()} runs the reactor and returns when
        a session callback (in a thread) calls C{close()}.
        """
        require_program("curl")
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        with open(os.path.join(root, "hello.txt"), "wb") as f:
            f.write(b"hello\n")
        lines = _Lines()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([TOP] + sys.path))
        process = reactor.spawnProcess(
            lines,
            sys.executable,
            [sys.executable, "-c", RUN_PROGRAM, root],
            env=env,
            childFDs={0: "w", 1: "r", 2: 2},
        )

        def kill():
            if process.pid is not None:
                process.signalProcess("KILL")

        self.addCleanup(kill)
        process.write(README_EXAMPLE.encode())
        process.closeStdin()
        port = yield lines.port
        code = yield curl(port, "hello.txt", os.path.join(root, "out"))
        self.assertEqual(code, 0)
        self.assertEqual(read(os.path.join(root, "out")), b"hello\n")
        exit_code = yield lines.ended
        self.assertEqual(exit_code, 0)
        self.assertTrue(lines.output.endswith(b"run returned\n"), lines.output)

    def static_server(self, content=b"a\n"):
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        with open(os.path.join(root, "a.txt"), "wb") as f:
            f.write(content)
        server = load_example()["StaticServer"]("127.0.0.1", 0, 3, 5, root, None)
        self.addCleanup(server.stop)
        return server, root

    @defer.inlineCallbacks
    def test_run_in_a_running_reactor(self):
        """
        Inside a running reactor C{run()} serves at once and returns a
        Deferred that fires when C{close()} has stopped the server and
        released its port.
        """
        require_program("curl")
        server, root = self.static_server()
        # trial calls a test before it runs the reactor: wait for one turn.
        yield deferLater(reactor, 0, lambda: None)
        self.assertTrue(reactor.running)
        serving = server.run()
        port = server.bound_address[1]
        code = yield curl(port, "a.txt", os.path.join(root, "out"))
        self.assertEqual(code, 0)
        self.assertFalse(serving.called)
        server.close()
        yield serving
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(probe.close)
        probe.bind(("127.0.0.1", port))

    @defer.inlineCallbacks
    def test_run_once(self):
        """
        C{run(run_once=True)} serves one request, then closes by itself.
        """
        require_program("curl")
        server, root = self.static_server()
        yield deferLater(reactor, 0, lambda: None)
        serving = server.run(run_once=True)
        code = yield curl(server.bound_address[1], "a.txt", os.path.join(root, "out"))
        self.assertEqual(code, 0)
        yield serving
        self.assertEqual(read(os.path.join(root, "out")), b"a\n")

    def test_port_in_use(self):
        """
        A port in use fails in the constructor with the OSError, as fbtftp's
        bind does.
        """
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        example = load_example()
        with self.assertRaises(OSError):
            example["StaticServer"]("127.0.0.1", port, 3, 5, self.mktemp(), None)


class HandlerTests(SynchronousTestCase):
    """
    L{BaseHandler} calls C{get_response_data} in its constructor and records
    failures as fbtftp does.
    """

    options = {"mode": "octet", "default_timeout": 5, "retries": 3}

    def handler(self, behaviour):
        class Handler(BaseHandler):
            def get_response_data(self):
                return behaviour()

        return Handler(("127.0.0.1", 69), ("127.0.0.1", 4000), "f", dict(self.options), None)

    def test_response(self):
        """
        The response is kept; no error; the stats name the request.
        """
        response = StringResponseData("x")
        handler = self.handler(lambda: response)
        self.assertIs(handler._response_data, response)
        self.assertEqual(handler._stats.error, {})
        self.assertEqual(handler._stats.file_path, "f")

    def test_file_not_found(self):
        """
        C{FileNotFoundError} is error 1 with the exception's text.
        """

        def missing():
            raise FileNotFoundError("gone")

        self.assertEqual(
            self.handler(missing)._stats.error, {"error_code": 1, "error_message": "gone"}
        )

    def test_codes_as_tftpd_tx_gives_them(self):
        """
        Other failures get the code tftpd_tx gives them everywhere: a
        C{PermissionError} is error 2, a L{tftpd_tx.TFTPError} its own code,
        each with the exception's text.
        """

        def forbidden():
            raise PermissionError("not yours")

        def refused():
            raise IllegalOperation("no writes here")

        self.assertEqual(
            self.handler(forbidden)._stats.error,
            {"error_code": 2, "error_message": "not yours"},
        )
        self.assertEqual(
            self.handler(refused)._stats.error,
            {"error_code": 4, "error_message": "no writes here"},
        )

    def test_other_exception(self):
        """
        Any other exception is error 0 with the exception's text.
        """

        def broken():
            raise KeyError("k")

        self.assertEqual(
            self.handler(broken)._stats.error, {"error_code": 0, "error_message": "'k'"}
        )


class ResponseAndStatsTests(SynchronousTestCase):
    """
    fbtftp's value classes.
    """

    def test_string_response_data(self):
        """
        A string is served as Latin-1, one byte per character.
        """
        response = StringResponseData("caf\xe9 au lait")
        self.assertEqual(response.size(), 12)
        self.assertEqual(response.read(5), b"caf\xe9 ")
        self.assertEqual(response.read(100), b"au lait")
        self.assertEqual(response.read(100), b"")
        response.close()

    def test_session_stats_defaults(self):
        """
        A new SessionStats has fbtftp's attributes and starting values, and
        C{duration()} is a method.
        """
        stats = SessionStats(("::", 69), ("::1", 5000), "f")
        self.assertEqual(
            (stats.server_addr, stats.peer, stats.file_path, stats.error),
            (("::", 69), ("::1", 5000), "f", {}),
        )
        self.assertEqual(
            (stats.packets_sent, stats.packets_acked, stats.bytes_sent, stats.retransmits),
            (0, 0, 0, 0),
        )
        self.assertEqual(stats.blksize, 512)
        self.assertGreaterEqual(stats.duration(), 0)

    def test_server_stats_counters(self):
        """
        ServerStats has fbtftp's counter interface and attributes.
        """
        stats = ServerStats("127.0.0.1", 60)
        self.assertEqual((stats.server_addr, stats.interval), ("127.0.0.1", 60))
        stats.increment_counter("a")
        stats.increment_counter("a", 2)
        stats.set_counter("b", 7)
        self.assertEqual(stats.get_counter("a"), 3)
        self.assertEqual(stats.get_counter("never"), 0)
        self.assertEqual(stats.get_all_counters(), {"a": 3, "b": 7})
        self.assertEqual(stats.get_and_reset_counter("a"), 3)
        self.assertEqual(stats.get_counter("a"), 0)
        stats.reset_counter("b")
        self.assertEqual(stats.get_counter("b"), 0)
        stats.increment_counter("c", -1)
        self.assertEqual(stats.get_and_reset_all_counters(), {"a": 0, "b": 0, "c": -1})
        self.assertEqual(stats.get_all_counters(), {})
        stats.set_counter("d", 1)
        stats.reset_all_counters()
        self.assertEqual(stats.get_all_counters(), {})
        self.assertGreaterEqual(stats.duration(), 0)

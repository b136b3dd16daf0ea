"""
The framework with a real client on loopback: slow handlers and slow reads
hold up only their own transfer; the dynamic example serves per-client
configs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tftpd_tx import BytesResponseData, FilesystemHandler, Router, TFTPServer, TFTPService

from clients import REPO_ROOT, TWISTD, free_udp_port, require_program

SLOW_HANDLER_SECONDS = 3.0


@defer.inlineCallbacks
def curl(url: str, output: str, max_time: float = 20):
    """
    Fetch C{url} with curl without blocking the reactor; fire with C{(exit
    code, seconds taken)}.
    """
    started = time.monotonic()
    _, _, code = yield getProcessOutputAndValue(
        require_program("curl"),
        ["-s", "--max-time", str(max_time), "-o", output, url],
        env=os.environ,
    )
    return code, time.monotonic() - started


class SlowContent:
    """
    A response whose reads answer after a delay per 512 bytes asked,
    through a Deferred: as slow when the session reads ahead (a fast
    client's transfer asks for 16 KiB at once) as block by block.
    """

    def __init__(self, content: bytes, delay: float) -> None:
        self._inner = BytesResponseData(content)
        self._delay = delay
        self.reads = 0

    def read(self, n):
        self.reads += 1
        return deferLater(reactor, self._delay * max(1, n // 512), self._inner.read, n)

    def size(self):
        return self._inner.size()

    def close(self):
        self._inner.close()


class NeverBlockTests(TestCase):
    """
    A slow handler or a slow read delays no other client.
    """

    timeout = 60

    def setUp(self):
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.fast_content = os.urandom(256 * 1024)
        with open(os.path.join(self.root, "fast.bin"), "wb") as f:
            f.write(self.fast_content)
        self.slow_calls = []
        router = Router(default=FilesystemHandler(self.root))
        router.add("slow/{name}", self.slow_handler)
        router.add("dribble/{name}", self.dribble_handler)
        self.service = TFTPService(router, port=0, interface="127.0.0.1")
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.port = self.service.port.getHost().port

    def slow_handler(self, request, name):
        self.slow_calls.append(request)
        return deferLater(
            reactor, SLOW_HANDLER_SECONDS, BytesResponseData, f"slow {name}\n"
        )

    def dribble_handler(self, request, name):
        return SlowContent(b"d" * 20 * 512, 0.05)

    def url(self, path):
        return f"tftp://127.0.0.1:{self.port}/{path}"

    def out(self, name):
        return os.path.join(self.root, name + ".out")

    @defer.inlineCallbacks
    def test_slow_handler_delays_no_one_else(self):
        """
        While a handler takes 3 s to answer one client, another client's
        256 KiB fetch finishes in its normal time, and the slow client gets
        its file after the 3 s without the handler being asked twice.
        """
        code, alone = yield curl(self.url("fast.bin"), self.out("alone"))
        self.assertEqual(code, 0)
        slow = curl(self.url("slow/a"), self.out("slow"))
        yield deferLater(reactor, 0.2, lambda: None)
        code, beside = yield curl(self.url("fast.bin"), self.out("beside"))
        self.assertEqual(code, 0)
        self.assertFalse(slow.called)
        (slow_code, slow_seconds) = yield slow
        self.assertEqual(slow_code, 0)
        with open(self.out("beside"), "rb") as f:
            self.assertEqual(f.read(), self.fast_content)
        with open(self.out("slow"), "rb") as f:
            self.assertEqual(f.read(), b"slow a\n")
        self.assertGreaterEqual(slow_seconds, SLOW_HANDLER_SECONDS)
        self.assertLess(beside, 1.0 + 2 * alone)
        self.assertEqual(len(self.slow_calls), 1)
        sys.stderr.write(
            f"\nfast fetch alone {alone:.3f}s, beside a {SLOW_HANDLER_SECONDS}s "
            f"handler {beside:.3f}s; slow fetch {slow_seconds:.3f}s\n"
        )

    @defer.inlineCallbacks
    def test_slow_reads_pause_only_their_transfer(self):
        """
        A response whose reads each take 50 ms through a Deferred pauses its
        own transfer only: it arrives intact, and a fetch beside it is not
        held up.
        """
        dribble = curl(self.url("dribble/x"), self.out("dribble"))
        code, beside = yield curl(self.url("fast.bin"), self.out("beside"))
        self.assertEqual(code, 0)
        self.assertFalse(dribble.called)
        code, _ = yield dribble
        self.assertEqual(code, 0)
        with open(self.out("dribble"), "rb") as f:
            self.assertEqual(f.read(), b"d" * 20 * 512)
        self.assertLess(beside, 1.0)


class PlainProtocolTests(TestCase):
    """
    L{TFTPServer} is an ordinary protocol for C{reactor.listenUDP}.
    """

    timeout = 30

    @defer.inlineCallbacks
    def test_listen_udp(self):
        """
        Given to C{reactor.listenUDP} directly, the server serves a real
        client from the port's address.
        """
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        content = os.urandom(3000)
        with open(os.path.join(root, "f.bin"), "wb") as f:
            f.write(content)
        port = reactor.listenUDP(0, TFTPServer(FilesystemHandler(root)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        output = os.path.join(root, "out")
        code, _ = yield curl(f"tftp://127.0.0.1:{port.getHost().port}/f.bin", output)
        self.assertEqual(code, 0)
        with open(output, "rb") as f:
            self.assertEqual(f.read(), content)


class TwistdMixin:
    """
    Run C{twistd -n} with given arguments in a subprocess on a free port,
    and wait until it serves C{ready_path}.
    """

    timeout = 60

    @defer.inlineCallbacks
    def start_twistd(self, arguments, ready_path, env=None):
        require_program("curl")
        self.workdir = self.mktemp()
        os.makedirs(self.workdir)
        environment = dict(os.environ, TFTP_PORT=str(self.port), PYTHONPATH=REPO_ROOT)
        environment.update(env or {})
        self.process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", *arguments],
            cwd=self.workdir,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(self.stop)
        for _ in range(100):
            code, _ = yield curl(self.url(ready_path), self.out("ready"), max_time=1)
            if code == 0:
                return
            yield deferLater(reactor, 0.1, lambda: None)
        self.fail(f"twistd {' '.join(arguments)} did not start serving")

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=10)

    def url(self, path):
        return f"tftp://127.0.0.1:{self.port}/{path}"

    def out(self, name):
        return os.path.join(self.workdir, name)

    def read(self, name):
        with open(self.out(name), "rb") as f:
            return f.read()


class StaticTacTests(TwistdMixin, TestCase):
    """
    C{twistd -ny tac/static.tac} serves the bundled root, or C{TFTP_ROOT}.
    """

    def setUp(self):
        self.port = free_udp_port()

    @defer.inlineCallbacks
    def test_bundled_root(self):
        """
        With nothing configured, the bundled example root is served.
        """
        yield self.start_twistd(["-y", os.path.join(REPO_ROOT, "tac", "static.tac")], "hello.txt")
        with open(os.path.join(REPO_ROOT, "tac", "root", "hello.txt"), "rb") as f:
            self.assertEqual(self.read("ready"), f.read())

    @defer.inlineCallbacks
    def test_root_from_environment(self):
        """
        TFTP_ROOT chooses another root.
        """
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        with open(os.path.join(root, "mine.txt"), "wb") as f:
            f.write(b"my own root\n")
        yield self.start_twistd(
            ["-y", os.path.join(REPO_ROOT, "tac", "static.tac")], "mine.txt", {"TFTP_ROOT": root}
        )
        self.assertEqual(self.read("ready"), b"my own root\n")


class HandlerOptionTests(TwistdMixin, TestCase):
    """
    C{twistd tftp --handler module:factory} serves with a user's handler.
    """

    def setUp(self):
        self.port = free_udp_port()

    @defer.inlineCallbacks
    def test_user_handler(self):
        """
        The factory, found on PYTHONPATH, is called once and its handler
        answers every request.
        """
        modules = os.path.abspath(self.mktemp())
        os.makedirs(modules)
        with open(os.path.join(modules, "my_boot_handler.py"), "w") as f:
            f.write(
                "from tftpd_tx import BytesResponseData\n"
                "class Echo:\n"
                "    def get_response_data(self, request):\n"
                "        return BytesResponseData('you asked for ' + request.normalized_path)\n"
                "def factory():\n"
                "    return Echo()\n"
            )
        yield self.start_twistd(
            ["tftp", "--port", str(self.port), "--interface", "127.0.0.1",
             "--handler", "my_boot_handler:factory"],
            "any/thing",
            {"PYTHONPATH": os.pathsep.join([modules, REPO_ROOT])},
        )
        self.assertEqual(self.read("ready"), b"you asked for any/thing")

    def test_bad_handler_fails_at_start(self):
        """
        A handler that cannot be imported stops twistd at start with a
        message naming --handler.
        """
        result = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "tftp",
             "--port", str(self.port), "--handler", "no_such_module_x:factory"],
            env=dict(os.environ, PYTHONPATH=REPO_ROOT),
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--handler", result.stdout + result.stderr)
        self.assertIn("no_such_module_x", result.stdout + result.stderr)


class DynamicTacTests(TwistdMixin, TestCase):
    """
    C{twistd -ny tac/dynamic.tac}, fetched with curl.
    """

    @defer.inlineCallbacks
    def setUp(self):
        self.port = free_udp_port()
        yield self.start_twistd(["-y", os.path.join(REPO_ROOT, "tac", "dynamic.tac")], "hello.txt")

    @defer.inlineCallbacks
    def test_pxelinux_config_per_mac(self):
        """
        pxelinux.cfg/01-<mac> is generated for that MAC and the asking host.
        """
        code, _ = yield curl(self.url("pxelinux.cfg/01-AA-bb-cc-dd-ee-01"), self.out("pxe"))
        self.assertEqual(code, 0)
        config = self.read("pxe")
        self.assertIn(b"BOOTIF=01-aa-bb-cc-dd-ee-01 hostname=node-aabbccddee01", config)
        self.assertIn(b"asked by 127.0.0.1", config)

    @defer.inlineCallbacks
    def test_grub_config_only_for_its_machine(self):
        """
        grub/grub.cfg-<ip> is served to <ip> and refused to anyone else.
        """
        code, _ = yield curl(self.url("grub/grub.cfg-127.0.0.1"), self.out("grub"))
        self.assertEqual(code, 0)
        self.assertIn(b"ip=127.0.0.1::::node-127-0-0-1::dhcp", self.read("grub"))
        code, _ = yield curl(self.url("grub/grub.cfg-10.9.8.7"), self.out("other"))
        self.assertNotEqual(code, 0)

    @defer.inlineCallbacks
    def test_static_files_from_root(self):
        """
        Other paths come from the bundled root.
        """
        code, _ = yield curl(self.url("pxelinux.cfg/default"), self.out("default"))
        self.assertEqual(code, 0)
        with open(os.path.join(REPO_ROOT, "tac", "root", "pxelinux.cfg", "default"), "rb") as f:
            self.assertEqual(self.read("default"), f.read())

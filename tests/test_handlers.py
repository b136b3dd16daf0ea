"""
Router, ThreadedHandler and the serial thread calls it is built on.
"""

from __future__ import annotations

import threading

from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tftpd_tx import BytesResponseData, FileNotFound, Router, ThreadedHandler
from tftpd_tx.content import Request, normalize_path
from tftpd_tx.testing import MemoryHandler


def request(path, peer=("192.0.2.9", 1000)):
    return Request(
        peer=peer, local=("192.0.2.1", 69), path=path, normalized_path=normalize_path(path)
    )


def echo(request, **captured):
    return BytesResponseData(repr(sorted(captured.items())))


class RouterTests(SynchronousTestCase):
    """
    Routing by path pattern.
    """

    def setUp(self):
        self.router = Router(default=MemoryHandler({"pxelinux.0": b"loader"}))
        self.router.add("pxelinux.cfg/01-{mac}", echo)
        self.router.add("grub/grub.cfg-{ip}", echo)
        self.router.add("boot/{arch}/{name}.efi", echo)

    def read(self, path):
        return self.router.get_response_data(request(path)).read(1000)

    def test_captures_passed(self):
        """
        Each placeholder captures one path segment, passed by name.
        """
        self.assertEqual(
            self.read("/pxelinux.cfg/01-aa-bb-cc-dd-ee-ff"), b"[('mac', 'aa-bb-cc-dd-ee-ff')]"
        )
        self.assertEqual(
            self.read("boot/x86_64/shim.efi"), b"[('arch', 'x86_64'), ('name', 'shim')]"
        )

    def test_literal_parts_are_literal(self):
        """
        Dots in a pattern match only dots, and a placeholder never spans a
        slash; what does not match goes to the default handler.
        """
        self.assertRaises(FileNotFound, self.read, "grubXgrub.cfg-10.0.0.1")
        self.assertRaises(FileNotFound, self.read, "pxelinux.cfg/01-aa/bb")
        self.assertEqual(self.read("pxelinux.0"), b"loader")

    def test_first_route_wins(self):
        """
        Routes are tried in the order they were added.
        """
        router = Router()
        router.add("{any}", lambda request, any: BytesResponseData(b"first"))
        router.add("x", lambda request: BytesResponseData(b"second"))
        self.assertEqual(router.get_response_data(request("x")).read(10), b"first")

    def test_no_default(self):
        """
        Without a default handler, unmatched paths are not found.
        """
        self.assertRaises(FileNotFound, Router().get_response_data, request("x"))


class Blocking:
    """
    A blocking handler that records the threads it runs in.
    """

    def __init__(self):
        self.threads = []

    def get_response_data(self, request):
        self.threads.append(threading.get_ident())
        handler = self

        class Response(BytesResponseData):
            def read(self, n):
                handler.threads.append(threading.get_ident())
                return super().read(n)

            def size(self):
                handler.threads.append(threading.get_ident())
                return super().size()

        return Response(b"blocking content")


class ThreadedHandlerTests(TestCase):
    """
    A blocking handler runs outside the reactor thread.
    """

    timeout = 10

    @defer.inlineCallbacks
    def test_handler_and_reads_in_threads(self):
        """
        get_response_data, size and read run in the pool, never in the
        reactor thread; size() is answered without a thread hop.
        """
        blocking = Blocking()
        threaded = ThreadedHandler(blocking)
        response = yield threaded.get_response_data(request("x"))
        self.assertEqual(response.size(), 16)
        data = yield response.read(100)
        self.assertEqual(data, b"blocking content")
        response.close()
        main = threading.get_ident()
        self.assertEqual(len(blocking.threads), 3)
        self.assertNotIn(main, blocking.threads)

    @defer.inlineCallbacks
    def test_refusal_crosses_the_thread(self):
        """
        A refusal raised in the thread reaches the server as that refusal.
        """
        threaded = ThreadedHandler(MemoryHandler({}))
        with self.assertRaises(FileNotFound):
            yield threaded.get_response_data(request("missing"))

    @defer.inlineCallbacks
    def test_close_waits_for_an_abandoned_read(self):
        """
        A response's calls never overlap: when a transfer ends during a read
        (its Deferred cancelled), C{close} runs only after that read has
        returned, so a response needs no lock against its own close.
        """
        release = threading.Event()
        self.addCleanup(release.set)
        events = []
        closed = defer.Deferred()

        class Slow(BytesResponseData):
            def read(self, n):
                events.append("read started")
                release.wait(5)
                events.append("read returned")
                return super().read(n)

            def close(self):
                events.append("closed")
                reactor.callFromThread(closed.callback, None)

        class Handler:
            def get_response_data(self, request):
                return Slow(b"slow content")

        response = yield ThreadedHandler(Handler()).get_response_data(request("x"))
        reading = response.read(512)
        reading.cancel()
        self.failureResultOf(reading, CancelledError)
        response.close()
        # Time for a close that did not wait to run, before the read returns.
        yield deferLater(reactor, 0.05, lambda: None)
        release.set()
        yield closed
        self.assertEqual(events, ["read started", "read returned", "closed"])

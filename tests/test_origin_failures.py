"""
The origin handler against an origin that fails on purpose: the twisted.web
server of C{failing_origin.py}, in a subprocess.  Each failure reaches the
TFTP client as the error the issue maps it to, and leaves nothing
half-written in the cache.
"""

from __future__ import annotations

import os
import tracemalloc

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from clients import make_directory, read_raw, rrq
from failing_origin import BIG, body
from origins import FailingOrigin
from test_origin_nginx import serve
from tftpd_tx.cache import DiskCache
from tftpd_tx.content import Request
from tftpd_tx.origin import OriginHandler

UNAVAILABLE = (0, "Origin unavailable")


class FailureTests(TestCase):
    timeout = 60

    def setUp(self):
        self.directory = make_directory(self)
        self.origin = FailingOrigin(self, self.directory)
        self.cache = DiskCache(os.path.join(self.directory, "cache"), 10**8)
        self.handler = OriginHandler(self.origin.url, cache=self.cache, timeout=1)
        self.port = serve(self, self.handler)

    def get(self, path, **options):
        return read_raw(("127.0.0.1", self.port), rrq(path, options=options), timeout=3)

    def assert_nothing_cached(self):
        self.assertEqual(len(self.cache), 0)
        self.assertEqual(os.listdir(self.cache.tmp_dir), [])

    async def test_the_origin_works(self):
        """
        The control: a whole body, cached.
        """
        transfer = await self.get("ok/kernel")
        self.assertEqual(transfer.content, body(b"kernel"))
        self.assertEqual(len(self.cache), 0)  # no validator, no freshness

    async def test_slow_headers(self):
        """
        No headers within the timeout: ERROR 0.
        """
        transfer = await self.get("slow-headers/kernel")
        self.assertEqual(transfer.error, UNAVAILABLE)
        self.assertTrue(self.handler.failing)

    async def test_slow_body(self):
        """
        A body that stops arriving ends its transfer with ERROR 0 after
        what had come.
        """
        transfer = await self.get("slow-body/kernel")
        self.assertEqual(transfer.error, UNAVAILABLE)
        self.assertEqual(transfer.content, body(b"kernel")[: len(transfer.content)])
        self.assertGreater(len(transfer.content), 0)
        self.assert_nothing_cached()

    async def test_server_error(self):
        transfer = await self.get("error/kernel")
        self.assertEqual(transfer.error, UNAVAILABLE)
        self.assertEqual(self.handler.stats.errors, 1)

    async def test_connection_dropped_mid_body(self):
        transfer = await self.get("drop/kernel")
        self.assertEqual(transfer.error, UNAVAILABLE)
        self.assert_nothing_cached()

    async def test_body_shorter_than_its_length(self):
        transfer = await self.get("short/kernel")
        self.assertEqual(transfer.error, UNAVAILABLE)
        self.assert_nothing_cached()

    async def test_redirects_are_not_followed(self):
        """
        A redirect is a failure, and its target is never asked for.
        """
        transfer = await self.get("redirect/kernel")
        self.assertEqual(transfer.error, UNAVAILABLE)
        self.assertEqual(self.origin.paths(), ["/redirect/kernel"])

    async def test_not_found(self):
        transfer = await self.get("nothing/kernel")
        self.assertEqual(transfer.error, (1, "File not found"))
        self.assertFalse(self.handler.failing)

    async def test_stale_copy_when_the_origin_errs(self):
        """
        An entry cached while the origin worked is served when it answers
        500, counted as a stale serve.
        """
        first = await self.get("flaky/kernel")
        self.assertEqual(first.content, body(b"kernel"))
        second = await self.get("flaky/kernel")
        self.assertEqual(second.content, body(b"kernel"))
        self.assertEqual(self.handler.stats.stale_serves, 1)
        self.assertEqual(self.origin.paths(), ["/flaky/kernel"] * 2)

    async def test_private_answers_per_client(self):
        """
        Two clients asking at once for a private answer each get their own,
        rendered from their own X-TFTP-IP, X-TFTP-Port and X-TFTP-File.
        """
        first, second = self.get("private/cfg"), self.get("/private/cfg")
        a, b = await first, await second
        self.assertNotEqual(a.content, b.content)
        for transfer, path in ((a, b"private/cfg"), (b, b"/private/cfg")):
            ip, port, sent = transfer.content.split(b" ")
            self.assertEqual(ip, b"127.0.0.1")
            self.assertEqual(sent, path)
        self.assertEqual(len(self.origin.paths()), 2)


def _request(path):
    return Request(("127.0.0.1", 5000), ("127.0.0.1", 69), path, path)


class BackpressureTests(TestCase):
    """
    A download runs at most C{ahead} bytes in front of its fastest reader,
    and a transfer's memory is the block it reads, not the file.
    """

    timeout = 60

    async def test_a_slow_reader_holds_the_download(self):
        directory = make_directory(self)
        origin = FailingOrigin(self, directory)
        ahead = 1024 * 1024
        handler = OriginHandler(origin.url, timeout=5, ahead=ahead)
        self.addCleanup(handler.close)
        response = await handler.get_response_data(_request("big/image"))
        self.assertEqual(response.size(), BIG)
        first = await _read(response, 16384)
        await deferLater(reactor, 1.0, lambda: None)
        # The socket buffers hold some more, but the body waits.
        self.assertLess(handler.stats.bytes_from_origin, ahead + 16384 + 8 * 65536)
        expected = body(b"image", 65536)
        tracemalloc.start()
        try:
            got = len(first)
            while True:
                chunk = await _read(response, 16384)
                offset = got % 65536
                if chunk:
                    self.assertEqual(chunk[:64], (expected * 2)[offset : offset + 64])
                got += len(chunk)
                if len(chunk) < 16384:
                    break
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        response.close()
        self.assertEqual(got, BIG)
        self.assertLess(peak, 2 * 1024 * 1024)


async def _read(response, n):
    chunk = response.read(n)
    if isinstance(chunk, Deferred):
        chunk = await chunk
    return chunk

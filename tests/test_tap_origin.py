"""
The origin options of C{twistd tftp}: C{--origin}, C{--origin-timeout},
C{--origin-ca}, C{--cache-dir} and C{--cache-max-bytes}.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from origins import make_ca
from tftpd_tx import tap
from tftpd_tx.cache import DiskCache
from tftpd_tx.filesystem import FilesystemHandler
from tftpd_tx.origin import LocalFirst, OriginHandler

URL = "http://127.0.0.1:8080/tftp/"


class OriginOptionsTests(SynchronousTestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        # The default root (/srv/tftp) may exist on a developer's machine.
        self.patch(tap.Options, "optParameters", [
            ["root", "r", os.path.join(self.directory, "no-default-root"), "."],
            *tap.Options.optParameters[1:],
        ])

    def parse(self, *arguments) -> tap.Options:
        options = tap.Options()
        options.parseOptions(["--port", "0", "--interface", "127.0.0.1", *arguments])
        return options

    def handler(self, *arguments):
        service = tap.makeService(self.parse(*arguments))
        return service.getServiceNamed("tftp").server.handler

    def assertRefused(self, arguments, *fragments):
        error = self.assertRaises(usage.UsageError, self.parse, *arguments)
        for fragment in fragments:
            self.assertIn(fragment, str(error))

    def test_origin_alone(self):
        """
        C{--origin} without C{--root} serves the origin alone, with the
        default timeout and no cache.
        """
        handler = self.handler("--origin", URL)
        self.assertIsInstance(handler, OriginHandler)
        self.assertEqual(handler.base_url, URL)
        self.assertEqual(handler.timeout, 30.0)
        self.assertIsNone(handler.cache)

    def test_root_then_origin(self):
        """
        With C{--root}, the root is tried first and the origin for what it
        does not have.
        """
        handler = self.handler("--origin", URL, "--root", self.directory)
        self.assertIsInstance(handler, LocalFirst)
        self.assertIsInstance(handler.local, FilesystemHandler)
        self.assertIsInstance(handler.fallback, OriginHandler)

    def test_a_missing_root_is_still_refused(self):
        missing = os.path.join(self.directory, "nope")
        self.assertRefused(["--origin", URL, "--root", missing], f"--root {missing!r}")

    def test_bad_urls(self):
        """
        Only http and https URLs with a host, without query or credentials.
        """
        for url in ("ftp://host/", "/srv/tftp", "http://host/?x=1", "http://user@host/"):
            self.assertRefused(["--origin", url], "--origin", "e.g. https://")

    def test_timeout(self):
        handler = self.handler("--origin", URL, "--origin-timeout", "2.5")
        self.assertEqual(handler.timeout, 2.5)
        self.assertRefused(["--origin", URL, "--origin-timeout", "0"], "--origin-timeout")

    def test_cache(self):
        """
        C{--cache-dir} is created when missing and holds at most
        C{--cache-max-bytes}.
        """
        cache_dir = os.path.join(self.directory, "cache", "origin")
        handler = self.handler(
            "--origin", URL, "--cache-dir", cache_dir, "--cache-max-bytes", "1000000"
        )
        self.assertIsInstance(handler.cache, DiskCache)
        self.assertEqual(handler.cache.directory, cache_dir)
        self.assertEqual(handler.cache.max_bytes, 1000000)
        self.assertRefused(
            ["--origin", URL, "--cache-dir", cache_dir, "--cache-max-bytes", "0"],
            "--cache-max-bytes",
        )

    def test_unwritable_cache_dir(self):
        path = os.path.join(self.directory, "file")
        open(path, "w").close()
        self.assertRefused(["--origin", URL, "--cache-dir", path], "--cache-dir")

    def test_ca_file(self):
        """
        C{--origin-ca} must be a PEM file holding at least one certificate.
        """
        ca = make_ca(self.directory)["ca"]
        self.handler("--origin", URL.replace("http:", "https:"), "--origin-ca", ca)
        empty = os.path.join(self.directory, "empty.pem")
        open(empty, "w").close()
        self.assertRefused(["--origin", URL, "--origin-ca", empty], "--origin-ca", "holds no PEM")
        missing = os.path.join(self.directory, "missing.pem")
        self.assertRefused(["--origin", URL, "--origin-ca", missing], "--origin-ca")

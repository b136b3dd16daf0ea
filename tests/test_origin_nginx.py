"""
The origin handler in front of Debian's nginx (static files with ETag and
Last-Modified), over HTTP and over TLS with a CA made for the test, read by
real TFTP clients through a real server.  nginx's access log is the
witness of what was asked of the origin.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from clients import (
    REPO_ROOT,
    TWISTD,
    assert_fetched,
    free_udp_port,
    twistd_environment,
    busybox,
    curl,
    atftp,
    fetch,
    fetch_all,
    make_directory,
    random_file,
    read_raw,
    require_program,
    rrq,
    run,
    tftp_hpa,
)
from origins import Nginx, make_ca, stop_process
from tftpd_tx.cache import HEURISTIC_LIFETIME, DiskCache
from tftpd_tx.origin import OriginHandler
from tftpd_tx.service import TFTPService


def serve(testcase, handler, session_callback=None) -> int:
    """
    A TFTP server on loopback answering with C{handler}; its port.
    """
    testcase.addCleanup(handler.close)
    service = TFTPService(
        handler, port=0, interface="127.0.0.1", session_callback=session_callback
    )
    service.privilegedStartService()
    service.startService()
    testcase.addCleanup(service.stopService)
    return service.port.getHost().port


class OriginTestCase(TestCase):
    timeout = 120

    def setUp(self):
        self.directory = make_directory(self)
        self.www = os.path.join(self.directory, "www")
        self.base = os.path.join(self.www, "base")
        os.makedirs(self.base)
        self.nginx_dir = os.path.join(self.directory, "nginx")
        os.makedirs(self.nginx_dir)

    def nginx(self, **kwargs) -> Nginx:
        return Nginx(self, self.nginx_dir, self.www, **kwargs).start()

    def handler(self, nginx, cache_bytes=None, cache_dir=None, **kwargs) -> OriginHandler:
        cache = None
        if cache_bytes is not None:
            cache = DiskCache(cache_dir or os.path.join(self.directory, "cache"), cache_bytes)
        return OriginHandler(nginx.url + "base/", cache=cache, timeout=5, **kwargs)

    async def curl_fetch(self, port, path):
        fetched = await fetch(curl(), "127.0.0.1", port, path, self.directory)
        return fetched


class NginxContentTests(OriginTestCase):
    """
    Real clients get the origin's bytes, with its length as tsize.
    """

    async def test_real_clients_byte_for_byte(self):
        """
        curl, tftp-hpa, atftp and busybox each get the file exactly.
        """
        content = random_file(self.base, "image.bin", 300_000)
        port = serve(self, self.handler(self.nginx(), cache_bytes=10**8))
        clients = [curl(), curl("--tftp-blksize", "1468"), tftp_hpa(), atftp(), busybox()]
        results = await fetch_all(
            [(client, "127.0.0.1", port, "image.bin") for client in clients], self.directory
        )
        for fetched in results:
            assert_fetched(self, fetched, content, str(fetched.client))

    async def test_tsize_is_content_length(self):
        """
        The OACK's tsize is the origin's Content-Length.
        """
        random_file(self.base, "sized.bin", 123_456)
        port = serve(self, self.handler(self.nginx()))
        transfer = await read_raw(
            ("127.0.0.1", port), rrq("sized.bin", options={"tsize": "0", "blksize": "1468"})
        )
        self.assertEqual(transfer.oack["tsize"], "123456")
        self.assertEqual(len(transfer.content), 123_456)

    async def test_missing_is_file_not_found(self):
        """
        A file the origin does not have is ERROR 1.
        """
        port = serve(self, self.handler(self.nginx()))
        transfer = await read_raw(("127.0.0.1", port), rrq("nothing-here"))
        self.assertEqual(transfer.error, (1, "File not found"))


class SingleFlightTests(OriginTestCase):
    """
    200 concurrent clients for one cold file: one GET, and every client's
    first DATA before the download ends.
    """

    timeout = 240

    async def test_200_clients_one_get(self):
        size = 16 * 1024 * 1024
        content = random_file(self.base, "big.img", size)
        digest = hashlib.sha256(content).hexdigest()
        del content
        # The origin sends at 4 MB/s, so the download takes about 4 s: the
        # clients all ask while it is under way.
        nginx = self.nginx(location="limit_rate 4m;")
        sessions = []
        handler = self.handler(nginx, cache_bytes=10**9)
        port = serve(self, handler, session_callback=sessions.append)
        program = require_program("curl")
        sh = shutil.which("sh")
        command = (
            f"{program} --silent --show-error --max-time 120 --tftp-blksize 65464 "
            f"--output - tftp://127.0.0.1:{port}/big.img | sha256sum"
        )
        results = await gatherResults([run([sh, "-c", command]) for _ in range(200)])
        digests = [result.out.split()[0].decode() if result.out else "" for result in results]
        self.assertEqual(digests, [digest] * 200, [r.err for r in results if r.err][:3])
        gets = nginx.gets("/base/big.img")
        self.assertEqual(len(gets), 1, gets)
        [(download_end, status, _, _)] = gets
        self.assertEqual(status, 200)
        self.assertEqual(len(sessions), 200)
        first_data = sorted(s.first_data_time for s in sessions)
        self.assertLess(first_data[-1], download_end)
        self.assertEqual(handler.stats.origin_requests, 1)
        self.assertEqual(handler.stats.misses, 200)


class RevalidationTests(OriginTestCase):
    """
    ETag and Last-Modified: a changed file is served after revalidation,
    an unchanged one from the cache.
    """

    async def test_changed_file_after_revalidation(self):
        path = os.path.join(self.base, "config")
        with open(path, "wb") as f:
            f.write(b"version 1\n")
        nginx = self.nginx()
        handler = self.handler(nginx, cache_bytes=10**6)
        port = serve(self, handler)
        assert_fetched(self, await self.curl_fetch(port, "config"), b"version 1\n", "first")
        # nginx sends no freshness: the copy is fresh for a second (the
        # heuristic), a hit, and revalidated after.
        assert_fetched(self, await self.curl_fetch(port, "config"), b"version 1\n", "hit")
        await deferLater(reactor, HEURISTIC_LIFETIME, lambda: None)
        assert_fetched(self, await self.curl_fetch(port, "config"), b"version 1\n", "same")
        with open(path, "wb") as f:
            f.write(b"version 2, longer\n")
        later = os.stat(path).st_mtime + 10
        os.utime(path, (later, later))
        await deferLater(reactor, HEURISTIC_LIFETIME, lambda: None)
        assert_fetched(self, await self.curl_fetch(port, "config"), b"version 2, longer\n", "new")
        statuses = [(status, bool(etag and etag != "-")) for _, status, etag, _ in nginx.gets("/base/config")]
        self.assertEqual(statuses, [(200, False), (304, True), (200, True)])
        self.assertEqual(handler.stats.revalidations, 1)
        self.assertEqual(handler.stats.misses, 2)
        self.assertEqual(handler.stats.hits, 1)


class StaleIfErrorTests(OriginTestCase):
    """
    While nginx is stopped, the cached copy is served and the origin is
    failing.
    """

    async def test_stale_copy_while_nginx_is_stopped(self):
        content = random_file(self.base, "kernel", 70_000)
        nginx = self.nginx()
        handler = self.handler(nginx, cache_bytes=10**6)
        port = serve(self, handler)
        assert_fetched(self, await self.curl_fetch(port, "kernel"), content, "warm")
        nginx.stop()
        await deferLater(reactor, HEURISTIC_LIFETIME, lambda: None)
        assert_fetched(self, await self.curl_fetch(port, "kernel"), content, "stale")
        self.assertEqual(handler.stats.stale_serves, 1)
        self.assertTrue(handler.failing)
        transfer = await read_raw(("127.0.0.1", port), rrq("not-cached"))
        self.assertEqual(transfer.error, (0, "Origin unavailable"))


class EvictionTests(OriginTestCase):
    """
    The cache stays within its byte bound, least recently used first, and
    keeps its entries across restarts.
    """

    async def test_eviction_at_the_byte_bound(self):
        files = {name: random_file(self.base, name, 100_000) for name in ("a", "b", "c")}
        nginx = self.nginx(location="expires 1h;")
        cache_dir = os.path.join(self.directory, "cache")
        handler = self.handler(nginx, cache_bytes=250_000, cache_dir=cache_dir)
        port = serve(self, handler)
        for name in ("a", "b", "c"):
            assert_fetched(self, await self.curl_fetch(port, name), files[name], name)
        self.assertLessEqual(handler.cache.total, 250_000)
        assert_fetched(self, await self.curl_fetch(port, "c"), files["c"], "c again")
        assert_fetched(self, await self.curl_fetch(port, "a"), files["a"], "a again")
        self.assertEqual(len(nginx.gets("/base/a")), 2)
        self.assertEqual(len(nginx.gets("/base/c")), 1)
        self.assertEqual(handler.stats.hits, 1)
        # A new server on the same directory remembers what was used last.
        again = self.handler(nginx, cache_bytes=250_000, cache_dir=cache_dir)
        port = serve(self, again)
        for name in ("c", "a"):
            assert_fetched(self, await self.curl_fetch(port, name), files[name], name)
        self.assertEqual(again.stats.hits, 2)
        self.assertEqual(len(nginx.gets("/base/a")), 2)


class ContainmentTests(OriginTestCase):
    """
    Nothing outside the base URL is ever requested.
    """

    async def test_nothing_outside_the_base(self):
        with open(os.path.join(self.www, "secret"), "wb") as f:
            f.write(b"secret")
        nginx = self.nginx()
        port = serve(self, self.handler(nginx))
        attempts = {
            "../secret": 2,
            "a/../../secret": 2,
            "..\\secret": 2,
            "%2e%2e/secret": 1,
            "..%2fsecret": 1,
            "x?/../../secret": 2,
            "x?/../secret": 1,
            "#/../secret": 1,
            "http://127.0.0.1/secret": 1,
        }
        for path, code in attempts.items():
            transfer = await read_raw(("127.0.0.1", port), rrq(path))
            self.assertEqual(transfer.error[0], code, path)
        logged = [request.split(" ")[1] for *_, request in nginx.requests()]
        self.assertTrue(logged)
        for target in logged:
            self.assertTrue(target.startswith("/base/"), target)


class TLSTests(OriginTestCase):
    """
    HTTPS is verified: the test CA given with C{ca_file} is trusted, a
    certificate for another host is refused, and so is the test CA when
    only the system's authorities are trusted.
    """

    def tls_nginx(self, label):
        self.ca = make_ca(self.directory)
        return self.nginx(tls=(self.ca[f"{label}.crt"], self.ca[f"{label}.key"]))

    async def test_private_ca(self):
        content = random_file(self.base, "secure.bin", 50_000)
        nginx = self.tls_nginx("server")
        handler = OriginHandler(
            f"https://localhost:{nginx.port}/base/", timeout=5, ca_file=self.ca["ca"]
        )
        port = serve(self, handler)
        assert_fetched(self, await self.curl_fetch(port, "secure.bin"), content, "https")

    async def test_wrong_host_is_refused(self):
        random_file(self.base, "secure.bin", 100)
        nginx = self.tls_nginx("wrong")
        handler = OriginHandler(
            f"https://localhost:{nginx.port}/base/", timeout=5, ca_file=self.ca["ca"]
        )
        port = serve(self, handler)
        transfer = await read_raw(("127.0.0.1", port), rrq("secure.bin"))
        self.assertEqual(transfer.error, (0, "Origin unavailable"))
        self.assertEqual(handler.stats.errors, 1)
        self.assertEqual(nginx.gets("/base/secure.bin"), [])

    async def test_untrusted_ca_is_refused(self):
        random_file(self.base, "secure.bin", 100)
        nginx = self.tls_nginx("server")
        handler = OriginHandler(f"https://localhost:{nginx.port}/base/", timeout=5)
        port = serve(self, handler)
        transfer = await read_raw(("127.0.0.1", port), rrq("secure.bin"))
        self.assertEqual(transfer.error, (0, "Origin unavailable"))
        self.assertEqual(nginx.gets("/base/secure.bin"), [])


class TwistdTests(OriginTestCase):
    """
    C{twistd tftp --origin} and C{twistd -ny tac/origin.tac}, as
    subprocesses, serve the origin's files behind the root.
    """

    async def serve_with_twistd(self, arguments, env=None):
        port = free_udp_port()
        environment = twistd_environment()
        environment.update(env or {}, TFTP_PORT=str(port))
        process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", *arguments(port)],
            cwd=self.directory,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(stop_process, process)
        deadline = reactor.seconds() + 30
        while reactor.seconds() < deadline:
            fetched = await fetch(
                curl("--max-time", "2"), "127.0.0.1", port, "local.txt", self.directory
            )
            if fetched.result.code == 0:
                return port
            await deferLater(reactor, 0.1, lambda: None)
        self.fail(f"twistd {arguments(port)} did not start serving in 30 s")

    def files(self):
        root = os.path.join(self.directory, "root")
        os.makedirs(root)
        with open(os.path.join(root, "local.txt"), "wb") as f:
            f.write(b"from the root\n")
        return root, random_file(self.base, "remote.bin", 200_000)

    async def test_command_line(self):
        root, content = self.files()
        nginx = self.nginx()
        cache_dir = os.path.join(self.directory, "cache")
        port = await self.serve_with_twistd(
            lambda port: [
                "tftp", "--port", str(port), "--interface", "127.0.0.1", "--root", root,
                "--origin", nginx.url + "base/", "--cache-dir", cache_dir,
            ]
        )
        assert_fetched(self, await self.curl_fetch(port, "remote.bin"), content, "origin")
        self.assertEqual(nginx.gets("/base/local.txt"), [])
        self.assertEqual(len([n for n in os.listdir(cache_dir) if n.endswith(".json")]), 1)

    async def test_tac(self):
        root, content = self.files()
        nginx = self.nginx()
        port = await self.serve_with_twistd(
            lambda port: ["-y", os.path.join(REPO_ROOT, "tac", "origin.tac")],
            {"ORIGIN_URL": nginx.url + "base/", "TFTP_ROOT": root},
        )
        assert_fetched(self, await self.curl_fetch(port, "remote.bin"), content, "origin")

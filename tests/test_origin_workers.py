"""
C{twistd tftp --workers 2 --origin URL --cache-dir DIR}: real worker
processes sharing one cache directory in front of Debian's nginx, whose
access log is the witness of what the host asked of the origin.
"""

from __future__ import annotations

import json
import os

from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from clients import bytes_problem, make_directory, random_file, read_raw, rrq
from origins import Nginx
from test_workers import Host, wait_until


class OriginWorkersTests(TestCase):
    """
    Two workers, one cache directory: one GET for the host, entries and
    index intact, the byte bound kept by both together.
    """

    timeout = 180

    def setUp(self):
        self.directory = make_directory(self)
        self.www = os.path.join(self.directory, "www")
        self.base = os.path.join(self.www, "base")
        os.makedirs(self.base)
        self.root = os.path.join(self.directory, "root")
        os.mkdir(self.root)
        self.cache = os.path.join(self.directory, "cache")
        os.makedirs(os.path.join(self.directory, "nginx"))

    def nginx(self, **kwargs) -> Nginx:
        return Nginx(self, os.path.join(self.directory, "nginx"), self.www, **kwargs).start()

    async def host(self, nginx, max_bytes) -> Host:
        host = Host(
            self, self.root, "--origin", nginx.url + "base/", "--cache-dir", self.cache,
            "--cache-max-bytes", str(max_bytes),
        )  # fmt: skip
        await host.ready()
        return host

    def assert_index_intact(self):
        """
        Every metadata file names a body of its length, every body is
        named, and nothing is left in C{tmp/}.
        """
        names = set(os.listdir(self.cache))
        bodies = set()
        for name in names:
            if name.endswith(".json"):
                with open(os.path.join(self.cache, name)) as f:
                    entry = json.load(f)
                self.assertIn(entry["body"], names)
                self.assertEqual(
                    os.path.getsize(os.path.join(self.cache, entry["body"])), entry["size"]
                )
                bodies.add(entry["body"])
        metadata = {name for name in names if name.endswith(".json")}
        self.assertEqual(names - bodies - metadata, {"tmp", "claims", "lock"})
        self.assertEqual(os.listdir(os.path.join(self.cache, "tmp")), [])
        return bodies

    async def test_one_get_for_the_host(self):
        """
        Forty clients, from as many ports so that both workers serve some,
        ask at once for a cold 2 MiB file that nginx sends at 2 MB/s: nginx
        logs one GET, and every client gets the file byte for byte.
        """
        content = random_file(self.base, "big.img", 2 * 1024 * 1024)
        nginx = self.nginx(location="limit_rate 2m;")
        host = await self.host(nginx, 10**8)
        fetched = await gatherResults(
            [read_raw(host.address, rrq("big.img", options={"blksize": "8000"}))
             for _ in range(40)]
        )  # fmt: skip
        for transfer in fetched:
            self.assertIsNone(bytes_problem(transfer.content, content))
        await wait_until(lambda: sum(host.served().values()) == 40, 20, "40 lines logged")
        self.assertEqual(set(host.served()), {1, 2}, host.served())
        gets = nginx.gets("/base/big.img")
        self.assertEqual([status for _, status, _, _ in gets], [200], gets)
        self.assertEqual(len(self.assert_index_intact()), 1)

    async def test_the_bound_is_for_the_host(self):
        """
        Six files of 100 kB, each fetched by eight clients over both
        workers, with a bound of 250 kB: the bodies kept stay within it,
        the index names exactly them, and each file was fetched whole.
        """
        files = {f"f{i}": random_file(self.base, f"f{i}", 100_000) for i in range(6)}
        nginx = self.nginx(location="expires 1h;")
        host = await self.host(nginx, 250_000)
        for name, content in files.items():
            fetched = await gatherResults(
                [read_raw(host.address, rrq(name, options={"blksize": "8000"}))
                 for _ in range(8)]
            )  # fmt: skip
            for transfer in fetched:
                self.assertIsNone(bytes_problem(transfer.content, content), name)
            self.assertLessEqual(self.total(), 250_000)
        await wait_until(lambda: sum(host.served().values()) == 48, 20, "48 lines logged")
        self.assertEqual(set(host.served()), {1, 2}, host.served())
        self.assertEqual(len(self.assert_index_intact()), 2)
        for name in files:
            self.assertEqual(len(nginx.gets(f"/base/{name}")), 1, name)

    def total(self) -> int:
        return sum(
            os.path.getsize(os.path.join(self.cache, name))
            for name in os.listdir(self.cache)
            if "-" in name and not name.endswith(".json")
        )

"""
Dropping privileges: C{twistd -u nobody -g nogroup tftp --port 69}, started
as root, binds port 69 and then serves as the unprivileged user, who cannot
read what only root may.

Runs as root only, on port 69 of 127.0.0.1 only, and skips when that port
is taken.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import tempfile

from twisted.trial.unittest import SkipTest, TestCase

from clients import TWISTD, assert_fetched, fetch, read_raw, rrq, spawn, tftp_hpa, twistd_environment

ADDRESS = ("127.0.0.1", 69)


def _unprivileged() -> tuple[int, int]:
    """
    The uid of C{nobody} and the gid of C{nogroup} (Debian's name) or
    C{nobody} (elsewhere).
    """
    uid = pwd.getpwnam("nobody").pw_uid
    for name in ("nogroup", "nobody"):
        try:
            return uid, grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    raise SkipTest("no nogroup or nobody group here")


def _ids(pid: int) -> dict[str, list[int]]:
    """
    The real, effective, saved and file-system uids and gids of C{pid}.
    """
    ids = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, values = line.partition(":")
            if name in ("Uid", "Gid"):
                ids[name] = [int(value) for value in values.split()]
    return ids


class PrivilegeDropTests(TestCase):
    """
    Port 69 bound as root, served as C{nobody}.
    """

    timeout = 60
    options: tuple[str, ...] = ()

    def setUp(self):
        if os.geteuid() != 0:
            raise SkipTest("binding port 69 and dropping privileges needs root")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(ADDRESS)
            except OSError as error:
                raise SkipTest(f"port 69 of 127.0.0.1 is not free: {error.strerror}")
        self.uid, self.gid = _unprivileged()
        # Where nobody may look: /tmp, not the test's own (root's, 0700)
        # temporary directory.
        self.directory = tempfile.mkdtemp(prefix="tftpd_tx-privileges-")
        self.addCleanup(shutil.rmtree, self.directory)
        os.chmod(self.directory, 0o755)
        self.root = os.path.join(self.directory, "root")
        os.mkdir(self.root, 0o755)
        self.public = os.urandom(5000)
        self.write("public", self.public, 0o644)
        self.write("secret", b"root only\n", 0o600)

    def write(self, name: str, content: bytes, mode: int) -> None:
        path = os.path.join(self.root, name)
        with open(path, "wb") as f:
            f.write(content)
        os.chown(path, 0, 0)
        os.chmod(path, mode)

    async def test_serves_as_nobody(self):
        """
        After binding port 69 as root, the server runs with every uid and
        gid of C{nobody}/C{nogroup} (as C{/proc} shows), serves a file
        anyone may read intact, and refuses one only root may read with
        ERROR 2.
        """
        process = spawn(
            [
                *TWISTD, "-n", "--pidfile=", "-u", str(self.uid), "-g", str(self.gid),
                "tftp", "--port", "69", "--interface", "127.0.0.1", "--root", self.root,
                "--shutdown-grace", "0", *self.options,
            ],
            cwd=self.directory,
            env=twistd_environment(),
        )  # fmt: skip

        def stop():
            if not process.ended.called:
                process.signal("KILL")
            return process.ended

        self.addCleanup(stop)
        for _ in range(100):
            self.assertFalse(process.ended.called, f"exited: {process.output()!r}")
            probe = await read_raw(ADDRESS, rrq("public"), timeout=0.2, retries=0)
            if probe.content == self.public:
                break
        else:
            self.fail(f"never answered: {process.output()!r}")

        self.assertEqual(
            _ids(process.pid), {"Uid": [self.uid] * 4, "Gid": [self.gid] * 4}
        )
        secret = await read_raw(ADDRESS, rrq("secret"))
        self.assertEqual(secret.error, (2, "Access violation"))
        self.assertEqual(secret.content, b"")
        fetched = await fetch(tftp_hpa(), *ADDRESS, "public", self.directory)
        assert_fetched(self, fetched, self.public, "tftp-hpa from the unprivileged server")

        process.signal("TERM")
        result = await process.ended
        self.assertIn(result.signal, (None, signal.SIGTERM), result.describe())
        self.assertIn(f"set uid/gid {self.uid}/{self.gid}".encode(), result.out)
        self.assertNotIn(b"Traceback", result.out + result.err)


class SinglePortPrivilegeDropTests(PrivilegeDropTests):
    """
    L{PrivilegeDropTests} in single-port mode.
    """

    options = ("--single-port",)

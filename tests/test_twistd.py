"""
C{twistd -n tftp} as an operator runs it: a real process, found through
the plugin in C{twisted/plugins}, serving a real client, stopped by SIGTERM;
and refusing bad options at start with a message that names the option.
"""

from __future__ import annotations

import os
import signal
import socket

from twisted.trial.unittest import TestCase

from clients import (
    TWISTD,
    assert_fetched,
    curl,
    fetch,
    free_udp_port,
    make_directory,
    random_file,
    read_raw,
    rrq,
    run,
    spawn,
    twistd_environment,
)

def twistd(*arguments: str):
    """
    The command line of C{twistd -n --pidfile= tftp} with C{arguments}.
    """
    return [*TWISTD, "-n", "--pidfile=", "tftp", *arguments]


class TwistdTests(TestCase):
    """
    The C{tftp} plugin under C{twistd}.
    """

    timeout = 60

    async def test_serves_and_stops_on_sigterm(self):
        """
        C{twistd -n tftp --port P --interface 127.0.0.1 --root R} logs where
        it listens, serves curl the files under R intact, and on SIGTERM
        shuts down cleanly.  (After its clean shutdown, twistd ends itself
        with the signal it received, so the exit status is "killed by
        SIGTERM", as for any program that does not catch it.)
        """
        directory = make_directory(self)
        root = os.path.join(directory, "root")
        os.mkdir(root)
        content = random_file(root, "file", 100_000)
        port = free_udp_port()
        process = spawn(
            twistd(
                "--port", str(port), "--interface", "127.0.0.1", "--root", root
            ),
            cwd=directory,
            env=twistd_environment(),
        )
        stopped = False

        def kill_if_running():
            if not stopped:
                process.signal("KILL")
                return process.ended

        self.addCleanup(kill_if_running)

        # Ready once a small fetch succeeds (each try waits up to 0.2 s for
        # an answer); a twistd that died early shows its output instead.
        for _ in range(100):
            self.assertFalse(
                process.ended.called, f"twistd exited: {process.output()!r}"
            )
            probe = await read_raw(
                ("127.0.0.1", port), rrq("file"), timeout=0.2, retries=0
            )
            if probe.content == content:
                break
        else:
            self.fail(f"twistd never answered: {process.output()!r}")

        fetched = await fetch(
            curl("--tftp-blksize", "1468"), "127.0.0.1", port, "file", directory
        )
        assert_fetched(self, fetched, content, "curl from twistd")

        process.signal("TERM")
        result = await process.ended
        stopped = True
        self.assertIn(result.signal, (None, signal.SIGTERM), result.describe())
        if result.signal is None:
            self.assertEqual(result.code, 0, result.describe())
        self.assertIn(
            f"TFTP server listening on [127.0.0.1]:{port}".encode(), result.out
        )
        self.assertIn(b"Server Shut Down.", result.out)
        self.assertNotIn(b"Traceback", result.out + result.err)


class PluginTests(TestCase):
    """
    The plugin makes C{tftp} a twistd command.
    """

    timeout = 30

    async def test_listed_in_help(self):
        """
        C{twistd --help} lists the C{tftp} command with its description, and
        C{twistd tftp --help} documents every option of the README's table.
        """
        listing = await run([*TWISTD, "--help"], env=twistd_environment())
        self.assertRegex(listing.out.decode(), r"\n\s+tftp\s+A TFTP server")
        usage = await run([*TWISTD, "tftp", "--help"], env=twistd_environment())
        for option in ("--root", "--handler", "--port", "--interface", "--timeout",
                       "--retries", "--max-blksize", "--max-windowsize",
                       "--max-window-bytes", "--rollover", "--manhole"):
            self.assertIn(option.encode(), usage.out)


class BadOptionTests(TestCase):
    """
    Bad options stop C{twistd tftp} at start, with a message that names
    the option.
    """

    timeout = 30

    async def assert_refused(self, arguments, named):
        result = await run(twistd(*arguments), env=twistd_environment())
        self.assertNotEqual(result.code, 0, result.describe())
        self.assertIn(named.encode(), result.out + result.err, result.describe())

    async def test_missing_root(self):
        """
        A C{--root} that does not exist is refused, naming C{--root}.
        """
        await self.assert_refused(["--root", "/nonexistent", "--port", "0"], "--root")

    async def test_port_out_of_range(self):
        """
        C{--port 99999} is refused, naming C{--port}.
        """
        root = make_directory(self)
        await self.assert_refused(["--root", root, "--port", "99999"], "--port")

    async def test_interface_not_an_address(self):
        """
        C{--interface bogus} is refused, naming C{--interface}.
        """
        root = make_directory(self)
        await self.assert_refused(
            ["--root", root, "--port", "0", "--interface", "bogus"], "--interface"
        )

    async def test_interface_not_on_this_host(self):
        """
        An address this host does not have (192.0.2.77, TEST-NET-1) cannot
        be bound: C{twistd} exits non-zero naming C{--interface}.
        """
        root = make_directory(self)
        await self.assert_refused(
            ["--root", root, "--port", "0", "--interface", "192.0.2.77"],
            "--interface 192.0.2.77 is not an address of this host",
        )

    async def test_port_in_use(self):
        """
        A port another server holds is refused at start, naming C{--port}
        and the way out.
        """
        root = make_directory(self)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
            holder.bind(("127.0.0.1", 0))
            port = holder.getsockname()[1]
            await self.assert_refused(
                ["--root", root, "--port", str(port), "--interface", "127.0.0.1"],
                f"--port {port} is already in use",
            )

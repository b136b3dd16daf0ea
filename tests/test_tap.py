"""
Tests for L{tftpd_tx.tap}: the options of C{twistd tftp}, parsed in this
process, and the service they make.  (test_twistd runs the real C{twistd};
test_manhole has the C{--manhole} options.)
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx import tap
from tftpd_tx.filesystem import FilesystemHandler
from tftpd_tx.settings import SCHEMA, Limits, Settings


def temporary_directory(testcase) -> str:
    path = tempfile.mkdtemp(prefix="tftpd_tx-tap-")
    testcase.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


class OptionsMixin:
    """
    A root to serve, and L{tap.Options} parsed with it on a port the system
    picks, on loopback.
    """

    def setUp(self):
        self.root = temporary_directory(self)

    def parse(self, *arguments: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(
            ["--root", self.root, "--port", "0", "--interface", "127.0.0.1",
             *arguments]
        )  # fmt: skip
        return options

    def assertRefused(self, arguments, message):
        """
        Parsing C{arguments} (alone: no root, port or interface added) raises
        L{usage.UsageError} whose message contains C{message}.
        """
        exc = self.assertRaises(usage.UsageError, tap.Options().parseOptions, arguments)
        self.assertIn(message, str(exc))
        return exc


class DefaultsTests(OptionsMixin, SynchronousTestCase):
    """
    What C{twistd tftp} runs with when told nothing.
    """

    def test_listening(self):
        """
        By default the root is C{/srv/tftp}, the port 69, every address, no
        handler and no manhole.
        """
        options = tap.Options()
        self.assertEqual(options["root"], "/srv/tftp")
        self.assertEqual(options["port"], 69)
        self.assertEqual(options["interface"], "")
        self.assertIsNone(options["handler"])
        self.assertIsNone(options["manhole"])

    def test_settings(self):
        """
        Each setting's option defaults to the command-line default of its
        row in the settings schema: the defaults in code, but the linger,
        which is on.
        """
        options = self.parse()
        for row in SCHEMA:
            self.assertEqual(options[row.option], row.command_line_default, row.name)
        self.assertEqual(options["linger"], 0.001)

    def test_help(self):
        """
        C{--help} documents every setting's option with its help line, its
        default and its bounds.
        """
        text = " ".join(str(tap.Options()).split())
        for row in SCHEMA:
            if row.kind is bool:
                # A flag: off unless given.
                self.assertIn(f"--{row.option} {row.help}", text)
                continue
            self.assertIn(f"--{row.option}=", text)
            if row.command_line_default is None:
                # Its help says what the default is.
                self.assertIn(f"{row.help[:-1]}. {row.allowed_doc}", text)
                continue
            self.assertIn(" ".join(row.help.split()), text)
            self.assertIn(
                f"[default: {row.command_line_default}]. {row.allowed_doc}", text
            )


class SettingOptionsTests(OptionsMixin, SynchronousTestCase):
    """
    The options that set the server's settings.
    """

    def test_each_option(self):
        """
        Each option gives its setting's value, of the setting's type.
        """
        for arguments, name, value in [
            (["--timeout", "2.5"], "timeout", 2.5),
            (["-t", "3"], "timeout", 3.0),
            (["--retries", "0"], "retries", 0),
            (["--max-blksize", "1428"], "max-blksize", 1428),
            (["--max-windowsize", "16"], "max-windowsize", 16),
            (["--max-window-bytes", "65536"], "max-window-bytes", 65536),
            (["--rollover", "1"], "rollover", 1),
            (["--log-rate", "0"], "log-rate", 0),
            (["--linger", "0"], "linger", 0.0),
            (["--linger", "0.005"], "linger", 0.005),
        ]:
            value_given = self.parse(*arguments)[name]
            self.assertEqual(value_given, value, arguments)
            self.assertIs(type(value_given), type(value), arguments)

    def test_not_a_number(self):
        """
        A value that is not a number is refused, naming the option and what
        it allows.
        """
        for arguments, message in [
            (["--timeout", "soon"],
             "--timeout must be a number from 0.01 to 255, not 'soon'"),
            (["--retries", "2.5"],
             "--retries must be a whole number from 0 to 100, not '2.5'"),
            (["--max-blksize", "big"],
             "--max-blksize must be a whole number from 8 to 65464, not 'big'"),
            (["--linger", ""], "--linger must be a number from 0 to 0.01, not ''"),
        ]:  # fmt: skip
            exc = self.assertRaises(usage.UsageError, self.parse, *arguments)
            self.assertIn(message, str(exc))

    def test_out_of_bounds(self):
        """
        A value out of bounds is refused, naming the option and its bounds.
        """
        for arguments, message in [
            (["--timeout", "0"], "--timeout must be from 0.01 to 255, not 0"),
            (["-t", "255.5"], "--timeout must be from 0.01 to 255, not 255.5"),
            (["--retries", "101"], "--retries must be from 0 to 100, not 101"),
            (["--max-blksize", "7"], "--max-blksize must be from 8 to 65464, not 7"),
            (["--max-blksize", "65465"], "--max-blksize must be from 8 to 65464"),
            (["--max-windowsize", "0"], "--max-windowsize must be from 1 to 65535"),
            (["--max-window-bytes", "0"], "--max-window-bytes must be 1 or more"),
            (["--rollover", "2"], "--rollover must be from 0 to 1, not 2"),
            (["--log-rate", "-1"], "--log-rate must be from 0 to 1000000, not -1"),
            (["--linger", "0.02"], "--linger must be from 0 to 0.01, not 0.02"),
        ]:  # fmt: skip
            exc = self.assertRaises(usage.UsageError, self.parse, *arguments)
            self.assertIn(message, str(exc))

    def test_service_settings(self):
        """
        The service's server runs with the settings the options give.
        """
        options = self.parse(
            "--max-blksize", "1428", "--max-window-bytes", "65536",
            "--timeout", "2", "--retries", "3", "--rollover", "1",
            "--log-rate", "10", "--linger", "0.002",
        )  # fmt: skip
        server = tap.makeService(options).getServiceNamed("tftp").server
        self.assertEqual(
            server.settings,
            Settings(
                limits=Limits(max_blksize=1428, max_window_bytes=65536),
                timeout=2.0,
                retries=3,
                rollover=1,
                log_rate=10,
                linger=0.002,
                shutdown_grace=30.0,
            ),
        )

    def test_service_defaults(self):
        """
        Without setting options, the server's settings are the command-line
        defaults: those in code, with the linger on and a shutdown grace.
        """
        server = tap.makeService(self.parse()).getServiceNamed("tftp").server
        self.assertEqual(server.settings, Settings(linger=0.001, shutdown_grace=30.0))


class PortTests(OptionsMixin, SynchronousTestCase):
    """
    C{--port}.
    """

    def test_port(self):
        """
        C{--port} and C{-p} give the port as a number.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        options = tap.Options()
        options.parseOptions(["-r", self.root, "-i", "127.0.0.1", "-p", str(free)])
        self.assertEqual(options["port"], free)

    def test_out_of_range(self):
        """
        A port out of 0..65535, or not a number, is refused.
        """
        self.assertRefused(
            ["--root", self.root, "--port", "65536"],
            "--port must be from 0 to 65535, not 65536",
        )
        self.assertRefused(
            ["--root", self.root, "--port", "tftp"],
            "--port must be a whole number from 0 to 65535, not 'tftp'",
        )

    def test_in_use(self):
        """
        A port another socket holds is refused at once, naming the port and
        the way out.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
            holder.bind(("127.0.0.1", 0))
            port = holder.getsockname()[1]
            self.assertRefused(
                ["--root", self.root, "--interface", "127.0.0.1", "--port", str(port)],
                f"--port {port} is already in use on 127.0.0.1: stop the server",
            )

    def test_privileged(self):
        """
        A privileged port, for a user who may not bind it, is refused with
        how to get it.
        """
        if os.geteuid() == 0:
            raise self.skipTest("root may bind any port")
        self.assertRefused(
            ["--root", self.root, "--interface", "127.0.0.1", "--port", "69"],
            "--port 69 needs privileges: start twistd as root",
        )


class InterfaceTests(OptionsMixin, SynchronousTestCase):
    """
    C{--interface}.
    """

    def test_addresses(self):
        """
        An IPv4 or IPv6 address of this host is accepted as it is written.
        """
        self.assertEqual(self.parse()["interface"], "127.0.0.1")
        if socket.has_ipv6:
            try:
                options = tap.Options()
                options.parseOptions(["-r", self.root, "-p", "0", "-i", "::1"])
            except usage.UsageError as error:
                raise self.skipTest(f"no IPv6 loopback here: {error}")
            self.assertEqual(options["interface"], "::1")

    def test_not_an_address(self):
        """
        A name that is not an IP address is refused, with what to give.
        """
        self.assertRefused(
            ["--root", self.root, "--port", "0", "--interface", "tftp.example"],
            "--interface 'tftp.example' is not an IP address: give an IPv4 or "
            "IPv6 address, or leave it out",
        )

    def test_not_on_this_host(self):
        """
        An address this host does not have is refused, with the way out.
        """
        self.assertRefused(
            ["--root", self.root, "--port", "0", "--interface", "192.0.2.77"],
            "--interface 192.0.2.77 is not an address of this host: give one it has",
        )


class RootTests(OptionsMixin, SynchronousTestCase):
    """
    C{--root}.
    """

    def test_root(self):
        """
        An existing directory is accepted, and served by a
        L{FilesystemHandler}.
        """
        options = self.parse()
        self.assertEqual(options["root"], self.root)
        server = tap.makeService(options).getServiceNamed("tftp").server
        self.assertIsInstance(server.handler, FilesystemHandler)

    def test_missing(self):
        """
        A root that does not exist is refused, with how to fix it.
        """
        missing = os.path.join(self.root, "nope")
        self.assertRefused(
            ["--root", missing, "--port", "0"],
            f"--root {missing!r} is not a directory: create it or pass the "
            "directory to serve with --root DIR",
        )

    def test_a_file(self):
        """
        A root that is a file is refused.
        """
        path = os.path.join(self.root, "file")
        open(path, "wb").close()
        self.assertRefused(["--root", path, "--port", "0"], "is not a directory")

    def test_unreadable(self):
        """
        A root this user cannot read is refused, with how to fix it.
        """
        self.patch(tap.os, "access", lambda path, mode: False)
        self.assertRefused(
            ["--root", self.root, "--port", "0"],
            f"--root {self.root!r} cannot be read by this user: fix its permissions",
        )


class HandlerTests(OptionsMixin, SynchronousTestCase):
    """
    C{--handler package.module:factory}.
    """

    def setUp(self):
        super().setUp()
        self.modules = temporary_directory(self)
        sys.path.insert(0, self.modules)
        self.addCleanup(sys.path.remove, self.modules)

    def module(self, name: str, source: str) -> None:
        """
        Write the module C{name} where C{--handler} can import it.
        """
        with open(os.path.join(self.modules, name + ".py"), "w") as file:
            file.write(source)
        self.addCleanup(sys.modules.pop, name, None)

    def test_handler(self):
        """
        The factory's result is the handler, and no root is needed.
        """
        self.module("tap_handler_ok", "def factory():\n    return 'the handler'\n")
        options = tap.Options()
        options.parseOptions(
            ["--handler", "tap_handler_ok:factory", "--root", "/nonexistent",
             "--port", "0", "--interface", "127.0.0.1"]
        )  # fmt: skip
        self.assertEqual(options["handler"], "the handler")
        server = tap.makeService(options).getServiceNamed("tftp").server
        self.assertEqual(server.handler, "the handler")

    def test_malformed(self):
        """
        A spec without C{module:factory} is refused with its form.
        """
        for spec in ["module", ":factory", "module:"]:
            self.assertRefused(
                ["--handler", spec, "--port", "0"],
                f"--handler {spec!r} must look like package.module:factory",
            )

    def test_cannot_import(self):
        """
        A module that cannot be imported is refused, with the error and
        where to look.
        """
        self.assertRefused(
            ["--handler", "tap_handler_missing:factory", "--port", "0"],
            "cannot import 'tap_handler_missing' (ModuleNotFoundError",
        )
        self.module("tap_handler_broken", "1/0\n")
        exc = self.assertRefused(
            ["--handler", "tap_handler_broken:factory", "--port", "0"],
            "cannot import 'tap_handler_broken' (ZeroDivisionError",
        )
        self.assertIn("on PYTHONPATH", str(exc))

    def test_no_factory(self):
        """
        A module without that callable is refused.
        """
        self.module("tap_handler_none", "factory = 3\n")
        self.assertRefused(
            ["--handler", "tap_handler_none:factory", "--port", "0"],
            "'tap_handler_none' has no callable 'factory'",
        )

    def test_factory_raises(self):
        """
        A factory that raises is refused, with what it raised.
        """
        self.module(
            "tap_handler_raises",
            "def factory():\n    raise RuntimeError('no config')\n",
        )
        self.assertRefused(
            ["--handler", "tap_handler_raises:factory", "--port", "0"],
            "factory() raised RuntimeError('no config')",
        )


class ServiceTests(OptionsMixin, SynchronousTestCase):
    """
    L{tap.makeService}.
    """

    def test_listener(self):
        """
        The service is a L{MultiService} holding the TFTP listener, named
        C{tftp}, on the port and address given.
        """
        service = tap.makeService(self.parse())
        tftp = service.getServiceNamed("tftp")
        self.assertEqual(list(service), [tftp])

"""
The settings schema: one table of rows (L{tftpd_tx.settings.SCHEMA}) makes
L{Settings} and L{Limits}, the options of C{twistd tftp} and the live
settings of the operator, and every bound of it is enforced the same way in
all three.
"""

from __future__ import annotations

import dataclasses

import pytest
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx import tap
from tftpd_tx.operator import Operator
from tftpd_tx.server import TFTPServer
from tftpd_tx.settings import SCHEMA, Limits, Setting, Settings, setting
from tftpd_tx.testing import FakeUDPReactor, MemoryHandler


def row_ids(row: Setting) -> str:
    return row.name


#: The rows set by a number; the others are truth values (a flag on the
#: command line), checked by L{FlagTests}.
NUMBERS = [row for row in SCHEMA if row.kind is not bool]


def outside(row: Setting) -> list:
    """
    A value just below and just above C{row}'s bounds, where it has them.
    """
    step = 1 if row.kind is int else 0.001
    values = []
    if row.low is not None:
        values.append(row.low - step)
    if row.high is not None:
        values.append(row.high + step)
    return values


def in_code(row: Setting, value):
    """
    Build settings with C{value} for C{row} the way an embedding
    application does, and return the value they hold.
    """
    if row.limit:
        return getattr(Limits(**{row.name: value}), row.name)
    return getattr(Settings(**{row.name: value}), row.name)


def on_command_line(row: Setting, text: str, root):
    """
    Parse C{twistd tftp --<option> text} and return the value it gives.
    """
    options = tap.Options()
    options.parseOptions(
        ["--root", str(root), "--port", "0", "--interface", "127.0.0.1",
         f"--{row.option}", text]
    )  # fmt: skip
    return options[row.option]


def live(row: Setting, value):
    """
    Change C{row} to C{value} on a running server through the operator, and
    return what the server's settings then hold.
    """
    reactor = FakeUDPReactor()
    server = TFTPServer(MemoryHandler({}), reactor=reactor)
    operator = Operator(server, reactor)
    operator.change_setting(row.name, value)
    return server.settings.get(row.name)


class SchemaTests(SynchronousTestCase):
    """
    The table itself, and the classes made from it.
    """

    def test_fields_are_the_rows(self):
        """
        L{Limits} has a field per row marked C{limit}; L{Settings} has
        C{limits} and a field per other row, in the table's order.
        """
        limit_rows = [row.name for row in SCHEMA if row.limit]
        other_rows = [row.name for row in SCHEMA if not row.limit]
        self.assertEqual([f.name for f in dataclasses.fields(Limits)], limit_rows)
        self.assertEqual(
            [f.name for f in dataclasses.fields(Settings)], ["limits", *other_rows]
        )

    def test_defaults(self):
        """
        C{Settings()} holds every row's default, and C{as_dict} lists them
        all, limits included, in the table's order.
        """
        self.assertEqual(
            Settings().as_dict(), {row.name: row.default for row in SCHEMA}
        )

    def test_rows_are_valid(self):
        """
        Every row's defaults pass its own check, its bounds are in order, and
        its help is one sentence or more, for C{--help}; option names and
        short options are unique.
        """
        for row in SCHEMA:
            self.assertIn(row.kind, (int, float, bool), row.name)
            self.assertEqual(row.check(row.default), row.default, row.name)
            row.check(row.command_line_default)
            if row.low is not None and row.high is not None:
                self.assertLess(row.low, row.high, row.name)
            self.assertTrue(row.help.endswith("."), row.name)
        self.assertEqual(len({row.option for row in SCHEMA}), len(SCHEMA))
        shorts = [row.short for row in SCHEMA if row.short]
        self.assertEqual(len(set(shorts)), len(shorts))

    def test_command_line_defaults_build_settings(self):
        """
        The defaults of C{twistd tftp} make valid settings too; they differ
        from those in code only where a row says so.
        """
        values = {row.name: row.command_line_default for row in SCHEMA}
        self.assertEqual(Settings.from_dict(values).as_dict(), values)
        differ = [row.name for row in SCHEMA if row.command_line_default != row.default]
        self.assertEqual(differ, ["linger", "shutdown_grace"])

    def test_linger(self):
        """
        The lone-transfer linger is off for an embedding application and a
        millisecond for C{twistd tftp}, at most 10 ms, and its help says
        what it costs.
        """
        row = setting("linger")
        self.assertEqual(Settings().linger, 0)
        self.assertEqual(row.command_line_default, 0.001)
        self.assertEqual((row.low, row.high), (0, 0.01))
        self.assertIn("blocks the whole reactor", row.help)

    def test_unknown_setting(self):
        """
        L{setting} of a name that is not a setting raises L{KeyError}
        listing the real ones.
        """
        exc = self.assertRaises(KeyError, setting, "blksize")
        self.assertIn("max_blksize", str(exc))

    def test_from_dict(self):
        """
        L{Settings.from_dict} takes a flat mapping, limits included, and
        uses the defaults for what it leaves out.
        """
        settings = Settings.from_dict({"max_blksize": 1428, "retries": 2})
        self.assertEqual(settings.limits, Limits(max_blksize=1428))
        self.assertEqual(settings.retries, 2)
        self.assertEqual(settings.timeout, 1.0)
        self.assertRaises(KeyError, Settings.from_dict, {"blksize": 1428})

    def test_get_and_set(self):
        """
        L{Settings.get} and L{Settings.set} reach a setting by name, a limit
        or not; setting a limit replaces the limits, which stay frozen.
        """
        settings = Settings()
        limits = settings.limits
        self.assertEqual(settings.set("max_blksize", 1428), 1428)
        self.assertEqual(settings.get("max_blksize"), 1428)
        self.assertEqual(limits.max_blksize, Limits().max_blksize)
        self.assertEqual(settings.set("timeout", 2), 2.0)
        self.assertIsInstance(settings.get("timeout"), float)
        self.assertRaises(
            dataclasses.FrozenInstanceError, setattr, limits, "max_blksize", 512
        )


class FlagTests(SynchronousTestCase):
    """
    A truth-valued setting takes L{True} or L{False} in code and live, and
    is a flag on the command line.
    """

    def test_truth_values(self):
        """
        C{allow_low_ports} is off unless set; anything but a L{bool} is
        refused; the flag turns it on.
        """
        row = setting("allow_low_ports")
        self.assertIs(Settings().allow_low_ports, False)
        self.assertIs(in_code(row, True), True)
        self.assertRaises(TypeError, in_code, row, 1)
        self.assertIs(live(row, True), True)
        options = tap.Options()
        options.parseOptions(
            ["--root", "/", "--port", "0", "--interface", "127.0.0.1", "--allow-low-ports"]
        )
        self.assertEqual(tap.settings_from(options).allow_low_ports, True)


class CodeChecksTests(SynchronousTestCase):
    """
    Settings built or changed in code are checked as the command line and
    the operator's are.
    """

    def test_timeout_checked(self):
        """
        C{Settings(timeout=0)} is refused: a server cannot retransmit every
        0 seconds.  So is setting it afterwards.
        """
        exc = self.assertRaises(ValueError, Settings, timeout=0)
        self.assertEqual(str(exc), "timeout must be from 0.01 to 255, not 0")
        settings = Settings()
        self.assertRaises(ValueError, setattr, settings, "timeout", 0)
        self.assertEqual(settings.timeout, 1.0)

    def test_wrong_types(self):
        """
        A string, a L{bool} or a fraction for a whole number is refused with
        L{TypeError}, naming the setting and its bounds.
        """
        for build, message in [
            (lambda: Limits(max_blksize="1428"),
             "max_blksize must be a whole number from 8 to 65464, not '1428'"),
            (lambda: Settings(retries=2.5),
             "retries must be a whole number from 0 to 100, not 2.5"),
            (lambda: Settings(timeout=True),
             "timeout must be a number from 0.01 to 255, not True"),
            (lambda: Settings(limits={"max_blksize": 1428}),
             "limits must be a Limits, not {'max_blksize': 1428}"),
        ]:  # fmt: skip
            exc = self.assertRaises(TypeError, build)
            self.assertEqual(str(exc), message)

    def test_not_a_number(self):
        """
        NaN is within no bounds.
        """
        self.assertRaises(ValueError, Settings, linger=float("nan"))

    def test_unknown_attribute(self):
        """
        A misspelt setting is refused instead of making an attribute that
        nothing reads; a limit set on the settings says how to change it.
        """
        settings = Settings()
        exc = self.assertRaises(AttributeError, setattr, settings, "max_blksise", 1)
        self.assertIn("max_blksize", str(exc))
        exc = self.assertRaises(AttributeError, setattr, settings, "max_blksize", 1)
        self.assertIn("settings.set('max_blksize', value)", str(exc))


@pytest.fixture
def root(tmp_path):
    return tmp_path


@pytest.mark.parametrize("row", NUMBERS, ids=row_ids)
def test_bounds_accepted_everywhere(row, root):
    """
    Each setting's bounds themselves are accepted in code, on the command
    line and live, and give the same value.
    """
    for value in (row.low, row.high):
        if value is None:
            continue
        expected = row.kind(value)
        assert in_code(row, value) == expected
        assert on_command_line(row, str(value), root) == expected
        assert live(row, value) == expected


@pytest.mark.parametrize("row", NUMBERS, ids=row_ids)
def test_outside_refused_everywhere(row, root):
    """
    A value just outside a setting's bounds is refused in code and live with
    L{ValueError}, and on the command line with a usage error, each naming
    the setting (its option on the command line) and what it allows.
    """
    for value in outside(row):
        with pytest.raises(ValueError) as code:
            in_code(row, value)
        assert str(code.value) == f"{row.name} must be {row.allowed}, not {value!r}"
        with pytest.raises(usage.UsageError) as cli:
            on_command_line(row, str(value), root)
        assert f"--{row.option} must be {row.allowed}, not" in str(cli.value)
        with pytest.raises(ValueError) as changed:
            live(row, value)
        assert str(changed.value) == str(code.value)


@pytest.mark.parametrize("row", NUMBERS, ids=row_ids)
def test_not_a_number_refused_everywhere(row, root):
    """
    A value that is not a number is refused everywhere, with what the
    setting allows.
    """
    with pytest.raises(TypeError, match=row.name):
        in_code(row, "soon")
    with pytest.raises(usage.UsageError) as cli:
        on_command_line(row, "soon", root)
    noun = "a whole number" if row.kind is int else "a number"
    assert f"--{row.option} must be {noun} {row.allowed}, not 'soon'" in str(cli.value)
    with pytest.raises(TypeError, match=row.name):
        live(row, "soon")


def test_window_bytes_agree(root):
    """
    A window budget below one block (1 byte: one block a window) and one far
    above any window are accepted in code, on the command line and live
    alike; 0 is refused by all three.  (They disagreed: 1 or more in code, 8
    or more and at most 64 MiB elsewhere.)
    """
    row = setting("max_window_bytes")
    for value in (1, 7, 2**40):
        assert in_code(row, value) == value
        assert on_command_line(row, str(value), root) == value
        assert live(row, value) == value
    with pytest.raises(ValueError):
        in_code(row, 0)
    with pytest.raises(usage.UsageError):
        on_command_line(row, "0", root)
    with pytest.raises(ValueError):
        live(row, 0)

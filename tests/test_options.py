"""
Tests for L{tftpd_tx.options.negotiate}: RFC 2347 option negotiation of
blksize (RFC 2348), timeout and tsize (RFC 2349) and windowsize (RFC 7440).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx.options import (
    buffer_charge,
    DEFAULT_BLKSIZE,
    MAX_BLKSIZE,
    MAX_WINDOWSIZE,
    MIN_BLKSIZE,
    Limits,
    Negotiated,
    negotiate,
)

#: Limits that clamp nothing a client may ask for.
OPEN = Limits(
    max_blksize=MAX_BLKSIZE,
    max_windowsize=MAX_WINDOWSIZE,
    max_window_bytes=2**40,
    client_buffer=0,
)

#: Values that are not a decimal number in any option's range.
NOT_NUMBERS = [
    "",
    " ",
    "abc",
    "-1",
    "+512",
    "1e3",
    "0x200",
    "1.5",
    "5 12",
    "9" * 11,
    "9" * 5000,
    "\u0665\u0661\u0662",  # Arabic-Indic "512": a digit to str.isdigit
    "\u00b2",  # superscript two: a digit to str.isdigit, not to int()
    "\uff15\uff11\uff12",  # fullwidth "512"
]


class NoOptionsTests(SynchronousTestCase):
    """
    Without options, a transfer runs with the RFC 1350 defaults and starts
    with DATA, not OACK.
    """

    def test_defaults(self):
        """
        No options give the defaults and no OACK.
        """
        result = negotiate({}, Limits(), 1000)
        assert result == Negotiated(
            blksize=DEFAULT_BLKSIZE, windowsize=1, timeout=None, oack=None
        )
        assert result.blksize == 512

    def test_unknown_options_ignored(self):
        """
        Options the server does not know are left out, and when nothing else
        was asked there is no OACK.
        """
        unknown = {"multicast": "", "rollover": "0", "utimeout": "500"}
        result = negotiate(unknown, OPEN, 10)
        assert result == Negotiated()

    def test_unknown_options_not_acknowledged(self):
        """
        Unknown options are left out of an OACK that acknowledges others.
        """
        result = negotiate({"foo": "1", "blksize": "1024", "bar": "2"}, OPEN, None)
        assert result.oack == {"blksize": "1024"}

    def test_nothing_accepted(self):
        """
        When every option asked for is declined, there is no OACK and the
        defaults stand.
        """
        result = negotiate(
            {"blksize": "7", "timeout": "0", "windowsize": "0", "tsize": "0"},
            OPEN,
            None,
        )
        assert result == Negotiated()

    def test_names_are_exact(self):
        """
        Names are matched as given: the codec lower-cases them, so an
        upper-case name reaching L{negotiate} is an unknown option.
        """
        assert negotiate({"BLKSIZE": "1024"}, OPEN, None) == Negotiated()


class BlockSizeTests(SynchronousTestCase):
    """
    RFC 2348: blksize is 8 to 65464 bytes; the server may grant less.
    """

    def test_accepted(self):
        """
        A block size in range is granted and acknowledged.
        """
        result = negotiate({"blksize": "1428"}, Limits(), None)
        assert result.blksize == 1428
        assert result.oack == {"blksize": "1428"}

    def test_bounds(self):
        """
        The smallest and largest block sizes are granted.
        """
        for value in (MIN_BLKSIZE, MAX_BLKSIZE):
            result = negotiate({"blksize": str(value)}, OPEN, None)
            assert result.blksize == value
            assert result.oack == {"blksize": str(value)}

    def test_clamped(self):
        """
        A block size above the server's limit is granted as the limit, and
        the OACK says so.
        """
        result = negotiate({"blksize": "65464"}, Limits(max_blksize=1468), None)
        assert result.blksize == 1468
        assert result.oack == {"blksize": "1468"}

    def test_below_limit_not_raised(self):
        """
        A block size below the server's limit is granted as asked.
        """
        result = negotiate({"blksize": "8"}, Limits(max_blksize=1468), None)
        assert result.blksize == 8

    def test_out_of_range_declined(self):
        """
        A block size outside 8..65464 is declined: left out of the OACK,
        with the default block size.
        """
        for value in ["0", "7", "65465", "65536", "4294967296"]:
            result = negotiate({"blksize": value}, OPEN, None)
            assert result == Negotiated(), value

    def test_not_a_number_declined(self):
        """
        A block size that is not a plain decimal number is declined.
        """
        for value in NOT_NUMBERS:
            result = negotiate({"blksize": value}, OPEN, None)
            assert result == Negotiated(), value

    def test_declined_alongside_accepted(self):
        """
        A declined block size does not stop other options from being
        acknowledged.
        """
        result = negotiate({"blksize": "abc", "timeout": "3"}, OPEN, None)
        assert result.blksize == DEFAULT_BLKSIZE
        assert result.oack == {"timeout": "3"}

    def test_leading_zeros(self):
        """
        A decimal value with leading zeros is read as its number and
        acknowledged in canonical form.
        """
        result = negotiate({"blksize": "01024"}, OPEN, None)
        assert result.blksize == 1024
        assert result.oack == {"blksize": "1024"}


class TimeoutTests(SynchronousTestCase):
    """
    RFC 2349: timeout is 1 to 255 whole seconds.
    """

    def test_accepted(self):
        """
        A timeout in range is used and acknowledged.
        """
        for value in (1, 5, 255):
            result = negotiate({"timeout": str(value)}, OPEN, None)
            assert result.timeout == value
            assert result.oack == {"timeout": str(value)}

    def test_declined(self):
        """
        A timeout outside 1..255, or not a whole number, is declined and the
        server's own timeout is used.
        """
        for value in ["0", "256", "1.5", "-3"] + NOT_NUMBERS:
            result = negotiate({"timeout": value}, OPEN, None)
            assert result.timeout is None, value
            assert result.oack is None, value


class TransferSizeTests(SynchronousTestCase):
    """
    RFC 2349: a client reading a file sends tsize 0 and the server answers
    with the file's size.
    """

    def test_answered_with_size(self):
        """
        When the size is known, tsize is acknowledged with it, whatever the
        client sent.
        """
        for sent in ("0", "", "123"):
            result = negotiate({"tsize": sent}, OPEN, 1048576)
            assert result.oack == {"tsize": "1048576"}

    def test_unknown_size_declined(self):
        """
        When the size is not known in advance, tsize is declined.
        """
        assert negotiate({"tsize": "0"}, OPEN, None) == Negotiated()

    def test_empty_file_declined(self):
        """
        tsize is declined for an empty file: curl refuses an OACK carrying
        tsize 0.
        """
        assert negotiate({"tsize": "0"}, OPEN, 0) == Negotiated()

    def test_not_asked(self):
        """
        The size is not offered to a client that did not ask for it.
        """
        assert negotiate({"blksize": "1024"}, OPEN, 5000).oack == {"blksize": "1024"}


class WindowSizeTests(SynchronousTestCase):
    """
    RFC 7440: windowsize is 1 to 65535 blocks; the server grants at most its
    own limit, and no more than its byte budget at the negotiated block size.
    """

    def test_accepted(self):
        """
        A window within the limits is granted as asked.
        """
        result = negotiate({"windowsize": "16"}, Limits(), None)
        assert result.windowsize == 16
        assert result.oack == {"windowsize": "16"}

    def test_bounds(self):
        """
        Windows of 1 and 65535 blocks are granted under open limits.
        """
        for value in (1, MAX_WINDOWSIZE):
            result = negotiate({"windowsize": str(value)}, OPEN, None)
            assert result.windowsize == value
            assert result.oack == {"windowsize": str(value)}

    def test_out_of_range_declined(self):
        """
        A window of 0, above 65535, or not a number is declined.
        """
        for value in ["0", "65536"] + NOT_NUMBERS:
            result = negotiate({"windowsize": value}, OPEN, None)
            assert result == Negotiated(), value

    def test_clamped_to_max_windowsize(self):
        """
        A window above the server's limit is granted as the limit.
        """
        result = negotiate({"windowsize": "1000"}, Limits(max_windowsize=64), None)
        assert result.windowsize == 64
        assert result.oack == {"windowsize": "64"}

    def test_clamped_to_byte_budget(self):
        """
        The window is cut to C{max_window_bytes // blksize} blocks.
        """
        limits = Limits(max_windowsize=64, max_window_bytes=65536)
        result = negotiate({"blksize": "8192", "windowsize": "64"}, limits, None)
        assert (result.blksize, result.windowsize) == (8192, 8)
        assert result.oack == {"blksize": "8192", "windowsize": "8"}

    def test_window_fits_the_client_buffer(self):
        """
        By default a window never holds more blocks than a client's default
        receive buffer (212,992 bytes) can queue, the kernel's charge per
        datagram included: 43 blocks at blksize 3072, 22 at 4096, 2 at
        65464, where a byte budget alone allowed 64, 48 and 3.
        """
        for blksize, window in ((512, 64), (3072, 43), (4096, 22), (8192, 11), (65464, 2)):
            result = negotiate(
                {"blksize": str(blksize), "windowsize": "64"}, Limits(), None
            )
            assert result.windowsize == window, blksize
            assert window * buffer_charge(blksize) <= 212992

    def test_buffer_charge_errs_high(self):
        """
        The charge per datagram is at least what the kernel was measured to
        take: as many datagrams as the estimate lets in fit a default
        receive buffer, on this host's loopback.
        """
        import socket

        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            receiver.bind(("127.0.0.1", 0))
            receiver.setblocking(False)
            size = receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            for blksize in (512, 1468, 3072, 4096, 8192, 16384, 65464):
                fits = size // buffer_charge(blksize)
                for _ in range(fits):
                    sender.sendto(b"x" * (blksize + 4), receiver.getsockname())
                arrived = 0
                while True:
                    try:
                        receiver.recv(70000)
                    except BlockingIOError:
                        break
                    arrived += 1
                assert arrived == fits, blksize
        finally:
            receiver.close()
            sender.close()

    def test_byte_budget_either_order(self):
        """
        The byte budget uses the negotiated block size wherever blksize comes
        in the request, and the OACK keeps the client's order.
        """
        limits = Limits(max_windowsize=64, max_window_bytes=65536)
        result = negotiate({"windowsize": "64", "blksize": "8192"}, limits, None)
        assert (result.blksize, result.windowsize) == (8192, 8)
        assert list(result.oack.items()) == [("windowsize", "8"), ("blksize", "8192")]

    def test_byte_budget_default_blksize(self):
        """
        Without a blksize option, the byte budget is counted in 512-byte
        blocks.
        """
        result = negotiate({"windowsize": "16"}, Limits(max_window_bytes=2048), None)
        assert result.windowsize == 4
        assert result.oack == {"windowsize": "4"}

    def test_byte_budget_declined_blksize(self):
        """
        A declined blksize leaves the default block size for the byte budget.
        """
        limits = Limits(max_window_bytes=2048)
        result = negotiate({"blksize": "99999", "windowsize": "16"}, limits, None)
        assert (result.blksize, result.windowsize) == (512, 4)
        assert result.oack == {"windowsize": "4"}

    def test_byte_budget_clamped_blksize(self):
        """
        The byte budget uses the block size granted, not the one asked for.
        """
        limits = Limits(max_blksize=1024, max_window_bytes=8192)
        result = negotiate({"windowsize": "64", "blksize": "65464"}, limits, None)
        assert (result.blksize, result.windowsize) == (1024, 8)

    def test_at_least_one(self):
        """
        A byte budget smaller than one block still grants a window of one.
        """
        limits = Limits(max_window_bytes=1024)
        result = negotiate({"blksize": "65464", "windowsize": "8"}, limits, None)
        assert (result.blksize, result.windowsize) == (65464, 1)
        assert result.oack == {"blksize": "65464", "windowsize": "1"}

    def test_not_asked(self):
        """
        Without a windowsize option the window is one block and none is
        acknowledged.
        """
        result = negotiate({"blksize": "1024"}, Limits(), None)
        assert result.windowsize == 1
        assert "windowsize" not in result.oack


class CombinedTests(SynchronousTestCase):
    """
    Several options negotiate independently and are acknowledged in the
    client's order.
    """

    def test_all_options(self):
        """
        A typical PXE request gets every option it asked for, in its order.
        """
        result = negotiate(
            {"tsize": "0", "blksize": "1456", "windowsize": "4", "timeout": "2"},
            Limits(),
            4_000_000,
        )
        assert result == Negotiated(
            blksize=1456,
            windowsize=4,
            timeout=2,
            oack={
                "tsize": "4000000",
                "blksize": "1456",
                "windowsize": "4",
                "timeout": "2",
            },
        )
        assert list(result.oack) == ["tsize", "blksize", "windowsize", "timeout"]

    def test_values_shared(self):
        """
        Transfers that acknowledge the same values share one copy of each
        (thousands of transfers keep their OACK for as long as they run).
        """
        asked = {"tsize": "0", "blksize": "1468", "windowsize": "4", "timeout": "2"}
        first = negotiate(dict(asked), Limits(), 1_048_576)
        second = negotiate(dict(asked), Limits(), 1_048_576)
        assert first.oack == second.oack
        for name in asked:
            assert first.oack[name] is second.oack[name]


class LimitsTests(SynchronousTestCase):
    """
    L{Limits} refuses limits outside the RFC ranges when it is made, so a
    misconfigured server fails at start-up rather than on a client's request.
    """

    def test_defaults(self):
        """
        The default limits allow the largest RFC block size, 64 blocks and
        192 KiB per window.
        """
        assert Limits() == Limits(
            max_blksize=65464, max_windowsize=64, max_window_bytes=192 * 1024
        )

    def test_bad_blksize(self):
        """
        A largest block size outside 8..65464 is refused.
        """
        for value in (0, 7, 65465):
            with self.assertRaises(ValueError):
                Limits(max_blksize=value)

    def test_bad_windowsize(self):
        """
        A largest window outside 1..65535 is refused.
        """
        for value in (0, -1, 65536):
            with self.assertRaises(ValueError):
                Limits(max_windowsize=value)

    def test_bad_window_bytes(self):
        """
        A window byte budget below one byte is refused.
        """
        for value in (0, -1):
            with self.assertRaises(ValueError):
                Limits(max_window_bytes=value)


# -- properties ---------------------------------------------------------------

limits = st.builds(
    Limits,
    max_blksize=st.integers(MIN_BLKSIZE, MAX_BLKSIZE),
    max_windowsize=st.integers(1, MAX_WINDOWSIZE),
    max_window_bytes=st.integers(1, 2**26),
)
names = st.one_of(
    st.sampled_from(["blksize", "windowsize", "timeout", "tsize"]), st.text(max_size=10)
)
values = st.one_of(
    st.integers(-10, 2**17).map(str),
    st.integers(0, 10**30).map(str),
    st.from_regex(r"\s*[0-9]{0,12}\s*", fullmatch=True),
    st.text(max_size=12),
    # Characters str.isdigit calls digits, though they are not ASCII.
    st.text(st.characters(whitelist_categories=("Nd", "No")), max_size=4),
)
sizes = st.one_of(st.none(), st.integers(0, 2**64))


class NegotiatePropertyTests(SynchronousTestCase):
    """
    Whatever a client asks for, L{negotiate} answers within the server's
    limits and acknowledges only options that were asked.
    """

    @settings(max_examples=150, deadline=None)
    @given(
        requested=st.dictionaries(names, values, max_size=6), limits=limits, size=sizes
    )
    def test_within_limits(self, requested, limits, size):
        """
        L{negotiate} never raises, grants only what the limits allow, and
        acknowledges a subset of the requested options with the values it
        runs with.
        """
        result = negotiate(requested, limits, size)
        oack = result.oack or {}
        assert result.oack is None or result.oack
        assert set(oack) <= set(requested)
        assert list(oack) == [name for name in requested if name in oack]

        if "blksize" in oack:
            assert MIN_BLKSIZE <= result.blksize <= limits.max_blksize
            assert oack["blksize"] == str(result.blksize)
        else:
            assert result.blksize == DEFAULT_BLKSIZE

        assert 1 <= result.windowsize <= limits.max_windowsize
        if "windowsize" in oack:
            assert oack["windowsize"] == str(result.windowsize)
            assert (
                result.windowsize == 1
                or result.windowsize * result.blksize <= limits.max_window_bytes
            )
        else:
            assert result.windowsize == 1

        if "timeout" in oack:
            assert 1 <= result.timeout <= 255
            assert oack["timeout"] == str(result.timeout)
        else:
            assert result.timeout is None

        if "tsize" in oack:
            assert oack["tsize"] == str(size)
        assert ("tsize" in oack) == ("tsize" in requested and bool(size))

        for value in oack.values():
            assert isinstance(value, str) and value.isascii() and value.isdigit()

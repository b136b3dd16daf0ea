"""
Tests for L{tftpd_tx.wire}: the packet codec of RFC 1350 and RFC 2347.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx import wire
from tftpd_tx.wire import (
    Ack,
    Data,
    DecodeError,
    Error,
    ErrorCode,
    Opcode,
    OptionAck,
    ReadRequest,
    WriteRequest,
    data_header,
    decode,
)

# -- strategies ---------------------------------------------------------------

#: Text a client can put in a filename: anything encodable as UTF-8 except
#: NUL (the string terminator) and other control characters.
filenames = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40
)
#: Printable ASCII without NUL, as option names and values are.
ascii_printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
modes = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
    min_size=1,
    max_size=10,
).map(str.lower)
option_names = st.text(alphabet=ascii_printable, min_size=1, max_size=12).map(str.lower)
option_values = st.text(alphabet=ascii_printable, max_size=12)
option_dicts = st.dictionaries(option_names, option_values, max_size=6)
blocks = st.integers(min_value=0, max_value=wire.MAX_BLOCK)
messages = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
    max_size=40,
)

fast = settings(max_examples=100, deadline=None)


def decode_error(datagram: bytes) -> DecodeError:
    """
    Decode C{datagram}, which must be refused, and return the refusal.
    """
    with pytest.raises(DecodeError) as caught:
        decode(datagram)
    return caught.value


# -- encoding -----------------------------------------------------------------


class EncodeTests(SynchronousTestCase):
    """
    Every packet kind encodes to the bytes RFC 1350 and RFC 2347 lay out.
    """

    def test_read_request(self):
        """
        An RRQ is opcode 1, the filename, NUL, the mode, NUL.
        """
        assert (
            ReadRequest("pxelinux.0", "octet").encode()
            == b"\x00\x01pxelinux.0\x00octet\x00"
        )

    def test_read_request_with_options(self):
        """
        RFC 2347 options follow the mode as NUL-terminated name/value pairs,
        in the order given.
        """
        packet = ReadRequest("f", "octet", {"blksize": "1428", "tsize": "0"})
        assert packet.encode() == (
            b"\x00\x01f\x00octet\x00blksize\x001428\x00tsize\x000\x00"
        )

    def test_write_request(self):
        """
        A WRQ is an RRQ with opcode 2.
        """
        packet = WriteRequest("up.bin", "netascii")
        assert packet.encode() == b"\x00\x02up.bin\x00netascii\x00"

    def test_utf8_filename(self):
        """
        A filename outside ASCII is sent as UTF-8.
        """
        assert ReadRequest("é", "octet").encode() == b"\x00\x01\xc3\xa9\x00octet\x00"

    def test_data(self):
        """
        DATA is opcode 3, the 16-bit block number, then the payload as is.
        """
        assert Data(1, b"hello").encode() == b"\x00\x03\x00\x01hello"

    def test_empty_data(self):
        """
        An empty DATA block (the end of a file whose size is a multiple of
        the block size) is just the header.
        """
        assert Data(65535, b"").encode() == b"\x00\x03\xff\xff"

    def test_data_header(self):
        """
        L{data_header} is the four bytes that start a DATA packet.
        """
        assert data_header(0) == b"\x00\x03\x00\x00"
        assert data_header(258) == b"\x00\x03\x01\x02"
        assert data_header(wire.MAX_BLOCK) == b"\x00\x03\xff\xff"

    def test_ack(self):
        """
        ACK is opcode 4 and the 16-bit block number: four bytes.
        """
        assert Ack(7).encode() == b"\x00\x04\x00\x07"
        assert Ack(0).encode() == b"\x00\x04\x00\x00"

    def test_error(self):
        """
        ERROR is opcode 5, the 16-bit error code, the message and a NUL.
        """
        assert (
            Error(ErrorCode.FILE_NOT_FOUND, "File not found").encode()
            == b"\x00\x05\x00\x01File not found\x00"
        )

    def test_error_without_message(self):
        """
        An ERROR without a message still carries the terminating NUL.
        """
        assert Error(ErrorCode.NOT_DEFINED).encode() == b"\x00\x05\x00\x00\x00"

    def test_error_option_refused(self):
        """
        RFC 2347 adds error code 8 for a refused negotiation.
        """
        assert Error(ErrorCode.OPTION_REFUSED, "x").encode() == b"\x00\x05\x00\x08x\x00"

    def test_option_ack(self):
        """
        OACK is opcode 6 and the accepted options as NUL-terminated pairs, in
        the order given.
        """
        packet = OptionAck({"blksize": "1428", "windowsize": "8", "tsize": "1024"})
        assert packet.encode() == (
            b"\x00\x06blksize\x001428\x00windowsize\x008\x00tsize\x001024\x00"
        )

    def test_opcodes_and_codes(self):
        """
        The opcodes and error codes have the RFC numbers.
        """
        assert [int(op) for op in Opcode] == [1, 2, 3, 4, 5, 6]
        assert [int(code) for code in ErrorCode] == list(range(9))


# -- decoding well-formed packets ---------------------------------------------


class DecodeTests(SynchronousTestCase):
    """
    L{decode} turns each packet kind's bytes back into that packet.
    """

    def test_read_request(self):
        """
        An RRQ decodes to a L{ReadRequest} with its filename and mode and no
        options.
        """
        assert decode(b"\x00\x01pxelinux.0\x00octet\x00") == ReadRequest(
            "pxelinux.0", "octet", {}
        )

    def test_read_request_options(self):
        """
        The options of an RRQ decode in the client's order.
        """
        packet = decode(b"\x00\x01f\x00octet\x00tsize\x000\x00blksize\x001428\x00")
        assert packet == ReadRequest("f", "octet", {"tsize": "0", "blksize": "1428"})
        assert list(packet.options) == ["tsize", "blksize"]

    def test_write_request(self):
        """
        A WRQ decodes to a L{WriteRequest}, which is not a L{ReadRequest}.
        """
        packet = decode(b"\x00\x02up.bin\x00octet\x00")
        assert packet == WriteRequest("up.bin", "octet", {})
        assert packet != ReadRequest("up.bin", "octet", {})

    def test_mode_lower_cased(self):
        """
        The mode is case-insensitive (RFC 1350), so it is lower-cased.
        """
        assert decode(b"\x00\x01f\x00NetASCII\x00").mode == "netascii"

    def test_mode_shared(self):
        """
        Requests that name the same mode, however spelt, share one string
        for it (a transfer keeps its request's mode while it runs).
        """
        first = decode(b"\x00\x01a\x00octet\x00").mode
        second = decode(b"\x00\x01b\x00OCTET\x00").mode
        assert first is second

    def test_empty_mode_kept(self):
        """
        An empty mode decodes; whether it is supported is the server's call.
        """
        assert decode(b"\x00\x01f\x00\x00").mode == ""

    def test_filename_kept_as_sent(self):
        """
        The filename is not normalized or case-folded by the codec.
        """
        packet = decode(b"\x00\x01\\Boot\\..\\PXE.0\x00octet\x00")
        assert packet.filename == "\\Boot\\..\\PXE.0"

    def test_non_utf8_filename(self):
        """
        A filename that is not UTF-8 decodes to a string, with the bad bytes
        replaced, rather than raising.
        """
        packet = decode(b"\x00\x01boot\xff\xfe.bin\x00octet\x00")
        assert isinstance(packet.filename, str)
        assert packet.filename == "boot\ufffd\ufffd.bin"

    def test_non_ascii_mode(self):
        """
        A mode with bytes outside ASCII decodes to a string (one no server
        supports) rather than raising.
        """
        packet = decode(b"\x00\x01f\x00oct\xe9t\x00")
        assert packet.mode == "oct\ufffdt"

    def test_data(self):
        """
        DATA decodes to its block number and payload.
        """
        assert decode(b"\x00\x03\x01\x02payload") == Data(258, b"payload")

    def test_empty_data(self):
        """
        DATA with only a header has an empty payload.
        """
        assert decode(b"\x00\x03\xff\xff") == Data(65535, b"")

    def test_ack(self):
        """
        An ACK decodes to its block number.
        """
        assert decode(b"\x00\x04\xff\xfe") == Ack(65534)

    def test_error(self):
        """
        An ERROR decodes to its code and message.
        """
        assert decode(b"\x00\x05\x00\x02Access violation\x00") == Error(
            2, "Access violation"
        )

    def test_error_without_nul(self):
        """
        Many clients forget the NUL after an ERROR message; the message is
        taken as it is.
        """
        assert decode(b"\x00\x05\x00\x00Transfer cancelled") == Error(
            0, "Transfer cancelled"
        )

    def test_error_without_message(self):
        """
        An ERROR with only a code has an empty message.
        """
        assert decode(b"\x00\x05\x00\x08") == Error(8, "")

    def test_error_bad_utf8(self):
        """
        An ERROR message that is not UTF-8 decodes with the bad bytes
        replaced.
        """
        assert decode(b"\x00\x05\x00\x00bad\xff\x00").message == "bad\ufffd"

    def test_option_ack(self):
        """
        An OACK decodes to its options in order.
        """
        packet = decode(b"\x00\x06blksize\x00512\x00tsize\x0099\x00")
        assert packet == OptionAck({"blksize": "512", "tsize": "99"})
        assert list(packet.options) == ["blksize", "tsize"]

    def test_empty_option_ack(self):
        """
        An OACK with no options decodes to an empty one.
        """
        assert decode(b"\x00\x06") == OptionAck({})

    def test_bytearray(self):
        """
        A datagram given as a C{bytearray} decodes like the same bytes.
        """
        assert decode(bytearray(b"\x00\x03\x00\x01ab")) == Data(1, b"ab")


class OptionDecodingTests(SynchronousTestCase):
    """
    The RFC 2347 options of a request are decoded forgivingly: a client bug
    costs the client that option, never the request.
    """

    def test_names_lower_cased(self):
        """
        Option names are case-insensitive, so they are lower-cased; values
        are kept as sent.
        """
        packet = decode(b"\x00\x01f\x00octet\x00BlkSize\x00A1b\x00TSIZE\x000\x00")
        assert packet.options == {"blksize": "A1b", "tsize": "0"}

    def test_strings_shared(self):
        """
        Requests that send the same options share one copy of each name
        and value, however the name is spelt (thousands of transfers keep
        their request's options for as long as they run).
        """
        first = decode(b"\x00\x01a\x00octet\x00blksize\x001468\x00tsize\x000\x00")
        second = decode(b"\x00\x01b\x00octet\x00BLKSIZE\x001468\x00TSize\x000\x00")
        assert first.options == second.options
        for (name, value), (other_name, other_value) in zip(
            first.options.items(), second.options.items()
        ):
            assert name is other_name
            assert value is other_value

    def test_name_without_value_ignored(self):
        """
        A trailing option name without a value is dropped; the options
        before it are kept.
        """
        packet = decode(b"\x00\x01f\x00octet\x00blksize\x001024\x00tsize\x00")
        assert packet == ReadRequest("f", "octet", {"blksize": "1024"})

    def test_lone_name_ignored(self):
        """
        A request whose only option has no value has no options.
        """
        assert decode(b"\x00\x01f\x00octet\x00blksize\x00").options == {}

    def test_repeated_option_first_wins(self):
        """
        When an option is repeated, the first value counts.
        """
        packet = decode(
            b"\x00\x01f\x00octet\x00"
            b"blksize\x00512\x00BLKSIZE\x001428\x00blksize\x008\x00"
        )
        assert packet.options == {"blksize": "512"}

    def test_empty_option_value(self):
        """
        An option with an empty value is kept, with an empty value, for
        negotiation to decline.
        """
        packet = decode(b"\x00\x01f\x00octet\x00blksize\x00\x00")
        assert packet.options == {"blksize": ""}

    def test_empty_name_ignored(self):
        """
        Padding NULs after the mode, which read as empty names, are ignored.
        """
        packet = decode(b"\x00\x01f\x00octet\x00\x00\x00\x00\x00")
        assert packet == ReadRequest("f", "octet", {})

    def test_non_ascii_option_skipped(self):
        """
        An option whose name or value is not ASCII cannot be one we know and
        is skipped; the others are kept.
        """
        packet = decode(
            b"\x00\x01f\x00octet\x00bl\xffk\x001\x00tsize\x00\xe9\x00timeout\x003\x00"
        )
        assert packet.options == {"timeout": "3"}

    def test_ten_thousand_options(self):
        """
        A request with 10,000 options decodes, keeping all of them.
        """
        body = b"".join(b"opt%d\x00%d\x00" % (i, i) for i in range(10_000))
        packet = decode(b"\x00\x01f\x00octet\x00" + body)
        assert len(packet.options) == 10_000
        assert packet.options["opt9999"] == "9999"

    def test_ten_thousand_repeats(self):
        """
        10,000 repeats of one option decode to its first value.
        """
        body = b"".join(b"blksize\x00%d\x00" % (i,) for i in range(10_000))
        assert decode(b"\x00\x01f\x00octet\x00" + body).options == {"blksize": "0"}

    def test_option_ack_options(self):
        """
        An OACK's options follow the same rules as a request's.
        """
        packet = decode(b"\x00\x06BLKSIZE\x00512\x00blksize\x001\x00tsize\x00")
        assert packet == OptionAck({"blksize": "512"})


# -- malformed datagrams ------------------------------------------------------


class MalformedTests(SynchronousTestCase):
    """
    L{decode} refuses malformed datagrams with a L{DecodeError} that says
    which opcode the datagram claimed, so the server can answer a malformed
    request and drop the rest.
    """

    def test_empty(self):
        """
        An empty datagram claims no opcode.
        """
        error = decode_error(b"")
        assert error.opcode is None
        assert error.code == ErrorCode.ILLEGAL_OPERATION

    def test_one_byte(self):
        """
        A one-byte datagram is too short to claim an opcode.
        """
        assert decode_error(b"\x01").opcode is None

    def test_unknown_opcode(self):
        """
        An unknown opcode is refused, and the error carries it.
        """
        for opcode in [0, 7, 255, 256, 0xFFFF]:
            error = decode_error(opcode.to_bytes(2, "big") + b"f\x00octet\x00")
            assert error.opcode == opcode
            assert error.code == ErrorCode.ILLEGAL_OPERATION
            assert str(opcode) in error.reason

    def test_request_missing_nul(self):
        """
        An RRQ whose last string is not NUL-terminated is refused.
        """
        assert decode_error(b"\x00\x01f\x00octet").opcode == Opcode.RRQ

    def test_request_no_strings(self):
        """
        An RRQ with nothing after the opcode is refused.
        """
        assert decode_error(b"\x00\x01").opcode == Opcode.RRQ

    def test_request_without_mode(self):
        """
        An RRQ with a filename but no mode is refused.
        """
        assert decode_error(b"\x00\x01pxelinux.0\x00").opcode == Opcode.RRQ

    def test_empty_filename(self):
        """
        An RRQ with an empty filename is refused.
        """
        assert decode_error(b"\x00\x01\x00octet\x00").opcode == Opcode.RRQ

    def test_write_request_malformed(self):
        """
        A malformed WRQ is refused as a WRQ.
        """
        assert decode_error(b"\x00\x02f").opcode == Opcode.WRQ

    def test_ack_wrong_length(self):
        """
        An ACK that is not exactly four bytes long is refused.
        """
        for body in [b"", b"\x00", b"\x00\x01\x00"]:
            assert decode_error(b"\x00\x04" + body).opcode == Opcode.ACK, body

    def test_data_without_block(self):
        """
        DATA too short to hold a block number is refused.
        """
        assert decode_error(b"\x00\x03\x00").opcode == Opcode.DATA

    def test_error_without_code(self):
        """
        An ERROR too short to hold an error code is refused.
        """
        assert decode_error(b"\x00\x05\x00").opcode == Opcode.ERROR

    def test_option_ack_unterminated(self):
        """
        An OACK whose last string is not NUL-terminated is refused.
        """
        assert decode_error(b"\x00\x06blksize\x00512").opcode == Opcode.OACK

    def test_decode_error_is_value_error(self):
        """
        L{DecodeError} is a L{ValueError} whose text is its reason.
        """
        error = decode_error(b"\x00\x01f\x00")
        assert isinstance(error, ValueError)
        assert str(error) == error.reason
        assert error.reason


# -- properties ---------------------------------------------------------------


class RoundTripTests(SynchronousTestCase):
    """
    Every packet survives encoding and decoding unchanged.
    """

    @fast
    @given(filename=filenames, mode=modes, options=option_dicts)
    def test_read_request(self, filename, mode, options):
        """
        An RRQ with any printable filename, mode and options round-trips.
        """
        packet = ReadRequest(filename, mode, options)
        assert decode(packet.encode()) == packet

    @fast
    @given(filename=filenames, mode=modes, options=option_dicts)
    def test_write_request(self, filename, mode, options):
        """
        A WRQ with any printable filename, mode and options round-trips.
        """
        packet = WriteRequest(filename, mode, options)
        assert decode(packet.encode()) == packet

    @fast
    @given(filename=filenames, mode=modes, options=option_dicts)
    def test_request_case(self, filename, mode, options):
        """
        A request's mode and option names come back lower-cased, whatever
        case they were sent in.
        """
        packet = ReadRequest(
            filename,
            mode.upper(),
            {name.upper(): value for name, value in options.items()},
        )
        decoded = decode(packet.encode())
        assert decoded.mode == mode
        assert decoded.options == options

    @fast
    @given(block=blocks, payload=st.binary(max_size=1500))
    def test_data(self, block, payload):
        """
        DATA with any block number and payload round-trips, and is the DATA
        header followed by the payload.
        """
        encoded = Data(block, payload).encode()
        assert encoded == data_header(block) + payload
        assert decode(encoded) == Data(block, payload)

    @fast
    @given(block=blocks)
    def test_ack(self, block):
        """
        An ACK of any block number round-trips in four bytes.
        """
        encoded = Ack(block).encode()
        assert len(encoded) == 4
        assert decode(encoded) == Ack(block)

    @fast
    @given(code=st.integers(min_value=0, max_value=0xFFFF), message=messages)
    def test_error(self, code, message):
        """
        An ERROR with any code and NUL-free message round-trips.
        """
        assert decode(Error(code, message).encode()) == Error(code, message)

    @fast
    @given(options=option_dicts)
    def test_option_ack(self, options):
        """
        An OACK with any ASCII options round-trips.
        """
        assert decode(OptionAck(options).encode()) == OptionAck(options)


#: A datagram that starts like a real one: a known (or nearly known) opcode,
#: then NUL-separated runs of bytes, with or without the final NUL.
near_valid = st.builds(
    lambda opcode, strings, terminated, tail: (
        opcode.to_bytes(2, "big")
        + b"\0".join(strings)
        + (b"\0" if terminated else b"")
        + tail
    ),
    st.integers(min_value=0, max_value=8),
    st.lists(st.binary(max_size=8), max_size=8),
    st.booleans(),
    st.binary(max_size=4),
)


class RobustnessTests(SynchronousTestCase):
    """
    Nothing but L{DecodeError} ever escapes L{decode}, whatever the network
    delivers.
    """

    @staticmethod
    def check(datagram: bytes) -> None:
        try:
            packet = decode(datagram)
        except DecodeError as error:
            assert error.code == ErrorCode.ILLEGAL_OPERATION
            assert error.opcode is None or error.opcode == int.from_bytes(
                datagram[:2], "big"
            )
        else:
            assert packet.opcode == int.from_bytes(datagram[:2], "big")

    @settings(max_examples=200, deadline=None)
    @given(datagram=st.binary(max_size=64))
    def test_arbitrary_bytes(self, datagram):
        """
        Arbitrary bytes decode or raise L{DecodeError}.
        """
        self.check(datagram)

    @settings(max_examples=200, deadline=None)
    @given(datagram=near_valid)
    def test_near_valid(self, datagram):
        """
        Datagrams with a plausible opcode and NUL-separated strings decode
        or raise L{DecodeError}.
        """
        self.check(datagram)

    @fast
    @given(opcode=st.sampled_from([1, 2, 6]), body=st.binary(max_size=64))
    def test_string_packets(self, opcode, body):
        """
        An RRQ, WRQ or OACK with any body that ends in NUL and has enough
        strings decodes, with string fields that are always C{str}.
        """
        datagram = opcode.to_bytes(2, "big") + b"f\0m\0" + body + b"\0"
        packet = decode(datagram)
        if opcode != Opcode.OACK:
            assert isinstance(packet.filename, str)
            assert isinstance(packet.mode, str)
        assert all(
            isinstance(name, str) and name == name.lower() and isinstance(value, str)
            for name, value in packet.options.items()
        )

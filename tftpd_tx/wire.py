"""
TFTP packets to and from bytes (RFC 1350, RFC 2347).

This module is pure: no sockets, no clock, no Twisted.  Every packet kind is a
small immutable class with an C{encode()} method, and L{decode} turns any
datagram into one of them or raises L{DecodeError}, whose C{code} is the TFTP
error code a server should answer with.  Nothing else escapes L{decode}, which
is what makes it safe to call on whatever the network delivers.
"""

from __future__ import annotations

import enum
import functools
import struct
from dataclasses import dataclass, field

__all__ = [
    "Opcode",
    "ErrorCode",
    "DecodeError",
    "ReadRequest",
    "WriteRequest",
    "Data",
    "Ack",
    "Error",
    "OptionAck",
    "decode",
    "data_header",
    "ack_block",
    "is_error",
    "MAX_BLOCK",
]

#: The largest block number; what follows it depends on the rollover rule.
MAX_BLOCK = 0xFFFF

_HEADER = struct.Struct("!HH")
_OPCODE = struct.Struct("!H")


class Opcode(enum.IntEnum):
    """
    The packet kinds of RFC 1350 and RFC 2347.
    """

    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(enum.IntEnum):
    """
    The error codes of RFC 1350 section 5 and RFC 2347 (8).
    """

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


class DecodeError(ValueError):
    """
    A datagram is not a well-formed TFTP packet.

    @ivar code: the L{ErrorCode} to answer with (always
        L{ErrorCode.ILLEGAL_OPERATION}: RFC 1350 has no better one).
    @ivar opcode: the opcode the datagram claimed, or L{None} when it was too
        short to claim one; a server answers malformed requests and drops the
        rest.
    """

    code = ErrorCode.ILLEGAL_OPERATION

    def __init__(self, reason: str, opcode: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.opcode = opcode


def _split_strings(body: bytes, opcode: int) -> list[bytes]:
    """
    Split the NUL-terminated strings of a request or OACK body.

    @raise DecodeError: the body does not end with a NUL.
    """
    if not body.endswith(b"\0"):
        raise DecodeError("string not terminated by NUL", opcode)
    return body[:-1].split(b"\0")


@functools.lru_cache(maxsize=256)
def _option_text(raw: bytes) -> str:
    """
    The text of an option name or value, one copy for all the requests
    that send the same bytes.

    A request's options live as long as its transfer, and clients ask for
    much the same ones (C{blksize 1468}, C{tsize 0}): with thousands of
    transfers running, a copy of each string per request added up.  The
    cache is bounded, so a flood of options never seen before costs it no
    more than turning over.

    @raise UnicodeDecodeError: C{raw} is not ASCII.
    """
    return raw.decode("ascii")


def _options_from(strings: list[bytes], opcode: int) -> dict[str, str]:
    """
    Pair option names with values (RFC 2347).

    Names are case-insensitive, so they are lower-cased.  The first
    occurrence of a repeated option wins, and a trailing name without a value
    is dropped: both are client bugs a server should survive, not punish.
    Options that are not ASCII cannot be ones we know, and are skipped.
    """
    options: dict[str, str] = {}
    for index in range(0, len(strings) - 1, 2):
        try:
            # Lower-cased as bytes: for ASCII, the same as lower-casing the
            # text, and one cache entry for every spelling's result.
            name = _option_text(strings[index].lower())
            value = _option_text(strings[index + 1])
        except UnicodeDecodeError:
            continue
        if name and name not in options:
            options[name] = value
    return options


#: RFC 1350's modes, each one string for every request that names it: a
#: request's mode lives as long as its transfer.
_KNOWN_MODES = {mode.encode("ascii"): mode for mode in ("netascii", "octet", "mail")}


@dataclass(frozen=True)
class _Request:
    """
    The shared shape of RRQ and WRQ.

    @ivar filename: the path as the client sent it (UTF-8, with undecodable
        bytes replaced so that it is always printable and never matches a
        file it did not name).
    @ivar mode: the transfer mode, lower-cased (C{"octet"}, C{"netascii"},
        or whatever the client sent: the server decides what it supports).
    @ivar options: the RFC 2347 options, names lower-cased, values as sent.
    """

    filename: str
    mode: str
    options: dict[str, str] = field(default_factory=dict)

    opcode = Opcode.RRQ

    @classmethod
    def _decode(cls, body: bytes):
        strings = _split_strings(body, cls.opcode)
        if len(strings) < 2:
            raise DecodeError("request has no mode", cls.opcode)
        raw_name, raw_mode = strings[0], strings[1]
        if not raw_name:
            raise DecodeError("empty filename", cls.opcode)
        lowered = raw_mode.lower()
        mode = _KNOWN_MODES.get(lowered)
        if mode is None:
            mode = lowered.decode("ascii", "replace")
        filename = raw_name.decode("utf-8", "replace")
        return cls(filename, mode, _options_from(strings[2:], cls.opcode))

    def encode(self) -> bytes:
        parts = [self.filename.encode("utf-8"), self.mode.encode("ascii")]
        for name, value in self.options.items():
            parts += [name.encode("ascii"), value.encode("ascii")]
        return _OPCODE.pack(self.opcode) + b"\0".join(parts) + b"\0"


@dataclass(frozen=True)
class ReadRequest(_Request):
    """
    RRQ: the client wants to read C{filename}.
    """

    opcode = Opcode.RRQ


@dataclass(frozen=True)
class WriteRequest(_Request):
    """
    WRQ: the client wants to write C{filename}.
    """

    opcode = Opcode.WRQ


@dataclass(frozen=True)
class Data:
    """
    DATA: one block of the file.  A payload shorter than the block size ends
    the transfer.
    """

    block: int
    payload: bytes

    opcode = Opcode.DATA

    @classmethod
    def _decode(cls, body: bytes) -> Data:
        if len(body) < 2:
            raise DecodeError("DATA without block number", cls.opcode)
        return cls(_OPCODE.unpack_from(body)[0], body[2:])

    def encode(self) -> bytes:
        return data_header(self.block) + self.payload


@dataclass(frozen=True)
class Ack:
    """
    ACK: the client has everything up to and including C{block}.
    """

    block: int

    opcode = Opcode.ACK

    @classmethod
    def _decode(cls, body: bytes) -> Ack:
        if len(body) != 2:
            raise DecodeError("ACK is not 4 bytes long", cls.opcode)
        return cls(_OPCODE.unpack(body)[0])

    def encode(self) -> bytes:
        return _HEADER.pack(Opcode.ACK, self.block)


@dataclass(frozen=True)
class Error:
    """
    ERROR: the transfer is over, and why.
    """

    code: int
    message: str = ""

    opcode = Opcode.ERROR

    @classmethod
    def _decode(cls, body: bytes) -> Error:
        if len(body) < 2:
            raise DecodeError("ERROR without code", cls.opcode)
        (code,) = _OPCODE.unpack_from(body)
        # Many clients forget the terminating NUL; the message is only for
        # humans, so take what is there.
        message = body[2:].split(b"\0", 1)[0].decode("utf-8", "replace")
        return cls(code, message)

    def encode(self) -> bytes:
        message = self.message.encode("utf-8", "replace")
        return _HEADER.pack(Opcode.ERROR, self.code) + message + b"\0"


@dataclass(frozen=True)
class OptionAck:
    """
    OACK: the options the server accepted (RFC 2347), in the order given.
    """

    options: dict[str, str]

    opcode = Opcode.OACK

    @classmethod
    def _decode(cls, body: bytes) -> OptionAck:
        if not body:
            return cls({})
        return cls(_options_from(_split_strings(body, cls.opcode), cls.opcode))

    def encode(self) -> bytes:
        body = b"".join(
            name.encode("ascii") + b"\0" + value.encode("ascii") + b"\0"
            for name, value in self.options.items()
        )
        return _OPCODE.pack(Opcode.OACK) + body


_KINDS = {
    kind.opcode: kind
    for kind in (ReadRequest, WriteRequest, Data, Ack, Error, OptionAck)
}


def decode(datagram: bytes):
    """
    Parse one datagram.

    @return: a L{ReadRequest}, L{WriteRequest}, L{Data}, L{Ack}, L{Error} or
        L{OptionAck}.
    @raise DecodeError: for anything that is not one of those; no other
        exception escapes.
    """
    if len(datagram) < 2:
        raise DecodeError("datagram shorter than an opcode")
    (opcode,) = _OPCODE.unpack_from(datagram)
    kind = _KINDS.get(opcode)
    if kind is None:
        raise DecodeError(f"unknown opcode {opcode}", opcode)
    return kind._decode(bytes(datagram[2:]))


# Fast entry points for a transfer's per-packet path: one DATA header built
# and one ACK recognised per block, where decode() and the packet classes
# would cost more than the work they describe.  They agree with Data and
# Ack (tests/test_wire.py checks it).

_DATA_OPCODE = int(Opcode.DATA)
_ACK_OPCODE = int(Opcode.ACK)
_ERROR_PREFIX = _OPCODE.pack(Opcode.ERROR)
#: C{data_header(block)}: the four bytes that start a DATA packet for the
#: 16-bit C{block}.  A partial of the C{struct} packer, so that building a
#: header is one call into C and no Python frame: it is done once a block.
data_header = functools.partial(_HEADER.pack, _DATA_OPCODE)


def ack_block(datagram: bytes) -> int | None:
    """
    The block number of an ACK, or L{None} when C{datagram} is not one (a
    four-byte ACK is the only well-formed kind).
    """
    if len(datagram) == 4 and datagram[1] == _ACK_OPCODE and not datagram[0]:
        return (datagram[2] << 8) | datagram[3]
    return None


def is_error(datagram: bytes) -> bool:
    """
    Whether C{datagram} claims to be an ERROR (well-formed or not).
    """
    return datagram[:2] == _ERROR_PREFIX

"""
What a transfer serves: the request a handler sees, the response it returns,
and the errors it may raise.  The handler that serves a directory is in
L{tftpd_tx.filesystem}; the composable ones are in L{tftpd_tx.handlers}.

A handler is any object with C{get_response_data(request)}.  It returns an
object with C{read(n)}, C{size()} and C{close()} (see L{IResponseData}), or a
L{Deferred} that fires with one.  Handlers signal refusal by raising a
L{TFTPError} subclass; L{error_for} is the one place where any exception
becomes a TFTP error code and message.
"""

from __future__ import annotations

import errno
import posixpath
from dataclasses import dataclass, field

from zope.interface import Interface, implementer

from .wire import ErrorCode

__all__ = [
    "Request",
    "IResponseData",
    "IHandler",
    "TFTPError",
    "FileNotFound",
    "AccessViolation",
    "IllegalOperation",
    "error_for",
    "ResponseData",
    "BytesResponseData",
    "normalize_path",
]


@dataclass(frozen=True, slots=True)
class Request:
    """
    One read request, as a handler sees it.

    @ivar peer: the client's C{(host, port)}; IPv4 clients appear as plain
        IPv4 even on a dual-stack socket.
    @ivar local: the C{(host, port)} the request was sent to; on a wildcard
        listener this is the address the client used, not the wildcard.
    @ivar path: the path as the client sent it.
    @ivar normalized_path: L{normalize_path} of it: relative, C{/}-separated,
        no C{.} or empty parts.  It may still start with C{..}; the
        filesystem handler refuses those.
    @ivar mode: C{"octet"} or C{"netascii"}.
    @ivar options: the RFC 2347 options requested, names lower-cased.

    A running transfer keeps its request, so its fields live in slots: no
    dictionary for each of thousands.
    """

    peer: tuple[str, int]
    local: tuple[str, int]
    path: str
    normalized_path: str
    mode: str = "octet"
    options: dict[str, str] = field(default_factory=dict)


class IResponseData(Interface):
    """
    The content of one transfer, read a block at a time.
    """

    def read(n):
        """
        Return the next C{n} bytes, or a L{Deferred} firing with them.  Fewer
        than C{n} bytes (possibly none) means this is the end.
        """

    def size():
        """
        Return the total number of bytes, or L{None} if not known in advance
        (then the C{tsize} option is declined).
        """

    def close():
        """
        Release what the response holds; called exactly once, however the
        transfer ends.
        """


class IHandler(Interface):
    """
    Decides what each read request gets.
    """

    def get_response_data(request):
        """
        Return an L{IResponseData} for C{request} (a L{Request}), or a
        L{Deferred} (or coroutine) producing one, or raise a L{TFTPError}.
        """


class TFTPError(Exception):
    """
    A refusal that the client receives as a TFTP ERROR packet.

    @cvar code: the L{ErrorCode} sent.
    @ivar message: the text sent to the client.
    """

    code = ErrorCode.NOT_DEFINED
    default_message = "Error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message if message is not None else self.default_message
        super().__init__(self.message)


class FileNotFound(TFTPError):
    code = ErrorCode.FILE_NOT_FOUND
    default_message = "File not found"


class AccessViolation(TFTPError):
    code = ErrorCode.ACCESS_VIOLATION
    default_message = "Access violation"


class IllegalOperation(TFTPError):
    code = ErrorCode.ILLEGAL_OPERATION
    default_message = "Illegal TFTP operation"


_NOT_FOUND_ERRNOS = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP}
)


def error_for(exception: BaseException) -> tuple[int, str, bool]:
    """
    Map any exception to what the client is told.

    @return: C{(code, message, expected)}: the TFTP error code, the text for
        the client, and whether this is an ordinary refusal (C{True}) or a
        bug whose traceback the operator must see (C{False}).  Unexpected
        exceptions never reveal their text to the client.
    """
    if isinstance(exception, TFTPError):
        return int(exception.code), exception.message, True
    if isinstance(exception, (FileNotFoundError, NotADirectoryError)) or (
        isinstance(exception, OSError) and exception.errno in _NOT_FOUND_ERRNOS
    ):
        # The class test catches FileNotFoundError("...") raised by handler
        # code without an errno; the errno test catches ENAMETOOLONG.
        return ErrorCode.FILE_NOT_FOUND, "File not found", True
    if isinstance(exception, (PermissionError, IsADirectoryError)) or (
        isinstance(exception, OSError) and exception.errno == errno.ENXIO
    ):
        # ENXIO: a Unix socket (or a device without a driver) in the root.
        return ErrorCode.ACCESS_VIOLATION, "Access violation", True
    if isinstance(exception, OSError):
        return ErrorCode.NOT_DEFINED, "Cannot read file", True
    return ErrorCode.NOT_DEFINED, "Internal server error", False


@implementer(IResponseData)
class ResponseData:
    """
    A base class for responses: subclasses implement L{read} and, when they
    know it, L{size}; L{close} does nothing unless overridden.

    fbtftp's handlers and the framework's own docs speak of a
    C{ResponseData}; this is it, and L{tftpd_tx.compat.fbtftp} exports it
    under that name.  Every response tftpd_tx ships derives from it.  Any
    object that provides L{IResponseData} serves just as well: deriving from
    this one only saves writing the methods a response has no use for.

    It has no instance dictionary (its C{__slots__} is empty), so that a
    response that declares its own slots, as
    L{tftpd_tx.filesystem.FileResponseData} does, has none at all: a
    running transfer keeps its response.  A subclass without C{__slots__}
    has a dictionary as any class does.
    """

    __slots__ = ()

    def read(self, n: int):
        raise NotImplementedError(f"{type(self).__name__} must implement read(n)")

    def size(self) -> int | None:
        return None

    def close(self) -> None:
        pass


class BytesResponseData(ResponseData):
    """
    Serve bytes (or text, encoded as UTF-8) held in memory.
    """

    def __init__(self, content: bytes | str) -> None:
        if isinstance(content, str):
            content = content.encode("utf-8")
        self._content = memoryview(content)
        self._size = len(self._content)
        self._offset = 0

    def read(self, n: int) -> bytes:
        chunk = self._content[self._offset : self._offset + n]
        self._offset += len(chunk)
        return bytes(chunk)

    def size(self) -> int:
        # Remembered, not measured: a released memoryview has no length, and
        # statistics may ask after close().
        return self._size

    def close(self) -> None:
        self._content.release()


def normalize_path(path: str) -> str:
    """
    Turn a client's path into a relative, C{/}-separated path.

    Backslashes (Windows clients) become slashes and a leading slash (many
    boot ROMs send one) is dropped, so C{/pxelinux.0} and C{pxelinux.0} are
    the same file.  C{.} and empty parts vanish; C{..} parts are resolved
    where they can be, and a path that climbs above its start keeps a leading
    C{..} so that the caller can refuse it.
    """
    relative = path.replace("\\", "/").lstrip("/")
    normalized = posixpath.normpath(relative) if relative else ""
    if normalized == ".":
        return ""
    # Most paths are already normal: a request keeps both for as long as
    # its transfer runs, and then they are one string, not two.
    return path if normalized == path else normalized

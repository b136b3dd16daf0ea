"""
What a transfer serves: the request a handler sees, the response it returns,
the errors it may raise, and the filesystem handler that serves a root.

A handler is any object with C{get_response_data(request)}.  It returns an
object with C{read(n)}, C{size()} and C{close()} (see L{IResponseData}), or a
L{Deferred} that fires with one.  Handlers signal refusal by raising a
L{TFTPError} subclass; L{error_for} is the one place where any exception
becomes a TFTP error code and message.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
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
    "FileResponseData",
    "BytesResponseData",
    "FilesystemHandler",
    "normalize_path",
]


@dataclass(frozen=True)
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
class FileResponseData:
    """
    Serve an open file, read from its descriptor as the transfer asks (a
    fast transfer asks for many blocks at once: see
    L{tftpd_tx.session.READ_AHEAD}).

    @param fd: an open file descriptor, owned from now on (closed by
        L{close}).
    @param size: the file's size, when the caller has just learnt it from
        C{fstat}; otherwise it is asked for here.
    """

    def __init__(self, fd: int, size: int | None = None) -> None:
        self._fd = fd
        self._size = os.fstat(fd).st_size if size is None else size

    def read(self, n: int) -> bytes:
        return os.read(self._fd, n)

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@implementer(IResponseData)
class BytesResponseData:
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
    return "" if normalized == "." else normalized


def _escapes(normalized: str) -> bool:
    return normalized == ".." or normalized.startswith("../")


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0)


@implementer(IHandler)
class FilesystemHandler:
    """
    Serve the regular files under a root directory, read-only.

    Nothing outside the root is ever opened: paths that climb out with
    C{..}, and symbolic links whose target lies outside the root, are refused
    with an access violation before anything is opened.  Special files
    (devices, FIFOs, sockets) and directories are refused too; opening uses
    C{O_NONBLOCK} so that a FIFO cannot stall the server.

    @param root: the directory served.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def _open(self, normalized: str) -> int:
        """
        Open a normalized path under the root without ever opening anything
        outside it.

        The root is a real path and C{normalized} has no C{.} or C{..} parts,
        so unless a component is a symbolic link the joined path is already
        real: then the file is opened with C{O_NOFOLLOW} and nothing else is
        resolved (one system call per directory level, none for a file at
        the top).  A symbolic link anywhere sends the path through
        C{realpath} and a containment check before it is opened.

        @raise AccessViolation: the path leaves the root.
        @raise OSError: the file cannot be opened.
        """
        candidate = os.path.join(self.root, normalized)
        if not self._through_symlink(normalized):
            try:
                return os.open(candidate, _OPEN_FLAGS | os.O_NOFOLLOW)
            except OSError as error:
                if error.errno != errno.ELOOP:
                    raise
        real = os.path.realpath(candidate)
        if os.path.commonpath([self.root, real]) != self.root:
            raise AccessViolation("Path outside the served root")
        return os.open(real, _OPEN_FLAGS)

    def _through_symlink(self, normalized: str) -> bool:
        """
        Whether a directory on the way to C{normalized} is a symbolic link.
        """
        directory = self.root
        for part in normalized.split("/")[:-1]:
            directory = os.path.join(directory, part)
            if stat.S_ISLNK(os.lstat(directory).st_mode):
                return True
        return False

    def get_response_data(self, request: Request) -> FileResponseData:
        normalized = request.normalized_path
        if _escapes(normalized):
            raise AccessViolation("Path outside the served root")
        if not normalized or "\0" in normalized:
            raise FileNotFound()
        fd = self._open(normalized)
        try:
            status = os.fstat(fd)
            if stat.S_ISDIR(status.st_mode):
                raise FileNotFound("Is a directory")
            if not stat.S_ISREG(status.st_mode):
                raise AccessViolation("Not a regular file")
            return FileResponseData(fd, status.st_size)
        except BaseException:
            os.close(fd)
            raise

"""
Serving a directory: the regular files under a root, read-only, and nothing
outside it.
"""

from __future__ import annotations

import errno
import os
import stat

from zope.interface import implementer

from .content import AccessViolation, FileNotFound, IHandler, Request, ResponseData

__all__ = ["FileResponseData", "FilesystemHandler"]


class FileResponseData(ResponseData):
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

"""
Serving a directory: the regular files under a root, read-only, and nothing
outside it.

A path is resolved beneath the root as it is opened, never checked first and
opened after, so a directory or file swapped for a symbolic link at any
moment cannot lead a request outside.  Where the kernel has it (Linux 5.6 and
later), one C{openat2} system call with C{RESOLVE_BENEATH} does it
(L{open_beneath_openat2}); elsewhere a walk from the root's descriptor opens
one component at a time and follows symbolic links itself
(L{open_beneath_walk}).  L{open_beneath} is the one this system runs, chosen
once at import.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import posixpath
import stat
import sys
import weakref
from typing import Callable

from zope.interface import implementer

from .content import AccessViolation, FileNotFound, IHandler, Request, ResponseData

__all__ = [
    "FileResponseData",
    "FilesystemHandler",
    "open_beneath",
    "open_beneath_openat2",
    "open_beneath_walk",
    "openat2_available",
]

#: The most symbolic links one path may follow, as Linux allows.
MAX_SYMLINKS = 40

_OUTSIDE = "Path outside the served root"

#: Lookups need only search permission, as in any path resolution, so
#: directories are held with C{O_PATH} where there is one.
_DIRECTORY_FLAGS = (
    (getattr(os, "O_PATH", 0) or os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
)
_FILE_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | os.O_CLOEXEC
)

#: C{openat2}'s number on the architectures that share the generic table.
_SYS_OPENAT2 = 437
_GENERIC_SYSCALL_TABLE = frozenset(
    {
        "x86_64", "i386", "i686", "aarch64", "armv6l", "armv7l", "armv8l",
        "riscv64", "ppc64", "ppc64le", "s390x", "loongarch64",
    }
)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08

#: A function that opens a normalized path beneath a root: given the root's
#: descriptor, the root's real path and the path, it returns a descriptor.
Opener = Callable[[int, str, str], int]


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


_HOW = _OpenHow(_FILE_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
_HOW_ADDRESS = ctypes.addressof(_HOW)
_HOW_SIZE = ctypes.sizeof(_HOW)


def _libc_syscall():
    """
    libc's C{syscall()}, typed for C{openat2}, or L{None} where C{openat2}
    cannot be asked for by number.
    """
    if not sys.platform.startswith("linux"):
        return None
    if platform.machine() not in _GENERIC_SYSCALL_TABLE:
        return None
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    syscall.argtypes = [
        ctypes.c_long,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
    ]
    return syscall


_syscall = _libc_syscall()


def openat2_available(syscall=_syscall) -> bool:
    """
    Whether this kernel runs C{openat2} with C{RESOLVE_BENEATH}.

    It is asked once, with a descriptor that cannot be valid: a kernel that
    has the call refuses it with C{EBADF}, after checking the flags.  Too old
    a kernel answers C{ENOSYS}, a seccomp filter (a container's) C{EPERM} or
    C{ENOSYS}.

    @param syscall: libc's C{syscall()} typed for C{openat2}, or L{None}
        where there is none.
    """
    if syscall is None:
        return False
    refused = syscall(_SYS_OPENAT2, -1, b".", _HOW_ADDRESS, _HOW_SIZE) < 0
    return refused and ctypes.get_errno() == errno.EBADF


def open_beneath_openat2(root_fd: int, root: str, path: str) -> int:
    """
    Open C{path} beneath the directory C{root_fd} with one C{openat2}
    system call (C{RESOLVE_BENEATH}): the kernel follows symbolic links and
    refuses, as it resolves them, any that would leave the root.

    Those refusals (C{EXDEV}), and the retry C{openat2} asks for when a
    rename raced a C{..} lookup (C{EAGAIN}), are decided by
    L{open_beneath_walk}: C{RESOLVE_BENEATH} also refuses every absolute
    link, even one to a file inside the root, which is served.

    @param root_fd: a descriptor of the root directory.
    @param root: the root's real path (for absolute links).
    @param path: a normalized path: relative, without C{.}, C{..} or empty
        parts.
    @raise AccessViolation: the path leads outside the root.
    @raise OSError: the file cannot be opened.
    """
    fd = _syscall(_SYS_OPENAT2, root_fd, os.fsencode(path), _HOW_ADDRESS, _HOW_SIZE)
    if fd >= 0:
        return fd
    code = ctypes.get_errno()
    if code in (errno.EXDEV, errno.EAGAIN):
        return open_beneath_walk(root_fd, root, path)
    raise OSError(code, os.strerror(code), path)


def open_beneath_walk(root_fd: int, root: str, path: str) -> int:
    """
    Open C{path} beneath the directory C{root_fd}, one component at a time.

    Each directory is opened from the one before with C{O_NOFOLLOW}, and the
    file last with C{O_NOFOLLOW} and C{O_NONBLOCK}.  When a component turns
    out to be a symbolic link, its target replaces it and the walk goes on
    from where it stands: a C{..} steps back to the directory the walk came
    from, and refuses to step above the root; an absolute target must name
    a place under C{root}.  No lookup ever starts outside the root, whatever
    is renamed meanwhile.  A file at the top of the root takes one system
    call.

    @param root_fd: a descriptor of the root directory.
    @param root: the root's real path (for absolute links).
    @param path: a normalized path: relative, without C{.}, C{..} or empty
        parts.
    @raise AccessViolation: the path leads outside the root.
    @raise OSError: the file cannot be opened; C{ELOOP} after
        L{MAX_SYMLINKS} links.
    """
    pending = path.split("/")
    pending.reverse()
    directories = [root_fd]
    links = 0
    try:
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if len(directories) == 1:
                    raise AccessViolation(_OUTSIDE)
                os.close(directories.pop())
                continue
            last = not pending
            flags = (_FILE_FLAGS if last else _DIRECTORY_FLAGS) | os.O_NOFOLLOW
            try:
                fd = os.open(name, flags, dir_fd=directories[-1])
            except OSError as error:
                if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                try:
                    target = os.readlink(name, dir_fd=directories[-1])
                except OSError:
                    raise error from None
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path) from None
                if target.startswith("/"):
                    target = _under(root, target)
                    while len(directories) > 1:
                        os.close(directories.pop())
                pending.extend(reversed(target.split("/")))
                continue
            if last:
                return fd
            directories.append(fd)
        # The path ended on a directory (a link to one, or to "."): open it
        # as a file would be, and let the caller refuse it.
        return os.open(".", _FILE_FLAGS, dir_fd=directories[-1])
    finally:
        for fd in directories[1:]:
            os.close(fd)


def _under(root: str, target: str) -> str:
    """
    An absolute link target as a path relative to C{root}.

    @raise AccessViolation: the target is not under C{root}.
    """
    target = posixpath.normpath(target)
    if root == "/":
        return target.lstrip("/")
    if target == root:
        return ""
    if target.startswith(root + "/"):
        return target[len(root) + 1 :]
    raise AccessViolation(_OUTSIDE)


#: The opener this system runs: L{open_beneath_openat2} where the kernel has
#: C{openat2}, else L{open_beneath_walk}.
open_beneath: Opener = (
    open_beneath_openat2 if openat2_available() else open_beneath_walk
)


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

    # One per running transfer: no dictionary each.
    __slots__ = ("_fd", "_size")

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


@implementer(IHandler)
class FilesystemHandler:
    """
    Serve the regular files under a root directory, read-only.

    Nothing outside the root is ever opened: paths that climb out with
    C{..}, and symbolic links whose target lies outside the root, are
    refused with an access violation, and so are links swapped in while a
    request is being served: every path is resolved beneath the root as it
    is opened (see L{open_beneath}).  Links that stay inside the root are
    followed.  What was opened is checked before a byte is read: special
    files (devices, FIFOs, sockets) and directories are refused too, and
    opening uses C{O_NONBLOCK} so that a FIFO cannot stall the server.

    The root is opened once, here, and held: the handler keeps serving it
    after the process forks or drops its privileges (as C{twistd -u}
    does), and a root renamed or replaced later is not followed.

    @ivar root: the real path of the directory served.
    @param root: the directory served.
    @param opener: how paths are opened beneath the root: L{open_beneath}
        unless told otherwise (L{open_beneath_walk} runs everywhere).
    @raise OSError: C{root} is not a directory that can be opened.
    """

    def __init__(self, root: str, opener: Opener = open_beneath) -> None:
        self.root = os.path.realpath(root)
        self._root_fd = os.open(self.root, _DIRECTORY_FLAGS)
        weakref.finalize(self, os.close, self._root_fd)
        self._opener = opener

    def get_response_data(self, request: Request) -> FileResponseData:
        normalized = request.normalized_path
        if _escapes(normalized):
            raise AccessViolation(_OUTSIDE)
        if not normalized or "\0" in normalized:
            raise FileNotFound()
        fd = self._opener(self._root_fd, self.root, normalized)
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

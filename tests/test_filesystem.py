"""
Tests for L{tftpd_tx.filesystem}: the filesystem handler serves the regular
files under its root and nothing else, through C{openat2} and through the
walk alike, and L{FileResponseData} serves an open descriptor.

The same paths raced by a symbolic link swapped in and out while the real
server answers are in C{test_filesystem_race.py}.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import socket
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx.content import Request, error_for, normalize_path
from tftpd_tx.filesystem import (
    MAX_SYMLINKS,
    FileResponseData,
    FilesystemHandler,
    open_beneath,
    open_beneath_openat2,
    open_beneath_walk,
    openat2_available,
)
from tftpd_tx.wire import ErrorCode


def request(path: str) -> Request:
    """
    A read request for C{path} as the server builds it.
    """
    return Request(
        peer=("127.0.0.1", 1),
        local=("127.0.0.1", 69),
        path=path,
        normalized_path=normalize_path(path),
    )


def write(path: str, content: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


class FilesystemHandlerTests(SynchronousTestCase):
    """
    L{FilesystemHandler} serves the regular files under its root and nothing
    else, here with the opener this system runs (L{open_beneath}).
    """

    #: How the handlers under test open paths beneath their root.
    opener = staticmethod(open_beneath)

    def setUp(self):
        self.top = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.top)
        self.root = os.path.join(self.top, "root")
        write(
            os.path.join(self.root, "boot", "pxelinux.cfg", "default"),
            b"DEFAULT linux\n",
        )
        write(os.path.join(self.root, "pxelinux.0"), b"\x7fELF" + b"\0" * 100)
        write(os.path.join(self.top, "x"), b"outside the root")
        write(os.path.join(self.top, "secret", "key"), b"outside too")
        self.handler = FilesystemHandler(self.root, opener=self.opener)

    def served(self, path: str) -> bytes:
        """
        The whole content served for C{path}.
        """
        response = self.handler.get_response_data(request(path))
        try:
            content = response.read(1 << 20)
            assert len(content) == response.size()
            return content
        finally:
            response.close()

    def refusal(self, path: str) -> tuple[int, str, bool]:
        """
        What the client is told when C{path} is refused.
        """
        try:
            response = self.handler.get_response_data(request(path))
        except Exception as exc:
            return error_for(exc)
        response.close()
        self.fail(f"{path!r} was served")

    def assert_access_violation(self, path: str) -> None:
        code, _, expected = self.refusal(path)
        assert (code, expected) == (ErrorCode.ACCESS_VIOLATION, True), path

    def assert_not_found(self, path: str) -> None:
        code, _, expected = self.refusal(path)
        assert (code, expected) == (ErrorCode.FILE_NOT_FOUND, True), path

    def test_nested_file(self):
        """
        A file in a subdirectory is served whole, with its size.
        """
        assert self.served("boot/pxelinux.cfg/default") == b"DEFAULT linux\n"

    def test_client_spellings(self):
        """
        Leading slashes, backslashes and C{.} parts name the same file.
        """
        for path in [
            "/boot/pxelinux.cfg/default",
            "boot\\pxelinux.cfg\\default",
            "./boot//pxelinux.cfg/./default",
        ]:
            assert self.served(path) == b"DEFAULT linux\n", path

    def test_dot_dot_inside(self):
        """
        C{..} that stays inside the root is served.
        """
        assert self.served("boot/../pxelinux.0").startswith(b"\x7fELF")

    def test_root_is_resolved(self):
        """
        A root given through a symbolic link serves the same files.
        """
        link = os.path.join(self.top, "root-link")
        os.symlink(self.root, link)
        handler = FilesystemHandler(link, opener=self.opener)
        response = handler.get_response_data(request("pxelinux.0"))
        self.addCleanup(response.close)
        assert response.size() == 104

    def test_climbing_out(self):
        """
        Paths that climb out of the root are refused with an access
        violation, even when the file they name exists.
        """
        for path in [
            "../x",
            "sub/../../x",
            "..\\..\\x",
            "..",
            "../root/pxelinux.0",
            "/../x",
        ]:
            self.assert_access_violation(path)

    def test_absolute_path_inside_root(self):
        """
        C{/etc/passwd} names C{etc/passwd} under the root, not the system's.
        """
        self.assert_not_found("/etc/passwd")
        write(os.path.join(self.root, "etc", "passwd"), b"root's own")
        assert self.served("/etc/passwd") == b"root's own"

    def test_symlink_outside(self):
        """
        A symbolic link inside the root to a file outside it is refused.
        """
        os.symlink(os.path.join(self.top, "x"), os.path.join(self.root, "escape"))
        os.symlink("../x", os.path.join(self.root, "relative-escape"))
        self.assert_access_violation("escape")
        self.assert_access_violation("relative-escape")

    def test_symlink_inside(self):
        """
        A symbolic link inside the root to a file inside it is served.
        """
        os.symlink("boot/pxelinux.cfg/default", os.path.join(self.root, "alias"))
        assert self.served("alias") == b"DEFAULT linux\n"

    def test_symlinked_directory_outside(self):
        """
        A file reached through a linked directory that points outside the
        root is refused.
        """
        os.symlink(os.path.join(self.top, "secret"), os.path.join(self.root, "linked"))
        self.assert_access_violation("linked/key")

    def test_symlinked_directory_inside(self):
        """
        A file reached through a linked directory inside the root is served.
        """
        os.symlink("boot", os.path.join(self.root, "b"))
        assert self.served("b/pxelinux.cfg/default") == b"DEFAULT linux\n"

    def test_absolute_symlink_inside(self):
        """
        An absolute symbolic link to a file inside the root is served, like
        a relative one.
        """
        os.symlink(
            os.path.join(self.root, "boot", "pxelinux.cfg", "default"),
            os.path.join(self.root, "absolute"),
        )
        os.symlink(os.path.join(self.root, "boot"), os.path.join(self.root, "b"))
        assert self.served("absolute") == b"DEFAULT linux\n"
        assert self.served("b/pxelinux.cfg/default") == b"DEFAULT linux\n"

    def test_symlink_climbing_back_in(self):
        """
        A link whose target climbs with C{..} is served as long as it never
        climbs above the root, and refused when it does, even to come back
        in.
        """
        os.symlink("../pxelinux.0", os.path.join(self.root, "boot", "up"))
        os.symlink("../../x", os.path.join(self.root, "boot", "out"))
        os.symlink("../root/pxelinux.0", os.path.join(self.root, "back-in"))
        assert self.served("boot/up").startswith(b"\x7fELF")
        self.assert_access_violation("boot/out")
        self.assert_access_violation("back-in")

    def test_symlink_chain(self):
        """
        A chain of links inside the root is followed up to the kernel's
        limit of L{MAX_SYMLINKS} links, and is not found beyond it; so is a
        loop of links.
        """
        previous = "pxelinux.0"
        for n in range(1, MAX_SYMLINKS + 2):
            os.symlink(previous, os.path.join(self.root, f"link{n}"))
            previous = f"link{n}"
        assert self.served(f"link{MAX_SYMLINKS}").startswith(b"\x7fELF")
        self.assert_not_found(f"link{MAX_SYMLINKS + 1}")
        os.symlink("loop-b", os.path.join(self.root, "loop-a"))
        os.symlink("loop-a", os.path.join(self.root, "loop-b"))
        self.assert_not_found("loop-a")
        self.assert_not_found("loop-a/file")

    def test_symlink_to_directory(self):
        """
        A link to a directory, the root included, is a directory: not found.
        """
        os.symlink("boot", os.path.join(self.root, "to-boot"))
        os.symlink(".", os.path.join(self.root, "here"))
        os.symlink("boot/..", os.path.join(self.root, "up-again"))
        for path in ["to-boot", "here", "up-again"]:
            code, message, _ = self.refusal(path)
            assert (code, message) == (ErrorCode.FILE_NOT_FOUND, "Is a directory"), path

    def test_missing(self):
        """
        A file that does not exist is not found.
        """
        self.assert_not_found("nothing-here")
        self.assert_not_found("boot/nothing/here")

    def test_file_as_directory(self):
        """
        A path through a regular file is not found.
        """
        self.assert_not_found("pxelinux.0/more")

    def test_directory(self):
        """
        A directory, or the root itself, is not found: there is no file to
        serve.
        """
        for path in ["boot", "boot/pxelinux.cfg/", "", "/", "."]:
            self.assert_not_found(path)

    def test_fifo(self):
        """
        A FIFO is refused as an access violation, without waiting for a
        writer.
        """
        os.mkfifo(os.path.join(self.root, "fifo"))

        def hung(signum, frame):
            raise AssertionError("opening a FIFO blocked")

        previous = signal.signal(signal.SIGALRM, hung)
        signal.alarm(5)
        try:
            self.assert_access_violation("fifo")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    def test_device(self):
        """
        A device file inside the root (here, a link to C{/dev/null} that
        resolves outside it) is refused.
        """
        os.symlink("/dev/null", os.path.join(self.root, "null"))
        self.assert_access_violation("null")

    def test_socket(self):
        """
        A Unix socket inside the root is refused as an access violation.
        """
        listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(listening.close)
        listening.bind(os.path.join(self.root, "sock"))
        self.assert_access_violation("sock")

    def test_long_name(self):
        """
        A name too long for the filesystem is not found, not an unexpected
        error.
        """
        self.assert_not_found("a" * 5000)
        self.assert_not_found("/".join(["abcdefgh"] * 600))

    def test_unreadable(self):
        """
        A file the server may not read is an access violation.
        """
        if os.geteuid() == 0:
            raise self.skipTest("root reads every file")
        path = os.path.join(self.root, "private")
        write(path, b"x")
        os.chmod(path, 0)
        self.assert_access_violation("private")

    def test_does_not_leak_descriptors(self):
        """
        Serving, or refusing a directory, a FIFO or a path through links,
        leaves no descriptor open but the response's, closed with it.
        """
        os.mkfifo(os.path.join(self.root, "fifo"))
        os.symlink(os.path.join(self.top, "secret"), os.path.join(self.root, "linked"))
        os.symlink("boot", os.path.join(self.root, "b"))
        os.symlink("../..", os.path.join(self.root, "boot", "pxelinux.cfg", "top"))
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            self.refusal("boot")
            self.refusal("fifo")
            self.refusal("linked/key")
            self.refusal("b/pxelinux.cfg/top/x")
            self.refusal("b/pxelinux.cfg/missing/x")
            self.served("b/pxelinux.cfg/default")
        assert len(os.listdir("/proc/self/fd")) == before

    def test_root_held_open(self):
        """
        The root is opened when the handler is made and held: renamed later,
        it is still the directory served.
        """
        moved = os.path.join(self.top, "moved")
        os.rename(self.root, moved)
        os.mkdir(self.root)
        write(os.path.join(self.root, "pxelinux.0"), b"the new root")
        assert self.served("pxelinux.0").startswith(b"\x7fELF")

    def test_after_fork(self):
        """
        A handler made before the process forks (as C{twistd} does to
        daemonize) serves in the child.
        """
        reading, writing = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                os.close(reading)
                os.write(writing, self.served("boot/pxelinux.cfg/default"))
            finally:
                os._exit(0)
        os.close(writing)
        with os.fdopen(reading, "rb") as pipe:
            received = pipe.read()
        os.waitpid(child, 0)
        assert received == b"DEFAULT linux\n"

    def test_missing_root(self):
        """
        A root that is not a directory is refused when the handler is made.
        """
        with self.assertRaises(FileNotFoundError):
            FilesystemHandler(os.path.join(self.top, "nowhere"), opener=self.opener)
        with self.assertRaises(NotADirectoryError):
            FilesystemHandler(os.path.join(self.top, "x"), opener=self.opener)


class WalkTests(FilesystemHandlerTests):
    """
    The same, with the walk of L{open_beneath_walk} that runs where the
    kernel has no C{openat2}.
    """

    opener = staticmethod(open_beneath_walk)


class Openat2Tests(FilesystemHandlerTests):
    """
    The same, with L{open_beneath_openat2}, where the kernel has it.
    """

    opener = staticmethod(open_beneath_openat2)
    if not openat2_available():
        skip = "this kernel has no openat2"


class OpenerChoiceTests(SynchronousTestCase):
    """
    L{open_beneath} is C{openat2} where the kernel runs it, else the walk:
    L{openat2_available} asks the kernel once.
    """

    def refusing_with(self, code: int):
        """
        A stand-in for libc's C{syscall()} that fails with C{code}.
        """

        def syscall(*arguments):
            ctypes.set_errno(code)
            return -1

        return syscall

    def test_chosen(self):
        """
        C{openat2} is used wherever the kernel runs it.
        """
        expected = open_beneath_openat2 if openat2_available() else open_beneath_walk
        assert open_beneath is expected

    def test_kernel_has_it(self):
        """
        A kernel that checks the descriptor (C{EBADF} for the probe's invalid
        one) has C{openat2}.
        """
        assert openat2_available(self.refusing_with(errno.EBADF))

    def test_kernel_lacks_it(self):
        """
        C{ENOSYS} (a kernel before 5.6), C{EPERM} (a seccomp filter), any
        other refusal, or no C{syscall()} at all, mean the walk.
        """
        for code in [errno.ENOSYS, errno.EPERM, errno.EINVAL]:
            assert not openat2_available(self.refusing_with(code)), code
        assert not openat2_available(None)


class FileResponseDataTests(SynchronousTestCase):
    """
    L{FileResponseData} serves an open file descriptor and owns it.
    """

    def setUp(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.path = os.path.join(directory, "f")
        self.content = bytes(range(256)) * 4 + b"tail"
        write(self.path, self.content)

    def open(self) -> tuple[int, FileResponseData]:
        fd = os.open(self.path, os.O_RDONLY)
        return fd, FileResponseData(fd)

    def test_blocks(self):
        """
        Reads return the file a block at a time; the last is short, then
        empty.
        """
        fd, response = self.open()
        self.addCleanup(response.close)
        blocks = [response.read(512) for _ in range(4)]
        assert blocks == [self.content[:512], self.content[512:1024], b"tail", b""]

    def test_reads_of_any_size_reproduce_the_file(self):
        """
        Reads of mixed sizes, as a transfer that reads ahead makes them,
        return the file in order and then nothing.
        """
        content = os.urandom(3 * 16384 + 77)
        write(self.path, content)
        fd, response = self.open()
        self.addCleanup(response.close)
        sizes = [1468] * 20 + [16384 + 5] + [1468] * 30
        expected, offset = [], 0
        for n in sizes:
            expected.append(content[offset : offset + n])
            offset += n
        assert [response.read(n) for n in sizes] == expected
        assert response.read(512) == b""

    def test_size(self):
        """
        The size is the file's, from the descriptor.
        """
        fd, response = self.open()
        self.addCleanup(response.close)
        assert response.size() == len(self.content) == 1028

    def test_close(self):
        """
        Closing closes the descriptor.
        """
        fd, response = self.open()
        response.close()
        with self.assertRaises(OSError) as caught:
            os.fstat(fd)
        assert caught.exception.errno == errno.EBADF

    def test_close_twice(self):
        """
        Closing again does nothing (and closes no descriptor opened since).
        """
        fd, response = self.open()
        response.close()
        other = os.open(self.path, os.O_RDONLY)
        try:
            response.close()
            os.fstat(other)
        finally:
            os.close(other)

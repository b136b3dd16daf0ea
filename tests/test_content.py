"""
Tests for L{tftpd_tx.content}: paths, the filesystem handler, responses and
the mapping of exceptions to TFTP errors.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx.content import (
    AccessViolation,
    BytesResponseData,
    FileNotFound,
    IllegalOperation,
    Request,
    TFTPError,
    error_for,
    normalize_path,
)
from tftpd_tx.filesystem import FileResponseData, FilesystemHandler
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


class NormalizePathTests(SynchronousTestCase):
    """
    L{normalize_path} makes a client's path relative and C{/}-separated,
    keeping a leading C{..} when it climbs out.
    """

    def check(self, cases: dict[str, str]) -> None:
        for path, expected in cases.items():
            assert normalize_path(path) == expected, path

    def test_plain(self):
        """
        A plain relative path is unchanged.
        """
        self.check(
            {"pxelinux.0": "pxelinux.0", "boot/grub/grub.cfg": "boot/grub/grub.cfg"}
        )

    def test_leading_slashes(self):
        """
        Leading slashes are dropped, so an absolute path names the same file
        as a relative one.
        """
        self.check({"/pxelinux.0": "pxelinux.0", "///boot/x": "boot/x"})

    def test_backslashes(self):
        """
        Backslashes, as Windows clients send, become slashes.
        """
        self.check({"boot\\x86\\pxe.0": "boot/x86/pxe.0", "\\pxe.0": "pxe.0"})

    def test_dot_and_empty_parts(self):
        """
        C{.} and empty parts vanish.
        """
        self.check({"./a/./b/": "a/b", "a//b": "a/b", "a/.//./b": "a/b"})

    def test_nothing(self):
        """
        Paths naming no file normalize to the empty string.
        """
        self.check({"": "", "/": "", ".": "", "./": "", "\\": "", "a/..": ""})

    def test_dot_dot_inside(self):
        """
        C{..} that stays inside is resolved.
        """
        self.check({"a/../b": "b", "a/b/../../c": "c", "a\\..\\b": "b"})

    def test_dot_dot_escaping(self):
        """
        C{..} that climbs above the start is kept at the front.
        """
        self.check(
            {
                "..": "..",
                "../x": "../x",
                "sub/../../x": "../x",
                "..\\..\\x": "../../x",
                "/../x": "../x",
                "a/../../../b/c": "../../b/c",
            }
        )

    @settings(max_examples=200, deadline=None)
    @given(
        path=st.lists(
            st.sampled_from(["a", "b", ".", "..", "", "x.y", "\\", "/", "..."]),
            max_size=12,
        ).map("/".join)
    )
    def test_shape(self, path):
        """
        Any path normalizes to a relative, C{/}-separated path whose only
        C{..} parts lead it, with no C{.} or empty parts; normalizing again
        changes nothing.
        """
        normalized = normalize_path(path)
        assert not normalized.startswith("/")
        assert "\\" not in normalized
        parts = normalized.split("/") if normalized else []
        assert "." not in parts and "" not in parts
        climbing = 0
        while climbing < len(parts) and parts[climbing] == "..":
            climbing += 1
        assert ".." not in parts[climbing:]
        assert normalize_path(normalized) == normalized


class FilesystemHandlerTests(SynchronousTestCase):
    """
    L{FilesystemHandler} serves the regular files under its root and nothing
    else.
    """

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
        self.handler = FilesystemHandler(self.root)

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
        handler = FilesystemHandler(link)
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
        Refusing a directory or a FIFO closes the descriptor it opened.
        """
        os.mkfifo(os.path.join(self.root, "fifo"))
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            self.refusal("boot")
            self.refusal("fifo")
        assert len(os.listdir("/proc/self/fd")) == before


class ErrorForTests(SynchronousTestCase):
    """
    L{error_for} decides what the client is told about any exception, and
    never tells it the text of an unexpected one.
    """

    def test_tftp_errors(self):
        """
        A L{TFTPError} is sent with its code and message.
        """
        assert error_for(FileNotFound()) == (1, "File not found", True)
        assert error_for(AccessViolation("Not today")) == (2, "Not today", True)
        assert error_for(IllegalOperation()) == (4, "Illegal TFTP operation", True)
        assert error_for(TFTPError()) == (0, "Error", True)

    def test_tftp_error_subclass(self):
        """
        A handler's own L{TFTPError} subclass is sent with its code.
        """

        class DiskFull(TFTPError):
            code = ErrorCode.DISK_FULL
            default_message = "Disk full"

        assert error_for(DiskFull()) == (3, "Disk full", True)
        assert error_for(DiskFull("Quota")) == (3, "Quota", True)

    def test_not_found(self):
        """
        Missing files, paths through files and names too long are not found.
        """
        for exc in [
            FileNotFoundError(errno.ENOENT, "No such file", "/srv/tftp/x"),
            NotADirectoryError(errno.ENOTDIR, "Not a directory"),
            OSError(errno.ENAMETOOLONG, "File name too long"),
            FileNotFoundError("raised by a handler, without an errno"),
            NotADirectoryError(),
        ]:
            assert error_for(exc) == (1, "File not found", True), exc

    def test_access(self):
        """
        Permission errors and directories are access violations.
        """
        for exc in [
            PermissionError(errno.EACCES, "Permission denied"),
            PermissionError(errno.EPERM, "Operation not permitted"),
            PermissionError("no errno"),
            IsADirectoryError(errno.EISDIR, "Is a directory"),
        ]:
            assert error_for(exc) == (2, "Access violation", True), exc

    def test_other_os_error(self):
        """
        Any other L{OSError} is an expected failure to read, sent with a
        generic message that hides the path and the reason.
        """
        code, message, expected = error_for(
            OSError(errno.EIO, "Input/output error", "/srv/tftp/secret")
        )
        assert (code, message, expected) == (0, "Cannot read file", True)

    def test_unexpected(self):
        """
        Any other exception is a bug: code 0, a generic message without the
        exception's text, and not expected (so its traceback is logged).
        """
        code, message, expected = error_for(ValueError("password=hunter2"))
        assert (code, expected) == (0, False)
        assert message == "Internal server error"
        assert "hunter2" not in message


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


class BytesResponseDataTests(SynchronousTestCase):
    """
    L{BytesResponseData} serves bytes or text held in memory.
    """

    def test_bytes(self):
        """
        Bytes are served a block at a time.
        """
        response = BytesResponseData(b"0123456789")
        assert response.size() == 10
        assert [response.read(4) for _ in range(4)] == [b"0123", b"4567", b"89", b""]

    def test_text(self):
        """
        Text is served encoded as UTF-8, and its size counts bytes.
        """
        response = BytesResponseData("h\u00e9llo \u2603")
        assert response.size() == len("h\u00e9llo \u2603".encode("utf-8")) == 10
        assert response.read(100) == "h\u00e9llo \u2603".encode("utf-8")

    def test_empty(self):
        """
        Empty content is one empty read.
        """
        response = BytesResponseData(b"")
        assert (response.size(), response.read(512)) == (0, b"")

    def test_reads_are_bytes(self):
        """
        Reads return C{bytes}, not views of the content.
        """
        assert type(BytesResponseData(bytearray(b"abc")).read(2)) is bytes

    def test_close(self):
        """
        Closing may be repeated, and the size stays known after it (for
        statistics gathered at the end of a transfer).
        """
        response = BytesResponseData(b"abc")
        response.close()
        response.close()
        assert response.size() == 3

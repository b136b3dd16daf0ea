"""
Tests for L{tftpd_tx.content}: paths, in-memory responses and the mapping of
exceptions to TFTP errors.  The filesystem handler's are in
C{test_filesystem.py}.
"""

from __future__ import annotations

import errno

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx.content import (
    AccessViolation,
    BytesResponseData,
    FileNotFound,
    IllegalOperation,
    TFTPError,
    error_for,
    normalize_path,
)
from tftpd_tx.wire import ErrorCode


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

    def test_normal_path_is_the_path(self):
        """
        A path that is already normal is returned as it is, not as a copy:
        a request keeps both for as long as its transfer runs.
        """
        path = "".join(["boot/", "pxelinux.0"])
        self.assertIs(normalize_path(path), path)

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

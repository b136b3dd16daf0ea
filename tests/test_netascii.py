"""
Tests for L{tftpd_tx.netascii}: octets to netascii (RFC 1350, RFC 764), one
block at a time.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx.content import BytesResponseData
from tftpd_tx.netascii import NetasciiResponseData, to_netascii


def reference(data: bytes) -> bytes:
    """
    Netascii byte by byte: every LF is sent as CR LF and every CR as CR NUL;
    everything else is itself.
    """
    table = {ord("\n"): b"\r\n", ord("\r"): b"\r\0"}
    return b"".join(table.get(byte, bytes([byte])) for byte in data)


def read_all(response, n: int) -> list[bytes]:
    """
    Read synchronous C{response} C{n} bytes at a time up to and including
    the first short block.
    """
    blocks = []
    while True:
        block = response.read(n)
        blocks.append(block)
        if len(block) < n:
            return blocks


class ClosingBytes(BytesResponseData):
    """
    Bytes that remember being closed and how often they were read.
    """

    closed = False
    reads = 0

    def read(self, n):
        self.reads += 1
        return super().read(n)

    def close(self):
        self.closed = True
        super().close()


class SucceedingBytes(ClosingBytes):
    """
    Bytes read through already-fired L{Deferred}s.
    """

    def read(self, n):
        return succeed(super().read(n))


class LaterBytes:
    """
    Content whose reads return L{Deferred}s that the test fires.

    @ivar asked: one C{(n, deferred)} per read, in order.
    """

    def __init__(self):
        self.asked = []
        self.cancelled = 0

    def read(self, n):
        d = Deferred(lambda _: self._cancel())
        self.asked.append((n, d))
        return d

    def _cancel(self):
        self.cancelled += 1

    def size(self):
        return 1234

    def close(self):
        pass


class ScriptedReads:
    """
    Content that answers each read with the next of the given chunks, even
    after a short one (as a buggy handler might).
    """

    def __init__(self, *chunks: bytes):
        self.chunks = list(chunks)
        self.reads = 0

    def read(self, n):
        self.reads += 1
        return self.chunks.pop(0) if self.chunks else b""

    def size(self):
        return None

    def close(self):
        pass


#: Content rich in line ends, so that conversions land on block edges.
texts = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.sampled_from([b"\r", b"\n", b"\r\n", b"\n\r", b"a", b"bc", b"\0"]),
        max_size=120,
    ).map(b"".join),
)


class ToNetasciiTests(SynchronousTestCase):
    """
    L{to_netascii} converts a local file's octets to netascii.
    """

    def test_plain_text_unchanged(self):
        """
        Text without CR or LF is unchanged.
        """
        assert to_netascii(b"hello, world\t\0\xff") == b"hello, world\t\0\xff"

    def test_empty(self):
        """
        Nothing converts to nothing.
        """
        assert to_netascii(b"") == b""

    def test_lf(self):
        """
        LF becomes CR LF.
        """
        assert to_netascii(b"one\ntwo\n") == b"one\r\ntwo\r\n"

    def test_lone_cr(self):
        """
        A CR becomes CR NUL.
        """
        assert to_netascii(b"one\rtwo") == b"one\r\0two"

    def test_crlf(self):
        """
        A file's CR LF is a CR followed by a LF, each converted: CR NUL CR
        LF.  Receivers turn that back into the CR LF the file had.
        """
        assert to_netascii(b"dos\r\nline") == b"dos\r\0\r\nline"

    def test_runs(self):
        """
        Runs of line ends convert byte by byte.
        """
        assert to_netascii(b"\n\n") == b"\r\n\r\n"
        assert to_netascii(b"\r\r") == b"\r\0\r\0"
        assert to_netascii(b"\n\r") == b"\r\n\r\0"
        assert to_netascii(b"\r\n\r\n") == b"\r\0\r\n\r\0\r\n"

    @settings(max_examples=200, deadline=None)
    @given(data=texts)
    def test_byte_by_byte(self, data):
        """
        The conversion is the byte-by-byte mapping.
        """
        assert to_netascii(data) == reference(data)

    @settings(max_examples=200, deadline=None)
    @given(data=texts, cut=st.integers(min_value=0))
    def test_chunks_independent(self, data, cut):
        """
        Converting in two chunks, cut anywhere, gives the same bytes as
        converting at once: no state carries across chunks.
        """
        cut %= len(data) + 1
        assert to_netascii(data[:cut]) + to_netascii(data[cut:]) == to_netascii(data)


class NetasciiResponseDataTests(SynchronousTestCase):
    """
    L{NetasciiResponseData} yields the netascii form of another response in
    blocks of exactly the size asked, the last one short.
    """

    def test_blocks(self):
        """
        Each read returns exactly C{n} converted bytes until the last, which
        is short.
        """
        response = NetasciiResponseData(BytesResponseData(b"ab\ncd\nef\n"))
        assert read_all(response, 4) == [b"ab\r\n", b"cd\r\n", b"ef\r\n", b""]

    def test_straddles_block(self):
        """
        When a CR LF produced from one LF falls across a block boundary, the
        CR ends one block and the LF starts the next.
        """
        response = NetasciiResponseData(BytesResponseData(b"abc\nde"))
        assert read_all(response, 4) == [b"abc\r", b"\nde"]

    def test_cr_nul_straddles_block(self):
        """
        A CR NUL produced from one CR may fall across a block boundary too.
        """
        response = NetasciiResponseData(BytesResponseData(b"xyz\rw"))
        assert read_all(response, 4) == [b"xyz\r", b"\0w"]

    def test_growth(self):
        """
        Content that doubles in size still comes out in blocks of C{n}.
        """
        response = NetasciiResponseData(BytesResponseData(b"\n" * 10))
        assert read_all(response, 8) == [b"\r\n" * 4, b"\r\n" * 4, b"\r\n" * 2]

    def test_exact_multiple(self):
        """
        When the converted length is a multiple of C{n}, an empty block ends
        the stream.
        """
        response = NetasciiResponseData(BytesResponseData(b"abc\n"))
        assert read_all(response, 5) == [b"abc\r\n", b""]

    def test_empty(self):
        """
        Empty content is one empty block.
        """
        assert read_all(NetasciiResponseData(BytesResponseData(b"")), 512) == [b""]

    def test_size_unknown(self):
        """
        The converted size is not known in advance, even when the wrapped
        response's is, so C{size()} is L{None} (and tsize is declined).
        """
        inner = BytesResponseData(b"a\nb\n")
        assert inner.size() == 4
        assert NetasciiResponseData(inner).size() is None

    def test_close(self):
        """
        Closing the netascii response closes the wrapped one.
        """
        inner = ClosingBytes(b"data")
        NetasciiResponseData(inner).close()
        assert inner.closed

    def test_short_read_ends_stream(self):
        """
        After the wrapped response returns a short read it is not read
        again: the stream has ended.
        """
        inner = ScriptedReads(b"ab", b"MORE DATA AFTER THE END")
        response = NetasciiResponseData(inner)
        assert response.read(4) == b"ab"
        assert response.read(4) == b""
        assert response.read(4) == b""
        assert inner.reads == 1

    def test_pending_after_short_read(self):
        """
        Converted bytes left over after the wrapped response's short read are
        still delivered, without reading it again.
        """
        inner = ScriptedReads(b"\n\n\n", b"MORE")
        response = NetasciiResponseData(inner)
        assert [response.read(4), response.read(4)] == [b"\r\n\r\n", b"\r\n"]
        assert inner.reads == 1

    @settings(max_examples=200, deadline=None)
    @given(data=texts, n=st.integers(min_value=1, max_value=64))
    def test_stream(self, data, n):
        """
        For any content and block size, every block but the last has C{n}
        bytes, the last has fewer, and together they are the netascii form
        of the whole content.
        """
        blocks = read_all(NetasciiResponseData(BytesResponseData(data)), n)
        assert all(len(block) == n for block in blocks[:-1])
        assert len(blocks[-1]) < n
        assert b"".join(blocks) == to_netascii(data)


class DeferredReadTests(SynchronousTestCase):
    """
    When the wrapped response answers reads with L{Deferred}s, so does
    L{NetasciiResponseData} whenever it has to read it, with the same blocks.
    A read served from bytes already converted, or after the end, may answer
    directly, as L{IResponseData} allows.
    """

    def settled(self, result):
        """
        The bytes of a read, whether it answered with them or with a fired
        L{Deferred}.
        """
        if isinstance(result, Deferred):
            return self.successResultOf(result)
        return result

    def test_fired_deferreds(self):
        """
        Already-fired L{Deferred}s give the same blocks as plain reads.
        """
        response = NetasciiResponseData(SucceedingBytes(b"ab\ncd\nef\n"))
        first = response.read(4)
        assert isinstance(first, Deferred)
        blocks = [self.successResultOf(first)]
        blocks += [self.settled(response.read(4)) for _ in range(3)]
        assert blocks == [b"ab\r\n", b"cd\r\n", b"ef\r\n", b""]

    def test_later_deferreds(self):
        """
        A read waits for the wrapped response's L{Deferred}, then fires with
        a full converted block; the wrapped response is read again only when
        the converted bytes run short, and never after its short read.
        """
        inner = LaterBytes()
        response = NetasciiResponseData(inner)

        first = response.read(8)
        self.assertNoResult(first)
        [(asked, d)] = inner.asked
        assert asked == 8
        d.callback(b"line1\nli")
        assert self.successResultOf(first) == b"line1\r\nl"

        second = response.read(8)
        self.assertNoResult(second)
        assert len(inner.asked) == 2
        inner.asked[1][1].callback(b"ne2\n")
        assert self.successResultOf(second) == b"ine2\r\n"

        assert response.read(8) == b""
        assert len(inner.asked) == 2

    def test_later_deferred_straddles(self):
        """
        A block waiting on a L{Deferred} still splits a CR LF across the
        block boundary.
        """
        inner = LaterBytes()
        response = NetasciiResponseData(inner)
        first = response.read(4)
        inner.asked[0][1].callback(b"abc\n")
        assert self.successResultOf(first) == b"abc\r"
        second = response.read(4)
        inner.asked[1][1].callback(b"")
        assert self.successResultOf(second) == b"\n"

    def test_failure(self):
        """
        A failed read of the wrapped response fails the netascii read.
        """
        inner = LaterBytes()
        first = NetasciiResponseData(inner).read(8)
        inner.asked[0][1].errback(OSError("disk on fire"))
        assert self.failureResultOf(first, OSError).value.args == ("disk on fire",)

    def test_cancel(self):
        """
        Cancelling a pending read cancels the wrapped response's read.
        """
        inner = LaterBytes()
        first = NetasciiResponseData(inner).read(8)
        first.cancel()
        assert inner.cancelled == 1
        self.failureResultOf(first, CancelledError)

    @settings(max_examples=100, deadline=None)
    @given(data=texts, n=st.integers(min_value=1, max_value=64))
    def test_stream(self, data, n):
        """
        For any content and block size, reading through L{Deferred}s gives
        the same blocks as reading directly.
        """
        response = NetasciiResponseData(SucceedingBytes(data))
        blocks = []
        while not blocks or len(blocks[-1]) == n:
            blocks.append(self.settled(response.read(n)))
        assert blocks == read_all(NetasciiResponseData(BytesResponseData(data)), n)

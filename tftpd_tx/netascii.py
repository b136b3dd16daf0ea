"""
Streaming octet to netascii conversion (RFC 1350, RFC 764).

In netascii a line ends with CR LF and a lone CR is sent as CR NUL.  Each
input byte maps to one or two output bytes on its own, so the conversion
works chunk by chunk with no state across chunks; what the stream needs is a
little buffer, because a block of N output bytes comes from fewer input bytes.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from .content import ResponseData

__all__ = ["to_netascii", "NetasciiResponseData"]


def to_netascii(chunk: bytes) -> bytes:
    """
    Convert octets to netascii: LF becomes CR LF, a bare CR becomes CR NUL.
    """
    return chunk.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


class NetasciiResponseData(ResponseData):
    """
    Wrap a response so that what it yields is netascii.

    The size of the converted stream is not known without reading the whole
    file, so C{size()} is L{None} (the base class's answer) and no C{tsize}
    is offered.
    """

    def __init__(self, inner) -> None:
        self._inner = inner
        self._pending = b""
        self._exhausted = False

    def read(self, n: int):
        """
        Return exactly C{n} converted bytes, fewer only at the end.

        Reads from the wrapped response as often as it takes; when that
        response answers with a L{Deferred}, so does this.  A block that is
        already converted (or the empty block after the end) is returned
        directly, without reading the wrapped response again.
        """
        while len(self._pending) < n and not self._exhausted:
            chunk = self._inner.read(n)
            if isinstance(chunk, Deferred):
                return chunk.addCallback(self._absorb, n).addCallback(
                    lambda _: self.read(n)
                )
            self._absorb(chunk, n)
        block, self._pending = self._pending[:n], self._pending[n:]
        return block

    def _absorb(self, chunk: bytes, asked: int) -> None:
        """
        Add a chunk read from the wrapped response; a short one was its last.
        """
        self._pending += to_netascii(chunk)
        if len(chunk) < asked:
            self._exhausted = True

    def close(self) -> None:
        self._inner.close()

"""
A file written once, from start to end, while any number of readers follow
it: the body of one download from an HTTP origin, which every transfer of
that file reads as it arrives (single flight with streaming).

The bytes live in the file, not in memory: a reader holds only its offset,
and each of its reads is one C{pread} of the bytes it asked for.  A read
asking past what has arrived waits (a L{Deferred}) until the bytes are
there, the body ends (then it gets the short remainder), or the download
fails (then it fails, unless what it asked for had arrived already).

Backpressure: the spool tells its producer (the download) to pause when
the body is more than C{ahead} bytes in front of the fastest reader, and to
resume when that reader has caught up half of it, so a download never runs
far ahead of the transfers reading it.
"""

from __future__ import annotations

import heapq
import itertools
import os
from typing import Callable

from twisted.internet.defer import Deferred

from .content import ResponseData

__all__ = ["Spool", "SpoolReader", "DEFAULT_AHEAD"]

#: How far the body may run ahead of its fastest reader before the download
#: is paused, in bytes: large enough that small files never pause, since a
#: paused origin connection may be closed by the origin (nginx's
#: send_timeout is 60 s) when the readers are slow.
DEFAULT_AHEAD = 64 * 1024 * 1024


class Spool:
    """
    One body, being written to (or already complete in) an open file.

    @param fd: the file's descriptor, owned from now on: closed once the
        writing is over and the last reader has closed.
    @param size: the number of bytes announced (C{Content-Length}), or
        L{None} when not known.
    @param complete: the file already holds the whole body (a cache entry).
    @param on_abandoned: called with no arguments when the last reader
        closes while the body is still being written, so that the download
        can be stopped.
    @param ahead: see L{DEFAULT_AHEAD}.

    @ivar written: the bytes of the body written so far.
    @ivar producer: the download, an C{IPushProducer}, or L{None}: paused
        and resumed for backpressure.
    """

    def __init__(
        self,
        fd: int,
        size: int | None = None,
        *,
        complete: bool = False,
        on_abandoned: Callable[[], None] | None = None,
        ahead: int = DEFAULT_AHEAD,
    ) -> None:
        self._fd = fd
        self.size = size
        self.written = size if complete else 0
        self.complete = complete
        self.error: BaseException | None = None
        self.producer = None
        self._on_abandoned = on_abandoned
        self._ahead = ahead
        self._lead = 0
        self._paused = False
        self._readers = 0
        self._waiters: list = []
        self._order = itertools.count()

    @property
    def writing(self) -> bool:
        """
        Whether the body is still being written.
        """
        return not self.complete and self.error is None

    # -- the writer ----------------------------------------------------------

    def write(self, data: bytes) -> None:
        """
        Append C{data} to the body and wake the readers it satisfies.
        """
        view = memoryview(data)
        while view:
            done = os.pwrite(self._fd, view, self.written)
            self.written += done
            view = view[done:]
        self._wake()
        if (
            self.producer is not None
            and not self._paused
            and self.written - self._lead > self._ahead
        ):
            self._paused = True
            self.producer.pauseProducing()

    def follow(self) -> None:
        """
        Take in what another process has written to the file since the last
        look (a download another worker makes, which this one reads), and
        wake the readers it satisfies.
        """
        self.written = os.fstat(self._fd).st_size
        self._wake()

    def finish(self) -> None:
        """
        The body is complete: every waiting reader gets what remains.
        """
        self.complete = True
        self.size = self.written
        self.producer = None
        self._wake()
        self._close_if_unused()

    def fail(self, error: BaseException) -> None:
        """
        The body will not be completed: readers asking past what was
        written fail with C{error}.
        """
        self.error = error
        self.producer = None
        waiters, self._waiters = self._waiters, []
        for _, _, reader, d in waiters:
            reader._satisfy(d)
        self._close_if_unused()

    # -- readers -------------------------------------------------------------

    def reader(self, on_close: Callable[["SpoolReader"], None] | None = None):
        """
        A new L{SpoolReader} from the start of the body.

        @param on_close: called with the reader when it is closed.
        """
        self._readers += 1
        return SpoolReader(self, on_close)

    @property
    def readers(self) -> int:
        """
        How many readers are open.
        """
        return self._readers

    def _pread(self, n: int, offset: int) -> bytes:
        return os.pread(self._fd, n, offset)

    def _advanced(self, offset: int) -> None:
        if offset > self._lead:
            self._lead = offset
            if self._paused and self.written - offset <= self._ahead // 2:
                self._paused = False
                if self.producer is not None:
                    self.producer.resumeProducing()

    def _wait(self, reader: "SpoolReader", end: int) -> Deferred:
        entry = []

        def cancel(d: Deferred) -> None:
            if entry in self._waiters:
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)

        d = Deferred(cancel)
        entry.extend([end, next(self._order), reader, d])
        heapq.heappush(self._waiters, entry)
        return d

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and (waiters[0][0] <= self.written or self.complete):
            _, _, reader, d = heapq.heappop(waiters)
            reader._satisfy(d)

    def _reader_closed(self) -> None:
        self._readers -= 1
        if self._readers == 0 and self.writing and self._on_abandoned is not None:
            self._on_abandoned()
        self._close_if_unused()

    def _close_if_unused(self) -> None:
        if self._readers == 0 and not self.writing and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SpoolReader(ResponseData):
    """
    One transfer's view of a L{Spool}: reads from the start, following the
    body as it is written.  Holds nothing but its offset.
    """

    def __init__(self, spool: Spool, on_close) -> None:
        self._spool = spool
        self._on_close = on_close
        self._wanted = 0
        self.offset = 0
        self.closed = False

    def read(self, n: int):
        spool = self._spool
        if spool.complete:
            # The common case (a cache hit, or a body already in): one pread.
            data = os.pread(spool._fd, n, self.offset)
            self.offset += len(data)
            return data
        if spool.written - self.offset >= n:
            return self._take(n)
        if spool.error is not None:
            raise spool.error
        self._wanted = n
        return spool._wait(self, self.offset + n)

    def _take(self, n: int) -> bytes:
        data = self._spool._pread(n, self.offset)
        self.offset += len(data)
        self._spool._advanced(self.offset)
        return data

    def _satisfy(self, d: Deferred) -> None:
        spool = self._spool
        if spool.complete or spool.written - self.offset >= self._wanted:
            d.callback(self._take(self._wanted))
        else:
            d.errback(spool.error)

    def size(self) -> int | None:
        return self._spool.size

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._spool._reader_closed()
        if self._on_close is not None:
            self._on_close(self)

"""
Serving files from an HTTP(S) origin, with a disk cache and single flight:
however many clients ask for one file at once, one GET is made, and every
one of them is sent the bytes as they arrive.

L{OriginHandler} maps a TFTP path to a URL under its base URL, asks the
origin (with the client's address, port and path in the C{X-TFTP-IP},
C{X-TFTP-Port} and C{X-TFTP-File} headers), streams the body into a
L{tftpd_tx.spool.Spool} that every transfer of the file reads, and keeps it
in a L{tftpd_tx.cache.DiskCache} when the answer allows.  L{LocalFirst}
puts a local handler (a root directory) in front of it.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from dataclasses import dataclass, field, fields
from urllib.parse import quote, urlsplit

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from .cache import HEURISTIC_LIFETIME, DiskCache, Entry, policy_for
from .content import (
    AccessViolation,
    FileNotFound,
    IHandler,
    Request,
    TFTPError,
    error_for,
)
from .filesystem import FileResponseData
from .spool import DEFAULT_AHEAD, Spool
from .wire import ErrorCode

__all__ = [
    "OriginHandler",
    "OriginUnavailable",
    "OriginStats",
    "LocalFirst",
    "origin_url",
    "make_agent",
    "check_base_url",
    "trust_root",
]

#: Upper bounds, in seconds, of the origin latency histogram's buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: How long a 404 (or 410) is remembered, in seconds.
NEGATIVE_TTL = 5.0

#: The most paths remembered as missing; the oldest are forgotten first.
NEGATIVE_ENTRIES = 10000

#: Characters of a path segment sent as they are (RFC 3986 C{pchar} less
#: C{;}, which some servers take for a parameter); the rest is
#: percent-encoded.
_SEGMENT_SAFE = "!$&'()*+,=:@"

#: The most bytes of an error page read (and dropped) before the
#: connection is closed instead.
_DISCARD_LIMIT = 65536

#: Seconds between two looks at a download another process (another worker
#: on the same cache directory) is making: how late its bytes reach the
#: transfers here, at most.
FOLLOW_INTERVAL = 0.01


class OriginUnavailable(TFTPError):
    """
    The origin failed (5xx, no connection, a timeout, a broken body) and no
    copy may be served instead: the client gets ERROR 0.
    """

    code = ErrorCode.NOT_DEFINED
    default_message = "Origin unavailable"


@dataclass
class OriginStats:
    """
    What an L{OriginHandler} has done, since it was made.  Every TFTP
    request it answers counts once in exactly one of C{hits}, C{misses},
    C{revalidations}, C{stale_serves}, C{not_found}, C{denied} or
    C{unavailable} (see L{results}, the source of
    C{tftpd_origin_requests_total{result}}).

    @ivar hits: served from a fresh cache entry.
    @ivar misses: served from a body being downloaded (the request that
        started the GET and every one that joined it).
    @ivar revalidations: served from an entry the origin confirmed (304).
    @ivar stale_serves: served from a stale entry while the origin failed.
    @ivar not_found: refused with ERROR 1 (a 404 or 410, or one
        remembered).
    @ivar denied: refused with ERROR 2 (401, 403, any other 4xx).
    @ivar unavailable: refused with ERROR 0, the origin failing and no copy
        to serve.
    @ivar errors: origin failures: 5xx and unexpected statuses, redirects,
        refused connections, timeouts, bodies cut short.
    @ivar origin_requests: GET requests sent to the origin.
    @ivar bytes_from_origin: body bytes received from the origin.
    @ivar bytes_from_cache: bytes transfers read from cache entries.
    @ivar latency_buckets: how many origin answers (headers) took at most
        each of L{LATENCY_BUCKETS} seconds, cumulative, with C{inf} last.
    @ivar latency_sum: the seconds all those answers took.
    """

    hits: int = 0
    misses: int = 0
    revalidations: int = 0
    stale_serves: int = 0
    not_found: int = 0
    denied: int = 0
    unavailable: int = 0
    errors: int = 0
    origin_requests: int = 0
    bytes_from_origin: int = 0
    bytes_from_cache: int = 0
    latency_buckets: dict = field(
        default_factory=lambda: dict.fromkeys((*LATENCY_BUCKETS, float("inf")), 0)
    )
    latency_sum: float = 0.0

    def observe_latency(self, seconds: float) -> None:
        """
        Count one origin answer that took C{seconds}.
        """
        self.latency_sum += seconds
        for bound in self.latency_buckets:
            if seconds <= bound:
                self.latency_buckets[bound] += 1

    def results(self) -> dict[str, int]:
        """
        TFTP requests by what they got: C{hit}, C{miss}, C{revalidated},
        C{stale}, C{not_found}, C{denied}, C{unavailable}.
        """
        return {
            "hit": self.hits,
            "miss": self.misses,
            "revalidated": self.revalidations,
            "stale": self.stale_serves,
            "not_found": self.not_found,
            "denied": self.denied,
            "unavailable": self.unavailable,
        }

    def as_dict(self) -> dict:
        """
        Every figure, by name.
        """
        return {f.name: getattr(self, f.name) for f in fields(self)}


def origin_url(base: str, path: str) -> str:
    """
    The URL of a normalized TFTP C{path} (see
    L{tftpd_tx.content.normalize_path}) under C{base} (which ends with
    C{/}): each segment percent-encoded, so that nothing in a path can
    change the scheme, the host, the query or the base path.

    @raise AccessViolation: the path climbs above the base.
    @raise FileNotFound: the path is empty (the base itself).
    """
    if path == ".." or path.startswith("../"):
        raise AccessViolation("Path outside the served root")
    if not path:
        raise FileNotFound()
    return base + "/".join(
        quote(segment, safe=_SEGMENT_SAFE) for segment in path.split("/")
    )


def trust_root(ca_file: str):
    """
    The certificates of C{ca_file} (PEM, one or more) as a trust root.

    @raise ValueError: it holds no certificate.
    """
    from twisted.internet.ssl import Certificate, trustRootFromCertificates

    with open(ca_file, "rb") as f:
        text = f.read()
    end = b"-----END CERTIFICATE-----"
    certificates = [
        Certificate.loadPEM(block + end)
        for block in text.split(end)
        if b"-----BEGIN CERTIFICATE-----" in block
    ]
    if not certificates:
        raise ValueError(f"{ca_file!r} holds no PEM certificate")
    return trustRootFromCertificates(certificates)


def make_agent(reactor, *, timeout: float, ca_file: str | None = None):
    """
    The HTTP client an L{OriginHandler} uses: persistent connections, and
    TLS always verified (certificate chain and host name, with
    service-identity) against the system's authorities, or against the
    certificates of C{ca_file} alone when given.

    @return: C{(agent, pool)}; close the pool's connections when done.
    """
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    policy = BrowserLikePolicyForHTTPS(
        trustRoot=trust_root(ca_file) if ca_file is not None else None
    )
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 8
    pool.cachedConnectionTimeout = 60
    return Agent(reactor, contextFactory=policy, connectTimeout=timeout, pool=pool), pool


def _anonymous_file(cache: DiskCache | None) -> int:
    """
    A temporary file that has no name: it lives while it is open.  With a
    cache it is made in the cache's directory the way the cache makes its
    own (locked), so that a worker opening the cache meanwhile leaves it.
    """
    if cache is not None:
        fd, path = cache.temporary()
        cache.discard(path)
        return fd
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    return fd


def _header_value(text: str) -> bytes:
    """
    C{text} as a header value: UTF-8, control characters replaced by C{?}
    so that no path can end a header line.
    """
    return "".join("?" if ord(c) < 32 or ord(c) == 127 else c for c in text).encode(
        "utf-8"
    )


def _lower_headers(headers: Headers) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
        for name, values in headers.getAllRawHeaders()
    }


class _Timed(Protocol):
    """
    A response body protocol with an idle timeout: the body is abandoned
    when nothing arrives for C{idle} seconds while it is not paused.
    """

    def __init__(self, reactor, idle: float) -> None:
        self._reactor = reactor
        self._idle = idle
        self._timer = None
        self.timed_out = False

    stopped = False

    def connectionMade(self) -> None:
        if self.stopped:
            self.transport.stopProducing()
            return
        self._arm()

    def _arm(self) -> None:
        self._timer = self._reactor.callLater(self._idle, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _touch(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle)

    def _expired(self) -> None:
        self._timer = None
        self.timed_out = True
        self.transport.stopProducing()

    def stop(self) -> None:
        """
        Abandon the body, even one not delivered yet.
        """
        self.stopped = True
        self._disarm()
        if self.transport is not None:
            self.transport.stopProducing()


class _Discard(_Timed):
    """
    Read and drop a body nobody needs (an error page), so that its
    connection can be reused; a long one is cut off instead.
    """

    def __init__(self, reactor, idle: float) -> None:
        super().__init__(reactor, idle)
        self._left = _DISCARD_LIMIT

    def dataReceived(self, data: bytes) -> None:
        self._touch()
        self._left -= len(data)
        if self._left < 0:
            self.stop()

    def connectionLost(self, reason) -> None:
        self._disarm()


class _Body(_Timed):
    """
    The body of a 200 answer, written into its flight's spool; the spool
    pauses and resumes it (an C{IPushProducer}) for backpressure.
    """

    def __init__(self, flight: "_Flight", reactor, idle: float) -> None:
        super().__init__(reactor, idle)
        self._flight = flight

    def dataReceived(self, data: bytes) -> None:
        self._touch()
        self._flight.handler.stats.bytes_from_origin += len(data)
        self._flight.spool.write(data)

    def pauseProducing(self) -> None:
        self._disarm()
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._arm()
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.stop()

    def connectionLost(self, reason) -> None:
        self._disarm()
        self._flight.body_ended(reason, self.timed_out)


class _Flight:
    """
    One GET of one URL, and every request waiting for or reading its answer.

    Requests join it while its headers are awaited; once they arrive, a
    shared answer is streamed to all of them, and requests that come while
    the body is still arriving join too and read it from the start.  An
    answer that may not be shared (C{private}, C{no-store}, a C{Vary} on a
    client's headers) goes to the request that started the GET, and each
    of the others makes its own.

    @param stale: the cache entry this GET revalidates, if any.
    @param shared: whether other requests may join it.
    """

    def __init__(self, handler: "OriginHandler", url: str, stale, shared: bool) -> None:
        self.handler = handler
        self.url = url
        self.stale = stale
        self.shared = shared
        self.spool: Spool | None = None
        self._waiters: list[tuple[Request, Deferred]] = []
        self._body: _Body | None = None
        self._policy = None
        self._headers: dict[str, str] = {}
        self._temporary: str | None = None
        self._timer = None
        self._timed_out = False
        self._aborted = False
        self._started = 0.0
        self._claim = None
        self._request: Request | None = None

    def join(self, request: Request):
        """
        The response for C{request}: a Deferred while the headers are
        awaited, else a reader of the body arriving.
        """
        if self.spool is None:
            waiting: Deferred = Deferred()
            self._waiters.append((request, waiting))
            return waiting
        self.handler.stats.misses += 1
        return self.spool.reader()

    def start(self, request: Request) -> None:
        """
        Send the GET, with C{request}'s client in its headers; or, when
        another process sharing the cache is already downloading this URL
        cold, read its download instead (see L{DiskCache.claim}).
        """
        cache = self.handler.cache
        if self.shared and self.stale is None and cache is not None:
            self._claim = cache.claim(self.url)
            if self._claim is None:
                self._request = request
                self._follow()
                return
        self._get(request)

    def _get(self, request: Request) -> None:
        handler = self.handler
        headers = Headers(
            {
                b"User-Agent": [b"tftpd_tx"],
                b"Accept-Encoding": [b"identity"],
                b"X-TFTP-IP": [request.peer[0].encode("ascii")],
                b"X-TFTP-Port": [str(request.peer[1]).encode("ascii")],
                b"X-TFTP-File": [_header_value(request.path)],
            }
        )
        if self.stale is not None:
            for name, value in self.stale.validators().items():
                headers.addRawHeader(name, value.encode("latin-1"))
        handler.stats.origin_requests += 1
        reactor = handler.reactor
        self._started = reactor.seconds()
        asked = handler.agent.request(b"GET", self.url.encode("ascii"), headers)
        if not asked.called:
            self._timer = reactor.callLater(handler.timeout, self._expired, asked)
        asked.addCallbacks(self._answered, self._asking_failed)
        asked.addErrback(
            lambda failure: handler.log.failure(
                "Answering from {url} failed", failure, url=self.url
            )
        )

    def _expired(self, asked: Deferred) -> None:
        self._timer = None
        self._timed_out = True
        asked.cancel()

    def _done(self) -> None:
        """
        Take this flight off the handler's list: new requests start anew.
        """
        flights = self.handler.flights
        if flights.get(self.url) is self:
            del flights[self.url]
        self._release()

    def _release(self) -> None:
        """
        Let other processes download this URL: it is kept, or will not be.
        """
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    def _take_waiters(self) -> list[tuple[Request, Deferred]]:
        waiters, self._waiters = self._waiters, []
        return waiters

    def _serve_waiters_from(self, entry) -> int:
        """
        Answer every waiting request from the cache's C{entry}; one whose
        entry went meanwhile (evicted, removed) is fetched whole.

        @return: how many were answered from C{entry}.
        """
        handler = self.handler
        served = 0
        for request, waiting in self._take_waiters():
            response = handler.open_entry(entry)
            if response is None:
                handler.fetch(request).chainDeferred(waiting)
            else:
                served += 1
                waiting.callback(response)
        return served

    # -- the headers ---------------------------------------------------------

    def _answered(self, response) -> None:
        handler = self.handler
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = handler.reactor.seconds()
        handler.stats.observe_latency(now - self._started)
        status = response.code
        if status in (200, 203):
            handler.failing = False
            self._stream(response, now)
            return
        response.deliverBody(_Discard(handler.reactor, handler.timeout))
        if status == 304 and self.stale is not None:
            handler.failing = False
            self._revalidated(_lower_headers(response.headers), now)
        elif status in (404, 410):
            handler.failing = False
            handler.remember_missing(self.url, now)
            self._refuse(FileNotFound(), "not_found")
        elif 400 <= status < 500:
            handler.failing = False
            self._refuse(AccessViolation(), "denied")
        else:
            location = response.headers.getRawHeaders(b"location", [b""])[0]
            self._failed(
                f"HTTP {status}"
                + (f" to {location.decode('latin-1')!r} (not followed)" if location else "")
            )

    def _asking_failed(self, failure) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._timed_out:
            self._failed(f"no answer within {self.handler.timeout:g} s")
        else:
            self._failed(failure.getErrorMessage())

    def _refuse(self, error: TFTPError, counter: str) -> None:
        self._done()
        stats = self.handler.stats
        for _, waiting in self._take_waiters():
            setattr(stats, counter, getattr(stats, counter) + 1)
            waiting.errback(error)

    def _failed(self, why: str) -> None:
        """
        The origin failed: serve the stale copy if there is one that may
        be, else refuse with ERROR 0.
        """
        handler = self.handler
        self._done()
        handler.origin_failed(self.url, why)
        now = handler.reactor.seconds()
        stale = self.stale
        usable = stale is not None and stale.usable_when_failing(now)
        for _, waiting in self._take_waiters():
            response = handler.open_entry(stale) if usable else None
            if response is None:
                handler.stats.unavailable += 1
                waiting.errback(OriginUnavailable())
            else:
                handler.stats.stale_serves += 1
                waiting.callback(response)

    def _revalidated(self, headers: dict[str, str], now: float) -> None:
        """
        A 304: the stale entry holds, with what the answer says now.
        """
        handler = self.handler
        self._done()
        stale = self.stale
        # RFC 9111 4.3.4: the 304's headers replace the stored ones; what
        # it does not say about freshness stays as it was.
        policy = policy_for(headers, now, self.handler.heuristic_lifetime)
        changes = {"stored": policy.stored}
        if "cache-control" in headers or "expires" in headers:
            changes.update(
                lifetime=policy.lifetime,
                stale_if_error=policy.stale_if_error,
                must_revalidate=policy.must_revalidate,
            )
        entry = handler.cache.refresh(
            stale,
            etag=headers.get("etag", stale.etag),
            last_modified=headers.get("last-modified", stale.last_modified),
            **changes,
        )
        handler.stats.revalidations += self._serve_waiters_from(entry)

    # -- the body ------------------------------------------------------------

    def _stream(self, response, now: float) -> None:
        handler = self.handler
        headers = _lower_headers(response.headers)
        policy = policy_for(headers, now, self.handler.heuristic_lifetime)
        shared = self.shared and policy.share
        size = None if response.length is UNKNOWN_LENGTH else response.length
        if shared and policy.store and handler.cache is not None:
            fd, self._temporary = handler.cache.temporary()
            self._policy = policy
            self._headers = headers
            if self._claim is not None and size is not None:
                self._claim.announce(self._temporary, size)
        else:
            fd = _anonymous_file(handler.cache)
            self._release()
        self.spool = Spool(fd, size, on_abandoned=self._abandoned, ahead=handler.ahead)
        self._body = _Body(self, handler.reactor, handler.timeout)
        if self._temporary is None:
            # A body that is kept comes at the origin's pace, so the entry
            # is complete soon and no pause outlasts the origin's patience
            # (nginx's send_timeout is 60 s); one that is not kept waits
            # for the transfers reading it.
            self.spool.producer = self._body
        waiters = self._take_waiters()
        if not shared:
            self._done()
            waiters, others = waiters[:1], waiters[1:]
            for request, waiting in others:
                handler.fetch(request, shared=False).chainDeferred(waiting)
        for _, waiting in waiters:
            handler.stats.misses += 1
            waiting.callback(self.spool.reader())
        response.deliverBody(self._body)

    def _abandoned(self) -> None:
        """
        The last reader left before the body ended: stop the download.
        """
        self._done()
        self._aborted = True
        self._body.stop()

    def body_ended(self, reason, timed_out: bool) -> None:
        """
        The body ended, complete or not.
        """
        # Imported here: twisted.web.client costs a tenth of a second, which
        # every importer of tftpd_tx (twistd --help) would pay.
        from twisted.web.client import ResponseDone
        from twisted.web.http import PotentialDataLoss

        handler = self.handler
        spool = self.spool
        ended = reason.check(ResponseDone) or (
            reason.check(PotentialDataLoss) and spool.size is None
        )
        if ended and spool.size in (None, spool.written):
            spool.finish()
            if self._temporary is not None:
                policy = self._policy
                handler.cache.commit(
                    self._temporary,
                    Entry(
                        url=self.url,
                        body="",
                        size=spool.written,
                        stored=policy.stored,
                        lifetime=policy.lifetime,
                        stale_if_error=policy.stale_if_error,
                        must_revalidate=policy.must_revalidate,
                        etag=self._headers.get("etag"),
                        last_modified=self._headers.get("last-modified"),
                    ),
                )
            # Released once the entry is kept, for the processes that wait
            # to find it there.
            self._done()
            return
        if self._temporary is not None:
            handler.cache.discard(self._temporary)
        self._done()
        if not self._aborted:
            if timed_out:
                why = f"nothing received for {handler.timeout:g} s"
            else:
                why = f"body ended after {spool.written} of {spool.size} bytes"
            handler.origin_failed(self.url, why)
        spool.fail(OriginUnavailable())

    # -- another process's download ------------------------------------------

    def _follow(self) -> None:
        """
        Look at the download another process holds the claim for, every
        L{FOLLOW_INTERVAL}: once it announces its body, read the body as it
        grows, as from a download of our own; when the claim is released,
        the body is complete if it has its announced length.  A claim
        released with nothing announced (the answer was not kept, failed, or
        had no length) leaves what it kept in the cache, or a GET to make.
        """
        self._timer = None
        handler = self.handler
        held, announced = handler.cache.claimed(self.url)
        spool = self.spool
        if spool is None and held and announced is not None:
            try:
                fd = os.open(announced.part, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                # Kept meanwhile: the claim is released next.
                pass
            else:
                spool = self.spool = Spool(fd, announced.size, on_abandoned=self._unfollowed)
                for _, waiting in self._take_waiters():
                    handler.stats.misses += 1
                    waiting.callback(spool.reader())
        if spool is not None:
            spool.follow()
            if not held:
                self._done()
                if spool.written == spool.size:
                    spool.finish()
                else:
                    handler.origin_failed(
                        self.url,
                        f"another worker's download ended after {spool.written} "
                        f"of {spool.size} bytes",
                    )
                    spool.fail(OriginUnavailable())
                return
        elif not held:
            entry = handler.cache.get(self.url)
            if entry is not None and entry.fresh(handler.reactor.seconds()):
                self._done()
                handler.stats.hits += self._serve_waiters_from(entry)
                return
            self.start(self._request)
            return
        self._timer = handler.reactor.callLater(FOLLOW_INTERVAL, self._follow)

    def _unfollowed(self) -> None:
        """
        The last reader of another process's download left: stop looking.
        """
        self._done()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.spool.fail(OriginUnavailable())


class _KeptBody(FileResponseData):
    """
    A cache entry's body, read as a local root's file is (one C{read} a
    call, nothing else), so that a cache hit costs what a
    L{tftpd_tx.filesystem.FilesystemHandler} file does; the bytes it gave
    are counted once, when it closes.
    """

    def __init__(self, fd: int, size: int, stats: OriginStats) -> None:
        super().__init__(fd, size)
        self._stats = stats

    def close(self) -> None:
        if self._fd >= 0:
            self._stats.bytes_from_cache += os.lseek(self._fd, 0, os.SEEK_CUR)
        super().close()


@implementer(IHandler)
class OriginHandler:
    """
    Serve files from an HTTP(S) origin: the TFTP path C{a/b} is the URL
    C{base_url + "a/b"}, percent-encoded, never outside the base URL.

    Answers map to TFTP as: 200 streams the body (its C{Content-Length} is
    the C{tsize}); 404 and 410 are ERROR 1 (remembered for
    L{NEGATIVE_TTL} seconds); 401, 403 and the other 4xx ERROR 2; 5xx,
    redirects (never followed), refused connections, timeouts and bodies
    cut short are failures: a cached copy is served if one may be
    (stale-if-error), else ERROR 0 "Origin unavailable".  A body cut short
    ends the transfers reading it with ERROR 0 and is not cached.

    Single flight: requests for a URL that is being fetched join that GET
    and read its body as it arrives, from the start.  Handlers in several
    processes on one cache directory (C{--workers}) share it too: a cold
    file one of them is downloading is read by the others from the file
    being written (see L{tftpd_tx.cache.DiskCache.claim}).

    @param base_url: C{http://} or C{https://} URL of the directory served;
        a C{/} is added if it does not end with one.
    @param reactor: the reactor (for timers and the connections); the
        global one when omitted.
    @param cache: a L{DiskCache} to keep answers in, or L{None} to keep
        nothing (bodies being downloaded are then held in nameless
        temporary files).
    @param timeout: seconds to wait for an answer's headers, and at most
        between two reads of its body.
    @param ca_file: a PEM file of the authorities that sign the origin's
        certificate, instead of the system's; TLS is always verified.
    @param agent: the C{IAgent} to ask with, instead of one made by
        L{make_agent} (for tests).
    @param ahead: how far a download that is not kept (no cache,
        C{private}, C{no-store}) may run ahead of its fastest reader before
        it is paused (see L{tftpd_tx.spool.DEFAULT_AHEAD}); a body being
        kept is downloaded at the origin's pace.
    @param heuristic_lifetime: seconds an answer with a validator but no
        freshness information is fresh (see
        L{tftpd_tx.cache.HEURISTIC_LIFETIME}); 0 revalidates it before
        every use.

    @ivar stats: the L{OriginStats}.
    @ivar failing: whether the origin's last answer was a failure; true
        from a failure until the next answer that is not one.
    @ivar flights: the GETs in progress that requests may join, by URL.
    """

    log = Logger()

    def __init__(
        self,
        base_url: str,
        reactor=None,
        *,
        cache: DiskCache | None = None,
        timeout: float = 30.0,
        ca_file: str | None = None,
        agent=None,
        ahead: int = DEFAULT_AHEAD,
        heuristic_lifetime: float = HEURISTIC_LIFETIME,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.base_url = check_base_url(base_url)
        self.reactor = reactor
        self.cache = cache
        self.timeout = timeout
        self.ahead = ahead
        self.heuristic_lifetime = heuristic_lifetime
        self._pool = None
        if agent is None:
            agent, self._pool = make_agent(reactor, timeout=timeout, ca_file=ca_file)
        self.agent = agent
        self.stats = OriginStats()
        self.failing = False
        self.flights: dict[str, _Flight] = {}
        self._missing: dict[str, float] = {}

    def get_response_data(self, request: Request):
        url = origin_url(self.base_url, request.normalized_path)
        now = self.reactor.seconds()
        if self._missing.get(url, now) > now:
            self.stats.not_found += 1
            raise FileNotFound()
        flight = self.flights.get(url)
        if flight is not None:
            return flight.join(request)
        stale = self.cache.get(url) if self.cache is not None else None
        if stale is not None and stale.fresh(now):
            response = self.open_entry(stale)
            if response is not None:
                self.stats.hits += 1
                return response
            stale = None
        return self._fly(request, url, stale, shared=True)

    def fetch(self, request: Request, shared: bool = True) -> Deferred:
        """
        Ask the origin for C{request}'s file, whatever the cache holds.

        @param shared: whether other requests may join this GET.
        @return: a L{Deferred} of its response.
        """
        url = origin_url(self.base_url, request.normalized_path)
        result = self._fly(request, url, None, shared)
        return result if isinstance(result, Deferred) else succeed(result)

    def _fly(self, request: Request, url: str, stale, shared: bool):
        flight = _Flight(self, url, stale, shared)
        if shared:
            self.flights[url] = flight
        result = flight.join(request)
        flight.start(request)
        return result

    def open_entry(self, entry: Entry) -> "_KeptBody | None":
        """
        A response reading a kept entry's body, or L{None} if it is gone.
        """
        fd = self.cache.open(entry)
        if fd is None:
            return None
        return _KeptBody(fd, entry.size, self.stats)

    def remember_missing(self, url: str, now: float) -> None:
        """
        The origin said C{url} does not exist: say so without asking for
        the next L{NEGATIVE_TTL} seconds, and forget any copy of it.
        """
        missing = self._missing
        missing.pop(url, None)
        missing[url] = now + NEGATIVE_TTL
        while len(missing) > NEGATIVE_ENTRIES:
            del missing[next(iter(missing))]
        if self.cache is not None:
            self.cache.remove(url)

    def origin_failed(self, url: str, why: str) -> None:
        """
        Count and log one failure of the origin.
        """
        self.stats.errors += 1
        self.failing = True
        self.log.warn("Origin failed for {url}: {why}", url=url, why=why)

    def close(self) -> Deferred:
        """
        Close the idle connections to the origin.
        """
        if self._pool is None:
            return succeed(None)
        return self._pool.closeCachedConnections()


def check_base_url(base_url: str) -> str:
    """
    C{base_url} ending with C{/}.

    @raise ValueError: it is not an C{http} or C{https} URL with a host and
        no query, fragment or credentials.
    """
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{base_url!r} is not an http:// or https:// URL with a host"
        )
    if parts.query or parts.fragment or parts.username is not None:
        raise ValueError(
            f"{base_url!r} must have no query, fragment or user name"
        )
    try:
        base_url.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{base_url!r} must be ASCII (percent-encode it)") from None
    return base_url if base_url.endswith("/") else base_url + "/"


@implementer(IHandler)
class LocalFirst:
    """
    Serve what a local handler has, and ask another for the rest: whatever
    C{local} raises (synchronously or in a Deferred) that means "File not
    found" to a client (L{FileNotFound}, or the C{ENOENT} of a
    L{tftpd_tx.filesystem.FilesystemHandler}) sends the request to
    C{fallback}; its other refusals stand.  C{twistd tftp --root DIR
    --origin URL} is C{LocalFirst(FilesystemHandler(DIR), OriginHandler(URL))}.
    """

    def __init__(self, local, fallback) -> None:
        self.local = local
        self.fallback = fallback

    def get_response_data(self, request: Request):
        try:
            result = self.local.get_response_data(request)
        except Exception as error:
            if not _not_found(error):
                raise
            return self.fallback.get_response_data(request)
        if not isinstance(result, Deferred) and inspect.isawaitable(result):
            result = ensureDeferred(result)
        if isinstance(result, Deferred):

            def missing(failure):
                if not _not_found(failure.value):
                    return failure
                return self.fallback.get_response_data(request)

            result.addErrback(missing)
        return result


def _not_found(error: BaseException) -> bool:
    code, _, expected = error_for(error)
    return expected and code == ErrorCode.FILE_NOT_FOUND

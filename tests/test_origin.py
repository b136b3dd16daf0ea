"""
The origin handler, its spool and its cache, driven by hand: a fake HTTP
agent answered by the test, and a L{task.Clock} for every timeout.  The
tests against real servers (nginx, a twisted.web origin) are in
C{test_origin_nginx.py} and C{test_origin_failures.py}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from origins import FakeAgent
from tftpd_tx.cache import DiskCache, Entry, parse_cache_control, policy_for
from tftpd_tx.content import AccessViolation, FileNotFound, Request, normalize_path
from tftpd_tx.origin import (
    FOLLOW_INTERVAL,
    NEGATIVE_TTL,
    LocalFirst,
    OriginHandler,
    OriginUnavailable,
    origin_url,
)
from tftpd_tx.spool import Spool

BASE = "http://origin.test/tftp/"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def request(path: str, peer=("192.0.2.7", 40000)) -> Request:
    return Request(peer, ("192.0.2.1", 69), path, normalize_path(path))


def result_of(d):
    """
    The result a Deferred (or a plain value) already has.
    """
    if not isinstance(d, Deferred):
        return d
    box = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


def read_all(response, n=4096) -> bytes:
    chunks = []
    while True:
        chunk = result_of(response.read(n))
        chunks.append(chunk)
        if len(chunk) < n:
            return b"".join(chunks)


class Harness:
    """
    A handler on a fake agent and a clock, with a cache when asked.
    """

    def __init__(self, testcase, cache_bytes=None, cache_dir=None, **kwargs) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.agent = FakeAgent()
        self.cache = None
        if cache_bytes is not None:
            directory = cache_dir
            if directory is None:
                directory = tempfile.mkdtemp()
                testcase.addCleanup(_rmtree, directory)
            self.cache = DiskCache(directory, cache_bytes)
        self.handler = OriginHandler(
            BASE, self.clock, cache=self.cache, agent=self.agent, timeout=10, **kwargs
        )

    def ask(self, path="images/kernel", **kwargs):
        return self.handler.get_response_data(request(path, **kwargs))


def _rmtree(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class OriginURLTests(SynchronousTestCase):
    """
    TFTP paths become URLs under the base, and nowhere else.
    """

    def test_segments_are_percent_encoded(self):
        """
        Each segment is percent-encoded, so C{?}, C{#}, C{%}, spaces and
        non-ASCII letters stay in the path.
        """
        self.assertEqual(
            origin_url(BASE, "a b/c?d#e%41/é"),
            BASE + "a%20b/c%3Fd%23e%2541/%C3%A9",
        )

    def test_climbing_out_is_an_access_violation(self):
        """
        A path that still climbs above the base after normalization is
        refused; one that climbs and comes back stays inside.
        """
        for path in ("../etc/passwd", "a/../../etc/passwd", "..\\x"):
            self.assertRaises(AccessViolation, origin_url, BASE, normalize_path(path))
        self.assertEqual(origin_url(BASE, normalize_path("a/../b")), BASE + "b")

    def test_the_base_itself_is_not_a_file(self):
        """
        An empty path (the base directory) is "File not found".
        """
        self.assertRaises(FileNotFound, origin_url, BASE, "")

    def test_base_url_is_checked(self):
        """
        The handler takes only http and https URLs with a host and without
        query, fragment or credentials; a missing final slash is added.
        """
        for bad in ("ftp://h/", "http:///x", "http://h/?q=1", "http://h/#f", "http://u@h/"):
            self.assertRaises(ValueError, OriginHandler, bad, task.Clock(), agent=FakeAgent())
        handler = OriginHandler("https://h/boot", task.Clock(), agent=FakeAgent())
        self.assertEqual(handler.base_url, "https://h/boot/")


class RequestTests(SynchronousTestCase):
    """
    What the origin is asked.
    """

    def test_headers_name_the_client(self):
        """
        The GET carries the client's address, port and path as sent, and
        asks for the body as it is (no compression).
        """
        h = Harness(self)
        h.ask("/images/kernel", peer=("192.0.2.7", 40000))
        [sent] = h.agent.requests
        self.assertEqual(sent.method, b"GET")
        self.assertEqual(sent.url, BASE + "images/kernel")
        self.assertEqual(sent.header("x-tftp-ip"), "192.0.2.7")
        self.assertEqual(sent.header("x-tftp-port"), "40000")
        self.assertEqual(sent.header("x-tftp-file"), "/images/kernel")
        self.assertEqual(sent.header("accept-encoding"), "identity")

    def test_control_characters_never_end_a_header(self):
        """
        A path with CR or LF is sent in X-TFTP-File with them replaced.
        """
        h = Harness(self)
        h.ask("a\r\nX-Evil: 1")
        self.assertEqual(h.agent.requests[0].header("x-tftp-file"), "a??X-Evil: 1")


class SingleFlightTests(SynchronousTestCase):
    """
    Concurrent requests for one file make one GET and all read its body as
    it arrives.
    """

    def test_one_get_for_many(self):
        """
        Three requests before the headers make one GET; each gets the whole
        body, with the length as its size.
        """
        h = Harness(self)
        pending = [h.ask(peer=("192.0.2.7", 40000 + i)) for i in range(3)]
        self.assertEqual(len(h.agent.requests), 1)
        h.agent.requests[0].respond(200, b"x" * 10000)
        for d in pending:
            response = result_of(d)
            self.assertEqual(response.size(), 10000)
            self.assertEqual(read_all(response), b"x" * 10000)
            response.close()
        self.assertEqual(h.handler.stats.misses, 3)
        self.assertEqual(h.handler.stats.origin_requests, 1)

    def test_readers_get_bytes_before_the_body_ends(self):
        """
        A read waits for the bytes it asks for, and gets them as soon as
        they arrive, not when the download completes.
        """
        h = Harness(self)
        first, second = h.ask(), h.ask(peer=("192.0.2.8", 1069))
        answer = h.agent.requests[0].answer
        from origins import FakeResponse

        body = FakeResponse(200, length=3000)
        answer.callback(body)
        readers = [result_of(first), result_of(second)]
        reads = [reader.read(1000) for reader in readers]
        self.assertFalse(any(d.called for d in reads))
        body.write(b"a" * 1500)
        self.assertEqual([result_of(d) for d in reads], [b"a" * 1000] * 2)
        self.assertFalse(body.ended)

    def test_a_late_joiner_reads_from_the_start(self):
        """
        A request arriving while the body is downloading joins it: no new
        GET, and it reads from the first byte, then follows.
        """
        from origins import FakeResponse

        h = Harness(self)
        first = h.ask()
        body = FakeResponse(200, length=2000)
        h.agent.requests[0].answer.callback(body)
        body.write(b"1" * 1000)
        late = h.ask(peer=("192.0.2.9", 2000))
        self.assertEqual(len(h.agent.requests), 1)
        self.assertEqual(late.read(500), b"1" * 500)
        waiting = late.read(1000)
        body.write(b"2" * 1000)
        body.finish()
        self.assertEqual(result_of(waiting), b"1" * 500 + b"2" * 500)
        self.assertEqual(read_all(result_of(first)), b"1" * 1000 + b"2" * 1000)

    def test_no_length_no_size(self):
        """
        Without a Content-Length the size is unknown (no tsize), and the
        body still streams to its end.
        """
        from origins import FakeResponse

        h = Harness(self)
        d = h.ask()
        body = FakeResponse(200)
        h.agent.requests[0].answer.callback(body)
        response = result_of(d)
        self.assertIsNone(response.size())
        body.write(b"z" * 700)
        body.finish()
        self.assertEqual(read_all(response), b"z" * 700)

    def test_private_answers_are_not_shared(self):
        """
        A C{private} answer goes to the client it was asked for; another
        request waiting on it makes its own GET, with its own headers.
        """
        h = Harness(self)
        first = h.ask(peer=("192.0.2.7", 1))
        second = h.ask(peer=("192.0.2.8", 2))
        h.agent.requests[0].respond(200, b"for .7", {"Cache-Control": "private"})
        self.assertEqual(read_all(result_of(first)), b"for .7")
        self.assertEqual(len(h.agent.requests), 2)
        self.assertEqual(h.agent.requests[1].header("x-tftp-ip"), "192.0.2.8")
        h.agent.requests[1].respond(200, b"for .8", {"Cache-Control": "private"})
        self.assertEqual(read_all(result_of(second)), b"for .8")

    def test_varying_on_the_client_is_not_shared(self):
        """
        An answer that varies on a header that differs between clients is
        not shared; one that varies on Accept-Encoding alone (sent alike
        for all) is.
        """
        h = Harness(self)
        h.ask(), h.ask(peer=("192.0.2.8", 2))
        h.agent.requests[0].respond(200, b"v", {"Vary": "X-TFTP-IP"})
        self.assertEqual(len(h.agent.requests), 2)
        h.agent.requests[1].respond(200, b"v", {"Vary": "X-TFTP-IP"})
        h.ask("other"), h.ask("other", peer=("192.0.2.8", 2))
        h.agent.requests[2].respond(200, b"v", {"Vary": "Accept-Encoding"})
        self.assertEqual(len(h.agent.requests), 3)

    def test_last_reader_leaving_stops_the_download(self):
        """
        When every transfer reading a body has closed before it ends, the
        download is stopped and nothing is kept.
        """
        from origins import FakeResponse

        h = Harness(self, cache_bytes=10**6)
        a, b = h.ask(), h.ask(peer=("192.0.2.8", 2))
        body = FakeResponse(200, {"ETag": '"1"'}, length=5000)
        h.agent.requests[0].answer.callback(body)
        body.write(b"q" * 100)
        result_of(a).close()
        self.assertFalse(body.transport.stopped)
        result_of(b).close()
        self.assertTrue(body.transport.stopped)
        self.assertEqual(len(h.cache), 0)
        self.assertEqual(os.listdir(h.cache.tmp_dir), [])
        self.assertEqual(h.handler.stats.errors, 0)
        h.ask()
        self.assertEqual(len(h.agent.requests), 2)


class BackpressureTests(SynchronousTestCase):
    """
    A download never runs far ahead of the transfers reading it.
    """

    def test_paused_ahead_of_the_fastest_reader(self):
        """
        The body is paused once it is more than C{ahead} bytes in front of
        the fastest reader, and resumed when that reader has caught up
        half of it.
        """
        from origins import FakeResponse

        h = Harness(self, ahead=4096)
        d = h.ask()
        body = FakeResponse(200, length=100000)
        h.agent.requests[0].answer.callback(body)
        reader = result_of(d)
        body.write(b"x" * 4096)
        self.assertFalse(body.transport.paused)
        body.write(b"x" * 1)
        self.assertTrue(body.transport.paused)
        reader.read(1024)
        self.assertTrue(body.transport.paused)
        reader.read(2048)
        self.assertFalse(body.transport.paused)

    def test_kept_bodies_are_not_paused(self):
        """
        A body going into the cache is downloaded at the origin's pace:
        the entry completes, and a pause cannot outlast the origin's
        patience.
        """
        from origins import FakeResponse

        h = Harness(self, cache_bytes=10**6, ahead=10)
        d = h.ask()
        body = FakeResponse(200, {"ETag": '"1"'}, length=1000)
        h.agent.requests[0].answer.callback(body)
        reader = result_of(d)
        body.write(b"x" * 1000)
        self.assertFalse(body.transport.paused)
        body.finish()
        self.assertEqual(len(h.cache), 1)
        self.assertEqual(read_all(reader), b"x" * 1000)

    def test_not_idle_while_paused(self):
        """
        The idle timeout does not run while the download is paused for a
        slow reader.
        """
        from origins import FakeResponse

        h = Harness(self, ahead=10)
        d = h.ask()
        body = FakeResponse(200, length=100)
        h.agent.requests[0].answer.callback(body)
        reader = result_of(d)
        body.write(b"x" * 50)
        h.clock.advance(60)
        self.assertFalse(body.ended)
        self.assertEqual(reader.read(50), b"x" * 50)
        h.clock.advance(10)
        self.assertTrue(body.ended)


class ErrorTests(SynchronousTestCase):
    """
    Each kind of answer or failure becomes the TFTP error the issue says.
    """

    def outcome(self, code, headers=None, **harness):
        h = Harness(self, **harness)
        d = h.ask()
        h.agent.requests[0].respond(code, b"page", headers)
        return h, result_of(d)

    def test_404_is_file_not_found_and_remembered(self):
        """
        404 is ERROR 1, and the path is answered without asking for
        L{NEGATIVE_TTL} seconds.
        """
        h, failure = self.outcome(404)
        failure.trap(FileNotFound)
        self.assertRaises(FileNotFound, h.ask)
        self.assertEqual(len(h.agent.requests), 1)
        h.clock.advance(NEGATIVE_TTL)
        h.ask()
        self.assertEqual(len(h.agent.requests), 2)
        self.assertEqual(h.handler.stats.not_found, 2)
        self.assertFalse(h.handler.failing)

    def test_4xx_is_access_violation(self):
        """
        401, 403 and any other 4xx are ERROR 2.
        """
        for code in (401, 403, 418):
            _, failure = self.outcome(code)
            failure.trap(AccessViolation)

    def test_5xx_and_redirects_are_origin_unavailable(self):
        """
        A 5xx, or a redirect (never followed), is ERROR 0 "Origin
        unavailable", counted as an origin error, and the origin is failing.
        """
        for code, headers in ((500, None), (503, None), (302, {"Location": "http://evil/"})):
            h, failure = self.outcome(code, headers)
            failure.trap(OriginUnavailable)
            self.assertEqual(failure.value.code, 0)
            self.assertEqual(len(h.agent.requests), 1)
            self.assertEqual(h.handler.stats.errors, 1)
            self.assertTrue(h.handler.failing)

    def test_failing_ends_with_a_success(self):
        """
        The next answer that is not a failure clears C{failing}.
        """
        h, _ = self.outcome(500)
        h.ask()
        h.agent.requests[1].respond(200, b"ok")
        self.assertFalse(h.handler.failing)

    def test_headers_timeout(self):
        """
        No answer within the timeout is ERROR 0, and the request is
        cancelled.
        """
        h = Harness(self)
        d = h.ask()
        h.clock.advance(9.9)
        self.assertFalse(d.called)
        h.clock.advance(0.1)
        result_of(d).trap(OriginUnavailable)
        # Cancelled: the fake agent's Deferred fired (with CancelledError).
        self.assertTrue(h.agent.requests[0].answer.called)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_idle_body_timeout(self):
        """
        A body that stops arriving for the timeout fails its readers with
        ERROR 0 once they have read what came, and is not cached.
        """
        from origins import FakeResponse

        h = Harness(self, cache_bytes=10**6)
        d = h.ask()
        body = FakeResponse(200, {"ETag": '"1"'}, length=1000)
        h.agent.requests[0].answer.callback(body)
        reader = result_of(d)
        body.write(b"x" * 400)
        h.clock.advance(5)
        body.write(b"x" * 100)
        h.clock.advance(9)
        waiting = reader.read(1000)
        self.assertFalse(waiting.called)
        h.clock.advance(1)
        result_of(waiting).trap(OriginUnavailable)
        self.assertEqual(len(h.cache), 0)
        self.assertTrue(h.handler.failing)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_short_body(self):
        """
        A body that ends before its Content-Length fails its readers past
        what arrived, and leaves nothing in the cache.
        """
        from origins import FakeResponse

        h = Harness(self, cache_bytes=10**6)
        d = h.ask()
        body = FakeResponse(200, {"ETag": '"1"'}, length=1000)
        h.agent.requests[0].answer.callback(body)
        reader = result_of(d)
        body.write(b"x" * 600)
        body.fail()
        self.assertEqual(reader.read(512), b"x" * 512)
        self.assertRaises(OriginUnavailable, reader.read, 512)
        self.assertEqual(len(h.cache), 0)
        self.assertEqual(os.listdir(h.cache.tmp_dir), [])

    def test_cancelled_read(self):
        """
        A transfer that ends while its read waits cancels it; the body goes
        on for the other readers.
        """
        from origins import FakeResponse

        h = Harness(self)
        a, b = h.ask(), h.ask(peer=("192.0.2.8", 2))
        body = FakeResponse(200, length=100)
        h.agent.requests[0].answer.callback(body)
        ra, rb = result_of(a), result_of(b)
        waiting = ra.read(50)
        waiting.cancel()
        result_of(waiting).trap(CancelledError)
        ra.close()
        body.write(b"y" * 100)
        body.finish()
        self.assertEqual(read_all(rb, 64), b"y" * 100)


class CacheBehaviourTests(SynchronousTestCase):
    """
    Freshness, revalidation and stale-if-error through the handler.
    """

    def fill(self, h, headers, body=b"v1" * 100):
        d = h.ask()
        h.agent.requests[-1].respond(200, body, headers)
        response = result_of(d)
        self.assertEqual(read_all(response), body)
        response.close()

    def test_fresh_entries_are_hits(self):
        """
        While fresh (max-age), an entry is served without asking.
        """
        h = Harness(self, cache_bytes=10**6)
        self.fill(h, {"Cache-Control": "max-age=60"})
        h.clock.advance(59)
        response = h.ask()
        self.assertEqual(read_all(response), b"v1" * 100)
        response.close()
        self.assertEqual(len(h.agent.requests), 1)
        self.assertEqual(h.handler.stats.hits, 1)
        self.assertEqual(h.handler.stats.bytes_from_cache, 200)

    def test_stale_entries_are_revalidated(self):
        """
        A stale entry is asked for with its validators; a 304 serves it and
        renews its freshness.
        """
        h = Harness(self, cache_bytes=10**6)
        self.fill(
            h,
            {"Cache-Control": "max-age=10", "ETag": '"v1"',
             "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"},
        )
        h.clock.advance(11)
        d = h.ask()
        sent = h.agent.requests[1]
        self.assertEqual(sent.header("if-none-match"), '"v1"')
        self.assertEqual(sent.header("if-modified-since"), "Mon, 01 Jan 2024 00:00:00 GMT")
        sent.respond(304, headers={"Cache-Control": "max-age=10"})
        self.assertEqual(read_all(result_of(d)), b"v1" * 100)
        self.assertEqual(h.handler.stats.revalidations, 1)
        h.ask().close()
        self.assertEqual(len(h.agent.requests), 2)

    def test_a_bare_304_keeps_the_lifetime(self):
        """
        A 304 without Cache-Control or Expires (nginx's, unless told) keeps
        the entry's freshness rules and restarts its lifetime.
        """
        h = Harness(self, cache_bytes=10**6)
        self.fill(h, {"Cache-Control": "max-age=10", "ETag": '"v1"'})
        h.clock.advance(11)
        d = h.ask()
        h.agent.requests[1].respond(304, headers={"ETag": '"v1"'})
        read_all(result_of(d))
        h.clock.advance(9)
        h.ask().close()
        self.assertEqual(len(h.agent.requests), 2)

    def test_abandoned_before_the_body_arrives(self):
        """
        A response closed as soon as it is handed over (the server is
        stopping) stops the download before its body is delivered.
        """
        from origins import FakeResponse

        h = Harness(self)
        h.ask().addCallback(lambda response: response.close())
        body = FakeResponse(200, length=10)
        h.agent.requests[0].answer.callback(body)
        self.assertTrue(body.transport.stopped)
        self.assertEqual(h.handler.flights, {})

    def test_changed_entries_are_replaced(self):
        """
        A 200 to a revalidation replaces the entry with the new body.
        """
        h = Harness(self, cache_bytes=10**6)
        self.fill(h, {"ETag": '"v1"'})
        h.clock.advance(1)
        self.fill(h, {"ETag": '"v2"', "Cache-Control": "max-age=60"}, body=b"v2")
        self.assertEqual(read_all(h.ask()), b"v2")
        self.assertEqual(len(h.cache), 1)

    def test_stale_if_error(self):
        """
        While the origin fails, a stale entry is served (counted), within
        its stale-if-error allowance; past it, ERROR 0.
        """
        h = Harness(self, cache_bytes=10**6)
        self.fill(h, {"Cache-Control": "max-age=10, stale-if-error=100", "ETag": '"1"'})
        h.clock.advance(50)
        d = h.ask()
        h.agent.requests[-1].respond(502, b"down")
        self.assertEqual(read_all(result_of(d)), b"v1" * 100)
        self.assertEqual(h.handler.stats.stale_serves, 1)
        self.assertTrue(h.handler.failing)
        h.clock.advance(100)
        d = h.ask()
        h.agent.requests[-1].answer.errback(ConnectionRefusedError())
        result_of(d).trap(OriginUnavailable)

    def test_must_revalidate_is_never_stale(self):
        """
        An entry with must-revalidate is not served while the origin fails.
        """
        h = Harness(self, cache_bytes=10**6)
        self.fill(h, {"Cache-Control": "max-age=1, must-revalidate", "ETag": '"1"'})
        h.clock.advance(2)
        d = h.ask()
        h.agent.requests[-1].respond(500, b"")
        result_of(d).trap(OriginUnavailable)

    def test_no_store_is_not_kept(self):
        """
        A no-store answer is served and forgotten.
        """
        h = Harness(self, cache_bytes=10**6)
        self.fill(h, {"Cache-Control": "no-store, max-age=60", "ETag": '"1"'})
        self.assertEqual(len(h.cache), 0)

    def test_heuristic_freshness(self):
        """
        An answer with a validator and no freshness information (nginx's
        static files) is fresh for one second, then revalidated; with
        C{heuristic_lifetime=0}, before every use.
        """
        h = Harness(self, cache_bytes=10**6)
        self.fill(h, {"ETag": '"1"'})
        h.clock.advance(0.9)
        h.ask().close()
        self.assertEqual(len(h.agent.requests), 1)
        h.clock.advance(0.1)
        h.ask()
        self.assertEqual(h.agent.requests[-1].header("if-none-match"), '"1"')
        strict = Harness(self, cache_bytes=10**6, heuristic_lifetime=0)
        self.fill(strict, {"ETag": '"1"'})
        strict.ask()
        self.assertEqual(len(strict.agent.requests), 2)

    def test_revalidations_are_single_flight(self):
        """
        Requests for a stale entry while it is revalidated wait for that
        one conditional GET.
        """
        h = Harness(self, cache_bytes=10**6)
        self.fill(h, {"ETag": '"1"'})
        h.clock.advance(1)
        pending = [h.ask(peer=("192.0.2.7", i)) for i in range(5)]
        self.assertEqual(len(h.agent.requests), 2)
        h.agent.requests[1].respond(304)
        for d in pending:
            self.assertEqual(read_all(result_of(d)), b"v1" * 100)
        self.assertEqual(h.handler.stats.revalidations, 5)


class PolicyTests(SynchronousTestCase):
    """
    What an answer's headers allow a shared cache.
    """

    def test_parse(self):
        self.assertEqual(
            parse_cache_control('max-age=60, Private, stale-if-error="30"'),
            {"max-age": "60", "private": None, "stale-if-error": "30"},
        )

    def test_lifetimes(self):
        """
        s-maxage wins over max-age, which wins over Expires - Date; no
        information means fresh for no time; Age is subtracted.
        """
        date = "Mon, 01 Jan 2024 00:00:00 GMT"
        expires = "Mon, 01 Jan 2024 00:10:00 GMT"
        self.assertEqual(policy_for({"cache-control": "max-age=5, s-maxage=9"}, 0).lifetime, 9)
        self.assertEqual(
            policy_for({"cache-control": "max-age=5", "expires": expires}, 0).lifetime, 5
        )
        self.assertEqual(policy_for({"expires": expires, "date": date}, 0).lifetime, 600)
        self.assertEqual(policy_for({"expires": "0", "date": date}, 0).lifetime, 0)
        self.assertEqual(policy_for({}, 0).lifetime, 0)
        self.assertEqual(policy_for({"age": "3"}, 10).stored, 7)

    def test_storing(self):
        """
        Stored: shareable answers with freshness or a validator.
        """
        self.assertFalse(policy_for({}, 0).store)
        self.assertEqual(policy_for({"last-modified": "x"}, 0).lifetime, 1.0)
        self.assertEqual(policy_for({"etag": '"x"'}, 0, heuristic=0).lifetime, 0)
        self.assertTrue(policy_for({"etag": '"x"'}, 0).store)
        self.assertTrue(policy_for({"cache-control": "max-age=1"}, 0).store)
        self.assertFalse(policy_for({"cache-control": "private, max-age=1"}, 0).share)
        self.assertFalse(policy_for({"cache-control": "no-store"}, 0).store)
        self.assertTrue(policy_for({"cache-control": "no-cache"}, 0).must_revalidate)
        self.assertEqual(policy_for({"cache-control": "no-cache, max-age=9"}, 0).lifetime, 0)


def _entry(url, size, **changes):
    fields = dict(
        url=url, body="", size=size, stored=0.0, lifetime=60.0, stale_if_error=None,
        must_revalidate=False, etag=None, last_modified=None,
    )
    fields.update(changes)
    return Entry(**fields)


class DiskCacheTests(SynchronousTestCase):
    """
    The store: atomic entries, LRU eviction at the byte bound, kept across
    restarts.
    """

    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.addCleanup(_rmtree, self.directory)

    def put(self, cache, url, data):
        fd, path = cache.temporary()
        os.write(fd, data)
        os.close(fd)
        return cache.commit(path, _entry(url, len(data)))

    def test_least_recently_used_are_evicted(self):
        """
        Past the bound, the entries used least recently go first.
        """
        cache = DiskCache(self.directory, 250)
        for name in "abc":
            self.put(cache, name, b"x" * 100)
        self.assertIsNone(cache.get("a"))
        os.close(cache.open(cache.get("b")))
        self.put(cache, "d", b"x" * 100)
        self.assertEqual([u for u in "abcd" if cache.get(u)], ["b", "d"])
        self.assertEqual(cache.total, 200)

    def test_too_large_is_not_kept(self):
        cache = DiskCache(self.directory, 50)
        self.assertIsNone(self.put(cache, "a", b"x" * 51))
        self.assertEqual(os.listdir(cache.tmp_dir), [])

    def test_kept_across_restarts(self):
        """
        A new store on the same directory has the same entries, in the
        same order of use; orphans and the partial downloads of writers
        that are gone are removed, not one still being written.
        """
        cache = DiskCache(self.directory, 1000)
        self.put(cache, "a", b"a" * 100)
        self.put(cache, "b", b"b" * 100)
        past = os.stat(os.path.join(self.directory, cache.get("b").body)).st_mtime - 10
        os.utime(os.path.join(self.directory, cache.get("b").body), (past, past))
        # A temporary whose writer is gone (its descriptor closed, as when
        # its process died), and one still being written.
        fd, _ = cache.temporary()
        os.close(fd)
        writing, path = cache.temporary()
        self.addCleanup(os.close, writing)
        open(os.path.join(self.directory, "orphan"), "w").close()
        again = DiskCache(self.directory, 150)
        self.assertIsNone(again.get("b"))
        fd = again.open(again.get("a"))
        self.assertEqual(os.read(fd, 1000), b"a" * 100)
        os.close(fd)
        self.assertEqual(os.listdir(again.tmp_dir), [os.path.basename(path)])
        self.assertNotIn("orphan", os.listdir(self.directory))

    def test_a_body_of_the_wrong_length_is_dropped(self):
        cache = DiskCache(self.directory, 1000)
        entry = self.put(cache, "a", b"a" * 100)
        with open(os.path.join(self.directory, entry.body), "ab") as f:
            f.write(b"more")
        self.assertIsNone(DiskCache(self.directory, 1000).get("a"))

    def test_metadata_names_its_body(self):
        """
        Replacing an entry writes a new body file and then the metadata
        naming it, so the old metadata never describes the new body.
        """
        cache = DiskCache(self.directory, 1000)
        first = self.put(cache, "a", b"1" * 10)
        second = self.put(cache, "a", b"2" * 20)
        self.assertNotEqual(first.body, second.body)
        self.assertFalse(os.path.exists(os.path.join(self.directory, first.body)))
        [meta] = [n for n in os.listdir(self.directory) if n.endswith(".json")]
        with open(os.path.join(self.directory, meta)) as f:
            self.assertEqual(json.load(f)["body"], second.body)


class SharedDiskCacheTests(SynchronousTestCase):
    """
    Two stores on one directory, as two workers have: the directory is the
    index, the bound is theirs together, and neither removes what the other
    is writing.
    """

    def setUp(self):
        self.directory = tempfile.mkdtemp()
        self.addCleanup(_rmtree, self.directory)

    put = DiskCacheTests.put

    def test_entries_are_shared(self):
        """
        What one store keeps, the other finds; what one replaces, the other
        finds replaced, and the old body is gone.
        """
        one, two = DiskCache(self.directory, 1000), DiskCache(self.directory, 1000)
        self.put(one, "a", b"1" * 10)
        fd = two.open(two.get("a"))
        self.assertEqual(os.read(fd, 100), b"1" * 10)
        os.close(fd)
        self.put(two, "a", b"2" * 20)
        fd = one.open(one.get("a"))
        self.assertEqual(os.read(fd, 100), b"2" * 20)
        os.close(fd)
        self.assertEqual(len(one), 1)
        self.assertEqual(len(os.listdir(self.directory)), 5, os.listdir(self.directory))

    def test_the_bound_is_for_every_store(self):
        """
        The bytes kept by both stay within the bound: the least recently
        used, whoever kept it, is evicted.
        """
        one, two = DiskCache(self.directory, 250), DiskCache(self.directory, 250)
        self.put(one, "a", b"x" * 100)
        self.put(two, "b", b"x" * 100)
        past = os.stat(os.path.join(self.directory, one.get("a").body)).st_mtime - 10
        os.utime(os.path.join(self.directory, one.get("a").body), (past, past))
        self.put(one, "c", b"x" * 100)
        self.assertEqual([u for u in "abc" if two.get(u)], ["b", "c"])
        self.assertEqual(one.total, 200)
        self.assertEqual(two.total, 200)

    def test_a_store_opened_keeps_what_another_writes(self):
        """
        A store opened (a worker started) while another writes a body
        leaves that body, which is then kept.
        """
        one = DiskCache(self.directory, 1000)
        fd, path = one.temporary()
        os.write(fd, b"z" * 30)
        two = DiskCache(self.directory, 1000)
        one.commit(path, _entry("a", 30))
        os.close(fd)
        self.assertEqual(two.get("a").size, 30)

    def test_one_claim_at_a_time(self):
        """
        While one store holds the claim on a URL, the other cannot take it
        but sees it held, and what it announces; released, it is free.
        """
        one, two = DiskCache(self.directory, 1000), DiskCache(self.directory, 1000)
        claim = one.claim("a")
        self.assertIsNone(two.claim("a"))
        self.assertEqual(two.claimed("a"), (True, None))
        claim.announce("/some/part", 1234)
        held, announced = two.claimed("a")
        self.assertTrue(held)
        self.assertEqual((announced.part, announced.size), ("/some/part", 1234))
        claim.release()
        self.assertEqual(two.claimed("a"), (False, None))
        two.claim("a").release()
        self.assertEqual(os.listdir(os.path.join(self.directory, "claims")), [])

    def test_a_claim_left_by_a_dead_process(self):
        """
        A claim whose process died while downloading (the kernel dropped
        its lock, its file is left) is free, and taken anew it announces
        nothing of the dead download.
        """
        code = (
            "import os, sys; from tftpd_tx.cache import DiskCache; "
            "DiskCache(sys.argv[1], 1000).claim('a').announce('/dead/part', 99); "
            "os._exit(0)"
        )
        subprocess.run([sys.executable, "-c", code, self.directory], check=True, cwd=REPO)
        cache = DiskCache(self.directory, 1000)
        self.assertEqual(cache.claimed("a"), (False, None))
        claim = cache.claim("a")
        self.assertEqual(DiskCache(self.directory, 1000).claimed("a"), (True, None))
        claim.release()


class WorkersSingleFlightTests(SynchronousTestCase):
    """
    Two handlers on one cache directory, as two workers are: a cold file
    one of them is downloading is read by the other as it arrives, without
    a GET of its own.
    """

    def setUp(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(_rmtree, directory)
        self.one = Harness(self, cache_bytes=10**6, cache_dir=directory)
        self.two = Harness(self, cache_bytes=10**6, cache_dir=directory)

    def test_the_other_worker_follows_the_download(self):
        """
        The second worker makes no GET; its reader gets the bytes as the
        first worker writes them, with the announced length as its size;
        afterwards the file is a hit for it.
        """
        from origins import FakeResponse

        mine = self.one.ask()
        theirs = self.two.ask()
        self.assertEqual(len(self.two.agent.requests), 0)
        body = FakeResponse(200, {"ETag": '"v1"', "Cache-Control": "max-age=60"}, length=3000)
        self.one.agent.requests[0].answer.callback(body)
        body.write(b"a" * 1500)
        self.two.clock.advance(FOLLOW_INTERVAL)
        reader = result_of(theirs)
        self.assertEqual(reader.size(), 3000)
        self.assertEqual(result_of(reader.read(1000)), b"a" * 1000)
        rest = reader.read(2000)
        self.assertFalse(rest.called)
        body.write(b"b" * 1500)
        body.finish()
        self.two.clock.advance(FOLLOW_INTERVAL)
        self.assertEqual(result_of(rest), b"a" * 500 + b"b" * 1500)
        self.assertEqual(reader.read(100), b"")
        reader.close()
        result_of(mine).close()
        self.assertEqual(self.two.handler.stats.origin_requests, 0)
        self.assertEqual(self.two.handler.stats.misses, 1)
        self.assertEqual(read_all(self.two.ask()), b"a" * 1500 + b"b" * 1500)
        self.assertEqual(self.two.handler.stats.hits, 1)

    def test_a_download_cut_short_fails_the_followers(self):
        """
        When the first worker's download breaks, the second worker's reads
        past what arrived fail: ERROR 0, as for the first worker's readers.
        """
        from origins import FakeResponse

        mine = self.one.ask()
        theirs = self.two.ask()
        body = FakeResponse(200, {"Cache-Control": "max-age=60"}, length=3000)
        self.one.agent.requests[0].answer.callback(body)
        body.write(b"a" * 1000)
        self.two.clock.advance(FOLLOW_INTERVAL)
        reader = result_of(theirs)
        self.assertEqual(result_of(reader.read(1000)), b"a" * 1000)
        rest = reader.read(1000)
        body.fail()
        self.two.clock.advance(FOLLOW_INTERVAL)
        self.assertIsInstance(result_of(rest).value, OriginUnavailable)
        reader.close()
        result_of(mine).close()
        self.assertIsNone(self.two.cache.get(BASE + "images/kernel"))

    def test_an_answer_not_kept_is_asked_for_again(self):
        """
        An answer the first worker may not keep (C{private}) is not read
        by the second, which asks the origin itself.
        """
        mine = self.one.ask()
        theirs = self.two.ask()
        self.one.agent.requests[0].respond(200, b"p" * 100, {"Cache-Control": "private"})
        self.two.clock.advance(FOLLOW_INTERVAL)
        self.assertEqual(len(self.two.agent.requests), 1)
        self.two.agent.requests[0].respond(200, b"q" * 100, {"Cache-Control": "private"})
        self.assertEqual(read_all(result_of(theirs)), b"q" * 100)
        result_of(mine).close()


class SpoolTests(SynchronousTestCase):
    """
    The file that readers follow while it is written.
    """

    def spool(self, **kwargs):
        fd, path = tempfile.mkstemp()
        os.unlink(path)
        return Spool(fd, **kwargs)

    def test_short_read_at_the_end(self):
        spool = self.spool(size=5)
        reader = spool.reader()
        waiting = reader.read(4)
        spool.write(b"abc")
        self.assertFalse(waiting.called)
        spool.write(b"de")
        self.assertEqual(result_of(waiting), b"abcd")
        spool.finish()
        self.assertEqual(reader.read(4), b"e")
        reader.close()

    def test_failure_after_what_arrived(self):
        spool = self.spool()
        reader = spool.reader()
        spool.write(b"abc")
        waiting = reader.read(4)
        spool.fail(OriginUnavailable())
        result_of(waiting).trap(OriginUnavailable)
        reader.close()


class LocalFirstTests(SynchronousTestCase):
    """
    A local handler first, the origin for what it does not have.
    """

    def test_falls_back_on_file_not_found(self):
        class Local:
            def get_response_data(self, request):
                if request.normalized_path == "here":
                    return "local"
                raise FileNotFound()

        class Later:
            def get_response_data(self, request):
                d = Deferred()
                d.errback(FileNotFound())
                return d

        class Fallback:
            def get_response_data(self, request):
                return "origin"

        handler = LocalFirst(Local(), Fallback())
        self.assertEqual(handler.get_response_data(request("here")), "local")
        self.assertEqual(handler.get_response_data(request("there")), "origin")
        later = LocalFirst(Later(), Fallback())
        self.assertEqual(result_of(later.get_response_data(request("x"))), "origin")

    def test_a_root_directory_first(self):
        """
        A file missing from a L{FilesystemHandler}'s root goes to the
        fallback; one that is there is served from the root.
        """
        from tftpd_tx.filesystem import FilesystemHandler

        root = tempfile.mkdtemp()
        self.addCleanup(_rmtree, root)
        with open(os.path.join(root, "here"), "wb") as f:
            f.write(b"local")

        class Fallback:
            def get_response_data(self, request):
                return "origin"

        handler = LocalFirst(FilesystemHandler(root), Fallback())
        local = handler.get_response_data(request("here"))
        self.assertEqual(local.read(10), b"local")
        local.close()
        self.assertEqual(handler.get_response_data(request("there/x")), "origin")
        self.assertRaises(AccessViolation, handler.get_response_data, request("../x"))

    def test_other_refusals_stand(self):
        class Local:
            def get_response_data(self, request):
                raise AccessViolation()

        handler = LocalFirst(Local(), None)
        self.assertRaises(AccessViolation, handler.get_response_data, request("x"))

"""
The listener: request decoding, policy, handlers and session start, on a
fake reactor.
"""

from __future__ import annotations

import struct

from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx import wire
from tftpd_tx.content import AccessViolation, BytesResponseData
from tftpd_tx.options import Limits
from tftpd_tx.server import TFTPServer
from tftpd_tx.settings import Settings
from tftpd_tx.stats import Outcome
from tftpd_tx.testing import FakeUDPReactor, MemoryHandler

CLIENT = ("198.51.100.20", 3000)
FILES = {"boot/pxelinux.0": b"p" * 1300, "small.cfg": b"default local\n"}


def rrq(path, mode="octet", **options):
    return wire.ReadRequest(path, mode, {k: str(v) for k, v in options.items()}).encode()


def ack(block):
    return struct.pack("!HH", 4, block)


class ServerMixin:
    def setUp(self):
        self.reactor = FakeUDPReactor()
        self.handler = MemoryHandler(dict(FILES))
        self.finished = []
        self.server = TFTPServer(
            self.handler,
            Settings(limits=Limits(max_blksize=1024)),
            reactor=self.reactor,
            session_callback=self.finished.append,
        )
        self.listener = self.reactor.listenUDP(69, self.server, interface="0.0.0.0")

    def request(self, datagram, peer=CLIENT, local="192.0.2.1"):
        self.listener.deliver(datagram, peer, local)

    def session_port(self):
        """
        The one transfer port opened so far.
        """
        (port,) = self.reactor.ports[1:]
        return port

    def errors_sent(self):
        return [wire.decode(datagram) for datagram in self.listener.take()]


class ReadRequestTests(ServerMixin, SynchronousTestCase):
    """
    An RRQ starts a transfer on a port of its own.
    """

    def test_transfer_on_own_port_at_request_address(self):
        """
        The transfer runs on a new port bound to the address the request was
        sent to, and the listener sends nothing.
        """
        self.request(rrq("/boot/pxelinux.0"))
        port = self.session_port()
        self.assertEqual(port.interface, "192.0.2.1")
        self.assertEqual(self.listener.sent, [])
        self.assertEqual(port.sent[0], (b"\0\3\0\1" + b"p" * 512, CLIENT))

    def test_errors_leave_from_the_address_asked(self):
        """
        The listener's ERROR goes out through C{reply_from} with the address
        the request was sent to as its source, so a client of a multi-homed
        or anycast host accepts it.
        """
        self.request(rrq("missing"), local="192.0.2.9")
        ((datagram, peer, source),) = self.listener.replies
        self.assertEqual((peer, source), (CLIENT, "192.0.2.9"))
        self.assertEqual(wire.decode(datagram).code, wire.ErrorCode.FILE_NOT_FOUND)

    def test_request_seen_by_handler(self):
        """
        The handler sees the peer, the local address, the path as sent and
        normalized, the mode and the options.
        """
        self.request(rrq("\\boot\\pxelinux.0", "NetASCII", BLKSIZE=1000))
        (request,) = self.handler.requests
        self.assertEqual(request.peer, CLIENT)
        self.assertEqual(request.local, ("192.0.2.1", 69))
        self.assertEqual(request.path, "\\boot\\pxelinux.0")
        self.assertEqual(request.normalized_path, "boot/pxelinux.0")
        self.assertEqual(request.mode, "netascii")
        self.assertEqual(request.options, {"blksize": "1000"})

    def test_options_acknowledged(self):
        """
        Accepted options come back in an OACK, clamped to the limits; the
        data follows ACK 0 with the negotiated block size.
        """
        self.request(rrq("boot/pxelinux.0", blksize=1468, tsize=0, foo=1))
        port = self.session_port()
        self.assertEqual(
            port.take(), [wire.OptionAck({"blksize": "1024", "tsize": "1300"}).encode()]
        )
        port.deliver(ack(0), CLIENT)
        self.assertEqual(port.take(), [b"\0\3\0\1" + b"p" * 1024])

    def test_client_timeout_option(self):
        """
        The timeout option becomes the session's retransmit wait.
        """
        self.request(rrq("small.cfg", timeout=3))
        port = self.session_port()
        oack = port.take()
        self.reactor.advance(2.9)
        self.assertEqual(port.take(), [])
        self.reactor.advance(0.1)
        self.assertEqual(port.take(), oack)

    def test_netascii(self):
        """
        netascii transfers convert line ends and offer no tsize.
        """
        self.handler.files["dos.txt"] = b"a\nb\rc"
        self.request(rrq("dos.txt", "netascii", tsize=0))
        port = self.session_port()
        self.assertEqual(port.take(), [b"\0\3\0\1a\r\nb\r\0c"])

    def test_session_callback_and_log(self):
        """
        A finished transfer is reported to the session callback and logged
        in one line with its figures.
        """
        with capturedLogs() as events:
            self.request(rrq("small.cfg"))
            self.session_port().deliver(ack(1), CLIENT)
        (stats,) = self.finished
        self.assertEqual(stats.outcome, Outcome.COMPLETED)
        self.assertEqual(stats.bytes_sent, len(FILES["small.cfg"]))
        self.assertEqual(stats.server_addr, ("192.0.2.1", 69))
        (line,) = [e for e in events if e.get("outcome")]
        self.assertEqual(line["log_level"], LogLevel.info)
        self.assertEqual(line["path"], "small.cfg")
        self.assertEqual(line["bytes"], len(FILES["small.cfg"]))
        self.assertEqual(self.server.stats.counters["outcome.completed"], 1)
        self.assertEqual(self.server.sessions, {})
        self.assertEqual(self.reactor.open_ports(), [self.listener])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_storm_logs_up_to_the_rate(self):
        """
        Past C{log_rate} transfer lines a second, the rest are not logged
        one by one: one line at the end of the second counts them by
        outcome, and the counters still have every transfer.
        """
        self.server.settings.log_rate = 3
        with capturedLogs() as events:
            for n in range(10):
                peer = ("198.51.100.40", 41000 + n)
                self.request(rrq("small.cfg"), peer=peer)
                self.reactor.ports[-1].deliver(ack(1), peer)
            self.request(rrq("missing"), peer=("198.51.100.41", 4001))
            self.reactor.advance(1)
        lines = [e for e in events if e.get("outcome")]
        self.assertEqual(len(lines), 3)
        (summary,) = [e for e in events if "held" in e]
        self.assertEqual(summary["held"], {"completed": 7, "refused": 1})
        self.assertEqual(summary["count"], 8)
        self.assertEqual(self.server.stats.counters["outcome.completed"], 10)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_probe_logged_at_debug(self):
        """
        A client refusing the OACK (a size probe) is counted as a probe and
        logged at debug level only.
        """
        with capturedLogs() as events:
            self.request(rrq("small.cfg", tsize=0))
            self.session_port().deliver(wire.Error(8, "").encode(), CLIENT)
        (line,) = [e for e in events if e.get("outcome")]
        self.assertEqual(line["log_level"], LogLevel.debug)
        self.assertEqual(self.server.stats.counters["outcome.probe"], 1)
        self.assertNotIn("errors.8", self.server.stats.counters)

    def test_stop_aborts_transfers(self):
        """
        Stopping the server ends every transfer with an ERROR to its client.
        """
        self.request(rrq("boot/pxelinux.0"))
        port = self.session_port()
        port.take()
        self.server.stop()
        self.assertEqual(port.take(), [wire.Error(0, "Server shutting down").encode()])
        self.assertFalse(port.listening)

    def test_handler_answering_after_stop(self):
        """
        A handler whose Deferred fires after the server stopped opens no
        port: the response is closed and the client told.
        """
        pending = Deferred()

        class Slow:
            def get_response_data(self, request):
                return pending

        self.server.handler = Slow()
        self.request(rrq("x"))
        self.server.stop()
        response = BytesResponseData(b"late")
        pending.callback(response)
        self.assertEqual(len(self.reactor.ports), 1)
        self.assertEqual(self.errors_sent(), [wire.Error(0, "Server shutting down")])
        self.assertRaises(ValueError, response.read, 1)


class DuplicateRequestTests(ServerMixin, SynchronousTestCase):
    """
    A retransmitted RRQ must not start a second transfer.
    """

    def test_repeat_while_transfer_runs(self):
        """
        The same RRQ from the same address and port while its transfer runs
        is ignored.
        """
        self.request(rrq("small.cfg"))
        self.request(rrq("small.cfg"))
        self.assertEqual(len(self.reactor.ports), 2)
        self.assertEqual(len(self.handler.requests), 1)
        self.assertEqual(self.server.stats.counters["requests.duplicate"], 1)

    def test_other_port_is_another_transfer(self):
        """
        The same client from another port is a new transfer.
        """
        self.request(rrq("small.cfg"))
        self.request(rrq("small.cfg"), peer=(CLIENT[0], CLIENT[1] + 1))
        self.assertEqual(len(self.reactor.ports), 3)

    def test_served_again_after_the_end(self):
        """
        Once a transfer ended, the same address and port may ask again.
        """
        self.request(rrq("small.cfg"))
        self.session_port().deliver(ack(1), CLIENT)
        self.request(rrq("small.cfg"))
        self.assertEqual(len(self.reactor.ports), 3)

    def test_new_request_after_unread_last_ack(self):
        """
        A client that asks again from the port of a transfer whose last ACK
        has arrived but not been read yet (the two wait on different ports)
        gets a new transfer: the listener has the transfer catch up first.
        """
        self.request(rrq("small.cfg"))
        self.session_port().arrive(ack(1), CLIENT)
        self.request(rrq("small.cfg"))
        self.assertEqual(len(self.reactor.ports), 3)
        self.assertEqual(len(self.handler.requests), 2)
        self.assertEqual(self.server.stats.counters["requests.duplicate"], 0)

    def test_repeat_while_handler_works(self):
        """
        While a handler's Deferred is pending, repeats do not call it again;
        when it fires, one transfer starts.
        """
        pending = Deferred()
        calls = []

        class Slow:
            def get_response_data(self, request):
                calls.append(request)
                return pending

        self.server.handler = Slow()
        self.request(rrq("x"))
        self.request(rrq("x"))
        self.assertEqual(len(calls), 1)
        self.assertEqual(len(self.reactor.ports), 1)
        pending.callback(BytesResponseData(b"late"))
        self.assertEqual(self.session_port().take(), [b"\0\3\0\1late"])


class RefusalTests(ServerMixin, SynchronousTestCase):
    """
    Requests that get an ERROR from the listener.
    """

    def test_missing_file(self):
        """
        A file the handler does not have gets ERROR 1, and no port opens.
        """
        self.request(rrq("nope"))
        self.assertEqual(self.errors_sent(), [wire.Error(1, "File not found")])
        self.assertEqual(len(self.reactor.ports), 1)
        self.assertEqual(self.server.stats.counters["errors.1"], 1)

    def test_handler_refusal(self):
        """
        A handler raising a TFTP error sends that error; the client may then
        ask again.
        """

        class Deny:
            def get_response_data(self, request):
                raise AccessViolation("not for you")

        self.server.handler = Deny()
        self.request(rrq("x"))
        self.request(rrq("x"))
        self.assertEqual(self.errors_sent(), [wire.Error(2, "not for you")] * 2)

    def test_deferred_refusal(self):
        """
        A handler's Deferred failing with a TFTP error sends that error.
        """
        pending = Deferred()

        class Later:
            def get_response_data(self, request):
                return pending

        self.server.handler = Later()
        self.request(rrq("x"))
        pending.errback(AccessViolation("later no"))
        self.assertEqual(self.errors_sent(), [wire.Error(2, "later no")])

    def test_coroutine_handler(self):
        """
        A handler may be a coroutine function.
        """

        class Async:
            async def get_response_data(self, request):
                return BytesResponseData(b"from a coroutine")

        self.server.handler = Async()
        self.request(rrq("x"))
        self.assertEqual(self.session_port().take(), [b"\0\3\0\1from a coroutine"])

    def test_unexpected_handler_error(self):
        """
        A handler bug reaches the client as ERROR 0 with a generic message
        and the operator as a logged traceback.
        """

        class Buggy:
            def get_response_data(self, request):
                raise KeyError("internal detail")

        self.server.handler = Buggy()
        self.request(rrq("x"))
        self.assertEqual(self.errors_sent(), [wire.Error(0, "Internal server error")])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_unsupported_modes(self):
        """
        mail and unknown modes get ERROR 4.
        """
        for mode in ("mail", "binary", "\x01"):
            self.request(rrq("small.cfg", mode))
        self.assertEqual(
            self.errors_sent(), [wire.Error(4, "Unsupported transfer mode")] * 3
        )
        self.assertEqual(self.handler.requests, [])

    def test_write_request(self):
        """
        WRQ gets ERROR 2: this server does not accept writes.
        """
        self.request(wire.WriteRequest("upload.bin", "octet").encode())
        (error,) = self.errors_sent()
        self.assertEqual(error.code, 2)
        self.assertIn("not supported", error.message)


class MalformedDatagramTests(ServerMixin, SynchronousTestCase):
    """
    Garbage on the listener never raises, never disturbs, and is answered
    with ERROR 4 only when it claims to be a request.
    """

    GARBAGE_DROPPED = [
        b"",
        b"\0",
        b"\xff",
        b"\0\3",
        b"\0\4\0\1",
        b"\0\5\0\0oops\0",
        b"\0\6blksize\0" b"512\0",
    ]
    GARBAGE_ANSWERED = [
        b"\0\1",
        b"\0\1file",
        b"\0\1file\0",
        b"\0\1\0octet\0",
        b"\0\2file\0octet",
        b"\0\x63whatever",
    ]

    def test_dropped(self):
        """
        Too short to be anything, or a non-request packet: silence.
        """
        for datagram in self.GARBAGE_DROPPED:
            self.request(datagram)
        self.assertEqual(self.listener.sent, [])

    def test_answered_with_error_4(self):
        """
        Malformed requests and unknown opcodes get ERROR 4.
        """
        for datagram in self.GARBAGE_ANSWERED:
            self.request(datagram)
        codes = [error.code for error in self.errors_sent()]
        self.assertEqual(codes, [4] * len(self.GARBAGE_ANSWERED))

    def test_huge_requests(self):
        """
        A 60,000-byte filename and 10,000 options (RFC 2347 bounds a request
        to 512 octets) get ERROR 4 without being decoded, and a normal
        request still works afterwards.
        """
        self.request(rrq("a" * 60000))
        options = b"".join(b"opt%d\0%d\0" % (n, n) for n in range(10000))
        self.request(b"\0\1small.cfg\0octet\0" + options, peer=("198.51.100.21", 4001))
        self.request(rrq("small.cfg"), peer=("198.51.100.22", 4001))
        self.assertEqual(
            self.errors_sent(), [wire.Error(4, "Request over 512 octets")] * 2
        )
        self.assertEqual(len(self.reactor.ports), 2)
        self.assertEqual(self.server.stats.counters["requests.too_large"], 2)

    def test_garbage_flood_logs_little(self):
        """
        A flood of malformed datagrams is counted in full but logged once
        per interval, the next line saying how many went unlogged.
        """
        with capturedLogs() as events:
            for _ in range(1000):
                self.request(b"\0\1no-terminator")
            self.reactor.advance(10)
            self.request(b"\0\1no-terminator")
        lines = [e for e in events if "reason" in e]
        self.assertEqual([e["suppressed"] for e in lines], [0, 999])
        self.assertEqual(self.server.stats.counters["datagrams.malformed"], 1001)

    def test_nothing_escapes_datagram_received(self):
        """
        Even a handler that is not a handler cannot make datagramReceived
        raise; the error is logged and the server keeps serving.
        """
        self.server.handler = object()
        self.request(rrq("x"))
        self.flushLoggedErrors(AttributeError)
        self.server.handler = self.handler
        self.request(rrq("small.cfg"))
        self.assertEqual(len(self.reactor.ports), 2)


class DrainTests(ServerMixin, SynchronousTestCase):
    """
    Draining: no new transfers, running ones finish.
    """

    def test_drain_and_resume(self):
        """
        While draining, new requests are ignored (no answer at all, so the
        client tries another server) and a running transfer completes;
        after resume, requests are served again.
        """
        self.request(rrq("boot/pxelinux.0"))
        running = self.session_port()
        self.server.drain()
        self.request(rrq("small.cfg"), peer=("198.51.100.30", 4001))
        self.assertEqual(len(self.reactor.ports), 2)
        self.assertEqual(self.listener.sent, [])
        for block in (1, 2, 3):
            running.deliver(ack(block), CLIENT)
        self.assertEqual(self.finished[0].outcome, Outcome.COMPLETED)
        self.server.resume()
        self.request(rrq("small.cfg"), peer=("198.51.100.30", 4001))
        self.assertEqual(len(self.reactor.ports), 3)
        self.assertEqual(self.server.stats.counters["requests.drained"], 1)

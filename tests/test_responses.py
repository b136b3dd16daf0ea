"""
Responses: every one tftpd_tx ships is a L{ResponseData} providing
L{IResponseData}, and a response of your own needs only derive from
L{ResponseData} and implement C{read}.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tftpd_tx import (
    BytesResponseData,
    FileResponseData,
    IResponseData,
    ResponseData,
    TFTPServer,
    wire,
)
from tftpd_tx.compat import fbtftp
from tftpd_tx.handlers import SerialCalls, ThreadedResponseData
from tftpd_tx.netascii import NetasciiResponseData
from tftpd_tx.stats import Outcome
from tftpd_tx.testing import FakeUDPReactor

CLIENT = ("198.51.100.7", 4000)


class Generated(ResponseData):
    """
    A response of the kind a user writes: only C{read}, here of C{length}
    bytes made up as they are asked for.
    """

    def __init__(self, length: int, byte: bytes = b"g") -> None:
        self._left = length
        self._byte = byte

    def read(self, n: int) -> bytes:
        chunk = self._byte * min(n, self._left)
        self._left -= len(chunk)
        return chunk


class InTurn:
    """
    A handler that answers each request with the next of its responses.
    """

    def __init__(self) -> None:
        self.responses: list[ResponseData] = []

    def get_response_data(self, request):
        return self.responses.pop(0)


class BundledResponsesTests(SynchronousTestCase):
    """
    Each response that tftpd_tx ships derives from L{ResponseData} and
    provides L{IResponseData}.
    """

    def bundled(self) -> dict[str, object]:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"on disk")
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        return {
            "BytesResponseData": BytesResponseData(b"in memory"),
            "FileResponseData": FileResponseData(fd),
            "NetasciiResponseData": NetasciiResponseData(BytesResponseData(b"a\n")),
            "ThreadedResponseData": ThreadedResponseData(
                BytesResponseData(b"blocking"), 8, SerialCalls(Clock(), ThreadPool())
            ),
            "fbtftp StringResponseData": fbtftp.StringResponseData("fbtftp's"),
        }

    def test_provide_the_interface(self):
        """
        Every bundled response provides L{IResponseData}: C{read(n)},
        C{size()} and C{close()}, as zope.interface verifies them.
        """
        for name, response in self.bundled().items():
            with self.subTest(name):
                self.assertTrue(verifyObject(IResponseData, response))

    def test_are_response_data(self):
        """
        Every bundled response is a L{ResponseData}.
        """
        for name, response in self.bundled().items():
            with self.subTest(name):
                self.assertIsInstance(response, ResponseData)

    def test_fbtftp_response_data_is_ours(self):
        """
        The fbtftp compatibility layer's C{ResponseData} is tftpd_tx's own,
        so one response class serves both APIs.
        """
        self.assertIs(fbtftp.ResponseData, ResponseData)


class ResponseDataTests(SynchronousTestCase):
    """
    What L{ResponseData} gives a subclass.
    """

    def test_size_unknown_and_close_does_nothing(self):
        """
        A subclass that implements only C{read} has no size (so C{tsize} is
        declined) and a C{close} that does nothing; it provides
        L{IResponseData}.
        """
        response = Generated(3)
        self.assertIsNone(response.size())
        self.assertIsNone(response.close())
        self.assertTrue(verifyObject(IResponseData, response))

    def test_read_must_be_implemented(self):
        """
        C{read} is the one method a subclass must write: the base class's
        raises C{NotImplementedError} naming the subclass.
        """

        class Forgetful(ResponseData):
            pass

        error = self.assertRaises(NotImplementedError, Forgetful().read, 512)
        self.assertIn("Forgetful", str(error))


class SubclassServedTests(SynchronousTestCase):
    """
    A user's L{ResponseData} subclass that implements only C{read} is served
    end to end by a L{TFTPServer} on the fake reactor.
    """

    def setUp(self):
        self.reactor = FakeUDPReactor()
        self.handler = InTurn()
        self.finished = []
        self.server = TFTPServer(
            self.handler, reactor=self.reactor, session_callback=self.finished.append
        )
        self.listener = self.reactor.listenUDP(69, self.server, interface="0.0.0.0")

    def request(self, mode: str = "octet", **options: str):
        self.listener.deliver(
            wire.ReadRequest("generated", mode, options).encode(), CLIENT, "192.0.2.1"
        )
        return self.reactor.ports[-1]

    def test_octet(self):
        """
        The blocks are what C{read} returned, the last one short; with no
        size, C{tsize} is declined, so no OACK is sent; the transfer
        completes.
        """
        self.handler.responses.append(Generated(1100))
        port = self.request(tsize="0")
        received = []
        for block in (1, 2, 3):
            (datagram,) = port.take()
            received.append(wire.decode(datagram))
            port.deliver(wire.Ack(block).encode(), CLIENT)
        self.assertEqual(
            received,
            [
                wire.Data(1, b"g" * 512),
                wire.Data(2, b"g" * 512),
                wire.Data(3, b"g" * 76),
            ],
        )
        (stats,) = self.finished
        self.assertEqual(stats.outcome, Outcome.COMPLETED)
        self.assertEqual((stats.size, stats.options_acked), (None, {}))
        self.assertEqual(stats.bytes_sent, 1100)

    def test_netascii(self):
        """
        In netascii mode the subclass's bytes are converted on the way out.
        """
        self.handler.responses.append(Generated(3, b"\n"))
        port = self.request("netascii")
        self.assertEqual(port.take(), [wire.Data(1, b"\r\n" * 3).encode()])
        port.deliver(wire.Ack(1).encode(), CLIENT)
        self.assertEqual(self.finished[0].outcome, Outcome.COMPLETED)

    def test_read_answering_later(self):
        """
        A subclass's C{read} may return a L{Deferred}: the block is sent
        when it fires.
        """
        later = Deferred()

        class Remote(ResponseData):
            def read(self, n):
                return later

        self.handler.responses.append(Remote())
        port = self.request()
        self.assertEqual(port.take(), [])
        later.callback(b"from afar")
        self.assertEqual(port.take(), [wire.Data(1, b"from afar").encode()])

"""
L{tftpd_tx.transport}: every way of moving datagrams keeps the same
contract, so the protocol code runs on each unchanged.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tftpd_tx.multiplexer import EpollNetwork, epoll_available
from tftpd_tx.requestport import PacketInfoPort
from tftpd_tx.service import TFTPService, default_network
from tftpd_tx.testing import FakeUDPReactor, MemoryHandler
from tftpd_tx.transport import INetwork, IRequestPort, ITransferPort, UDPNetwork


class _Quiet(DatagramProtocol):
    noisy = False


class FakePortTests(SynchronousTestCase):
    """
    The public fakes implement both port contracts.
    """

    def test_fake_port_provides_both(self):
        """
        A L{FakeUDPReactor} port is a request port and a transfer port.
        """
        port = FakeUDPReactor().listenUDP(0, _Quiet())
        self.assertTrue(verifyObject(IRequestPort, port))
        self.assertTrue(verifyObject(ITransferPort, port))

    def test_udp_network_on_the_fake(self):
        """
        L{UDPNetwork} over the fake reactor opens fake ports, which are their
        own adapters: the session runs the same send path as in production.
        """
        network = UDPNetwork(FakeUDPReactor())
        self.assertTrue(verifyObject(INetwork, network))
        port = network.open_transfer(_Quiet(), "192.0.2.1")
        self.assertIs(ITransferPort(port), port)

    def test_embedded_service_does_not_linger(self):
        """
        A service built in code has the linger off: other protocols of the
        same reactor never wait for a lone transfer.
        """
        service = TFTPService(MemoryHandler({}), port=0, reactor=FakeUDPReactor())
        self.assertEqual(service.server.settings.linger, 0.0)

    def test_default_network_for_the_fake(self):
        """
        A reactor without file-descriptor readers gets ports from
        C{listenUDP}.
        """
        self.assertIsInstance(default_network(FakeUDPReactor()), UDPNetwork)


class RealPortTests(TestCase):
    """
    The real ports, on the real reactor and loopback.
    """

    def test_plain_twisted_port_adapts(self):
        """
        A Twisted UDP port adapts to both contracts, so a server given to
        C{reactor.listenUDP} by hand still runs.
        """
        port = reactor.listenUDP(0, _Quiet(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.assertTrue(verifyObject(IRequestPort, IRequestPort(port)))
        self.assertTrue(verifyObject(ITransferPort, ITransferPort(port)))
        self.assertEqual(ITransferPort(port).send_window([b"a", b"b"], ("127.0.0.1", 9)), 2)

    def test_epoll_network(self):
        """
        The epoll engine's listener and transfer ports provide the contracts.
        """
        if not epoll_available(reactor):
            self.skipTest("this reactor has no epoll")
        network = default_network(reactor)
        self.assertIsInstance(network, EpollNetwork)
        self.assertTrue(verifyObject(INetwork, network))
        listener = network.listen(0, _Quiet(), "127.0.0.1")
        self.addCleanup(listener.stopListening)
        self.assertIsInstance(listener, PacketInfoPort)
        self.assertTrue(verifyObject(IRequestPort, listener))
        transfer = network.open_transfer(_Quiet(), "127.0.0.1")
        self.addCleanup(transfer.stopListening)
        self.assertTrue(verifyObject(ITransferPort, transfer))


class AdoptTests(TestCase):
    """
    A listening socket bound elsewhere (systemd, a supervisor) is adopted
    as the request port.
    """

    def test_adopt_blocking_wildcard_socket(self):
        """
        A blocking socket bound to 0.0.0.0 becomes a non-blocking request
        port that learns each datagram's destination; the caller's own
        socket may be closed.
        """
        if not epoll_available(reactor):
            self.skipTest("this reactor has no epoll")
        import socket

        received = []

        class Recording(DatagramProtocol):
            noisy = False

            def datagramReceived(self, datagram, addr, local=None):
                received.append((datagram, local))

        skt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        skt.bind(("0.0.0.0", 0))
        port_number = skt.getsockname()[1]
        listener = EpollNetwork(reactor).adopt(skt, Recording())
        skt.close()
        self.addCleanup(listener.stopListening)
        self.assertTrue(verifyObject(IRequestPort, listener))
        self.assertFalse(listener.socket.getblocking())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"hello", ("127.0.0.2", port_number))
        listener.doRead()
        self.assertEqual(received, [(b"hello", "127.0.0.2")])

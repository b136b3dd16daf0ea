"""
L{TFTPService}: a TFTP server as a Twisted service, to run under C{twistd} or
to add to any application with C{setServiceParent}.
"""

from __future__ import annotations

import socket

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .multiplexer import EpollNetwork, epoll_available
from .policy import raise_descriptor_limit
from .server import TFTPServer
from .settings import Settings
from .stats import ServerStats
from .transport import UDPNetwork

__all__ = ["TFTPService", "default_network", "ipv6_available", "listening_address"]


def ipv6_available() -> bool:
    """
    Whether this host can open an IPv6 socket (a kernel may have it off).
    """
    if not socket.has_ipv6:
        return False
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
    except OSError:
        return False
    return True


def listening_address(interface: str) -> str:
    """
    The address to bind for C{interface}: itself, or for C{""} (every
    address) C{"::"} on a dual-stack socket, C{"0.0.0.0"} without IPv6.
    """
    return interface or ("::" if ipv6_available() else "0.0.0.0")


def default_network(reactor, linger=lambda: 0.0):
    """
    The best L{tftpd_tx.transport.INetwork} for C{reactor}: the epoll
    engine (a listener that answers from the address each request was sent
    to, transfers on one reactor reader) where the reactor and platform
    allow, else ports from C{reactor.listenUDP}.

    @param linger: returns the C{linger} setting (see
        L{tftpd_tx.multiplexer.SessionMultiplexer}).
    """
    if epoll_available(reactor):
        return EpollNetwork(reactor, linger)
    return UDPNetwork(reactor)


class TFTPService(Service):
    """
    Listen for TFTP requests on one UDP address and serve them with a handler.

    The port is bound in C{privilegedStartService}, so C{twistd -u/-g} can
    drop privileges after binding port 69.  Stopping the service closes the
    port and aborts the transfers still running.

    @param handler: the L{tftpd_tx.content.IHandler}.
    @param port: the UDP port (69 is TFTP's).
    @param interface: the address to listen on; C{""} means every address,
        IPv4 and IPv6 on one dual-stack socket (IPv4 only when the host has
        no IPv6).
    @param settings: the server's L{Settings}.
    @param reactor: the reactor; the global one when omitted.
    @param network: the L{tftpd_tx.transport.INetwork} the ports come
        from; L{default_network} when omitted.
    @param session_callback: see L{TFTPServer}.
    @param stats_callback: called with the L{ServerStats} every
        C{stats_interval} seconds while the service runs (it may call
        C{get_and_reset_all_counters} to report per interval, as fbtftp's
        C{server_stats_callback} does).
    @param stats_interval: seconds between calls of C{stats_callback}.

    @ivar server: the L{TFTPServer} protocol.
    @ivar port: the listening port once started, else L{None}.
    """

    _log = Logger()

    def __init__(
        self,
        handler,
        port: int = 69,
        interface: str = "",
        settings: Settings | None = None,
        *,
        reactor=None,
        stats: ServerStats | None = None,
        session_callback=None,
        stats_callback=None,
        stats_interval: float = 60.0,
        network=None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._stats_callback = stats_callback
        self._stats_interval = stats_interval
        self._stats_loop = None
        self._port_number = port
        self._interface = listening_address(interface)
        if network is None:
            network = default_network(reactor, lambda: self.server.settings.linger)
        self.server = TFTPServer(
            handler,
            settings,
            reactor=reactor,
            stats=stats,
            session_callback=session_callback,
            network=network,
        )
        self.port = None

    def privilegedStartService(self) -> None:
        self.port = self.server.network.listen(
            self._port_number, self.server, self._interface
        )
        host = self.port.getHost()
        self._log.info(
            "TFTP server listening on [{host}]:{port}", host=host.host, port=host.port
        )
        self.server.descriptor_limit = raise_descriptor_limit()
        total, per_client = self.server.session_caps()
        self._log.info(
            "At most {total} requests in progress, {per_client} per client address"
            " (descriptor limit {limit})",
            total=total,
            per_client=per_client,
            limit=self.server.descriptor_limit,
        )
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        if self._stats_callback is not None:
            self._stats_loop = LoopingCall(self._report_stats)
            self._stats_loop.clock = self._reactor
            self._stats_loop.start(self._stats_interval, now=False)

    def _report_stats(self) -> None:
        try:
            self._stats_callback(self.server.stats)
        except Exception:
            self._log.failure("Server stats callback failed")

    def stopService(self):
        super().stopService()
        if self._stats_loop is not None and self._stats_loop.running:
            self._stats_loop.stop()
        self._stats_loop = None
        self.server.stop()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None

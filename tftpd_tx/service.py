"""
L{TFTPService}: a TFTP server as a Twisted service, to run under C{twistd} or
to add to any application with C{setServiceParent}.
"""

from __future__ import annotations

import socket

from twisted.application.service import Service
from twisted.logger import Logger

from .server import SESSION_MAX_PACKET, Settings, TFTPServer
from .stats import ServerStats
from .udp import PacketInfoPort

__all__ = ["TFTPService", "ipv6_available"]


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
    @param session_callback: see L{TFTPServer}.

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
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._port_number = port
        self._interface = interface or ("::" if ipv6_available() else "0.0.0.0")
        self.server = TFTPServer(
            handler,
            settings,
            reactor=reactor,
            stats=stats,
            session_callback=session_callback,
        )
        self.port = None

    def privilegedStartService(self) -> None:
        self.port = PacketInfoPort(
            self._port_number,
            self.server,
            self._interface,
            SESSION_MAX_PACKET,
            self._reactor,
        )
        self.port.startListening()
        host = self.port.getHost()
        self._log.info(
            "TFTP server listening on [{host}]:{port}", host=host.host, port=host.port
        )
        super().privilegedStartService()

    def stopService(self):
        super().stopService()
        self.server.stop()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None

"""
L{TFTPService}: a TFTP server as a Twisted service, to run under C{twistd} or
to add to any application with C{setServiceParent}.
"""

from __future__ import annotations

import socket

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .multiplexer import EpollNetwork, epoll_available
from .policy import raise_descriptor_limit
from .server import TFTPServer
from .settings import Settings
from .singleport import SinglePortNetwork
from .stats import ServerStats
from .transport import ISharedRequestPort, UDPNetwork

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


def default_network(reactor, linger=lambda: 0.0, *, single_port: bool = False):
    """
    The best L{tftpd_tx.transport.INetwork} for C{reactor}: the epoll
    engine (a listener that answers from the address each request was sent
    to, transfers on one reactor reader) where the reactor and platform
    allow, else ports from C{reactor.listenUDP}; with C{single_port}, the
    L{SinglePortNetwork} over it (every transfer on its request's port).

    @param linger: returns the C{linger} setting (see
        L{tftpd_tx.multiplexer.SessionMultiplexer}).
    """
    if epoll_available(reactor):
        network = EpollNetwork(reactor, linger)
    else:
        network = UDPNetwork(reactor)
    return SinglePortNetwork(network, linger) if single_port else network


class TFTPService(Service):
    """
    Listen for TFTP requests on one UDP address (or on sockets bound by
    someone else: systemd's) and serve them with a handler.

    The port is bound in C{privilegedStartService}, so C{twistd -u/-g} can
    drop privileges after binding port 69.  Stopping the service lets the
    transfers in flight finish for up to C{settings.shutdown_grace} seconds
    (0 by default: at once), then aborts the rest and closes the port.

    @param handler: the L{tftpd_tx.content.IHandler}.
    @param port: the UDP port (69 is TFTP's).
    @param interface: the address to listen on; C{""} means every address,
        IPv4 and IPv6 on one dual-stack socket (IPv4 only when the host has
        no IPv6).
    @param settings: the server's L{Settings}.
    @param reactor: the reactor; the global one when omitted.
    @param network: the L{tftpd_tx.transport.INetwork} the ports come
        from; L{default_network} when omitted.
    @param single_port: when C{network} is omitted, serve every transfer
        from the port its request came in on (see L{tftpd_tx.singleport}).
    @param sockets: datagram sockets already bound (by systemd's socket
        activation, see L{tftpd_tx.systemd}) to listen on instead of
        C{port} and C{interface}: one server serves them all, and answers
        each request through the socket it came in on.  They are
        duplicated at start; the caller may close its own.
    @param session_callback: see L{TFTPServer}.
    @param stats_callback: called with the L{ServerStats} every
        C{stats_interval} seconds while the service runs (it may call
        C{get_and_reset_all_counters} to report per interval, as fbtftp's
        C{server_stats_callback} does).
    @param stats_interval: seconds between calls of C{stats_callback}.
    @param stop_signals: while a graceful stop waits (see the
        C{shutdown_grace} setting), a second SIGTERM or SIGINT stops at
        once; for C{twistd}, where the first one started the stop.

    @ivar server: the L{TFTPServer} protocol.
    @ivar ports: the listening ports once started.
    @ivar port: the first of them once started, else L{None}.
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
        single_port: bool = False,
        sockets=(),
        stop_signals: bool = False,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._stats_callback = stats_callback
        self._stats_interval = stats_interval
        self._stats_loop = None
        self._port_number = port
        self._interface = listening_address(interface)
        self._sockets = list(sockets)
        self._stop_signals = stop_signals
        self._stopping = None
        self._stop_waiters: list[defer.Deferred] = []
        self._cut = False
        if network is None:
            network = default_network(
                reactor, lambda: self.server.settings.linger, single_port=single_port
            )
        self.server = TFTPServer(
            handler,
            settings,
            reactor=reactor,
            stats=stats,
            session_callback=session_callback,
            network=network,
        )
        self.port = None
        self.ports = []

    def privilegedStartService(self) -> None:
        network, server = self.server.network, self.server
        # The server is the first port's protocol itself (what is handed to
        # its datagramReceived arrives there); each other port gets one of
        # its listeners, which answer through their own port.
        if self._sockets:
            first, *others = self._sockets
            self.ports = [network.adopt(first, server)] + [
                network.adopt(skt, server.listener()) for skt in others
            ]
        else:
            self.ports = [network.listen(self._port_number, server, self._interface)]
        self.port = self.ports[0]
        notes = ["a socket handed over"] if self._sockets else []
        if ISharedRequestPort.providedBy(self.port):
            notes.append("single-port mode")
        for port in self.ports:
            host = port.getHost()
            self._log.info(
                "TFTP server listening on [{host}]:{port}{notes}",
                host=host.host, port=host.port, notes=f" ({', '.join(notes)})" if notes else "",
            )  # fmt: skip
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
        """
        Stop: with a C{shutdown_grace}, drain first (no new transfers, the
        ones in flight go on for up to that many seconds), then abort what
        is left and close the port.  The Deferred returned (also
        L{when_stopped}) fires once the port is closed.
        """
        super().stopService()
        if self._stats_loop is not None and self._stats_loop.running:
            self._stats_loop.stop()
        self._stats_loop = None
        if self._stopping is None:
            self._stopping = _GracefulStop(
                self.server, self._reactor, self.server.settings.shutdown_grace,
                self._close_port, signals=self._stop_signals,
            ).start()  # fmt: skip
            self._stopping.addBoth(self._fire_stop_waiters)
        return self._stopping

    def when_stopped(self) -> defer.Deferred:
        """
        A Deferred that fires once the service has stopped (at once if it
        is not running): what the services that report on it wait for.
        They may be asked to stop first (a L{MultiService} stops its
        children last-added first), so a running service answers with a
        Deferred that its own stop fires later.
        """
        if self._stopping is None and not self.running:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._stop_waiters.append(waiter)
        if self._stopping is not None and self._stopping.called:
            self._fire_stop_waiters(None)
        return waiter

    def _fire_stop_waiters(self, result):
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        return result

    @property
    def cut(self) -> bool:
        """
        Whether a graceful stop had to cut transfers at its deadline.
        """
        return self._cut

    def _close_port(self, cut: bool):
        self._cut = cut
        ports, self.ports, self.port = self.ports, [], None
        return defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in ports])


class _GracefulStop:
    """
    One stop of a server: drain, wait for the transfers in flight up to the
    grace, abort the rest, close.

    @param close: called with whether transfers were cut; may return a
        Deferred.
    @param signals: whether a second SIGTERM or SIGINT stops at once
        (under twistd, where the first one started this).
    """

    _log = Logger()
    #: Seconds between two looks at whether the transfers have finished.
    POLL = 0.05

    def __init__(self, server, reactor, grace: float, close, *, signals: bool) -> None:
        self._server = server
        self._reactor = reactor
        self._grace = grace
        self._close = close
        self._signals = signals
        self._done = defer.Deferred()
        self._deadline = None
        self._poll = None
        self._in_flight = 0

    def start(self) -> defer.Deferred:
        server = self._server
        self._in_flight = len(server.sessions)
        if not self._in_flight or not self._grace:
            self._finish(cut_by="")
            return self._done
        if self._signals:
            self._install_signals()
        server.drain()
        self._log.info(
            "Stopping: {count} transfers in flight, waiting up to {grace:g}s for them"
            " (a second SIGTERM or SIGINT stops at once)",
            count=self._in_flight,
            grace=self._grace,
        )
        self._deadline = self._reactor.callLater(self._grace, self._finish, "the grace deadline")
        self._poll = self._reactor.callLater(self.POLL, self._check)
        return self._done

    def _install_signals(self) -> None:
        import signal

        def now(signum, frame):
            self._reactor.callFromThread(self._finish, "a second signal")

        for name in ("SIGTERM", "SIGINT"):
            signal.signal(getattr(signal, name), now)

    def _check(self) -> None:
        self._poll = None
        if not self._server.sessions:
            self._finish(cut_by="")
        else:
            self._poll = self._reactor.callLater(self.POLL, self._check)

    def _finish(self, cut_by: str) -> None:
        if self._done.called:
            return
        for call in (self._deadline, self._poll):
            if call is not None and call.active():
                call.cancel()
        left = len(self._server.sessions)
        if self._in_flight:
            self._log.info(
                "Stopped: {finished} of {count} transfers finished while draining,"
                " {left} cut{by}",
                finished=self._in_flight - left,
                count=self._in_flight,
                left=left,
                by=f" at {cut_by}" if left and cut_by else "",
            )
        self._server.stop()
        defer.maybeDeferred(self._close, bool(left and self._in_flight)).addBoth(
            lambda result: self._done.callback(None)
        )

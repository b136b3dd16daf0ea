"""
The listener: requests in, transfers out.

L{TFTPServer} decodes each datagram that reaches the server port, applies the
policy steps (in L{TFTPServer.handle_read_request}, in order), asks the
handler for the content, negotiates options and starts a
L{tftpd_tx.session.ReadSession} on a port of its own.  Nothing raises out of
C{datagramReceived}, and nothing in it waits: a handler that answers with a
L{Deferred} holds up only its own client.
"""

from __future__ import annotations

import inspect
import itertools

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import wire
from .content import Request, error_for, normalize_path
from .logbudget import LogBudget
from .netascii import NetasciiResponseData
from .options import negotiate
from .session import ReadSession, backoff_schedule
from .requestport import plain_address
from .settings import Settings
from .stats import Outcome, ServerStats, SessionStats
from .transport import IRequestPort, UDPNetwork

__all__ = ["TFTPServer"]

_MODES = frozenset({"octet", "netascii"})

#: Seconds between two log lines about malformed datagrams.
MALFORMED_LOG_INTERVAL = 10.0


class TFTPServer(DatagramProtocol):
    """
    Serve read requests with a handler.

    @param handler: an L{tftpd_tx.content.IHandler}.
    @param settings: the L{Settings}; the defaults when omitted.
    @param reactor: the C{IReactorTime} of the timers; the global reactor
        (or the network's) when omitted.
    @param network: the L{tftpd_tx.transport.INetwork} that opens the
        transfers' ports; when omitted, C{reactor.listenUDP}
        (L{tftpd_tx.transport.UDPNetwork}).  L{tftpd_tx.service.TFTPService}
        chooses the best one for its reactor.
    @param stats: the L{ServerStats} to count into.
    @param session_callback: called with the L{SessionStats} of every
        transfer when it ends.

    @ivar sessions: the live transfers, by session id.
    @ivar draining: while L{True}, new requests are ignored (so that clients
        retry elsewhere) and running transfers go on; see L{drain}.
    """

    noisy = False
    _log = Logger()

    def __init__(
        self,
        handler,
        settings: Settings | None = None,
        *,
        reactor=None,
        stats: ServerStats | None = None,
        session_callback=None,
        network=None,
    ) -> None:
        if reactor is None:
            if network is not None:
                reactor = network.reactor
            else:
                from twisted.internet import reactor
        self.handler = handler
        self.network = network if network is not None else UDPNetwork(reactor)
        self.settings = settings if settings is not None else Settings()
        self.stats = stats if stats is not None else ServerStats()
        self.sessions: dict[int, ReadSession] = {}
        self._reactor = reactor
        self._session_callback = session_callback
        self._session_ids = itertools.count(1)
        # Peers with a request in progress, and its transfer once it runs
        # (None while the handler works): a repeated RRQ from them is a
        # retransmission.
        self._busy_peers: dict[tuple[str, int], ReadSession | None] = {}
        self.draining = False
        self._stopped = False
        self._malformed_quiet_until = 0.0
        self._malformed_unlogged = 0
        self._log_budget = LogBudget(reactor, self._log_held_lines)

    # -- receiving ----------------------------------------------------------

    def datagramReceived(self, datagram: bytes, addr, local: str | None = None) -> None:
        """
        Handle one datagram sent to the server port.

        @param local: the address the datagram was sent to, when the port
            knows it (L{tftpd_tx.transport.IRequestPort}); otherwise the port's
            own address is used.
        """
        peer = plain_address(addr)
        try:
            self._dispatch(datagram, peer, local)
        except Exception:
            self._log.failure("Unexpected error on a datagram from {peer}", peer=peer)

    def _dispatch(self, datagram: bytes, peer, local) -> None:
        self.stats.increment("datagrams")
        try:
            packet = wire.decode(datagram)
        except wire.DecodeError as error:
            self._malformed(error, peer, local)
            return
        if isinstance(packet, wire.ReadRequest):
            self.handle_read_request(packet, peer, self._local_address(local))
        elif isinstance(packet, wire.WriteRequest):
            self.stats.increment("requests.write")
            self._log.info(
                "Refused write request for {path!r} from {peer}: writing is not supported",
                path=packet.filename,
                peer=peer,
            )
            self.reply_error(
                peer,
                local,
                wire.ErrorCode.ACCESS_VIOLATION,
                "Write requests are not supported by this server",
            )
        else:
            # DATA, ACK, ERROR or OACK belong to a transfer port; here they
            # are leftovers of transfers that ended.  Silence is the answer.
            self.stats.increment("datagrams.ignored")

    def _malformed(self, error: wire.DecodeError, peer, local) -> None:
        self.stats.increment("datagrams.malformed")
        # One line per interval at most: a flood of garbage must not become
        # a flood of log lines (the counter has the full count).
        now = self._reactor.seconds()
        if now >= self._malformed_quiet_until:
            self._log.info(
                "Malformed datagram from {peer}: {reason}"
                " ({suppressed} more not logged in the last {interval:g}s)",
                peer=peer,
                reason=error.reason,
                suppressed=self._malformed_unlogged,
                interval=MALFORMED_LOG_INTERVAL,
            )
            self._malformed_quiet_until = now + MALFORMED_LOG_INTERVAL
            self._malformed_unlogged = 0
        else:
            self._malformed_unlogged += 1
        if error.opcode is None or error.opcode in (
            wire.Opcode.DATA,
            wire.Opcode.ACK,
            wire.Opcode.ERROR,
            wire.Opcode.OACK,
        ):
            return
        self.reply_error(peer, local, error.code, "Malformed request")

    def startProtocol(self) -> None:
        self._requests = IRequestPort(self.transport)
        host = self._requests.getHost()
        self._listening_on = (host.host, host.port)

    def _local_address(self, local: str | None) -> tuple[str, int]:
        host, port = self._listening_on
        return (local if local is not None else host, port)

    def reply_error(self, peer, local: str | None, code: int, message: str) -> None:
        """
        Answer a request with an ERROR from the server port, with the source
        address the request was sent to when the port can choose it.
        """
        self._requests.reply_from(wire.Error(code, message).encode(), peer, local)

    # -- policy -------------------------------------------------------------

    def handle_read_request(self, packet: wire.ReadRequest, peer, local) -> None:
        """
        The policy steps for an RRQ, in order: draining, the mode, a
        retransmitted request, L{allow_request}; then the handler.  Override
        the steps, not this method.
        """
        stats = self.stats
        stats.increment("requests.read")
        if self.draining:
            stats.increment("requests.drained")
            return
        request = Request(
            peer=peer,
            local=local,
            path=packet.filename,
            normalized_path=normalize_path(packet.filename),
            mode=packet.mode,
            options=packet.options,
        )
        if request.mode not in _MODES:
            stats.increment("requests.bad_mode")
            self._log.info(
                "Refused {path!r} for {peer}: unsupported mode {mode!r}",
                path=request.path,
                peer=peer,
                mode=request.mode,
            )
            self.reply_error(
                peer, local[0], wire.ErrorCode.ILLEGAL_OPERATION, "Unsupported transfer mode"
            )
            return
        if self._is_retransmission(peer):
            # Retransmitted RRQ: the client did not see our first answer yet.
            # The transfer (or the handler) already running will answer.
            stats.increment("requests.duplicate")
            return
        if not self.allow_request(request):
            stats.increment("requests.denied")
            return
        self._busy_peers[peer] = None
        self._ask_handler(request, self._reactor.seconds())

    def _is_retransmission(self, peer) -> bool:
        """
        Whether a request from C{peer} repeats one already being served: its
        handler is still at work, or its transfer is still running once it
        has caught up with what the client sent it (see
        L{ReadSession.catch_up}: a client that reuses its port ends its last
        transfer just before it asks again).
        """
        if peer not in self._busy_peers:
            return False
        session = self._busy_peers[peer]
        return session is None or session.catch_up()

    def allow_request(self, request: Request) -> bool:
        """
        Whether to serve C{request} at all; a request refused here is
        ignored, so the client tries again or elsewhere.  Override for access
        control; the default allows everything.
        """
        return True

    # -- the handler --------------------------------------------------------

    def _ask_handler(self, request: Request, started: float) -> None:
        try:
            result = self.handler.get_response_data(request)
        except Exception:
            self._refuse(Failure(), request)
            return
        if not isinstance(result, Deferred) and inspect.isawaitable(result):
            result = ensureDeferred(result)
        if isinstance(result, Deferred):
            result.addCallbacks(
                self._start_session,
                self._refuse,
                callbackArgs=(request, started),
                errbackArgs=(request,),
            )
        else:
            self._start_session(result, request, started)

    def _refuse(self, failure: Failure, request: Request) -> None:
        code, message, expected = error_for(failure.value)
        if expected:
            if self._log_budget.allow(Outcome.REFUSED, self.settings.log_rate):
                self._log.info(
                    "Refused {path!r} for {peer}: {message}",
                    path=request.path,
                    peer=request.peer,
                    message=message,
                )
        else:
            self._log.failure(
                "Handler failed on {path!r} for {peer}",
                failure,
                path=request.path,
                peer=request.peer,
            )
        self._busy_peers.pop(request.peer, None)
        self.stats.increment("outcome." + Outcome.REFUSED)
        self.stats.increment(f"errors.{code}")
        self.reply_error(request.peer, request.local[0], code, message)

    # -- sessions -----------------------------------------------------------

    def _start_session(self, response, request: Request, started: float) -> None:
        if self._stopped:
            # A handler answered after the server stopped: no new port.
            self._close_quietly(response)
            self._busy_peers.pop(request.peer, None)
            self.reply_error(request.peer, request.local[0], 0, "Server shutting down")
            return
        settings = self.settings
        try:
            if request.mode == "netascii":
                response = NetasciiResponseData(response)
            size = response.size()
            negotiated = negotiate(request.options, settings.limits, size)
        except Exception:
            self._close_quietly(response)
            self._refuse(Failure(), request)
            return
        stats = SessionStats(
            peer=request.peer,
            server_addr=request.local,
            file_path=request.path,
            mode=request.mode,
            options_in=request.options,
            options_acked=negotiated.oack or {},
            start_time=started,
            blksize=negotiated.blksize,
            windowsize=negotiated.windowsize,
            size=size,
            session_id=next(self._session_ids),
            request=request,
        )
        session = ReadSession(
            clock=self._reactor,
            peer=request.peer,
            response=response,
            negotiated=negotiated,
            schedule=backoff_schedule(
                negotiated.timeout or settings.timeout, settings.retries
            ),
            rollover=settings.rollover,
            stats=stats,
            on_end=self._session_ended,
        )
        self.sessions[stats.session_id] = session
        self._busy_peers[request.peer] = session
        self.stats.session_started()
        try:
            self.network.open_transfer(session, request.local[0])
        except Exception:
            self._log.failure(
                "Cannot open a transfer port for {peer} on {local}",
                peer=request.peer,
                local=request.local[0],
            )
            session.not_started("Server cannot open a port")
            self.reply_error(request.peer, request.local[0], 0, stats.error_message)

    def _close_quietly(self, response) -> None:
        try:
            response.close()
        except Exception:
            self._log.failure("Closing a response failed")

    def _session_ended(self, session: ReadSession) -> None:
        stats = session.stats
        self.sessions.pop(session.session_id, None)
        self._busy_peers.pop(session.peer, None)
        self.stats.session_ended(stats)
        self._log_transfer(stats)
        if self._session_callback is not None:
            try:
                self._session_callback(stats)
            except Exception:
                self._log.failure("Session callback failed")

    def _log_transfer(self, stats: SessionStats) -> None:
        if not self._log_budget.allow(stats.outcome, self.settings.log_rate):
            return
        level = self._log.debug if stats.outcome == Outcome.PROBE else self._log.info
        level(
            "{outcome}: {path!r} to {peer} from {local}, {bytes} bytes in {blocks} "
            "blocks, {retransmits} retransmits, {duration:.3f}s{error}",
            outcome=stats.outcome,
            path=stats.file_path,
            peer=stats.peer,
            local=stats.server_addr,
            bytes=stats.bytes_sent,
            blocks=stats.blocks_sent,
            retransmits=stats.retransmits,
            duration=stats.duration,
            error=(
                f" (error {stats.error_code}: {stats.error_message})"
                if stats.error_code is not None
                else ""
            ),
            session=stats,
        )

    def _log_held_lines(self, held, period: float) -> None:
        self._log.info(
            "{count} more transfer lines not logged in the last {period:g}s"
            " ({kinds}); the counters have every transfer",
            count=sum(held.values()),
            period=period,
            kinds=", ".join(f"{kind} {count}" for kind, count in sorted(held.items())),
            held=dict(held),
        )

    def drain(self) -> None:
        """
        Stop accepting new requests; transfers in flight finish.  This is
        what to do before withdrawing an anycast route.
        """
        if not self.draining:
            self.draining = True
            self._log.info(
                "Draining: new requests are ignored, {count} transfers in flight",
                count=len(self.sessions),
            )

    def resume(self) -> None:
        """
        Accept new requests again after L{drain}.
        """
        if self.draining:
            self.draining = False
            self._log.info("Resumed: accepting new requests")

    def stop(self) -> None:
        """
        Abort every live transfer (the server is going away); handlers that
        answer later get their client an error instead of a transfer.
        """
        self._stopped = True
        for session in list(self.sessions.values()):
            session.abort("Server shutting down")
        self._log_budget.flush()

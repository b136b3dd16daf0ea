"""
The listener: requests in, transfers out.

L{TFTPServer} decodes each datagram that reaches the server port, applies the
policy steps (in L{TFTPServer.handle_read_request}, in order), asks the
handler for the content, negotiates options and starts a
L{tftpd_tx.session.ReadSession} on a port of its own (or, in single-port
mode, on the port the request came in on).  Nothing raises out of
C{datagramReceived}, and nothing in it waits: a handler that answers with a
L{Deferred} holds up only its own client.

One server may listen on several request ports (the sockets systemd hands
over: IPv4 and IPv6, several addresses): each has a protocol of its own
(L{TFTPServer.listener}) that hands the server its datagrams along with
itself, so that everything a request is answered with leaves through the
port it came in on.
"""

from __future__ import annotations

import errno
import inspect
import itertools
import resource

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import wire
from .content import Request, ResponseData, error_for, normalize_path
from .logbudget import LogBudget, OccasionalLine, path_for_log
from .netascii import NetasciiResponseData
from .options import negotiate
from .flaps import FlapTable
from .policy import ClientRates, SessionCounts, UnprovenSessions, session_cap
from .session import ReadSession, backoff_schedule
from .requestport import plain_address
from .rtt import RoundTrip, RoundTripMemory
from .settings import Settings
from .stats import Outcome, ServerStats, SessionStats
from .timers import TimerQueue
from .transport import IRequestPort, ISharedRequestPort, UDPNetwork

__all__ = ["TFTPServer"]

_MODES = frozenset({"octet", "netascii"})

#: Seconds between two log lines about malformed datagrams, and between two
#: about running out of descriptors.
MALFORMED_LOG_INTERVAL = 10.0
DESCRIPTORS_LOG_INTERVAL = 10.0

#: RFC 2347: a request, options included, fits in 512 octets.
MAX_REQUEST = 512

#: Source ports below this are never answered (the Loop DoS of
#: CVE-2024-2169: two UDP services answering each other's errors forever);
#: the C{allow_low_ports} setting lifts it for a known legacy device.
LOWEST_CLIENT_PORT = 1024

_REQUEST_OPCODES = frozenset({int(wire.Opcode.RRQ), int(wire.Opcode.WRQ)})
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})


_GONE = object()
_NO_DESCRIPTORS = "Out of file descriptors"


def _out_of_descriptors(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _OUT_OF_DESCRIPTORS


class _RequestPort(DatagramProtocol):
    """
    The protocol of one request port of a L{TFTPServer}: it hands the server
    every datagram together with itself, the way back to the client.

    @ivar port: the L{IRequestPort} once started.
    @ivar address: the C{(host, port)} the port listens on.
    @ivar shared: whether the port carries the transfers of its requests
        (L{ISharedRequestPort}: single-port mode).
    """

    noisy = False

    def __init__(self, server: TFTPServer) -> None:
        self._server = server
        self.port = None
        self.address = ("", 0)
        self.shared = False

    def startProtocol(self) -> None:
        port = self.port = IRequestPort(self.transport)
        host = port.getHost()
        self.address = (host.host, host.port)
        self.shared = ISharedRequestPort.providedBy(port)

    def datagramReceived(self, datagram: bytes, addr, local: str | None = None) -> None:
        self._server.request_received(datagram, addr, local, self)

    def local_address(self, local: str | None) -> tuple[str, int]:
        """
        The C{(host, port)} a datagram was sent to: C{local}, what the port
        learnt from the kernel, or else the port's own host.
        """
        host, port = self.address
        return (local if local is not None else host, port)

    def reply_error(self, peer, local: str | None, code: int, message: str) -> None:
        """
        Answer C{peer} with an ERROR from this port, with C{local} (the
        address the request was sent to) as its source when the port can
        choose it.
        """
        self.port.reply_from(wire.Error(code, message).encode(), peer, local)


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
        chooses the best one for its reactor.  A request that came in on an
        L{tftpd_tx.transport.ISharedRequestPort} (single-port mode) has its
        transfer opened on that port instead.
    @param stats: the L{ServerStats} to count into.
    @param session_callback: called with the L{SessionStats} of every
        transfer when it ends.

    @ivar sessions: the live transfers, by session id.
    @ivar draining: while L{True}, new requests are ignored (so that clients
        retry elsewhere) and running transfers go on; see L{drain}.
    @ivar round_trips: the L{RoundTripMemory} new transfers start from.
    @ivar hand_back: L{None}, or called with C{(datagram, peer)} for each
        ACK or ERROR that reaches a shared request port (single-port mode)
        from a peer with no transfer here: another server of the fleet may
        have it (see L{tftpd_tx.handback}).
    @ivar flaps: the L{FlapTable} of abandoned transfers and strays by
        client prefix (the sign of a client whose anycast path moves).
    @ivar descriptor_limit: the process's limit on open descriptors, from
        which the session caps are derived when the settings leave them
        L{None} (L{tftpd_tx.service.TFTPService} raises it at start).
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
        # The retransmit timers of every transfer, behind one reactor call.
        self._timers = TimerQueue(reactor)
        self._session_callback = session_callback
        self._session_ids = itertools.count(1)
        # Peers with a request in progress, and its transfer once it runs
        # (None while the handler works): a repeated RRQ from them is a
        # retransmission.
        self._busy_peers: dict[tuple[str, int], ReadSession | None] = {}
        self._in_progress = SessionCounts()
        self._rates = ClientRates()
        self._unproven = UnprovenSessions()
        self.round_trips = RoundTripMemory()
        self.flaps = FlapTable(
            reactor,
            lengths=lambda: (self.settings.flap_ipv4_prefix, self.settings.flap_ipv6_prefix),
        )
        self.draining = False
        self.hand_back = None
        # Bound once, not once per transfer: each session keeps both.
        self._on_session_end = self._session_ended
        self._on_stray = self._stray
        self._stopped = False
        self.descriptor_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._malformed_line = OccasionalLine(reactor, MALFORMED_LOG_INTERVAL)
        self._descriptors_line = OccasionalLine(reactor, DESCRIPTORS_LOG_INTERVAL)
        self._log_budget = LogBudget(reactor, self._log_held_lines)

    # -- receiving ----------------------------------------------------------

    def listener(self) -> DatagramProtocol:
        """
        A protocol for one more request port of this server: give it to
        C{INetwork.listen} or C{adopt}.  What a request that arrives on it
        is answered with leaves through that port.  (The server is also a
        protocol itself, for a port opened by hand with C{listenUDP}.)
        """
        return _RequestPort(self)

    def startProtocol(self) -> None:
        self._own_port = self.listener()
        self._own_port.makeConnection(self.transport)

    def datagramReceived(self, datagram: bytes, addr, local: str | None = None) -> None:
        """
        Handle one datagram sent to the port this server is the protocol of.

        @param local: the address the datagram was sent to, when the port
            knows it (L{tftpd_tx.transport.IRequestPort}); otherwise the port's
            own address is used.
        """
        self.request_received(datagram, addr, local, self._own_port)

    def request_received(self, datagram: bytes, addr, local: str | None, via) -> None:
        """
        Handle one datagram sent to a request port of this server.

        @param via: that port's protocol (from L{listener}), which the
            answers go back through.
        """
        peer = plain_address(addr)
        try:
            self._dispatch(datagram, peer, local, via)
        except Exception:
            self._log.failure("Unexpected error on a datagram from {peer}", peer=peer)

    def _dispatch(self, datagram: bytes, peer, local, via) -> None:
        stats = self.stats
        stats.increment("datagrams")
        if peer[1] < LOWEST_CLIENT_PORT and not self.settings.allow_low_ports:
            # Whatever it is, an answer could start a loop with a service.
            stats.increment("datagrams.low_port")
            return
        if len(datagram) > MAX_REQUEST and datagram[1:2] and datagram[1] in _REQUEST_OPCODES:
            stats.increment("requests.too_large")
            self._note("dropped", "Refused a {size}-byte request from {peer}: over 512 octets",
                       size=len(datagram), peer=peer)
            via.reply_error(
                peer, local, wire.ErrorCode.ILLEGAL_OPERATION, "Request over 512 octets"
            )
            return
        try:
            packet = wire.decode(datagram)
        except wire.DecodeError as error:
            self._malformed(error, peer, local, via)
            return
        if isinstance(packet, wire.ReadRequest):
            self.handle_read_request(packet, peer, via.local_address(local), via)
        elif isinstance(packet, wire.WriteRequest):
            stats.increment("requests.write")
            self._note(
                Outcome.REFUSED,
                "Refused write request for {path!r} from {peer}: writing is not supported",
                path=path_for_log(packet.filename),
                peer=peer,
            )
            via.reply_error(
                peer,
                local,
                wire.ErrorCode.ACCESS_VIOLATION,
                "Write requests are not supported by this server",
            )
        elif via.shared:
            # A port shared with its transfers has handed theirs to them: this
            # is for a transfer that is not here (it ended, or another server
            # of the fleet has it), the single-port mode's stray.  No ERROR 5:
            # it would end a transfer that runs elsewhere.
            stats.increment("datagrams.stray")
            if not isinstance(packet, wire.Error):
                self.flaps.stray(peer[0])
            if self.hand_back is not None and isinstance(packet, (wire.Ack, wire.Error)):
                self.hand_back(datagram, peer)
        else:
            # DATA, ACK, ERROR or OACK belong to a transfer port; here they
            # are leftovers of transfers that ended, or of a transfer another
            # server of the fleet has.  Silence is the answer.
            stats.increment("datagrams.ignored")
            if not isinstance(packet, wire.Error):
                self.flaps.stray(peer[0])

    def take_handed_back(self, datagram: bytes, peer) -> bool:
        """
        Give a datagram another server of the fleet received from C{peer}
        to C{peer}'s transfer here, as if it had come straight from
        C{peer}; whether there is such a transfer.  What has none is
        dropped: it is never handed on again.
        """
        session = self._busy_peers.get(peer)
        if session is None or session.ended:
            return False
        try:
            session.datagramReceived(datagram, peer)
        except Exception:
            self._log.failure("Unexpected error on a datagram handed back from {peer}", peer=peer)
        return True

    def _note(self, kind: str, text: str, **fields) -> None:
        """
        Log a line a client caused, within the log budget (see
        L{tftpd_tx.logbudget}): a flood of requests is not a flood of lines.
        """
        if self._log_budget.allow(kind, self.settings.log_rate):
            self._log.info(text, **fields)

    def _malformed(self, error: wire.DecodeError, peer, local, via) -> None:
        self.stats.increment("datagrams.malformed")
        # One line per interval at most: a flood of garbage must not become
        # a flood of log lines (the counter has the full count).
        held = self._malformed_line.allow()
        if held is not None:
            self._log.info(
                "Malformed datagram from {peer}: {reason}"
                " ({suppressed} more not logged in the last {interval:g}s)",
                peer=peer,
                reason=error.reason,
                suppressed=held,
                interval=MALFORMED_LOG_INTERVAL,
            )
        if error.opcode is None or error.opcode in (
            wire.Opcode.DATA,
            wire.Opcode.ACK,
            wire.Opcode.ERROR,
            wire.Opcode.OACK,
        ):
            return
        via.reply_error(peer, local, error.code, "Malformed request")

    # -- policy -------------------------------------------------------------

    def handle_read_request(self, packet: wire.ReadRequest, peer, local, via) -> None:
        """
        The policy steps for an RRQ, in order: draining, the mode, a
        retransmitted request, the session caps and the client's request
        rate (L{over_limits}), L{allow_request}; then the handler.  Override
        the steps, not this method.

        @param local: the C{(host, port)} the request was sent to.
        @param via: the protocol of the request port it came in on.
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
            self._note(
                Outcome.REFUSED,
                "Refused {path!r} for {peer}: unsupported mode {mode!r}",
                path=path_for_log(request.path),
                peer=peer,
                mode=path_for_log(request.mode, 20),
            )
            via.reply_error(
                peer, local[0], wire.ErrorCode.ILLEGAL_OPERATION, "Unsupported transfer mode"
            )
            return
        if self._is_retransmission(peer):
            # Retransmitted RRQ: the client did not see our first answer yet.
            # The transfer (or the handler) already running will answer.
            stats.increment("requests.duplicate")
            return
        over = self.over_limits(peer[0])
        if over is not None:
            stats.increment("requests.over_" + over)
            self._note(
                "dropped",
                "Dropped {path!r} for {peer}: over the {limit} limit",
                path=path_for_log(request.path),
                peer=peer,
                limit=over.replace("_", " "),
            )
            return
        if not self.allow_request(request):
            stats.increment("requests.denied")
            return
        self._busy_peers[peer] = None
        self._in_progress.add(peer[0])
        self._ask_handler(request, self._reactor.seconds(), via)

    def session_caps(self) -> tuple[int, int]:
        """
        The most requests in progress at once, in all and per client address:
        the settings' C{max_sessions} and C{max_sessions_per_client}, or
        where they are L{None}, what the descriptor limit allows (two
        descriptors a transfer, some kept back) and a quarter of that.
        """
        settings = self.settings
        total = settings.max_sessions
        if total is None:
            total = session_cap(self.descriptor_limit)
        per_client = settings.max_sessions_per_client
        if per_client is None:
            per_client = max(1, total // 4)
        return total, per_client

    def over_limits(self, host: str) -> str | None:
        """
        Which limit a new request from C{host} would pass, or L{None}:
        C{"sessions"} (the server's cap), C{"client_sessions"} (the cap per
        client address), C{"client_rate"} (the client's token bucket of new
        requests, when C{client_rate} is set).
        """
        total, per_client = self.session_caps()
        if self._in_progress.total >= total and not self._make_room(host):
            return "sessions"
        if self._in_progress.of(host) >= per_client:
            return "client_sessions"
        settings = self.settings
        if settings.client_rate and not self._rates.allow(
            host, self._reactor.seconds(), settings.client_rate, settings.client_burst
        ):
            return "client_rate"
        return None

    def _make_room(self, host: str) -> bool:
        """
        Give up the oldest transfer whose client has not acknowledged
        anything yet, so that a request from C{host} fits under the cap;
        whether that was done.  Only for a client that holds no unproven
        transfer itself: the sources of a flood of forged requests all do,
        so the flood cannot make room for itself.
        """
        if self._unproven.holds_any(host):
            return False
        session = self._unproven.oldest()
        if session is None:
            return False
        self.stats.increment("sessions.evicted")
        session.evict("evicted: its client never answered, and a cap was reached")
        return True

    def _release(self, peer) -> None:
        """
        The request of C{peer} is no longer in progress.
        """
        if self._busy_peers.pop(peer, _GONE) is not _GONE:
            self._in_progress.remove(peer[0])

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

    def _ask_handler(self, request: Request, started: float, via) -> None:
        try:
            result = self.handler.get_response_data(request)
        except Exception:
            self._refuse(Failure(), request, via)
            return
        if isinstance(result, ResponseData):
            # The common answer, from a synchronous handler: no need to ask
            # whether it is awaitable (a costly check, per request).
            self._start_session(result, request, started, via)
            return
        if not isinstance(result, Deferred) and inspect.isawaitable(result):
            result = ensureDeferred(result)
        if isinstance(result, Deferred):
            result.addCallbacks(
                self._start_session,
                self._refuse,
                callbackArgs=(request, started, via),
                errbackArgs=(request, via),
            )
        else:
            self._start_session(result, request, started, via)

    def _refuse(self, failure: Failure, request: Request, via) -> None:
        if _out_of_descriptors(failure.value):
            self._out_of_descriptors(request)
            return
        code, message, expected = error_for(failure.value)
        if expected:
            self._note(
                Outcome.REFUSED,
                "Refused {path!r} for {peer}: {message}",
                path=path_for_log(request.path),
                peer=request.peer,
                message=message,
            )
        else:
            self._log.failure(
                "Handler failed on {path!r} for {peer}",
                failure,
                path=path_for_log(request.path),
                peer=request.peer,
            )
        self._release(request.peer)
        self.stats.increment("requests.refused")
        self.stats.increment("outcome." + Outcome.REFUSED)
        self.stats.increment(f"errors.{code}")
        via.reply_error(request.peer, request.local[0], code, message)

    # -- sessions -----------------------------------------------------------

    def _start_session(self, response, request: Request, started: float, via) -> None:
        if self._stopped:
            # A handler answered after the server stopped: no new port.
            self._close_quietly(response)
            self._release(request.peer)
            via.reply_error(request.peer, request.local[0], 0, "Server shutting down")
            return
        settings = self.settings
        try:
            if request.mode == "netascii":
                response = NetasciiResponseData(response)
            size = response.size()
            negotiated = negotiate(request.options, settings.limits, size)
        except Exception:
            self._close_quietly(response)
            self._refuse(Failure(), request, via)
            return
        self.stats.increment("requests.accepted")
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
            timers=self._timers,
            peer=request.peer,
            response=response,
            negotiated=negotiated,
            schedule=self.schedule_for(negotiated.timeout),
            round_trip=self.round_trip_for(request.peer, negotiated.timeout),
            rollover=settings.rollover,
            stats=stats,
            on_end=self._on_session_end,
            on_stray=self._on_stray,
        )
        self.sessions[stats.session_id] = session
        self._busy_peers[request.peer] = session
        self._unproven.add(session)
        self.stats.session_started()
        try:
            if via.shared:
                via.port.open_transfer(session, request.local[0], request.peer)
            else:
                self.network.open_transfer(session, request.local[0])
        except Exception as error:
            reason = getattr(error, "socketError", error)
            if _out_of_descriptors(reason):
                session.not_started(_NO_DESCRIPTORS)
                self._out_of_descriptors(request)
                return
            held = self._descriptors_line.allow()
            if held is not None:
                self._log.error(
                    "Cannot open a transfer port on {local}: {reason}"
                    " ({held} more not logged in the last {interval:g}s)",
                    local=request.local[0],
                    reason=reason,
                    held=held,
                    interval=DESCRIPTORS_LOG_INTERVAL,
                )
            session.not_started("Server cannot open a port")
            via.reply_error(request.peer, request.local[0], 0, stats.error_message)

    def _out_of_descriptors(self, request: Request) -> None:
        """
        A request could not be served for want of descriptors: count it,
        say so once in a while, and tell the client nothing (it retries, by
        then perhaps with descriptors free, or at another server).
        """
        self._release(request.peer)
        self.stats.increment("requests.no_descriptors")
        held = self._descriptors_line.allow()
        if held is not None:
            self._log.error(
                "Out of file descriptors (limit {limit}): new transfers refused"
                " ({held} more refused in the last {interval:g}s)",
                limit=self.descriptor_limit,
                held=held,
                interval=DESCRIPTORS_LOG_INTERVAL,
            )

    def schedule_for(self, negotiated_timeout: int | None) -> tuple[float, ...]:
        """
        The retransmit waits of a new transfer: a timeout the client
        negotiated is the interval itself (RFC 2349), every time; otherwise
        the server's C{timeout} doubles on each retransmission.  Either way
        the waits add up to C{hold_time} at most, so a transfer that makes
        no progress ends within it whatever the client asked for.
        """
        settings = self.settings
        if negotiated_timeout is not None:
            return backoff_schedule(
                float(negotiated_timeout), settings.retries, 1.0, hold=settings.hold_time
            )
        return backoff_schedule(settings.timeout, settings.retries, hold=settings.hold_time)

    def _stray(self, addr) -> bool:
        """
        A datagram reached a transfer's port from someone else than its
        peer: count it, and tell the transfer whether to answer it (never a
        source port below 1024 unless allowed, as for requests).
        """
        self.stats.increment("datagrams.stray")
        self.flaps.stray(addr[0])
        return addr[1] >= LOWEST_CLIENT_PORT or self.settings.allow_low_ports

    def round_trip_for(self, peer, negotiated_timeout: int | None) -> RoundTrip | None:
        """
        The round-trip estimate a new transfer to C{peer} times its
        retransmissions by (RFC 6298), or L{None} when the client negotiated
        its timeout, which is then used as given (RFC 2349).  It starts from
        the last round trip seen from the client's prefix, else from the
        C{timeout} setting; its RTO stays between C{rto_floor} and eight
        times C{timeout}.
        """
        if negotiated_timeout is not None:
            return None
        settings = self.settings
        return RoundTrip(
            settings.timeout,
            floor=min(settings.rto_floor, settings.timeout),
            ceiling=settings.timeout * 8,
            seed=self.round_trips.recall(peer[0]),
        )

    def _close_quietly(self, response) -> None:
        try:
            response.close()
        except Exception:
            self._log.failure("Closing a response failed")

    def _session_ended(self, session: ReadSession) -> None:
        stats = session.stats
        self.sessions.pop(session.session_id, None)
        if self._busy_peers.get(session.peer) is session:
            self._release(session.peer)
        self._unproven.discard(session)
        self.stats.session_ended(stats)
        if stats.srtt is not None:
            self.round_trips.remember(stats.peer[0], stats.srtt)
        if stats.outcome == Outcome.TIMEOUT and stats.packets_acked:
            self.flaps.abandoned(stats.peer[0])
        self._log_transfer(stats)
        if self._session_callback is not None:
            try:
                self._session_callback(stats)
            except Exception:
                self._log.failure("Session callback failed")

    def _log_transfer(self, stats: SessionStats) -> None:
        if stats.error_message == _NO_DESCRIPTORS:
            # Said once in a while by _out_of_descriptors, not per request.
            return
        if not self._log_budget.allow(stats.outcome, self.settings.log_rate):
            return
        level = self._log.debug if stats.outcome == Outcome.PROBE else self._log.info
        level(
            "{outcome}: {path!r} to {peer} from {local}, {bytes} bytes in {blocks} "
            "blocks, {retransmits} retransmits, {duration:.3f}s{error}",
            outcome=stats.outcome,
            path=path_for_log(stats.file_path),
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
            session_id=stats.session_id,
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

"""
fbtftp's API on tftpd_tx: a server written for fbtftp 0.5 runs with only its
imports changed.

Change::

    from fbtftp.base_handler import BaseHandler, ResponseData
    from fbtftp.base_server import BaseServer

to::

    from tftpd_tx.compat.fbtftp import BaseHandler, ResponseData, BaseServer

and the same subclasses of L{BaseServer} and L{BaseHandler} serve on the
Twisted reactor, in one process, with tftpd_tx's transfers (retransmission,
options, windowsize, netascii, replies from the address the client used).

What stays as in fbtftp:

    - The constructors: C{BaseServer(address, port, retries, timeout,
      server_stats_callback=None, stats_interval_seconds=60)} and
      C{BaseHandler(server_addr, peer, path, options, stats_callback)}.
    - C{get_handler(server_addr, peer, path, options)} is called for each
      read request with fbtftp's C{options}: C{mode}, C{default_timeout},
      C{retries}, then the client's options, names lower-cased.  The
      handler's constructor calls C{get_response_data()}; an exception there
      is recorded in C{SessionStats.error} as fbtftp does, with the
      exception's text.
    - The handler's C{stats_callback} gets its L{SessionStats} once, when
      the session ends (also when it was refused), with fbtftp's attribute
      names; then the response is closed.
    - C{server_stats_callback} gets the L{ServerStats} every
      C{stats_interval_seconds} (read from C{ServerStats.interval} each
      time), in a background thread, never twice at once: the next wait
      starts when the callback returns.
    - C{run()} blocks until C{close()}.

What differs, and why:

    - Nothing forks.  C{get_handler} (so the handler's constructor and
      C{get_response_data}), every C{read}, C{size} and C{close} of the
      response and both stats callbacks run in the reactor's thread pool,
      so a slow handler delays only its own client.  Calls for one session
      are made one at a time, in order, but different sessions' calls run
      at the same time: C{get_handler} and the callbacks must be
      thread-safe.  Handlers cannot rely on process isolation (globals they
      change are shared).
    - C{read(n)} is called until it has C{n} bytes or returns nothing, as
      fbtftp does; C{size()} is called only when the client asks for
      C{tsize}.
    - Handler failures get tftpd_tx's codes (L{tftpd_tx.content.error_for}),
      in the client's ERROR and in C{SessionStats.error}:
      C{FileNotFoundError} is error 1, C{PermissionError} error 2, a
      L{TFTPError} its own code, anything else error 0 (fbtftp sends error 0
      for all).  The client gets tftpd_tx's message ("File not found",
      "Access violation", "Internal server error", or the L{TFTPError}'s);
      the exception text, which may name server paths, goes only to
      C{SessionStats.error} and the log.
    - C{ResponseData} is L{tftpd_tx.ResponseData}: a subclass without
      C{size()} has no size (C{tsize} is declined) and one without
      C{close()} has nothing to close, where fbtftp's raise
      C{NotImplementedError}.
    - A C{get_handler} that returns L{None} or raises gets the client an
      ERROR 0 (fbtftp sends nothing and the client times out); no session
      stats are reported for it, as in fbtftp.
    - Transfers are tftpd_tx's: C{timeout} is the first retransmit wait and
      later waits double (up to 8 times it); C{retries} is the number of
      retransmissions.  The handler's C{_timeout} and C{_retries} are not
      used.  Modes other than octet and netascii are refused before
      C{get_handler} is called; write requests get ERROR 2 instead of
      silence.
    - The peer is a plain C{(host, port)}: IPv4 clients on a dual-stack
      C{"::"} server appear as C{"192.0.2.1"}, not C{"::ffff:192.0.2.1"},
      and without IPv6 flow information.
    - C{SessionStats.bytes_sent} counts each byte once, not once per
      retransmission, so it equals the file size after a complete transfer.
    - C{BaseHandler} is not a C{multiprocessing.Process}, and C{BaseServer}
      has no C{run_once()} select loop method.

    - Options are negotiated by tftpd_tx, within its limits: C{windowsize}
      is granted too, out-of-range values are declined, and a repeated
      option counts once (the first).

Our extensions, documented on each: L{BaseServer.start},
L{BaseServer.stop}, C{run()} in a running reactor (returns a L{Deferred}
fired on close), L{BaseServer.server_stats}, L{BaseServer.bound_address},
the C{reactor} and C{threadpool} keyword arguments,
L{SessionStats.end_time} and L{SessionStats.tftpd_stats}, and the tftpd_tx
counters in L{ServerStats}.
"""

from __future__ import annotations

import collections
import ipaddress
import socket
import threading
import time
import types

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    ensureDeferred,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import threadable
from twisted.python.failure import Failure
from zope.interface import implementer

from ..content import IHandler, Request, ResponseData, TFTPError, error_for
from ..handlers import SerialCalls, ThreadedResponseData
from ..service import TFTPService
from ..settings import Settings
from ..stats import Outcome
from ..stats import ServerStats as _ServerStats
from ..stats import SessionStats as _SessionStats

__all__ = [
    "BaseServer",
    "BaseHandler",
    "ResponseData",
    "StringResponseData",
    "SessionStats",
    "ServerStats",
    "constants",
]

#: fbtftp's C{fbtftp.constants}, same names and values, for code that
#: compares C{SessionStats.error["error_code"]} with them.
constants = types.SimpleNamespace(
    OPCODE_RRQ=1,
    OPCODE_WRQ=2,
    OPCODE_DATA=3,
    OPCODE_ACK=4,
    OPCODE_ERROR=5,
    OPCODE_OACK=6,
    MODE_NETASCII="netascii",
    MODE_BINARY="octet",
    ERR_UNDEFINED=0,
    ERR_FILE_NOT_FOUND=1,
    ERR_ACCESS_VIOLATION=2,
    ERR_DISK_FULL=3,
    ERR_ILLEGAL_OPERATION=4,
    ERR_UNKNOWN_TRANSFER_ID=5,
    ERR_FILE_EXISTS=6,
    ERR_NO_SUCH_USER=7,
    ERR_INVALID_OPTIONS=8,
    MAX_BLOCK_NUMBER=65535,
    DEFAULT_BLKSIZE=512,
    DATAPOINTS_INTERVAL_SECONDS=60,
)

_READ_FAILED = "Error while reading from source"
_STOPPED = object()


# -- responses ----------------------------------------------------------------

# fbtftp's ResponseData is tftpd_tx's (imported above): subclass it and
# implement read(n), size() and close(), as in fbtftp.


class StringResponseData(ResponseData):
    """
    Serve a string, encoded as Latin-1 (so one character is one byte, as in
    fbtftp).

    @raise UnicodeEncodeError: the string has characters beyond Latin-1.
    """

    def __init__(self, string):
        self._content = string.encode("latin-1")
        self._size = len(self._content)
        self._offset = 0

    def read(self, n):
        chunk = self._content[self._offset : self._offset + n]
        self._offset += len(chunk)
        return chunk

    def size(self):
        return self._size


# -- statistics ---------------------------------------------------------------


class SessionStats:
    """
    What happened in one session, as fbtftp reports it to a handler's
    C{stats_callback}.

    @ivar peer: the client's C{(host, port)}.
    @ivar server_addr: the C{(address, port)} the server listens on, as
        given to L{BaseServer} (the actual port when 0 was given).
    @ivar file_path: the path as the client sent it.
    @ivar error: C{{}}, or C{{"error_code": int, "error_message": str}}: the
        handler's failure, the client's ERROR, a timeout, a read failure.
    @ivar options_in: the request's options including C{mode}.
    @ivar options_acked: the options acknowledged in the OACK; C{options} is
        the same.
    @ivar start_time: when the request arrived (seconds since the epoch).
    @ivar packets_sent: OACK and DATA datagrams sent, retransmissions
        included.
    @ivar packets_acked: ACKs that moved the transfer forward.
    @ivar bytes_sent: payload bytes sent, each counted once.
    @ivar retransmits: datagrams sent again after a timeout.
    @ivar blksize: the block size used.
    @ivar end_time: (our extension) when the session ended, or L{None}.
    @ivar tftpd_stats: (our extension) the L{tftpd_tx.stats.SessionStats}
        this was built from, with windowsize, outcome, the transfer's local
        address, the handler latency, the session id and the request;
        L{None} when the handler refused.
    """

    def __init__(self, server_addr, peer, file_path):
        self.peer = peer
        self.server_addr = server_addr
        self.file_path = file_path
        self.error = {}
        self.options = {}
        self.options_in = {}
        self.options_acked = {}
        self.start_time = time.time()
        self.end_time = None
        self.packets_sent = 0
        self.packets_acked = 0
        self.bytes_sent = 0
        self.retransmits = 0
        self.blksize = constants.DEFAULT_BLKSIZE
        self.tftpd_stats = None

    def duration(self):
        """
        Seconds from the request to the end of the session (to now while it
        runs).
        """
        end = self.end_time if self.end_time is not None else time.time()
        return end - self.start_time

    def __repr__(self):
        return (
            f"<SessionStats {self.file_path!r} peer={self.peer!r} "
            f"bytes_sent={self.bytes_sent} packets_sent={self.packets_sent} "
            f"retransmits={self.retransmits} blksize={self.blksize} "
            f"error={self.error!r}>"
        )


def _fill_from_session(stats: SessionStats, handler, session: _SessionStats, retries):
    """
    Copy what tftpd_tx counted in a transfer into fbtftp's names.
    """
    stats.tftpd_stats = session
    stats.start_time = session.start_time
    stats.end_time = session.end_time
    stats.options_in = {
        name: value
        for name, value in handler._options.items()
        if name not in ("default_timeout", "retries")
    }
    stats.options_acked = dict(session.options_acked)
    stats.options = stats.options_acked
    stats.blksize = session.blksize
    # fbtftp counts the OACK and every DATA sent, first or again, and not
    # the ERROR packets.
    stats.packets_sent = (
        session.blocks_sent + session.retransmits + (1 if session.options_acked else 0)
    )
    stats.packets_acked = session.packets_acked
    stats.bytes_sent = session.bytes_sent
    stats.retransmits = session.retransmits
    if session.outcome == Outcome.TIMEOUT:
        stats.error = {
            "error_code": constants.ERR_UNDEFINED,
            "error_message": f"timeout after {retries} retransmits.",
        }
    elif session.error_code is not None:
        stats.error = {
            "error_code": int(session.error_code),
            "error_message": session.error_message,
        }


class ServerStats(_ServerStats):
    """
    fbtftp's server statistics: counters with atomic get, set and reset,
    passed to C{server_stats_callback}.

    This is also the server's L{tftpd_tx.stats.ServerStats}, so the counters
    are tftpd_tx's, all guarded by one lock: C{process_count} (handlers
    created, as in fbtftp), C{requests.read}, C{requests.duplicate},
    C{outcome.completed}, C{outcome.refused}, C{outcome.timeout},
    C{outcome.peer-error}, C{outcome.probe}, C{errors.<code>},
    C{bytes_sent}, C{packets_sent}, C{retransmits}, C{datagrams} and the
    others tftpd_tx counts.  A counter never counted reads as 0.

    @ivar server_addr: the server's address, for the callback's convenience.
    @ivar interval: seconds between calls of the callback; a change takes
        effect from the next wait.
    @ivar start_time: when the server was created (seconds since the epoch).
    """

    def __init__(self, server_addr=None, interval=None):
        super().__init__()
        self.server_addr = server_addr
        self.interval = interval
        self.start_time = time.time()
        self._counters_lock = threading.Lock()

    # tftpd_tx's server counts through these two, on the reactor thread.

    def increment(self, name, amount=1):
        with self._counters_lock:
            super().increment(name, amount)

    def session_ended(self, session):
        with self._counters_lock:
            super().session_ended(session)

    # fbtftp's interface, for callbacks in any thread.

    def get_all_counters(self):
        """
        Every counter, as a dictionary.
        """
        with self._counters_lock:
            return dict(self.counters)

    def get_and_reset_all_counters(self):
        """
        Every counter, as a dictionary, and all of them back to zero, in one
        step.
        """
        with self._counters_lock:
            return super().get_and_reset_all_counters()

    def get_counter(self, name):
        with self._counters_lock:
            return self.counters[name]

    def set_counter(self, name, value):
        with self._counters_lock:
            self.counters[name] = value

    def increment_counter(self, name, increment=1):
        with self._counters_lock:
            self.counters[name] += increment

    def reset_counter(self, name):
        with self._counters_lock:
            self.counters[name] = 0

    def get_and_reset_counter(self, name):
        with self._counters_lock:
            value = self.counters[name]
            self.counters[name] = 0
            return value

    def reset_all_counters(self):
        with self._counters_lock:
            self.counters.clear()

    def duration(self):
        """
        Seconds since the server was created.
        """
        return time.time() - self.start_time


# -- handlers -----------------------------------------------------------------


class BaseHandler:
    """
    One client's request: subclass it and implement C{get_response_data()},
    which returns a L{ResponseData} for C{self._path}.

    The constructor runs in a thread (called from C{get_handler}) and calls
    C{get_response_data()} at once, as fbtftp does; its failures are
    recorded in C{self._stats.error} and sent to the client.

    @param server_addr: the server's C{(address, port)}.
    @param peer: the client's C{(host, port)}.
    @param path: the path requested, as sent.
    @param options: fbtftp's options: C{mode}, C{default_timeout},
        C{retries} and the client's options.
    @param stats_callback: called with the L{SessionStats} when the session
        ends, in a thread.
    """

    def __init__(self, server_addr, peer, path, options, stats_callback):
        self._timeout = int(options["default_timeout"])
        self._retries = int(options["retries"])
        self._server_addr = server_addr
        self._peer = peer
        self._path = path
        self._options = options
        self._stats_callback = stats_callback
        self._block_size = constants.DEFAULT_BLKSIZE
        self._response_data = None
        self._stats = SessionStats(server_addr, peer, path)
        # Why the handler cannot serve, for the server to answer and log.
        self._tftpd_failure = None
        try:
            self._response_data = self.get_response_data()
        except Exception:
            _record_failure(self, Failure())

    def get_response_data(self):
        """
        Return the L{ResponseData} for this request; override this.
        """
        raise NotImplementedError()


def _record_failure(handler: BaseHandler, failure: Failure) -> None:
    """
    Keep why a handler cannot serve, for the server, and record it in the
    handler's stats as fbtftp does: the code the client gets (from
    L{error_for}, so C{FileNotFoundError} is 1, a L{TFTPError} its own code)
    and the exception's text.
    """
    handler._tftpd_failure = failure
    code, _, _ = error_for(failure.value)
    handler._stats.error = {"error_code": int(code), "error_message": str(failure.value)}


class _Refused(TFTPError):
    """
    A refusal with the code fbtftp gives it.
    """

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


def _read_fully(response, n: int) -> bytes:
    """
    Read C{n} bytes, or fewer at the end, from a response whose reads may
    be short (a socket, a pipe), the way fbtftp fills a block.
    """
    block = response.read(n)
    while len(block) < n:
        more = response.read(n - len(block))
        if not more:
            break
        block += more
    return bytes(block)


class _Session:
    """
    The server's record of one handler, from its creation to its report.

    @ivar calls: the L{SerialCalls} that every call to the handler's
        response and its stats callback goes through: fbtftp's handlers
        are called one at a time, in order.
    """

    def __init__(self, handler, request: Request, calls: SerialCalls) -> None:
        self.handler = handler
        self.request = request
        self.calls = calls
        self.tftpd_stats: _SessionStats | None = None


class _ThreadedResponse(ThreadedResponseData):
    """
    A handler's L{ResponseData}, read in the thread pool the way fbtftp
    fills a block.  Closing it hands the session to the server, which
    reports it and then closes the response, in the same order.
    """

    def __init__(self, server: BaseServer, session: _Session, size) -> None:
        super().__init__(session.handler._response_data, size, session.calls)
        self._server = server
        self._session = session

    def read(self, n: int) -> Deferred:
        reading = self._calls.run(_read_fully, self._response, n)
        return reading.addErrback(self._server._read_failed, self._session)

    def close(self) -> None:
        self._server._response_closed(self._session)


@implementer(IHandler)
class _Adapter:
    """
    The tftpd_tx handler that asks a L{BaseServer} for fbtftp handlers.
    """

    def __init__(self, server: BaseServer) -> None:
        self._server = server

    def get_response_data(self, request: Request):
        return self._server._handle(request)


# -- the server ---------------------------------------------------------------


class BaseServer:
    """
    Serve read requests with fbtftp handlers: subclass it and implement
    C{get_handler()}, which returns a L{BaseHandler}.

    The UDP port is bound here, as fbtftp binds it in its constructor: a
    port in use fails now, and port 69 can be bound before dropping
    privileges.

    @param address: the IPv4 or IPv6 address to listen on (C{"::"} serves
        IPv4 clients too).
    @param port: the UDP port; 0 lets the system choose (see
        L{bound_address}).
    @param retries: retransmissions of the same packets before a transfer
        is given up.
    @param timeout: the first retransmit wait in seconds, when the client
        does not negotiate one.
    @param server_stats_callback: called with the L{ServerStats} every
        C{stats_interval_seconds}, in a thread; the next wait starts when it
        returns.
    @param stats_interval_seconds: the interval.
    @param reactor: (our extension, keyword only) the reactor; the global
        one when omitted.
    @param threadpool: (our extension, keyword only) the thread pool for
        handlers, reads and callbacks; the reactor's when omitted.
    """

    _log = Logger()

    def __init__(
        self,
        address,
        port,
        retries,
        timeout,
        server_stats_callback=None,
        stats_interval_seconds=constants.DATAPOINTS_INTERVAL_SECONDS,
        *,
        reactor=None,
        threadpool=None,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._pool = threadpool if threadpool is not None else reactor.getThreadPool()
        self._address = address
        self._port = port
        self._retries = retries
        self._timeout = timeout
        self._server_stats_callback = server_stats_callback
        self._family = (
            socket.AF_INET
            if isinstance(ipaddress.ip_address(address), ipaddress.IPv4Address)
            else socket.AF_INET6
        )
        self._server_stats = ServerStats(address, stats_interval_seconds)
        self._should_stop = False
        self._run_once = False
        self._started = False
        self._stopping = False
        self._stop_outcome = None
        self._stop_waiters: list[Deferred] = []
        self._stats_call = None
        # Sessions handed to tftpd_tx, by the id() of their Request, which
        # tftpd_tx gives back in SessionStats.request when the transfer ends.
        # Each entry holds its request, so no other live object has that id.
        self._live: dict[int, _Session] = {}
        # Work in flight (handler creation, reports, the stats callback),
        # which stop() waits for.
        self._busy = 0
        self._idle_waiters: list[Deferred] = []
        self._idle_call = None
        self._service = TFTPService(
            _Adapter(self),
            port=port,
            interface=address,
            settings=Settings(timeout=timeout, retries=retries),
            reactor=reactor,
            stats=self._server_stats,
            session_callback=self._session_ended,
        )
        try:
            self._service.privilegedStartService()
        except CannotListenError as error:
            # fbtftp's socket.bind raises the OSError itself.
            raise error.socketError from error
        host = self._service.port.getHost()
        self._port = host.port

    # -- what subclasses override -------------------------------------------

    def get_handler(self, server_addr, peer, path, options):
        """
        Return the L{BaseHandler} for a request; override this.  Called in
        a thread.

        @param server_addr: the server's C{(address, port)}.
        @param peer: the client's C{(host, port)}.
        @param path: the path requested, exactly as sent: it may start with
            C{/} or contain C{..}, so a handler that joins it to a directory
            (as fbtftp's README example does) must refuse what climbs out.
        @param options: C{mode}, C{default_timeout}, C{retries}, then the
            client's options (C{blksize}, C{tsize}, C{timeout}, ...), names
            lower-cased, values as sent.
        """
        raise NotImplementedError()

    # -- running ------------------------------------------------------------

    @property
    def server_stats(self) -> ServerStats:
        """
        (Our extension.)  The L{ServerStats} the callback receives, for
        setting its C{interval} or reading counters before the first call.
        """
        return self._server_stats

    @property
    def bound_address(self) -> tuple[str, int]:
        """
        (Our extension.)  The C{(host, port)} the server is bound to, with
        the port the system chose when 0 was given.
        """
        return (self._address, self._port)

    def run(self, run_once=False):
        """
        Serve until L{close}.

        When the reactor is not running yet, run it here and return when the
        server has been closed (or the reactor stopped, by Ctrl-C for
        instance): the reactor cannot be started again in this process.
        When it is already running (inside a Twisted application), start
        serving and return at once.

        @param run_once: serve one request (until its session ends) and
            close; the server stats callback is called at most once.  fbtftp
            uses it in its unit tests.
        @return: L{None} after running the reactor; (our extension) in a
            running reactor, a L{Deferred} that fires when the server has
            been closed.
        """
        self._run_once = run_once
        if self._reactor.running:
            self.start()
            return self._when_stopped()
        if self._stopping:
            return None
        self._when_stopped().addBoth(self._stop_reactor)
        trigger = self._reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        self.start()
        try:
            self._reactor.run()
        finally:
            try:
                self._reactor.removeSystemEventTrigger(trigger)
            except (KeyError, ValueError):
                pass  # the shutdown has run it already
        return None

    def close(self):
        """
        Stop serving: new requests are ignored, handlers being created
        finish, then running transfers are aborted and the port is closed.
        A L{run} that started the reactor then stops it and returns.  Safe
        to call from any thread (a stats callback, a signal handler).

        @return: (our extension) in the reactor thread, the L{Deferred} of
            L{stop}; elsewhere L{None}.
        """
        self._should_stop = True
        if self._reactor.running and not threadable.isInIOThread():
            self._reactor.callFromThread(self.stop)
            return None
        return self.stop()

    def _stop_reactor(self, result) -> None:
        if isinstance(result, Failure):
            self._log.failure("Stopping the server failed", result)
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass

    def start(self) -> Deferred:
        """
        (Our extension.)  Start serving without running the reactor: for
        tests and for Twisted applications.  Call it in the reactor thread.

        @return: a L{Deferred} that fires once the server is serving.
        """
        if not self._started and not self._stopping:
            self._started = True
            self._service.startService()
            self._schedule_server_stats()
        return succeed(None)

    def stop(self) -> Deferred:
        """
        (Our extension.)  Stop serving, like L{close} without stopping the
        reactor.  Call it in the reactor thread.

        @return: a L{Deferred} that fires when the port is closed and every
            session has been reported and its response closed.
        """
        if not self._stopping:
            self._stopping = True
            self._should_stop = True
            ensureDeferred(self._stop()).addBoth(self._stopped_with)
        return self._when_stopped()

    async def _stop(self) -> None:
        if self._stats_call is not None and self._stats_call.active():
            self._stats_call.cancel()
        self._stats_call = None
        self._service.server.drain()
        await self._idle()
        await maybeDeferred(self._service.stopService)
        await self._idle()

    def _stopped_with(self, outcome) -> None:
        self._stop_outcome = outcome if isinstance(outcome, Failure) else _STOPPED
        waiters, self._stop_waiters = self._stop_waiters, []
        if isinstance(outcome, Failure) and not waiters:
            self._log.failure("Stopping the server failed", outcome)
        for waiter in waiters:
            self._fire_stopped(waiter)

    def _when_stopped(self) -> Deferred:
        waiter = Deferred()
        if self._stop_outcome is None:
            self._stop_waiters.append(waiter)
        else:
            self._fire_stopped(waiter)
        return waiter

    def _fire_stopped(self, waiter: Deferred) -> None:
        if self._stop_outcome is _STOPPED:
            waiter.callback(None)
        else:
            waiter.errback(self._stop_outcome)

    # -- bookkeeping of work in flight --------------------------------------

    def _track(self, work: Deferred) -> Deferred:
        self._busy += 1

        def untrack(result):
            self._busy -= 1
            # Wake the waiters on the next turn: the work's other callbacks
            # (tftpd_tx starting a transfer, say) run first.
            if not self._busy and self._idle_waiters and self._idle_call is None:
                self._idle_call = self._reactor.callLater(0, self._wake_idle)
            return result

        return work.addBoth(untrack)

    def _idle(self) -> Deferred:
        waiter = Deferred()
        self._idle_waiters.append(waiter)
        if not self._busy and self._idle_call is None:
            self._idle_call = self._reactor.callLater(0, self._wake_idle)
        return waiter

    def _wake_idle(self) -> None:
        self._idle_call = None
        if self._busy:
            return  # more work came; its end wakes the waiters
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- the periodic server stats ------------------------------------------

    def _schedule_server_stats(self) -> None:
        if self._server_stats_callback is None or self._stopping:
            return
        self._stats_call = self._reactor.callLater(
            self._server_stats.interval, self._report_server_stats
        )

    def _report_server_stats(self) -> None:
        self._stats_call = None
        reporting = deferToThreadPool(
            self._reactor, self._pool, self._server_stats_callback, self._server_stats
        )
        reporting.addErrback(
            lambda failure: self._log.failure("Server stats callback failed", failure)
        )
        if not self._run_once:
            reporting.addCallback(lambda _: self._schedule_server_stats())
        self._track(reporting)

    # -- requests -----------------------------------------------------------

    def _handle(self, request: Request) -> Deferred:
        """
        Create the fbtftp handler for a request in a thread, and give
        tftpd_tx its response (or its refusal).
        """
        started = self._reactor.seconds()
        options = collections.OrderedDict(
            [
                ("mode", request.mode),
                ("default_timeout", self._timeout),
                ("retries", self._retries),
            ]
        )
        options.update(request.options)
        creating = deferToThreadPool(
            self._reactor,
            self._pool,
            self._create_handler,
            (self._address, self._port),
            request.peer,
            request.path,
            options,
            "tsize" in request.options,
        )
        creating.addCallbacks(
            self._handler_created,
            self._get_handler_failed,
            callbackArgs=(request, started),
        )
        return self._track(creating)

    def _create_handler(self, server_addr, peer, path, options, wants_size):
        """
        In a thread: the user's C{get_handler}, and the size when the client
        asked for it.
        """
        handler = self.get_handler(server_addr, peer, path, options)
        if handler is None or handler._stats.error:
            return handler, None
        if handler._response_data is None:
            _record_failure(
                handler, Failure(TypeError("get_response_data() returned None"))
            )
            return handler, None
        size = None
        if wants_size:
            try:
                size = handler._response_data.size()
            except Exception:
                _record_failure(handler, Failure())
        return handler, size

    def _get_handler_failed(self, failure: Failure) -> Failure:
        # tftpd_tx logs the traceback and answers ERROR 0.
        self._server_stats.increment_counter("process_count")
        self._request_done()
        return failure

    def _handler_created(self, created, request: Request, started: float):
        handler, size = created
        if handler is None:
            self._log.warn(
                "The handler is None: not serving {path!r} to {peer}",
                path=request.path,
                peer=request.peer,
            )
            self._request_done()
            raise _Refused(constants.ERR_UNDEFINED, "Request not served")
        self._server_stats.increment_counter("process_count")
        session = _Session(handler, request, SerialCalls(self._reactor, self._pool))
        if handler._stats.error:
            return self._refuse(session, started)
        self._live[id(request)] = session
        return _ThreadedResponse(self, session, size)

    def _refuse(self, session: _Session, started: float) -> Failure:
        """
        Report a handler that cannot serve, then have tftpd_tx tell the
        client (with L{error_for}'s code and message, which never reveals an
        unexpected exception's text) and log the traceback of a bug.
        """
        handler = session.handler
        stats = handler._stats
        stats.start_time = started
        stats.end_time = self._reactor.seconds()
        self._track(self._report(session).addCallback(lambda _: self._request_done()))
        if handler._tftpd_failure is None:
            # The handler set its stats' error itself, which fbtftp sends as
            # it is.
            raise _Refused(stats.error["error_code"], stats.error["error_message"])
        return handler._tftpd_failure

    def _read_failed(self, failure: Failure, session: _Session):
        """
        A read raised: log it, and end the transfer with fbtftp's error.
        """
        if failure.check(TFTPError, CancelledError):
            # A refusal of the user's own, or the session ended while the
            # read was pending: nothing to log.
            return failure
        self._log.failure(
            "Reading {path!r} for {peer} failed",
            failure,
            path=session.handler._path,
            peer=session.handler._peer,
        )
        raise _Refused(constants.ERR_UNDEFINED, _READ_FAILED)

    def _response_closed(self, session: _Session) -> None:
        """
        tftpd_tx is done with a response; its session callback follows at
        once, so report on the next turn of the reactor.
        """
        finishing = deferLater(self._reactor, 0, self._finish, session)
        finishing.addErrback(
            lambda failure: self._log.failure("Reporting a session failed", failure)
        )
        self._track(finishing)

    def _session_ended(self, stats: _SessionStats) -> None:
        session = self._live.pop(id(stats.request), None)
        if session is not None:
            session.tftpd_stats = stats

    def _finish(self, session: _Session) -> Deferred:
        self._live.pop(id(session.request), None)
        handler = session.handler
        stats = handler._stats
        if session.tftpd_stats is not None:
            _fill_from_session(stats, handler, session.tftpd_stats, self._retries)
        else:
            # The transfer never started (tftpd_tx refused the response).
            stats.end_time = self._reactor.seconds()
            stats.error = stats.error or {
                "error_code": constants.ERR_UNDEFINED,
                "error_message": "Transfer could not start",
            }
        reporting = self._report(session)
        reporting.addCallback(lambda _: self._request_done())
        return reporting

    def _report(self, session: _Session) -> Deferred:
        """
        Call the handler's stats callback, then close its response, in its
        thread order, logging what fails.
        """
        handler = session.handler
        steps = []
        if handler._stats_callback is not None:
            calling = session.calls.run(handler._stats_callback, handler._stats)
            calling.addErrback(
                lambda failure: self._log.failure("Session stats callback failed", failure)
            )
            steps.append(calling)
        if handler._response_data is not None:
            closing = session.calls.run(handler._response_data.close)
            closing.addErrback(
                lambda failure: self._log.failure(
                    "Closing the response for {path!r} failed", failure, path=handler._path
                )
            )
            steps.append(closing)
        if not steps:
            return succeed(None)
        return steps[-1]

    def _request_done(self) -> None:
        if self._run_once:
            self._reactor.callLater(0, self.close)

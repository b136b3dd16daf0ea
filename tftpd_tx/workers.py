"""
C{twistd tftp --workers N}: one supervising process and N worker processes
serving the same address and port, every core of the host at work, the host
still one server to its clients and its operators.

The supervisor (L{Supervisor}) binds N datagram sockets to the address with
C{SO_REUSEPORT} in C{privilegedStartService}, before C{twistd -u/-g} drops
privileges, or under C{--systemd} takes the N sockets per address that the
socket unit made (L{worker_sockets}), and starts one worker
(L{tftpd_tx.worker}) per socket with C{reactor.spawnProcess}, handing it its
socket (one per address) and one end of a stream socket pair that carries
the AMP commands of L{tftpd_tx.control}.  The kernel picks the socket of
each datagram by a hash of its source and destination addresses and ports,
so one client (address and port) always reaches the same worker: a
retransmitted RRQ reaches the worker serving it, which knows it for a
retransmission.  The supervisor keeps every socket open for its whole life,
so that the set the kernel hashes over never changes: a worker that ends
leaves its sockets to the next, and what arrives for it meanwhile waits in
the sockets' buffers.  With C{--handback}, the supervisor binds a socket of
the hand-back port for each worker too, and the kernel steers a client's
hand-backs to the worker that its own datagrams reach
(L{tftpd_tx.reuseport}).

The supervisor is the host's only operations endpoint and manhole: it asks
every worker for its figures and its transfers every second, and
L{tftpd_tx.host.HostServer} shows them as one server to the operator core,
the health grade and the metrics; drain, resume, kill and the live settings
go to the workers.  A worker that ends is started again, after a delay that
grows while it keeps ending (L{RESTART_DELAYS}), and counted.  On SIGTERM
every worker stops gracefully, as C{twistd tftp} does, and the supervisor
exits once they all have.
"""

from __future__ import annotations

import functools
import getopt
import os
import signal
import socket
import sys

from twisted.application.service import MultiService, Service
from twisted.internet import address, defer, error
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from zope.interface import implementer

from . import control, reuseport
from .host import HostServer, IWorkerSlot, Totals, WorkersCollector, worker_problem
from .operator import address_text
from .service import listening_address

__all__ = [
    "RESTART_DELAYS",
    "Supervisor",
    "WorkerProcess",
    "WorkerSlot",
    "bind_sockets",
    "host_service",
    "restart_delay",
    "worker_command_line",
    "worker_count",
    "worker_sockets",
]

#: Seconds before a worker that ended is started again: the first delay
#: after one end, the next after two in a row, and so on (the last
#: repeats).  Ends are in a row while the worker runs less than
#: L{STABLE_AFTER} seconds.
RESTART_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: Seconds a worker must run for its next end to start the delays again.
STABLE_AFTER = 30.0
#: Seconds between two reports asked of each worker.
REFRESH_INTERVAL = 1.0
#: Seconds a serving worker may leave reports unanswered before it is
#: killed and started again (its reactor is stuck: its clients are not
#: served either).
UNRESPONSIVE_AFTER = 30.0
#: Seconds a worker may take to stop beyond the shutdown grace before it is
#: killed.
STOP_MARGIN = 5.0

#: The options of C{twistd tftp} that are the supervisor's alone: a worker
#: serves the sockets it is given (bound by the supervisor, or by systemd),
#: and the host has one operations endpoint and one manhole.
SUPERVISOR_ONLY = frozenset(
    {
        "workers", "port", "systemd", "ops", "ops-allow-remote", "health-canary", "disable-file",
        "manhole", "manhole-keys", "manhole-allow-remote", "state-dir",
    }
)  # fmt: skip


#: What C{--workers auto} parses to, until C{twistd tftp}'s options know
#: what it means (L{tftpd_tx.tap.Options}): one worker per CPU this process
#: may run on, or under C{--systemd} one per socket that each address has.
AUTO = "auto"


def worker_count(text: str) -> int | str:
    """
    The number of workers C{--workers} asks for: a positive number, or
    L{AUTO}.

    @raise ValueError: neither.
    """
    if text == AUTO:
        return AUTO
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"--workers {text!r}: give a number of processes, 1 or more, or auto")
    return count


worker_count.coerceDoc = (
    "A number of processes, or 'auto' (one per CPU this process may use; "
    "with --systemd, one per socket of each address)."
)


def restart_delay(ends_in_a_row: int) -> float:
    """
    The delay before a worker that has ended C{ends_in_a_row} times in a
    row (1 or more) is started again.
    """
    return RESTART_DELAYS[min(ends_in_a_row, len(RESTART_DELAYS)) - 1]


def worker_command_line(options) -> list[str]:
    """
    The options a worker parses: C{options.command_line} (the
    C{twistd tftp} command line, as given) less L{SUPERVISOR_ONLY}, with
    C{--port=0} so that C{twistd tftp}'s check that the port can be bound
    does not collide with the supervisor's sockets (a worker binds nothing).
    """
    parsed, _ = getopt.getopt(options.command_line, options.shortOpt, options.longOpt)
    takes_value = {name[:-1] for name in options.longOpt if name.endswith("=")}
    arguments = []
    for given, value in parsed:
        name = given.lstrip("-")
        name = options.synonyms.get(name) or options.synonyms.get(name.replace("-", "_"), name)
        name = name.replace("_", "-")
        if name in SUPERVISOR_ONLY:
            continue
        arguments.append(f"--{name}={value}" if name in takes_value else f"--{name}")
    return [*arguments, "--port=0"]


def bind_sockets(interface: str, port: int, count: int) -> list[socket.socket]:
    """
    C{count} datagram sockets bound to C{(interface, port)} with
    C{SO_REUSEPORT} (port 0: one chosen by the kernel, the same for all);
    C{""} is every address, IPv4 and IPv6, as for C{twistd tftp}.

    @raise OSError: one could not be bound (those bound are closed).
    """
    host = listening_address(interface)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            skt = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(skt)
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if host == "::":
                skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            skt.bind((host, port))
            port = skt.getsockname()[1]
    except OSError:
        for skt in sockets:
            skt.close()
        raise
    return sockets


def worker_sockets(sockets, count: int | str) -> list[list[socket.socket]]:
    """
    The sockets of each of C{count} workers (L{AUTO}: as many as there are
    sockets on each address), from those systemd handed over
    (C{--systemd}): worker I is given the I-th socket of every address, in
    the order they came.  A socket unit makes N sockets on one address by
    repeating its C{ListenDatagram=} line N times with C{ReusePort=yes}:
    systemd sets C{SO_REUSEPORT} before it binds each, so that the N make one
    group over which the kernel hashes the clients, as over the sockets of
    L{bind_sockets}.  (The workers cannot bind their own beside systemd's: a
    socket joins only a group of its own user's sockets.)

    @raise ValueError: an address has not C{count} sockets (for L{AUTO}, not
        as many as the others), or one of several on an address lacks
        C{SO_REUSEPORT}: bound beside the others with C{SO_REUSEADDR} alone,
        one of them would get every datagram and the other workers none.
    """
    groups: dict[tuple, list[socket.socket]] = {}
    for skt in sockets:
        groups.setdefault(skt.getsockname()[:2], []).append(skt)
    counts = {address_text(group[0].getsockname()): len(group) for group in groups.values()}
    if count == AUTO:
        if len(set(counts.values())) > 1:
            found = ", ".join(f"{name}: {number}" for name, number in counts.items())
            raise ValueError(
                f"--workers auto: the addresses have different numbers of sockets "
                f"({found}): repeat each one's ListenDatagram= line in the socket "
                "unit as many times as the others', with ReusePort=yes"
            )
        count = next(iter(counts.values()))
    for name, number in counts.items():
        if number != count:
            raise ValueError(
                f"--workers {count}: systemd handed over {number} socket(s) on {name}: "
                f"repeat ListenDatagram={name} {count} times with ReusePort=yes in the "
                "socket unit, or set --workers to the count (or auto)"
            )
    if count > 1:
        for skt in sockets:
            if not skt.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
                raise ValueError(
                    f"--workers {count}: the sockets on {address_text(skt.getsockname())} lack SO_REUSEPORT,"
                    " so one of them would get every datagram: set ReusePort=yes in the"
                    " socket unit"
                )
    return [list(each) for each in zip(*groups.values())]


def worker_environment(environ=None) -> dict[str, str]:
    """
    The environment of a worker: this one, with the directory of this
    C{tftpd_tx} first on C{PYTHONPATH}, so that the workers run the code
    the supervisor runs.
    """
    environ = dict(os.environ if environ is None else environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environ["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [environ.get("PYTHONPATH")])])
    return environ


def _how(reason) -> str:
    value = reason.value
    if getattr(value, "signal", None) is not None:
        return f"signal {value.signal}"
    return f"exit {getattr(value, 'exitCode', None)}"


class WorkerProcess(ProcessProtocol):
    """
    A worker process as its supervisor sees it: the log events it writes
    (JSON lines, see L{tftpd_tx.worker.JSONEventLines}) are logged here as
    this process's own, with a C{worker} field and the worker in their
    system (C{[worker 2 tftpd_tx.server.TFTPServer#info]}); anything else
    it writes is logged as a warning; its end is told to C{ended}.

    @param index: the worker's number.
    @param ended: called with the reason (a L{Failure} of
        L{error.ProcessDone} or L{error.ProcessTerminated}).
    @param publisher: where the worker's events go.
    """

    def __init__(self, index: int, ended, publisher=globalLogPublisher) -> None:
        self._index = index
        self._ended = ended
        self._publisher = publisher
        self._log = Logger(namespace="tftpd_tx.workers.WorkerProcess", observer=publisher)
        self._pending = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._pending.get(childFD, b"") + data).split(b"\n")
        self._pending[childFD] = lines.pop()
        for line in lines:
            self._line(childFD, line)

    def _line(self, childFD: int, line: bytes) -> None:
        if not line.strip():
            return
        text = line.decode("utf-8", "replace")
        if childFD == 1:
            try:
                event = eventFromJSON(text)
            except ValueError:
                event = None
            if isinstance(event, dict):
                level = getattr(event.get("log_level"), "name", "-")
                event["worker"] = self._index
                event["log_system"] = (
                    f"worker {self._index} {event.get('log_namespace', '-')}#{level}"
                )
                self._publisher(event)
                return
        self._log.warn("Worker {worker}: {line}", worker=self._index, line=text)

    def processEnded(self, reason) -> None:
        for childFD, rest in self._pending.items():
            if rest:
                self._line(childFD, rest)
        self._pending = {}
        self._ended(reason)


class _SupervisorChannel(control.Channel):
    """
    The supervisor's end of one worker's control channel.
    """

    def __init__(self, ready) -> None:
        super().__init__()
        self._ready = ready

    @control.Ready.responder
    def ready(self, pid: int):
        self._ready(pid)
        return {}


@implementer(IWorkerSlot)
class WorkerSlot:
    """
    One of the N places a worker serves from: its sockets, one per address
    (kept for the supervisor's life), the worker process there now, its
    restarts and its worker's last report.

    @ivar pid: the process's id while one runs, else L{None}.
    @ivar process: the L{IProcessTransport} while one runs, else L{None}.
    @ivar channel: its control channel (AMP) while one runs, else L{None}.
    @ivar exited: fires once the process there now has ended.
    """

    _log = Logger()

    def __init__(self, index: int, sockets=()) -> None:
        self.index = index
        self.sockets = list(sockets)
        #: Its socket of the --handback port, if there is one.
        self.handback = None
        self.state = "not started"
        self.restarts = 0
        self.ends_in_a_row = 0
        self.started_at = 0.0
        self.pid = None
        self.process = None
        self.channel = None
        self.exited = defer.Deferred()
        self.report = None
        self.reported_at = None
        self.rows: list[dict] = []
        self.retired = Totals()
        self.refreshing = False
        self.restart_call = None

    @property
    def serving(self) -> bool:
        return self.state == "serving"

    def send(self, command, **arguments) -> None:
        if self.channel is None:
            return
        self.channel.callRemote(command, **arguments).addErrback(self._failed, command)

    def _failed(self, failure, command) -> None:
        if not failure.check(error.ConnectionLost, error.ConnectionDone):
            self._log.warn(
                "Worker {worker} refused {command}: {error}",
                worker=self.index,
                command=command.__name__,
                error=failure.getErrorMessage(),
            )

    def ended(self) -> None:
        """
        The process here has ended: what it counted is kept, its transfers
        are gone.
        """
        self.retired.add(self.report)
        self.report = self.reported_at = None
        self.rows = []
        self.pid = self.process = self.channel = None
        exited, self.exited = self.exited, defer.Deferred()
        exited.callback(None)


class _Listening:
    """
    The address the host listens on, as a port would say it.
    """

    def __init__(self, skt: socket.socket) -> None:
        host, port = skt.getsockname()[:2]
        kind = address.IPv6Address if skt.family == socket.AF_INET6 else address.IPv4Address
        self._host = kind("UDP", host, port)

    def getHost(self):
        return self._host


class Supervisor(Service):
    """
    Run N workers on one address and port, and be the host's one face over
    them: the service C{twistd tftp --workers N} runs in place of a
    L{tftpd_tx.service.TFTPService}, with what the operations plane reads
    of one (C{server}, C{port}, C{cut}, L{when_stopped}).

    @param command_line: the options each worker parses
        (L{worker_command_line}).
    @param count: how many workers.
    @param interface: the address to listen on (C{""}: every address).
    @param port: the UDP port (0: one the kernel chooses).
    @param settings: the host's L{tftpd_tx.settings.Settings}.
    @param reactor: provides C{IReactorProcess}, C{IReactorSocket} and
        C{IReactorTime}.
    @param python: the interpreter the workers run on.
    @param environ: the workers' environment (L{worker_environment}).
    @param refresh_interval: seconds between two reports asked of each
        worker.
    @param stop_signals: while the workers drain, a second SIGTERM or
        SIGINT stops them at once (for C{twistd}).
    @param publisher: where the workers' log events go.
    @param sockets: the sockets of each worker, bound already (by systemd:
        L{worker_sockets}), to serve instead of binding C{port} on
        C{interface}.
    @param handback: the C{(host, port)} of C{--handback}, where the
        supervisor binds a socket for each worker too, and makes the kernel
        steer every hand-back to the worker the client's own datagrams
        reach (L{tftpd_tx.reuseport}).

    @ivar server: the L{HostServer}.
    @ivar slots: the L{WorkerSlot}s, in order.
    @ivar port: the listening address (C{getHost()}) once bound, else
        L{None}.
    """

    _log = Logger()

    def __init__(
        self, command_line: list[str], count: int, interface: str, port: int, settings,
        reactor, *, python: str = sys.executable, environ=None,
        refresh_interval: float = REFRESH_INTERVAL, stop_signals: bool = False,
        publisher=globalLogPublisher, sockets=None, handback=None,
    ) -> None:  # fmt: skip
        self._command_line = command_line
        self._interface = interface
        self._port_number = port
        self._reactor = reactor
        self._python = python
        self._environ = worker_environment() if environ is None else environ
        self._refresh_interval = refresh_interval
        self._stop_signals = stop_signals
        self._publisher = publisher
        self._handed = sockets
        self._handback = handback
        self.slots = [WorkerSlot(index) for index in range(1, count + 1)]
        self.server = HostServer(self.slots, settings)
        self.port = None
        self._loop = None
        self._stopping = None
        self._stopped = False
        self._waiters: list[defer.Deferred] = []
        self._cut = False

    def privilegedStartService(self) -> None:
        if self._handed is None:
            bound = bind_sockets(self._interface, self._port_number, len(self.slots))
            each, how = [[skt] for skt in bound], "SO_REUSEPORT sockets"
        else:
            each, how = self._handed, "SO_REUSEPORT sockets handed over"
        for slot, sockets in zip(self.slots, each):
            slot.sockets = sockets
        if self._handback is not None:
            self._bind_handback(each[0])
        self.port = _Listening(each[0][0])
        for skt in each[0]:
            host, port = skt.getsockname()[:2]
            self._log.info(
                "TFTP supervisor listening on [{host}]:{port} with {count} workers ({how})",
                host=host,
                port=port,
                count=len(each),
                how=how,
            )
        super().privilegedStartService()

    def _bind_handback(self, listeners) -> None:
        """
        Bind a socket of the hand-back port for each worker, and steer both
        the listeners' groups (C{listeners}: one socket of each) and the
        hand-back port's by the same function of the client's address and
        port, so that what is handed back for a client reaches the worker
        that has its transfer.
        """
        host, port = self._handback
        count = len(self.slots)
        bound = bind_sockets(host, port, count)
        for slot, skt in zip(self.slots, bound):
            slot.handback = skt
        reuseport.attach(bound[0], reuseport.handback_program(count))
        for skt in listeners:
            reuseport.attach(skt, reuseport.listener_program(count))
        self._log.info(
            "Hand-back port [{host}]:{port} with {count} workers, each client's"
            " hand-backs steered to the worker its own datagrams reach",
            host=host,
            port=bound[0].getsockname()[1],
            count=count,
        )

    def startService(self) -> None:
        super().startService()
        for slot in self.slots:
            self._start(slot)
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = self._reactor
        self._loop.start(self._refresh_interval, now=False)

    # -- the face the operations plane reads -----------------------------------

    def serving(self) -> bool:
        """
        Whether any worker serves (none: the host is down).
        """
        return any(slot.serving for slot in self.slots)

    def checks(self) -> tuple:
        """
        The causes of degradation of the host's health: one per worker
        (L{tftpd_tx.host.worker_problem}).
        """
        return tuple(
            functools.partial(worker_problem, slot, self._reactor) for slot in self.slots
        )

    @property
    def cut(self) -> bool:
        """
        Whether a worker's graceful stop had to cut transfers.
        """
        return self._cut

    def when_stopped(self) -> defer.Deferred:
        """
        A Deferred that fires once every worker has stopped: at once if the
        service is not running, else at the end of its stop, begun or to
        come (the services that report on the host are stopped before it,
        and must outlive its drain).
        """
        if self._stopped or (self._stopping is None and not self.running):
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    # -- workers ---------------------------------------------------------------

    def _start(self, slot: WorkerSlot) -> None:
        slot.restart_call = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # The control channel on descriptor 3, the listeners from 4 on, then
        # the hand-back port's socket.
        given = {4 + number: skt.fileno() for number, skt in enumerate(slot.sockets)}
        argv = [
            self._python, "-m", "tftpd_tx.worker", "--index", str(slot.index),
            "--control-fd", "3", *(f"--socket-fd={fd}" for fd in given),
        ]  # fmt: skip
        if slot.handback is not None:
            argv.append(f"--handback-fd={4 + len(given)}")
            given[4 + len(given)] = slot.handback.fileno()
        argv += ["--", *self._command_line]
        process = WorkerProcess(
            slot.index, functools.partial(self._ended, slot), self._publisher
        )
        try:
            transport = self._reactor.spawnProcess(
                process, self._python, argv, env=self._environ,
                childFDs={0: "w", 1: "r", 2: "r", 3: theirs.fileno(), **given},
            )  # fmt: skip
        except OSError as failure:
            ours.close()
            self._log.error(
                "Worker {worker} cannot be started: {error}", worker=slot.index, error=failure
            )
            slot.started_at = self._reactor.seconds()
            self._schedule_restart(slot)
            return
        finally:
            theirs.close()
        transport.closeStdin()
        channel = _SupervisorChannel(functools.partial(self._ready, slot))
        control.adopt(self._reactor, ours, channel)
        slot.process, slot.channel, slot.pid = transport, channel, transport.pid
        slot.started_at = self._reactor.seconds()
        slot.state = "starting"
        self._log.info(
            "Worker {worker} started (pid {pid})", worker=slot.index, pid=transport.pid
        )

    def _ready(self, slot: WorkerSlot, pid: int) -> None:
        if self._stopping is not None or slot.pid != pid:
            return
        slot.state = "serving"
        slot.reported_at = self._reactor.seconds()
        self._log.info("Worker {worker} serving (pid {pid})", worker=slot.index, pid=pid)
        self.server.greet(slot)
        self._refresh(slot)

    def _ended(self, slot: WorkerSlot, reason) -> None:
        pid = slot.pid
        slot.ended()
        self.server.update()
        if self._stopping is not None:
            slot.state = "stopped"
            return
        ran = self._reactor.seconds() - slot.started_at
        self._log.error(
            "Worker {worker} (pid {pid}) ended ({how}) after {ran:.1f}s",
            worker=slot.index,
            pid=pid,
            how=_how(reason),
            ran=ran,
        )
        self._schedule_restart(slot)

    def _schedule_restart(self, slot: WorkerSlot) -> None:
        if self._reactor.seconds() - slot.started_at >= STABLE_AFTER:
            slot.ends_in_a_row = 0
        slot.ends_in_a_row += 1
        delay = restart_delay(slot.ends_in_a_row)
        slot.state = f"restarting in {delay:g}s"
        self._log.info(
            "Worker {worker} starts again in {delay:g}s ({count} ends in a row)",
            worker=slot.index,
            delay=delay,
            count=slot.ends_in_a_row,
        )
        slot.restart_call = self._reactor.callLater(delay, self._restart, slot)

    def _restart(self, slot: WorkerSlot) -> None:
        slot.restarts += 1
        self._start(slot)

    # -- reports ---------------------------------------------------------------

    def refresh(self) -> None:
        """
        Ask every serving worker for its report and its transfers (their
        answers reach L{server} as they come), and kill a worker that has
        not answered for L{UNRESPONSIVE_AFTER} seconds, serving or still
        starting: its reactor is stuck, and so are its clients.
        """
        now = self._reactor.seconds()
        for slot in self.slots:
            if slot.process is None:
                continue
            last = slot.started_at if slot.reported_at is None else slot.reported_at
            if now - last > UNRESPONSIVE_AFTER:
                self._log.error(
                    "Worker {worker} (pid {pid}) has not answered for {silent:.0f}s;"
                    " killing it",
                    worker=slot.index,
                    pid=slot.pid,
                    silent=now - last,
                )
                slot.process.signalProcess("KILL")
            elif slot.serving and not slot.refreshing:
                self._refresh(slot)

    def _refresh(self, slot: WorkerSlot) -> defer.Deferred:
        channel = slot.channel
        slot.refreshing = True
        found: dict = {"rows": []}

        def reported(answer):
            found["report"] = answer["report"]
            return channel.callRemote(control.Transfers, after=0).addCallback(paged)

        def paged(answer):
            found["rows"].extend(answer["rows"])
            if answer["more"] and answer["rows"]:
                after = answer["rows"][-1]["id"]
                return channel.callRemote(control.Transfers, after=after).addCallback(paged)
            if slot.channel is channel:
                slot.report, slot.rows = found["report"], found["rows"]
                slot.reported_at = self._reactor.seconds()
                self.server.update()
            return None

        def failed(failure):
            if not failure.check(error.ConnectionLost, error.ConnectionDone):
                self._log.failure("Worker {worker}'s report", failure, worker=slot.index)

        def done(result):
            slot.refreshing = False
            return result

        return (
            channel.callRemote(control.Report)
            .addCallback(reported)
            .addErrback(failed)
            .addBoth(done)
        )

    # -- stopping --------------------------------------------------------------

    def stopService(self):
        """
        Stop every worker gracefully (each drains and lets its transfers
        finish for up to the shutdown grace), kill those that take longer
        than the grace and L{STOP_MARGIN}, then close the sockets.  The
        Deferred returned (also L{when_stopped}) fires once all that is
        done.
        """
        super().stopService()
        if self._stopping is None:
            self._stopping = self._stop()
        return self._stopping

    def _stop(self) -> defer.Deferred:
        grace = self.server.settings.get("shutdown_grace")
        self.server.draining = True
        running = []
        for slot in self.slots:
            if slot.restart_call is not None and slot.restart_call.active():
                slot.restart_call.cancel()
            slot.restart_call = None
            if slot.process is not None:
                running.append(slot)
                self._ask_stop(slot, now=False)
            else:
                slot.state = "stopped"
        self._log.info(
            "Stopping {count} workers: each lets its transfers finish for up to {grace:g}s",
            count=len(running),
            grace=grace,
        )
        if self._stop_signals and running:
            self._install_signals()
        deadline = self._reactor.callLater(grace + STOP_MARGIN, self._kill_all, grace)
        waited = defer.gatherResults([slot.exited for slot in running])

        def stopped(_):
            if deadline.active():
                deadline.cancel()
            if self._loop is not None and self._loop.running:
                self._loop.stop()
            for slot in self.slots:
                for skt in [*slot.sockets, *filter(None, [slot.handback])]:
                    skt.close()
            self.port = None
            self._log.info(
                "Workers stopped{cut}", cut=" (transfers were cut)" if self._cut else ""
            )
            self._stopped = True
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

        return waited.addCallback(stopped)

    def _ask_stop(self, slot: WorkerSlot, now: bool) -> None:
        channel = slot.channel
        if channel is None:
            return

        def answered(answer):
            self._cut = self._cut or answer["cut"]
            channel.transport.loseConnection()

        channel.callRemote(control.Stop, now=now).addCallbacks(answered, lambda _: None)

    def _install_signals(self) -> None:
        def now(signum, frame):
            self._reactor.callFromThread(self._stop_now)

        for name in ("SIGTERM", "SIGINT"):
            signal.signal(getattr(signal, name), now)

    def _stop_now(self) -> None:
        self._log.info("Stopping every worker now: their transfers are cut")
        for slot in self.slots:
            self._ask_stop(slot, now=True)

    def _kill_all(self, grace: float) -> None:
        for slot in self.slots:
            if slot.process is not None:
                self._log.warn(
                    "Worker {worker} (pid {pid}) has not stopped {grace:g}s after it was"
                    " told to; killing it",
                    worker=slot.index,
                    pid=slot.pid,
                    grace=grace + STOP_MARGIN,
                )
                slot.process.signalProcess("KILL")


def host_service(options, settings, reactor) -> MultiService:
    """
    What C{twistd tftp --workers N} runs: the L{Supervisor} (named
    C{"tftp"}), and as for one process, the operations plane when C{--ops},
    C{--health-canary} or C{--disable-file} is given (its C{/metrics} with
    the workers' own metrics, L{WorkersCollector}; its C{/health} graded
    from every worker) and the manhole when C{--manhole} is, over the
    L{HostServer}.
    """
    top = MultiService()
    supervisor = Supervisor(
        worker_command_line(options), options["workers"], options["interface"],
        options["port"], settings, reactor, stop_signals=True,
        sockets=options["worker-sockets"], handback=options["handback"],
    )  # fmt: skip
    supervisor.setName("tftp")
    supervisor.setServiceParent(top)
    if any(options[name] is not None for name in ("ops", "health-canary", "disable-file")):
        from .ops import operations_services

        for service in operations_services(
            supervisor, reactor, endpoint=options["ops"], canary=options["health-canary"],
            disable_file=options["disable-file"], checks=supervisor.checks(),
            listening=supervisor.serving, collectors=[WorkersCollector(supervisor.slots)],
        ):  # fmt: skip
            service.setServiceParent(top)
    if options["manhole"] is not None:
        from .tap import manhole_from

        manhole_from(options, supervisor.server, reactor).setServiceParent(top)
    return top

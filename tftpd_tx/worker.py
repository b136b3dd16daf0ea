"""
One worker of C{twistd tftp --workers N}: the process that the supervisor
(L{tftpd_tx.workers}) starts as::

    python -m tftpd_tx.worker --index 2 --control-fd 3 --socket-fd 4 -- OPTIONS

with a bound listening socket on descriptor 4 (more with C{--socket-fd 5}
and so on: one per address under C{--systemd}), its socket of the
C{--handback} port after them (C{--handback-fd}), and its end of the control
channel on descriptor 3.  OPTIONS are C{twistd tftp}'s own, less those that
belong to the supervisor (L{tftpd_tx.workers.worker_command_line}): the
worker parses them as C{twistd tftp} does and makes the same service with
L{tftpd_tx.tap.makeService}, given the sockets to serve instead of a port to
bind (as one process is given those of C{--systemd}).

A worker follows its supervisor.  It answers the commands of
L{tftpd_tx.control} (L{WorkerControl}); it ignores a SIGTERM or SIGINT of
its own (its supervisor was sent one too, and tells it to stop), but while
it drains, a second one stops it at once, as for C{twistd tftp}; and it
stops, gracefully, when its control channel closes.  Its log events go to
its standard output as JSON lines (L{JSONEventLines}), which the
supervisor logs as its own, naming the worker.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import signal
import socket
import sys

from twisted.internet import defer
from twisted.logger import ILogObserver, Logger, eventAsJSON, formatEvent, globalLogBeginner
from twisted.protocols import amp
from twisted.python import usage
from zope.interface import implementer

from . import control
from .health import Health, ReactorLag
from .operator import Operator

__all__ = [
    "JSONEventLines",
    "Worker",
    "WorkerControl",
    "main",
    "transfer_page",
    "worker_report",
]

#: Flapping prefixes a worker reports at most.
FLAPS_REPORTED = 100


def _histogram(histogram) -> dict:
    return {"counts": list(histogram.counts), "sum": histogram.sum}


def worker_report(server, health: Health) -> dict:
    """
    What L{tftpd_tx.control.Report} answers for C{server}.
    """
    stats = server.stats
    grade = health.report()
    grade.pop("flapping", None)
    return {
        "counters": dict(stats.counters),
        "active": stats.active_sessions,
        "durations": _histogram(stats.durations),
        "first_packet": _histogram(stats.first_packet),
        "draining": server.draining,
        "caps": list(server.session_caps()),
        "health": grade,
        "flaps": server.flaps.flapping(FLAPS_REPORTED),
    }


def transfer_row(session_id: int, session) -> dict:
    """
    One row of L{tftpd_tx.control.Transfers}.
    """
    fields = {}
    for each in dataclasses.fields(session.stats):
        value = getattr(session.stats, each.name)
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        fields[each.name] = value
    return {
        "id": session_id,
        "peer": session.peer,
        "block": session.blocks_acknowledged,
        "stats": fields,
    }


def transfer_page(server, after: int, limit: int = control.PAGE_BYTES) -> tuple[list, bool]:
    """
    The rows of C{server}'s transfers with an id above C{after}, in order,
    as many as fit in C{limit} bytes of JSON, and whether more follow.
    """
    rows, size = [], 0
    for session_id in sorted(i for i in server.sessions if i > after):
        row = transfer_row(session_id, server.sessions[session_id])
        length = len(json.dumps(row, default=repr)) + 1
        if rows and size + length > limit:
            return rows, True
        rows.append(row)
        size += length
    return rows, False


class WorkerControl(amp.CommandLocator):
    """
    The worker's answers to its supervisor (L{tftpd_tx.control}).

    @param worker: the L{Worker}.
    """

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self._worker = worker
        self._server = worker.tftp.server

    @control.Report.responder
    def report(self):
        return {"report": worker_report(self._server, self._worker.health)}

    @control.Transfers.responder
    def transfers(self, after: int):
        rows, more = transfer_page(self._server, after)
        return {"rows": rows, "more": more}

    @control.Kill.responder
    def kill(self, session: int):
        return {"killed": self._worker.operator.kill(session) is not None}

    @control.Drain.responder
    def drain(self):
        self._server.drain()
        return {}

    @control.Resume.responder
    def resume(self):
        self._server.resume()
        return {}

    @control.ChangeSetting.responder
    def change_setting(self, name: str, value):
        self._server.settings.set(name, value)
        return {}

    @control.Stop.responder
    def stop(self, now: bool):
        return self._worker.stop(now).addCallback(lambda cut: {"cut": cut})


class _Channel(control.Channel):
    """
    The worker's end of the control channel.
    """

    def __init__(self, worker: Worker) -> None:
        super().__init__(locator=WorkerControl(worker))
        self._worker = worker

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self._worker.channel_lost()


class Worker:
    """
    The life of one worker process: serve with C{top} (the services of
    L{tftpd_tx.tap.makeService}, whose C{"tftp"} one listens), say
    L{tftpd_tx.control.Ready}, stop when told or when the supervisor goes.

    @param top: the worker's services.
    @param reactor: the reactor (C{IReactorTime}, C{IReactorSocket},
        C{IReactorCore}).
    @ivar tftp: the L{tftpd_tx.service.TFTPService}.
    @ivar health: the worker's own L{Health} (its reactor lag, caps,
        descriptors, listener), which its reports carry.
    @ivar operator: the L{Operator} of its server.
    """

    _log = Logger()

    def __init__(self, top, reactor) -> None:
        self._top = top
        self._reactor = reactor
        self.tftp = top.getServiceNamed("tftp")
        self._lag = ReactorLag(reactor)
        self.health = Health(
            self.tftp.server,
            listening=lambda: self.tftp.port is not None,
            lag=self._lag,
            cut=lambda: self.tftp.cut,
        )
        self.operator = Operator(self.tftp.server, reactor)
        self._channel = None
        self._stopping = None
        self._aborted = False
        #: What the process exits with: 1 if it could not start.
        self.exit_code = 0

    def run(self, channel_socket: socket.socket) -> None:
        """
        Start serving, with the control channel over C{channel_socket}.
        """
        for name in ("SIGTERM", "SIGINT"):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        self._channel = _Channel(self)
        control.adopt(self._reactor, channel_socket, self._channel)
        try:
            self._top.privilegedStartService()
            self._top.startService()
        except Exception:
            self._log.failure("The worker cannot serve")
            self.exit_code = 1
            self._reactor.stop()
            return
        self._lag.start()
        self._channel.callRemote(control.Ready, pid=os.getpid()).addErrback(lambda _: None)

    def stop(self, now: bool = False) -> defer.Deferred:
        """
        Stop serving, gracefully unless C{now}; the Deferred fires with
        whether transfers were cut, once the services have stopped.
        """
        if self._stopping is None:
            self._lag.stop()
            self._stopping = defer.maybeDeferred(self._top.stopService)
        if now and self.tftp.server.sessions:
            self._aborted = True
            self.tftp.server.stop()
        waiter = defer.Deferred()

        def stopped(result):
            waiter.callback(self.tftp.cut or self._aborted)
            return result

        self._stopping.addBoth(stopped)
        return waiter

    def channel_lost(self) -> None:
        """
        The supervisor has closed the channel (after a stop) or is gone:
        stop, then end the process.
        """
        self.stop().addBoth(lambda _: self._reactor.stop())


def _portable(value):
    """
    C{value} as JSON can hold it (a dataclass as its fields).
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_portable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _portable(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _portable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return repr(value)


@implementer(ILogObserver)
class JSONEventLines:
    """
    Write every log event to C{stream} as one line of Twisted's JSON event
    format (L{twisted.logger.eventAsJSON}), for the supervisor to log as its
    own: its text is formatted here (its format becomes that text), and its
    own fields are made plain JSON for the log observers that write them.
    """

    #: Fields that are objects of this process, of no use elsewhere.
    LEFT_OUT = frozenset({"log_logger", "log_source", "log_observer"})

    def __init__(self, stream) -> None:
        self._stream = stream

    def __call__(self, event: dict) -> None:
        record = {
            key: value if key.startswith("log_") else _portable(value)
            for key, value in event.items()
            if key not in self.LEFT_OUT
        }
        if record.get("log_format") is not None:
            text = formatEvent(event)
            record["log_format"] = text.replace("{", "{{").replace("}", "}}")
        failure = record.get("log_failure")
        if failure is not None:
            # The exception itself cannot travel; its message does.
            record["log_failure"] = failure = copy.copy(failure)
            failure.value = str(failure.value)
        self._stream.write(eventAsJSON(record) + "\n")
        self._stream.flush()


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tftpd_tx.worker",
        description="One worker of twistd tftp --workers N (started by its supervisor).",
    )
    parser.add_argument("--index", type=int, required=True, help="the worker's number, 1 to N")
    parser.add_argument("--control-fd", type=int, required=True, help="the control channel")
    parser.add_argument(
        "--socket-fd", type=int, action="append", required=True,
        help="a bound listener (once for each)",
    )  # fmt: skip
    parser.add_argument("--handback-fd", type=int, help="the bound --handback socket")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="-- twistd tftp options")
    arguments = parser.parse_args(argv)
    if arguments.options[:1] == ["--"]:
        arguments.options = arguments.options[1:]
    return arguments


def main(argv: list[str] | None = None) -> None:
    """
    Run one worker (see the module's docstring).
    """
    arguments = _arguments(sys.argv[1:] if argv is None else argv)
    globalLogBeginner.beginLoggingTo([JSONEventLines(sys.stdout)], redirectStandardIO=False)
    log = Logger(namespace="tftpd_tx.worker")
    from twisted.internet import reactor

    from . import tap

    options = tap.Options()
    if arguments.handback_fd is not None:
        options["handback-socket"] = socket.socket(fileno=arguments.handback_fd)
    try:
        options.parseOptions(arguments.options)
    except usage.UsageError as error:
        log.critical("Worker {worker} cannot start: {error}", worker=arguments.index, error=error)
        sys.exit(2)
    # Serve the sockets given, not --port (0 here: see worker_command_line).
    options["sockets"] = [socket.socket(fileno=fd) for fd in arguments.socket_fd]
    top = tap.makeService(options)
    worker = Worker(top, reactor)
    reactor.callWhenRunning(worker.run, socket.socket(fileno=arguments.control_fd))
    reactor.run()
    sys.exit(worker.exit_code)


if __name__ == "__main__":
    main()

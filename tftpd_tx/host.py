"""
The host's face over its workers (C{twistd tftp --workers N}): the N worker
processes seen as the one L{tftpd_tx.server.TFTPServer} that the operator
core (L{tftpd_tx.operator}), the health grade (L{tftpd_tx.health}) and the
metrics (L{tftpd_tx.metrics}) already know how to read.

L{HostServer} has what those read of a server: C{stats} (the sum of every
worker's L{tftpd_tx.stats.ServerStats}), C{sessions} (every worker's
transfers, by L{TransferId} such as C{2:17}), C{settings}, C{draining},
C{drain()}, C{resume()}, C{flaps}, C{session_caps()} and
C{descriptor_limit}.  Its figures are the workers' last reports (the
supervisor asks for them every second, L{tftpd_tx.workers}); its controls
go to the workers over their control channels (L{tftpd_tx.control}).

What a worker counted stays counted after it ends: its last report is kept
as the slot's C{retired} L{Totals}, so that the host's counters only ever
go up, as Prometheus expects of a counter (what a worker counted after its
last report, a second at most, is lost with it).
"""

from __future__ import annotations

import collections
import resource
from collections.abc import Mapping
from typing import Any, NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from . import control
from .content import Request
from .health import DEGRADED, DOWN
from .stats import Histogram, ServerStats, SessionStats

__all__ = [
    "HostServer",
    "HostSessions",
    "HostSettings",
    "IWorkerSlot",
    "RemoteTransfer",
    "Totals",
    "TransferId",
    "WorkersCollector",
    "worker_problem",
]

#: Seconds without an answer to the supervisor's reports after which a
#: serving worker is said not to answer (the host is then degraded).
STALE_AFTER = 5.0


class IWorkerSlot(Interface):
    """
    One of the host's workers, as the host's face reads it: a place that a
    worker process serves from (see L{tftpd_tx.workers.WorkerSlot}).
    """

    index = Attribute("Its number, 1 to N: the worker in a TransferId.")
    serving = Attribute("Whether a worker process serves here now.")
    state = Attribute("What it is doing, for an operator: 'serving', 'restarting in 0.5s', ...")
    restarts = Attribute("How many times a worker was started here again after one ended.")
    report = Attribute("Its worker's last control.Report, or None.")
    reported_at = Attribute(
        "When its worker last answered (the clock's seconds): its last report, or its"
        " Ready; None while none serves."
    )
    rows = Attribute("Its worker's live transfers at that report (control.Transfers rows).")
    retired = Attribute("The Totals of the workers that served here before and ended.")

    def send(command, **arguments):
        """
        Send a control command to the worker serving here, if one does,
        without waiting for the answer.
        """


class Totals:
    """
    Counters and histograms added up from workers' reports.

    @ivar counters: by name, as L{ServerStats} has them.
    @ivar histograms: C{(counts, sum)} of each histogram of L{ServerStats},
        by attribute name.
    """

    #: The histograms of L{ServerStats} that a report carries.
    HISTOGRAMS = ("durations", "first_packet")

    def __init__(self) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        self.histograms: dict[str, tuple[list[int], float]] = {
            name: ([], 0.0) for name in self.HISTOGRAMS
        }

    def add(self, report: dict | None) -> None:
        """
        Add one worker's report (a L{tftpd_tx.control.Report}), if any.
        """
        if report is None:
            return
        self.counters.update(report["counters"])
        for name in self.HISTOGRAMS:
            self._add_histogram(name, report[name]["counts"], report[name]["sum"])

    def add_totals(self, other: Totals) -> None:
        """
        Add other totals.
        """
        self.counters.update(other.counters)
        for name, (counts, total) in other.histograms.items():
            self._add_histogram(name, counts, total)

    def _add_histogram(self, name: str, counts: list[int], total: float) -> None:
        mine, mine_total = self.histograms[name]
        if counts:
            mine = [a + b for a, b in zip(mine, counts)] if mine else list(counts)
        self.histograms[name] = (mine, mine_total + total)

    def into(self, stats: ServerStats) -> None:
        """
        Make C{stats} hold these figures, in place (the manhole's prompt and
        the metrics collector hold on to the object).
        """
        stats.counters.clear()
        stats.counters.update(self.counters)
        for name in self.HISTOGRAMS:
            histogram: Histogram = getattr(stats, name)
            counts, total = self.histograms[name]
            histogram.counts = list(counts) or [0] * (len(histogram.bounds) + 1)
            histogram.count = sum(histogram.counts)
            histogram.sum = total


class TransferId(NamedTuple):
    """
    A transfer of the host: the worker that runs it and its session id
    there, written C{2:17}.
    """

    worker: int
    session: int

    def __str__(self) -> str:
        return f"{self.worker}:{self.session}"

    @classmethod
    def parse(cls, value) -> TransferId | None:
        """
        C{"2:17"}, C{(2, 17)} or a L{TransferId} as one; L{None} for
        anything else (a bare session id says no worker).
        """
        if isinstance(value, str):
            worker, colon, session = value.partition(":")
            if not colon:
                return None
            try:
                return cls(int(worker), int(session))
            except ValueError:
                return None
        if isinstance(value, tuple) and len(value) == 2:
            try:
                return cls(int(value[0]), int(value[1]))
            except (TypeError, ValueError):
                return None
        return None


def _address(value) -> tuple | None:
    return tuple(value) if isinstance(value, list) else value


def session_stats(fields: dict[str, Any]) -> SessionStats:
    """
    The L{SessionStats} a worker's transfer row describes (addresses back
    to tuples, the request back to a L{Request}).
    """
    fields = dict(fields)
    for name in ("peer", "server_addr", "local_addr"):
        fields[name] = _address(fields.get(name))
    request = fields.get("request")
    if isinstance(request, dict):
        fields["request"] = Request(
            **{**request, "peer": _address(request["peer"]), "local": _address(request["local"])}
        )
    return SessionStats(**fields)


class RemoteTransfer:
    """
    A transfer that runs in a worker, as the supervisor last saw it: what
    L{tftpd_tx.operator.Operator} reads of a session (C{peer}, C{stats},
    C{blocks_acknowledged}) and C{abort}.
    """

    def __init__(self, transfer_id: TransferId, row: dict, abort) -> None:
        self.session_id = transfer_id
        self.peer = _address(row["peer"])
        self.blocks_acknowledged = row["block"]
        self.stats = session_stats(row["stats"])
        self._abort = abort

    def abort(self, message: str) -> None:
        """
        End it in its worker as the operator's C{kill} does there (the
        client gets ERROR 0 L{tftpd_tx.operator.KILL_MESSAGE}, whatever
        C{message}; the worker counts it as C{sessions.killed}).
        """
        self._abort(self.session_id)


class HostSessions(Mapping):
    """
    Every worker's live transfers by L{TransferId}, as of their last
    reports.  A key may also be given as C{"2:17"} or C{(2, 17)}.
    """

    def __init__(self, abort) -> None:
        self._rows: dict[TransferId, dict] = {}
        self._abort = abort

    def replace(self, rows: dict[TransferId, dict]) -> None:
        self._rows = rows

    def forget(self, transfer_id: TransferId) -> None:
        self._rows.pop(transfer_id, None)

    def __getitem__(self, key) -> RemoteTransfer:
        transfer_id = TransferId.parse(key)
        if transfer_id is None or transfer_id not in self._rows:
            raise KeyError(key)
        return RemoteTransfer(transfer_id, self._rows[transfer_id], self._abort)

    def __iter__(self):
        return iter(sorted(self._rows))

    def __len__(self) -> int:
        return len(self._rows)


class HostSettings:
    """
    The settings of every worker: read here; a change is checked here, then
    sent to each worker, and to every worker started later.

    @param settings: the host's L{tftpd_tx.settings.Settings} (those of
        the command line, which each worker parses too).
    @param send: called with C{(name, value)} to tell the workers.
    @ivar changed: what was changed since the command line, by name.
    """

    def __init__(self, settings, send) -> None:
        self._settings = settings
        self._send = send
        self.changed: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        return self._settings.get(name)

    def set(self, name: str, value: Any) -> Any:
        new = self._settings.set(name, value)
        self.changed[name] = new
        self._send(name, new)
        return new

    def as_dict(self) -> dict[str, Any]:
        return self._settings.as_dict()


class HostFlaps:
    """
    The client prefixes that flap on any worker, their counts added up.
    """

    def __init__(self, slots) -> None:
        self._slots = slots

    def flapping(self, most: int = 10) -> list[dict]:
        """
        As L{tftpd_tx.flaps.FlapTable.flapping}, over every worker (each
        worker counts what reaches it).
        """
        merged: dict[str, dict] = {}
        for slot in self._slots:
            for row in (slot.report or {}).get("flaps", ()):
                prefix = row["prefix"]
                into = merged.setdefault(prefix, {"prefix": prefix, "abandoned": 0, "strays": 0})
                into["abandoned"] += row["abandoned"]
                into["strays"] += row["strays"]
        found = sorted(
            merged.values(), key=lambda row: row["abandoned"] + row["strays"], reverse=True
        )
        return found[:most]


class HostServer:
    """
    The workers of one host as one server (see the module's docstring).

    @param slots: the L{IWorkerSlot}s, in order of index.
    @param settings: the host's L{tftpd_tx.settings.Settings}.
    @ivar stats: a L{ServerStats} holding the sum of the workers' figures
        (made again by L{update}, in place).
    @ivar sessions: the L{HostSessions}.
    @ivar settings: the L{HostSettings}.
    @ivar draining: whether the host ignores new requests.
    """

    _log = Logger()

    def __init__(self, slots, settings) -> None:
        self._slots = slots
        self.stats = ServerStats()
        self.sessions = HostSessions(self._kill)
        self.settings = HostSettings(settings, self._send_setting)
        self.flaps = HostFlaps(slots)
        self.draining = False
        self.descriptor_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    def update(self) -> None:
        """
        Read the workers' last reports again.
        """
        totals = Totals()
        rows: dict[TransferId, dict] = {}
        active = 0
        for slot in self._slots:
            totals.add_totals(slot.retired)
            totals.add(slot.report)
            if slot.report is not None:
                active += slot.report["active"]
            for row in slot.rows:
                rows[TransferId(slot.index, row["id"])] = row
        totals.into(self.stats)
        self.stats.active_sessions = active
        self.sessions.replace(rows)

    def session_caps(self) -> tuple[int, int]:
        """
        The host's caps: the workers' own added up, and the largest cap per
        client (each worker applies its caps to what it serves; one client
        address with many ports can reach several workers).  Before any
        worker has reported: one and one.
        """
        caps = [slot.report["caps"] for slot in self._slots if slot.report is not None]
        if not caps:
            return 1, 1
        return sum(total for total, _ in caps), max(per_client for _, per_client in caps)

    def drain(self) -> None:
        """
        Ignore new requests on every worker (and on those started later).
        """
        if not self.draining:
            self.draining = True
            self._log.info(
                "Draining every worker: new requests are ignored, {count} transfers in flight",
                count=len(self.sessions),
            )
        self._send_all(control.Drain)

    def resume(self) -> None:
        """
        Accept new requests again on every worker.
        """
        if self.draining:
            self.draining = False
            self._log.info("Resumed every worker: accepting new requests")
        self._send_all(control.Resume)

    def greet(self, slot) -> None:
        """
        Bring a worker that has just started up to date: draining if the
        host is, with the settings changed since the command line.
        """
        if self.draining:
            slot.send(control.Drain)
        for name, value in self.settings.changed.items():
            slot.send(control.ChangeSetting, name=name, value=value)

    def _send_all(self, command, **arguments) -> None:
        for slot in self._slots:
            slot.send(command, **arguments)

    def _send_setting(self, name: str, value) -> None:
        self._send_all(control.ChangeSetting, name=name, value=value)

    def _kill(self, transfer_id: TransferId) -> None:
        for slot in self._slots:
            if slot.index == transfer_id.worker:
                slot.send(control.Kill, session=transfer_id.session)
        self.sessions.forget(transfer_id)


def worker_problem(slot, clock) -> str | None:
    """
    What is wrong with one worker, for the host's health (each is a cause
    of degradation; no worker serving at all makes the host down), or
    L{None}.
    """
    if not slot.serving:
        return f"worker {slot.index} down ({slot.state})"
    silent = clock.seconds() - slot.reported_at
    if silent > STALE_AFTER:
        return f"worker {slot.index} not answering for {silent:.0f}s"
    if slot.report is None:
        return None
    health = slot.report["health"]
    if health["state"] in (DEGRADED, DOWN):
        reasons = [reason for reason in health["reasons"] if reason != "draining"]
        return f"worker {slot.index} {health['state']}: {'; '.join(reasons)}"
    return None


class WorkersCollector:
    """
    The workers' own metrics: how many there are, and for each whether it
    serves and how many times it was restarted (the one per-worker label:
    the transfers' figures are the host's sums).
    """

    def __init__(self, slots) -> None:
        self._slots = slots

    def collect(self):
        yield GaugeMetricFamily(
            "tftpd_workers", "Worker processes the host runs.", value=len(self._slots)
        )
        up = GaugeMetricFamily("tftpd_worker_up", "1 while the worker serves.", labels=["worker"])
        restarts = CounterMetricFamily(
            "tftpd_worker_restarts",
            "Times a worker was started again after it ended.",
            labels=["worker"],
        )
        for slot in self._slots:
            up.add_metric([str(slot.index)], int(slot.serving))
            restarts.add_metric([str(slot.index)], slot.restarts)
        yield up
        yield restarts

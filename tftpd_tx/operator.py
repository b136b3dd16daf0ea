"""
The operator's controls of a running server, apart from any way of reaching
them.

L{Operator} answers in data: lists and dictionaries of plain values (numbers,
strings, tuples, L{None}), which an HTTP endpoint can send as JSON.  The
C{format_*} functions turn that data into the text an operator reads, and
L{OperatorNamespace} puts both at a Python prompt (C{ls()}, C{show(id)},
C{kill(id)}, C{counters()}, C{drain()}, C{resume()}, C{settings}, C{help()}),
which the SSH manhole of L{tftpd_tx.manhole} serves::

    operator = Operator(server, reactor)
    operator.transfers()        # [{"id": 1, "peer": ("192.0.2.7", 3000), ...}]
    operator.kill(1)            # what the transfer was, or None
    print(format_transfers(operator.status(), operator.transfers()))

Everything here reads the server through its public attributes
(C{server.sessions}, C{server.stats}, C{server.settings}, C{server.draining},
C{server.drain()}, C{server.resume()}; each session's C{peer}, C{stats},
C{blocks_acknowledged} and C{abort()}), and nothing waits: it is in-memory
state, read and changed in the reactor thread.
"""

from __future__ import annotations

import dataclasses
import pydoc
from typing import Any

from twisted.logger import Logger

from .settings import SCHEMA, setting

__all__ = [
    "KILL_MESSAGE",
    "LiveSettings",
    "Operator",
    "OperatorNamespace",
    "address_text",
    "format_counters",
    "format_flaps",
    "format_kill",
    "format_settings",
    "format_status",
    "format_transfer",
    "format_transfers",
    "make_namespace",
]

#: What the client of a transfer ended with L{Operator.kill} reads.
KILL_MESSAGE = "terminated by operator"

_log = Logger()


class Operator:
    """
    The operator's controls of one L{tftpd_tx.server.TFTPServer}, as data.

    @param server: the L{tftpd_tx.server.TFTPServer}.
    @param clock: the C{IReactorTime} its transfers run on (for ages).
    """

    def __init__(self, server, clock) -> None:
        self.server = server
        self.clock = clock

    def status(self) -> dict[str, Any]:
        """
        Whether the server takes new requests, and how many transfers run.

        @return: C{{"draining": bool, "transfers": int}}.
        """
        return {
            "draining": self.server.draining,
            "transfers": len(self.server.sessions),
        }

    def transfers(self) -> list[dict[str, Any]]:
        """
        The live transfers, by id.

        @return: one dictionary per transfer, with C{id} (the session id),
            C{peer} and C{local} (the client's and the transfer port's
            C{(host, port)}), C{path}, C{block} (blocks acknowledged),
            C{blksize}, C{window}, C{sent} and C{total} (bytes; C{total} is
            L{None} when the size is not known), C{retransmits}, C{age}
            (seconds since the request) and C{since_last_ack} (seconds, or
            L{None} before the first ACK).
        """
        now = self.clock.seconds()
        return [
            self._summary(session_id, session, now)
            for session_id, session in sorted(self.server.sessions.items())
        ]

    def transfer(self, session_id: int) -> dict[str, Any] | None:
        """
        Everything about one live transfer, or L{None} if there is none with
        that id.

        @return: what L{transfers} gives for it, and C{stats}, every field
            of its L{tftpd_tx.stats.SessionStats} by name (its C{request} as
            a dictionary, then C{duration} and C{handler_latency}), and
            C{now}, the clock reading the ages were computed at (the C{*_time}
            fields are readings of the same clock).
        """
        session = self.server.sessions.get(session_id)
        if session is None:
            return None
        now = self.clock.seconds()
        stats = session.stats
        fields = {}
        for each in dataclasses.fields(stats):
            value = getattr(stats, each.name)
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            fields[each.name] = value
        fields["duration"] = stats.duration
        fields["handler_latency"] = stats.handler_latency
        return {**self._summary(session_id, session, now), "stats": fields, "now": now}

    def _summary(self, session_id: int, session, now: float) -> dict[str, Any]:
        stats = session.stats
        last_ack = stats.last_ack_time
        return {
            "id": session_id,
            "peer": session.peer,
            "local": stats.local_addr or stats.server_addr,
            "path": stats.file_path,
            "block": session.blocks_acknowledged,
            "blksize": stats.blksize,
            "window": stats.windowsize,
            "sent": stats.bytes_sent,
            "total": stats.size,
            "retransmits": stats.retransmits,
            "age": now - stats.start_time,
            "since_last_ack": None if last_ack is None else now - last_ack,
            "srtt": stats.srtt,
            "rto": stats.rto,
        }

    def kill(self, session_id: int) -> dict[str, Any] | None:
        """
        End a live transfer: its client gets ERROR 0 L{KILL_MESSAGE}, and it
        is counted as C{sessions.killed} and logged.

        @return: what L{transfers} said of it just before, or L{None} (and
            nothing done) if there is no live transfer with that id.
        """
        session = self.server.sessions.get(session_id)
        if session is None:
            return None
        killed = self._summary(session_id, session, self.clock.seconds())
        session.abort(KILL_MESSAGE)
        self.server.stats.increment("sessions.killed")
        _log.info(
            "Operator killed transfer {session_id}: {path!r} to {peer}",
            session_id=session_id,
            path=killed["path"],
            peer=session.peer,
        )
        return killed

    def counters(self) -> dict[str, int]:
        """
        The server counters, sorted by name; reading them resets nothing.
        """
        return dict(sorted(self.server.stats.counters.items()))

    def drain(self) -> dict[str, Any]:
        """
        Ignore new requests, so that clients retry elsewhere, while the
        running transfers finish.

        @return: the L{status} after.
        """
        self.server.drain()
        return self.status()

    def resume(self) -> dict[str, Any]:
        """
        Accept new requests again after L{drain}.

        @return: the L{status} after.
        """
        self.server.resume()
        return self.status()

    def flaps(self) -> list[dict[str, Any]]:
        """
        The client prefixes whose transfers are abandoned or whose datagrams
        stray here often enough to look like a path that moves between
        servers: C{[{"prefix": "192.0.2.0/24", "abandoned": 3, "strays":
        0}, ...]}, most first (see L{tftpd_tx.flaps}).
        """
        return self.server.flaps.flapping()

    def settings(self) -> dict[str, Any]:
        """
        Every setting by name (see L{tftpd_tx.settings.SCHEMA}), limits
        included.
        """
        return self.server.settings.as_dict()

    def change_setting(self, name: str, value: Any) -> dict[str, Any]:
        """
        Change a setting for the transfers that start afterwards; running
        ones keep theirs.  A bad value changes nothing.  The change is
        logged.

        @return: C{{"setting": name, "old": value, "new": value}}.
        @raise KeyError: there is no such setting.
        @raise TypeError: C{value} is not of the setting's type.
        @raise ValueError: C{value} is out of the setting's bounds.
        """
        settings = self.server.settings
        old = settings.get(name)
        new = settings.set(name, value)
        _log.info(
            "Operator changed {setting} from {old} to {new}; new transfers use it",
            setting=name,
            old=old,
            new=new,
        )
        return {"setting": name, "old": old, "new": new}


# -- text ------------------------------------------------------------------


def address_text(address) -> str:
    """
    C{HOST:PORT} of a C{(host, port, ...)} address, the host in brackets
    when it is IPv6; C{-} for none.
    """
    if not address:
        return "-"
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _size(value: int | None) -> str:
    if value is None:
        return "?"
    for unit in ("", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value}" if not unit else f"{value:.1f}{unit}"
        value /= 1024
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in [header, *rows]
    )


def _no_transfer(session_id) -> str:
    return f"No live transfer {session_id!r}; ls() lists them"


def format_status(status: dict[str, Any]) -> str:
    """
    One line from L{Operator.status}: C{serving: 2 transfer(s) in flight}.
    """
    count = status["transfers"]
    if status["draining"]:
        return (
            f"DRAINING: new requests are ignored; {count} transfer(s) in "
            "flight; resume() to accept again"
        )
    return f"serving: {count} transfer(s) in flight"


def format_transfers(status: dict[str, Any], transfers: list[dict[str, Any]]) -> str:
    """
    The status line, then a table of the transfers (L{Operator.transfers}),
    one row each.
    """
    rows = []
    for transfer in transfers:
        sent, total = transfer["sent"], transfer["total"]
        progress = f"{_size(sent)}/{_size(total)}"
        if total:
            progress += f" {100 * sent // total}%"
        rows.append(
            [
                str(transfer["id"]),
                address_text(transfer["peer"]),
                address_text(transfer["local"]),
                transfer["path"],
                str(transfer["block"]),
                str(transfer["blksize"]),
                str(transfer["window"]),
                progress,
                str(transfer["retransmits"]),
                _seconds(transfer["age"]),
                _seconds(transfer["since_last_ack"]),
            ]
        )
    header = [
        "ID", "PEER", "LOCAL", "PATH", "BLOCK", "BLKSIZE", "WINDOW",
        "SENT/TOTAL", "RETX", "AGE", "LAST-ACK",
    ]  # fmt: skip
    text = format_status(status)
    if rows:
        text += "\n" + _table(header, rows)
    return text


def format_transfer(session_id: int, transfer: dict[str, Any] | None) -> str:
    """
    What L{Operator.transfer} said of C{session_id}: its progress, then
    every field of its stats, one a line.
    """
    if transfer is None:
        return _no_transfer(session_id)
    since = transfer["since_last_ack"]
    lines = [
        f"transfer {session_id}: {transfer['path']!r} to {address_text(transfer['peer'])}",
        f"  age {_seconds(transfer['age'])}, "
        f"{transfer['block']} block(s) acknowledged, last ACK "
        + ("none yet" if since is None else f"{_seconds(since)} ago"),
        "  SessionStats:",
    ]
    fields = transfer["stats"]
    width = max(map(len, fields))
    for name, value in fields.items():
        shown = repr(value)
        if name.endswith("_time") and value is not None:
            shown += f" ({_seconds(transfer['now'] - value)} ago)"
        lines.append(f"    {name:<{width}}  {shown}")
    return "\n".join(lines)


def format_kill(session_id: int, killed: dict[str, Any] | None) -> str:
    """
    What L{Operator.kill} of C{session_id} did.
    """
    if killed is None:
        return _no_transfer(session_id)
    return (
        f"Killed transfer {session_id}: {killed['path']!r} to "
        f"{address_text(killed['peer'])} ({killed['sent']} bytes sent)"
    )


def format_counters(counters: dict[str, int]) -> str:
    """
    The counters (L{Operator.counters}) as an aligned table.
    """
    if not counters:
        return "(no counters yet)"
    width = max(map(len, counters))
    return "\n".join(f"{name:<{width}}  {value}" for name, value in counters.items())


def format_flaps(flaps: list[dict[str, Any]]) -> str:
    """
    The flapping prefixes as a table, or a line saying there are none.
    """
    if not flaps:
        return "No client prefix flaps"
    rows = [[row["prefix"], str(row["abandoned"]), str(row["strays"])] for row in flaps]
    return _table(["PREFIX", "ABANDONED", "STRAYS"], rows)


def format_settings(settings: dict[str, Any]) -> str:
    """
    The settings (L{Operator.settings}), one a line.
    """
    return "\n".join(f"{name:<16} {value}" for name, value in settings.items())


# -- the prompt ------------------------------------------------------------


class _Text(str):
    """
    Text that a Python prompt shows as it is (not as a quoted string).
    """

    def __repr__(self) -> str:
        return str(self)


class _Counters(dict):
    """
    The server counters: a dictionary, shown as an aligned table.
    """

    def __repr__(self) -> str:
        return format_counters(self)


class LiveSettings:
    """
    The server's settings as attributes, for a prompt:
    C{settings.max_blksize = 1428} changes it with
    L{Operator.change_setting}.  A misspelt name raises L{AttributeError}
    (rather than making an attribute nobody reads); a bad value raises and
    changes nothing.
    """

    __slots__ = ("_operator",)

    def __init__(self, operator: Operator) -> None:
        object.__setattr__(self, "_operator", operator)

    def __dir__(self):
        return [row.name for row in SCHEMA]

    def __getattr__(self, name: str):
        try:
            return self._operator.server.settings.get(name)
        except KeyError as error:
            raise AttributeError(error.args[0]) from None

    def __setattr__(self, name: str, value) -> None:
        try:
            setting(name)
        except KeyError as error:
            raise AttributeError(error.args[0]) from None
        self._operator.change_setting(name, value)

    def __repr__(self) -> str:
        return format_settings(self._operator.settings())


class OperatorNamespace:
    """
    The helpers of an operator's Python prompt, for one
    L{tftpd_tx.server.TFTPServer}: each returns text (or a dictionary) that
    the prompt shows as a table.  L{as_dict} makes the namespace.

    @ivar operator: the L{Operator} they use.
    @ivar settings: the L{LiveSettings}.
    """

    def __init__(self, operator: Operator) -> None:
        self.operator = operator
        self.settings = LiveSettings(operator)

    def as_dict(self) -> dict:
        """
        A fresh namespace: the live objects and the helpers.
        """
        server = self.operator.server
        return {
            "server": server,
            "stats": server.stats,
            "sessions": server.sessions,
            "settings": self.settings,
            "ls": self.ls,
            "show": self.show,
            "kill": self.kill,
            "counters": self.counters,
            "drain": self.drain,
            "resume": self.resume,
            "flaps": self.flaps,
            "help": self.help,
        }

    def ls(self) -> _Text:
        """List the live transfers and whether the server is draining."""
        operator = self.operator
        return _Text(format_transfers(operator.status(), operator.transfers()))

    def show(self, session_id: int) -> _Text:
        """Everything about one live transfer, its SessionStats included."""
        return _Text(format_transfer(session_id, self.operator.transfer(session_id)))

    def kill(self, session_id: int) -> _Text:
        """End a transfer: its client gets ERROR 0 'terminated by operator'."""
        return _Text(format_kill(session_id, self.operator.kill(session_id)))

    def counters(self) -> _Counters:
        """The server counters, by name (a dict; not reset)."""
        return _Counters(self.operator.counters())

    def drain(self) -> _Text:
        """Ignore new requests (clients retry elsewhere); running ones finish."""
        return _Text(format_status(self.operator.drain()))

    def resume(self) -> _Text:
        """Accept new requests again after drain()."""
        return _Text(format_status(self.operator.resume()))

    def flaps(self) -> _Text:
        """Client prefixes whose path seems to move between servers."""
        return _Text(format_flaps(self.operator.flaps()))

    def help(self, thing=None) -> _Text:
        """This list; help(thing) shows the documentation of thing."""
        if thing is not None:
            return _Text(pydoc.render_doc(thing, renderer=pydoc.plaintext))
        helpers = [self.ls, self.show, self.kill, self.counters, self.drain,
                   self.resume, self.flaps, self.help]  # fmt: skip
        calls = {
            "show": "show(id)",
            "kill": "kill(id)",
            "help": "help(thing)",
        }
        lines = ["Helpers:"]
        for helper in helpers:
            name = helper.__name__
            lines.append(f"  {calls.get(name, name + '()'):<12} {_first_line(helper)}")
        lines += [
            "Objects:",
            "  server       the TFTPServer",
            "  stats        its ServerStats (counters, active_sessions)",
            "  sessions     the live transfers (ReadSession), by id",
            "  settings     live settings, for new transfers: settings.timeout = 2",
            "               " + ", ".join(row.name for row in SCHEMA),
        ]
        return _Text("\n".join(lines))


def _first_line(function) -> str:
    """
    The first line of C{function}'s docstring: what C{help()} lists.
    """
    return (function.__doc__ or "").strip().splitlines()[0]


def make_namespace(server, clock) -> dict:
    """
    A fresh prompt namespace for C{server}; C{clock} is the C{IReactorTime}
    its transfers run on.
    """
    return OperatorNamespace(Operator(server, clock)).as_dict()

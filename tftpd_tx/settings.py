"""
The server's tunables, described once.

L{SCHEMA} has one L{Setting} row per tunable: its name, type, default,
bounds, the line C{--help} shows, and whether it is one of the L{Limits}
(what clients may negotiate) or a field of L{Settings} itself.  Everything
else is made from it:

  - the fields of L{Limits} and L{Settings}, which check every value with
    L{Setting.check} when they are built or changed in code;
  - the options of C{twistd tftp} (L{tftpd_tx.tap}), which parse with
    L{Setting.parse}: the same check, with the option's name in the message;
  - the live settings of the operator's prompt (L{tftpd_tx.operator}), which
    change them with L{Settings.set}.

Adding a setting is adding a row; the code that acts on it reads it from
C{server.settings}.  This module imports nothing of the rest of the
package, so any module may import it.
"""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = [
    "MIN_BLKSIZE",
    "MAX_BLKSIZE",
    "MAX_WINDOWSIZE",
    "SCHEMA",
    "Setting",
    "Limits",
    "Settings",
    "setting",
]

#: RFC 2348's bounds on the blksize option, and so on the largest block
#: size a server may grant.
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464
#: RFC 7440's bound on the windowsize option.
MAX_WINDOWSIZE = 65535


class _Same:
    """
    The command-line default of a L{Setting} whose C{twistd tftp} default is
    its default in code.
    """

    def __repr__(self) -> str:
        return "SAME"


_SAME = _Same()


@dataclass(frozen=True)
class Setting:
    """
    One tunable: a row of L{SCHEMA}.

    @ivar name: the attribute name (C{max_blksize}); the command-line option
        is the same with dashes (L{option}).
    @ivar kind: L{int}, L{float} or L{bool}.  A L{float} setting also takes
        integers; an L{int} one takes integers only (never L{bool}); a
        L{bool} one takes L{True} or L{False} (on the command line, a flag).
    @ivar default: the value in C{Settings()} built in code.
    @ivar help: the line C{twistd tftp --help} shows.
    @ivar low: the smallest value allowed, or L{None} for no lower bound.
    @ivar high: the largest value allowed, or L{None} for no upper bound.
    @ivar limit: whether the setting is one of the L{Limits} (what clients
        may negotiate) rather than a field of L{Settings}.
    @ivar cli_default: the default of C{twistd tftp} when it differs from
        C{default} (a cost an embedding application should not pay unasked,
        say); see L{command_line_default}.
    @ivar short: the one-letter command-line option, if any.
    @ivar none: what L{None} means for this setting (C{"derived from the
        descriptor limit at start"}), for a setting that may be L{None}; else
        L{None}, and L{None} is refused.
    """

    name: str
    kind: type
    default: Any
    help: str
    _: dataclasses.KW_ONLY
    low: Any = None
    high: Any = None
    limit: bool = False
    cli_default: Any = _SAME
    short: str | None = None
    none: str | None = None

    @property
    def option(self) -> str:
        """
        The command-line option's long name, without dashes (C{max-blksize}).
        """
        return self.name.replace("_", "-")

    @property
    def command_line_default(self) -> Any:
        """
        The value C{twistd tftp} runs with when the option is not given.
        """
        return self.default if self.cli_default is _SAME else self.cli_default

    @property
    def allowed(self) -> str:
        """
        The allowed values in words: C{"from 8 to 65464"}, C{"1 or more"}.
        """
        if self.kind is bool:
            return "True or False"
        if self.low is not None and self.high is not None:
            text = f"from {self.low} to {self.high}"
        elif self.low is not None:
            text = f"{self.low} or more"
        elif self.high is not None:
            text = f"{self.high} or less"
        else:
            text = "any number"
        if self.none is not None:
            text += f", or None ({self.none})"
        return text

    @property
    def allowed_doc(self) -> str:
        """
        L{allowed} as a sentence, for documentation: C{"From 8 to 65464."}
        """
        return self.allowed[0].upper() + self.allowed[1:] + "."

    @property
    def _noun(self) -> str:
        if self.kind is bool:
            return "a truth value,"
        return "a whole number" if self.kind is int else "a number"

    def check(self, value: Any, label: str | None = None) -> Any:
        """
        The one check of a value of this setting, wherever it comes from.

        @param value: the value to check.
        @param label: how the message names the setting: its name by
            default, the option (C{--max-blksize}) on the command line.
        @return: C{value}, as a L{float} for a L{float} setting.
        @raise TypeError: C{value} is not a number of the setting's kind
            (nor an allowed L{None}); the message names the setting and what
            it allows.
        @raise ValueError: C{value} is out of bounds; the message names the
            setting and its bounds.
        """
        label = label or self.name
        if value is None and self.none is not None:
            return None
        if self.kind is bool:
            if not isinstance(value, bool):
                raise TypeError(f"{label} must be {self.allowed}, not {value!r}")
            return value
        accepted = (int, float) if self.kind is float else int
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise TypeError(
                f"{label} must be {self._noun} {self.allowed}, not {value!r}"
            )
        # Written so that NaN, which compares false with anything, fails.
        if not (
            (self.low is None or value >= self.low)
            and (self.high is None or value <= self.high)
        ):
            raise ValueError(f"{label} must be {self.allowed}, not {value!r}")
        return self.kind(value)

    def parse(self, text: str) -> Any:
        """
        The value of this setting's command-line option, written C{text}.

        @raise ValueError: C{text} is not a number, or is out of bounds; the
            message names the option and what it allows.
        """
        label = f"--{self.option}"
        # A float setting written as a whole number is checked (and shown
        # in the message) as the operator wrote it.
        for kind in (int, float) if self.kind is float else (int,):
            try:
                value = kind(text)
            except ValueError:
                continue
            return self.check(value, label)
        raise ValueError(f"{label} must be {self._noun} {self.allowed}, not {text!r}")


#: Every tunable.  The order is the order of C{--help}, of the live settings
#: and of L{Settings.as_dict}.
SCHEMA: tuple[Setting, ...] = (
    Setting(
        "max_blksize",
        int,
        MAX_BLKSIZE,
        "Largest block size granted (RFC 2348); larger requests are clamped.",
        low=MIN_BLKSIZE,
        high=MAX_BLKSIZE,
        limit=True,
    ),
    Setting(
        "max_windowsize",
        int,
        64,
        "Largest window granted, in blocks (RFC 7440).",
        low=1,
        high=MAX_WINDOWSIZE,
        limit=True,
    ),
    # 192 KiB is what a client's receive buffer holds at Linux's default
    # size (212992 bytes, kernel overhead included): three 64 KiB blocks
    # arrive whole where four overflow it.  A budget below one block still
    # lets one block a window through; none above is needed.
    Setting(
        "max_window_bytes",
        int,
        192 * 1024,
        "Most payload bytes one window may hold; the window is clamped to "
        "this divided by the block size (at least one block).",
        low=1,
        limit=True,
    ),
    # Linux's default receive buffer (net.core.rmem_default).  The kernel
    # charges each datagram far more than its payload (a 4,100-byte one
    # takes 8,519 bytes of it; see options.buffer_charge), so a byte budget
    # alone overflowed it at blksize 3072 to 8192.
    Setting(
        "client_buffer",
        int,
        212992,
        "Receive buffer, in bytes, a client is assumed to have: a window "
        "never holds more blocks than the kernel can queue in it, counting "
        "its overhead per datagram. 0: no such cap.",
        low=0,
        limit=True,
    ),
    Setting(
        "timeout",
        float,
        1.0,
        "First retransmit wait in seconds (may be fractional), when the "
        "client does not negotiate one; later waits double, up to 8 times it.",
        low=0.01,
        high=255,
        short="t",
    ),
    # A round trip's RTO is never below this: measured on this 2-CPU VM,
    # the reactor runs a timer up to 10-15 ms late under a storm of 5,000
    # transfers (tests/test_flood.py, the reactor-lag histogram of
    # /metrics), so a floor of 50 ms leaves spurious retransmissions rare.
    Setting(
        "rto_floor",
        float,
        0.05,
        "Least retransmit wait in seconds once a transfer has measured its "
        "round trip (RFC 6298: the wait is the smoothed round trip plus four "
        "times its variation, doubled on each expiry, at most 8 times "
        "--timeout); a wait below the host's scheduling jitter would resend "
        "what is merely late.",
        low=0.001,
        high=255,
    ),
    Setting(
        "retries",
        int,
        5,
        "Retransmissions of the same packets before a transfer is given up.",
        low=0,
        high=100,
    ),
    Setting(
        "rollover",
        int,
        0,
        "Block number that follows 65535.",
        low=0,
        high=1,
    ),
    Setting(
        "log_rate",
        int,
        100,
        "Most transfer lines (finished transfers, refused requests) logged a "
        "second; past it one line a second sums up the rest. 0: log every one.",
        low=0,
        high=1_000_000,
    ),
    # Off in code: every other protocol of an embedding application's
    # reactor would wait with the transfer.
    Setting(
        "linger",
        float,
        0.0,
        "Seconds a lone transfer waits in recvfrom for its client's next "
        "datagram before giving the reactor back. The wait blocks the whole "
        "reactor, a few milliseconds at most per wakeup, and lets a lone "
        "lock-step transfer run at a blocking server's speed. 0: never wait.",
        low=0,
        high=0.01,
        cli_default=0.001,
    ),
    # The caps, the rate and the hold time bound what one client, or a
    # flood of forged requests, can take of a server (issue 10).
    Setting(
        "max_sessions",
        int,
        None,
        "Most requests in progress at once (transfers, and requests whose "
        "handler is at work); past it new requests are dropped in silence, "
        "so that clients retry, perhaps at another server. Default: what the "
        "descriptor limit allows (raised to its hard limit at start): two "
        "descriptors a transfer, 64 kept back.",
        low=1,
        none="derived from the descriptor limit",
    ),
    Setting(
        "max_sessions_per_client",
        int,
        None,
        "Most requests in progress at once from one client address; past "
        "it its new requests are dropped in silence. Default: a quarter of "
        "--max-sessions.",
        low=1,
        none="a quarter of max_sessions",
    ),
    Setting(
        "client_rate",
        float,
        0.0,
        "New requests a second one client address may make (a token bucket "
        "of --client-burst); past it they are dropped in silence. 0: no "
        "limit (the default: many machines may share one address behind a "
        "relay or a NAT).",
        low=0,
    ),
    Setting(
        "client_burst",
        int,
        20,
        "New requests one client address may make at once before "
        "--client-rate applies.",
        low=1,
    ),
    Setting(
        "hold_time",
        float,
        120.0,
        "Most seconds a transfer may go without progress, whatever timeout "
        "its client negotiated; its retransmissions stop there.",
        low=1,
        high=3600,
    ),
    # Off in code, as before: an embedding application decides how its
    # own shutdown goes.
    Setting(
        "shutdown_grace",
        float,
        0.0,
        "Seconds a stop (SIGTERM) lets the transfers in flight finish while no "
        "new ones are accepted; then the rest get ERROR 0 \"Server shutting "
        "down\". A second SIGTERM or SIGINT stops at once. 0: at once.",
        low=0,
        high=3600,
        cli_default=30.0,
    ),
    Setting(
        "flap_ipv4_prefix",
        int,
        24,
        "Length of the IPv4 client prefixes the flap signal counts abandoned "
        "transfers and strays by.",
        low=8,
        high=32,
    ),
    Setting(
        "flap_ipv6_prefix",
        int,
        64,
        "Length of the IPv6 client prefixes the flap signal counts by.",
        low=16,
        high=128,
    ),
    Setting(
        "allow_low_ports",
        bool,
        False,
        "Answer clients whose source port is below 1024 (a legacy device). "
        "By default datagrams from them are dropped: two UDP services can "
        "answer each other for ever (the Loop DoS, CVE-2024-2169).",
    ),
)

_BY_NAME = {row.name: row for row in SCHEMA}


def setting(name: str) -> Setting:
    """
    The row of L{SCHEMA} named C{name}.

    @raise KeyError: there is no such setting; the message lists them.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"no setting {name!r}; the settings are: {', '.join(_BY_NAME)}"
        ) from None


def _fields_from_schema(limit: bool):
    """
    A class decorator, applied before C{dataclass}: add a field with its
    default for each row of L{SCHEMA} whose C{limit} is C{limit}, after the
    fields the class declares, and document each as an C{@ivar}.
    """

    def add(cls):
        annotations = dict(cls.__dict__.get("__annotations__", {}))
        lines = []
        for row in SCHEMA:
            if row.limit is limit:
                optional = " | None" if row.none is not None else ""
                annotations[row.name] = row.kind.__name__ + optional
                setattr(cls, row.name, row.default)
                lines += textwrap.wrap(
                    f"@ivar {row.name}: {row.help} {row.allowed_doc}",
                    width=72,
                    initial_indent="    ",
                    subsequent_indent="        ",
                )
        cls.__annotations__ = annotations
        doc = cls.__doc__.rstrip()
        gap = "\n" if "@ivar" in doc else "\n\n"
        cls.__doc__ = doc + gap + "\n".join(lines) + "\n    "
        return cls

    return add


@dataclass(frozen=True)
@_fields_from_schema(limit=True)
class Limits:
    """
    What the server allows a client to negotiate; its fields are the rows of
    L{SCHEMA} with C{limit}, each checked when the limits are made, so a
    misconfigured server fails at start rather than on a client's request.
    Change them with C{dataclasses.replace} (or L{Settings.set}).
    """

    def __post_init__(self) -> None:
        for row in SCHEMA:
            if row.limit:
                object.__setattr__(self, row.name, row.check(getattr(self, row.name)))


@dataclass
@_fields_from_schema(limit=False)
class Settings:
    """
    The server's tunables.  New transfers read them when they start, so they
    can be changed while the server runs; every value is checked with
    L{Setting.check} when it is set, in the constructor or after.

    @ivar limits: what clients may negotiate (L{Limits}).
    """

    limits: Limits = field(default_factory=Limits)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "limits":
            if not isinstance(value, Limits):
                raise TypeError(f"limits must be a Limits, not {value!r}")
        else:
            row = _BY_NAME.get(name)
            if row is None:
                raise AttributeError(
                    f"no setting {name!r}; the settings are: {', '.join(_BY_NAME)}"
                )
            if row.limit:
                raise AttributeError(
                    f"{name} is one of the limits: settings.set({name!r}, value) "
                    "changes it"
                )
            value = row.check(value)
        object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Settings:
        """
        Settings from a flat mapping of setting names to values (limits
        included), the defaults for the names it leaves out.

        @raise KeyError: a name is not a setting.
        """
        limits, rest = {}, {}
        for name, value in values.items():
            (limits if setting(name).limit else rest)[name] = value
        return cls(limits=Limits(**limits), **rest)

    def as_dict(self) -> dict[str, Any]:
        """
        Every setting by name, limits included, in the order of L{SCHEMA}.
        """
        return {row.name: self.get(row.name) for row in SCHEMA}

    def get(self, name: str) -> Any:
        """
        The value of the setting C{name}, a limit or not.

        @raise KeyError: there is no such setting.
        """
        row = setting(name)
        return getattr(self.limits if row.limit else self, name)

    def set(self, name: str, value: Any) -> Any:
        """
        Change the setting C{name}, a limit or not; transfers that start
        afterwards use it.  A bad value changes nothing.

        @return: the value set (a L{float} for a L{float} setting).
        @raise KeyError: there is no such setting.
        @raise TypeError: see L{Setting.check}.
        @raise ValueError: see L{Setting.check}.
        """
        row = setting(name)
        value = row.check(value)
        if row.limit:
            self.limits = dataclasses.replace(self.limits, **{name: value})
        else:
            setattr(self, name, value)
        return value

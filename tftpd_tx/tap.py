"""
C{twistd tftp}: command-line options and the service they make.
"""

from __future__ import annotations

# First: systemd's LISTEN_FDS must be read before anything imports
# twisted.internet.endpoints, which takes it (see tftpd_tx.systemd).
from . import systemd

#: The descriptors systemd handed this process, for --systemd.
_ACTIVATED_FDS = systemd.listen_fds()

import functools
import errno
import importlib
import os
import socket
import sys

from twisted.application.service import MultiService
from twisted.python import usage

from .endpoints import check_endpoint
from .filesystem import FilesystemHandler
from .handback import parse_address
from .settings import SCHEMA, Setting, Settings
from .service import TFTPService, listening_address
from .workers import AUTO, worker_count, worker_sockets

#: The listening port, checked as the settings are (it is not one: it is
#: where the server listens, not how it behaves).
_PORT = Setting("port", int, 69, "UDP port to listen on.", low=0, high=65535, short="p")


def _parameter(row: Setting) -> list:
    """
    The C{optParameters} entry of the option for C{row}: its default, help
    and bounds all come from the row.
    """

    def coerce(text):
        return row.parse(text)

    coerce.coerceDoc = row.allowed_doc
    # Twisted writes "[default: ...]" after the help, and ". " before the
    # bounds: with no default to write, the help's own full stop would
    # double.
    help = row.help[:-1] if row.command_line_default is None else row.help
    return [row.option, row.short, row.command_line_default, help, coerce]


class Options(usage.Options):
    """
    Options of C{twistd tftp}.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve the files under --root, read-only, over TFTP (RFC 1350) with "
        "the blksize, timeout, tsize and windowsize options (RFC 2347, 2348, "
        "2349, 7440).  Paths never leave the root: '..' and symbolic links "
        "pointing outside it are refused."
    )

    optParameters = [
        ["root", "r", "/srv/tftp", "Directory to serve, read-only."],
        [
            "handler",
            None,
            None,
            "Serve with your own handler instead: package.module:factory, "
            "where factory() returns the handler (found on PYTHONPATH).",
        ],
        [
            "origin",
            None,
            None,
            "Serve files from this http:// or https:// URL: a TFTP path is "
            "fetched from URL/path. With --root, the root is tried first.",
        ],
        [
            "origin-timeout",
            None,
            30.0,
            "Seconds to wait for the origin's answer, and at most between two "
            "reads of its body.",
            float,
        ],
        [
            "origin-ca",
            None,
            None,
            "PEM file of the authorities that sign the origin's certificate, "
            "trusted instead of the system's. TLS is always verified.",
        ],
        [
            "cache-dir",
            None,
            None,
            "Directory where files from the origin are kept across restarts. "
            "Default: none, nothing is kept.",
        ],
        [
            "cache-max-bytes",
            None,
            1 << 30,
            "Most bytes kept in --cache-dir; the least recently used files "
            "are evicted first.",
            int,
        ],
        _parameter(_PORT),
        [
            "interface",
            "i",
            "",
            "Address to listen on (IPv4 or IPv6). Default: every address, "
            "IPv4 and IPv6, on one dual-stack socket.",
        ],
        [
            "workers",
            None,
            1,
            "Serve with this many worker processes on the same address and "
            "port (SO_REUSEPORT), under one supervisor that has the host's one "
            "operations endpoint and manhole; 'auto': one per CPU. With "
            "--systemd, the socket unit makes a socket per worker and address.",
            worker_count,
        ],
        *[_parameter(row) for row in SCHEMA if row.kind is not bool],
        [
            "manhole",
            None,
            None,
            "Serve an SSH manhole (a Python prompt inside the server, for "
            "operators) on this endpoint, e.g. tcp:2222:interface=127.0.0.1. "
            "Off unless given.",
        ],
        [
            "manhole-keys",
            None,
            "~/.ssh/authorized_keys",
            "OpenSSH authorized_keys file of the operators allowed into the "
            "manhole; read at every login. Public keys are the only way in.",
        ],
        [
            "ops",
            None,
            None,
            "Serve the operations endpoint (/metrics for Prometheus, /health "
            "and /ready for the BGP speaker's check, POST /drain and /resume) "
            "on this endpoint, e.g. tcp:9669:interface=127.0.0.1. Off unless given.",
        ],
        [
            "health-canary",
            None,
            None,
            "A small file under the root (or one the handler serves) that the "
            "server fetches from itself through its own listener every 5 s; "
            "two failures in a row make /health 503.",
        ],
        [
            "disable-file",
            None,
            None,
            "A file kept present (created atomically) while the server is "
            "degraded or draining but can serve, and absent otherwise: for "
            "ExaBGP healthcheck's --disable, which keeps the route but "
            "de-prefers it.",
        ],
        [
            "handback",
            None,
            None,
            "With --single-port: ADDRESS:PORT (this server's own unicast "
            "address) to exchange strays on with the other servers of the "
            "fleet (--handback-peer), so that a transfer under way when its "
            "server is drained or its route moves still finishes.",
        ],
        [
            "state-dir",
            None,
            None,
            "Directory for what is kept across restarts (the manhole's host "
            "key). Default: $STATE_DIRECTORY when systemd sets it, else "
            "$XDG_STATE_HOME/tftpd_tx, else ~/.local/state/tftpd_tx.",
        ],
    ]

    optFlags = [
        *[[row.option, row.short, row.help] for row in SCHEMA if row.kind is bool],
        [
            "single-port",
            None,
            "Send every reply from the address and port the request was sent "
            "to, and tell transfers apart by the client's address and port, "
            "so that all of a client's datagrams are one flow (for anycast "
            "behind per-flow ECMP).",
        ],
        [
            "systemd",
            None,
            "Serve the datagram sockets systemd's socket activation hands "
            "over (LISTEN_FDS) instead of binding --port and --interface.",
        ],
        [
            "manhole-allow-remote",
            None,
            "Let the manhole listen on an address that is not loopback.",
        ],
        [
            "ops-allow-remote",
            None,
            "Let the operations endpoint listen on an address that is not "
            "loopback (POST /drain and /resume stay loopback-only).",
        ],
    ]

    def opt_handback_peer(self, address: str) -> None:
        """ADDRESS:PORT of another server's --handback port; once for each."""
        try:
            self["handback-peers"].append(parse_address(address))
        except ValueError as error:
            raise usage.UsageError(f"--handback-peer {error}") from None

    def __init__(self) -> None:
        super().__init__()
        self["handback-peers"] = []
        #: The --handback socket a worker of --workers is handed by its
        #: supervisor (which bound it), served instead of binding one.
        self["handback-socket"] = None

    def parseOptions(self, options=None) -> None:
        # As given: each worker of --workers parses it too.
        self.command_line = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def postOptions(self) -> None:
        if self["handler"] is not None:
            self["handler"] = load_handler(self["handler"])
        elif self["origin"] is not None:
            self._check_origin()
        else:
            self._check_root()
        interface = self["interface"]
        if interface:
            from twisted.internet.abstract import isIPAddress, isIPv6Address

            if not (isIPAddress(interface) or isIPv6Address(interface)):
                raise usage.UsageError(
                    f"--interface {interface!r} is not an IP address: give an "
                    "IPv4 or IPv6 address, or leave it out to listen on every address"
                )
        self["worker-sockets"] = None
        if self["systemd"]:
            self["sockets"] = self._activated_sockets()
            if self["workers"] != 1:
                self._share_activated()
        else:
            self["sockets"] = []
            if self["workers"] == AUTO:
                self["workers"] = len(os.sched_getaffinity(0))
            self._check_bindable()
        if self["manhole"] is not None:
            self._check_manhole()
        if self["ops"] is not None:
            try:
                check_endpoint(self["ops"], self["ops-allow-remote"], "--ops-allow-remote")
            except ValueError as error:
                raise usage.UsageError(f"--ops {error}") from None
        self._check_handback()
        if self["disable-file"] is not None:
            directory = os.path.dirname(os.path.abspath(self["disable-file"]))
            if not os.path.isdir(directory):
                raise usage.UsageError(
                    f"--disable-file {self['disable-file']!r}: its directory "
                    f"{directory!r} does not exist; create it or choose another path"
                )

    def _check_handback(self) -> None:
        if self["handback"] is None:
            if self["handback-peers"]:
                raise usage.UsageError(
                    "--handback-peer without --handback: give this server's own "
                    "--handback ADDRESS:PORT too"
                )
            return
        try:
            self["handback"] = parse_address(self["handback"])
        except ValueError as error:
            raise usage.UsageError(f"--handback {error}") from None
        if not self["single-port"]:
            raise usage.UsageError(
                "--handback needs --single-port: in classic mode a transfer's "
                "datagrams go to its own port, which the other servers have no "
                "socket on, so no stray ever reaches them to hand back"
            )
        if not self["handback-peers"]:
            raise usage.UsageError(
                "--handback without --handback-peer: name the other servers' "
                "--handback addresses (ADDRESS:PORT, once each)"
            )
        if self["handback"] in self["handback-peers"]:
            raise usage.UsageError(
                "--handback-peer names this server's own --handback address"
            )
        if self["handback-socket"] is not None:
            return
        host, port = self["handback"]
        error = _bind_error(host, port)
        if error is not None:
            raise usage.UsageError(
                f"--handback {host}:{port} cannot be bound ({error.strerror}): "
                "give an address of this host and a free port"
            )

    def _activated_sockets(self) -> list:
        """
        The sockets systemd handed over, for C{--systemd}.
        """
        if not _ACTIVATED_FDS:
            raise usage.UsageError(
                "--systemd: systemd handed over no sockets (LISTEN_FDS and "
                "LISTEN_PID are not set for this process): start it from a "
                "socket unit (see contrib/systemd) or with systemd-socket-activate "
                "--datagram, or leave --systemd out to bind --port"
            )
        try:
            return systemd.datagram_sockets(_ACTIVATED_FDS)
        except ValueError as error:
            raise usage.UsageError(f"--systemd: {error}") from None

    def _share_activated(self) -> None:
        """
        For C{--systemd --workers}: each worker's sockets, from those
        systemd handed over (L{worker_sockets}), and as many workers.
        """
        try:
            self["worker-sockets"] = worker_sockets(self["sockets"], self["workers"])
        except ValueError as error:
            raise usage.UsageError(f"--systemd {error}") from None
        self["workers"] = len(self["worker-sockets"])

    def _check_bindable(self) -> None:
        """
        Bind the port once, now, so that a port in use, a privileged port or
        an address this host does not have is reported as the option at
        fault rather than as a traceback from inside twistd.
        """
        address, port = listening_address(self["interface"]), self["port"]
        error = _bind_error(address, port)
        if error is not None:
            raise usage.UsageError(_bind_problem(error, address, port))

    def _check_manhole(self) -> None:
        # Conch is imported only when a manhole is asked for.
        from .manhole import check_state_dir, default_state_dir, read_authorized_keys

        try:
            check_endpoint(self["manhole"], self["manhole-allow-remote"])
        except ValueError as error:
            raise usage.UsageError(f"--manhole {error}") from None
        self["manhole-keys"] = os.path.expanduser(self["manhole-keys"])
        # The keys file is checked for the user the server will run as:
        # twistd's -u, parsed before this command's options, else this one.
        parent = getattr(self, "parent", None) or {}
        try:
            read_authorized_keys(self["manhole-keys"], parent.get("uid"))
        except ValueError as error:
            raise usage.UsageError(f"--manhole-keys {error}") from None
        self["state-dir"] = os.path.expanduser(self["state-dir"] or default_state_dir())
        try:
            check_state_dir(self["state-dir"])
        except ValueError as error:
            raise usage.UsageError(f"--state-dir: {error}") from None

    def _check_origin(self) -> None:
        from .origin import check_base_url, trust_root

        try:
            check_base_url(self["origin"])
        except ValueError as error:
            raise usage.UsageError(
                f"--origin {error}: give the base URL, e.g. https://boot.example/tftp/"
            ) from None
        if not self["origin-timeout"] > 0:
            raise usage.UsageError(
                f"--origin-timeout must be more than 0 seconds, not {self['origin-timeout']}"
            )
        if self["origin-ca"] is not None:
            try:
                trust_root(self["origin-ca"])
            except (OSError, ValueError) as error:
                raise usage.UsageError(
                    f"--origin-ca {self['origin-ca']!r}: {error}; give a PEM file "
                    "of the origin's certificate authorities"
                ) from None
        if self["cache-max-bytes"] <= 0:
            raise usage.UsageError(
                f"--cache-max-bytes must be more than 0, not {self['cache-max-bytes']}"
            )
        if self["cache-dir"] is not None:
            try:
                os.makedirs(self["cache-dir"], exist_ok=True)
            except OSError as error:
                raise usage.UsageError(
                    f"--cache-dir {self['cache-dir']!r} cannot be created "
                    f"({error.strerror}): create it or choose another directory"
                ) from None
            if not os.access(self["cache-dir"], os.R_OK | os.W_OK | os.X_OK):
                raise usage.UsageError(
                    f"--cache-dir {self['cache-dir']!r} is not writable by this "
                    "user: fix its permissions or choose another directory"
                )
        # The root comes first when given; the default one only if it exists.
        if self["root"] != self.defaults["root"] or os.path.isdir(self["root"]):
            self._check_root()
            self["origin-root"] = self["root"]
        else:
            self["origin-root"] = None

    def _check_root(self) -> None:
        root = self["root"]
        if not os.path.isdir(root):
            raise usage.UsageError(
                f"--root {root!r} is not a directory: create it or pass the "
                "directory to serve with --root DIR"
            )
        if not os.access(root, os.R_OK | os.X_OK):
            raise usage.UsageError(
                f"--root {root!r} cannot be read by this user: fix its "
                "permissions or run as a user who can read it"
            )


def _bind_error(address: str, port: int) -> OSError | None:
    """
    Bind a UDP socket to C{(address, port)} and let it go at once: why it
    cannot be bound, or L{None}.  (C{"::"} is dual-stack, as the listener.)
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        if address == "::":
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            probe.bind((address, port))
        except OSError as error:
            return error
    return None


def _bind_problem(error: OSError, address: str, port: int) -> str:
    """
    What to tell an operator whose server cannot bind C{(address, port)}.
    """
    if error.errno == errno.EADDRNOTAVAIL:
        return (
            f"--interface {address} is not an address of this host: give one "
            "it has, or leave --interface out to listen on every address"
        )
    if error.errno == errno.EACCES:
        return (
            f"--port {port} needs privileges: start twistd as root (add -u/-g "
            "to drop them once the port is bound) or choose a port above 1023"
        )
    if error.errno == errno.EADDRINUSE:
        return (
            f"--port {port} is already in use on {address}: stop the server "
            "using it (another TFTP server?) or choose another --port"
        )
    return f"cannot listen on [{address}]:{port} ({error.strerror}): check --interface and --port"


def load_handler(spec: str):
    """
    Import C{package.module:factory} and call the factory.

    @raise usage.UsageError: naming what failed and how to fix it.
    """
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise usage.UsageError(
            f"--handler {spec!r} must look like package.module:factory"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise usage.UsageError(
            f"--handler {spec!r}: cannot import {module_name!r} ({error!r}); "
            "check the name and that its directory is on PYTHONPATH"
        ) from error
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise usage.UsageError(
            f"--handler {spec!r}: {module_name!r} has no callable {factory_name!r}"
        )
    try:
        return factory()
    except Exception as error:
        raise usage.UsageError(
            f"--handler {spec!r}: {factory_name}() raised {error!r}"
        ) from error


def settings_from(options: Options) -> Settings:
    """
    The L{Settings} that parsed C{options} ask for.
    """
    return Settings.from_dict(
        {
            row.name: bool(options[row.option]) if row.kind is bool else options[row.option]
            for row in SCHEMA
        }
    )


def _origin_handler(options: Options):
    """
    The L{tftpd_tx.origin.OriginHandler} of C{--origin}, behind the root
    when there is one.
    """
    from twisted.internet import reactor

    from .cache import DiskCache
    from .origin import LocalFirst, OriginHandler

    cache = None
    if options["cache-dir"] is not None:
        cache = DiskCache(options["cache-dir"], options["cache-max-bytes"])
    origin = OriginHandler(
        options["origin"],
        reactor,
        cache=cache,
        timeout=options["origin-timeout"],
        ca_file=options["origin-ca"],
    )
    if options["origin-root"] is None:
        return origin
    return LocalFirst(FilesystemHandler(options["origin-root"]), origin)


def _origin_reporting(handler) -> tuple[list, list]:
    """
    For a handler serving from an origin (C{--origin}, behind the root or
    not): a health check that degrades the server while the origin fails,
    and the origin's metrics; nothing for any other handler.
    """
    from .origin import LocalFirst, OriginHandler

    if isinstance(handler, LocalFirst):
        handler = handler.fallback
    if not isinstance(handler, OriginHandler):
        return [], []
    from .metrics import OriginCollector

    def origin_failing():
        return "origin failing" if handler.failing else None

    return [origin_failing], [OriginCollector(handler)]


def makeService(options: Options) -> MultiService:
    """
    The TFTP listener (named C{"tftp"}), in a L{MultiService} with the
    operations endpoint and the health keeper (named C{"ops"} and
    C{"health"}) when C{--ops}, C{--health-canary} or C{--disable-file} is
    given, and the SSH manhole (named C{"manhole"}) when C{--manhole} is.
    """
    settings = settings_from(options)
    if options["workers"] > 1:
        from twisted.internet import reactor

        from .workers import host_service

        return host_service(options, settings, reactor)
    top = MultiService()
    handler = options["handler"]
    if handler is None and options["origin"] is not None:
        handler = _origin_handler(options)
    handler = handler or FilesystemHandler(options["root"])
    tftp = TFTPService(
        handler,
        port=options["port"],
        interface=options["interface"],
        settings=settings,
        single_port=options["single-port"],
        sockets=options["sockets"],
        stop_signals=True,
    )
    tftp.setName("tftp")
    tftp.setServiceParent(top)
    if any(options[name] is not None for name in ("ops", "health-canary", "disable-file")):
        from twisted.internet import reactor

        from .ops import operations_services

        checks, collectors = _origin_reporting(handler)
        for service in operations_services(
            tftp,
            reactor,
            endpoint=options["ops"],
            canary=options["health-canary"],
            disable_file=options["disable-file"],
            checks=checks,
            collectors=collectors,
        ):
            service.setServiceParent(top)
    if options["handback"] is not None:
        from twisted.internet import reactor

        from .handback import HandbackService

        handback = HandbackService(
            tftp.server, options["handback"], options["handback-peers"], reactor,
            socket=options["handback-socket"],
        )  # fmt: skip
        handback.setName("handback")
        handback.setServiceParent(top)
    if options["manhole"] is not None:
        from twisted.internet import reactor

        manhole_from(options, tftp.server, reactor).setServiceParent(top)
    return top


def manhole_from(options: Options, server, reactor):
    """
    The SSH manhole (named C{"manhole"}) that C{--manhole} and its options
    ask for, over the operator core of C{server} (a L{TFTPServer}, or the
    host's view of its workers).
    """
    # Conch is imported only when a manhole is asked for.
    from .manhole import manhole_service
    from .operator import make_namespace

    manhole = manhole_service(
        options["manhole"],
        options["manhole-keys"],
        options["state-dir"],
        functools.partial(make_namespace, server, reactor),
        reactor,
        allow_remote=options["manhole-allow-remote"],
    )
    manhole.setName("manhole")
    return manhole

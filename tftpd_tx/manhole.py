"""
The operator's SSH manhole: a Python prompt inside the running server.

An operator logs in with an SSH key listed in an OpenSSH C{authorized_keys}
file and gets a Python prompt whose namespace holds the live server and a few
helpers (C{help()} lists them)::

    $ ssh -p 2222 127.0.0.1
    >>> ls()
    >>> kill(3)
    >>> drain()

Security, in one place:

  - Public-key authentication only.  The portal has one checker, for SSH
    keys, so the server offers nothing but C{publickey}: no passwords, no
    keyboard-interactive, no telnet.
  - The keys file is read again at every login, so adding or revoking a key
    needs no restart.  Lines with options (C{from=...}, C{command=...}) are
    ignored rather than half-honoured, and a file other users may write to
    is refused, as sshd does.
  - The host key is an ed25519 key created on first start in the state
    directory (mode 0600) and reused after, so its fingerprint, logged at
    start, stays the same.
  - L{check_endpoint} refuses a listening address that is not loopback unless
    the operator says C{allow_remote}; the service checks the bound address
    again once listening.

C{ssh -p 2222 127.0.0.1 'ls()'} runs one line and prints its result as
plain text, for scripts.

Nothing here waits on the network or a terminal: helpers read in-memory
state, the only file read at login is the small keys file, and the prompt
never reads standard input (C{help()} is replaced by a list of helpers).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import pydoc
import stat

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.application.service import Service
from twisted.conch import manhole
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker
from twisted.conch.error import ValidPublicKey
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.manhole_ssh import ConchFactory, TerminalRealm, TerminalSession
from twisted.conch.ssh import keys
from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION, SSHServerTransport
from twisted.cred.portal import Portal
from twisted.internet import defer, endpoints
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .options import Limits
from .settings import SETTING_BOUNDS

__all__ = [
    "HOST_KEY_NAME",
    "KILL_MESSAGE",
    "AuthorizedKeysFile",
    "LiveSettings",
    "ManholeFactory",
    "ManholeService",
    "OperatorNamespace",
    "check_endpoint",
    "check_state_dir",
    "default_state_dir",
    "fingerprint",
    "load_or_create_host_key",
    "make_namespace",
    "manhole_service",
    "read_authorized_keys",
]

#: The host key's file name in the state directory (its public half has
#: C{.pub} appended, as ssh-keygen does).
HOST_KEY_NAME = "manhole_host_ed25519_key"

#: What the client of a transfer ended with L{OperatorNamespace.kill} reads.
KILL_MESSAGE = "terminated by operator"

_log = Logger()


# -- configuration checks ----------------------------------------------------


def default_state_dir(environ=None) -> str:
    """
    Where the manhole keeps its host key when C{--state-dir} is not given:
    systemd's C{$STATE_DIRECTORY} (its first entry), else
    C{$XDG_STATE_HOME/tftpd_tx}, else C{~/.local/state/tftpd_tx}.
    """
    if environ is None:
        environ = os.environ
    systemd = environ.get("STATE_DIRECTORY")
    if systemd:
        return systemd.split(":")[0]
    base = environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "tftpd_tx")


def read_authorized_keys(path: str) -> list[keys.Key]:
    """
    The public keys in an OpenSSH C{authorized_keys} file.

    Blank lines and comments are skipped; a line that is not a plain key
    (options such as C{from=} included, since they would not be enforced) is
    logged and skipped.

    @raise ValueError: the file is missing, unreadable or holds no key; the
        message says how to fix it.
    """
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            lines = file.read().splitlines()
    except FileNotFoundError:
        raise ValueError(
            f"{path!r} does not exist: create it with the operators' public keys, "
            f"e.g. cat ~/.ssh/id_ed25519.pub >> {path}"
        ) from None
    except OSError as error:
        raise ValueError(
            f"{path!r} cannot be read ({error.strerror}): fix its permissions "
            "or point to another authorized_keys file"
        ) from None
    if stat.S_IMODE(mode) & 0o022:
        raise ValueError(
            f"{path!r} may be written by other users, who could then log in: "
            f"chmod go-w {path}"
        )
    found = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            found.append(keys.Key.fromString(line))
        except Exception:
            _log.warn(
                "Manhole keys file {path}, line {number}: not a plain public key "
                "(key options are not supported); line ignored",
                path=path,
                number=number,
            )
    if not found:
        raise ValueError(
            f"{path!r} holds no public key: add one per line, "
            f"e.g. cat ~/.ssh/id_ed25519.pub >> {path}"
        )
    return found


def _is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def _split_description(description: str) -> tuple[list[str], dict[str, str]]:
    """
    Split an endpoint description into its positional and keyword arguments,
    honouring backslash escapes (C{tcp6:2222:interface=\\:\\:1}).
    """
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    args, kwargs = [], {}
    for part in parts:
        name, equals, value = part.partition("=")
        if equals:
            kwargs[name] = value
        else:
            args.append(part)
    return args, kwargs


class _NoReactor:
    """
    Stands in for the reactor while a description is parsed: parsing
    builds an endpoint but never uses its reactor.
    """


def check_endpoint(description: str, allow_remote: bool = False) -> None:
    """
    Check that C{description} is a server endpoint that listens on loopback
    only (TCP on C{127.0.0.0/8} or C{::1}, or a UNIX socket), unless
    C{allow_remote}.

    @raise ValueError: saying what is wrong and what to write instead.
    """
    try:
        endpoints.serverFromString(_NoReactor(), description)
    except Exception as error:
        raise ValueError(
            f"{description!r} is not a server endpoint ({error}): write it like "
            "tcp:2222:interface=127.0.0.1"
        ) from None
    if allow_remote:
        return
    args, kwargs = _split_description(description)
    kind = args[0].lower()
    if kind == "unix":
        return
    if kind in ("tcp", "tcp6"):
        # tcp:PORT[:INTERFACE[:BACKLOG]], or with keywords.
        interface = kwargs.get("interface", args[2] if len(args) > 2 else "")
        try:
            loopback = bool(interface) and _is_loopback(interface)
        except ValueError:
            loopback = False
        if loopback:
            return
        where = f"on {interface!r}" if interface else "on every address"
        raise ValueError(
            f"{description!r} listens {where}, not only on loopback: add "
            "interface=127.0.0.1 (or interface=\\:\\:1 for tcp6), or pass "
            "--manhole-allow-remote if remote logins are intended"
        )
    raise ValueError(
        f"{description!r}: cannot tell whether a {kind!r} endpoint listens on "
        "loopback only; use tcp:PORT:interface=127.0.0.1, or pass "
        "--manhole-allow-remote if that is intended"
    )


def check_state_dir(path: str) -> None:
    """
    Check that the host key in C{path} can be read, or created there.

    @raise ValueError: saying what is wrong and how to fix it.
    """
    key_path = os.path.join(path, HOST_KEY_NAME)
    if os.path.exists(key_path):
        if not os.access(key_path, os.R_OK):
            raise ValueError(
                f"the host key {key_path!r} cannot be read by this user: fix its "
                "owner, or use another --state-dir"
            )
        if stat.S_IMODE(os.stat(key_path).st_mode) & 0o077:
            raise ValueError(
                f"the host key {key_path!r} is accessible by other users: "
                f"chmod 600 {key_path}"
            )
        return
    existing = path
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise ValueError(
            f"{existing!r} is not a directory, so the host key cannot be kept in "
            f"{path!r}: pass another --state-dir"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"{existing!r} is not writable, so the host key cannot be created in "
            f"{path!r}: create that directory for this user, or pass another "
            "--state-dir"
        )


# -- the host key ------------------------------------------------------------


def fingerprint(key: keys.Key) -> str:
    """
    A key's fingerprint as OpenSSH prints it (C{SHA256:...}).
    """
    digest = key.fingerprint(format=keys.FingerprintFormats.SHA256_BASE64)
    return "SHA256:" + digest.rstrip("=")


def load_or_create_host_key(state_dir: str) -> keys.Key:
    """
    Load the manhole's host key from C{state_dir}, creating an ed25519 key
    (mode 0600, with its C{.pub} beside it) on first use.

    @raise ValueError: the key file is readable by others, or is not a key.
    """
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(state_dir, HOST_KEY_NAME)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _load_host_key(path)
    key = keys.Key(Ed25519PrivateKey.generate())
    with os.fdopen(fd, "wb") as file:
        file.write(key.toString("openssh"))
        file.flush()
        os.fsync(file.fileno())
    with open(path + ".pub", "wb") as file:
        file.write(key.public().toString("openssh") + b" tftpd_tx manhole\n")
    _log.info(
        "Created the manhole host key {path} ({fingerprint})",
        path=path,
        fingerprint=fingerprint(key),
    )
    return key


def _load_host_key(path: str) -> keys.Key:
    mode = os.stat(path).st_mode
    if stat.S_IMODE(mode) & 0o077:
        raise ValueError(
            f"the host key {path!r} is accessible by other users: chmod 600 {path}"
        )
    try:
        with open(path, "rb") as file:
            key = keys.Key.fromString(file.read())
    except (OSError, keys.BadKeyError) as error:
        raise ValueError(
            f"cannot load the host key {path!r} ({error}): remove it to have a "
            "new one made (clients will then see a new fingerprint)"
        ) from None
    if key.isPublic():
        raise ValueError(f"{path!r} holds a public key; the host key must be private")
    return key


# -- authentication ----------------------------------------------------------


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """
    The keys of an OpenSSH C{authorized_keys} file, read at every login, for
    any user name: the key is the identity.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def getAuthorizedKeys(self, username: bytes) -> list[keys.Key]:
        try:
            return read_authorized_keys(self.path)
        except ValueError as error:
            _log.error("Manhole login refused: {error}", error=str(error))
            return []


class _LoggingKeyChecker(SSHPublicKeyChecker):
    """
    L{SSHPublicKeyChecker} that logs who logged in, with which key.
    """

    def requestAvatarId(self, credentials):
        result = super().requestAvatarId(credentials)

        def logged_in(avatar_id):
            _log.info(
                "Manhole login by {user!r} with key {fingerprint}",
                user=avatar_id.decode("utf-8", "replace"),
                fingerprint=fingerprint(keys.Key.fromString(credentials.blob)),
            )
            return avatar_id

        def refused(failure):
            if not failure.check(ValidPublicKey):
                _log.info(
                    "Manhole login refused for {user!r}: {reason}",
                    user=credentials.username.decode("utf-8", "replace"),
                    reason=failure.getErrorMessage(),
                )
            return failure

        return result.addCallbacks(logged_in, refused)


# -- the SSH side ------------------------------------------------------------


class _ManholeInterpreter(manhole.ManholeInterpreter):
    """
    An interpreter for one command line run with C{ssh host 'command'}: it
    remembers whether anything failed, for the exit status.
    """

    failed = False

    def showtraceback(self):
        self.failed = True
        super().showtraceback()

    def showsyntaxerror(self, filename=None, **kwargs):
        self.failed = True
        super().showsyntaxerror(filename, **kwargs)

    def displayhook(self, obj):
        super().displayhook(obj)
        if obj is not None:
            self.write("\n")


class _Collector:
    """
    Collects the output of L{_ManholeInterpreter}.
    """

    def __init__(self) -> None:
        self.parts: list[str] = []

    def addOutput(self, data, isAsync=None) -> None:
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        self.parts.append(data)


class _ManholeSession(TerminalSession):
    """
    Conch's terminal session, completed: a shell without a pty gets an
    80x24 terminal, window changes reach the prompt, EOF on the channel
    logs out, and C{ssh host 'command'} runs that command and exits.
    """

    width, height = 80, 24
    _proto = None
    _terminal = None

    def __init__(self, original, *, namespace_factory, reactor) -> None:
        super().__init__(original)
        self.namespace_factory = namespace_factory
        self.reactor = reactor

    def openShell(self, proto):
        self._proto = proto
        self._terminal = self.chainedProtocolFactory()
        self.transportFactory(
            proto,
            self._terminal,
            IConchUser(self.original),
            self.width,
            self.height,
        )

    def windowChanged(self, newWindowSize):
        self.height, self.width = newWindowSize[:2]
        terminal = self._terminal
        if terminal is not None and terminal.terminalProtocol is not None:
            terminal.terminalProtocol.terminalSize(self.width, self.height)

    def eofReceived(self):
        if self._proto is not None:
            self._proto.processEnded(Failure(ProcessDone(None)))

    def execCommand(self, proto, cmd):
        output = _Collector()
        interpreter = _ManholeInterpreter(output, self.namespace_factory(), "<ssh>")
        for line in [*cmd.decode("utf-8", "replace").splitlines(), ""]:
            interpreter.push(line.encode("utf-8"))
            if output.parts and not output.parts[-1].endswith("\n"):
                output.parts.append("\n")
        proto.write("".join(output.parts).encode("utf-8"))
        status = (
            ProcessTerminated(exitCode=1) if interpreter.failed else ProcessDone(None)
        )
        # The channel may close only after the exec request is answered.
        self.reactor.callLater(0, proto.processEnded, Failure(status))


class _ManholeRealm(TerminalRealm):
    """
    Conch's terminal realm with L{_ManholeSession} sessions and a colored
    manhole prompt on a fresh namespace for each login.
    """

    def __init__(self, namespace_factory, reactor) -> None:
        super().__init__()
        self.sessionFactory = functools.partial(
            _ManholeSession, namespace_factory=namespace_factory, reactor=reactor
        )

        def terminal():
            return insults.ServerProtocol(manhole.ColoredManhole, namespace_factory())

        self.chainedProtocolFactory = terminal


class _ManholeTransport(SSHServerTransport):
    def connectionMade(self):
        self.factory.connections.add(self)
        peer = self.transport.getPeer()
        _log.info(
            "Manhole connection from {host}:{port}",
            host=getattr(peer, "host", peer),
            port=getattr(peer, "port", ""),
        )
        super().connectionMade()

    def connectionLost(self, reason):
        self.factory.connections.discard(self)
        super().connectionLost(reason)

    def receiveError(self, reasonCode, description):
        # Conch logs every disconnection as an error, a plain logout too.
        if reasonCode == DISCONNECT_BY_APPLICATION:
            _log.info("Manhole client disconnected")
        else:
            super().receiveError(reasonCode, description)


class ManholeFactory(ConchFactory):
    """
    Conch's factory with host keys of its own: C{ConchFactory.publicKeys}
    and C{privateKeys} are class attributes shared by every instance, so
    each instance gets fresh dictionaries.

    @ivar connections: the SSH connections open now.
    """

    protocol = _ManholeTransport
    noisy = False

    def __init__(self, portal: Portal, host_key: keys.Key | None = None) -> None:
        super().__init__(portal)
        self.publicKeys: dict[bytes, keys.Key] = {}
        self.privateKeys: dict[bytes, keys.Key] = {}
        self.connections: set[_ManholeTransport] = set()
        if host_key is not None:
            self.set_host_key(host_key)

    def set_host_key(self, key: keys.Key) -> None:
        """
        Serve C{key} (a private key) as this factory's only host key.
        """
        self.publicKeys.clear()
        self.privateKeys.clear()
        self.publicKeys[key.sshType()] = key.public()
        self.privateKeys[key.sshType()] = key


class ManholeService(Service):
    """
    The SSH manhole as a service: on start, load (or create) the host key,
    log its fingerprint and listen; on stop, close the port and every
    connection.

    Both happen in C{privilegedStartService}, so with C{twistd -u/-g} a
    privileged port works and the key is created by the same user that
    will read it on the next start.

    @param endpoint: an C{IStreamServerEndpoint}.
    @param keys_path: the C{authorized_keys} file.
    @param state_dir: where the host key lives.
    @param namespace_factory: called with no argument for each login; returns
        the namespace dictionary of that prompt.
    @param reactor: the reactor (used for scheduling only).
    @param allow_remote: whether a non-loopback bound address is acceptable.

    @ivar factory: the L{ManholeFactory}.
    @ivar port: the listening port once started, else L{None}.
    @ivar host_key: the host key once started, else L{None}.
    """

    def __init__(
        self,
        endpoint,
        keys_path: str,
        state_dir: str,
        namespace_factory,
        reactor,
        *,
        allow_remote: bool = False,
    ) -> None:
        self._endpoint = endpoint
        self._state_dir = state_dir
        self._allow_remote = allow_remote
        self._waiting: list[defer.Deferred] = []
        self.keys_path = keys_path
        checker = _LoggingKeyChecker(AuthorizedKeysFile(keys_path))
        realm = _ManholeRealm(namespace_factory, reactor)
        self.factory = ManholeFactory(Portal(realm, [checker]))
        self.port = None
        self.host_key = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None:
            return
        self.host_key = load_or_create_host_key(self._state_dir)
        self.factory.set_host_key(self.host_key)
        outcome: list = []
        self._endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:
            raise RuntimeError("the manhole endpoint did not listen at once")
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        self._listening(outcome[0])

    def _listening(self, port) -> None:
        host = port.getHost()
        if isinstance(host, (IPv4Address, IPv6Address)):
            if not self._allow_remote and not _is_loopback(host.host):
                port.stopListening()
                raise ValueError(
                    f"the manhole is bound to {host.host}, which is not loopback: "
                    "listen on 127.0.0.1 or allow remote logins explicitly"
                )
            where = f"[{host.host}]:{host.port}" if ":" in host.host else (
                f"{host.host}:{host.port}"
            )
        else:
            where = str(getattr(host, "name", host))
        self.port = port
        _log.info(
            "SSH manhole listening on {address}, host key {fingerprint} "
            "(ed25519, {path}), keys from {keys}",
            address=where,
            fingerprint=fingerprint(self.host_key),
            path=os.path.join(self._state_dir, HOST_KEY_NAME),
            keys=self.keys_path,
        )
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(port)

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def when_listening(self) -> defer.Deferred:
        """
        A L{Deferred} that fires with the listening port.
        """
        if self.port is not None:
            return defer.succeed(self.port)
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    def stopService(self):
        super().stopService()
        for connection in list(self.factory.connections):
            connection.transport.loseConnection()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def manhole_service(
    endpoint: str,
    keys_path: str,
    state_dir: str,
    namespace_factory,
    reactor,
    *,
    allow_remote: bool = False,
) -> ManholeService:
    """
    The manhole service for an endpoint description such as
    C{tcp:2222:interface=127.0.0.1}, after the checks of L{check_endpoint}.

    @raise ValueError: the description is bad or not loopback.
    """
    check_endpoint(endpoint, allow_remote)
    return ManholeService(
        endpoints.serverFromString(reactor, endpoint),
        keys_path,
        state_dir,
        namespace_factory,
        reactor,
        allow_remote=allow_remote,
    )


# -- the namespace -----------------------------------------------------------


class _Text(str):
    """
    Text that the prompt shows as it is (not as a quoted string).
    """

    def __repr__(self) -> str:
        return str(self)


class _Counters(dict):
    """
    The server counters: a dictionary, shown as an aligned table.
    """

    def __repr__(self) -> str:
        if not self:
            return "(no counters yet)"
        width = max(map(len, self))
        return "\n".join(f"{name:<{width}}  {value}" for name, value in self.items())


def _address(address) -> str:
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


_LIMITS = {field.name for field in dataclasses.fields(Limits)}

#: Each live setting: its type, its bounds, and whether it lives in the
#: L{Limits} of the settings.
_SETTING_RULES = {
    name: (kind, low, high, name in _LIMITS)
    for name, (kind, low, high) in SETTING_BOUNDS.items()
}


class LiveSettings:
    """
    The server's settings, read and changed as attributes
    (C{settings.max_blksize = 1428}); new transfers use the new values,
    running ones keep theirs.  Values are checked: a bad one raises and
    changes nothing.
    """

    __slots__ = ("_server",)

    def __init__(self, server) -> None:
        object.__setattr__(self, "_server", server)

    def __dir__(self):
        return list(_SETTING_RULES)

    def __getattr__(self, name: str):
        rule = _SETTING_RULES.get(name)
        if rule is None:
            raise AttributeError(
                f"no setting {name!r}; the settings are: {', '.join(_SETTING_RULES)}"
            )
        settings = self._server.settings
        return getattr(settings.limits if rule[3] else settings, name)

    def __setattr__(self, name: str, value) -> None:
        rule = _SETTING_RULES.get(name)
        if rule is None:
            raise AttributeError(
                f"no setting {name!r}; the settings are: {', '.join(_SETTING_RULES)}"
            )
        kind, low, high, group = rule
        if isinstance(value, bool) or not isinstance(
            value, (int, float) if kind is float else int
        ):
            raise TypeError(f"{name} must be {kind.__name__}, not {value!r}")
        if not low <= value <= high:
            raise ValueError(f"{name} must be from {low} to {high}, not {value!r}")
        value = kind(value)
        settings = self._server.settings
        old = getattr(self, name)
        if group:
            settings.limits = dataclasses.replace(settings.limits, **{name: value})
        else:
            setattr(settings, name, value)
        _log.info(
            "Operator changed {setting} from {old} to {new}; new transfers use it",
            setting=name,
            old=old,
            new=value,
        )

    def __repr__(self) -> str:
        return "\n".join(f"{name:<16} {getattr(self, name)}" for name in _SETTING_RULES)


class OperatorNamespace:
    """
    The helpers of the manhole prompt, for one L{tftpd_tx.server.TFTPServer}.

    L{as_dict} makes the namespace of a prompt; every helper returns text (or
    a dictionary) that the prompt shows as a table, so it is as easy to read
    as to test.

    @param server: the L{tftpd_tx.server.TFTPServer}.
    @param clock: the C{IReactorTime} its sessions use (for ages).
    """

    def __init__(self, server, clock) -> None:
        self.server = server
        self.clock = clock
        self.settings = LiveSettings(server)

    def as_dict(self) -> dict:
        """
        A fresh namespace: the live objects and the helpers.
        """
        server = self.server
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
            "help": self.help,
        }

    def _state(self) -> str:
        count = len(self.server.sessions)
        if self.server.draining:
            return (
                f"DRAINING: new requests are ignored; {count} transfer(s) in "
                "flight; resume() to accept again"
            )
        return f"serving: {count} transfer(s) in flight"

    def ls(self) -> _Text:
        """List the live transfers and whether the server is draining."""
        now = self.clock.seconds()
        rows = []
        for session_id, session in sorted(self.server.sessions.items()):
            stats = session.stats
            if stats.size:
                progress = f"{_size(stats.bytes_sent)}/{_size(stats.size)}"
                progress += f" {100 * stats.bytes_sent // stats.size}%"
            else:
                progress = f"{_size(stats.bytes_sent)}/{_size(stats.size)}"
            last_ack = stats.last_ack_time
            rows.append(
                [
                    str(session_id),
                    _address(session.peer),
                    _address(stats.local_addr or stats.server_addr),
                    stats.file_path,
                    str(session.blocks_acknowledged),
                    str(stats.blksize),
                    str(stats.windowsize),
                    progress,
                    str(stats.retransmits),
                    _seconds(now - stats.start_time),
                    _seconds(None if last_ack is None else now - last_ack),
                ]
            )
        header = [
            "ID", "PEER", "LOCAL", "PATH", "BLOCK", "BLKSIZE", "WINDOW",
            "SENT/TOTAL", "RETX", "AGE", "LAST-ACK",
        ]  # fmt: skip
        text = self._state()
        if rows:
            text += "\n" + _table(header, rows)
        return _Text(text)

    def _session(self, session_id):
        session = self.server.sessions.get(session_id)
        if session is None or session.ended:
            return None
        return session

    def show(self, session_id: int) -> _Text:
        """Everything about one live transfer, its SessionStats included."""
        session = self._session(session_id)
        if session is None:
            return _Text(f"No live transfer {session_id!r}; ls() lists them")
        now = self.clock.seconds()
        stats = session.stats
        lines = [
            f"transfer {session_id}: {stats.file_path!r} to {_address(session.peer)}",
            f"  age {_seconds(now - stats.start_time)}, "
            f"{session.blocks_acknowledged} block(s) acknowledged, last ACK "
            + (
                "none yet"
                if stats.last_ack_time is None
                else f"{_seconds(now - stats.last_ack_time)} ago"
            ),
            "  SessionStats:",
        ]
        values = [(f.name, getattr(stats, f.name)) for f in dataclasses.fields(stats)]
        values += [
            ("duration", stats.duration),
            ("handler_latency", stats.handler_latency),
        ]
        width = max(len(name) for name, _ in values)
        for name, value in values:
            shown = repr(value)
            if name.endswith("_time") and value is not None:
                shown += f" ({_seconds(now - value)} ago)"
            lines.append(f"    {name:<{width}}  {shown}")
        return _Text("\n".join(lines))

    def kill(self, session_id: int) -> _Text:
        """End a transfer: its client gets ERROR 0 'terminated by operator'."""
        session = self._session(session_id)
        if session is None:
            return _Text(f"No live transfer {session_id!r}; ls() lists them")
        stats = session.stats
        session.abort(KILL_MESSAGE)
        self.server.stats.increment("sessions.killed")
        _log.info(
            "Operator killed transfer {session_id}: {path!r} to {peer}",
            session_id=session_id,
            path=stats.file_path,
            peer=session.peer,
        )
        return _Text(
            f"Killed transfer {session_id}: {stats.file_path!r} to "
            f"{_address(session.peer)} ({stats.bytes_sent} bytes sent)"
        )

    def counters(self) -> _Counters:
        """The server counters, by name (a dict; not reset)."""
        return _Counters(sorted(self.server.stats.counters.items()))

    def drain(self) -> _Text:
        """Ignore new requests (clients retry elsewhere); running ones finish."""
        self.server.drain()
        return _Text(self._state())

    def resume(self) -> _Text:
        """Accept new requests again after drain()."""
        self.server.resume()
        return _Text(self._state())

    def help(self, thing=None) -> _Text:
        """This list; help(thing) shows the documentation of thing."""
        if thing is not None:
            return _Text(pydoc.render_doc(thing, renderer=pydoc.plaintext))
        helpers = [self.ls, self.show, self.kill, self.counters, self.drain,
                   self.resume, self.help]  # fmt: skip
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
            "               " + ", ".join(_SETTING_RULES),
        ]
        return _Text("\n".join(lines))


def _first_line(function) -> str:
    return (function.__doc__ or "").strip().splitlines()[0]


def make_namespace(server, clock) -> dict:
    """
    A fresh manhole namespace for C{server}; C{clock} is the C{IReactorTime}
    its transfers run on.
    """
    return OperatorNamespace(server, clock).as_dict()

"""
The operator's SSH manhole: a Python prompt inside the running server.

An operator logs in with an SSH key listed in an OpenSSH C{authorized_keys}
file and gets a Python prompt whose namespace, made by the caller (usually
L{tftpd_tx.operator.make_namespace}), holds the live server and a few helpers
(C{help()} lists them)::

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
    ignored rather than half-honoured.  As sshd's C{StrictModes} does, the
    file is refused unless it and every directory above it (links resolved)
    are owned by root or the server's user and writable by no one else (a
    root-owned sticky directory such as C{/tmp} is fine): checked at start
    and at every login.
  - A connection that has not logged in after L{LOGIN_TIMEOUT} seconds is
    closed, and past L{MAX_UNAUTHENTICATED} such connections new ones are
    closed at once: idle connections cannot pile up and take the
    descriptors the TFTP transfers need.
  - The host key is an ed25519 key created on first start in the state
    directory (mode 0600) and reused after, so its fingerprint, logged at
    start, stays the same.
  - L{tftpd_tx.endpoints.check_endpoint} refuses a listening address that is not loopback unless
    the operator says C{allow_remote}; the service checks the bound address
    again once listening.

C{ssh -p 2222 127.0.0.1 'ls()'} runs one line and prints its result as
plain text, for scripts.

This module holds the SSH side only: the configuration checks, the host
key, authentication and Conch's glue.  Nothing here waits on the network or
a terminal: the only file read at login is the small keys file, and the
prompt never reads standard input (the namespace's C{help()} returns text).
"""

from __future__ import annotations

import functools
import os
import pwd
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

from .endpoints import check_endpoint, is_loopback
from .logbudget import OccasionalLine

__all__ = [
    "HOST_KEY_NAME",
    "LOGIN_TIMEOUT",
    "MAX_UNAUTHENTICATED",
    "AuthorizedKeysFile",
    "ManholeFactory",
    "ManholeService",
    "check_state_dir",
    "default_state_dir",
    "fingerprint",
    "load_or_create_host_key",
    "manhole_service",
    "read_authorized_keys",
]

#: The host key's file name in the state directory (its public half has
#: C{.pub} appended, as ssh-keygen does).
HOST_KEY_NAME = "manhole_host_ed25519_key"

#: Seconds a connection may take to log in before it is closed.
LOGIN_TIMEOUT = 30.0

#: The most connections that have not logged in yet at once; past it, new
#: connections are closed at once.
MAX_UNAUTHENTICATED = 16

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


def _who(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _check_keys_directories(real: str, path: str, owners: set[int]) -> None:
    """
    Check every directory above C{real} (the keys file C{path}, its links
    resolved), from the root down: owned by one of C{owners} and writable by
    no one else, unless it is a root-owned sticky directory such as C{/tmp},
    where no one else can rename what lies in it.

    @raise ValueError: naming the first directory at fault and the fix.
    """
    directories = []
    directory = os.path.dirname(real)
    while True:
        directories.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for directory in reversed(directories):
        info = os.stat(directory)
        if info.st_uid not in owners:
            raise ValueError(
                f"{path!r} lies in {directory!r}, owned by {_who(info.st_uid)}, who "
                "could replace it and log in: keep the keys file in directories "
                "owned by root or the server's user"
            )
        mode = stat.S_IMODE(info.st_mode)
        sticky = mode & stat.S_ISVTX and info.st_uid == 0
        if mode & 0o022 and not sticky:
            raise ValueError(
                f"{path!r} lies in {directory!r}, which other users may write to, "
                f"so they could replace it and log in: chmod go-w {directory}, or "
                "keep the keys file elsewhere"
            )


def read_authorized_keys(path: str, user: int | None = None) -> list[keys.Key]:
    """
    The public keys in an OpenSSH C{authorized_keys} file.

    The file is read only if no one but root and the server's user can
    change what it says, as sshd's C{StrictModes} has it: with its links
    resolved, the file and every directory above it are owned by root or
    C{user}, and writable by no one else (a root-owned sticky directory,
    such as C{/tmp}, is fine).  The file is checked once open, so the file
    checked is the file read.

    Blank lines and comments are skipped; a line that is not a plain key
    (options such as C{from=} included, since they would not be enforced) is
    logged and skipped.

    @param user: the server's user id; the process's effective one by
        default (C{twistd -u} gives another at start, before it switches).
    @raise ValueError: the file is missing, unsafe, unreadable or holds no
        key; the message says how to fix it.
    """
    owners = {0, os.geteuid() if user is None else user}
    real = os.path.realpath(path)
    try:
        _check_keys_directories(real, path, owners)
        # O_NONBLOCK: opening a FIFO put there must not wait for a writer.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with open(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(
                    f"{path!r} is not a file: point to an authorized_keys file"
                )
            if info.st_uid not in owners:
                raise ValueError(
                    f"{path!r} is owned by {_who(info.st_uid)}, who could then "
                    f"log in: chown root {path} (or the server's user)"
                )
            if stat.S_IMODE(info.st_mode) & 0o022:
                raise ValueError(
                    f"{path!r} may be written by other users, who could then log "
                    f"in: chmod go-w {path}"
                )
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
    The keys of an OpenSSH C{authorized_keys} file, read (and its safety
    checked, see L{read_authorized_keys}) at every login, for any user name:
    the key is the identity.  While the file is missing or unsafe nobody
    gets in; the reason is logged once, when it appears or changes, not at
    every login.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._problem: str | None = None

    def getAuthorizedKeys(self, username: bytes) -> list[keys.Key]:
        try:
            found = read_authorized_keys(self.path)
        except ValueError as error:
            if str(error) != self._problem:
                self._problem = str(error)
                _log.error("Manhole logins refused: {error}", error=self._problem)
            return []
        if self._problem is not None:
            self._problem = None
            _log.info("Manhole keys file {path} usable again", path=self.path)
        return found


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
    """
    Conch's server transport, counted by its factory while it has not logged
    in, and closed if it has not logged in after the factory's
    C{login_timeout}.
    """

    _login_timer = None

    def connectionMade(self):
        factory = self.factory
        factory.connections.add(self)
        factory.unauthenticated.add(self)
        self._login_timer = factory.clock.callLater(
            factory.login_timeout, self._login_timed_out
        )
        peer = self.transport.getPeer()
        _log.info(
            "Manhole connection from {host}:{port}",
            host=getattr(peer, "host", peer),
            port=getattr(peer, "port", ""),
        )
        super().connectionMade()

    def setService(self, service):
        super().setService(service)
        # Conch's user authentication sets the avatar just before it starts
        # the service that follows a login.
        if hasattr(self, "avatar"):
            self._logged_in()

    def _logged_in(self) -> None:
        self.factory.unauthenticated.discard(self)
        if self._login_timer is not None:
            if self._login_timer.active():
                self._login_timer.cancel()
            self._login_timer = None

    def _login_timed_out(self) -> None:
        self._login_timer = None
        peer = self.transport.getPeer()
        _log.info(
            "Manhole connection from {host}:{port} closed: no login within {timeout}s",
            host=getattr(peer, "host", peer),
            port=getattr(peer, "port", ""),
            timeout=self.factory.login_timeout,
        )
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self._logged_in()
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
    Conch's factory with host keys of its own (C{ConchFactory.publicKeys}
    and C{privateKeys} are class attributes shared by every instance, so
    each instance gets fresh dictionaries), and bounds on the connections
    that have not logged in: each is closed after C{login_timeout} seconds
    (Conch's own timeout is hours, and starts only after the key exchange),
    and past C{max_unauthenticated} of them new connections are closed at
    once, which is logged at most once every 10 seconds.

    @param portal: the portal that checks logins.
    @param host_key: the private host key, or L{None} to set it later with
        L{set_host_key}.
    @param clock: the C{IReactorTime} of the timeouts.
    @param login_timeout: seconds a connection may take to log in.
    @param max_unauthenticated: the most connections not logged in at once.

    @ivar connections: the SSH connections open now.
    @ivar unauthenticated: those of them that have not logged in.
    """

    protocol = _ManholeTransport
    noisy = False

    def __init__(
        self,
        portal: Portal,
        host_key: keys.Key | None = None,
        *,
        clock,
        login_timeout: float = LOGIN_TIMEOUT,
        max_unauthenticated: int = MAX_UNAUTHENTICATED,
    ) -> None:
        super().__init__(portal)
        self.publicKeys: dict[bytes, keys.Key] = {}
        self.privateKeys: dict[bytes, keys.Key] = {}
        self.connections: set[_ManholeTransport] = set()
        self.unauthenticated: set[_ManholeTransport] = set()
        self.clock = clock
        self.login_timeout = login_timeout
        self.max_unauthenticated = max_unauthenticated
        self._refusals = OccasionalLine(clock, 10.0)
        if host_key is not None:
            self.set_host_key(host_key)

    def buildProtocol(self, addr):
        if len(self.unauthenticated) < self.max_unauthenticated:
            return super().buildProtocol(addr)
        held = self._refusals.allow()
        if held is not None:
            _log.warn(
                "Manhole connection from {host} refused: {count} connections "
                "have not logged in yet, the most allowed ({held} more refused "
                "since the last such line)",
                host=getattr(addr, "host", addr),
                count=len(self.unauthenticated),
                held=held,
            )
        # No protocol: the connection is closed at once.
        return None

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
    @param login_timeout: seconds a connection may take to log in.
    @param max_unauthenticated: the most connections not logged in at once.

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
        login_timeout: float = LOGIN_TIMEOUT,
        max_unauthenticated: int = MAX_UNAUTHENTICATED,
    ) -> None:
        self._endpoint = endpoint
        self._state_dir = state_dir
        self._allow_remote = allow_remote
        self._waiting: list[defer.Deferred] = []
        self.keys_path = keys_path
        checker = _LoggingKeyChecker(AuthorizedKeysFile(keys_path))
        realm = _ManholeRealm(namespace_factory, reactor)
        self.factory = ManholeFactory(
            Portal(realm, [checker]),
            clock=reactor,
            login_timeout=login_timeout,
            max_unauthenticated=max_unauthenticated,
        )
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
            if not self._allow_remote and not is_loopback(host.host):
                port.stopListening()
                raise ValueError(
                    f"the manhole is bound to {host.host}, which is not loopback: "
                    "listen on 127.0.0.1 or allow remote logins explicitly"
                )
            where = (
                f"[{host.host}]:{host.port}"
                if ":" in host.host
                else (f"{host.host}:{host.port}")
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
    login_timeout: float = LOGIN_TIMEOUT,
    max_unauthenticated: int = MAX_UNAUTHENTICATED,
) -> ManholeService:
    """
    The manhole service for an endpoint description such as
    C{tcp:2222:interface=127.0.0.1}, after the checks of L{check_endpoint};
    the other arguments are those of L{ManholeService}.

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
        login_timeout=login_timeout,
        max_unauthenticated=max_unauthenticated,
    )

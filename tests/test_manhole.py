"""
The operator manhole without SSH: its configuration checks, its host key,
its authentication, its prompt on an in-memory terminal and the
C{twistd tftp --manhole} options.  The helpers at the prompt are those of
L{tftpd_tx.operator}, tested in test_operator.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import shutil
import stat
import tempfile

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.error import ValidPublicKey
from twisted.conch.interfaces import IConchUser
from twisted.conch.manhole_ssh import ConchFactory
from twisted.conch.ssh import keys
from twisted.conch.ssh.service import SSHService
from twisted.cred.credentials import ISSHPrivateKey, SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone, ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx import endpoints, manhole, tap, wire
from tftpd_tx.operator import make_namespace
from tftpd_tx.server import TFTPServer
from tftpd_tx.testing import FakeUDPReactor, MemoryHandler


def make_key() -> keys.Key:
    return keys.Key(Ed25519PrivateKey.generate())


def temporary_directory(testcase) -> str:
    path = tempfile.mkdtemp(prefix="tftpd_tx-manhole-")
    testcase.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def write_keys(path: str, *lines: str | bytes) -> str:
    with open(path, "wb") as file:
        for line in lines:
            file.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    os.chmod(path, 0o600)
    return path


def public_line(key: keys.Key) -> bytes:
    return key.public().toString("openssh") + b" operator@example"


#: Another user, to own what the server's user does not.
NOBODY = pwd.getpwnam("nobody").pw_uid


def as_root(testcase) -> None:
    """
    Skip C{testcase} unless it runs as root, which may give files away.
    """
    if os.geteuid() != 0:
        raise testcase.skipTest("only root can make a file another user's")


class DefaultStateDirTests(SynchronousTestCase):
    """
    Where the host key lives by default.
    """

    def test_systemd(self):
        """
        systemd's C{$STATE_DIRECTORY} wins (its first entry when it lists
        several).
        """
        environ = {"STATE_DIRECTORY": "/var/lib/tftpd:/var/lib/other", "HOME": "/h"}
        self.assertEqual(manhole.default_state_dir(environ), "/var/lib/tftpd")

    def test_xdg(self):
        """
        Otherwise C{$XDG_STATE_HOME/tftpd_tx}.
        """
        environ = {"XDG_STATE_HOME": "/h/state"}
        self.assertEqual(manhole.default_state_dir(environ), "/h/state/tftpd_tx")

    def test_home(self):
        """
        Otherwise C{~/.local/state/tftpd_tx}.
        """
        self.assertEqual(
            manhole.default_state_dir({}),
            os.path.expanduser("~/.local/state/tftpd_tx"),
        )


class HostKeyTests(SynchronousTestCase):
    """
    The host key: created once, kept private, reused.
    """

    def setUp(self):
        self.directory = os.path.join(temporary_directory(self), "state")
        self.path = os.path.join(self.directory, manhole.HOST_KEY_NAME)

    def test_created_private(self):
        """
        On first use an ed25519 key is written with mode 0600 in a directory
        created with mode 0700, with its public half beside it.
        """
        with capturedLogs() as events:
            key = manhole.load_or_create_host_key(self.directory)
        self.assertEqual(key.sshType(), b"ssh-ed25519")
        self.assertFalse(key.isPublic())
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode), 0o700)
        with open(self.path + ".pub", "rb") as file:
            self.assertEqual(keys.Key.fromString(file.read()), key.public())
        self.assertEqual(
            [e["fingerprint"] for e in events if "fingerprint" in e],
            [manhole.fingerprint(key)],
        )

    def test_reused(self):
        """
        The next start loads the same key: the fingerprint stays.
        """
        first = manhole.load_or_create_host_key(self.directory)
        second = manhole.load_or_create_host_key(self.directory)
        self.assertEqual(first, second)
        self.assertEqual(manhole.fingerprint(first), manhole.fingerprint(second))

    def test_readable_by_others(self):
        """
        A key other users can read is refused, with the chmod that fixes it.
        """
        manhole.load_or_create_host_key(self.directory)
        os.chmod(self.path, 0o644)
        exc = self.assertRaises(
            ValueError, manhole.load_or_create_host_key, self.directory
        )
        self.assertIn(f"chmod 600 {self.path}", str(exc))

    def test_not_a_key(self):
        """
        A damaged key file is refused with the way out.
        """
        os.makedirs(self.directory)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"garbage")
        os.close(fd)
        exc = self.assertRaises(
            ValueError, manhole.load_or_create_host_key, self.directory
        )
        self.assertIn("remove it", str(exc))

    def test_fingerprint_as_openssh_prints_it(self):
        """
        The fingerprint is C{SHA256:} and the unpadded base64 digest of the
        public key blob, as C{ssh-keygen -l} prints it.
        """
        key = make_key()
        digest = hashlib.sha256(key.public().blob()).digest()
        expected = "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
        self.assertEqual(manhole.fingerprint(key), expected)


class AuthorizedKeysTests(SynchronousTestCase):
    """
    Reading the operators' C{authorized_keys} file.
    """

    def setUp(self):
        self.directory = temporary_directory(self)
        self.path = os.path.join(self.directory, "authorized_keys")

    def test_keys(self):
        """
        Every key line is read; comments and blank lines are skipped.
        """
        one, two = make_key(), make_key()
        write_keys(self.path, "# operators", public_line(one), "", public_line(two))
        self.assertEqual(
            manhole.read_authorized_keys(self.path), [one.public(), two.public()]
        )

    def test_missing(self):
        """
        A missing file is refused with how to create it.
        """
        exc = self.assertRaises(ValueError, manhole.read_authorized_keys, self.path)
        self.assertIn("does not exist", str(exc))
        self.assertIn(f">> {self.path}", str(exc))

    def test_empty(self):
        """
        A file with no key (empty, or only comments) is refused.
        """
        for lines in [(), ("# nobody yet", "")]:
            write_keys(self.path, *lines)
            exc = self.assertRaises(ValueError, manhole.read_authorized_keys, self.path)
            self.assertIn("holds no public key", str(exc))

    def test_writable_by_others(self):
        """
        A keys file other users may write to is refused: they could add
        their own key.
        """
        write_keys(self.path, public_line(make_key()))
        os.chmod(self.path, 0o666)
        exc = self.assertRaises(ValueError, manhole.read_authorized_keys, self.path)
        self.assertIn(f"chmod go-w {self.path}", str(exc))

    def test_options_lines_ignored(self):
        """
        A key with options (from=, command=) would not have them enforced,
        so its line is skipped and logged.
        """
        key, restricted = make_key(), make_key()
        write_keys(
            self.path,
            b'from="10.0.0.1" ' + public_line(restricted),
            public_line(key),
        )
        with capturedLogs() as events:
            found = manhole.read_authorized_keys(self.path)
        self.assertEqual(found, [key.public()])
        self.assertEqual([e["number"] for e in events if "number" in e], [1])

    def test_read_at_every_login(self):
        """
        L{AuthorizedKeysFile} reads the file each time: keys added later are
        accepted without a restart, for any user name.
        """
        one, two = make_key(), make_key()
        write_keys(self.path, public_line(one))
        db = manhole.AuthorizedKeysFile(self.path)
        self.assertEqual(list(db.getAuthorizedKeys(b"alice")), [one.public()])
        write_keys(self.path, public_line(one), public_line(two))
        self.assertEqual(
            list(db.getAuthorizedKeys(b"bob")), [one.public(), two.public()]
        )

    def test_file_removed_later(self):
        """
        If the file disappears while running, nobody gets in, and the reason
        is logged.
        """
        write_keys(self.path, public_line(make_key()))
        db = manhole.AuthorizedKeysFile(self.path)
        os.remove(self.path)
        with capturedLogs() as events:
            self.assertEqual(list(db.getAuthorizedKeys(b"alice")), [])
        self.assertTrue([e for e in events if "error" in e])


class KeysFileSafetyTests(SynchronousTestCase):
    """
    The keys file is read only if no one but root and the server's user can
    change what it says: neither the file nor any directory above it.
    """

    def setUp(self):
        self.directory = temporary_directory(self)
        self.key = make_key()

    def keys_in(self, directory: str, mode: int = 0o700) -> str:
        """
        Make C{directory} (with C{mode}) and a keys file with one key in it.
        """
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, mode)
        return write_keys(
            os.path.join(directory, "authorized_keys"), public_line(self.key)
        )

    def assertRead(self, path: str, user=None):
        self.assertEqual(manhole.read_authorized_keys(path, user), [self.key.public()])

    def assertRefused(self, path: str, *fragments: str, user=None):
        exc = self.assertRaises(ValueError, manhole.read_authorized_keys, path, user)
        for fragment in fragments:
            self.assertIn(fragment, str(exc))

    def test_private(self):
        """
        A file of mode 0600 in directories only its owner may write is read.
        """
        self.assertRead(self.keys_in(os.path.join(self.directory, "keys")))

    def test_readable_by_others(self):
        """
        Others may read the file and the directories (public keys are
        public): only writing matters.
        """
        path = self.keys_in(os.path.join(self.directory, "keys"), 0o755)
        os.chmod(path, 0o644)
        self.assertRead(path)

    def test_file_writable_by_group(self):
        """
        A file its group may write is refused, with the chmod that fixes it.
        """
        path = self.keys_in(os.path.join(self.directory, "keys"))
        os.chmod(path, 0o620)
        self.assertRefused(path, "may be written by other users", f"chmod go-w {path}")

    def test_directory_writable_by_others(self):
        """
        A directory above the file that others may write is refused, naming
        it and the fix: they could rename their own file over the keys file.
        """
        shared = os.path.join(self.directory, "shared")
        path = self.keys_in(os.path.join(shared, "keys"))
        os.chmod(shared, 0o777)
        self.assertRefused(path, f"lies in {shared!r}", f"chmod go-w {shared}")
        os.chmod(shared, 0o775)
        self.assertRefused(path, f"chmod go-w {shared}")

    def test_sticky_root_directory(self):
        """
        A root-owned sticky directory that everyone may write, such as
        C{/tmp}, is fine: no one else may rename what lies in it.
        """
        if os.stat(self.directory).st_uid != 0:
            raise self.skipTest("needs a root-owned directory")
        sticky = os.path.join(self.directory, "tmp")
        path = self.keys_in(sticky, 0o1777)
        self.assertRead(path)

    def test_file_of_another_user(self):
        """
        A file owned by neither root nor the server's user is refused,
        naming its owner and the chown that fixes it.
        """
        as_root(self)
        path = self.keys_in(os.path.join(self.directory, "keys"))
        os.chown(path, NOBODY, -1)
        self.assertRefused(
            path, f"owned by nobody (uid {NOBODY})", f"chown root {path}"
        )

    def test_file_of_the_server_user(self):
        """
        The server's user may own the file (and its directories).
        """
        as_root(self)
        directory = os.path.join(self.directory, "keys")
        path = self.keys_in(directory)
        os.chown(path, NOBODY, -1)
        os.chown(directory, NOBODY, -1)
        self.assertRead(path, user=NOBODY)

    def test_directory_of_another_user(self):
        """
        A directory above the file owned by another user is refused, naming
        the directory and its owner: that user could replace the file.
        """
        as_root(self)
        theirs = os.path.join(self.directory, "theirs")
        path = self.keys_in(os.path.join(theirs, "keys"))
        os.chmod(theirs, 0o755)
        os.chown(theirs, NOBODY, -1)
        self.assertRefused(path, f"lies in {theirs!r}, owned by nobody (uid {NOBODY})")

    def test_sticky_directory_of_another_user(self):
        """
        A sticky directory everyone may write is fine only when root owns
        it: its owner could rename anything in it.
        """
        as_root(self)
        sticky = os.path.join(self.directory, "sticky")
        path = self.keys_in(os.path.join(sticky, "keys"))
        os.chmod(sticky, 0o1777)
        os.chown(sticky, NOBODY, -1)
        self.assertRefused(path, f"lies in {sticky!r}, owned by nobody")

    def test_links_resolved_first(self):
        """
        Links are resolved before the checks: a link in an unsafe directory
        to a safe file is read, and a link in a safe directory to a file in
        an unsafe one is refused, naming the directory the file is in.
        """
        safe = self.keys_in(os.path.join(self.directory, "safe"))
        shared = os.path.join(self.directory, "shared")
        unsafe = self.keys_in(os.path.join(shared, "keys"))
        os.chmod(shared, 0o777)
        to_safe = os.path.join(shared, "link")
        os.symlink(safe, to_safe)
        self.assertRead(to_safe)
        to_unsafe = os.path.join(self.directory, "safe", "link")
        os.symlink(unsafe, to_unsafe)
        self.assertRefused(to_unsafe, f"lies in {shared!r}")

    def test_not_a_file(self):
        """
        A FIFO (or anything but a plain file) is refused without waiting
        for a writer.
        """
        path = os.path.join(self.directory, "fifo")
        os.mkfifo(path, 0o600)
        self.assertRefused(path, "is not a file")

    def test_unsafe_at_login_logged_once(self):
        """
        At login, an unsafe keys file lets nobody in; the reason is logged
        when it first appears, not at every login, and again once the file
        has been usable in between.
        """
        shared = os.path.join(self.directory, "shared")
        path = self.keys_in(os.path.join(shared, "keys"))
        db = manhole.AuthorizedKeysFile(path)
        os.chmod(shared, 0o777)
        with capturedLogs() as events:
            self.assertEqual(list(db.getAuthorizedKeys(b"alice")), [])
            self.assertEqual(list(db.getAuthorizedKeys(b"alice")), [])
            os.chmod(shared, 0o700)
            self.assertEqual(list(db.getAuthorizedKeys(b"bob")), [self.key.public()])
            os.chmod(shared, 0o777)
            self.assertEqual(list(db.getAuthorizedKeys(b"bob")), [])
        errors = [e["error"] for e in events if "error" in e]
        self.assertEqual(len(errors), 2)
        self.assertIn(f"chmod go-w {shared}", errors[0])


class AuthenticationTests(SynchronousTestCase):
    """
    Who gets in: holders of a listed key, by public key only.
    """

    def setUp(self):
        self.directory = temporary_directory(self)
        self.operator = make_key()
        keys_path = write_keys(
            os.path.join(self.directory, "authorized_keys"),
            public_line(self.operator),
        )
        self.service = manhole.ManholeService(
            None, keys_path, self.directory, dict, Clock()
        )
        self.portal = self.service.factory.portal

    def credentials(self, key, signed=True):
        data = b"session data"
        return SSHPrivateKey(
            b"alice",
            b"ssh-ed25519",
            key.public().blob(),
            data,
            key.sign(data) if signed else None,
        )

    def test_public_key_only(self):
        """
        The only credentials the portal takes are SSH keys: the server
        offers no password and no keyboard-interactive login.
        """
        self.assertEqual(self.portal.listCredentialsInterfaces(), [ISSHPrivateKey])

    def test_listed_key(self):
        """
        A listed key with a good signature logs in, and the login is logged
        with the key's fingerprint.
        """
        with capturedLogs() as events:
            result = self.successResultOf(
                self.portal.checkers[ISSHPrivateKey].requestAvatarId(
                    self.credentials(self.operator)
                )
            )
        self.assertEqual(result, b"alice")
        self.assertIn(
            manhole.fingerprint(self.operator),
            [e.get("fingerprint") for e in events],
        )

    def test_other_key(self):
        """
        A key that is not listed is refused.
        """
        checker = self.portal.checkers[ISSHPrivateKey]
        failure = self.failureResultOf(
            checker.requestAvatarId(self.credentials(make_key()))
        )
        failure.trap(UnauthorizedLogin)

    def test_unsigned_query(self):
        """
        A client asking whether a key would do (no signature yet) gets the
        SSH "yes, sign it" answer, which is not logged as a refusal.
        """
        checker = self.portal.checkers[ISSHPrivateKey]
        with capturedLogs() as events:
            failure = self.failureResultOf(
                checker.requestAvatarId(self.credentials(self.operator, signed=False))
            )
        failure.trap(ValidPublicKey)
        self.assertEqual([e for e in events if "reason" in e], [])


class FactoryTests(SynchronousTestCase):
    """
    The Conch factory keeps its host keys to itself.
    """

    def test_own_key_dictionaries(self):
        """
        Two factories serve their own host keys, and Conch's class-level
        dictionaries stay untouched.
        """
        one, two = make_key(), make_key()
        first = manhole.ManholeFactory(None, one, clock=Clock())
        second = manhole.ManholeFactory(None, two, clock=Clock())
        self.assertEqual(first.privateKeys, {b"ssh-ed25519": one})
        self.assertEqual(second.privateKeys, {b"ssh-ed25519": two})
        self.assertEqual(first.publicKeys, {b"ssh-ed25519": one.public()})
        self.assertEqual(ConchFactory.publicKeys, {})
        self.assertEqual(ConchFactory.privateKeys, {})


class FakeSSHPeer(StringTransport):
    """
    A TCP connection to the manhole, in memory.
    """

    def __init__(self):
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))


class UnauthenticatedConnectionTests(SynchronousTestCase):
    """
    Connections that have not logged in are closed after a timeout, and only
    so many are let in at once.
    """

    def setUp(self):
        self.clock = Clock()
        self.factory = manhole.ManholeFactory(
            None,
            make_key(),
            clock=self.clock,
            login_timeout=30,
            max_unauthenticated=2,
        )
        self.factory.doStart()
        self.addCleanup(self.factory.doStop)
        self.address = IPv4Address("TCP", "127.0.0.1", 50000)

    def connect(self):
        """
        A new connection: its protocol and transport, or L{None} for the
        protocol if the factory refused it.
        """
        protocol = self.factory.buildProtocol(self.address)
        transport = FakeSSHPeer()
        if protocol is not None:
            protocol.makeConnection(transport)
        return protocol, transport

    def log_in(self, protocol):
        """
        Do what Conch's user authentication does once a key is accepted.
        """
        protocol.avatar = object()
        protocol.logoutFunction = lambda: None
        protocol.setService(SSHService())

    def test_defaults(self):
        """
        By default a connection has 30 seconds to log in, and 16 may be
        waiting to at once.
        """
        self.assertEqual(manhole.LOGIN_TIMEOUT, 30)
        self.assertEqual(manhole.MAX_UNAUTHENTICATED, 16)
        factory = manhole.ManholeFactory(None, clock=self.clock)
        self.assertEqual(factory.login_timeout, manhole.LOGIN_TIMEOUT)
        self.assertEqual(factory.max_unauthenticated, manhole.MAX_UNAUTHENTICATED)

    def test_idle_closed(self):
        """
        A connection that has not logged in within the timeout is closed,
        and that is logged.
        """
        protocol, transport = self.connect()
        self.assertTrue(transport.value().startswith(b"SSH-2.0-"))
        self.clock.advance(29.9)
        self.assertFalse(transport.disconnecting)
        with capturedLogs() as events:
            self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertEqual([e["timeout"] for e in events if "timeout" in e], [30])
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.unauthenticated, set())
        self.assertEqual(self.factory.connections, set())

    def test_logged_in_stays(self):
        """
        A connection that logged in is no longer timed, nor counted against
        the cap.
        """
        protocol, transport = self.connect()
        self.log_in(protocol)
        self.clock.advance(3600)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.factory.unauthenticated, set())
        self.assertEqual(self.factory.connections, {protocol})

    def test_closed_before_timeout(self):
        """
        A connection that goes away leaves no timer behind.
        """
        protocol, _ = self.connect()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cap(self):
        """
        Past the cap of connections not logged in, a new connection is
        closed at once (no protocol), logged at most once every 10 seconds
        with the count of those refused meanwhile; once one has logged in or
        gone, a new connection is let in again.
        """
        first, _ = self.connect()
        second, _ = self.connect()
        with capturedLogs() as events:
            refused = [self.connect()[0] for _ in range(3)]
            self.clock.advance(10)
            refused.append(self.connect()[0])
        self.assertEqual(refused, [None] * 4)
        self.assertEqual([e["held"] for e in events if "held" in e], [0, 2])
        self.log_in(first)
        third, _ = self.connect()
        self.assertIsNotNone(third)
        self.assertIsNone(self.connect()[0])
        second.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(self.connect()[0])


class FakeListeningPort:
    def __init__(self, host):
        self.host = host
        self.listening = True

    def getHost(self):
        return self.host

    def stopListening(self):
        self.listening = False


class FakeEndpoint:
    def __init__(self, host):
        self.port = FakeListeningPort(host)
        self.factories = []

    def listen(self, factory):
        self.factories.append(factory)
        return succeed(self.port)


class ServiceTests(SynchronousTestCase):
    """
    L{ManholeService}: host key and listening port, start and stop.
    """

    def setUp(self):
        self.directory = temporary_directory(self)
        self.keys_path = write_keys(
            os.path.join(self.directory, "authorized_keys"), public_line(make_key())
        )
        self.state = os.path.join(self.directory, "state")

    def service(self, host, **kwargs):
        endpoint = FakeEndpoint(host)
        return endpoint, manhole.ManholeService(
            endpoint, self.keys_path, self.state, dict, Clock(), **kwargs
        )

    def test_start_logs_fingerprint(self):
        """
        Starting creates the host key, serves it, listens, and logs the
        address and the key's fingerprint.
        """
        endpoint, service = self.service(IPv4Address("TCP", "127.0.0.1", 2222))
        with capturedLogs() as events:
            service.privilegedStartService()
            service.startService()
        key = manhole.load_or_create_host_key(self.state)
        self.assertEqual(endpoint.factories, [service.factory])
        self.assertEqual(service.factory.privateKeys, {b"ssh-ed25519": key})
        self.assertIs(self.successResultOf(service.when_listening()), endpoint.port)
        (event,) = [e for e in events if "address" in e]
        self.assertEqual(event["address"], "127.0.0.1:2222")
        self.assertEqual(event["fingerprint"], manhole.fingerprint(key))
        service.stopService()
        self.assertFalse(endpoint.port.listening)

    def test_same_fingerprint_after_restart(self):
        """
        A second service on the same state directory serves the same key.
        """
        _, first = self.service(IPv4Address("TCP", "127.0.0.1", 2222))
        first.startService()
        first.stopService()
        _, second = self.service(IPv4Address("TCP", "127.0.0.1", 2222))
        second.startService()
        self.assertEqual(first.host_key, second.host_key)

    def test_bound_to_remote_address(self):
        """
        If the port turns out bound to an address that is not loopback, the
        service stops listening and refuses to start.
        """
        endpoint, service = self.service(IPv4Address("TCP", "0.0.0.0", 2222))
        exc = self.assertRaises(ValueError, service.privilegedStartService)
        self.assertIn("not loopback", str(exc))
        self.assertFalse(endpoint.port.listening)

    def test_remote_allowed(self):
        """
        With C{allow_remote}, any address is accepted.
        """
        endpoint, service = self.service(
            IPv4Address("TCP", "192.0.2.7", 2222), allow_remote=True
        )
        service.startService()
        self.assertTrue(endpoint.port.listening)
        service.stopService()


class FakeProcessProtocol:
    """
    Stands for the SSH channel a session writes to.
    """

    def __init__(self):
        self.data = b""
        self.ended = []

    def write(self, data):
        self.data += data

    def processEnded(self, reason):
        self.ended.append(reason)


class SessionTests(SynchronousTestCase):
    """
    The SSH session glue, without SSH.
    """

    def setUp(self):
        self.clock = Clock()
        namespace = {"answer": lambda: 42}
        self.session = manhole._ManholeSession(
            None, namespace_factory=lambda: dict(namespace), reactor=self.clock
        )

    def test_command(self):
        """
        C{ssh host 'command'} runs the command in a fresh namespace, writes
        each result on its own line and exits 0 once the request is answered.
        """
        proto = FakeProcessProtocol()
        self.session.execCommand(proto, b"answer(); answer() + 1\nx = 3\nx")
        self.assertEqual(proto.data, b"42\n43\n3\n")
        self.assertEqual(proto.ended, [])
        self.clock.advance(0)
        (reason,) = proto.ended
        reason.trap(ProcessDone)

    def test_failing_command(self):
        """
        A command that raises shows its traceback and exits 1.
        """
        proto = FakeProcessProtocol()
        self.session.execCommand(proto, b"1/0")
        self.clock.advance(0)
        self.assertIn(b"ZeroDivisionError", proto.data)
        (reason,) = proto.ended
        reason.trap(ProcessTerminated)
        self.assertEqual(reason.value.exitCode, 1)

    def test_shell_without_pty(self):
        """
        A shell asked for without a pty gets an 80x24 prompt, and EOF from
        the client logs out with exit status 0.
        """
        terminals = []

        def transport_factory(proto, chained, avatar, width, height):
            terminals.append((width, height))

        user = Componentized()
        user.setComponent(IConchUser, object())
        session = manhole._ManholeSession(user, namespace_factory=dict, reactor=None)
        session.transportFactory = transport_factory
        session.chainedProtocolFactory = object
        proto = FakeProcessProtocol()
        session.openShell(proto)
        self.assertEqual(terminals, [(80, 24)])
        session.eofReceived()
        (reason,) = proto.ended
        reason.trap(ProcessDone)


class PromptTests(SynchronousTestCase):
    """
    The helpers at Conch's manhole prompt, on an in-memory terminal.
    """

    def test_ls_at_the_prompt(self):
        """
        Typing C{ls()} shows the table itself, one line per row.
        """
        from twisted.conch.insults import insults

        reactor = FakeUDPReactor()
        server = TFTPServer(MemoryHandler({"small.cfg": b"x"}), reactor=reactor)
        listener = reactor.listenUDP(69, server, interface="0.0.0.0")
        request = wire.ReadRequest("small.cfg", "octet", {}).encode()
        listener.deliver(request, ("198.51.100.20", 3000), "192.0.2.1")
        namespace = make_namespace(server, reactor)
        transport = StringTransport()
        terminal = insults.ServerProtocol(manhole.manhole.ColoredManhole, namespace)
        terminal.makeConnection(transport)
        transport.clear()
        terminal.dataReceived(b"ls()\r")
        output = transport.value()
        self.assertIn(b"\r\nserving: 1 transfer(s) in flight\r\nID  ", output)
        self.assertNotIn(b"'serving", output)


class CheckEndpointTests(SynchronousTestCase):
    """
    L{check_endpoint}: loopback unless told otherwise, and well-formed.
    """

    def test_loopback(self):
        """
        TCP on a loopback address and UNIX sockets are accepted.
        """
        for description in [
            "tcp:2222:interface=127.0.0.1",
            "tcp:0:interface=127.0.0.2",
            "tcp6:2222:interface=\\:\\:1",
            "tcp:port=2222:interface=127.0.0.1",
            "tcp:2222:127.0.0.1",
            "tcp:2222:127.0.0.1:50",
            "unix:/run/tftpd_tx/manhole.sock",
        ]:
            endpoints.check_endpoint(description)

    def test_not_loopback(self):
        """
        Every address, or a real interface, is refused, naming
        --manhole-allow-remote; with it, they are accepted.
        """
        for description in [
            "tcp:2222",
            "tcp:2222:interface=0.0.0.0",
            "tcp:2222:interface=192.0.2.1",
            "tcp:2222:192.0.2.1",
            "tcp6:2222",
            "tcp6:2222:interface=\\:\\:",
        ]:
            exc = self.assertRaises(ValueError, endpoints.check_endpoint, description)
            self.assertIn("--manhole-allow-remote", str(exc))
            endpoints.check_endpoint(description, allow_remote=True)

    def test_unknown_kind(self):
        """
        An endpoint whose address cannot be told (systemd, ...) needs
        --manhole-allow-remote.
        """
        # Parsing a systemd endpoint needs sockets from systemd: pretend.
        self.patch(manhole.endpoints, "serverFromString", lambda reactor, text: None)
        description = "systemd:domain=INET:index=0"
        exc = self.assertRaises(ValueError, endpoints.check_endpoint, description)
        self.assertIn("--manhole-allow-remote", str(exc))
        endpoints.check_endpoint(description, allow_remote=True)

    def test_malformed(self):
        """
        A description that is not an endpoint is refused, even with
        allow_remote, with an example of one.
        """
        for description in ["nonsense:1", "tcp:notaport", "tcp"]:
            exc = self.assertRaises(
                ValueError, endpoints.check_endpoint, description, True
            )
            self.assertIn("tcp:2222:interface=127.0.0.1", str(exc))


class TapOptionsTests(SynchronousTestCase):
    """
    C{twistd tftp --manhole ...}: off by default, checked before starting.
    """

    def setUp(self):
        self.directory = temporary_directory(self)
        self.keys_path = write_keys(
            os.path.join(self.directory, "authorized_keys"), public_line(make_key())
        )
        self.state = os.path.join(self.directory, "state")

    def parse(self, *arguments):
        options = tap.Options()
        options.parseOptions(["--root", self.directory, "--port", "0", *arguments])
        return options

    def manhole_arguments(self, endpoint="tcp:0:interface=127.0.0.1", keys=None):
        return [
            "--manhole",
            endpoint,
            "--manhole-keys",
            keys or self.keys_path,
            "--state-dir",
            self.state,
        ]

    def test_off_by_default(self):
        """
        Without --manhole there is no manhole service (and no keys needed).
        """
        options = self.parse("--manhole-keys", "/nonexistent")
        service = tap.makeService(options)
        self.assertRaises(KeyError, service.getServiceNamed, "manhole")
        self.assertEqual(len(list(service)), 1)

    def test_manhole_service(self):
        """
        With --manhole the service joins the TFTP listener, with the keys
        file and state directory given.
        """
        options = self.parse(*self.manhole_arguments())
        service = tap.makeService(options).getServiceNamed("manhole")
        self.assertIsInstance(service, manhole.ManholeService)
        self.assertEqual(service.keys_path, self.keys_path)
        self.assertFalse(os.path.exists(self.state))

    def test_default_paths(self):
        """
        The keys file defaults to ~/.ssh/authorized_keys and the state
        directory to the default one, both expanded.
        """
        home = temporary_directory(self)
        os.mkdir(os.path.join(home, ".ssh"))
        keys_path = os.path.join(home, ".ssh", "authorized_keys")
        write_keys(keys_path, public_line(make_key()))
        self.patch(os, "environ", {"HOME": home})
        options = self.parse("--manhole", "tcp:2222:interface=127.0.0.1")
        self.assertEqual(options["manhole-keys"], keys_path)
        self.assertEqual(
            options["state-dir"], os.path.join(home, ".local", "state", "tftpd_tx")
        )

    def assertUsage(self, arguments, *fragments):
        exc = self.assertRaises(usage.UsageError, self.parse, *arguments)
        for fragment in fragments:
            self.assertIn(fragment, str(exc))

    def test_missing_keys(self):
        """
        A missing keys file stops the start, naming the option and the fix.
        """
        self.assertUsage(
            self.manhole_arguments(keys=os.path.join(self.directory, "nope")),
            "--manhole-keys",
            "does not exist",
            "id_ed25519.pub",
        )

    def test_empty_keys(self):
        """
        An empty keys file stops the start.
        """
        empty = write_keys(os.path.join(self.directory, "empty"))
        self.assertUsage(
            self.manhole_arguments(keys=empty), "--manhole-keys", "holds no public key"
        )

    def test_unsafe_keys_directory(self):
        """
        A keys file in a directory others may write stops the start, naming
        --manhole-keys and the fix.
        """
        shared = os.path.join(self.directory, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o777)
        keys_path = write_keys(os.path.join(shared, "keys"), public_line(make_key()))
        self.assertUsage(
            self.manhole_arguments(keys=keys_path),
            "--manhole-keys",
            f"chmod go-w {shared}",
        )

    def test_keys_of_the_twistd_user(self):
        """
        The keys file may belong to the user C{twistd -u} will run the
        server as; without C{-u}, to root or this process's user only.
        """
        as_root(self)
        os.chown(self.keys_path, NOBODY, -1)
        self.assertUsage(self.manhole_arguments(), "--manhole-keys", "chown root")
        options = tap.Options()
        options.parent = {"uid": NOBODY}
        options.parseOptions(
            ["--root", self.directory, "--port", "0", *self.manhole_arguments()]
        )
        self.assertEqual(options["manhole-keys"], self.keys_path)

    def test_remote_address(self):
        """
        A non-loopback address stops the start unless
        --manhole-allow-remote is given.
        """
        arguments = self.manhole_arguments("tcp:2222:interface=0.0.0.0")
        self.assertUsage(arguments, "--manhole 'tcp:2222", "--manhole-allow-remote")
        options = self.parse(*arguments, "--manhole-allow-remote")
        self.assertTrue(options["manhole-allow-remote"])

    def test_bad_endpoint(self):
        """
        A malformed endpoint stops the start.
        """
        self.assertUsage(
            self.manhole_arguments("tcp:twenty-two"),
            "--manhole",
            "not a server endpoint",
        )

    def test_host_key_readable_by_others(self):
        """
        An existing host key that other users can read stops the start.
        """
        manhole.load_or_create_host_key(self.state)
        key_path = os.path.join(self.state, manhole.HOST_KEY_NAME)
        os.chmod(key_path, 0o640)
        self.assertUsage(
            self.manhole_arguments(), "--state-dir", f"chmod 600 {key_path}"
        )

    def test_unusable_state_dir(self):
        """
        A state directory under a plain file cannot hold the host key.
        """
        blocker = write_keys(os.path.join(self.directory, "file"))
        arguments = self.manhole_arguments()
        arguments[-1] = os.path.join(blocker, "state")
        self.assertUsage(arguments, "--state-dir", "not a directory")

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
import shutil
import stat
import tempfile

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.error import ValidPublicKey
from twisted.conch.interfaces import IConchUser
from twisted.conch.manhole_ssh import ConchFactory
from twisted.conch.ssh import keys
from twisted.cred.credentials import ISSHPrivateKey, SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx import manhole, tap, wire
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
        first = manhole.ManholeFactory(None, one)
        second = manhole.ManholeFactory(None, two)
        self.assertEqual(first.privateKeys, {b"ssh-ed25519": one})
        self.assertEqual(second.privateKeys, {b"ssh-ed25519": two})
        self.assertEqual(first.publicKeys, {b"ssh-ed25519": one.public()})
        self.assertEqual(ConchFactory.publicKeys, {})
        self.assertEqual(ConchFactory.privateKeys, {})


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
            manhole.check_endpoint(description)

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
            exc = self.assertRaises(ValueError, manhole.check_endpoint, description)
            self.assertIn("--manhole-allow-remote", str(exc))
            manhole.check_endpoint(description, allow_remote=True)

    def test_unknown_kind(self):
        """
        An endpoint whose address cannot be told (systemd, ...) needs
        --manhole-allow-remote.
        """
        # Parsing a systemd endpoint needs sockets from systemd: pretend.
        self.patch(manhole.endpoints, "serverFromString", lambda reactor, text: None)
        description = "systemd:domain=INET:index=0"
        exc = self.assertRaises(ValueError, manhole.check_endpoint, description)
        self.assertIn("--manhole-allow-remote", str(exc))
        manhole.check_endpoint(description, allow_remote=True)

    def test_malformed(self):
        """
        A description that is not an endpoint is refused, even with
        allow_remote, with an example of one.
        """
        for description in ["nonsense:1", "tcp:notaport", "tcp"]:
            exc = self.assertRaises(
                ValueError, manhole.check_endpoint, description, True
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

"""
The manhole end to end: the real OpenSSH client logs in to a manhole served
by this process and steers real transfers made by the real tftp-hpa client.

Everything listens on 127.0.0.1, on ports the system picks.  The content is
served slowly (each block is read after a timer) so that a transfer is
reliably in flight while the operator looks at it; the test lets it go at
full speed when it wants it finished.  Nothing sleeps: every wait polls the
reactor with a deadline.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from tftpd_tx.content import FileNotFound
from tftpd_tx.manhole import HOST_KEY_NAME, manhole_service
from tftpd_tx.operator import make_namespace
from tftpd_tx.service import TFTPService

from clients import require_program, spawn

#: Under CI every program must be there: a missing one is a broken .ci/run.
IN_CI = os.environ.get("CI") == "true"

#: Seconds between two reads of paced content: 512-byte blocks at 25 KB/s.
PACE = 0.02

#: Big enough never to finish at that pace while a test looks at it.
BIG = bytes(range(256)) * 4096
SMALL = b"default local\n" * 300

_ANSI = re.compile(rb"\x1b(\[[0-9;?]*[A-Za-z]|[()][0-9A-Za-z]|[78=>cDEHM])")


# -- slow content ---------------------------------------------------------------


class PacedResponse:
    """
    Content whose every read answers after L{PACE} seconds, until the
    handler is released; then reads answer at once.
    """

    def __init__(self, handler: PacedHandler, content: bytes) -> None:
        self._handler = handler
        self._content = content
        self._offset = 0
        self._timer = None

    def size(self) -> int:
        return len(self._content)

    def _chunk(self, n: int) -> bytes:
        chunk = self._content[self._offset : self._offset + n]
        self._offset += len(chunk)
        return chunk

    def read(self, n: int):
        if self._handler.released:
            return self._chunk(n)

        def cancel(deferred):
            if self._timer is not None and self._timer.active():
                self._timer.cancel()

        later = Deferred(cancel)
        self._timer = reactor.callLater(PACE, lambda: later.callback(self._chunk(n)))
        return later

    def close(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


class PacedHandler:
    """
    Serve C{files} slowly until L{release}.
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.released = False

    def get_response_data(self, request):
        try:
            return PacedResponse(self, self.files[request.normalized_path])
        except KeyError:
            raise FileNotFound() from None

    def release(self) -> None:
        """
        From now on, serve at full speed.
        """
        self.released = True


# -- processes --------------------------------------------------------------------


class RawConnection(Protocol):
    """
    A TCP client that only listens: what it received, and a Deferred that
    fires when the connection is closed.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.closed.callback(reactor.seconds())

    def close(self):
        """
        Close the connection if it is open; fires once it is closed.
        """
        if not self.closed.called:
            self.transport.loseConnection()
        return self.closed


@dataclass
class Transcript:
    """
    What a process printed, as text with terminal escape sequences and
    carriage returns removed, and how it exited.
    """

    out: str
    err: str
    code: int | None

    @classmethod
    def of(cls, result) -> "Transcript":
        def text(raw: bytes) -> str:
            return _ANSI.sub(b"", raw).replace(b"\r", b"").decode("utf-8", "replace")

        return cls(text(result.out), text(result.err), result.code)

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}"


class ManholeOverSSHTests(TestCase):
    """
    An operator with the real C{ssh} client, a server with live transfers
    made by the real C{tftp} client.
    """

    timeout = 90

    def setUp(self):
        self.ssh = require_program("ssh")
        self.ssh_keygen = require_program("ssh-keygen")
        self.tftp = require_program("tftp")
        self.directory = tempfile.mkdtemp(prefix="tftpd_tx-manhole-ssh-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.processes = []
        self.addCleanup(self._stop_processes)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.directory,
            "LANG": "C",
        }
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        return ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        self.key = await self.make_key("operator")
        self.keys_path = os.path.join(self.directory, "authorized_keys")
        shutil.copy(self.key + ".pub", self.keys_path)
        os.chmod(self.keys_path, 0o600)
        self.state = os.path.join(self.directory, "state")
        self.handler = PacedHandler({"big.bin": BIG, "small.cfg": SMALL})
        self.tftp_service = TFTPService(self.handler, port=0, interface="127.0.0.1")
        self.tftp_service.privilegedStartService()
        self.tftp_service.startService()
        self.addCleanup(self.tftp_service.stopService)
        self.server = self.tftp_service.server
        self.manhole = self.start_manhole()
        self.known_hosts = os.path.join(self.directory, "known_hosts")

    def start_manhole(self, **options):
        service = manhole_service(
            "tcp:0:interface=127.0.0.1",
            self.keys_path,
            self.state,
            functools.partial(make_namespace, self.server, reactor),
            reactor,
            **options,
        )
        service.startService()
        self.addCleanup(service.stopService)
        return service

    # -- helpers ----------------------------------------------------------------

    def spawn(self, argv: list[str], stdin: bytes = b"", env=None):
        """
        Start a process; its C{ended} fires with a L{Transcript}.
        """
        process = spawn(
            argv, cwd=self.directory, env=self.env if env is None else env, stdin=stdin
        )
        process.ended.addCallback(Transcript.of)
        self.processes.append(process)
        return process

    async def _stop_processes(self) -> None:
        for process in self.processes:
            if not process.ended.called:
                process.signal("KILL")
                await process.ended

    async def run_process(self, argv: list[str], stdin=b"", env=None) -> Transcript:
        return await self.spawn(argv, stdin, env).ended

    async def make_key(self, name: str) -> str:
        path = os.path.join(self.directory, name)
        result = await self.run_process(
            [self.ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", path]
        )
        self.assertEqual(result.code, 0, str(result))
        return path

    def ssh_argv(self, *options: str, key: str | None = None, port=None) -> list[str]:
        port = port or self.manhole.port.getHost().port
        # ssh keeps the first value given for an option: C{options} first.
        return [
            self.ssh, *options, "-F", "/dev/null", "-p", str(port),
            "-i", key or self.key,
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR",
            "operator@127.0.0.1",
        ]  # fmt: skip

    async def prompt(self, *lines: str) -> str:
        """
        Log in with a terminal, type C{lines} at the prompt, log out with
        EOF; return what the terminal showed, without escape sequences.
        """
        stdin = "".join(line + "\n" for line in lines).encode()
        result = await self.run_process(self.ssh_argv("-tt"), stdin)
        self.assertEqual(result.code, 0, str(result))
        return result.out

    def fetch(self, remote: str):
        """
        Start the tftp client on C{remote}: it retransmits every second and
        gives up after 30.  Return the process and the local file name.
        """
        local = os.path.join(self.directory, "got-" + remote)
        script = (
            f"verbose\nmode octet\nrexmt 1\ntimeout 30\nget {remote} {local}\nquit\n"
        )
        port = self.tftp_service.port.getHost().port
        return self.spawn([self.tftp, "127.0.0.1", str(port)], script.encode()), local

    async def until(self, predicate, what: str, timeout: float = 20.0) -> None:
        """
        Poll C{predicate} with the reactor until it is true.
        """
        deadline = reactor.seconds() + timeout
        while not predicate():
            if reactor.seconds() > deadline:
                self.fail(f"timed out waiting for {what}")
            await deferLater(reactor, 0.02)

    def transfer_of(self, path: str):
        for session in list(self.server.sessions.values()):
            if session.stats.file_path == path:
                return session
        return None

    async def in_flight(self, path: str):
        """
        Wait until a transfer of C{path} has had a block acknowledged.
        """
        await self.until(
            lambda: (s := self.transfer_of(path)) is not None and s.blocks_acknowledged,
            f"a transfer of {path} in flight",
        )
        return self.transfer_of(path)

    async def restart_manhole(self, **options) -> None:
        """
        Stop the manhole and start another with C{options}.
        """
        await self.manhole.stopService()
        self.manhole = self.start_manhole(**options)

    async def connect_raw(self) -> RawConnection:
        """
        Open a TCP connection to the manhole that never says anything.
        """
        endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", self.manhole.port.getHost().port
        )
        connection = await connectProtocol(endpoint, RawConnection())
        self.addCleanup(connection.close)
        return connection

    def read(self, path: str) -> bytes:
        with open(path, "rb") as file:
            return file.read()

    # -- the tests ----------------------------------------------------------------

    def test_ls_show_and_kill(self):
        """
        C{ls()} shows a transfer in flight with its peer; C{show(id)} its
        details; C{kill(id)} ends it and its client reports "terminated by
        operator"; C{counters()} counts the kill.
        """
        return ensureDeferred(self._ls_show_and_kill())

    async def _ls_show_and_kill(self) -> None:
        client, _ = self.fetch("big.bin")
        session = await self.in_flight("big.bin")
        peer = f"{session.peer[0]}:{session.peer[1]}"

        listing = await self.prompt("ls()")
        self.assertIn("serving: 1 transfer(s) in flight", listing)
        (row,) = [line for line in listing.splitlines() if "big.bin" in line]
        cells = row.split()
        session_id = cells[0]
        self.assertEqual(session_id, str(session.session_id))
        self.assertEqual(cells[1], peer)
        self.assertIn("/1.0M", cells[7])

        shown = await self.prompt(
            f"show({session_id})", f"kill({session_id})", "counters()"
        )
        self.assertIn(f"transfer {session_id}: 'big.bin' to {peer}", shown)
        self.assertIn("size             1048576", shown)
        self.assertIn(f"Killed transfer {session_id}: 'big.bin'", shown)
        self.assertRegex(shown, r"\nsessions\.killed +1\n")

        result = await client.ended
        self.assertIn("Error code 0: terminated by operator", result.out + result.err)
        self.assertEqual(self.server.sessions, {})
        self.assertEqual(self.server.stats.counters["outcome.aborted"], 1)

    def test_drain_and_resume(self):
        """
        After C{drain()} a new request is ignored while the running transfer
        completes; after C{resume()} the ignored client's next retry is
        served.
        """
        return ensureDeferred(self._drain_and_resume())

    async def _drain_and_resume(self) -> None:
        running, running_file = self.fetch("big.bin")
        await self.in_flight("big.bin")
        drained = await self.prompt("drain()")
        self.assertIn("DRAINING: new requests are ignored", drained)

        ignored, ignored_file = self.fetch("small.cfg")
        await self.until(
            lambda: self.server.stats.counters["requests.drained"] >= 1,
            "the new request to reach the server",
        )
        listing = await self.prompt("ls()")
        self.assertIn("DRAINING: new requests are ignored; 1 transfer(s)", listing)
        self.assertIn("big.bin", listing)
        self.assertNotIn("small.cfg", listing)

        self.handler.release()
        result = await running.ended
        self.assertEqual(self.read(running_file), BIG, str(result))
        self.assertFalse(ignored.ended.called)
        self.assertIsNone(self.transfer_of("small.cfg"))
        self.assertEqual(self.server.stats.counters["outcome.completed"], 1)

        self.assertIn("serving: 0 transfer(s) in flight", await self.prompt("resume()"))
        result = await ignored.ended
        self.assertEqual(self.read(ignored_file), SMALL, str(result))
        self.assertEqual(self.server.stats.counters["outcome.completed"], 2)

    def test_command_without_terminal(self):
        """
        C{ssh host 'command'} prints the result as plain text and exits 0; a
        failing command exits 1.
        """
        return ensureDeferred(self._command_without_terminal())

    async def _command_without_terminal(self) -> None:
        result = await self.run_process(self.ssh_argv() + ["ls(); settings.retries"])
        self.assertEqual(result.code, 0, str(result))
        self.assertEqual(result.out, "serving: 0 transfer(s) in flight\n5\n")
        result = await self.run_process(self.ssh_argv() + ["settings.retries = -1"])
        self.assertEqual(result.code, 1, str(result))
        self.assertIn("ValueError: retries must be from 0 to 100", result.out)

    def test_settings_changed_live(self):
        """
        A setting changed at the prompt is what new transfers negotiate.
        """
        return ensureDeferred(self._settings_changed_live())

    async def _settings_changed_live(self) -> None:
        out = await self.prompt("settings.max_blksize = 1024", "settings")
        self.assertRegex(out, r"\nmax_blksize +1024\n")
        self.assertEqual(self.server.settings.limits.max_blksize, 1024)

    def test_wrong_key_rejected(self):
        """
        A key that is not in the authorized keys file does not get in.
        """
        return ensureDeferred(self._wrong_key_rejected())

    async def _wrong_key_rejected(self) -> None:
        stranger = await self.make_key("stranger")
        result = await self.run_process(self.ssh_argv(key=stranger) + ["ls()"])
        self.assertEqual(result.code, 255, str(result))
        self.assertIn("Permission denied (publickey)", result.err)
        self.assertNotIn("serving", result.out)

    def test_no_password_authentication(self):
        """
        A client that wants to use a password is never asked for one: the
        server offers public keys only.
        """
        return ensureDeferred(self._no_password_authentication())

    async def _no_password_authentication(self) -> None:
        asked = os.path.join(self.directory, "asked-for-a-password")
        askpass = os.path.join(self.directory, "askpass")
        with open(askpass, "w") as file:
            file.write(f"#!/bin/sh\ntouch {asked}\necho wrong\n")
        os.chmod(askpass, 0o700)
        env = dict(self.env, SSH_ASKPASS=askpass, SSH_ASKPASS_REQUIRE="force")
        argv = self.ssh_argv(
            "-o", "LogLevel=DEBUG1",
            "-o", "BatchMode=no",
            "-o", "PubkeyAuthentication=no",
            "-o", "PreferredAuthentications=password,keyboard-interactive",
        )  # fmt: skip
        result = await self.run_process(argv + ["ls()"], env=env)
        self.assertEqual(result.code, 255, str(result))
        self.assertIn("Authentications that can continue: publickey\n", result.err)
        self.assertNotIn("password", result.err.split("Authentications that")[1])
        self.assertIn("Permission denied (publickey)", result.err)
        self.assertFalse(os.path.exists(asked))

    def test_host_key_kept(self):
        """
        The host key is created in the state directory, private, with the
        fingerprint logged at start; a restarted manhole serves the same
        key, so a client that pinned it logs in with strict checking.
        """
        return ensureDeferred(self._host_key_kept())

    async def _host_key_kept(self) -> None:
        key_path = os.path.join(self.state, HOST_KEY_NAME)
        self.assertEqual(os.stat(key_path).st_mode & 0o777, 0o600)
        result = await self.run_process(
            [self.ssh_keygen, "-l", "-f", key_path + ".pub"]
        )
        openssh_fingerprint = result.out.split()[1]
        logged = [e["fingerprint"] for e in self.events if "address" in e]
        self.assertEqual(logged, [openssh_fingerprint])

        pin = ["-o", "HostKeyAlias=tftpd-manhole"]
        first = await self.run_process(
            self.ssh_argv(*pin, "-o", "StrictHostKeyChecking=accept-new") + ["1"]
        )
        self.assertEqual(first.code, 0, str(first))

        await self.manhole.stopService()
        self.manhole = self.start_manhole()
        again = await self.run_process(
            self.ssh_argv(*pin, "-o", "StrictHostKeyChecking=yes") + ["1"]
        )
        self.assertEqual(again.code, 0, str(again))
        self.assertEqual(again.out, "1\n")

    def test_idle_connection_closed(self):
        """
        A connection that never logs in is closed once the login timeout
        (1 second here, 30 by default) has passed.
        """
        return ensureDeferred(self._idle_connection_closed())

    async def _idle_connection_closed(self) -> None:
        await self.restart_manhole(login_timeout=1)
        connection = await self.connect_raw()
        opened = reactor.seconds()
        closed = await connection.closed
        self.assertTrue(connection.received.startswith(b"SSH-2.0-"))
        self.assertGreaterEqual(closed - opened, 0.9)
        self.assertLess(closed - opened, 5)
        self.assertEqual(self.manhole.factory.unauthenticated, set())

    def test_connections_over_the_cap_refused(self):
        """
        With as many connections waiting to log in as allowed (2 here, 16 by
        default), a new one is closed at once, the real ssh client's too;
        once one of them goes, an operator logs in again.
        """
        return ensureDeferred(self._connections_over_the_cap_refused())

    async def _connections_over_the_cap_refused(self) -> None:
        await self.restart_manhole(max_unauthenticated=2)
        waiting = [await self.connect_raw(), await self.connect_raw()]
        await self.until(
            lambda: all(c.received for c in waiting), "both connections greeted"
        )
        refused = await self.connect_raw()
        await refused.closed
        self.assertEqual(refused.received, b"")
        result = await self.run_process(self.ssh_argv() + ["1"])
        self.assertEqual(result.code, 255, str(result))
        self.assertFalse(any(c.closed.called for c in waiting))

        await waiting[0].close()
        await self.until(
            lambda: len(self.manhole.factory.unauthenticated) < 2,
            "the server to see the connection go",
        )
        result = await self.run_process(self.ssh_argv() + ["1"])
        self.assertEqual(result.code, 0, str(result))
        self.assertEqual(result.out, "1\n")

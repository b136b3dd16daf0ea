"""
The in-process server with the real clients people boot with: curl,
tftp-hpa, atftp and busybox, over real loopback sockets.

Every download is compared byte for byte with its source.  A missing client
skips its tests, except under C{CI=true}, where it fails them (.ci/run must
install it).  Where no installed client can show a behaviour (rollover to
block 1, the source address of a reply, hostile datagrams), a raw client
from L{clients} speaks TFTP on a UDP port in the reactor.
"""

from __future__ import annotations

import os
import socket
import stat

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

from clients import (
    atftp,
    assert_fetched,
    assert_same_bytes,
    busybox,
    curl,
    fetch,
    fetch_all,
    fetch_problem,
    ipv6_loopback_available,
    make_directory,
    open_probe,
    parse_error,
    random_file,
    read_raw,
    require_program,
    rrq,
    run,
    server_port,
    start_server,
    tftp_hpa,
)
from tftpd_tx.settings import Settings

#: A multiple of 512, 1468 and 8192 at once: at each of those block sizes
#: the transfer ends with an empty DATA block.
COMMON_MULTIPLE = 8192 * 367

#: The sizes every client downloads: empty, one byte, around one default
#: block, three 1468-byte blocks exactly, a size that fills no block size,
#: and the common multiple.
SIZES = (0, 1, 511, 512, 513, 1468 * 3, 100_000, COMMON_MULTIPLE)


def _fetch_every_size(client):
    """
    A test method: C{client} downloads a file of each of L{SIZES} intact.
    """

    async def test(self):
        await self.check_every_size(client)

    test.__doc__ = (
        f"{client} downloads files of {', '.join(map(str, SIZES))} bytes "
        "intact; the sizes that are multiples of the block size end with an "
        "empty DATA block."
    )
    return test


class FetchMatrixTests(TestCase):
    """
    Each client, with the options it can negotiate, downloads files of
    every awkward size.
    """

    timeout = 90

    def setUp(self):
        self.directory = make_directory(self)
        self.root = os.path.join(self.directory, "root")
        os.mkdir(self.root)
        self.files = {
            f"file-{size}": random_file(self.root, f"file-{size}", size)
            for size in SIZES
        }
        self.port = server_port(start_server(self, self.root))

    async def check_every_size(self, client):
        fetched = await fetch_all(
            [(client, "127.0.0.1", self.port, name) for name in self.files],
            self.directory,
        )
        problems = [
            f"{name}: {problem}"
            for name, one in zip(self.files, fetched)
            if (problem := fetch_problem(one, self.files[name])) is not None
        ]
        self.assertEqual(problems, [])

    test_curl_default = _fetch_every_size(curl())
    test_curl_blksize_1468 = _fetch_every_size(curl("--tftp-blksize", "1468"))
    test_curl_blksize_8192 = _fetch_every_size(curl("--tftp-blksize", "8192"))
    test_curl_blksize_65464 = _fetch_every_size(curl("--tftp-blksize", "65464"))
    test_curl_no_options = _fetch_every_size(curl("--tftp-no-options"))
    test_tftp_hpa_octet = _fetch_every_size(tftp_hpa())
    test_atftp_plain = _fetch_every_size(atftp())
    test_atftp_blksize_1468_windowsize_8 = _fetch_every_size(
        atftp("blksize 1468", "windowsize 8")
    )
    test_atftp_windowsize_16_blksize_512 = _fetch_every_size(
        atftp("windowsize 16", "blksize 512")
    )
    test_atftp_blksize_65464 = _fetch_every_size(atftp("blksize 65464"))
    test_busybox_plain = _fetch_every_size(busybox())
    test_busybox_blksize_1468 = _fetch_every_size(busybox("-b", "1468"))


class NetasciiTests(TestCase):
    """
    Mode netascii: the server sends CR LF for LF and CR NUL for a lone CR
    (RFC 764); tftp-hpa converts back to Unix text.
    """

    timeout = 30

    #: Text with every kind of line end: LF, CR LF and a lone CR.
    MIXED = b"one\ntwo\r\nthree\rfour\n"

    def setUp(self):
        self.directory = make_directory(self)
        self.root = os.path.join(self.directory, "root")
        os.mkdir(self.root)
        self.port = server_port(start_server(self, self.root))

    def write(self, name: str, content: bytes) -> bytes:
        with open(os.path.join(self.root, name), "wb") as f:
            f.write(content)
        return content

    async def test_lf_text_round_trips_through_tftp_hpa(self):
        """
        A Unix text file (LF line ends) fetched in netascii mode by tftp-hpa
        is identical to the original: LF went out as CR LF and came back as
        LF.  The lines are long enough that some CR LF pairs straddle a
        512-byte block boundary.
        """
        text = b"".join(
            b"line %d %s\n" % (n, b"x" * (n % 700)) for n in range(200)
        )
        self.write("unix.txt", text)
        fetched = await fetch(
            tftp_hpa("netascii"), "127.0.0.1", self.port, "unix.txt", self.directory
        )
        assert_fetched(self, fetched, text, "LF-only text")

    async def test_mixed_line_ends_round_trip_through_tftp_hpa(self):
        """
        Netascii is lossless: LF, CR LF and a lone CR all come back as they
        were, because the server encodes CR as CR NUL (so the CR of a CR LF
        is not mistaken for a line end) and tftp-hpa decodes CR NUL to CR and
        CR LF to LF.
        """
        self.write("mixed.txt", self.MIXED)
        fetched = await fetch(
            tftp_hpa("netascii"), "127.0.0.1", self.port, "mixed.txt", self.directory
        )
        assert_fetched(self, fetched, self.MIXED, "mixed line ends")

    async def test_wire_bytes(self):
        """
        On the wire, LF is CR LF and a lone CR is CR NUL; a CR LF in the file
        is a CR (as CR NUL) followed by a line end (as CR LF).
        """
        self.write("mixed.txt", self.MIXED)
        transfer = await read_raw(
            ("127.0.0.1", self.port), rrq("mixed.txt", "netascii")
        )
        self.assertIsNone(transfer.error)
        self.assertEqual(
            transfer.content, b"one\r\ntwo\r\0\r\nthree\r\0four\r\n"
        )

    async def test_expansion_across_blocks(self):
        """
        Content that grows in conversion is cut into full 512-byte blocks of
        converted bytes: 511 bytes and an LF become 513 bytes on the wire,
        one full block and a block of one byte, the LF of the CR LF.
        """
        self.write("edge.txt", b"x" * 511 + b"\n")
        transfer = await read_raw(("127.0.0.1", self.port), rrq("edge.txt", "netascii"))
        self.assertIsNone(transfer.error)
        self.assertEqual(transfer.blocks, [1, 2])
        self.assertEqual(transfer.content, b"x" * 511 + b"\r\n")


class ModeNameTests(TestCase):
    """
    Mode names are case-insensitive (RFC 1350: "NETASCII", "NetAscii").
    """

    timeout = 30

    async def test_mode_case(self):
        """
        C{OCTET} is octet and C{NetAscii} is netascii.
        """
        directory = make_directory(self)
        with open(os.path.join(directory, "text"), "wb") as f:
            f.write(b"a\nb\n")
        address = ("127.0.0.1", server_port(start_server(self, directory)))
        octet = await read_raw(address, rrq("text", "OCTET"))
        self.assertEqual((octet.error, octet.content), (None, b"a\nb\n"))
        netascii = await read_raw(address, rrq("text", "NetAscii"))
        self.assertEqual((netascii.error, netascii.content), (None, b"a\r\nb\r\n"))


class RolloverTests(TestCase):
    """
    Transfers of more than 65535 blocks: the 16-bit block number wraps.

    With the default C{rollover=0}, block 65535 is followed by block 0,
    which is what every installed client expects.  None of them follows
    C{rollover=1} (checked by hand: curl 7.88 reports "Received unexpected
    DATA packet block 1, expecting block 0", atftp 0.8.0 "got wrong block",
    tftp-hpa 5.2 times out; all stop after 65535 blocks), so rollover 1 is
    checked with the raw client.
    """

    timeout = 120

    #: 81920 blocks of 512 bytes, and a last empty one.
    SIZE = 40 * 1024 * 1024

    def setUp(self):
        self.directory = make_directory(self)
        self.root = os.path.join(self.directory, "root")
        os.mkdir(self.root)

    async def check_client(self, client):
        content = random_file(self.root, "big", self.SIZE)
        port = server_port(start_server(self, self.root))
        fetched = await fetch(client, "127.0.0.1", port, "big", self.directory)
        assert_fetched(self, fetched, content, str(client))

    async def test_curl(self):
        """
        curl downloads a 40 MiB file at blksize 512, past the wrap, intact.
        """
        await self.check_client(curl("--tftp-blksize", "512"))

    async def test_tftp_hpa(self):
        """
        tftp-hpa (no options, so blksize 512) downloads a 40 MiB file intact.
        """
        await self.check_client(tftp_hpa())

    async def test_atftp_windowed(self):
        """
        atftp with windowsize 16 at blksize 512 downloads a 40 MiB file
        intact: windows that span the wrap are acknowledged correctly.
        """
        await self.check_client(atftp("blksize 512", "windowsize 16"))

    async def test_rollover_to_one(self):
        """
        With C{Settings(rollover=1)}, block 65535 is followed by block 1,
        never by 0, and the content arrives intact.  (Raw client, blksize 8
        and a window of 64 blocks to keep the datagram count cheap.)
        """
        blocks = 65535 + 100
        content = random_file(self.root, "wraps", blocks * 8 + 3)
        service = start_server(self, self.root, settings=Settings(rollover=1))
        transfer = await read_raw(
            ("127.0.0.1", server_port(service)),
            rrq("wraps", options={"blksize": "8", "windowsize": "64"}),
            rollover=1,
        )
        self.assertIsNone(transfer.error)
        self.assertFalse(transfer.timed_out)
        self.assertEqual(transfer.oack, {"blksize": "8", "windowsize": "64"})
        self.assertEqual(transfer.blocks[65533:65537], [65534, 65535, 1, 2])
        self.assertNotIn(0, transfer.blocks)
        self.assertEqual(len(transfer.blocks), blocks + 1)
        assert_same_bytes(self, transfer.content, content, "rollover 1")


class WindowTests(TestCase):
    """
    The default limits on windowed transfers (RFC 7440) suit the receive
    buffers clients actually have.
    """

    timeout = 30

    async def test_default_window_fits_default_receive_buffer(self):
        """
        A client with Linux's default receive buffer (212992 bytes) that
        asks for blksize 65464 and windowsize 64 receives every window the
        server sends with the default limits whole: the server never has to
        retransmit.  (The server sends a window in one burst, before this
        in-process client can read, so the buffer must hold a whole window.)
        """
        directory = make_directory(self)
        content = random_file(directory, "file", 65464 * 12 + 1)
        ended: Deferred = Deferred()
        service = start_server(
            self,
            directory,
            settings=Settings(timeout=0.05),
            session_callback=ended.callback,
        )
        transfer = await read_raw(
            ("127.0.0.1", server_port(service)),
            rrq("file", options={"blksize": "65464", "windowsize": "64"}),
            timeout=0.2,
            receive_buffer=106496,
        )
        assert_same_bytes(self, transfer.content, content, "windowed transfer")
        stats = await ended
        self.assertEqual(
            stats.retransmits,
            0,
            f"window of {transfer.oack.get('windowsize')} blocks of 65464 bytes",
        )


class ConcurrencyTests(TestCase):
    """
    Many clients at once.
    """

    timeout = 90

    async def test_fifty_clients(self):
        """
        50 downloads of 50 different files, started together (mostly curl,
        with every client in the mix), all arrive intact.
        """
        directory = make_directory(self)
        root = os.path.join(directory, "root")
        os.mkdir(root)
        port = server_port(start_server(self, root))
        clients = (
            [curl(), curl("--tftp-blksize", "1468"), curl("--tftp-no-options")] * 12
            + [curl("--tftp-blksize", "8192")] * 2
            + [tftp_hpa()] * 4
            + [atftp("blksize 1468", "windowsize 8")] * 4
            + [busybox("-b", "1468")] * 4
        )
        self.assertEqual(len(clients), 50)
        files = {
            f"file-{n}": random_file(root, f"file-{n}", 20_000 + 7919 * n)
            for n in range(len(clients))
        }
        fetched = await fetch_all(
            [
                (client, "127.0.0.1", port, name)
                for client, name in zip(clients, files)
            ],
            directory,
        )
        problems = [
            f"{name}: {problem}"
            for name, one in zip(files, fetched)
            if (problem := fetch_problem(one, files[name])) is not None
        ]
        self.assertEqual(problems, [])


class IPv6Tests(TestCase):
    """
    IPv6, on its own and on the dual-stack wildcard socket.
    """

    timeout = 30

    def setUp(self):
        if not ipv6_loopback_available():
            raise SkipTest("this host has no IPv6 loopback")
        self.directory = make_directory(self)
        self.root = os.path.join(self.directory, "root")
        os.mkdir(self.root)
        self.content = random_file(self.root, "file", 100_000)

    async def check(self, interface, host):
        port = server_port(start_server(self, self.root, interface=interface))
        clients = (
            curl(),
            curl("--tftp-blksize", "1468"),
            tftp_hpa(),
            atftp("blksize 1468"),
            busybox(),
        )
        for client in clients:
            fetched = await fetch(client, host, port, "file", self.directory)
            assert_fetched(self, fetched, self.content, f"{client} via {host}")

    async def test_ipv6_only(self):
        """
        A server on C{::1} serves every client over IPv6.
        """
        await self.check("::1", "::1")

    async def test_dual_stack_over_ipv6(self):
        """
        A server on the wildcard address (C{""}: C{::} with IPv4 mapped in)
        serves every client over IPv6.
        """
        await self.check("", "::1")

    async def test_dual_stack_over_ipv4(self):
        """
        The same wildcard server serves every client over IPv4.
        """
        await self.check("", "127.0.0.1")


class ReplyAddressTests(TestCase):
    """
    On a multi-homed host, a server on the wildcard address answers from the
    address the client sent to: a client that sent to 127.0.0.2 drops
    answers from 127.0.0.1.
    """

    timeout = 30

    def setUp(self):
        self.directory = make_directory(self)
        self.root = os.path.join(self.directory, "root")
        os.mkdir(self.root)
        self.content = random_file(self.root, "file", 3000)

    async def check_data_source(self, interface):
        port = server_port(start_server(self, self.root, interface=interface))
        transfer = await read_raw(("127.0.0.2", port), rrq("file"))
        self.assertIsNone(transfer.error)
        self.assertEqual(transfer.content, self.content)
        self.assertEqual({host for host, _ in transfer.sources}, {"127.0.0.2"})
        self.assertNotIn(("127.0.0.2", port), transfer.sources)

    async def test_dual_stack_data(self):
        """
        On the dual-stack wildcard (C{""}), the DATA of a request sent to
        127.0.0.2 comes from 127.0.0.2 (and from a port of its own).
        """
        if not ipv6_loopback_available():
            raise SkipTest("this host has no IPv6: '' is IPv4-only here")
        await self.check_data_source("")

    async def test_ipv4_wildcard_data(self):
        """
        On the IPv4 wildcard C{0.0.0.0}, the DATA comes from 127.0.0.2 too.
        """
        await self.check_data_source("0.0.0.0")

    async def test_error_source(self):
        """
        An ERROR sent from the listening port (file not found) comes from
        127.0.0.2 and the server's port.
        """
        port = server_port(start_server(self, self.root, interface=""))
        transfer = await read_raw(("127.0.0.2", port), rrq("missing"))
        self.assertEqual(transfer.error, (1, "File not found"))
        self.assertEqual(transfer.sources, {("127.0.0.2", port)})

    async def test_ipv6_data_source(self):
        """
        On the dual-stack wildcard, a request over IPv6 is answered from
        C{::1}.
        """
        if not ipv6_loopback_available():
            raise SkipTest("this host has no IPv6 loopback")
        port = server_port(start_server(self, self.root, interface=""))
        transfer = await read_raw(("::1", port), rrq("file"))
        self.assertEqual(transfer.content, self.content)
        self.assertEqual({host for host, _ in transfer.sources}, {"::1"})

    async def test_curl_to_second_address(self):
        """
        curl downloads intact from the wildcard server through 127.0.0.2.
        """
        port = server_port(start_server(self, self.root, interface=""))
        fetched = await fetch(curl(), "127.0.0.2", port, "file", self.directory)
        assert_fetched(self, fetched, self.content, "curl via 127.0.0.2")


class HostileInputTests(TestCase):
    """
    Requests that try to leave the root, special files, garbage datagrams and
    write requests: each gets an ERROR (or silence), never a byte from
    outside the root, and the server keeps serving.
    """

    timeout = 60

    SECRET = b"secret outside the root\n"

    def setUp(self):
        self.base = make_directory(self)
        self.root = os.path.join(self.base, "root")
        os.mkdir(self.root)
        with open(os.path.join(self.base, "secret"), "wb") as f:
            f.write(self.SECRET)
        outside = os.path.join(self.base, "outside")
        os.mkdir(outside)
        with open(os.path.join(outside, "secret"), "wb") as f:
            f.write(self.SECRET)
        os.symlink(os.path.join(self.base, "secret"), os.path.join(self.root, "link"))
        os.symlink(outside, os.path.join(self.root, "linkdir"))
        os.mkdir(os.path.join(self.root, "sub"))
        self.content = random_file(self.root, "ok", 5000)
        self.inner = random_file(self.root, "sub/inner", 700)
        self.port = server_port(start_server(self, self.root))
        self.address = ("127.0.0.1", self.port)

    async def assert_refused(self, path, codes=(1, 2)):
        transfer = await read_raw(self.address, rrq(path), timeout=1.0, retries=2)
        self.assertFalse(transfer.timed_out, f"{path!r}: no answer")
        self.assertEqual(transfer.blocks, [], f"{path!r}: got DATA")
        self.assertEqual(transfer.content, b"")
        self.assertIsNotNone(transfer.error, f"{path!r}: no ERROR")
        self.assertIn(transfer.error[0], codes, f"{path!r}: {transfer.error}")

    async def assert_still_serving(self):
        transfer = await read_raw(self.address, rrq("ok"))
        self.assertEqual(transfer.content, self.content)
        fetched = await fetch(curl(), "127.0.0.1", self.port, "ok", self.base)
        assert_fetched(self, fetched, self.content, "curl after hostile input")

    async def test_parent_directory(self):
        """
        C{../secret} and C{sub/../../secret} are access violations.
        """
        await self.assert_refused("../secret", codes=(2,))
        await self.assert_refused("sub/../../secret", codes=(2,))

    async def test_backslashes(self):
        """
        Windows separators do not sneak past: C{..\\..\\secret} is refused.
        """
        await self.assert_refused("..\\..\\secret", codes=(2,))
        await self.assert_refused("sub\\..\\..\\secret", codes=(2,))

    async def test_absolute_paths(self):
        """
        An absolute path is read relative to the root: C{/etc/passwd} and
        the absolute path of the secret file are not found there.
        """
        await self.assert_refused("/etc/passwd", codes=(1,))
        await self.assert_refused(os.path.join(self.base, "secret"), codes=(1,))

    async def test_symlinks_out_of_the_root(self):
        """
        A symbolic link inside the root to a file outside, or to a directory
        outside, is an access violation: absolute or relative, at the end of
        the path or on the way, directly or through another link.
        """
        for target, name in [
            ("../secret", "relative"),
            ("relative", "chain"),
            ("/etc/passwd", "passwd"),
            ("../../outside", "sub/outside"),
        ]:
            os.symlink(target, os.path.join(self.root, name))
        await self.assert_refused("link", codes=(2,))
        await self.assert_refused("linkdir/secret", codes=(2,))
        await self.assert_refused("linkdir", codes=(2,))
        await self.assert_refused("relative", codes=(2,))
        await self.assert_refused("chain", codes=(2,))
        await self.assert_refused("passwd", codes=(2,))
        await self.assert_refused("sub/outside/secret", codes=(2,))

    async def test_symlinks_within_the_root(self):
        """
        Symbolic links that stay inside the root are followed: to a file,
        to a directory, and a link to itself gets an ERROR, not a hang.
        """
        os.symlink("sub/inner", os.path.join(self.root, "to-inner"))
        os.symlink("sub", os.path.join(self.root, "alias"))
        os.symlink("loop", os.path.join(self.root, "loop"))
        for path in ("to-inner", "alias/inner", "sub/../alias/inner"):
            transfer = await read_raw(self.address, rrq(path))
            self.assertEqual(
                (transfer.error, transfer.content), (None, self.inner), path
            )
        await self.assert_refused("loop", codes=(0, 1, 2))

    async def test_directories(self):
        """
        A directory, the root itself included, is not served; an empty
        file name is refused too (as a malformed request, ERROR 4, or as not
        found).
        """
        await self.assert_refused("sub")
        await self.assert_refused("/")
        await self.assert_refused("", codes=(1, 2, 4))

    async def test_fifo(self):
        """
        A FIFO in the root gets an ERROR at once (opening it does not wait
        for a writer), and the server goes on serving.
        """
        os.mkfifo(os.path.join(self.root, "pipe"))
        await self.assert_refused("pipe", codes=(2,))
        await self.assert_still_serving()

    async def test_other_special_files(self):
        """
        A Unix socket and (where this user may create one) a character
        device in the root get an ERROR and no data.
        """
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(listener.close)
        listener.bind(os.path.join(self.root, "socket"))
        await self.assert_refused("socket", codes=(2,))
        try:
            os.mknod(
                os.path.join(self.root, "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3)
            )
        except OSError:
            pass
        else:
            await self.assert_refused("null", codes=(2,))
        await self.assert_still_serving()

    async def test_unreadable_file(self):
        """
        A file its user cannot read (mode 000) is an access violation.
        """
        if os.geteuid() == 0:
            raise SkipTest("root reads mode 000 files")
        path = os.path.join(self.root, "locked")
        with open(path, "wb") as f:
            f.write(b"locked")
        os.chmod(path, 0)
        self.addCleanup(os.chmod, path, stat.S_IRUSR | stat.S_IWUSR)
        await self.assert_refused("locked", codes=(2,))

    async def test_tftp_hpa_gets_no_secret(self):
        """
        tftp-hpa asking for C{../secret} reports error 2 (on stdout) and
        writes nothing of the secret.
        """
        fetched = await fetch(
            tftp_hpa(), "127.0.0.1", self.port, "../secret", self.base
        )
        self.assertIn(b"Error code 2", fetched.result.out)
        self.assertIn(fetched.content, (None, b""))

    async def test_garbage_datagrams(self):
        """
        Malformed and absurd datagrams to the server port are answered with
        an ERROR or not at all; the server logs no unexpected error (trial
        fails a test that logs one) and then serves normally.
        """
        probe = open_probe(self)
        garbage = [
            b"",
            b"\x01",
            b"\x00\x01",
            b"\x00\x01ok",
            b"\x00\x63whatever\x00octet\x00",
            b"\x00\x01ok\x00",
            b"\x00\x01ok\x00octet",
            b"\x00\x01" + b"a" * 60_000 + b"\x00octet\x00",
            b"\x00\x04\x00\x01",
            b"\x00\x03\x00\x01data",
            b"\x00\x06blksize\x00512\x00",
            b"\xff" * 1000,
        ]
        for datagram in garbage:
            probe.send(datagram, self.address)
            answer = await probe.receive(timeout=0.3)
            if answer is not None:
                self.assertEqual(
                    answer[0][:2], b"\x00\x05", f"{datagram[:20]!r}: {answer!r}"
                )
                self.assertEqual(answer[1], self.address)
        # An ERROR is never answered: two servers must not bounce errors.
        # (A fresh port, so that a late answer to the garbage cannot count.)
        quiet = open_probe(self)
        quiet.send(b"\x00\x05\x00\x01not yours\x00", self.address)
        self.assertIsNone(await quiet.receive(timeout=0.5))
        await self.assert_still_serving()

    async def test_mail_mode(self):
        """
        Mode C{mail} (obsolete, RFC 1350) gets ERROR 4, illegal operation.
        """
        probe = open_probe(self)
        probe.send(rrq("ok", "mail"), self.address)
        answer = await probe.receive(timeout=2)
        self.assertIsNotNone(answer)
        self.assertEqual(parse_error(answer[0])[0], 4)

    async def test_ten_thousand_options(self):
        """
        An RRQ of nearly 65000 bytes with 10,000 unknown options is over
        RFC 2347's 512 octets: it gets ERROR 4 from the server port, without
        being decoded, and the server keeps serving.
        """
        probe = open_probe(self)
        options = {str(n): "" for n in range(10_000)}
        datagram = rrq("ok", options=options)
        self.assertLessEqual(len(datagram), 65_000)
        probe.send(datagram, self.address)
        answer = await probe.receive(timeout=2)
        self.assertIsNotNone(answer)
        reply, source = answer
        self.assertEqual(source, self.address)
        self.assertEqual(reply[:4], b"\x00\x05\x00\x04")
        await self.assert_still_serving()

    async def test_write_request_refused(self):
        """
        A write request gets ERROR 2 (the server is read-only) from the
        server port.
        """
        probe = open_probe(self)
        probe.send(b"\x00\x02new\x00octet\x00", self.address)
        answer = await probe.receive(timeout=2)
        self.assertIsNotNone(answer)
        self.assertEqual(parse_error(answer[0])[0], 2)
        self.assertEqual(answer[1], self.address)

    async def test_tftp_hpa_put_refused(self):
        """
        tftp-hpa's put reports error 2, and nothing is written to the root.
        """
        local = os.path.join(self.base, "upload")
        with open(local, "wb") as f:
            f.write(b"upload")
        program = require_program("tftp")
        result = await run(
            [program, "127.0.0.1", str(self.port), "-m", "octet"]
            + ["-c", "put", local, "up"]
        )
        self.assertIn(b"Error code 2", result.out)
        self.assertEqual(
            sorted(os.listdir(self.root)), ["link", "linkdir", "ok", "sub"]
        )
        self.assertEqual(os.listdir(os.path.join(self.root, "sub")), ["inner"])

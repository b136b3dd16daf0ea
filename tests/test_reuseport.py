"""
The classic BPF programs of L{tftpd_tx.reuseport}, attached to real
C{SO_REUSEPORT} groups on loopback: the socket each datagram reaches is the
one a model of the function, written here in plain Python, predicts, on the
listener (from the client's address and port) and on the hand-back port
(from the hand-back's header) alike.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from clients import ipv6_loopback_available
from tftpd_tx import wire
from tftpd_tx.handback import encode
from tftpd_tx.reuseport import attach, handback_program, listener_program


def predicted(host: str, port: int, count: int) -> int:
    """
    The index the programs should return for a client at C{(host, port)}.
    """
    address = int.from_bytes(ipaddress.ip_address(host).packed[-4:], "big")
    mixed = ((address ^ port) * 0x9E3779B1 & 0xFFFFFFFF) >> 16
    return mixed % count


class SteeringTests(SynchronousTestCase):
    """
    Three sockets in a group, a program attached to the first.
    """

    COUNT = 3

    def group(self, host: str) -> list[socket.socket]:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sockets, port = [], 0
        for _ in range(self.COUNT):
            skt = socket.socket(family, socket.SOCK_DGRAM)
            self.addCleanup(skt.close)
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if host == "::":
                skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            skt.bind((host, port))
            skt.setblocking(False)
            port = skt.getsockname()[1]
            sockets.append(skt)
        return sockets

    def receivers(self, sockets) -> list[int]:
        """
        Which sockets got a datagram, once it has had time to arrive.
        """
        for _ in range(100):
            got = []
            for index, skt in enumerate(sockets):
                try:
                    while True:
                        skt.recv(2048)
                        got.append(index)
                except BlockingIOError:
                    pass
            if got:
                return got
            time.sleep(0.01)
        return []

    def check_listener(self, bound: str, client: str, target: str) -> None:
        sockets = self.group(bound)
        attach(sockets[0], listener_program(self.COUNT))
        port = sockets[0].getsockname()[1]
        seen = set()
        for _ in range(30):
            family = socket.AF_INET6 if ":" in client else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as sender:
                sender.bind((client, 0))
                sender.sendto(wire.Ack(1).encode(), (target, port))
                expected = predicted(client, sender.getsockname()[1], self.COUNT)
                self.assertEqual(self.receivers(sockets), [expected])
                seen.add(expected)
        self.assertEqual(seen, set(range(self.COUNT)))

    def test_listener_ipv4(self):
        """
        Datagrams from thirty client ports reach the socket predicted from
        the client's IPv4 address and port, all three sockets some.
        """
        self.check_listener("127.0.0.1", "127.0.0.1", "127.0.0.1")

    def test_listener_ipv6(self):
        """
        The same over IPv6.
        """
        if not ipv6_loopback_available():
            raise SkipTest("no IPv6 loopback")
        self.check_listener("::1", "::1", "::1")

    def test_listener_dual_stack(self):
        """
        On a dual-stack group, an IPv4 client is steered by its IPv4
        address, as its hand-backs are (an IPv4-mapped address ends in it).
        """
        self.check_listener("::", "127.0.0.1", "127.0.0.1")

    def test_handback(self):
        """
        Hand-backs for sixty clients, IPv4, IPv4-mapped and IPv6, reach the
        socket predicted from the client they carry, whoever sent them.
        """
        sockets = self.group("127.0.0.1")
        attach(sockets[0], handback_program(self.COUNT))
        rng = random.Random(7)
        seen = set()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            for number in range(60):
                host = (
                    f"192.0.2.{rng.randrange(256)}",
                    f"::ffff:198.51.100.{rng.randrange(256)}",
                    f"2001:db8::{rng.randrange(65536):x}",
                )[number % 3]
                client = (host, rng.randrange(1, 65536))
                peer.sendto(encode(client, wire.Ack(1).encode()), sockets[0].getsockname())
                expected = predicted(*client, self.COUNT)
                self.assertEqual(self.receivers(sockets), [expected], client)
                seen.add(expected)
        self.assertEqual(seen, set(range(self.COUNT)))

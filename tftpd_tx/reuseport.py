"""
Which socket of an C{SO_REUSEPORT} group a client's datagram reaches, chosen
by the same function of the client's address and port on two groups: the
listener's and the hand-back port's of C{twistd tftp --workers N
--handback}.

Left to itself, the kernel picks a socket of the group by a hash of both
ends' addresses and ports: one client always reaches the same worker on the
listener, but a hand-back (L{tftpd_tx.handback}) comes from another server,
so its hash says nothing of the client it carries, and it would reach any
worker, most often not the one that has the transfer.  A classic BPF program
attached to a group (C{SO_ATTACH_REUSEPORT_CBPF}) chooses instead: it runs
on each datagram with the data at the UDP payload (the network header at
L{SKF_NET_OFF}), and what it returns is the index of the socket, in the
order they joined the group (the order they were bound; the supervisor keeps
every socket open, so the order never changes).  An index out of range
leaves the choice to the hash, and a load past the end of the datagram
returns 0; neither happens for a datagram a worker would serve.

Both programs compute C{mix(address, port) % N} (L{_mix}), where
C{address} is the last 32 bits of the client's address (an IPv4 address
itself, also inside an IPv4-mapped IPv6 one, as a dual-stack socket sees an
IPv4 client) and C{port} its UDP port: L{listener_program} reads them from
the IP and UDP headers, L{handback_program} from the hand-back's own header.
An IPv6 datagram with extension headers before UDP (TFTP clients send none)
is read at the wrong place: it still reaches one worker always, but its
hand-backs may reach another, which drops them as unknown.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from . import handback

__all__ = ["attach", "handback_program", "listener_program"]

#: C{SO_ATTACH_REUSEPORT_CBPF} (Linux 4.5), which Python's socket module
#: may lack.
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
#: Where a classic BPF load finds the network header (C{linux/filter.h}).
SKF_NET_OFF = -0x100000

# Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
_LD, _LDX, _ALU, _JMP, _RET, _MISC = 0x00, 0x01, 0x04, 0x05, 0x06, 0x07
_W, _H, _B = 0x00, 0x08, 0x10
_ABS, _IND, _MSH = 0x20, 0x40, 0xA0
_K, _X, _A = 0x00, 0x08, 0x10
_MUL, _RSH, _MOD, _XOR = 0x20, 0x70, 0x90, 0xA0
_JA, _JEQ = 0x00, 0x10
_TAX = 0x00

#: Fibonacci hashing's multiplier (2**32 over the golden ratio): its high
#: bits depend on every bit of the key, so that clients whose ports or
#: addresses differ only in high bits still spread over the workers.
_GOLDEN = 0x9E3779B1

_IPV6_HEADER = 40


def _mix(count: int) -> list[tuple[int, int, int, int]]:
    """
    With the address in A and the port in X: A = ((A ^ X) * golden >> 16)
    % count, returned.
    """
    return [
        (_ALU | _XOR | _X, 0, 0, 0),
        (_ALU | _MUL | _K, 0, 0, _GOLDEN),
        (_ALU | _RSH | _K, 0, 0, 16),
        (_ALU | _MOD | _K, 0, 0, count),
        (_RET | _A, 0, 0, 0),
    ]


def listener_program(count: int) -> list[tuple[int, int, int, int]]:
    """
    The program for a listener group of C{count} sockets: the client's
    address and port from the IP header (IPv4 of any header length, or
    IPv6) and the UDP header after it.
    """
    return [
        (_LD | _B | _ABS, 0, 0, SKF_NET_OFF),  # the IP version, high nibble
        (_ALU | _RSH | _K, 0, 0, 4),
        (_JMP | _JEQ | _K, 5, 0, 6),  # IPv6: on to its loads
        (_LDX | _B | _MSH, 0, 0, SKF_NET_OFF),  # X: IPv4's header length
        (_LD | _H | _IND, 0, 0, SKF_NET_OFF),  # the UDP source port after it
        (_MISC | _TAX, 0, 0, 0),
        (_LD | _W | _ABS, 0, 0, SKF_NET_OFF + 12),  # the source address
        (_JMP | _JA, 0, 0, 3),
        (_LD | _H | _ABS, 0, 0, SKF_NET_OFF + _IPV6_HEADER),
        (_MISC | _TAX, 0, 0, 0),
        (_LD | _W | _ABS, 0, 0, SKF_NET_OFF + 8 + 12),  # the source's last 32 bits
        *_mix(count),
    ]


def handback_program(count: int) -> list[tuple[int, int, int, int]]:
    """
    The program for a hand-back group of C{count} sockets: the client's
    address and port from the hand-back's header (L{handback.encode}).
    """
    return [
        (_LD | _H | _ABS, 0, 0, handback.PORT_AT),
        (_MISC | _TAX, 0, 0, 0),
        (_LD | _B | _ABS, 0, 0, handback.VERSION_AT),
        (_JMP | _JEQ | _K, 0, 2, 4),  # IPv6: on to its load
        (_LD | _W | _ABS, 0, 0, handback.ADDRESS_AT),
        (_JMP | _JA, 0, 0, 1),
        (_LD | _W | _ABS, 0, 0, handback.ADDRESS_AT + 12),
        *_mix(count),
    ]


def attach(skt: socket.socket, program) -> None:
    """
    Make C{program} choose the socket of every datagram that reaches the
    C{SO_REUSEPORT} group of C{skt} (bound), for the whole group.

    @raise OSError: the kernel refused it.
    """
    code = b"".join(
        struct.pack("=HBBI", op, jt, jf, k & 0xFFFFFFFF) for op, jt, jf, k in program
    )
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HP", len(program), ctypes.addressof(buffer))
    skt.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)

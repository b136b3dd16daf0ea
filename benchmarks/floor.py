"""
A yardstick, not a server: the least a Python TFTP server can do per block.

One blocking loop serves one lock-step transfer at a time with nothing but
C{recvfrom}, C{os.read} and C{sendto}: no reactor, no timers, no
retransmission, no stray handling, no statistics.  What it costs per block
is what CPython and the kernel cost, and no Python server can do less.
C{run.py --floor} runs it beside tftpd_tx and tftpd-hpa in the lock-step
scenarios, so that their figures can be read against it.

It serves octet RRQs for files under ROOT with the blksize and tsize options
(RFC 2348, 2349), declines every other option, and never leaves loopback.

Usage: python3 floor.py PORT ROOT
"""

import os
import socket
import struct
import sys

DATA_HEADER = struct.Struct("!HH").pack


def serve(port: int, root: str) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", port))
    while True:
        request, peer = listener.recvfrom(2048)
        fields = request[2:].split(b"\0")
        options = dict(zip(fields[2::2], fields[3::2]))
        blksize = min(int(options.get(b"blksize", 512)), 65464)
        fd = os.open(os.path.join(root, os.path.basename(fields[0].decode())), os.O_RDONLY)
        transfer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        transfer.bind(("127.0.0.1", 0))
        # A kernel-side timeout: Python's settimeout would add a poll() per
        # block, which is not the least a server can do.
        transfer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 5, 0))
        try:
            oack = b"\0\6blksize\0%d\0tsize\0%d\0" % (blksize, os.fstat(fd).st_size)
            transfer.sendto(oack, peer)
            block, packet = 0, None
            while True:
                ack, _ = transfer.recvfrom(2048)
                if (ack[2] << 8 | ack[3]) != block & 0xFFFF:
                    continue
                if packet is not None and len(packet) < blksize + 4:
                    break
                block += 1
                packet = DATA_HEADER(3, block & 0xFFFF) + os.read(fd, blksize)
                transfer.sendto(packet, peer)
        except OSError:
            pass  # the client went away: EAGAIN after 5 s
        finally:
            transfer.close()
            os.close(fd)


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2])

"""
Hand a program datagram sockets as a socket unit with C{ReusePort=yes}
does, which C{systemd-socket-activate} cannot (it sets no
C{SO_REUSEPORT})::

    python activate.py [--plain] HOST:PORT... -- PROGRAM ARGUMENT...

binds one UDP socket to each C{HOST:PORT} given (given N times: N sockets
on it, one C{SO_REUSEPORT} group), puts them on descriptors 3 on, in order,
sets C{LISTEN_FDS} and C{LISTEN_PID} for this process and executes
C{PROGRAM}, which may be C{systemd-socket-activate}: it passes descriptors
it was given so on to its child.  With C{--plain}, the sockets get
C{SO_REUSEADDR} instead (what systemd sets on every socket), as a unit
without C{ReusePort=} would have them.
"""

import os
import socket
import sys


def main(argv: list[str]) -> None:
    separator = argv.index("--")
    addresses, program = argv[:separator], argv[separator + 1 :]
    option = socket.SO_REUSEPORT
    if addresses[:1] == ["--plain"]:
        addresses, option = addresses[1:], socket.SO_REUSEADDR
    bound = []
    for given in addresses:
        host, _, port = given.rpartition(":")
        host = host.strip("[]")
        skt = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        skt.setsockopt(socket.SOL_SOCKET, option, 1)
        skt.bind((host, int(port)))
        bound.append(skt)
    # Copies above the sockets' own descriptors first (all from 3 on), so
    # that none is on a descriptor it is then moved onto.
    high = [os.dup(skt.fileno()) for skt in bound]
    for skt in bound:
        skt.close()
    for target, fd in enumerate(high, start=3):
        os.dup2(fd, target)
        os.close(fd)
    environ = dict(os.environ, LISTEN_FDS=str(len(high)), LISTEN_PID=str(os.getpid()))
    os.execve(program[0], program, environ)


if __name__ == "__main__":
    main(sys.argv[1:])

"""
A twisted.web origin that fails on request, for the origin handler's
failure tests: C{python3 failing_origin.py PORT LOG} listens on
C{127.0.0.1:PORT} and appends every requested path to C{LOG}.

Paths (the body of C{/NAME...} is L{body}C{(NAME)}, C{SIZE} bytes):

    /ok/NAME            200, the whole body, with a length
    /private/NAME       200, C{Cache-Control: private}, the body names the
                        client (its X-TFTP-IP, X-TFTP-Port, X-TFTP-File)
    /slow-headers/NAME  nothing, ever
    /slow-body/NAME     headers and half the body, then nothing
    /error/NAME         500
    /drop/NAME          half the body, then the connection is aborted
    /short/NAME         half the body of a longer Content-Length, then closed
    /redirect/NAME      302 to /elsewhere/NAME
    /big/NAME           200, BIG bytes, as fast as the client takes them
    /flaky/NAME         200 with max-age=0 the first time, 500 after
"""

import sys

from twisted.internet import reactor
from twisted.web import resource, server

SIZE = 64 * 1024
BIG = 64 * 1024 * 1024


def body(name: bytes, size: int = SIZE) -> bytes:
    """
    The body served for C{name}: C{size} bytes that depend on the name.
    """
    seed = (name + b"|") * (4096 // (len(name) + 1) + 1)
    return (seed * (size // len(seed) + 1))[:size]


class _Big:
    """
    A pull producer of L{BIG} bytes.
    """

    def __init__(self, request, chunk: bytes) -> None:
        self.request = request
        self.chunk = chunk
        self.left = BIG

    def resumeProducing(self) -> None:
        if self.left <= 0:
            self.request.unregisterProducer()
            self.request.finish()
            return
        piece = self.chunk[: self.left]
        self.left -= len(piece)
        self.request.write(piece)

    def stopProducing(self) -> None:
        self.left = 0


class Origin(resource.Resource):
    isLeaf = True

    def __init__(self, log_path: str) -> None:
        super().__init__()
        self.log = open(log_path, "a", buffering=1)
        self.flaky = set()

    def render_GET(self, request):
        self.log.write(request.path.decode("latin-1") + "\n")
        parts = request.path.split(b"/")
        kind, name = parts[1], b"/".join(parts[2:])
        content = body(name)
        if kind == b"ok":
            return content
        if kind == b"private":
            request.setHeader(b"cache-control", b"private")
            return b"%s %s %s" % tuple(
                request.getHeader(h) or b"-" for h in (b"x-tftp-ip", b"x-tftp-port", b"x-tftp-file")
            )
        if kind == b"slow-headers":
            return server.NOT_DONE_YET
        if kind in (b"slow-body", b"drop", b"short"):
            request.setHeader(b"content-length", b"%d" % len(content))
            request.write(content[: len(content) // 2])
            if kind == b"drop":
                reactor.callLater(0.1, request.transport.abortConnection)
            elif kind == b"short":
                reactor.callLater(0.1, request.transport.loseConnection)
            return server.NOT_DONE_YET
        if kind == b"error":
            request.setResponseCode(500)
            return b"broken"
        if kind == b"redirect":
            request.redirect(b"/elsewhere/" + name)
            return b""
        if kind == b"big":
            request.setHeader(b"content-length", b"%d" % BIG)
            request.registerProducer(_Big(request, body(name, 65536)), False)
            return server.NOT_DONE_YET
        if kind == b"flaky":
            if name in self.flaky:
                request.setResponseCode(500)
                return b"broken"
            self.flaky.add(name)
            request.setHeader(b"cache-control", b"max-age=0")
            request.setHeader(b"etag", b'"flaky"')
            return content
        request.setResponseCode(404)
        return b"no such thing"


def main(port: str, log_path: str) -> None:
    site = server.Site(Origin(log_path))
    site.noisy = False
    reactor.listenTCP(int(port), site, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:])

"""
Ready-made handlers that compose: a router by path pattern, and an adapter
that runs a blocking handler in a thread (L{ThreadedHandler}, built on
L{SerialCalls} and L{ThreadedResponseData}, which the fbtftp compatibility
layer uses too).
"""

from __future__ import annotations

import re
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .content import FileNotFound, IHandler, Request, ResponseData

__all__ = ["Router", "ThreadedHandler", "ThreadedResponseData", "SerialCalls"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _compile(pattern: str) -> re.Pattern:
    """
    C{"pxelinux.cfg/01-{mac}"} becomes a regular expression in which each
    C{{name}} captures one path segment (anything but C{/}) and the rest is
    literal.
    """
    parts = []
    position = 0
    for match in _PLACEHOLDER.finditer(pattern):
        parts.append(re.escape(pattern[position : match.start()]))
        parts.append(f"(?P<{match.group(1)}>[^/]+)")
        position = match.end()
    parts.append(re.escape(pattern[position:]))
    return re.compile("".join(parts))


@implementer(IHandler)
class Router:
    """
    Send each request to the first route whose pattern matches its
    normalized path, or to a default handler.

    A route's target is called as C{target(request, **captured)} and answers
    like C{get_response_data}: a response, a Deferred or coroutine of one, or
    a L{tftpd_tx.content.TFTPError}.  For example, per-machine PXE configs
    generated on the fly and everything else from disk::

        def pxe_config(request, mac):
            return BytesResponseData(render_config(mac))

        router = Router(default=FilesystemHandler("/srv/tftp"))
        router.add("pxelinux.cfg/01-{mac}", pxe_config)

    @param default: the L{IHandler} for paths no route matches; without one
        they get "File not found".
    """

    def __init__(self, default=None) -> None:
        self.default = default
        self._routes: list[tuple[str, re.Pattern, Callable[..., Any]]] = []

    def add(self, pattern: str, target: Callable[..., Any]) -> None:
        """
        Add a route; routes are tried in the order they were added.

        @param pattern: a path relative to the root, where C{{name}} stands
            for one path segment that is passed to C{target} as C{name}.
        """
        self._routes.append((pattern, _compile(pattern), target))

    def get_response_data(self, request: Request):
        for _, regex, target in self._routes:
            match = regex.fullmatch(request.normalized_path)
            if match is not None:
                return target(request, **match.groupdict())
        if self.default is None:
            raise FileNotFound()
        return self.default.get_response_data(request)


class SerialCalls:
    """
    Run blocking calls in a thread pool one after another, in the order
    they were asked for.

    A response's calls made this way never overlap, so a response written
    for one thread needs no lock: its C{close} waits for a C{read} still
    running, even one whose result was abandoned.  Cancelling the
    L{Deferred} of a call abandons its result, not its place in the order.
    Used by L{ThreadedHandler} and by L{tftpd_tx.compat.fbtftp}, whose
    sessions run their stats callback in the same order.

    @param reactor: the reactor the results are delivered in.
    @param pool: the thread pool the calls run in.
    """

    def __init__(self, reactor, pool) -> None:
        self._reactor = reactor
        self._pool = pool
        self._tail = succeed(None)

    def run(self, function, *args) -> Deferred:
        """
        Call C{function(*args)} in the pool once every call asked for before
        it has returned.

        @return: a L{Deferred} firing with its result or failure.
        """
        result = Deferred()

        def deliver(outcome):
            if not result.called:
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)

        def start(_):
            job = deferToThreadPool(self._reactor, self._pool, function, *args)
            return job.addBoth(deliver)

        self._tail.addCallback(start)
        return result


class ThreadedResponseData(ResponseData):
    """
    A blocking response, used from the reactor: its C{read} and C{close} run
    in a thread pool through one L{SerialCalls}, so one at a time and in
    order.

    @param response: the blocking L{IResponseData}.
    @param size: its C{size()}, already asked in a thread: the session asks
        for the size in the reactor thread, where nothing may block.
    @param calls: the L{SerialCalls} this response's calls go through.
    """

    _log = Logger()

    def __init__(self, response, size, calls: SerialCalls) -> None:
        self._response = response
        self._size = size
        self._calls = calls

    def read(self, n: int) -> Deferred:
        return self._calls.run(self._response.read, n)

    def size(self):
        return self._size

    def close(self) -> None:
        closing = self._calls.run(self._response.close)
        closing.addErrback(
            lambda failure: self._log.failure("Closing a response failed", failure)
        )


@implementer(IHandler)
class ThreadedHandler:
    """
    Run a blocking handler in a thread pool, so that it never stalls the
    reactor and the other transfers.

    Use it for handlers that call blocking libraries (a database client,
    C{requests}, a slow disk): C{get_response_data} runs in a thread, and so
    do the response's C{read}, C{size} and C{close}.  One response's calls
    run one at a time, in order (see L{SerialCalls}), so it needs no lock of
    its own.  Each block then costs a round trip through the pool, so keep
    it for content that needs it.

    @param handler: the blocking handler.
    @param reactor: the reactor; the global one when omitted.
    @param pool: the thread pool; the reactor's own when omitted.
    """

    def __init__(self, handler, reactor=None, pool=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._handler = handler
        self._reactor = reactor
        self._pool = pool if pool is not None else reactor.getThreadPool()

    def _open(self, request: Request):
        response = self._handler.get_response_data(request)
        try:
            size = response.size()
        except BaseException:
            response.close()
            raise
        return ThreadedResponseData(
            response, size, SerialCalls(self._reactor, self._pool)
        )

    def get_response_data(self, request: Request):
        return deferToThreadPool(self._reactor, self._pool, self._open, request)

"""
Ready-made handlers that compose: a router by path pattern, and an adapter
that runs a blocking handler in a thread.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from .content import FileNotFound, IHandler, IResponseData, Request

__all__ = ["Router", "ThreadedHandler"]

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


@implementer(IResponseData)
class _ThreadedResponseData:
    """
    A blocking response whose reads and close run in a thread pool.
    """

    def __init__(self, reactor, pool, response, size) -> None:
        self._reactor = reactor
        self._pool = pool
        self._response = response
        self._size = size

    def read(self, n: int):
        return deferToThreadPool(self._reactor, self._pool, self._response.read, n)

    def size(self):
        return self._size

    def close(self) -> None:
        deferToThreadPool(self._reactor, self._pool, self._response.close)


@implementer(IHandler)
class ThreadedHandler:
    """
    Run a blocking handler in a thread pool, so that it never stalls the
    reactor and the other transfers.

    Use it for handlers that call blocking libraries (a database client,
    C{requests}, a slow disk): C{get_response_data} runs in a thread, and so
    do the response's C{read}, C{size} and C{close}.  Each block then costs a
    round trip through the pool, so keep it for content that needs it.

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
        return _ThreadedResponseData(self._reactor, self._pool, response, size)

    def get_response_data(self, request: Request):
        return deferToThreadPool(self._reactor, self._pool, self._open, request)

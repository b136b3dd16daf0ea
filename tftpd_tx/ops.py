"""
The operations endpoint: metrics, graded health and drain over HTTP, for
Prometheus and for the BGP speaker's health check.

Modelled on CoreDNS's: C{GET /metrics} (Prometheus text), C{GET /health}
(200 while the server can serve, draining and degraded included; 503 when it
cannot), C{GET /ready} (200 only while all is well), and C{POST /drain},
C{POST /resume} (the operator core's, from a loopback peer only).  Every
answer is computed when asked, from the server's own state: nothing here
runs per packet.
"""

from __future__ import annotations

import importlib.metadata
import json

from twisted.application.service import Service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from . import health as grades
from .endpoints import is_loopback
from .metrics import CONTENT_TYPE, ServerCollector, make_registry, render

__all__ = ["OpsResource", "OpsService", "operations_services"]


class _Leaf(Resource):
    isLeaf = True

    def render_HEAD(self, request):
        return self.render_GET(request)


def _json(request, status: int, body: dict) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, sort_keys=True).encode() + b"\n"


class _Metrics(_Leaf):
    def __init__(self, registry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE.encode())
        return render(self._registry)


class _Health(_Leaf):
    """
    200 with the grade whenever the server can serve; 503 when it cannot.
    """

    def __init__(self, health) -> None:
        super().__init__()
        self._health = health

    def render_GET(self, request):
        report = self._health.report()
        return _json(request, 503 if report["state"] == grades.DOWN else 200, report)


class _Ready(_Health):
    """
    200 only while the server is fully well; 503 otherwise.
    """

    def render_GET(self, request):
        report = self._health.report()
        return _json(request, 200 if report["state"] == grades.OK else 503, report)


class _Control(_Leaf):
    """
    C{POST} runs one of the operator core's controls; only a peer on
    loopback may, whatever address the endpoint listens on.
    """

    _log = Logger()

    def __init__(self, action, name: str) -> None:
        super().__init__()
        self._action = action
        self._name = name

    def render_POST(self, request):
        peer = request.getClientAddress()
        host = getattr(peer, "host", None)
        if host is not None and not is_loopback(host):
            return _json(request, 403, {"error": f"{self._name} is for loopback peers only"})
        self._log.info(
            "{name} requested over HTTP by {peer}", name=self._name.capitalize(), peer=host
        )
        return _json(request, 200, self._action())

    def render_GET(self, request):
        request.setHeader(b"allow", b"POST")
        return _json(request, 405, {"error": f"POST /{self._name}"})


class OpsResource(Resource):
    """
    The endpoint's resource tree.

    @param operator: the L{tftpd_tx.operator.Operator} (drain and resume).
    @param health: the L{tftpd_tx.health.Health}.
    @param registry: the Prometheus registry of L{tftpd_tx.metrics}.
    """

    def __init__(self, operator, health, registry) -> None:
        super().__init__()
        self.putChild(b"metrics", _Metrics(registry))
        self.putChild(b"health", _Health(health))
        self.putChild(b"ready", _Ready(health))
        self.putChild(b"drain", _Control(operator.drain, "drain"))
        self.putChild(b"resume", _Control(operator.resume, "resume"))

    def getChild(self, name, request):
        # "/" itself: the index below.
        if name == b"":
            return self
        return super().getChild(name, request)

    def render_GET(self, request):
        return _json(
            request, 200, {"paths": ["/metrics", "/health", "/ready", "/drain", "/resume"]}
        )


class _QuietSite(Site):
    """
    A site without an access log: a health check every second would write
    86,400 lines a day; drain and resume log lines of their own.
    """

    def log(self, request) -> None:
        pass


class OpsService(Service):
    """
    Serve L{OpsResource} on an endpoint description.

    It stops listening only after C{keep_until} (a callable returning a
    Deferred: the TFTP service's graceful stop) has fired, so that while
    the server drains, its health check still answers "draining".

    @ivar port: the listening port once started.
    """

    _log = Logger()

    def __init__(self, description: str, resource: OpsResource, reactor, keep_until=None):
        self._description = description
        self._site = _QuietSite(resource)
        self._site.noisy = False
        self._reactor = reactor
        self._keep_until = keep_until
        self.port = None

    def privilegedStartService(self) -> None:
        endpoint = endpoints.serverFromString(self._reactor, self._description)
        endpoint.listen(self._site).addCallbacks(self._listening, self._failed)
        super().privilegedStartService()

    def _listening(self, port) -> None:
        self.port = port
        host = port.getHost()
        self._log.info(
            "Operations endpoint on {where}: /metrics /health /ready /drain /resume",
            where=f"{getattr(host, 'host', host)}:{getattr(host, 'port', '')}",
        )

    def _failed(self, failure) -> None:
        self._log.failure("The operations endpoint cannot listen", failure)

    def stopService(self):
        super().stopService()
        waited = self._keep_until() if self._keep_until is not None else defer.succeed(None)

        def close(_):
            if self.port is not None:
                port, self.port = self.port, None
                return port.stopListening()

        return waited.addBoth(close)


def _version() -> str:
    try:
        return importlib.metadata.version("tftpd_tx")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def operations_services(
    tftp, reactor, *, endpoint: str | None, canary: str | None = None,
    disable_file: str | None = None, checks=(), listening=None, collectors=(),
) -> list[Service]:  # fmt: skip
    """
    The services of the operations plane for the TFTP service C{tftp}: the
    health keeper (named C{"health"}: grade, disable file, canary, reactor
    lag, flap lines) and, when C{endpoint} is given, the HTTP endpoint
    (named C{"ops"}).  Both stay up until C{tftp} has finished its graceful
    stop.

    @param canary: the path the canary fetches, or L{None} for none.
    @param disable_file: the disable file's path, or L{None}.
    @param checks: more causes of degradation (see L{tftpd_tx.health.Health}).
    @param listening: returns whether the host can serve (the health is
        down when not); by default, whether C{tftp}'s port is open.
    @param collectors: more Prometheus collectors for C{/metrics}.
    """
    from .operator import Operator

    server = tftp.server
    lag = grades.ReactorLag(reactor)

    def listener_address():
        host = tftp.port.getHost()
        return host.host, host.port

    probe = grades.Canary(reactor, listener_address, canary) if canary else None
    health = grades.Health(
        server,
        listening=listening or (lambda: tftp.port is not None),
        lag=lag,
        canary=probe,
        checks=tuple(checks),
        cut=lambda: tftp.cut,
    )
    keeper = grades.HealthService(
        server, health, reactor, lag=lag, canary=probe,
        disable_file=grades.DisableFile(disable_file) if disable_file else None,
        keep_until=tftp.when_stopped,
    )  # fmt: skip
    keeper.setName("health")
    services: list[Service] = [keeper]
    if endpoint is not None:
        registry = make_registry(ServerCollector(server, health, lag, _version()))
        for collector in collectors:
            registry.register(collector)
        resource = OpsResource(Operator(server, reactor), health, registry)
        web = OpsService(endpoint, resource, reactor, keep_until=tftp.when_stopped)
        web.setName("ops")
        services.append(web)
    return services

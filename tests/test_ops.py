"""
The operations endpoint over real HTTP on loopback: /metrics parsed as
Prometheus parses it, /health and /ready by grade, POST /drain and /resume;
and the JSON log observer.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.test.requesthelper import DummyRequest

from tftpd_tx import FilesystemHandler, TFTPService
from tftpd_tx.logs import JSONLinesObserver
from tftpd_tx.ops import OpsResource, operations_services
from tftpd_tx.operator import Operator

from clients import fetch, curl, make_directory, random_file


class EndpointTests(TestCase):
    """
    C{--ops} as an operator and Prometheus use it.
    """

    timeout = 30

    def setUp(self):
        directory = make_directory(self)
        self.root = os.path.join(directory, "root")
        os.mkdir(self.root)
        self.content = random_file(self.root, "file.bin", 3000)
        self.tftp = TFTPService(FilesystemHandler(self.root), port=0, interface="127.0.0.1")
        self.services = [self.tftp, *operations_services(
            self.tftp, reactor, endpoint="tcp:0:interface=127.0.0.1",
        )]  # fmt: skip
        for service in self.services:
            service.privilegedStartService()
        for service in self.services:
            service.startService()
        self.addCleanup(lambda: [service.stopService() for service in reversed(self.services)])
        ops = self.services[-1]
        self.base = f"http://127.0.0.1:{ops.port.getHost().port}"
        self.agent = Agent(reactor)

    async def get(self, path, method=b"GET"):
        response = await self.agent.request(method, (self.base + path).encode())
        body = await readBody(response)
        return response.code, body

    async def test_metrics(self):
        """
        After a fetch, /metrics parses as Prometheus text and counts it: one
        request accepted, one transfer completed, its bytes; one transfer
        duration observed; the process metrics are there.
        """
        port = self.tftp.port.getHost().port
        fetched = await fetch(curl(), "127.0.0.1", port, "file.bin", make_directory(self))
        self.assertEqual(fetched.result.code, 0)
        code, body = await self.get("/metrics")
        self.assertEqual(code, 200)
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }
        self.assertEqual(samples[("tftpd_requests_total", (("result", "accepted"),))], 1)
        self.assertEqual(samples[("tftpd_transfers_total", (("outcome", "completed"),))], 1)
        self.assertEqual(samples[("tftpd_bytes_sent_total", ())], len(self.content))
        self.assertEqual(samples[("tftpd_transfer_duration_seconds_count", ())], 1)
        self.assertEqual(samples[("tftpd_health_state", (("state", "ok"),))], 1)
        self.assertIn(("process_open_fds", ()), samples)
        self.assertEqual(
            [labels for name, labels in samples if name == "tftpd_build_info"],
            [(("version", importlib.metadata.version("tftpd_tx")),)],
        )

    async def test_health_ready_drain(self):
        """
        /health and /ready are 200 while all is well; after POST /drain,
        /health stays 200 saying "draining" and /ready turns 503; POST
        /resume brings /ready back.
        """
        code, body = await self.get("/health")
        self.assertEqual((code, json.loads(body)["state"]), (200, "ok"))
        self.assertEqual((await self.get("/ready"))[0], 200)
        code, body = await self.get("/drain", b"POST")
        self.assertEqual((code, json.loads(body)["draining"]), (200, True))
        code, body = await self.get("/health")
        self.assertEqual((code, json.loads(body)["state"]), (200, "draining"))
        self.assertEqual((await self.get("/ready"))[0], 503)
        await self.get("/resume", b"POST")
        self.assertEqual((await self.get("/ready"))[0], 200)

    async def test_down_is_503(self):
        """
        Once the listener is gone, /health is 503.
        """
        await self.tftp.port.stopListening()
        self.tftp.port = None
        code, body = await self.get("/health")
        self.assertEqual((code, json.loads(body)["reasons"]), (503, ["listener closed"]))

    async def test_drain_needs_post(self):
        """
        GET /drain changes nothing.
        """
        code, _ = await self.get("/drain")
        self.assertEqual(code, 405)
        self.assertFalse(self.tftp.server.draining)


class RemotePeerTests(SynchronousTestCase):
    """
    POST /drain and /resume are for loopback peers only, whatever address
    the endpoint listens on.
    """

    def test_remote_drain_refused(self):
        """
        A POST from 192.0.2.50 gets 403 and the server keeps accepting.
        """
        tftp = TFTPService(FilesystemHandler("."), port=0, interface="127.0.0.1")
        resource = OpsResource(Operator(tftp.server, reactor), None, None)
        request = DummyRequest([b""])
        request.method = b"POST"
        request.client = type("Address", (), {"host": "192.0.2.50", "port": 4000})()
        body = resource.getChildWithDefault(b"drain", request).render(request)
        self.assertEqual(request.responseCode, 403)
        self.assertIn(b"loopback", body)
        self.assertFalse(tftp.server.draining)


class JSONLogTests(SynchronousTestCase):
    """
    C{twistd --logger tftpd_tx.logs.json}: one JSON object a line.
    """

    def test_transfer_line(self):
        """
        A transfer line carries its text and its fields, the session's
        included; every line parses with C{json.loads}.
        """
        from twisted.logger import Logger, LogPublisher

        stream = io.StringIO()
        publisher = LogPublisher(JSONLinesObserver(stream))
        log = Logger(namespace="tftpd_tx.server", observer=publisher)
        log.info("{outcome}: {path!r} to {peer}", outcome="completed", path="a",
                 peer=("192.0.2.1", 4000), session_id=7, session=object())  # fmt: skip
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("oops")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        first = lines[0]
        self.assertEqual(first["text"], "completed: 'a' to ('192.0.2.1', 4000)")
        self.assertEqual((first["level"], first["namespace"]), ("info", "tftpd_tx.server"))
        self.assertEqual((first["peer"], first["session_id"]), (["192.0.2.1", 4000], 7))
        self.assertIn("ZeroDivisionError", lines[1]["traceback"])
        self.assertNotIn("log_format", first)


class OriginReportingTests(SynchronousTestCase):
    """
    With --origin, /metrics has the origin's figures and /health degrades
    while it fails.
    """

    def test_origin_metrics_and_health(self):
        """
        The origin's counters appear as tftpd_origin_* families, and its
        failing makes a reason for the health grade.
        """
        from prometheus_client import CollectorRegistry, generate_latest

        from tftpd_tx.origin import OriginHandler
        from tftpd_tx.tap import _origin_reporting

        origin = OriginHandler("http://127.0.0.1:9/boot/", reactor)
        origin.stats.hits = 3
        checks, collectors = _origin_reporting(origin)
        registry = CollectorRegistry(auto_describe=False)
        for collector in collectors:
            registry.register(collector)
        text = generate_latest(registry).decode()
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        self.assertEqual(samples[("tftpd_origin_requests_total", (("result", "hit"),))], 3)
        self.assertEqual(samples[("tftpd_origin_failing", ())], 0)
        (check,) = checks
        self.assertIsNone(check())
        origin.failing = True
        self.assertEqual(check(), "origin failing")
        self.assertEqual(_origin_reporting(object()), ([], []))

"""
A real Prometheus (Debian's C{prometheus}) scrapes C{twistd tftp --ops}
every second: its HTTP API then reports the target up and the transfers the
test caused.  And what a scrape of that process holds, parsed as Prometheus
parses it.
"""

from __future__ import annotations

import json
import os
import urllib.parse

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from clients import curl, make_directory, random_file
from ops_helpers import Child, Twistd, free_tcp_port, http, require_program, wait_for

#: The longest Prometheus may take to find the target and scrape it (it
#: reloads its targets every 5 s).
SCRAPED_WITHIN = 30.0

CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: tftpd
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


class PrometheusTests(SynchronousTestCase):
    """
    Prometheus and the operations endpoint, both real processes on loopback.
    """

    def setUp(self):
        self.curl_program = require_program("curl")
        self.directory = make_directory(self)
        self.root = os.path.join(self.directory, "root")
        os.mkdir(self.root)
        self.content = random_file(self.root, "boot.bin", 5000)

    def query(self, expression: str) -> dict:
        """
        The instant vector Prometheus answers for C{expression}, as
        C{{frozenset(labels): value}}, without the C{job} and C{instance}
        labels (there is one target) or the name.
        """
        code, body = http(
            "GET",
            f"http://127.0.0.1:{self.prometheus_port}/api/v1/query?"
            + urllib.parse.urlencode({"query": expression}),
        )
        if code != 200:
            return {}
        answer = json.loads(body)
        found = {}
        for item in answer["data"]["result"]:
            labels = item["metric"]
            self.assertEqual(
                (labels.pop("job"), labels.pop("instance")), ("tftpd", self.target), labels
            )
            labels.pop("__name__", None)
            found[frozenset(labels.items())] = float(item["value"][1])
        return found

    def fetch_three(self, server) -> None:
        """
        Fetch C{boot.bin} twice and C{missing.bin} once with curl.
        """
        fetches = []
        for name in ("boot.bin", "boot.bin", "missing.bin"):
            local = os.path.join(self.directory, f"fetched-{len(fetches)}")
            client = curl()
            fetcher = Child(
                [self.curl_program, *client.arguments("127.0.0.1", server.port, name, local)]
            )
            self.addCleanup(fetcher.stop)
            fetches.append((fetcher.wait(30), local))
        self.assertEqual([code for code, _ in fetches], [0, 0, 68])  # 68: TFTP file not found
        for _, local in fetches[:2]:
            with open(local, "rb") as f:
                self.assertEqual(f.read(), self.content)

    def test_scraped(self):
        """
        After three curl fetches (one of them of a missing file), Prometheus
        reports C{up} = 1 for the endpoint, 2 transfers completed and their
        bytes, 1 request refused, and the health grade ok.
        """
        program = require_program("prometheus")
        server = Twistd(self.root, cwd=self.directory)
        self.addCleanup(server.stop)
        server.wait_ready()
        self.fetch_three(server)

        self.prometheus_port = free_tcp_port()
        config = os.path.join(self.directory, "prometheus.yml")
        with open(config, "w") as f:
            f.write(CONFIG.format(port=server.ops_port))
        prometheus = Child(
            [
                program,
                f"--config.file={config}",
                f"--storage.tsdb.path={os.path.join(self.directory, 'tsdb')}",
                f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
            ],
            cwd=self.directory,
        )
        self.addCleanup(prometheus.stop)

        self.target = f"127.0.0.1:{server.ops_port}"
        wait_for(
            lambda: self.query("up") == {frozenset(): 1},
            SCRAPED_WITHIN,
            lambda: f"Prometheus reporting up=1; it wrote:\n{prometheus.output()[-3000:]}",
            interval=0.5,
        )

        def value(expression):
            found = self.query(expression)
            self.assertEqual(len(found), 1, (expression, found))
            return next(iter(found.values()))

        self.assertEqual(value('tftpd_transfers_total{outcome="completed"}'), 2)
        self.assertEqual(value('tftpd_transfers_total{outcome="refused"}'), 1)
        self.assertEqual(value('tftpd_requests_total{result="refused"}'), 1)
        self.assertEqual(value("tftpd_bytes_sent_total"), 2 * len(self.content))
        self.assertEqual(value("tftpd_transfer_duration_seconds_count"), 2)
        self.assertEqual(value('tftpd_health_state{state="ok"}'), 1)
        self.assertEqual(value("tftpd_transfers_active"), 0)
        self.assertGreater(value("process_open_fds"), 0)

    def test_request_results_partition_the_requests(self):
        """
        C{tftpd_requests_total}'s results are what became of each request,
        one each: after two fetches and one of a missing file, C{/metrics}
        (parsed by C{prometheus_client.parser}) says 2 accepted, 1 refused,
        3 in all.
        """
        server = Twistd(self.root, cwd=self.directory)
        self.addCleanup(server.stop)
        server.wait_ready()
        self.fetch_three(server)
        code, body = server.get("/metrics")
        self.assertEqual(code, 200)
        results = {
            sample.labels["result"]: sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if sample.name == "tftpd_requests_total"
        }
        self.assertEqual((results["accepted"], results["refused"]), (2, 1))
        self.assertEqual(sum(results.values()), 3)

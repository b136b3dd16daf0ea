"""
Origins for the origin handler's tests: a fake C{IAgent} driven by hand
(with L{task.Clock}), Debian's nginx in a temporary directory, the
twisted.web failing origin (C{tests/failing_origin.py}) in a subprocess,
and a test certificate authority.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent
from zope.interface import implementer

from clients import require_program

HERE = os.path.dirname(os.path.abspath(__file__))

#: The longest a server may take to start listening.
START_TIMEOUT = 10.0


# -- a fake agent --------------------------------------------------------------


class FakeBodyTransport:
    """
    What a body protocol's C{transport} offers: pause, resume, stop.
    """

    def __init__(self, response: "FakeResponse") -> None:
        self._response = response
        self.paused = False
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        if not self.stopped:
            self.stopped = True
            self._response.fail()


class FakeResponse:
    """
    An C{IResponse} whose body the test writes with L{write} and ends with
    L{finish} or L{fail}.
    """

    version = (b"HTTP", 1, 1)
    phrase = b""

    def __init__(self, code: int, headers: dict | None = None, length=None) -> None:
        self.code = code
        self.headers = Headers(
            {name.encode(): [value.encode()] for name, value in (headers or {}).items()}
        )
        self.length = UNKNOWN_LENGTH if length is None else length
        self.protocol = None
        self.transport = FakeBodyTransport(self)
        self.ended = False

    def deliverBody(self, protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def write(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def finish(self) -> None:
        if not self.ended:
            self.ended = True
            self.protocol.connectionLost(Failure(ResponseDone()))

    def fail(self) -> None:
        if not self.ended:
            self.ended = True
            self.protocol.connectionLost(
                Failure(ResponseFailed([Failure(ConnectionError("lost"))]))
            )


@dataclass
class FakeRequest:
    """
    One request a L{FakeAgent} received; fire C{answer} with a response.
    """

    method: bytes
    url: str
    headers: Headers
    answer: Deferred = field(repr=False)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return None if values is None else values[0].decode("latin-1")

    def respond(self, code: int, body: bytes | None = None, headers=None) -> FakeResponse:
        """
        Answer with C{code}; with C{body}, send it whole with its length.
        """
        response = FakeResponse(
            code, headers, length=None if body is None else len(body)
        )
        self.answer.callback(response)
        if body is not None and response.protocol is not None:
            response.write(body)
            response.finish()
        return response


@implementer(IAgent)
class FakeAgent:
    """
    An C{IAgent} that records each request and lets the test answer it.
    """

    def __init__(self) -> None:
        self.requests: list[FakeRequest] = []

    def request(self, method, uri, headers=None, bodyProducer=None) -> Deferred:
        answer: Deferred = Deferred()
        self.requests.append(
            FakeRequest(method, uri.decode("ascii"), headers or Headers(), answer)
        )
        return answer


# -- processes -------------------------------------------------------------------


def free_tcp_port() -> int:
    with socket.socket() as skt:
        skt.bind(("127.0.0.1", 0))
        return skt.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, what: str) -> None:
    """
    Block until something accepts on C{127.0.0.1:port}.

    @raise AssertionError: C{process} exited or C{START_TIMEOUT} passed.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on port {port} in time")


def stop_process(process: subprocess.Popen) -> None:
    """
    Stop a process this test started, by its pid, and reap it.
    """
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


#: Each access log line: the time the request ended, its status, the
#: conditional header, and the request line.
_LOG_FORMAT = '$msec $status "$http_if_none_match" "$request"'


class Nginx:
    """
    Debian's nginx serving C{root} on a free loopback port, from a
    configuration written into C{directory}; stopped by its pid when the
    test ends.

    @param tls: C{(certificate file, key file)} to serve HTTPS.
    @param location: extra directives for C{location /} (C{expires 1h},
        C{limit_rate 4m}).
    """

    def __init__(self, testcase, directory: str, root: str, *, tls=None, location="") -> None:
        self.program = _nginx()
        self.directory = directory
        self.root = root
        self.tls = tls
        self.location = location
        self.port = free_tcp_port()
        self.access_log = os.path.join(directory, "access.log")
        self.process = None
        os.makedirs(os.path.join(directory, "temp"), exist_ok=True)
        testcase.addCleanup(self.stop)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/"

    def _config(self) -> str:
        d = self.directory
        listen = f"127.0.0.1:{self.port}" + (" ssl" if self.tls else "")
        tls = ""
        if self.tls:
            tls = f"ssl_certificate {self.tls[0]}; ssl_certificate_key {self.tls[1]};"
        user = "user root;" if os.geteuid() == 0 else ""
        return f"""
{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
    log_format tests '{_LOG_FORMAT}';
    access_log {self.access_log} tests;
    client_body_temp_path {d}/temp/body;
    proxy_temp_path {d}/temp/proxy;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen {listen};
        {tls}
        root {self.root};
        location / {{ {self.location} }}
    }}
}}
"""

    def start(self) -> "Nginx":
        config = os.path.join(self.directory, "nginx.conf")
        with open(config, "w") as f:
            f.write(self._config())
        self.process = subprocess.Popen(
            [self.program, "-p", self.directory, "-c", config, "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(self.port, self.process, "nginx")
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def requests(self) -> list[tuple[float, int, str, str]]:
        """
        C{(end time, status, If-None-Match, request line)} of every request
        nginx has logged.
        """
        if not os.path.exists(self.access_log):
            return []
        entries = []
        with open(self.access_log) as f:
            for line in f:
                end, status, rest = line.split(" ", 2)
                conditional, _, request = rest.strip().partition('" "')
                entries.append(
                    (float(end), int(status), conditional.strip('"'), request.strip('"'))
                )
        return entries

    def gets(self, path: str) -> list[tuple[float, int, str, str]]:
        """
        The logged requests for C{path}.
        """
        return [entry for entry in self.requests() if entry[3] == f"GET {path} HTTP/1.1"]


def _nginx() -> str:
    """
    Debian's nginx, which is in C{/usr/sbin} (not always on C{PATH}).
    """
    if os.access("/usr/sbin/nginx", os.X_OK):
        return "/usr/sbin/nginx"
    return require_program("nginx")


class FailingOrigin:
    """
    C{tests/failing_origin.py}, a twisted.web origin that misbehaves on
    request, in a subprocess on a free loopback port.
    """

    def __init__(self, testcase, directory: str) -> None:
        self.port = free_tcp_port()
        self.log = os.path.join(directory, "failing-origin.log")
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "failing_origin.py"), str(self.port), self.log],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        testcase.addCleanup(stop_process, self.process)
        wait_listening(self.port, self.process, "the failing origin")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def paths(self) -> list[str]:
        """
        Every path requested so far.
        """
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [line.rstrip("\n") for line in f]


# -- certificates ----------------------------------------------------------------


def make_ca(directory: str) -> dict[str, str]:
    """
    A test certificate authority and two server certificates it signs: one
    for C{localhost} and C{127.0.0.1}, one for C{wrong.example} only.

    @return: paths by name: C{ca}, C{server.crt}, C{server.key},
        C{wrong.crt}, C{wrong.key}.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def write(filename, data):
        path = os.path.join(directory, filename)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def key_pem(key):
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("tftpd_tx test CA"))
        .issuer_name(name("tftpd_tx test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))}
    for label, names in (
        ("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("wrong", [x509.DNSName("wrong.example")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(label))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.BasicConstraints(ca=False, path_length=None), critical=True
            )
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        paths[f"{label}.crt"] = write(
            f"{label}.crt", cert.public_bytes(serialization.Encoding.PEM)
        )
        paths[f"{label}.key"] = write(f"{label}.key", key_pem(key))
    return paths

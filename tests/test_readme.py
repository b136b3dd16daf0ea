"""
The README's handler example runs as written.
"""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from tftpd_tx import TFTPServer, TFTPService, wire
from tftpd_tx.testing import FakeUDPReactor

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)


def readme_example() -> str:
    with open(os.path.join(TOP, "README.md")) as readme:
        text = readme.read()
    section = text.split("## Writing a handler", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


class ReadmeHandlerExampleTests(SynchronousTestCase):
    """
    The example under "Writing a handler".
    """

    def test_example_serves_generated_and_static_files(self):
        """
        The example builds a service; its router, served on a fake reactor,
        answers a pxelinux
        config generated for the MAC and the requesting host, and files from
        the bundled root.
        """
        namespace = {}
        cwd = os.getcwd()
        os.chdir(TOP)
        self.addCleanup(os.chdir, cwd)
        exec(readme_example(), namespace)
        self.assertIsInstance(namespace["service"], TFTPService)
        reactor = FakeUDPReactor()
        listener = reactor.listenUDP(6969, TFTPServer(namespace["router"], reactor=reactor))
        peer = ("192.0.2.77", 1234)
        listener.deliver(
            wire.ReadRequest("pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", "octet").encode(), peer
        )
        (config,) = reactor.ports[-1].take()
        self.assertIn(b"hostname=node-aabbccddeeff from=192.0.2.77", config)
        listener.deliver(wire.ReadRequest("hello.txt", "octet").encode(), (peer[0], 1235))
        (hello,) = reactor.ports[-1].take()
        with open(os.path.join(TOP, "tac", "root", "hello.txt"), "rb") as f:
            self.assertEqual(hello[4:], f.read())

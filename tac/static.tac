"""
Serve a directory read-only, as `twistd tftp --root DIR` does.

    twistd -ny tac/static.tac

TFTP_PORT (default 6969) and TFTP_ROOT (default: tac/root, the bundled
example root) come from the environment, since `twistd -y` passes no options
to a .tac file.
"""

import os

from twisted.application.service import Application

from tftpd_tx.filesystem import FilesystemHandler
from tftpd_tx.service import TFTPService

_here = os.path.dirname(os.path.abspath(__file__))
root = os.environ.get("TFTP_ROOT", os.path.join(_here, "root"))
port = int(os.environ.get("TFTP_PORT", "6969"))

application = Application("tftpd_tx static")
TFTPService(FilesystemHandler(root), port=port).setServiceParent(application)

"""
Serve files from an HTTP(S) origin, with a disk cache, behind a local root:
what `twistd tftp --root DIR --origin URL --cache-dir DIR` does.

    ORIGIN_URL=http://127.0.0.1:8080/tftp/ twistd -ny tac/origin.tac

From the environment (`twistd -y` passes no options to a .tac file):
ORIGIN_URL (required), TFTP_PORT (default 6969), TFTP_ROOT (default:
tac/root, tried first; empty for the origin alone), CACHE_DIR (default:
none, nothing kept), CACHE_MAX_BYTES (default 1 GiB), ORIGIN_CA (a PEM file
of the origin's authorities, instead of the system's).
"""

import os

from twisted.application.service import Application
from twisted.internet import reactor

from tftpd_tx.cache import DiskCache
from tftpd_tx.filesystem import FilesystemHandler
from tftpd_tx.origin import LocalFirst, OriginHandler
from tftpd_tx.service import TFTPService

_here = os.path.dirname(os.path.abspath(__file__))
root = os.environ.get("TFTP_ROOT", os.path.join(_here, "root"))
port = int(os.environ.get("TFTP_PORT", "6969"))
cache_dir = os.environ.get("CACHE_DIR")

cache = None
if cache_dir:
    cache = DiskCache(cache_dir, int(os.environ.get("CACHE_MAX_BYTES", str(1 << 30))))
handler = OriginHandler(
    os.environ["ORIGIN_URL"],
    reactor,
    cache=cache,
    ca_file=os.environ.get("ORIGIN_CA") or None,
)
if root:
    handler = LocalFirst(FilesystemHandler(root), handler)

application = Application("tftpd_tx origin")
TFTPService(handler, port=port).setServiceParent(application)

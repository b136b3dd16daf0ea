"""
Per-client boot configs generated on the fly; everything else from a root.

    twistd -ny tac/dynamic.tac

- pxelinux.cfg/01-<mac>  a pxelinux config written for that MAC address
- grub/grub.cfg-<ip>     a GRUB config for the client asking, which must be <ip>
- anything else          the file under the root (tac/root by default)

TFTP_PORT (default 6969) and TFTP_ROOT come from the environment, since
`twistd -y` passes no options to a .tac file.
"""

import os
import re

from twisted.application.service import Application

from tftpd_tx import (
    AccessViolation,
    BytesResponseData,
    FileNotFound,
    FilesystemHandler,
    Router,
    TFTPService,
)

_here = os.path.dirname(os.path.abspath(__file__))
root = os.environ.get("TFTP_ROOT", os.path.join(_here, "root"))
port = int(os.environ.get("TFTP_PORT", "6969"))

MAC = re.compile(r"[0-9a-f]{2}(-[0-9a-f]{2}){5}")

PXELINUX = """\
# generated for {mac} (asked by {peer})
DEFAULT install
LABEL install
  KERNEL vmlinuz
  APPEND initrd=initrd.img BOOTIF=01-{mac} hostname=node-{name}
"""

GRUB = """\
# generated for {ip}
set timeout=3
menuentry "Install node {ip}" {{
  linux /vmlinuz ip={ip}::::node-{name}::dhcp
  initrd /initrd.img
}}
"""


def pxelinux_config(request, mac):
    """pxelinux.cfg/01-<mac>: a config naming the machine after its MAC."""
    mac = mac.lower()
    if not MAC.fullmatch(mac):
        raise FileNotFound()
    return BytesResponseData(
        PXELINUX.format(mac=mac, peer=request.peer[0], name=mac.replace("-", ""))
    )


def grub_config(request, ip):
    """grub/grub.cfg-<ip>: only the machine at <ip> may read its config."""
    if ip != request.peer[0]:
        raise AccessViolation("This config belongs to another machine")
    return BytesResponseData(GRUB.format(ip=ip, name=ip.replace(".", "-").replace(":", "-")))


router = Router(default=FilesystemHandler(root))
router.add("pxelinux.cfg/01-{mac}", pxelinux_config)
router.add("grub/grub.cfg-{ip}", grub_config)

application = Application("tftpd_tx dynamic")
TFTPService(router, port=port).setServiceParent(application)

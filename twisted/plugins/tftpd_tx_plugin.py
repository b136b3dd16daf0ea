"""
The C{twistd tftp} command; the real work lives in L{tftpd_tx.tap}, imported
only when the command runs.
"""

from twisted.application.service import ServiceMaker

tftp = ServiceMaker(
    "tftpd_tx TFTP server",
    "tftpd_tx.tap",
    "A TFTP server for network booting (RFC 1350, 2347-2349, 7440).",
    "tftp",
)

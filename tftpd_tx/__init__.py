"""
tftpd_tx: a TFTP server framework on Twisted, for network booting at scale.
"""

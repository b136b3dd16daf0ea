"""
Compatibility layers that run other TFTP frameworks' servers on tftpd_tx.

L{tftpd_tx.compat.fbtftp} runs a server written for fbtftp 0.5 with only its
imports changed.
"""

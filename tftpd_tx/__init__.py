"""
tftpd_tx: a TFTP server framework on Twisted, for network booting at scale.

The public API, importable from here:

Serving
    L{TFTPService} (a service for any Twisted application),
    L{TFTPServer} (the protocol, for C{reactor.listenUDP}), L{Settings},
    L{Limits}.
Handlers
    L{IHandler}, L{Request}, L{FilesystemHandler}, L{Router},
    L{ThreadedHandler}.
Responses
    L{IResponseData}, L{ResponseData} (a base class), L{FileResponseData}, L{BytesResponseData}.
Refusals
    L{TFTPError}, L{FileNotFound}, L{AccessViolation}, L{IllegalOperation}.
Statistics
    L{SessionStats}, L{ServerStats}, L{Outcome}.

Test doubles for your own handlers are in L{tftpd_tx.testing}.
"""

from .content import (
    AccessViolation,
    BytesResponseData,
    FileNotFound,
    IHandler,
    IllegalOperation,
    IResponseData,
    Request,
    ResponseData,
    TFTPError,
)
from .filesystem import FileResponseData, FilesystemHandler
from .handlers import Router, ThreadedHandler
from .options import Limits
from .origin import OriginHandler
from .server import TFTPServer
from .settings import Settings
from .service import TFTPService
from .stats import Outcome, ServerStats, SessionStats

__all__ = [
    "TFTPService",
    "TFTPServer",
    "Settings",
    "Limits",
    "IHandler",
    "Request",
    "FilesystemHandler",
    "Router",
    "ThreadedHandler",
    "OriginHandler",
    "IResponseData",
    "ResponseData",
    "FileResponseData",
    "BytesResponseData",
    "TFTPError",
    "FileNotFound",
    "AccessViolation",
    "IllegalOperation",
    "SessionStats",
    "ServerStats",
    "Outcome",
]

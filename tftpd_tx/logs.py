"""
Logs as JSON lines, for log shippers: C{twistd --logger tftpd_tx.logs.json
-n tftp ...}.

Each event is one line holding one JSON object: C{time} (ISO 8601, UTC),
C{level}, C{namespace}, C{text} (the line as text mode writes it), the
event's own fields (a transfer line's C{outcome}, C{path}, C{peer},
C{local}, C{bytes}, C{blocks}, C{retransmits}, C{duration}, C{session_id}
and its whole C{session}), and C{traceback} when a failure is logged.
Twisted's C{log_*} bookkeeping is left out, and a value JSON cannot hold is
written as its C{repr}.
"""

from __future__ import annotations

import dataclasses
import datetime
import json as _json
import sys
from typing import IO

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

__all__ = ["JSONLinesObserver", "json_observer", "json"]


def _plain(value):
    """
    C{value} as JSON can hold it.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return repr(value)


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Write every event to C{stream} as one line of JSON.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: dict) -> None:
        record = {
            "time": datetime.datetime.fromtimestamp(
                event.get("log_time", 0), datetime.timezone.utc
            ).isoformat(),
            "level": getattr(event.get("log_level"), "name", None),
            "namespace": event.get("log_namespace"),
            "text": formatEvent(event),
        }
        for key, value in event.items():
            if not key.startswith("log_") and key not in record:
                record[key] = _plain(value)
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        self._stream.write(_json.dumps(record, default=repr) + "\n")
        self._stream.flush()


def json_observer(stream: IO[str] | None = None) -> JSONLinesObserver:
    """
    The observer factory for C{twistd --logger}: JSON lines on standard
    output (or C{stream}).
    """
    return JSONLinesObserver(stream if stream is not None else sys.stdout)


#: The name to give C{twistd --logger}: C{tftpd_tx.logs.json}.
json = json_observer

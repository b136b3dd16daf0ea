"""
The origin's cache: what an HTTP answer allows a shared cache to do with it
(RFC 9111, and RFC 5861's C{stale-if-error}), and the store that keeps
answers in a directory across restarts, the least recently used evicted
past a byte bound.

The store never shows a partial body as an entry: a body is written to a
temporary file and renamed into place only once it is complete and as long
as announced, and its metadata (a small JSON file, renamed into place after
it) names the body file it describes, so a crash at any moment leaves either
the old entry or the new one.  Entries are checked against their bodies when
the store is opened.
"""

from __future__ import annotations

import email.utils
import fcntl
import hashlib
import json
import os
import tempfile
import weakref
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Mapping

__all__ = [
    "Policy",
    "policy_for",
    "parse_cache_control",
    "Entry",
    "DiskCache",
    "Claim",
    "Announcement",
]

#: Request headers that the origin handler sends alike for every client,
#: so an answer varying on them alone is still the same for everyone.
SAME_FOR_EVERY_CLIENT = frozenset({"accept-encoding", "user-agent"})


def parse_cache_control(value: str) -> dict[str, str | None]:
    """
    The directives of a C{Cache-Control} header: names lower-cased, values
    unquoted (L{None} for a directive without one).
    """
    directives: dict[str, str | None] = {}
    for part in value.split(","):
        name, sep, argument = part.strip().partition("=")
        name = name.strip().lower()
        if name:
            directives[name] = argument.strip().strip('"') if sep else None
    return directives


def _seconds(value: str | None) -> float | None:
    """
    A delta-seconds value, or L{None} when missing or malformed.
    """
    try:
        seconds = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return float(max(seconds, 0))


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


@dataclass(frozen=True)
class Policy:
    """
    What a shared cache may do with one answer.

    @ivar share: the answer may be served to clients other than the one it
        was asked for (not C{private}, not C{no-store}, and not varying on
        a header that differs between clients).
    @ivar store: it may also be kept once the download ends.
    @ivar lifetime: seconds it stays fresh, counted from L{Policy.stored}.
    @ivar stored: when it was produced by the origin (received, less its
        C{Age}).
    @ivar stale_if_error: seconds past its lifetime during which it may
        still be served while the origin fails; L{None} for no such bound.
    @ivar must_revalidate: it may never be served stale.
    """

    share: bool
    store: bool
    lifetime: float
    stored: float
    stale_if_error: float | None
    must_revalidate: bool


#: Seconds an answer with a validator but no freshness information stays
#: fresh: RFC 9111's heuristic freshness (4.2.2), kept short so that a
#: change at the origin is seen within it, and long enough that a storm of
#: requests makes one revalidation a second, not one per request.
HEURISTIC_LIFETIME = 1.0


def policy_for(
    headers: Mapping[str, str], now: float, heuristic: float = HEURISTIC_LIFETIME
) -> Policy:
    """
    The L{Policy} of a 200 answer with C{headers} (names lower-cased),
    received at C{now}.

    Freshness comes from C{s-maxage}, else C{max-age}, else C{Expires}
    less C{Date}; without any, an answer with a validator (C{ETag} or
    C{Last-Modified}) is fresh for C{heuristic} seconds and then
    revalidated before use, and one without a validator is not stored.
    C{no-cache} makes it stale at once.
    """
    directives = parse_cache_control(headers.get("cache-control", ""))
    varies = {
        name.strip().lower()
        for name in headers.get("vary", "").split(",")
        if name.strip()
    }
    share = (
        "private" not in directives
        and "no-store" not in directives
        and varies <= SAME_FOR_EVERY_CLIENT
    )
    no_cache = "no-cache" in directives
    lifetime = None
    if not no_cache:
        for name in ("s-maxage", "max-age"):
            if name in directives:
                lifetime = _seconds(directives[name])
                if lifetime is not None:
                    break
        if lifetime is None and "expires" in headers:
            expires = _http_date(headers["expires"])
            date = _http_date(headers.get("date")) or now
            lifetime = max(expires - date, 0.0) if expires is not None else 0.0
    validated = "etag" in headers or "last-modified" in headers
    if lifetime is None:
        lifetime = heuristic if validated and not no_cache else 0.0
    stale_if_error = None
    if "stale-if-error" in directives:
        stale_if_error = _seconds(directives["stale-if-error"]) or 0.0
    return Policy(
        share=share,
        store=share and (lifetime > 0 or validated),
        lifetime=lifetime,
        stored=now - (_seconds(headers.get("age")) or 0.0),
        stale_if_error=stale_if_error,
        must_revalidate=no_cache
        or "must-revalidate" in directives
        or "proxy-revalidate" in directives,
    )


@dataclass(frozen=True)
class Entry:
    """
    One kept answer: its body file and what is known about it.

    @ivar url: the URL it answers.
    @ivar body: its body's file name in the store's directory.
    @ivar size: the body's length in bytes.
    """

    url: str
    body: str
    size: int
    stored: float
    lifetime: float
    stale_if_error: float | None
    must_revalidate: bool
    etag: str | None
    last_modified: str | None

    def fresh(self, now: float) -> bool:
        """
        Whether it may be served at C{now} without asking the origin.
        """
        return now - self.stored < self.lifetime

    def usable_when_failing(self, now: float) -> bool:
        """
        Whether it may be served at C{now} while the origin fails.
        """
        if self.must_revalidate:
            return False
        if self.stale_if_error is None:
            return True
        return now - self.stored < self.lifetime + self.stale_if_error

    def validators(self) -> dict[str, str]:
        """
        The conditional request headers that revalidate it.
        """
        headers = {}
        if self.etag is not None:
            headers["If-None-Match"] = self.etag
        if self.last_modified is not None:
            headers["If-Modified-Since"] = self.last_modified
        return headers


def _key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Announcement:
    """
    What the process downloading a URL says about it, for the other
    processes that read the body as it arrives.

    @ivar part: the path of the temporary file being written.
    @ivar size: the length announced (C{Content-Length}).
    """

    part: str
    size: int


class Claim:
    """
    One process's exclusive right to download one URL into a store shared
    with other processes: an C{flock} on a file of its own, which the
    kernel releases if the process dies.  The file exists only while it is
    claimed.
    """

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self._path = path

    def announce(self, part: str, size: int) -> None:
        """
        Tell the other processes where the body is being written, and how
        long it will be, so that they can read it as it arrives.
        """
        os.pwrite(self._fd, json.dumps({"part": part, "size": size}).encode(), 0)

    def release(self) -> None:
        """
        Give up the claim (once the body is kept, or will not be); the
        processes waiting for it see it released.
        """
        if self._fd >= 0:
            # Unlinked while locked: whoever opens the path next makes a new
            # file (see DiskCache.claim).
            os.unlink(self._path)
            os.close(self._fd)
            self._fd = -1


class DiskCache:
    """
    Kept answers under C{directory}, at most C{max_bytes} of bodies, the
    least recently used evicted first.  Recency survives restarts: it is
    each body file's modification time, set whenever the entry is used.

    In it: C{<key>.json} (an L{Entry}) and the body it names,
    C{<key>-<token>}; C{tmp/} holds bodies being downloaded; C{claims/}
    one small file per URL being downloaded, locked by the process
    downloading it (see L{claim}); C{lock}, locked while the index changes.

    Several processes may share one directory (C{twistd tftp --workers}),
    so the directory is the index, not any process's memory: every change
    (a body renamed into place and the metadata naming it, a removal, an
    eviction, the clean-up when a store is opened) is made holding an
    exclusive C{flock} on C{lock}, and the byte bound is counted from the
    bodies on disk under it.  Reads take no lock: metadata is replaced by a
    rename, and a body is unlinked only after the metadata naming it.  A
    body being written holds an C{flock} of its own, so that a store
    opened meanwhile removes only the temporaries of processes that are
    gone.

    @ivar tmp_dir: where bodies being downloaded are written.
    """

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.tmp_dir = os.path.join(directory, "tmp")
        self._claims_dir = os.path.join(directory, "claims")
        os.makedirs(self.tmp_dir, exist_ok=True)
        os.makedirs(self._claims_dir, exist_ok=True)
        self._lock = os.open(
            os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        weakref.finalize(self, os.close, self._lock)
        # Parsed metadata by file name, with the stat that tells whether the
        # file was replaced since: a hit costs a stat, not a parse.
        self._parsed: dict[str, tuple[tuple, Entry]] = {}
        with self._locked():
            self._clean()
            self._evict()

    @contextmanager
    def _locked(self):
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _entries(self) -> list[tuple[float, Entry]]:
        """
        Every entry whose body is there, with its body's last use, least
        recently used first.
        """
        found = []
        for name in os.listdir(self.directory):
            if name.endswith(".json"):
                entry = self._read(name)
                if entry is None:
                    continue
                try:
                    used = os.stat(self._path(entry.body)).st_mtime
                except OSError:
                    continue
                found.append((used, entry))
        found.sort(key=lambda item: item[0])
        return found

    def __len__(self) -> int:
        return len(self._entries())

    @property
    def total(self) -> int:
        """
        The bytes of all bodies kept, by every process sharing the directory.
        """
        return sum(entry.size for _, entry in self._entries())

    def _read(self, name: str) -> Entry | None:
        """
        The entry in the metadata file C{name}, or L{None} if there is none
        (or it cannot be read).
        """
        try:
            status = os.stat(self._path(name))
        except OSError:
            self._parsed.pop(name, None)
            return None
        stamp = (status.st_ino, status.st_mtime_ns, status.st_ctime_ns, status.st_size)
        known = self._parsed.get(name)
        if known is not None and known[0] == stamp:
            return known[1]
        try:
            with open(self._path(name)) as f:
                entry = Entry(**json.load(f))
        except (OSError, ValueError, TypeError):
            return None
        self._parsed[name] = (stamp, entry)
        return entry

    def _clean(self) -> None:
        """
        Remove what no live process is using (held under the lock): the
        temporaries of processes that are gone, metadata whose body is
        missing or of the wrong length, bodies no metadata names.
        """
        for name in os.listdir(self.tmp_dir):
            path = os.path.join(self.tmp_dir, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(path)
            except BlockingIOError:
                pass
            finally:
                os.close(fd)
        referenced = set()
        names = set(os.listdir(self.directory))
        for name in names:
            if not name.endswith(".json"):
                continue
            entry = self._read(name)
            try:
                size = os.stat(self._path(entry.body)).st_size if entry else None
            except OSError:
                size = None
            if size is None or size != entry.size or name != _key(entry.url) + ".json":
                self._unlink(name)
                continue
            referenced.add(entry.body)
        for name in names - referenced:
            if name not in ("tmp", "claims", "lock") and not name.endswith(".json"):
                self._unlink(name)

    def get(self, url: str) -> Entry | None:
        """
        The entry kept for C{url}, fresh or not, or L{None}.
        """
        entry = self._read(_key(url) + ".json")
        return entry if entry is not None and entry.url == url else None

    def open(self, entry: Entry) -> int | None:
        """
        Open C{entry}'s body for reading and mark it the most recently used.

        @return: a descriptor, or L{None} if its body is gone (another
            process replaced or evicted it: the entry is fetched anew).
        """
        try:
            fd = os.open(self._path(entry.body), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            os.utime(fd)
        except OSError:
            pass
        return fd

    def temporary(self) -> tuple[int, str]:
        """
        A new temporary file for a body being downloaded, locked by this
        process while it is open.

        @return: its descriptor (open for reading and writing) and path, for
            L{commit} or L{discard}.
        """
        with self._locked():
            fd, path = tempfile.mkstemp(dir=self.tmp_dir)
            fcntl.flock(fd, fcntl.LOCK_EX)
        return fd, path

    def discard(self, path: str) -> None:
        """
        Forget the temporary body at C{path}; readers that have it open may
        go on reading it.
        """
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def commit(self, path: str, entry: Entry) -> Entry | None:
        """
        Keep the complete body at C{path} (from L{temporary}) as C{entry},
        whose C{body} name is chosen here, replacing any entry for its URL.

        @return: the entry kept, or L{None} when the body alone is larger
            than the bound (it is discarded).
        """
        if entry.size > self.max_bytes:
            self.discard(path)
            return None
        entry = replace(entry, body=f"{_key(entry.url)}-{os.urandom(6).hex()}")
        with self._locked():
            os.rename(path, self._path(entry.body))
            old = self.get(entry.url)
            self._write(entry)
            if old is not None and old.body != entry.body:
                self._unlink(old.body)
            self._evict()
        return entry

    def refresh(self, entry: Entry, **changes) -> Entry:
        """
        Record what a revalidation (a 304) taught about C{entry}: a new
        C{stored} time, lifetime or validators; unless another process has
        replaced the entry meanwhile (its own answer stands).
        """
        entry = replace(entry, **changes)
        with self._locked():
            current = self.get(entry.url)
            if current is not None and current.body == entry.body:
                self._write(entry)
        return entry

    def remove(self, url: str) -> None:
        """
        Forget the entry for C{url}, if any.
        """
        with self._locked():
            self._remove(url)

    def _remove(self, url: str) -> None:
        entry = self.get(url)
        if entry is not None:
            self._unlink(_key(url) + ".json")
            self._unlink(entry.body)

    def _write(self, entry: Entry) -> None:
        fd, path = tempfile.mkstemp(dir=self.tmp_dir)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(entry), f)
        os.rename(path, self._path(_key(entry.url) + ".json"))

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass

    def _evict(self) -> None:
        entries = self._entries()
        total = sum(entry.size for _, entry in entries)
        for _, entry in entries:
            if total <= self.max_bytes:
                break
            self._remove(entry.url)
            total -= entry.size

    # -- one download for every process -------------------------------------

    def _claim_path(self, url: str) -> str:
        return os.path.join(self._claims_dir, _key(url))

    def claim(self, url: str) -> Claim | None:
        """
        The right to download C{url}, or L{None} while another process
        (another worker on the same directory) holds it: see L{claimed}.
        """
        path = self._claim_path(url)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                # Left by a process that died holding it, it may still
                # announce that process's download.
                os.ftruncate(fd, 0)
                return Claim(fd, path)
            # Locked just after its holder released (unlinked) it: anew.
            os.close(fd)

    def claimed(self, url: str) -> tuple[bool, Announcement | None]:
        """
        Whether a process holds the claim on C{url}, and what it has
        announced (L{None} until it knows the body is kept, and has a
        length).
        """
        try:
            fd = os.open(self._claim_path(url), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False, None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                return False, None
            try:
                return True, Announcement(**json.loads(os.pread(fd, 4096, 0)))
            except (ValueError, TypeError):
                # Nothing announced yet, or being written.
                return True, None
        finally:
            os.close(fd)

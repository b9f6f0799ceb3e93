"""The node's cache of remote datasets: a local stand-in per object version, and a bounded page store.

**Stand-in.** For ``s3://bucket/train.beton`` with ETag E, ``local_view`` writes a sparse local file
of the object's size whose header, field descriptors, metadata and allocation table are the
object's own bytes (fetched once, then found by ETag), the data pages left as holes; the sidecar,
index and skipped report beside the object are copied beside it. Everything that reads only
those parts (preflight, FFCV's Reader, ``inspect``'s counts) reads the stand-in as it reads a local
file. A marker file beside it names the object (URL, ETag, size, page size), so a loader given the
stand-in knows to read its pages from the object (``remote_pages``). It holds nothing of how the
object is cached: every reader passes its own ``CacheSettings`` (a training run its recipe's,
``inspect`` a small bound), so one command never changes another's bound.

**Pages** live in one folder per cache, one file per page, bounded to ``data.remote_cache_gib`` over
every object and every rank of the node. Each page is downloaded once per node: a rank that wants
a page claims it (an exclusive ``.claim`` file, made under the cache's lock together with the room
it needs), downloads it to a temporary name, checks its length and renames it; a second rank that
finds the claim waits for the page instead of fetching it. A claim is alive while its file is
locked (the kernel drops the lock when its process dies), so one left by a dead process is taken
over. A failed or short download leaves no page file, so it is fetched again, never decoded.

**Eviction** makes room at claim time, in this order: pages the claiming rank will not need again
this epoch that have been read (least recently read first); then pages it will need, the one
needed last first, but only for a page it needs sooner (else the claim waits: a look-ahead never
pushes out what the next batches read); then pages nobody has read yet (prefetched by another
rank), oldest first.
A page's access time records its last read (0: never read). What a rank still needs is its
``next_use`` (remote_pages: a page it has copied into FFCV's memory is not needed again).

**Ledger.** The bytes of every page and claim in the folder are also kept in a small file, changed
under the lock, so that a claim need not scan the folder: at 8 MiB pages a 35 GiB cache is 4,400
files, 18 ms a scan on the 2-core dev box, which under a node-wide lock would cap a node near 55
pages a second. The ledger can only count too much (a failed download, a page removed by hand), so
the folder is recounted whenever it says there is no room; that recount also evicts
``1/EVICTION_SLACK`` of the bound more of the first kind above (read, not needed again by the
claiming rank), so the next claims fit without one.

**Waiting.** A thread that wants a page another thread of its process is downloading sleeps until
a download ends or a page is read (``CHANGES``); one that waits for another rank looks again every
``WAIT_SECONDS``.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .beton_format import DEFAULT_FIELDS, Fields, record_extent
from .beton_header import (FIELD_DESC_DTYPE, HEADER_DTYPE, VERSION, BetonFormatError, field_kinds,
                           metadata_row)
from .remote import RemoteError, RemoteObject, is_remote, open_store, split_url, upload

GIB = 2 ** 30
MARKER_SUFFIX = ".remote.json"  # beside a stand-in: which object it stands for
SIBLING_SUFFIXES = (".json", ".index", ".skipped")  # beton_format's files beside a .beton
CLAIM, TEMP = ".claim", ".part"
WAIT_SECONDS = 0.02  # between looks at a page another rank is fetching
OWN_WAIT_SECONDS = 1.0  # at most, for a page another thread of this process is fetching (woken when it lands)
NEVER_READ = 0.0  # a page file's access time until a rank reads it
LEDGER = ".pages.used"  # bytes of the pages and claims in the page folder (module docstring)
EVICTION_SLACK = 8  # a recount frees this fraction of the bound beyond the need, of pages read and done with
INFINITY = float("inf")


class _Changes:
    """This process's page downloads ending and pages being read: a thread waiting for a page another
    thread of the process is fetching (or for room) sleeps until then, instead of polling: polling
    costs CPU in proportion to the wait, which a slow store makes long."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.count = 0
        self.claims: set[str] = set()  # page files this process is downloading

    def seen(self) -> int:
        with self.condition:
            return self.count

    def fetching(self, name: str) -> None:
        with self.condition:
            self.claims.add(name)

    def is_fetching(self, name: str) -> bool:
        with self.condition:
            return name in self.claims

    def happened(self, fetched: str | None = None) -> None:
        with self.condition:
            self.claims.discard(fetched)
            self.count += 1
            self.condition.notify_all()

    def wait(self, seen: int, seconds: float) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.count != seen, seconds)


CHANGES = _Changes()


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ffcv_imagenet" / "remote"


@dataclass(frozen=True)
class CacheSettings:
    """The recipe's data.remote_cache_dir ('' = the user's cache folder), remote_cache_gib, remote_requests."""

    directory: str = ""
    gib: float = 50.0
    requests: int = 16

    @classmethod
    def of(cls, data: Any) -> CacheSettings:
        return cls(data.remote_cache_dir, data.remote_cache_gib, data.remote_requests)

    @property
    def root(self) -> Path:
        return Path(self.directory) if self.directory else default_cache_dir()

    @property
    def limit_bytes(self) -> int:
        return int(self.gib * GIB)


def _digest(text: str, length: int = 16) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def stand_in_folder(settings: CacheSettings, url: str, etag: str) -> Path:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[1])[-80:]
    return settings.root / "objects" / f"{readable}-{_digest(url, 10)}" / _digest(etag)


def marker_path(stand_in: str | Path) -> Path:
    stand_in = Path(stand_in)
    return stand_in.with_name(stand_in.name + MARKER_SUFFIX)


def is_stand_in(path: str | Path) -> bool:
    """A local stand-in for a remote object (``local_view``): its pages are read from the object."""
    return marker_path(path).is_file()


_OPENED: dict[str, RemoteObject] = {}  # stand-in path -> its object, opened once per process


def stand_in_object(stand_in: str | Path) -> RemoteObject | None:
    """The object version ``stand_in`` stands for (its marker's URL, size and ETag; no request made),
    opened once per process: inspect reads records one ranged GET at a time; None for an ordinary
    local file. A stand-in's path names one object version (``stand_in_folder``), so it never goes stale."""
    opened = _OPENED.get(str(stand_in))
    if opened is not None:
        return opened
    marker = marker_path(stand_in)
    if not marker.is_file():
        return None
    info = json.loads(marker.read_text())
    opened = RemoteObject(info["url"], open_store(info["url"]), split_url(info["url"])[2], info["size"], info["etag"])
    _OPENED[str(stand_in)] = opened
    return opened


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between the node's processes (and threads: each call opens its own file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def local_view(path: str | Path, settings: CacheSettings) -> str:
    """``path`` itself for a local file; for an object-store URL, its local stand-in (module docstring),
    made once per node and object version."""
    if not is_remote(path):
        return str(path)
    url = str(path)
    remote = RemoteObject.open(url)
    stand_in = stand_in_folder(settings, url, remote.etag) / url.rsplit("/", 1)[1]
    marker = marker_path(stand_in)
    if not marker.is_file():
        with file_lock(stand_in.parent / ".lock"):  # the node's other ranks wait, then find it made
            if not marker.is_file():
                page_size = _write_stand_in(remote, stand_in, settings)
                # What describes the object, nothing of how it is cached: every reader passes its own
                # CacheSettings (an inspect with a 1 GiB bound must not change a training run's).
                info = {"url": remote.url, "etag": remote.etag, "size": remote.size, "page_size": page_size}
                temp = marker.with_name(marker.name + TEMP)
                temp.write_text(json.dumps(info))
                os.replace(temp, marker)
    return str(stand_in)


@contextlib.contextmanager
def written_locally(out: str | Path, settings: CacheSettings) -> Iterator[Path]:
    """Where a conversion to ``out`` writes: ``out`` itself, or for a URL a staging folder in the
    cache, uploaded once the conversion is done (the files beside the .beton first, the .beton
    last, each appearing only once complete), then removed; kept, and named, if an upload fails."""
    if not is_remote(out):
        yield Path(out)
        return
    url = str(out)
    split_url(url)  # a malformed URL before any work
    staging = settings.root / "staging" / _digest(url, 10)
    staging.mkdir(parents=True, exist_ok=True)
    local = staging / url.rsplit("/", 1)[1]
    yield local
    try:
        for suffix in SIBLING_SUFFIXES:
            if local.with_name(local.name + suffix).is_file():
                upload(local.with_name(local.name + suffix), url + suffix)
        upload(local, url)
    except RemoteError as err:
        raise RemoteError(f"{err} (the converted files are kept in {staging})") from None
    shutil.rmtree(staging, ignore_errors=True)


def _beton_layout(remote: RemoteObject) -> tuple[int, int, int, int]:
    """(end of the metadata, allocation table's offset, page size, sample count), from the object's header."""
    header = np.frombuffer(remote.read(0, HEADER_DTYPE.itemsize, "GET header"), dtype=HEADER_DTYPE)[0]
    if header["version"] != VERSION or not 0 < int(header["alloc_table_ptr"]) < remote.size:
        raise RemoteError(f"{remote.url} is not a readable .beton (its header is not FFCV's version "
                          f"{VERSION} format)")
    fields_end = HEADER_DTYPE.itemsize + int(header["num_fields"]) * FIELD_DESC_DTYPE.itemsize
    descriptors = np.frombuffer(remote.read(HEADER_DTYPE.itemsize, fields_end, "GET field descriptors"),
                                dtype=FIELD_DESC_DTYPE)
    try:
        row = metadata_row(field_kinds(descriptors))
    except BetonFormatError as err:
        raise RemoteError(f"{remote.url} is not a readable .beton: {err}") from None
    num_samples = int(header["num_samples"])
    return (fields_end + num_samples * row.itemsize, int(header["alloc_table_ptr"]),
            int(header["page_size"]), num_samples)


def _write_stand_in(remote: RemoteObject, stand_in: Path, settings: CacheSettings) -> int:
    """The stand-in and the files beside the object; returns the object's page size."""
    metadata_end, table_start, page_size, _ = _beton_layout(remote)
    stand_in.parent.mkdir(parents=True, exist_ok=True)
    temp = stand_in.with_name(stand_in.name + TEMP)
    try:
        with open(temp, "wb") as handle:
            handle.truncate(remote.size)  # sparse: the data pages take no disk
            handle.write(remote.read(0, metadata_end, "GET header and metadata"))
            handle.seek(table_start)
            handle.write(remote.read(table_start, remote.size, "GET allocation table"))
        for suffix in SIBLING_SUFFIXES:
            data = remote.sibling(stand_in.name + suffix)
            if data is not None:
                stand_in.with_name(stand_in.name + suffix).write_bytes(data)
        os.replace(temp, stand_in)
    except OSError as err:
        temp.unlink(missing_ok=True)
        raise cache_disk_error(settings, err) from None
    return page_size


def stored_record_bytes(reader: Any, index: int, fields: Fields = DEFAULT_FIELDS) -> np.ndarray:
    """``beton_format.record_bytes``, also for a remote dataset's stand-in (which holds no record
    bytes): those are read from the object by one ranged GET."""
    offset, size = record_extent(reader, index, fields)
    return stored_range(reader, offset, size)


def stored_range(reader: Any, offset: int, size: int) -> np.ndarray:
    """``size`` bytes of ``reader``'s file from ``offset``: read locally, or for a remote dataset's
    stand-in (which holds no record bytes) from the object by one ranged GET."""
    remote = stand_in_object(reader.file_name)
    if remote is None:
        return np.fromfile(reader.file_name, dtype=np.uint8, count=size, offset=offset)
    return np.frombuffer(remote.read(offset, offset + size, f"GET bytes {offset}-{offset + size}"),
                         dtype=np.uint8)


def cache_disk_error(settings: CacheSettings, err: OSError) -> RemoteError:
    if err.errno == errno.ENOSPC:
        return RemoteError(f"the remote cache's disk is full ({settings.root}): free space there, or set "
                           f"data.remote_cache_dir elsewhere or a smaller data.remote_cache_gib")
    return RemoteError(f"the remote cache {settings.root} cannot be written: {err}")


@dataclass
class _PageFile:
    name: str
    size: int
    read_at: float
    written_at: float


class NodeCache:
    """One object version's pages in the node's bounded page store (module docstring)."""

    def __init__(self, remote: RemoteObject, page_size: int, settings: CacheSettings, stand_in: str):
        self.remote = remote
        self.page_size = page_size
        self.settings = settings
        self.stand_in = stand_in
        self.folder = settings.root / "pages"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tag = _digest(remote.url + "\0" + remote.etag)
        self.lock_path = settings.root / ".pages.lock"
        self.ledger_path = settings.root / LEDGER
        self._held: dict[str, int] = {}  # page name -> the descriptor holding its claim file's lock
        self.check_room()

    @classmethod
    def for_stand_in(cls, stand_in: str | Path, settings: CacheSettings) -> NodeCache | None:
        """The cache, bounded as ``settings`` say, of the object ``stand_in`` stands for; None for an
        ordinary local file."""
        remote = stand_in_object(stand_in)
        if remote is None:
            return None
        return cls(remote, json.loads(marker_path(stand_in).read_text())["page_size"], settings, str(stand_in))

    def check_room(self) -> None:
        """The bound must hold a few pages per request in flight, and fit on the disk."""
        smallest = (self.settings.requests + 2) * self.page_size
        if self.settings.limit_bytes < smallest:
            raise RemoteError(f"data.remote_cache_gib: {self.settings.gib} GiB holds fewer than "
                              f"{self.settings.requests + 2} pages of {self.page_size / 2 ** 20:g} MiB "
                              f"(data.remote_requests + 2); raise it to at least {smallest / GIB:.3f}")
        free = shutil.disk_usage(self.folder).free + sum(page.size for page in self._page_files())
        if free < self.settings.limit_bytes:
            raise RemoteError(f"data.remote_cache_gib: {self.settings.gib} GiB is more than the "
                              f"{free / GIB:.1f} GiB free for the remote cache at {self.folder}; "
                              "lower it or set data.remote_cache_dir elsewhere")

    # ------------------------------------------------------------------ names
    def page_name(self, page: int) -> str:
        return f"{self.tag}-{page:09d}"

    def page_of(self, name: str) -> int | None:
        """The page number of a page file of this object version; None for another object's."""
        tag, _, number = name.partition("-")
        return int(number) if tag == self.tag else None

    def page_bytes(self, page: int) -> int:
        return min(self.page_size, self.remote.size - page * self.page_size)

    # ------------------------------------------------------------------ reading
    def read_into(self, page: int, out: np.ndarray, next_use: Callable[[str], float]) -> None:
        """Copy ``page`` into ``out``, fetching it first if no rank of the node has."""
        path = self.folder / self.page_name(page)
        expected = self.page_bytes(page)
        while True:
            try:
                with open(path, "rb") as handle:
                    got = handle.readinto(memoryview(out)[:expected])
                    written_at = os.fstat(handle.fileno()).st_mtime
                if got == expected:
                    with contextlib.suppress(FileNotFoundError):
                        os.utime(path, (time.time(), written_at))  # read: evictable once no longer needed
                    CHANGES.happened()
                    return
                path.unlink(missing_ok=True)  # never written by fetch(): leave nothing half there
            except FileNotFoundError:
                pass
            self.fetch(page, next_use)

    def fetch(self, page: int, next_use: Callable[[str], float], wanted: Callable[[], bool] | None = None) -> None:
        """Make sure ``page`` is in the cache: download it, or wait for the rank that is. With ``wanted``
        (a prefetch), nothing is done once it says no, checked under the cache's lock: a page its rank
        has already read meanwhile (and another rank perhaps evicted) is not fetched again."""
        while True:
            seen = CHANGES.seen()
            state = self._claim(page, next_use, wanted)
            if state in ("present", "unwanted"):
                return
            if state == "claimed":
                self._download(page)
                return
            # another thread of this process is fetching it; another rank is, or the cache is all in flight
            CHANGES.wait(seen, OWN_WAIT_SECONDS if state == "wait-own" else WAIT_SECONDS)

    def _download(self, page: int) -> None:
        name = self.page_name(page)
        final, temp, claim = (self.folder / name, self.folder / (name + TEMP), self.folder / (name + CLAIM))
        try:
            start = page * self.page_size
            data = self.remote.read(start, start + self.page_bytes(page), f"GET page {page}")
            with open(temp, "wb") as handle:
                handle.write(data)
            os.utime(temp, (NEVER_READ, time.time()))
            os.replace(temp, final)
        except OSError as err:
            raise cache_disk_error(self.settings, err) from None
        finally:
            temp.unlink(missing_ok=True)
            _drop(claim, self._held.pop(name))  # unlinked, then unlocked: a waiter that takes the lock finds the page
            CHANGES.happened(fetched=name)

    # ------------------------------------------------------------------ the bound
    def _claim(self, page: int, next_use: Callable[[str], float], wanted: Callable[[], bool] | None = None) -> str:
        """'present', 'unwanted', 'claimed' (by this call, with room made for it), 'wait-own' (another
        thread of this process has claimed it) or 'wait'."""
        name = self.page_name(page)
        with file_lock(self.lock_path):
            if (self.folder / name).exists():
                return "present"
            if wanted is not None and not wanted():
                return "unwanted"
            claim = self.folder / (name + CLAIM)
            try:
                held = _hold(claim)
            except OSError as err:
                raise cache_disk_error(self.settings, err) from None
            if held is None:  # its claimer is downloading it: this process's or another's
                return "wait-own" if CHANGES.is_fetching(name) else "wait"
            # held now: a claim file that was there belonged to a process that died (whatever has its id now)
            if (self.folder / name).exists():  # a download renames its page, then drops its claim, unlocked:
                _drop(claim, held)  # it may have ended between the first look and this one
                return "present"
            try:
                if not self._make_room(self.page_bytes(page), next_use(name), next_use):
                    _drop(claim, held)
                    return "wait"
                os.ftruncate(held, 0)
                os.write(held, f"{os.getpid()} {self.page_bytes(page)}".encode())
            except BaseException as err:
                _drop(claim, held)
                if isinstance(err, OSError):
                    raise cache_disk_error(self.settings, err) from None
                raise
            self._held[name] = held
            CHANGES.fetching(name)
            return "claimed"

    def _page_files(self) -> list[_PageFile]:
        files = []
        for entry in os.scandir(self.folder):
            if entry.name.endswith((CLAIM, TEMP)):
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = entry.stat()
                files.append(_PageFile(entry.name, stat.st_size, stat.st_atime, stat.st_mtime))
        return files

    def _claimed_bytes(self) -> int:
        total = 0
        for claim in self.folder.glob("*" + CLAIM):
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                total += int(claim.read_text().split()[1])
        return total

    def _make_room(self, need: int, claimed_use: float, next_use: Callable[[str], float]) -> bool:
        """Account ``need`` more bytes in the ledger, evicting (module docstring's order) when the ledger
        says they do not fit; False if they cannot yet. A page this rank needs is evicted only for one
        it needs sooner (``claimed_use``, the claimed page's next use): a look-ahead never pushes out
        a page the next batches read. Called under the cache's lock."""
        limit = self.settings.limit_bytes
        used = self._read_ledger()
        if used is not None and used + need <= limit:
            self._write_ledger(used + need)
            return True
        files = self._page_files()  # the recount
        used = sum(page.size for page in files) + self._claimed_bytes()
        slack = limit // EVICTION_SLACK
        ranked = []
        for page in files:
            use = next_use(page.name)
            ranked.append((eviction_rank(page, use), use, page))
        ranked.sort(key=lambda entry: entry[0])
        for (kind, _), use, victim in ranked:
            fits = used + need <= limit
            if fits and not (kind == 0 and used + need + slack > limit):  # slack: only pages done with
                break
            if kind == 1 and use <= claimed_use:  # needed no later than the claimed page: kept
                continue
            with contextlib.suppress(FileNotFoundError):
                (self.folder / victim.name).unlink()
                used -= victim.size
        fits = used + need <= limit
        self._write_ledger(used + need if fits else used)
        return fits

    def _read_ledger(self) -> int | None:
        try:
            return int(self.ledger_path.read_text())
        except (FileNotFoundError, ValueError):
            return None  # none yet, or unreadable: the folder is recounted

    def _write_ledger(self, used: int) -> None:
        temp = self.ledger_path.with_name(LEDGER + TEMP)
        try:
            temp.write_text(str(used))
            os.replace(temp, self.ledger_path)  # never half written: a torn count could count too little
        except OSError as err:
            temp.unlink(missing_ok=True)
            raise cache_disk_error(self.settings, err) from None

    def used_bytes(self) -> int:
        return sum(page.size for page in self._page_files())


def eviction_rank(page: _PageFile, next_use: float) -> tuple[int, float]:
    """Smaller goes first: read and not needed again, then needed latest first, then never read."""
    if page.read_at > NEVER_READ:
        return (0, page.read_at) if next_use == INFINITY else (1, -next_use)
    return (1, -next_use) if next_use != INFINITY else (2, page.written_at)


def _hold(claim: Path) -> int | None:
    """Open ``claim`` (made if missing) and lock it without waiting: its descriptor, or None if another
    descriptor holds it. The lock, not the process id written inside, says a claim is alive: the
    kernel drops it when its process dies, however it dies, and a reused process id cannot keep it."""
    held = os.open(claim, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(held)
        return None
    return held


def _drop(claim: Path, held: int) -> None:
    """Remove a claim this process holds, then let go of its lock."""
    claim.unlink(missing_ok=True)
    os.close(held)

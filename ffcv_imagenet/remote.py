"""Objects in an object store (``s3://``, ``gs://``, ``az://``) read by ranged GETs, through obstore.

A URL is parsed into an obstore store and a key; the store takes its settings from the standard
environment variables of each cloud (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``,
``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_ACCOUNT_KEY`` ...), and from the instance's
credential chain where those are absent.

Every request goes through ``RemoteObject.request``: transient errors (timeouts, 5xx, throttling,
dropped connections) are retried with exponential backoff and full jitter, each retry printed with
the running count; permanent ones (no such bucket or key, access denied, bad credentials) become a
one-line ``RemoteError`` naming the URL and what to set. obstore's own retries are switched off so
that every retry is seen and counted here. Every ranged GET carries ``If-Match`` with the ETag read
at start: an object replaced during a run is refused, never mixed with the old one.
"""
from __future__ import annotations

import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from .beton_format import ConversionError

SCHEMES = ("s3", "gs", "az")
CREDENTIAL_HINTS = {
    "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, an instance role), AWS_REGION, and "
          "AWS_ENDPOINT_URL (+ AWS_ALLOW_HTTP=true for plain http) for MinIO and other S3-compatible stores",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS (a service-account JSON) or GOOGLE_SERVICE_ACCOUNT_KEY",
    "az": "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_KEY)",
}
RETRY_SECONDS = 300.0  # a request failing transiently for this long is given up (a store down for 5 min)
FIRST_BACKOFF, MAX_BACKOFF = 0.1, 10.0  # seconds: 0.1, 0.2, 0.4 ... 10, each drawn uniformly below (full jitter)
UPLOAD_CHUNK = 64 * 2 ** 20  # multipart part size for uploads (S3 allows 10,000 parts: 640 GB)

T = TypeVar("T")


class RemoteError(ConversionError):
    """A permanent problem with a remote dataset (or the node cache), reported as one line."""


class RemoteChanged(RemoteError):
    """The object's ETag is no longer the one read at start."""


def is_remote(path: str | Path) -> bool:
    """``s3://``, ``gs://`` or ``az://``: a dataset in an object store."""
    text = str(path)
    return "://" in text and text.split("://", 1)[0] in SCHEMES


def dataset_argument(value: str) -> str | Path:
    """A command-line dataset: a URL kept as text (a Path would fold its ``//``), else a Path."""
    return value if is_remote(value) else Path(value)


def split_url(url: str) -> tuple[str, str, str]:
    """``s3://bucket/a/b.beton`` -> ("s3", "bucket", "a/b.beton"); a ValueError names what is wrong."""
    scheme, _, rest = url.partition("://")
    if scheme not in SCHEMES:
        raise RemoteError(f"{url}: not an object-store URL (s3://, gs:// or az://BUCKET/KEY)")
    bucket, _, key = rest.partition("/")
    if not bucket or not key or key.endswith("/"):
        raise RemoteError(f"{url}: name an object, as {scheme}://BUCKET/PATH/NAME.beton")
    return scheme, bucket, key


@dataclass
class RequestStats:
    """What this process asked of the store: counted for the log and the benchmark."""

    gets: int = 0
    bytes: int = 0
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, gets: int = 0, nbytes: int = 0, retries: int = 0) -> None:
        with self.lock:
            self.gets += gets
            self.bytes += nbytes
            self.retries += retries


STATS = RequestStats()  # one per process: every remote object's requests


def open_store(url: str) -> Any:
    """The obstore store of ``url``'s bucket, its settings from the environment."""
    from obstore.store import from_url

    scheme, bucket, _ = split_url(url)
    return from_url(f"{scheme}://{bucket}", retry_config={"max_retries": 0})


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def permanent_error(url: str, err: BaseException) -> RemoteError | None:
    """The one-line error for a permanent failure; None for a transient one (retried)."""
    from obstore.exceptions import (NotFoundError, PermissionDeniedError, PreconditionError, UnauthenticatedError,
                                    UnknownConfigurationKeyError)

    scheme = url.split("://", 1)[0]
    hint = CREDENTIAL_HINTS.get(scheme, "")
    if isinstance(err, PreconditionError):
        return RemoteChanged(f"{url} was replaced during the run (its ETag changed): a run reads one version "
                             "of its data; start again to train on the new object")
    if isinstance(err, (NotFoundError, FileNotFoundError)):  # obstore raises the builtin for a 404
        return RemoteError(f"{url}: no such object (or no such bucket {split_url(url)[1]!r}); check the URL")
    if isinstance(err, (PermissionDeniedError, UnauthenticatedError)):
        return RemoteError(f"{url}: access denied ({type(err).__name__}); check the credentials: {hint}")
    if isinstance(err, (UnknownConfigurationKeyError, ValueError)) or "builder error" in str(err):
        return RemoteError(f"{url}: the store's settings are wrong ({_first_line(err)}); set {hint}")
    return None


def backoff_seconds(attempt: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(MAX_BACKOFF, FIRST_BACKOFF * 2^attempt))."""
    return rng.uniform(0.0, min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** attempt))


def with_retries(url: str, what: str, call: Callable[[], T], *, retry_seconds: float = RETRY_SECONDS,
                 stats: RequestStats = STATS) -> T:
    """``call()``, retried on transient errors with backoff and jitter for up to ``retry_seconds``;
    a permanent error (or one still failing at the deadline) is a ``RemoteError``."""
    rng = random.Random()
    deadline = time.monotonic() + retry_seconds
    attempt = 0
    while True:
        try:
            return call()
        except RemoteError:
            raise
        except Exception as err:  # obstore raises its own types, and OSError / TimeoutError subclasses
            permanent = permanent_error(url, err)
            if permanent is not None:
                raise permanent from None
            wait = backoff_seconds(attempt, rng)
            if time.monotonic() + wait > deadline:
                raise RemoteError(f"{url}: {what} still failing after {retry_seconds:.0f} s of retries: "
                                  f"{type(err).__name__}: {_first_line(err)[:200]}") from None
            attempt += 1
            stats.add(retries=1)
            print(f"remote: {url}: {what}: {type(err).__name__}: {_first_line(err)[:160]}; retry {attempt} "
                  f"in {wait:.2f} s ({stats.retries} retries in this process)", file=sys.stderr, flush=True)
            time.sleep(wait)


@dataclass
class RemoteObject:
    """One object: its URL, store, key, and the size and ETag read at start (``RemoteObject.open``)."""

    url: str
    store: Any
    key: str
    size: int
    etag: str

    @classmethod
    def open(cls, url: str) -> RemoteObject:
        """HEAD the object: its size and ETag; a one-line ``RemoteError`` if it cannot be read."""
        import obstore

        _, _, key = split_url(url)
        try:
            store = open_store(url)
        except Exception as err:  # a malformed setting in the environment
            raise permanent_error(url, err) or RemoteError(f"{url}: {_first_line(err)}") from None
        meta = with_retries(url, "HEAD", lambda: obstore.head(store, key))
        if not meta.get("e_tag"):
            raise RemoteError(f"{url}: the store gives no ETag, so a replaced object could not be told apart")
        return cls(url, store, key, int(meta["size"]), str(meta["e_tag"]))

    def read(self, start: int, end: int, what: str = "") -> memoryview:
        """Bytes [start, end) of this version of the object, a read-only view of the buffer obstore
        received them in (no copy); short reads are retried like errors."""
        import obstore

        expected = min(end, self.size) - start

        def ranged_get() -> memoryview:
            result = obstore.get(self.store, self.key, options={"range": (start, start + expected),
                                                                   "if_match": self.etag})
            data = memoryview(result.bytes())
            STATS.add(gets=1, nbytes=len(data))
            if len(data) != expected:
                raise OSError(f"short read: {len(data)} of {expected} bytes")
            return data

        return with_retries(self.url, what or f"GET bytes {start}-{start + expected}", ranged_get)

    def sibling(self, name: str) -> bytes | None:
        """The bytes of ``name`` beside this object (its sidecar, index), or None where there is none."""
        import obstore
        from obstore.exceptions import NotFoundError

        key = self.key.rsplit("/", 1)[0] + "/" + name if "/" in self.key else name

        def fetch() -> bytes | None:
            try:
                return bytes(obstore.get(self.store, key).bytes())
            except (NotFoundError, FileNotFoundError):
                return None

        return with_retries(self.url, f"GET {name}", fetch)


def upload(local: str | Path, url: str) -> None:
    """Copy a local file to ``url``: multipart above one chunk; the object appears only once complete."""
    import obstore

    _, _, key = split_url(url)
    store = open_store(url)
    with_retries(url, "upload", lambda: obstore.put(store, key, Path(local), chunk_size=UPLOAD_CHUNK))

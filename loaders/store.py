"""Where the landing zone lives: a local folder, or a prefix in S3 (``s3://bucket/prefix``) or
Google Cloud Storage (``gs://bucket/prefix``).

The landing zone is read through the small part of :class:`pathlib.Path` that ``landed.py``,
``landing.py`` and ``avro.py`` use: ``/``, ``name``, ``is_dir``, ``is_file``, ``exists``,
``iterdir``, ``glob("*.ext")``, ``stat``, ``read_bytes`` and ``open("rb")``. A local landing is
a plain :class:`Path` (its behaviour is exactly what it always was); an object store prefix is an
:class:`ObjectPath`, which does the same through obstore (listing, HEAD, GET) and hands Polars
the URI to scan lazily with its own cloud readers.

Object stores have no folders: a "folder" is a key prefix, listed with a delimiter. Listing is
the cheap way to learn sizes, so a folder remembers its one listing (made when it is first asked
about) and the paths taken from it know their size, time and ETag without a request of their
own: inspecting a landed day costs one LIST and one GET (its manifest), not a HEAD per file. A
folder is a new object each time a day is looked up, so that snapshot is as fresh as the
question. A file's ETag is part of its signature (an object overwritten in the same second with
the same size is still noticed); its content fingerprint stays the sha256 of its bytes, because an
ETag is the MD5 only of a single-part upload.

Credentials come from each cloud's own chain, never from the project: for S3 the ``AWS_*``
environment variables (``AWS_ENDPOINT_URL`` for an S3-compatible store or emulator), web
identity or instance metadata; for GCS ``GOOGLE_APPLICATION_CREDENTIALS``, the gcloud default
credentials or the metadata server, and ``STORAGE_EMULATOR_HOST`` for an emulator. Errors name
the bucket, the key and the endpoint, never a credential: an endpoint that cannot be reached is
retryable; a missing bucket or a refused access is a ConfigError (a retry finds the same).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, TypeVar

import obstore
from obstore.store import GCSStore, S3Store

from starsmith.errors import ConfigError, StarsmithError
from starsmith.loaders.store_errors import reason, store_error

SCHEMES = ("s3", "gs")
_URI = re.compile(r"(s3|gs)://([^/]+)(?:/(.*))?")
_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ALLOW_HTTP",
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
        "STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_SERVICE_ACCOUNT",
        "STARSMITH_STORE_MAX_RETRIES")


def is_uri(text: str | Path) -> bool:
    """Is ``text`` an object store URI (``s3://``, ``gs://``) rather than a local path?"""
    return isinstance(text, str) and bool(re.match(r"[a-z][a-z0-9+.-]*://", text))


def landing_root(text: str | Path | ObjectPath) -> Path | ObjectPath:
    """The landing zone a setting, a flag or a step request names: a URI, else a local path
    (as it was given: the caller resolves a relative one against its project)."""
    if isinstance(text, ObjectPath):
        return text
    if isinstance(text, Path) or not is_uri(text):
        return Path(text)
    match = _URI.fullmatch(text.rstrip("/"))
    if match is None:
        raise ConfigError(f"the landing zone {text!r} is not a folder, s3://bucket/prefix or "
                          "gs://bucket/prefix", where="the project's `landing` (or --landing, "
                          "STARSMITH_LANDING)",
                          fix="Use a local folder, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")
    scheme, bucket, key = match.group(1), match.group(2), (match.group(3) or "").strip("/")
    if not 3 <= len(bucket) <= 63:
        raise ConfigError(f"the bucket name {bucket!r} is not valid (3 to 63 characters)",
                          where=text, fix="Name the bucket as the cloud shows it")
    return ObjectPath(scheme, bucket, key)


@dataclass(frozen=True)
class ObjectStat:
    """What a listing or a HEAD says of an object (the attributes of ``os.stat_result`` that
    the landing zone reads, and the ETag)."""

    st_size: int
    st_mtime_ns: int
    st_etag: str = ""


@dataclass
class _Listing:
    files: dict[str, ObjectStat]
    folders: set[str]


class ObjectPath:
    """A key (a file) or a key prefix (a folder) in a bucket, read as a :class:`Path` is."""

    __slots__ = ("_known", "_listing", "_stat", "bucket", "key", "scheme")

    def __init__(self, scheme: str, bucket: str, key: str, *, stat: ObjectStat | None = None,
                 known: bool = False) -> None:
        self.scheme, self.bucket, self.key = scheme, bucket, key.strip("/")
        self._stat = stat  # from the parent's listing (a file), if it came from one
        self._known = known  # the parent's listing said whether it exists
        self._listing: _Listing | None = None  # this folder's own listing, once made

    # -- the parts of pathlib.Path in use --------------------------------------------------
    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}" if self.key else \
            f"{self.scheme}://{self.bucket}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: ObjectPath) -> bool:
        return str(self) < str(other)

    def __truediv__(self, name: str) -> ObjectPath:
        key = f"{self.key}/{name}" if self.key else name
        listing = self._listing
        if listing is None or "/" in name.strip("/"):
            return ObjectPath(self.scheme, self.bucket, key)
        name = name.strip("/")
        if name in listing.files:
            return ObjectPath(self.scheme, self.bucket, key, stat=listing.files[name], known=True)
        return ObjectPath(self.scheme, self.bucket, key, known=True) if name in listing.folders \
            else _Missing(self.scheme, self.bucket, key)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rindex("."):] if "." in name.strip(".") else ""

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.scheme, self.bucket, self.key.rsplit("/", 1)[0]
                          if "/" in self.key else "")

    def resolve(self) -> ObjectPath:
        return self

    def is_file(self) -> bool:
        if self._known:
            return self._stat is not None
        return self._head() is not None

    def is_dir(self) -> bool:
        if self._known and self._stat is None:
            return True  # the parent listed it as a folder
        if self._known:
            return False
        found = self._list()
        return bool(found.files or found.folders)

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def stat(self) -> ObjectStat:
        found = self._stat if self._known else self._head()
        if found is None:
            raise FileNotFoundError(2, "no such object", str(self))
        return found

    def iterdir(self) -> Iterator[ObjectPath]:
        found = self._list()
        for name in sorted(found.folders):
            yield ObjectPath(self.scheme, self.bucket, f"{self.key}/{name}".lstrip("/"),
                             known=True)
        for name, stat in sorted(found.files.items()):
            yield ObjectPath(self.scheme, self.bucket, f"{self.key}/{name}".lstrip("/"),
                             stat=stat, known=True)

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        """Direct children whose name matches ``pattern`` (no ``/`` or ``**``: one level)."""
        if "/" in pattern:
            raise ValueError(f"only a name pattern is supported here, not {pattern!r}")
        return (p for p in self.iterdir() if fnmatchcase(p.name, pattern))

    def read_bytes(self) -> bytes:
        try:
            return bytes(_call(lambda: obstore.get(self.store, self.key).bytes(), self))
        except FileNotFoundError:
            raise FileNotFoundError(2, "no such object", str(self)) from None

    def open(self, mode: str = "rb") -> io.BytesIO:
        """The object's bytes as a file (read whole: the small files and headers read this
        way; data is scanned by Polars, hashed by :func:`sha256`)."""
        if mode != "rb":
            raise ValueError(f"{self} can only be opened to read bytes ('rb'), not {mode!r}")
        return io.BytesIO(self.read_bytes())

    # -- object store access ---------------------------------------------------------------
    @property
    def store(self) -> S3Store | GCSStore:
        return _store(self.scheme, self.bucket, _env())

    def _head(self) -> ObjectStat | None:
        try:
            meta = _call(lambda: obstore.head(self.store, self.key), self)
        except FileNotFoundError:
            return None
        return _stat(meta)

    def _list(self) -> _Listing:
        if self._listing is None:
            prefix = f"{self.key}/" if self.key else ""
            found = _call(lambda: obstore.list_with_delimiter(self.store, prefix=prefix), self)
            self._listing = _Listing(
                {str(o["path"])[len(prefix):]: _stat(o) for o in found["objects"]},
                {str(p)[len(prefix):].strip("/") for p in found["common_prefixes"]})
        return self._listing

    def put(self, data: bytes) -> None:
        """Write the object (whole: a reader never sees part of it)."""
        _call(lambda: obstore.put(self.store, self.key, data), self)


class _Missing(ObjectPath):
    """A child its parent's listing did not hold."""

    __slots__ = ()

    def __init__(self, scheme: str, bucket: str, key: str) -> None:
        super().__init__(scheme, bucket, key, known=True)

    def is_dir(self) -> bool:
        return False


def local_folder(text: str | Path | ObjectPath, what: str) -> Path:
    """The landing zone as a local folder, for what can only write to one (``what``, e.g.
    ``starsmith extract``): an object store prefix is refused, never read as a relative folder
    named ``s3:``."""
    found = landing_root(text)
    if isinstance(found, ObjectPath):
        raise ConfigError(f"{what} writes to a local landing folder, not to {found}",
                          where="the project's `landing` (or --landing, STARSMITH_LANDING)",
                          fix="Run it with a local landing folder (--landing DIR) and copy the "
                              "landed days to the bucket, data files first and markers last")
    return found


Landing = Path | ObjectPath
"""A landing zone, or a folder or file in it: local, or in an object store."""


def _stat(meta: Any) -> ObjectStat:
    when = meta["last_modified"]
    return ObjectStat(int(meta["size"]), int(when.timestamp() * 1_000_000) * 1_000,
                      str(meta.get("e_tag") or "").strip('"'))


def _env() -> tuple[tuple[str, str], ...]:
    """The environment a store is made from: a changed variable makes a new store."""
    return tuple((k, os.environ[k]) for k in _ENV if k in os.environ)


@functools.lru_cache(maxsize=32)
def _store(scheme: str, bucket: str, env: tuple[tuple[str, str], ...]) -> S3Store | GCSStore:
    """One client per bucket. Credentials and the endpoint come from the cloud's own chain (the
    client reads them); only what Polars also needs is set here, see :func:`storage_options`."""
    given = dict(env)
    retry: dict[str, Any] = {}
    if given.get("STARSMITH_STORE_MAX_RETRIES"):
        retry = {"retry_config": {"max_retries": int(given["STARSMITH_STORE_MAX_RETRIES"]),
                                  "retry_timeout": timedelta(seconds=60),
                                  "backoff": {"init_backoff": timedelta(milliseconds=100),
                                              "max_backoff": timedelta(seconds=5),
                                              "base": 2.0}}}
    if scheme == "s3":
        return S3Store(bucket, **retry)
    emulator = given.get("STORAGE_EMULATOR_HOST")
    if emulator:  # an emulator takes no signed requests; without this the client asks the
        # cloud's metadata server for a token
        return GCSStore(bucket, base_url=_http(emulator), skip_signature=True, **retry)
    return GCSStore(bucket, **retry)


def _http(host: str) -> str:
    return host if "://" in host else f"http://{host}"


def storage_options(path: Path | ObjectPath) -> dict[str, str] | None:
    """What Polars' cloud readers need beyond their own chain (which reads ``AWS_*`` and
    ``GOOGLE_*`` variables): the GCS emulator's address. None for a local path."""
    if not isinstance(path, ObjectPath):
        return None
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if path.scheme == "gs" and emulator:
        return {"google_base_url": _http(emulator), "google_skip_signature": "true"}
    return {}


def scan_args(files: Sequence[Path | ObjectPath]
              ) -> tuple[list[Path] | list[str], dict[str, str] | None]:
    """The files as Polars' scanners take them, and their storage options."""
    if not files or isinstance(files[0], Path):
        return [f for f in files if isinstance(f, Path)], None
    return [str(f) for f in files], storage_options(files[0])


def sha256(path: Path | ObjectPath) -> str:
    """The file's sha256, read in blocks (an object is streamed, never held whole)."""
    digest = hashlib.sha256()
    if isinstance(path, ObjectPath):
        def feed() -> None:
            for chunk in obstore.get(path.store, path.key):  # the client's chunks, as they come
                digest.update(chunk)
        try:
            _call(feed, path)
        except FileNotFoundError:
            raise FileNotFoundError(2, "no such object", str(path)) from None
        return digest.hexdigest()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


T = TypeVar("T")


def landed_into(landing: Path | ObjectPath, write: Callable[[Path], T]) -> T:
    """Run ``write``, which lands days in a local folder (the demo, ``starsmith init``'s
    sample), into the landing zone: into a local one directly; into a temporary folder then
    uploaded (see :func:`upload`) for an object store prefix."""
    if isinstance(landing, Path):
        return write(landing)
    with tempfile.TemporaryDirectory(prefix="starsmith-landing-") as tmp:
        result = write(Path(tmp))
        upload(Path(tmp), landing)
    return result


def upload(local: Path, dest: ObjectPath) -> int:
    """Copy a local landing zone to ``dest``, each day's data files before its ``_SUCCESS`` or
    manifest (a reader never sees a marked day without its files); returns the files copied."""
    files = sorted(p for p in local.rglob("*") if p.is_file())
    markers = [p for p in files if p.name in ("_SUCCESS", "_manifest.json")]
    for path in [p for p in files if p not in markers] + markers:
        (dest / path.relative_to(local).as_posix()).put(path.read_bytes())
    return len(files)


def _call(fn: Any, path: ObjectPath) -> Any:
    """Run a store request, its failures typed (a missing object stays FileNotFoundError)."""
    try:
        return fn()
    except FileNotFoundError:
        raise
    except (StarsmithError, ValueError, TypeError):
        raise
    except Exception as err:
        typed = store_error(err, path)
        if typed is None:
            raise
        raise typed from None
    except BaseException as err:  # the Rust client gave up on its settings (a bad endpoint)
        if type(err).__name__ != "PanicException":
            raise
        raise ConfigError(f"the object store client for {path.scheme}://{path.bucket} cannot "
                          f"work with its settings ({reason(str(err))})", where=str(path),
                          fix="Check the endpoint variables (AWS_ENDPOINT_URL, "
                              "STORAGE_EMULATOR_HOST): a URL such as http://host:port") from None

"""Remote scenes: dataset names that GDAL resolves (URLs, object stores, ``/vsi`` paths), the GDAL settings for
reading them, the listing of object-store prefixes, cheap fingerprints, and secrets kept out of what is shown.

* **Names.** ``https://`` and ``http://`` map to ``/vsicurl/``, ``s3://`` to ``/vsis3/``, ``gs://`` to ``/vsigs/``,
  ``az://`` to ``/vsiaz/``; a raw ``/vsi…/`` path (``/vsizip/``, ``/vsis3/``, …) and an in-memory VRT
  (``<VRTDataset…``, STAC band stacks) are passed unchanged. Such a name is a :class:`RemotePath`, never a
  :class:`pathlib.Path` (which collapses ``//`` and would turn ``https://host`` into ``https:/host``).
* **Settings** (:data:`GDAL_REMOTE_DEFAULTS`, :data:`GDAL_REMOTE_OPEN_DEFAULTS`): defaults only; a variable set in
  the user's environment wins. Transient HTTP errors (429, 500, 502, 503, 504) are retried by GDAL itself
  (``GDAL_HTTP_MAX_RETRY``, ``GDAL_HTTP_RETRY_DELAY``); a 403, 404 or timeout fails the scene with one line that
  names the URL with its credentials and query-string values replaced by ``***`` (:func:`redact`).
* **Listing** (:func:`list_prefix`): GDAL's own recursive VSI directory listing (``VSIReadDirRecursive``), reached
  through ``pyogrio.vsi_listtree`` (pyogrio is already a dependency; the ``osgeo`` bindings are not needed). So the
  listing uses the same credentials, endpoint and settings as the reads (``AWS_*``, ``GS_*``, ``AZURE_*``,
  ``GDAL_HTTP_*``), with no second configuration to keep in step as fsspec/s3fs or obstore would need.
* **Fingerprints** (:func:`remote_fingerprint`): for ``http(s)`` and S3 the *content fingerprint* a local copy of
  the same bytes gets (:func:`rrsis_cli.fingerprint.sampled_fingerprint`: size, first and last MiB), so a scene keeps
  its key, and its outputs their bytes, wherever it is read from. It costs two ranged reads of at most 1 MiB
  (one for an object of at most 1 MiB): ``Range`` GETs (transient answers retried as GDAL retries them), or
  ``GetObject(Range=…)`` through boto3 (:func:`s3_client`: the endpoint and credentials variables GDAL reads).
  The first answer also gives size, ETag and Last-Modified. :class:`FingerprintCache` (a JSON file in
  :func:`cache_dir`) keeps the fingerprint by (name without query string, size, ETag, Last-Modified), so a
  rerun asks one byte (``http(s)``) or a ``HeadObject`` (S3) per scene, and an object replaced under the same
  name (new ETag) is sampled again. GCS objects (``/vsigs/``) and Azure blobs (``/vsiaz/``) are sampled through
  their store's client in the same way (:mod:`rrsis_cli.gcs`, the ``rrsis[gcs]`` extra; :mod:`rrsis_cli.azure`,
  ``rrsis[azure]``). GDAL's ``VSIStatL``/``VSIFReadL`` are not reachable from Python without the ``osgeo``
  bindings, so for other ``/vsi`` paths (and ``/vsigs/``, ``/vsiaz/`` without the client) the fingerprint is a
  hash of the name alone: a changed object under the same name is then not noticed by skip-existing (use
  ``--overwrite``).
  An object whose samples cannot be read (a server without ranges) is fingerprinted by its name and what its
  server says (size, ETag, Last-Modified). The S3 prefix listing goes through GDAL (names only), so the
  listing's sizes and ETags are not used: the cache makes the per-object ``HeadObject`` the whole cost.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from rrsis_cli.fingerprint import SAMPLE_BYTES, sampled_fingerprint, tail_start

SCHEMES = {"https": "/vsicurl/", "http": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}

# Read by GDAL at every request: set in the environment (only when the user has not set them).
GDAL_REMOTE_DEFAULTS = {
    "GDAL_HTTP_MAX_RETRY": "4",  # retries of 429/500/502/503/504 answers
    "GDAL_HTTP_RETRY_DELAY": "1",  # seconds, doubled at each retry
    "GDAL_HTTP_CONNECTTIMEOUT": "30",
    "GDAL_HTTP_TIMEOUT": "120",  # seconds for one request (a tile or a header), not for a scene
}
# Set only while a remote dataset is opened. GDAL_DISABLE_READDIR_ON_OPEN is chosen per scene
# (:func:`readdir_setting`): EMPTY_DIR (no listing of the object's "folder", no probes for side-car files) unless
# the scene is known to have side-cars, then YES (GDAL probes each side-car name it knows, as for a local file).
GDAL_REMOTE_OPEN_DEFAULTS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": "33554432",  # 32 MiB per open file
}
FINGERPRINT_TIMEOUT = 30.0


def apply_gdal_defaults() -> None:
    """Put :data:`GDAL_REMOTE_DEFAULTS` into the environment where the user has not set them, and GDAL's GCS
    endpoint for ``STORAGE_EMULATOR_HOST`` (:func:`rrsis_cli.gcs.apply_gdal_defaults`)."""
    from rrsis_cli.gcs import apply_gdal_defaults as apply_gcs_defaults

    for name, value in GDAL_REMOTE_DEFAULTS.items():
        os.environ.setdefault(name, value)
    apply_gcs_defaults()


apply_gdal_defaults()


def remote_open_options(path: RemotePath | None = None) -> dict[str, str]:
    """GDAL configuration for opening a remote dataset: :data:`GDAL_REMOTE_OPEN_DEFAULTS` with
    :func:`readdir_setting` of ``path``, the user's environment winning."""
    defaults = {**GDAL_REMOTE_OPEN_DEFAULTS, "GDAL_DISABLE_READDIR_ON_OPEN": readdir_setting(path)}
    return {name: os.environ.get(name, value) for name, value in defaults.items()}


def readdir_setting(path: RemotePath | None) -> str:
    """``GDAL_DISABLE_READDIR_ON_OPEN`` for opening ``path``: ``YES`` when side-car files were found next to it
    (``path.sidecars``, :func:`find_sidecars`), so that GDAL reads its ``.msk`` mask, ``.aux.xml``, RPC and world
    files as it does for a local file; else ``EMPTY_DIR`` (no request for side-cars: GDAL probes ~45 names, a
    round trip each)."""
    return "YES" if path is not None and path.sidecars else "EMPTY_DIR"


def is_remote(name: str | Path | RemotePath) -> bool:
    """A URL, a GDAL ``/vsi`` path or an in-memory VRT: GDAL decides whether it exists."""
    if isinstance(name, RemotePath):
        return True
    if isinstance(name, Path):
        return False
    text = str(name)
    return text.startswith(("/vsi", "<VRTDataset")) or "://" in text


def gdal_name(text: str) -> str:
    """The name GDAL opens: ``https://h/x.tif`` -> ``/vsicurl/https://h/x.tif``, ``s3://b/k`` -> ``/vsis3/b/k``
    (also ``gs://``, ``az://``); ``/vsi…`` paths and VRT XML unchanged. UsageError for another scheme."""
    from rrsis_cli.errors import UsageError

    if text.startswith(("/vsi", "<VRTDataset")):
        return text
    scheme, _, rest = text.partition("://")
    prefix = SCHEMES.get(scheme.lower())
    if prefix is None:
        raise UsageError(f"{redact(text)}: unsupported URL scheme {scheme!r} (use https://, http://, s3://, gs://, "
                         "az:// or a GDAL /vsi…/ path)")
    return f"{prefix}{text}" if prefix == "/vsicurl/" else f"{prefix}{rest}"


_USERINFO = re.compile(r"(://)[^/@\s?#]+@")
_QUERY_VALUE = re.compile(r"([?&][^=&\s#'\"]+)=[^&\s#'\"]*")


def redact(text: str) -> str:
    """``text`` with the credentials of URLs (``user:password@``) and the values of query parameters (signatures,
    SAS tokens, API keys) replaced by ``***``: what messages and the manifest may show."""
    return _QUERY_VALUE.sub(r"\1=***", _USERINFO.sub(r"\1***@", str(text)))


class RemotePath:
    """A dataset that GDAL reads from a URL, an object store or another ``/vsi`` file system.

    ``given``: the name as the user (or a STAC asset) gave it; ``gdal``: what GDAL opens (:func:`gdal_name`),
    credentials and signed query strings included. ``str()`` is the redacted ``given`` (messages, manifest, tags);
    ``os.fspath()`` is ``gdal`` (so ``rasterio.open(path)`` opens it). ``name``, ``stem``, ``suffix`` are those of
    the last component of the URL's path (query string left out), as for a :class:`pathlib.Path`. Equality and
    hash follow ``gdal``. ``label``, when set, replaces ``given`` in ``str()`` (an in-memory VRT shows the item and
    bands it stacks, not its XML). ``sidecars``: whether side-car files were found next to it (True/False), None
    when not looked for (:func:`find_sidecars`; decides :func:`readdir_setting`)."""

    __slots__ = ("given", "gdal", "label", "sidecars")

    def __init__(self, given: str, label: str | None = None, sidecars: bool | None = None):
        self.given = given
        self.gdal = gdal_name(given)
        self.label = label
        self.sidecars = sidecars

    def __fspath__(self) -> str:
        return self.gdal

    def __str__(self) -> str:
        return self.label if self.label is not None else redact(self.given)

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.gdal == self.gdal

    def __hash__(self) -> int:
        return hash(self.gdal)

    def __reduce__(self):  # dask workers get the full name (they open it) and what is known of its side-cars
        return (RemotePath, (self.given, self.label, self.sidecars))

    @property
    def name(self) -> str:
        if self.label is not None:
            return self.label
        path = re.split(r"[?#]", self.given, maxsplit=1)[0].rstrip("/")
        return path.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rfind("."):] if "." in name.lstrip(".") else ""

    @property
    def stem(self) -> str:
        suffix = self.suffix
        return self.name[:-len(suffix)] if suffix else self.name

    def exists(self) -> bool:
        return True  # GDAL decides when it opens the dataset


def dataset_path(text: str | Path | RemotePath) -> Path | RemotePath:
    """A local :class:`~pathlib.Path`, or a :class:`RemotePath` for a URL / ``/vsi`` name (never through Path)."""
    if isinstance(text, Path | RemotePath):
        return text
    return RemotePath(text) if is_remote(text) else Path(text)


def is_prefix(text: str) -> bool:
    """A remote name ending in ``/``: a prefix (folder) of an object store, listed like a folder."""
    return is_remote(text) and not str(text).startswith("<") and re.split(r"[?#]", str(text), maxsplit=1)[0].endswith("/")


def list_prefix(prefix: str, glob: str | None, suffixes: tuple[str, ...]) -> list[tuple[RemotePath, str]]:
    """(object, its folder relative to the prefix: ``""`` or ``a/b``) for every object under ``prefix``
    (recursive) whose file name matches ``glob``, or whose suffix is in ``suffixes`` without a glob; sorted.
    GDAL's VSI listing through pyogrio (see the module's notes). InputError when the prefix cannot be listed or
    holds no such object."""
    import pyogrio

    from rrsis_cli.errors import InputError

    base = gdal_name(prefix)
    given_base = prefix if prefix.endswith("/") else prefix + "/"
    try:
        listed = pyogrio.vsi_listtree(base)
    except Exception as exc:  # noqa: BLE001 - GDAL's message, one line, secrets removed
        raise InputError(f"cannot list the prefix ({redact(' '.join(str(exc).split()))})",
                         RemotePath(prefix)) from exc
    found = []
    for name in sorted(listed):
        relative = name[len(base):] if name.startswith(base) else name.rsplit("/", 1)[-1]
        file_name = relative.rsplit("/", 1)[-1]
        if not file_name or (glob and not fnmatch(file_name, glob)):
            continue
        if not glob and not file_name.lower().endswith(suffixes):
            continue
        folder = relative.rsplit("/", 1)[0] if "/" in relative else ""
        found.append((RemotePath(given_base + relative), folder))
    if not found:
        wanted = glob or "|".join(f"*{s}" for s in suffixes)
        raise InputError(f"no {wanted} object under this prefix ({len(listed)} object(s) listed)",
                         RemotePath(prefix))
    return found


def http_url(path: RemotePath) -> str | None:
    """The http(s) URL behind a ``/vsicurl/`` name, else None."""
    rest = path.gdal[len("/vsicurl/"):] if path.gdal.startswith("/vsicurl/") else None
    return rest if rest and rest.lower().startswith(("http://", "https://")) else None


TRANSIENT_HTTP = (429, 500, 502, 503, 504)  # the answers GDAL retries


@dataclass(frozen=True)
class ObjectInfo:
    """What a server says about an object: ``size`` (bytes, or None), ``etag``, ``last_modified`` (text, or None).
    ``validated``: an ETag or a Last-Modified is known (size alone does not tell a replaced object apart)."""

    size: int | None
    etag: str | None
    last_modified: str | None

    @property
    def validated(self) -> bool:
        return bool(self.etag or self.last_modified)


def http_range(url: str, first: int, last: int, timeout: float = FINGERPRINT_TIMEOUT):
    """``(status, headers, body)`` of a GET of bytes ``first``..``last`` of ``url`` (body: at most that many
    bytes). Transient answers are retried as GDAL retries them (``GDAL_HTTP_MAX_RETRY`` times,
    ``GDAL_HTTP_RETRY_DELAY`` seconds doubling), so that a passing hiccup does not change the scene's key. None
    when the server does not answer it."""
    retries = int(os.environ.get("GDAL_HTTP_MAX_RETRY", GDAL_REMOTE_DEFAULTS["GDAL_HTTP_MAX_RETRY"]))
    delay = float(os.environ.get("GDAL_HTTP_RETRY_DELAY", GDAL_REMOTE_DEFAULTS["GDAL_HTTP_RETRY_DELAY"]))
    request = urllib.request.Request(url, headers={"Range": f"bytes={first}-{last}"})
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only
                return response.status, response.headers, response.read(last + 1 - first)
        except urllib.error.HTTPError as exc:
            if exc.code not in TRANSIENT_HTTP or attempt == retries:
                return None
            time.sleep(delay * 2 ** attempt)
        except (urllib.error.URLError, OSError, ValueError):
            return None
    return None


def http_object_info(status: int, headers) -> ObjectInfo:
    """The object's size (total of ``Content-Range``, or ``Content-Length`` of a whole-object answer), ETag and
    Last-Modified from the headers of a (ranged) GET."""
    size = None
    total = re.search(r"/(\d+)\s*$", headers.get("Content-Range", ""))
    if total:
        size = int(total.group(1))
    elif status == 200 and headers.get("Content-Length", "").isdigit():
        size = int(headers["Content-Length"])
    return ObjectInfo(size, headers.get("ETag"), headers.get("Last-Modified"))


def server_stat(url: str, timeout: float = FINGERPRINT_TIMEOUT) -> ObjectInfo | None:
    """What an HTTP server says about ``url`` without sending its content (a one-byte ranged GET rather than a
    HEAD, so that pre-signed GET URLs work). None when the server cannot tell (the scene then fails when GDAL
    opens it, with its own message)."""
    answer = http_range(url, 0, 0, timeout)
    return None if answer is None else http_object_info(answer[0], answer[1])


def http_samples(url: str, sample: int) -> tuple[ObjectInfo, bytes, bytes] | None:
    """(what the server says, first ``sample`` bytes, bytes from :func:`tail_start` to the end) of ``url``: one
    ranged GET, two when the object is larger than ``sample``. None when the server does not serve ranges, or
    the object changed between the two answers."""
    answer = http_range(url, 0, sample - 1)
    if answer is None:
        return None
    info = http_object_info(answer[0], answer[1])
    whole = answer[0] == 200 and info.size is not None and info.size <= sample
    if info.size is None or (answer[0] != 206 and not whole):
        return None
    if info.size <= sample:
        return info, answer[2], b""
    tail = http_range(url, tail_start(info.size, sample), info.size - 1)
    if tail is None or tail[0] != 206 or http_object_info(*tail[:2]) != info:
        return None
    return info, answer[2], tail[2]


TRUE_VALUES = ("YES", "TRUE", "ON", "1")


S3_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                           "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")


def s3_client(timeout: float | None = None):
    """A boto3 S3 client configured from the variables GDAL's ``/vsis3/`` reads: endpoint (``AWS_ENDPOINT_URL[_S3]``,
    or ``AWS_S3_ENDPOINT`` with ``AWS_HTTPS``), addressing (``AWS_VIRTUAL_HOSTING``), region, and
    ``AWS_NO_SIGN_REQUEST`` for public buckets. ``timeout`` bounds connecting and reading (seconds). One client
    per configuration is kept and reused (boto3 clients are thread-safe; making one costs ~10 ms, a run over
    thousands of S3 scenes asks for one or two per scene)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint and os.environ.get("AWS_S3_ENDPOINT"):
        secure = os.environ.get("AWS_HTTPS", "YES").upper() not in ("NO", "FALSE", "OFF", "0")
        endpoint = f"{'https' if secure else 'http'}://{os.environ['AWS_S3_ENDPOINT']}"
    path_style = os.environ.get("AWS_VIRTUAL_HOSTING", "TRUE").upper() in ("NO", "FALSE", "OFF", "0")
    unsigned = os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in TRUE_VALUES
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    credentials = tuple(os.environ.get(name) for name in S3_CREDENTIAL_VARIABLES)
    return _s3_client(endpoint, path_style, unsigned, region, timeout, credentials)


@functools.lru_cache(maxsize=8)
def _s3_client(endpoint: str | None, path_style: bool, unsigned: bool, region: str, timeout: float | None,
               credentials: tuple):  # noqa: ARG001 - part of the cache key: other credentials, another client
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    settings: dict[str, Any] = {"s3": {"addressing_style": "path" if path_style else "auto"},
                                "retries": {"max_attempts": 5, "mode": "standard"}}
    if timeout is not None:
        settings.update(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 3, "mode": "standard"})
    if unsigned:
        settings["signature_version"] = UNSIGNED
    return boto3.client("s3", endpoint_url=endpoint, config=Config(**settings), region_name=region)


def s3_names(gdal: str, prefix: str, limit: int, timeout: float = FINGERPRINT_TIMEOUT) -> list[str] | None:
    """Up to ``limit`` keys starting with ``prefix`` in the bucket of a ``/vsis3/`` name (one ``ListObjectsV2``),
    or None when they cannot be listed (no credentials, no ``s3:ListBucket`` permission, the endpoint)."""
    location = s3_location(gdal)
    if location is None:
        return None
    try:
        answer = s3_client(timeout).list_objects_v2(Bucket=location[0], Prefix=prefix, MaxKeys=limit)
    except Exception:  # noqa: BLE001 - botocore's errors: nothing known
        return None
    return [entry["Key"] for entry in answer.get("Contents", [])]


def s3_location(name: str) -> tuple[str, str] | None:
    """(bucket, key) of a ``/vsis3/bucket/key`` or ``s3://bucket/key`` name, else None."""
    for prefix in ("/vsis3/", "s3://"):
        if name.startswith(prefix):
            bucket, _, key = name[len(prefix):].partition("/")
            return (bucket, key) if bucket and key else None
    return None


def s3_info(answer: dict) -> ObjectInfo:
    """Size, ETag and LastModified from a ``HeadObject`` or a ranged ``GetObject`` answer."""
    total = re.search(r"/(\d+)\s*$", answer.get("ContentRange") or "")
    size = int(total.group(1)) if total else answer.get("ContentLength")
    modified = answer.get("LastModified")
    return ObjectInfo(size, answer.get("ETag"), modified.isoformat() if modified is not None else None)


def s3_stat(gdal: str, timeout: float = FINGERPRINT_TIMEOUT) -> ObjectInfo | None:
    """Size, ETag and LastModified of the S3 object behind a ``/vsis3/bucket/key`` name (``HeadObject``), or None
    when they cannot be read (no credentials, no such key: the scene then fails when GDAL opens it, with its own
    message)."""
    location = s3_location(gdal)
    if location is None:
        return None
    try:
        return s3_info(s3_client(timeout).head_object(Bucket=location[0], Key=location[1]))
    except Exception:  # noqa: BLE001 - botocore's errors (credentials, 403/404, endpoint): fall back to the name
        return None


def s3_samples(gdal: str, sample: int, timeout: float = FINGERPRINT_TIMEOUT) -> tuple[ObjectInfo, bytes, bytes] | None:
    """As :func:`http_samples` for the S3 object behind a ``/vsis3/`` name: ranged ``GetObject`` calls."""
    location = s3_location(gdal)
    if location is None:
        return None
    try:
        client = s3_client(timeout)
        first = client.get_object(Bucket=location[0], Key=location[1], Range=f"bytes=0-{sample - 1}")
        info = s3_info(first)
        head = first["Body"].read()
        if info.size is None or info.size <= sample:
            return (info, head, b"") if info.size is not None else None
        last = client.get_object(Bucket=location[0], Key=location[1],
                                 Range=f"bytes={tail_start(info.size, sample)}-{info.size - 1}")
        if s3_info(last) != info:
            return None  # replaced between the two reads
        return info, head, last["Body"].read()
    except Exception:  # noqa: BLE001 - botocore's errors: as s3_stat
        return None


def cache_dir() -> Path:
    """The user's cache folder of rrsis: ``$RRSIS_CACHE_DIR``, else ``$XDG_CACHE_HOME/rrsis``, else
    ``~/.cache/rrsis``."""
    if os.environ.get("RRSIS_CACHE_DIR"):
        return Path(os.environ["RRSIS_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "rrsis"
    return Path.home() / ".cache" / "rrsis"


CACHE_FILE = "remote-fingerprints.json"
CACHE_FORMAT = "rrsis remote fingerprints 1"
CACHE_ENTRIES = 100_000  # the newest are kept


class FingerprintCache:
    """Content fingerprints of remote objects already sampled, by (name without query string, size, ETag,
    Last-Modified): a JSON file (``path``, default :data:`CACHE_FILE` in :func:`cache_dir`), so a rerun asks each
    server one cheap question instead of fetching its samples again. Read when first needed (a run of local
    files never reads it), new entries written by :meth:`save` (merged with what other processes wrote
    meanwhile, newest :data:`CACHE_ENTRIES` kept, temporary file then rename). Entries are kept only for objects
    with an ETag or a Last-Modified. A cache that cannot be read or written is no cache (never an error): losing
    an entry only costs a refetch."""

    def __init__(self, path: Path | None = None):
        self.path = path if path is not None else cache_dir() / CACHE_FILE
        self._entries: dict[tuple, tuple[str, float]] | None = None  # key -> (fingerprint, when it was sampled)
        self._names: set[str] = set()
        self.new: dict[tuple, tuple[str, float]] = {}
        self._lock = threading.RLock()  # scenes are fingerprinted by several threads (inputs.fingerprint_remote)

    @property
    def entries(self) -> dict[tuple, tuple[str, float]]:
        """(name, size, etag, last_modified) -> (fingerprint, time it was sampled); read from the file once."""
        with self._lock:
            if self._entries is None:
                self._entries = read_cache_file(self.path)
                self._names = {key[0] for key in self._entries}
            return self._entries

    def knows(self, name: str) -> bool:
        """An object of this name was sampled before (asking for its validators first may spare the samples)."""
        with self._lock:
            return bool(self.entries) and name in self._names

    def lookup(self, name: str, info: ObjectInfo) -> str | None:
        with self._lock:
            entry = self.entries.get((name, info.size, info.etag, info.last_modified)) if info.validated else None
        return entry[0] if entry else None

    def remember(self, name: str, info: ObjectInfo, fingerprint: str) -> None:
        if info.validated:
            key = (name, info.size, info.etag, info.last_modified)
            with self._lock:
                self.entries[key] = self.new[key] = (fingerprint, time.time())
                self._names.add(name)

    def save(self) -> None:
        """Write the new entries, merged with the file as it is now; nothing when there are none or when the
        file cannot be written."""
        if not self.new:
            return
        merged = {**read_cache_file(self.path), **self.new}
        newest = sorted(merged.items(), key=lambda item: item[1][1], reverse=True)[:CACHE_ENTRIES]
        payload = {"format": CACHE_FORMAT,
                   "entries": [[*key, fingerprint, when] for key, (fingerprint, when) in newest]}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(payload))
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return
        self.new = {}


def read_cache_file(path: Path) -> dict[tuple, tuple[str, float]]:
    """The entries of a :class:`FingerprintCache` file; none when it is missing, unreadable or not one."""
    try:
        payload = json.loads(path.read_text())
        if payload.get("format") != CACHE_FORMAT:
            return {}
        return {(name, size, etag, modified): (fingerprint, float(when))
                for name, size, etag, modified, fingerprint, when in payload["entries"]
                if isinstance(fingerprint, str)}
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return {}


def client_stat(gdal: str) -> ObjectInfo | None:
    """Size, ETag and modification time of the GCS object or Azure blob behind a ``/vsigs/`` or ``/vsiaz/`` name,
    through the store's client (:func:`rrsis_cli.gcs.gcs_stat`, :func:`rrsis_cli.azure.azure_stat`); None when
    they cannot be read or for another name."""
    if path_scheme(gdal) == "gs":
        from rrsis_cli.gcs import gcs_stat as stat
    elif path_scheme(gdal) == "az":
        from rrsis_cli.azure import azure_stat as stat
    else:
        return None
    found = stat(gdal)
    return None if found is None else ObjectInfo(found["size"], found["etag"], found["last_modified"])


def client_samples(gdal: str, sample: int) -> tuple[ObjectInfo, bytes, bytes] | None:
    """As :func:`http_samples` for the GCS object or Azure blob behind a ``/vsigs/`` or ``/vsiaz/`` name (ranged
    reads through the store's client: :func:`rrsis_cli.gcs.gcs_read`, :func:`rrsis_cli.azure.azure_read`): None
    when it cannot be read or was replaced between the reads."""
    if path_scheme(gdal) == "gs":
        from rrsis_cli.gcs import gcs_read as read
    elif path_scheme(gdal) == "az":
        from rrsis_cli.azure import azure_read as read
    else:
        return None
    info = client_stat(gdal)
    if info is None or info.size is None:
        return None
    head = read(gdal, 0, sample - 1) if info.size else b""
    tail = read(gdal, tail_start(info.size, sample), info.size - 1) if info.size > sample else b""
    if head is None or tail is None or client_stat(gdal) != info:
        return None
    return info, head, tail


def path_scheme(gdal: str) -> str | None:
    """``s3``, ``gs`` or ``az`` for a ``/vsis3/``, ``/vsigs/`` or ``/vsiaz/`` name, else None."""
    for scheme in ("s3", "gs", "az"):
        if gdal.startswith(SCHEMES[scheme]):
            return scheme
    return None


def sampled_object(path: RemotePath, sample: int) -> tuple[ObjectInfo, bytes, bytes] | None:
    """:func:`http_samples`, :func:`s3_samples` or :func:`client_samples` (GCS, Azure) of a remote dataset; None
    for other file systems."""
    url = http_url(path)
    if url:
        return http_samples(url, sample)
    return s3_samples(path.gdal, sample) if path_scheme(path.gdal) == "s3" else client_samples(path.gdal, sample)


def object_info(path: RemotePath) -> ObjectInfo | None:
    """:func:`server_stat`, :func:`s3_stat` or :func:`client_stat` (GCS, Azure) of a remote dataset; None for other
    file systems."""
    url = http_url(path)
    if url:
        return server_stat(url)
    return s3_stat(path.gdal) if path_scheme(path.gdal) == "s3" else client_stat(path.gdal)


def remote_fingerprint(path: RemotePath, cache: FingerprintCache | None = None) -> tuple[str, int | None]:
    """(sha256 hex, size or None) of a remote object. ``http(s)`` and S3: its content fingerprint, the one a
    local copy gets (:func:`rrsis_cli.fingerprint.sampled_fingerprint`), from two ranged reads; found in ``cache``
    after one cheap question (:func:`object_info`) when the object was sampled before. Other file systems, or
    an object whose samples cannot be read: a hash of the name and of what the server says (see the module's
    notes). The name's query string is left out, so a re-signed URL of the same object keeps its fingerprint."""
    name = re.split(r"[?#]", path.gdal, maxsplit=1)[0]
    if cache is not None and cache.knows(name):
        info = object_info(path)
        if info is None:
            return described_fingerprint(name, None)  # no answer: the scene fails when GDAL opens it
        found = cache.lookup(name, info)
        if found:
            return found, info.size
    sampled = sampled_object(path, SAMPLE_BYTES)
    if sampled is None:
        return described_fingerprint(name, object_info(path))
    info, head, tail = sampled
    fingerprint = sampled_fingerprint(info.size, head, tail)
    if cache is not None:
        cache.remember(name, info, fingerprint)
    return fingerprint, info.size


def described_fingerprint(name: str, info: ObjectInfo | None) -> tuple[str, int | None]:
    """(sha256 hex, size or None) of a remote object's name and of what its server says (``info``; None: the name
    alone), when its content cannot be sampled."""
    if info is None or (info.size is None and not info.validated):
        return hashlib.sha256(f"remote:{name}".encode()).hexdigest(), None
    text = f"remote:{name}|{info.size}|{info.etag}|{info.last_modified}"
    return hashlib.sha256(text.encode()).hexdigest(), info.size


# ------------------------------------------------------------------------------------------------ side-cars
SIDECAR_LISTING = 100  # names listed at most per scene (an object store: one request)
HTTP_SIDECARS = (".msk", ".aux.xml")  # probed over plain HTTP(S), appended to the file name
SCENE_SUFFIXES = (".tif", ".tiff", ".vrt")  # a sibling that is another scene, not a side-car


def find_sidecars(path: RemotePath) -> bool | None:
    """Whether the remote scene ``path`` has side-car files, which GDAL reads next to a local file and the remote
    default (``EMPTY_DIR``) would skip: a ``.msk`` validity mask, ``.aux.xml`` (nodata, georeferencing, RPCs),
    ``.ovr``, RPC (``.RPB``, ``_rpc.txt``) and world files (``.tfw``, ``.wld``). Set on ``path.sidecars`` and
    returned; None when it cannot be told (the scene is then opened without side-cars):

    * S3, GCS (with ``rrsis[gcs]``) and Azure (with ``rrsis[azure]``): one listing of the names that start with
      the scene's stem in its folder
      (``folder/scene`` for ``folder/scene.tif``): any but the scene itself and other scenes
      (``*.tif|*.tiff|*.vrt``) whose remainder starts with ``.`` or ``_`` is a side-car. This finds every side-car
      GDAL names after the scene; None without list permission (``s3:ListBucket``, ``storage.objects.list``).
    * http(s): a one-byte request for each of :data:`HTTP_SIDECARS` (a web server cannot be listed); None for a
      URL with a query string (a pre-signed URL signs one object, never its side-cars).
    * Other ``/vsi`` names and in-memory VRTs: None.

    Not looked for when the user set ``GDAL_DISABLE_READDIR_ON_OPEN`` (their setting decides; no request)."""
    if "GDAL_DISABLE_READDIR_ON_OPEN" in os.environ:
        return None
    path.sidecars = _sidecars(path)
    return path.sidecars


def _sidecars(path: RemotePath) -> bool | None:
    url = http_url(path)
    if url is not None:
        if re.search(r"[?#]", url):
            return None
        return any([http_range(url + suffix, 0, 0) is not None for suffix in HTTP_SIDECARS])
    scheme = path_scheme(path.gdal)
    if scheme == "s3":
        location, list_names = s3_location(path.gdal), s3_names
    elif scheme == "gs":
        from rrsis_cli.gcs import gcs_location, gcs_names

        location, list_names = gcs_location(path.gdal), gcs_names
    elif scheme == "az":
        from rrsis_cli.azure import azure_location, azure_names

        location, list_names = azure_location(path.gdal), azure_names
    else:
        return None
    if location is None:
        return None
    listed = list_names(path.gdal, stem_key(location[1]), SIDECAR_LISTING)
    if listed is None:
        return None
    return len(listed) >= SIDECAR_LISTING or any(is_sidecar(name, location[1]) for name in listed)


def stem_key(key: str) -> str:
    """``folder/scene`` for ``folder/scene.tif``: what every side-car name of the scene starts with."""
    folder, _, name = key.rpartition("/")
    stem = name[:name.rfind(".")] if "." in name.lstrip(".") else name
    return f"{folder}/{stem}" if folder else stem


def is_sidecar(name: str, key: str) -> bool:
    """``name``, listed next to the scene ``key``, is one of its side-car files: the scene's stem followed by ``.``
    or ``_``, neither the scene nor another scene."""
    stem = stem_key(key)
    return (name != key and name.startswith(stem) and name[len(stem):][:1] in (".", "_")
            and not name.lower().endswith(SCENE_SUFFIXES))

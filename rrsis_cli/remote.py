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
* **Fingerprints** (:func:`remote_fingerprint`): for ``http(s)`` a one-byte ranged GET (what the server says:
  size, ``ETag``, ``Last-Modified``; a ranged GET rather than a HEAD so that pre-signed GET URLs work), never the
  content. For S3 (``/vsis3/``) a ``HeadObject`` through boto3 (same endpoint and credentials variables as GDAL,
  :func:`s3_client`) gives size, ETag and LastModified, so an object replaced under the same key is computed
  again, not skipped. GDAL's ``VSIStatL`` is not reachable from Python without the ``osgeo`` bindings, so for
  ``/vsigs/``, ``/vsiaz/``, other ``/vsi`` paths and an S3 object whose metadata cannot be read the fingerprint is
  a hash of the name alone: a changed object under the same name is then not noticed by skip-existing (use
  ``--overwrite``).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import urllib.error
import urllib.request
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

SCHEMES = {"https": "/vsicurl/", "http": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}

# Read by GDAL at every request: set in the environment (only when the user has not set them).
GDAL_REMOTE_DEFAULTS = {
    "GDAL_HTTP_MAX_RETRY": "4",  # retries of 429/500/502/503/504 answers
    "GDAL_HTTP_RETRY_DELAY": "1",  # seconds, doubled at each retry
    "GDAL_HTTP_CONNECTTIMEOUT": "30",
    "GDAL_HTTP_TIMEOUT": "120",  # seconds for one request (a tile or a header), not for a scene
}
# Set only while a remote dataset is opened: EMPTY_DIR stops GDAL from listing the object's "folder" and probing
# side-car files (.ovr, .msk, .aux.xml) on the server; applying it to local files would hide their .msk masks.
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


def remote_open_options() -> dict[str, str]:
    """GDAL configuration for opening a remote dataset: :data:`GDAL_REMOTE_OPEN_DEFAULTS`, the user's environment
    winning."""
    return {name: os.environ.get(name, value) for name, value in GDAL_REMOTE_OPEN_DEFAULTS.items()}


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
    bands it stacks, not its XML)."""

    __slots__ = ("given", "gdal", "label")

    def __init__(self, given: str, label: str | None = None):
        self.given = given
        self.gdal = gdal_name(given)
        self.label = label

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

    def __reduce__(self):  # dask workers get the full name (they open it)
        return (RemotePath, (self.given, self.label))

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


def server_stat(url: str, timeout: float = FINGERPRINT_TIMEOUT) -> dict[str, Any] | None:
    """What an HTTP server says about ``url`` without sending its content: size (from ``Content-Range`` of a
    one-byte ranged GET, else ``Content-Length``), ``ETag`` and ``Last-Modified``. Transient answers are retried
    as GDAL retries them (``GDAL_HTTP_MAX_RETRY`` times, ``GDAL_HTTP_RETRY_DELAY`` seconds doubling), so that a
    passing hiccup does not change the scene's key. None when the server cannot tell (the scene then fails when
    GDAL opens it, with its own message)."""
    retries = int(os.environ.get("GDAL_HTTP_MAX_RETRY", GDAL_REMOTE_DEFAULTS["GDAL_HTTP_MAX_RETRY"]))
    delay = float(os.environ.get("GDAL_HTTP_RETRY_DELAY", GDAL_REMOTE_DEFAULTS["GDAL_HTTP_RETRY_DELAY"]))
    request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only
                headers = response.headers
                response.read(1)
            break
        except urllib.error.HTTPError as exc:
            if exc.code not in TRANSIENT_HTTP or attempt == retries:
                return None
            time.sleep(delay * 2 ** attempt)
        except (urllib.error.URLError, OSError, ValueError):
            return None
    size = None
    total = re.search(r"/(\d+)\s*$", headers.get("Content-Range", ""))
    if total:
        size = int(total.group(1))
    elif headers.get("Content-Length", "").isdigit():
        size = int(headers["Content-Length"])
    return {"size": size, "etag": headers.get("ETag"), "last_modified": headers.get("Last-Modified")}


TRUE_VALUES = ("YES", "TRUE", "ON", "1")


def s3_client(timeout: float | None = None):
    """A boto3 S3 client configured from the variables GDAL's ``/vsis3/`` reads: endpoint (``AWS_ENDPOINT_URL[_S3]``,
    or ``AWS_S3_ENDPOINT`` with ``AWS_HTTPS``), addressing (``AWS_VIRTUAL_HOSTING``), region, and
    ``AWS_NO_SIGN_REQUEST`` for public buckets. ``timeout`` bounds connecting and reading (seconds)."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint and os.environ.get("AWS_S3_ENDPOINT"):
        secure = os.environ.get("AWS_HTTPS", "YES").upper() not in ("NO", "FALSE", "OFF", "0")
        endpoint = f"{'https' if secure else 'http'}://{os.environ['AWS_S3_ENDPOINT']}"
    path_style = os.environ.get("AWS_VIRTUAL_HOSTING", "TRUE").upper() in ("NO", "FALSE", "OFF", "0")
    settings: dict[str, Any] = {"s3": {"addressing_style": "path" if path_style else "auto"},
                                "retries": {"max_attempts": 5, "mode": "standard"}}
    if timeout is not None:
        settings.update(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 3, "mode": "standard"})
    if os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in TRUE_VALUES:
        settings["signature_version"] = UNSIGNED
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("s3", endpoint_url=endpoint, config=Config(**settings), region_name=region)


def s3_stat(gdal: str, timeout: float = FINGERPRINT_TIMEOUT) -> dict[str, Any] | None:
    """Size, ETag and LastModified of the S3 object behind a ``/vsis3/bucket/key`` name (``HeadObject``), or None
    when they cannot be read (no credentials, no such key: the scene then fails when GDAL opens it, with its own
    message)."""
    bucket, _, key = gdal[len("/vsis3/"):].partition("/")
    if not bucket or not key:
        return None
    try:
        head = s3_client(timeout).head_object(Bucket=bucket, Key=key)
    except Exception:  # noqa: BLE001 - botocore's errors (credentials, 403/404, endpoint): fall back to the name
        return None
    modified = head.get("LastModified")
    return {"size": head.get("ContentLength"), "etag": head.get("ETag"),
            "last_modified": modified.isoformat() if modified is not None else None}


def remote_fingerprint(path: RemotePath) -> tuple[str, int | None]:
    """(sha256 hex, size or None) of a remote object from what its server says cheaply (:func:`server_stat`,
    :func:`s3_stat`); a hash of the name when nothing can be asked (see the module's notes). The name's query
    string is left out, so a re-signed URL of the same object keeps its fingerprint."""
    url = http_url(path)
    if url:
        stat = server_stat(url)
    elif path.gdal.startswith("/vsis3/"):
        stat = s3_stat(path.gdal)
    else:
        stat = None
    name = re.split(r"[?#]", path.gdal, maxsplit=1)[0]
    if stat is None or (stat["size"] is None and not stat["etag"] and not stat["last_modified"]):
        return hashlib.sha256(f"remote:{name}".encode()).hexdigest(), None
    text = f"remote:{name}|{stat['size']}|{stat['etag']}|{stat['last_modified']}"
    return hashlib.sha256(text.encode()).hexdigest(), stat["size"]

"""Google Cloud Storage: the configuration shared by GDAL's ``/vsigs/`` (reads) and ``google-cloud-storage``
(writes of ``--out gs://``, :mod:`rrsis_cli.store`), and two small reads for fingerprints.

One set of variables serves both:

* **Emulator** (tests, local development): ``STORAGE_EMULATOR_HOST=http://host:port``, which the official client
  reads. :func:`apply_gdal_defaults` then points GDAL at the same server (``CPL_GS_ENDPOINT=http://host:port/``)
  and, since an emulator checks no signature, sets ``GS_NO_SIGN_REQUEST=YES``; the client uses anonymous
  credentials. Either variable set by the user wins.
* **Endpoint**: ``CPL_GS_ENDPOINT`` (GDAL's name, e.g. a private endpoint) is also the client's API endpoint.
* **Credentials**: the client uses Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS`` pointing at
  a service-account JSON file, ``gcloud auth application-default login``, or the metadata server on Google
  Cloud); GDAL reads the same ``GOOGLE_APPLICATION_CREDENTIALS`` file. ``GS_NO_SIGN_REQUEST=YES`` (a public
  bucket) makes both anonymous. Nothing here prints a credential.

``google-cloud-storage`` is the optional extra ``rrsis[gcs]``: reading ``gs://`` scenes needs only GDAL; writing
``--out gs://`` needs the client (:func:`require_client`, a one-line usage error naming the extra).
"""

from __future__ import annotations

import functools
import os
from typing import Any

TRUE_VALUES = ("YES", "TRUE", "ON", "1")
TIMEOUT = 60.0  # seconds per request of the client (connect and read)
INSTALL_HINT = "pip install 'rrsis[gcs]'"


def emulator_host() -> str | None:
    """``STORAGE_EMULATOR_HOST`` as a URL (``http://`` added when it has no scheme), or None."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip().rstrip("/")
    if not host:
        return None
    return host if "://" in host else f"http://{host}"


def gdal_defaults() -> dict[str, str]:
    """The GDAL variables that follow from ``STORAGE_EMULATOR_HOST`` (empty without it): GDAL's /vsigs/ then
    reads from the emulator the client writes to."""
    host = emulator_host()
    return {} if host is None else {"CPL_GS_ENDPOINT": host + "/", "GS_NO_SIGN_REQUEST": "YES"}


def apply_gdal_defaults() -> None:
    """Put :func:`gdal_defaults` into the environment where the user has not set them (GDAL reads both at every
    request, in every copy of GDAL loaded: rasterio's and pyogrio's)."""
    for name, value in gdal_defaults().items():
        os.environ.setdefault(name, value)


def require_client() -> None:
    """UsageError naming the extra when ``google-cloud-storage`` is not installed."""
    from rrsis_cli.errors import UsageError

    try:
        import google.cloud.storage  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"gs:// outputs need google-cloud-storage: {INSTALL_HINT}") from exc


def api_endpoint() -> str | None:
    """The JSON API's base URL: the emulator, else ``CPL_GS_ENDPOINT`` (GDAL's XML endpoint is on the same
    host), else None (Google's)."""
    host = emulator_host()
    if host is not None:
        return host
    endpoint = os.environ.get("CPL_GS_ENDPOINT", "").strip().rstrip("/")
    return endpoint or None


def anonymous() -> bool:
    """No credentials: under an emulator, or with ``GS_NO_SIGN_REQUEST=YES`` (a public bucket)."""
    return emulator_host() is not None or os.environ.get("GS_NO_SIGN_REQUEST", "").upper() in TRUE_VALUES


def gcs_client():
    """A ``google.cloud.storage.Client`` configured as the module says (UsageError when the package is
    missing); one per configuration, reused (Application Default Credentials are looked up once, not per
    object)."""
    require_client()
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or None
    return _client(api_endpoint(), anonymous(), project)


@functools.lru_cache(maxsize=4)
def _client(endpoint: str | None, anonymous_access: bool, project: str | None):
    from google.cloud import storage

    options = {"api_endpoint": endpoint} if endpoint else None
    if anonymous_access:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "anonymous", credentials=AnonymousCredentials(),
                              client_options=options)
    return storage.Client(project=project, client_options=options)


def gcs_location(name: str) -> tuple[str, str] | None:
    """(bucket, object name) of ``/vsigs/bucket/key`` or ``gs://bucket/key``, else None."""
    for prefix in ("/vsigs/", "gs://"):
        if name.startswith(prefix):
            bucket, _, key = name[len(prefix):].partition("/")
            return (bucket, key) if bucket and key else None
    return None


def gcs_stat(gdal_name: str) -> dict[str, Any] | None:
    """What GCS says about the object behind ``/vsigs/bucket/key`` (or ``gs://…``) without reading it: ``size``
    (bytes), ``etag``, ``generation`` (changes whenever the object is replaced) and ``last_modified`` (ISO 8601,
    the object's ``updated`` time). None when it cannot be read (no client, no credentials, no such object), as
    :func:`rrsis_cli.remote.s3_stat` does."""
    location = gcs_location(gdal_name)
    if location is None:
        return None
    try:
        blob = gcs_client().bucket(location[0]).get_blob(location[1], timeout=TIMEOUT)
    except Exception:  # noqa: BLE001 - a missing package, credentials, 403, the endpoint: nothing known
        return None
    if blob is None:
        return None
    return {"size": blob.size, "etag": blob.etag, "generation": str(blob.generation) if blob.generation else None,
            "last_modified": blob.updated.isoformat() if blob.updated is not None else None}


def gcs_read(gdal_name: str, start: int, end: int) -> bytes | None:
    """Bytes ``start`` to ``end`` **inclusive** (HTTP Range semantics, as ``bytes=start-end``) of the object behind
    ``/vsigs/bucket/key`` (or ``gs://…``); fewer when the object is shorter. None when it cannot be read. To tell
    an object replaced between two reads, compare :func:`gcs_stat`'s ``generation`` before and after them."""
    location = gcs_location(gdal_name)
    if location is None or start < 0 or end < start:
        return None
    try:
        return gcs_client().bucket(location[0]).blob(location[1]).download_as_bytes(start=start, end=end,
                                                                                    timeout=TIMEOUT)
    except Exception:  # noqa: BLE001 - as gcs_stat
        return None


def gcs_names(gdal_name: str, prefix: str, limit: int) -> list[str] | None:
    """Up to ``limit`` object names starting with ``prefix`` in the bucket of ``gdal_name`` (one listing request),
    or None when they cannot be listed (no client, no credentials, no permission)."""
    location = gcs_location(gdal_name)
    if location is None:
        return None
    try:
        return [blob.name for blob in gcs_client().list_blobs(location[0], prefix=prefix, max_results=limit,
                                                              timeout=TIMEOUT)]
    except Exception:  # noqa: BLE001 - as gcs_stat
        return None

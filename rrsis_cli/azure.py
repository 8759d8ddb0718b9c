"""Azure Blob Storage: the configuration shared by GDAL's ``/vsiaz/`` (reads) and ``azure-storage-blob`` (writes of
``--out az://``, :mod:`rrsis_cli.store`; content fingerprints and side-car listings of ``az://`` scenes).

One set of variables, GDAL's names, serves both:

* ``AZURE_STORAGE_CONNECTION_STRING``: a connection string (account name and key or SAS, and a ``BlobEndpoint``
  for another endpoint, e.g. the Azurite emulator ``http://127.0.0.1:10000/devstoreaccount1``).
* ``AZURE_STORAGE_ACCOUNT`` with ``AZURE_STORAGE_ACCESS_KEY`` (shared key) or ``AZURE_STORAGE_SAS_TOKEN``, or with
  ``AZURE_NO_SIGN_REQUEST=YES`` (a public container); the endpoint is ``https://<account>.blob.core.windows.net``.
* ``AZURE_STORAGE_ACCOUNT`` alone: Azure AD credentials (managed identity, ``az login``) through
  ``azure-identity``'s ``DefaultAzureCredential`` when that package is installed, as GDAL uses the managed identity.

Names: ``az://container/blob`` and ``/vsiaz/container/blob`` (the container plays the bucket). Nothing here prints a
credential. ``azure-storage-blob`` is the optional extra ``rrsis[azure]``: reading ``az://`` scenes needs only GDAL
(their fingerprint is then their name's); writing ``--out az://`` needs the client (:func:`require_client`).
"""

from __future__ import annotations

import functools
import os
from typing import Any

TRUE_VALUES = ("YES", "TRUE", "ON", "1")
TIMEOUT = 60  # seconds per request of the client (connect and read)
INSTALL_HINT = "pip install 'rrsis[azure]'"


def require_client() -> None:
    """UsageError naming the extra when ``azure-storage-blob`` is not installed."""
    from rrsis_cli.errors import UsageError

    try:
        import azure.storage.blob  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"az:// outputs need azure-storage-blob: {INSTALL_HINT}") from exc


def service_client():
    """A ``BlobServiceClient`` from the variables of the module's docstring (UsageError when the package is
    missing or no account is configured); one per configuration, reused."""
    require_client()
    names = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCESS_KEY",
             "AZURE_STORAGE_SAS_TOKEN", "AZURE_NO_SIGN_REQUEST")
    return _client(*(os.environ.get(name) or None for name in names))


@functools.lru_cache(maxsize=4)
def _client(connection: str | None, account: str | None, key: str | None, sas: str | None,
            no_sign: str | None):
    from azure.storage.blob import BlobServiceClient

    from rrsis_cli.errors import UsageError

    options: dict[str, Any] = {"connection_timeout": TIMEOUT, "read_timeout": TIMEOUT}
    if connection:
        return BlobServiceClient.from_connection_string(connection, **options)
    if not account:
        raise UsageError("Azure: set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with "
                         "AZURE_STORAGE_ACCESS_KEY, AZURE_STORAGE_SAS_TOKEN or AZURE_NO_SIGN_REQUEST=YES")
    url = f"https://{account}.blob.core.windows.net"
    if key:
        credential: Any = {"account_name": account, "account_key": key}
    elif sas:
        credential = sas.lstrip("?")
    elif (no_sign or "").upper() in TRUE_VALUES:
        credential = None
    else:
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError as exc:
            raise UsageError("Azure: AZURE_STORAGE_ACCOUNT without a key or SAS token needs azure-identity "
                             "(pip install azure-identity) for Azure AD credentials") from exc
        credential = DefaultAzureCredential()
    return BlobServiceClient(url, credential=credential, **options)


def azure_location(name: str) -> tuple[str, str] | None:
    """(container, blob name) of ``/vsiaz/container/blob`` or ``az://container/blob``, else None."""
    for prefix in ("/vsiaz/", "az://"):
        if name.startswith(prefix):
            container, _, blob = name[len(prefix):].partition("/")
            return (container, blob) if container and blob else None
    return None


def azure_stat(gdal_name: str) -> dict[str, Any] | None:
    """What Azure says about the blob behind ``/vsiaz/container/blob`` without reading it: ``size`` (bytes),
    ``etag`` (changes whenever the blob is replaced), ``last_modified`` (ISO 8601). None when it cannot be read
    (no client, no credentials, no such blob), as :func:`rrsis_cli.remote.s3_stat`."""
    location = azure_location(gdal_name)
    if location is None:
        return None
    try:
        properties = service_client().get_blob_client(*location).get_blob_properties(timeout=TIMEOUT)
    except Exception:  # noqa: BLE001 - a missing package or account, credentials, 403/404, the endpoint
        return None
    modified = properties.last_modified
    return {"size": properties.size, "etag": properties.etag,
            "last_modified": modified.isoformat() if modified is not None else None}


def azure_read(gdal_name: str, start: int, end: int) -> bytes | None:
    """Bytes ``start`` to ``end`` **inclusive** (HTTP Range semantics) of the blob behind ``/vsiaz/container/blob``;
    fewer when the blob is shorter. None when it cannot be read."""
    location = azure_location(gdal_name)
    if location is None or start < 0 or end < start:
        return None
    try:
        blob = service_client().get_blob_client(*location)
        return blob.download_blob(offset=start, length=end + 1 - start, timeout=TIMEOUT).readall()
    except Exception:  # noqa: BLE001 - as azure_stat
        return None


def azure_names(gdal_name: str, prefix: str, limit: int) -> list[str] | None:
    """Up to ``limit`` blob names starting with ``prefix`` in the container of ``gdal_name`` (one listing request
    for up to ``limit`` names), or None when they cannot be listed."""
    location = azure_location(gdal_name)
    if location is None:
        return None
    try:
        container = service_client().get_container_client(location[0])
        pages = container.list_blobs(name_starts_with=prefix, results_per_page=limit, timeout=TIMEOUT).by_page()
        return [blob.name for blob in next(pages, [])]
    except Exception:  # noqa: BLE001 - as azure_stat
        return None

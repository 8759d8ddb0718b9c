"""``rrsis predict --out s3://bucket/prefix/`` (or ``gs://``, ``az://``): outputs in an object store.

A run works in a local *staging folder* exactly as in a local ``--out`` (journals, temporary files, renames),
then uploads each finished pair's files, ``mask.tif`` **last**: the mask is the completion marker, so a pair
whose upload was cut has no mask in the store and is recomputed by the next run, and skip-existing reads the
mask's tags (configuration hash, scene fingerprint, prompt) from the store through GDAL (``/vsis3/``,
``/vsigs/``). The published STAC files (``--publish``; the catalog last of them) are uploaded after the pairs, the
manifest last. A pair's staged files are removed once uploaded; the journals of unfinished pairs stay, so a
killed run resumes on the same machine.

Decisions:

* **Staging folder**: ``$TMPDIR/rrsis-out-<12 hex of the URL>`` (:func:`tempfile.gettempdir`): the same for every
  run into the same URL on one machine, so an interrupted run's journals are found again; point ``TMPDIR`` at a
  large scratch disk for big scenes.
* **One backend per scheme** (:data:`BACKENDS`): the few store operations (check the bucket, modification time
  of an object, upload, delete, download) and the GDAL prefix; :class:`RemoteOutput` holds everything else
  (names, upload order, skip-existing), so both stores follow one contract.
* **Writes with the store's own client**: boto3 for ``s3://`` (multipart uploads, retries, every S3-compatible
  store through an endpoint URL; tested against moto's server), ``google-cloud-storage`` for ``gs://`` (the
  optional extra ``rrsis[gcs]``, resumable uploads, retried; tested against ``gcp-storage-emulator``). GDAL's VSI
  writes are not exposed by rasterio for plain files (vectors, JSON), and fsspec would need s3fs/gcsfs as well.
  **Reads with GDAL** (``/vsis3/``, ``/vsigs/``): the mask's tags and headers are range requests, as for inputs.
* **Endpoint and credentials**: one set of variables serves reads and writes. S3: boto3 reads
  ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; otherwise GDAL's ``AWS_S3_ENDPOINT`` (host[:port]), ``AWS_HTTPS``
  and ``AWS_VIRTUAL_HOSTING`` are translated (:func:`rrsis_cli.remote.s3_client`); credentials from the usual AWS
  chain. GCS: :mod:`rrsis_cli.gcs` (``STORAGE_EMULATOR_HOST``, ``CPL_GS_ENDPOINT``, Application Default
  Credentials, ``GS_NO_SIGN_REQUEST``). None is ever printed.
* Errors name the ``s3://`` / ``gs://`` URL in the message (a ``Path`` would fold its ``//``), never credentials.
* ``az://container/prefix/`` through ``azure-storage-blob`` (the optional extra ``rrsis[azure]``; configuration in
  :mod:`rrsis_cli.azure`, tested against the Azurite emulator); ``abfs://`` and ``gcs://`` outputs are refused with
  a usage error naming the supported schemes.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rrsis_cli import console
from rrsis_cli.errors import OutputError, UsageError

REMOTE_PREFIXES = ("s3://", "gs://", "az://", "gcs://", "abfs://")
UPLOADED = ("done", "rethresholded", "partial")  # statuses of pairs whose files this run wrote


def is_remote_output(out: str | Path) -> bool:
    return str(out).startswith(REMOTE_PREFIXES)


def staging_dir(url: str) -> Path:
    """The local folder a run into ``url`` works in (module docstring)."""
    return Path(tempfile.gettempdir()) / f"rrsis-out-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


class StoreFailure(Exception):
    """A backend's failure, with a short reason (an error code or an exception's class; never a credential or a
    signed URL) that :class:`RemoteOutput` puts into a one-line OutputError naming the object."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class S3Backend:
    """``s3://`` (AWS and S3-compatible stores) through boto3 (:func:`rrsis_cli.remote.s3_client`: the
    variables GDAL reads); GDAL reads through ``/vsis3/``."""

    scheme = "s3"
    gdal_prefix = "/vsis3/"

    def __init__(self, bucket: str):
        self.bucket = bucket
        self._client = None

    @staticmethod
    def require() -> None:
        try:
            import boto3  # noqa: F401 - a clear error before anything is staged
        except ImportError as exc:
            raise UsageError("--out s3://... needs boto3: pip install boto3") from exc

    def client(self):
        if self._client is None:
            self.require()
            from rrsis_cli.remote import s3_client

            self._client = s3_client()
        return self._client

    def check_bucket(self) -> None:
        """StoreFailure when the bucket does not exist or the endpoint cannot be reached. A 403 passes: a key
        limited to its prefix may not list the bucket yet may write there."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _s3_code(exc) not in ("403", "AccessDenied", "Forbidden"):
                raise StoreFailure(_s3_reason(exc)) from None
        except BotoCoreError as exc:
            raise StoreFailure(_s3_reason(exc)) from None

    def head(self, key: str) -> datetime | None:
        """The object's last modification time; None when there is no such object."""
        from botocore.exceptions import ClientError

        try:
            return self.client().head_object(Bucket=self.bucket, Key=key)["LastModified"]
        except ClientError as exc:
            if _s3_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def upload(self, local: Path, key: str) -> None:
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().upload_file(str(local), self.bucket, key,
                                      Config=TransferConfig(multipart_threshold=64 * 2**20))
        except (ClientError, BotoCoreError) as exc:
            raise StoreFailure(_s3_reason(exc)) from None

    def delete(self, key: str) -> None:
        self.client().delete_object(Bucket=self.bucket, Key=key)

    def download(self, key: str, local: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().download_file(self.bucket, key, str(local))
        except (ClientError, BotoCoreError) as exc:
            raise StoreFailure(_s3_reason(exc)) from None


class GCSBackend:
    """``gs://`` through ``google-cloud-storage`` (:func:`rrsis_cli.gcs.gcs_client`: the variables GDAL reads);
    GDAL reads through ``/vsigs/``. Uploads are retried (``DEFAULT_RETRY``): rewriting an output with the same
    file is idempotent."""

    scheme = "gs"
    gdal_prefix = "/vsigs/"

    def __init__(self, bucket: str):
        self.bucket = bucket
        self._bucket = None

    @staticmethod
    def require() -> None:
        from rrsis_cli.gcs import require_client

        require_client()

    def handle(self):
        """The client's bucket object (no request)."""
        if self._bucket is None:
            from rrsis_cli.gcs import gcs_client

            try:
                self._bucket = gcs_client().bucket(self.bucket)
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001 - google.auth's DefaultCredentialsError and kin
                raise StoreFailure(_gcs_reason(exc)) from None
        return self._bucket

    def check_bucket(self) -> None:
        """StoreFailure when the bucket does not exist or the endpoint cannot be reached; a 403 passes (as S3)."""
        from rrsis_cli.gcs import TIMEOUT

        bucket = self.handle()
        try:
            bucket.reload(timeout=TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - google.api_core's errors, requests' connection errors
            if getattr(exc, "code", None) != 403:
                raise StoreFailure(_gcs_reason(exc)) from None

    def head(self, key: str) -> datetime | None:
        from rrsis_cli.gcs import TIMEOUT

        bucket = self.handle()
        try:
            blob = bucket.get_blob(key, timeout=TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - as check_bucket (a missing object is None, not an error)
            raise StoreFailure(_gcs_reason(exc)) from None
        return None if blob is None else blob.updated

    def upload(self, local: Path, key: str) -> None:
        from google.cloud.storage.retry import DEFAULT_RETRY

        from rrsis_cli.gcs import TIMEOUT

        blob = self.handle().blob(key)
        try:
            blob.upload_from_filename(str(local), timeout=TIMEOUT, retry=DEFAULT_RETRY)
        except Exception as exc:  # noqa: BLE001 - as check_bucket
            raise StoreFailure(_gcs_reason(exc)) from None

    def delete(self, key: str) -> None:
        from google.api_core.exceptions import NotFound

        from rrsis_cli.gcs import TIMEOUT

        try:
            self.handle().blob(key).delete(timeout=TIMEOUT)
        except NotFound:
            pass  # already gone (as S3's DeleteObject)

    def download(self, key: str, local: Path) -> None:
        from rrsis_cli.gcs import TIMEOUT

        blob = self.handle().blob(key)
        try:
            blob.download_to_filename(str(local), timeout=TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - as check_bucket
            raise StoreFailure(_gcs_reason(exc)) from None


class AzureBackend:
    """``az://container/prefix/`` through ``azure-storage-blob`` (:func:`rrsis_cli.azure.service_client`: the
    variables GDAL reads); GDAL reads through ``/vsiaz/``. The container plays the bucket. Uploads overwrite (the
    same output file again is idempotent) and are retried by the client's retry policy."""

    scheme = "az"
    gdal_prefix = "/vsiaz/"

    def __init__(self, bucket: str):
        self.bucket = bucket
        self._container = None

    @staticmethod
    def require() -> None:
        from rrsis_cli.azure import require_client

        require_client()

    def handle(self):
        """The client's container object (no request)."""
        if self._container is None:
            from rrsis_cli.azure import service_client

            try:
                self._container = service_client().get_container_client(self.bucket)
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001 - a malformed connection string, azure-identity's errors
                raise StoreFailure(_azure_reason(exc)) from None
        return self._container

    def check_bucket(self) -> None:
        """StoreFailure when the container does not exist or the endpoint cannot be reached; a 403 passes (as S3:
        a SAS limited to writing may not read the container's properties)."""
        from rrsis_cli.azure import TIMEOUT

        container = self.handle()
        try:
            container.get_container_properties(timeout=TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - azure.core's HttpResponseError family, connection errors
            if getattr(exc, "status_code", None) != 403:
                raise StoreFailure(_azure_reason(exc)) from None

    def head(self, key: str) -> datetime | None:
        from azure.core.exceptions import ResourceNotFoundError

        from rrsis_cli.azure import TIMEOUT

        blob = self.handle().get_blob_client(key)
        try:
            return blob.get_blob_properties(timeout=TIMEOUT).last_modified
        except ResourceNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - as check_bucket
            raise StoreFailure(_azure_reason(exc)) from None

    def upload(self, local: Path, key: str) -> None:
        from rrsis_cli.azure import TIMEOUT

        blob = self.handle().get_blob_client(key)
        try:
            with local.open("rb") as data:
                blob.upload_blob(data, overwrite=True, timeout=TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - as check_bucket
            raise StoreFailure(_azure_reason(exc)) from None

    def delete(self, key: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        from rrsis_cli.azure import TIMEOUT

        try:
            self.handle().get_blob_client(key).delete_blob(timeout=TIMEOUT)
        except ResourceNotFoundError:
            pass  # already gone (as S3's DeleteObject)

    def download(self, key: str, local: Path) -> None:
        from rrsis_cli.azure import TIMEOUT

        blob = self.handle().get_blob_client(key)
        try:
            with local.open("wb") as target:
                blob.download_blob(timeout=TIMEOUT).readinto(target)
        except Exception as exc:  # noqa: BLE001 - as check_bucket
            raise StoreFailure(_azure_reason(exc)) from None


BACKENDS = {"s3://": S3Backend, "gs://": GCSBackend, "az://": AzureBackend}


@dataclass
class RemoteOutput:
    """An object-store output (``s3://bucket/prefix/``, ``gs://bucket/prefix/``): where it stages, how it reads
    (GDAL) and writes (its scheme's backend: :class:`S3Backend`, :class:`GCSBackend`)."""

    url: str
    bucket: str
    prefix: str  # without leading or trailing "/"
    staging: Path
    backend: S3Backend | GCSBackend | AzureBackend

    @classmethod
    def parse(cls, url: str) -> RemoteOutput:
        scheme = next((s for s in BACKENDS if url.startswith(s)), None)
        if scheme is None:
            raise UsageError(f"--out {url}: only s3://, gs:// and az:// object stores are supported for outputs; "
                             "write locally and copy, or use an S3-compatible endpoint")
        bucket, _, prefix = url[len(scheme):].partition("/")
        if not bucket:
            raise UsageError(f"--out {url}: no bucket name")
        backend = BACKENDS[scheme](bucket)
        backend.require()
        return cls(url, bucket, prefix.strip("/"), staging_dir(url.rstrip("/") + "/"), backend)

    # -------------------------------------------------------------------------------------------- names
    def key(self, relative: str) -> str:
        return posixpath.join(self.prefix, relative) if self.prefix else relative

    def vsi(self, relative: str = "") -> str:
        """``/vsis3/bucket/prefix[/relative]`` (``/vsigs/…``): the GDAL name of an output."""
        return posixpath.join(f"{self.backend.gdal_prefix}{self.bucket}", self.key(relative)).rstrip("/")

    def uri(self, relative: str) -> str:
        return f"{self.backend.scheme}://{self.bucket}/{self.key(relative)}"

    def relative(self, vsi_path: str) -> str:
        return posixpath.relpath(vsi_path, self.vsi())

    def gdal_env(self):
        """GDAL settings for reading outputs: no directory listing on open, no stale cache of this prefix (a mask
        uploaded during the run is seen); the user's environment wins."""
        import rasterio

        settings = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_VSIL_CURL_NON_CACHED": self.vsi()}
        return rasterio.Env(**{k: v for k, v in settings.items() if k not in os.environ})

    # -------------------------------------------------------------------------------------------- reads
    def check_writable(self) -> None:
        """OutputError naming the URL when the bucket does not exist or the endpoint cannot be reached (before any
        model loads). A 403 passes: a key limited to its prefix may not list the bucket yet may write there."""
        try:
            self.backend.check_bucket()
        except StoreFailure as exc:
            raise OutputError(f"{self.url}: the output bucket cannot be reached ({exc.reason})") from None

    def _modified(self, relative: str) -> datetime | None:
        """The object's modification time, None when it is not in the store."""
        try:
            return self.backend.head(self.key(relative))
        except StoreFailure as exc:
            raise OutputError(f"{self.uri(relative)}: cannot be read ({exc.reason})") from None

    def has(self, relative: str) -> bool:
        return self._modified(relative) is not None

    def exists(self, vsi_path: str) -> bool:
        """Publishing's file test, on ``/vsis3/`` (``/vsigs/``) names."""
        return self.has(self.relative(vsi_path))

    def modified(self, vsi_path: str) -> datetime | None:
        return self._modified(self.relative(vsi_path))

    def tags(self, relative: str) -> dict[str, str] | None:
        """The tags of the raster at ``relative`` in the store (range reads); None when it is not there."""
        import rasterio

        with self.gdal_env():
            try:
                with rasterio.open(self.vsi(relative)) as ds:
                    return ds.tags()
            except rasterio.errors.RasterioIOError:
                return None

    # -------------------------------------------------------------------------------------------- writes
    def upload(self, local: Path, relative: str) -> None:
        try:
            self.backend.upload(local, self.key(relative))
        except StoreFailure as exc:
            raise OutputError(f"{self.uri(relative)}: upload failed ({exc.reason})") from None

    def delete(self, relative: str) -> None:
        self.backend.delete(self.key(relative))

    def upload_pair(self, out: Path, result) -> None:
        """Upload one finished pair's staged files (``result.outputs``: kind -> local path), ``mask.tif`` last,
        after removing the pair's stale files in the store (vectors of other formats; a ``prob.tif`` of another
        configuration); then point ``result.outputs`` at the store and remove the staged files."""
        from rrsis_cli.vectors import VECTOR_DRIVERS

        files = {kind: Path(path) for kind, path in result.outputs.items()}
        mask = files.pop("mask")
        rel = result.output_dir
        names = {path.name for path in files.values()}
        for _, suffix in VECTOR_DRIVERS.values():
            stale = f"{rel}/mask.{suffix}"
            if f"mask.{suffix}" not in names and self.has(stale):
                self.delete(stale)
        if "prob.tif" not in names:
            remote_prob = self.tags(f"{rel}/prob.tif")
            if remote_prob is not None and remote_prob.get("rrsis_prob_hash") != _tags_of(mask).get(
                    "rrsis_prob_hash"):
                self.delete(f"{rel}/prob.tif")
        for kind, path in files.items():
            self.upload(path, f"{rel}/{path.name}")
            result.outputs[kind] = self.uri(f"{rel}/{path.name}")
        self.upload(mask, f"{rel}/mask.tif")  # last: the completion marker
        result.outputs["mask"] = self.uri(f"{rel}/mask.tif")
        shutil.rmtree(out / rel, ignore_errors=True)
        _prune_empty(out, (out / rel).parent)

    def upload_results(self, out: Path, results) -> None:
        """Upload every pair of ``results`` that this run wrote; a failed upload fails that pair only (its mask
        is not in the store, so the next run redoes it)."""
        for result in results:
            if result.status not in UPLOADED or "mask" not in result.outputs or \
                    result.outputs["mask"].startswith(f"{self.backend.scheme}://"):
                continue
            try:
                self.upload_pair(out, result)
            except OutputError as exc:
                result.status, result.error = "failed", exc.one_line()
                console.error(exc.one_line())

    def upload_files(self, out: Path, relatives: list[str], remove: bool = True) -> None:
        """Upload staged files (relative to ``out``) in the order given, then remove them (unless not
        ``remove``)."""
        for relative in relatives:
            self.upload(out / relative, relative)
        for relative in relatives if remove else []:
            (out / relative).unlink(missing_ok=True)
            _prune_empty(out, (out / relative).parent)

    def download(self, relative: str, local: Path) -> None:
        """The object at ``relative`` into ``local`` (atomically); OutputError naming it when it is missing."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.tmp")
        try:
            self.backend.download(self.key(relative), tmp)
        except StoreFailure as exc:
            tmp.unlink(missing_ok=True)
            raise OutputError(f"{self.uri(relative)}: cannot download ({exc.reason})") from None
        os.replace(tmp, local)


def _prune_empty(root: Path, folder: Path) -> None:
    """Remove ``folder`` and its parents up to ``root`` (excluded) while they are empty."""
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _tags_of(path: Path) -> dict[str, str]:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.tags()


def _s3_code(exc: Exception) -> str | None:
    return getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None


def _s3_reason(exc: Exception) -> str:
    """A short reason without credentials or signed URLs: the S3 error code, or the exception's class."""
    code = _s3_code(exc)
    return f"S3 error {code}" if code else type(exc).__name__


def _gcs_reason(exc: Exception) -> str:
    """As :func:`_s3_reason`: the HTTP status of a GCS API error, or the exception's class."""
    code = getattr(exc, "code", None)
    return f"GCS error {code}" if isinstance(code, int) else type(exc).__name__


def _azure_reason(exc: Exception) -> str:
    """As :func:`_s3_reason`: Azure's error code (``ContainerNotFound``, ``AuthorizationFailure``…) or HTTP status,
    or the exception's class."""
    code = getattr(exc, "error_code", None)
    status = getattr(exc, "status_code", None)
    return f"Azure error {code or status}" if code or status else type(exc).__name__

"""``rrsis predict --out s3://bucket/prefix/``: outputs in an object store.

A run works in a local *staging folder* exactly as in a local ``--out`` (journals, temporary files, renames),
then uploads each finished pair's files, ``mask.tif`` **last**: the mask is the completion marker, so a pair
whose upload was cut has no mask in the store and is recomputed by the next run, and skip-existing reads the
mask's tags (configuration hash, scene fingerprint, prompt) from the store through GDAL's ``/vsis3/``. The
published STAC files (``--publish``; the catalog last of them) are uploaded after the pairs, the manifest last. A pair's staged files are removed once uploaded; the journals of unfinished pairs stay, so a killed run
resumes on the same machine.

Decisions:

* **Staging folder**: ``$TMPDIR/rrsis-out-<12 hex of the URL>`` (:func:`tempfile.gettempdir`): the same for every
  run into the same URL on one machine, so an interrupted run's journals are found again; point ``TMPDIR`` at a
  large scratch disk for big scenes.
* **Writes with boto3**: the maintained AWS client (multipart uploads, retries, every S3-compatible store through
  an endpoint URL), testable against moto's server. GDAL's VSI writes are not exposed by rasterio for plain
  files (vectors, JSON), and fsspec would need s3fs as well. **Reads with GDAL** (``/vsis3/``): the mask's tags
  and headers are range requests, as for inputs.
* **Endpoint**: boto3 reads ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; otherwise GDAL's
  ``AWS_S3_ENDPOINT`` (host[:port]), ``AWS_HTTPS`` and ``AWS_VIRTUAL_HOSTING`` are translated, so one set of
  variables serves reads and writes. Credentials come from the usual AWS chain; none is ever printed.
* Errors name the ``s3://`` URL in the message (a ``Path`` would fold its ``//``), never credentials.
* Only ``s3://`` so far (AWS and S3-compatible stores: MinIO, Ceph, R2, GCS's S3 interoperability); ``gs://``
  and ``az://`` outputs are refused with a usage error.
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
from typing import Any

from rrsis_cli import console
from rrsis_cli.errors import OutputError, UsageError

REMOTE_PREFIXES = ("s3://", "gs://", "az://", "gcs://", "abfs://")
UPLOADED = ("done", "rethresholded", "partial")  # statuses of pairs whose files this run wrote


def is_remote_output(out: str | Path) -> bool:
    return str(out).startswith(REMOTE_PREFIXES)


def staging_dir(url: str) -> Path:
    """The local folder a run into ``url`` works in (module docstring)."""
    return Path(tempfile.gettempdir()) / f"rrsis-out-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def s3_client():
    """A boto3 S3 client for the uploads (:func:`rrsis_cli.remote.s3_client`: the variables GDAL reads)."""
    try:
        import boto3  # noqa: F401 - a clear error before anything is staged
    except ImportError as exc:
        raise UsageError("--out s3://... needs boto3: pip install boto3") from exc
    from rrsis_cli.remote import s3_client as client

    return client()


@dataclass
class RemoteOutput:
    """An ``s3://bucket/prefix/`` output: where it stages, how it reads (GDAL) and writes (boto3)."""

    url: str
    bucket: str
    prefix: str  # without leading or trailing "/"
    staging: Path
    client: Any = None

    @classmethod
    def parse(cls, url: str) -> RemoteOutput:
        if not url.startswith("s3://"):
            raise UsageError(f"--out {url}: only s3:// object stores are supported for outputs (gs:// and az:// "
                             "are not yet); write locally and copy, or use an S3-compatible endpoint")
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise UsageError(f"--out {url}: no bucket name")
        return cls(url, bucket, prefix.strip("/"), staging_dir(url.rstrip("/") + "/"))

    # -------------------------------------------------------------------------------------------- names
    def key(self, relative: str) -> str:
        return posixpath.join(self.prefix, relative) if self.prefix else relative

    def vsi(self, relative: str = "") -> str:
        """``/vsis3/bucket/prefix[/relative]``: the GDAL name of an output."""
        return posixpath.join(f"/vsis3/{self.bucket}", self.key(relative)).rstrip("/")

    def uri(self, relative: str) -> str:
        return f"s3://{self.bucket}/{self.key(relative)}"

    def relative(self, vsi_path: str) -> str:
        return posixpath.relpath(vsi_path, self.vsi())

    def s3(self):
        if self.client is None:
            self.client = s3_client()
        return self.client

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
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.s3().head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("403", "AccessDenied", "Forbidden"):
                raise OutputError(f"{self.url}: the output bucket cannot be reached ({_reason(exc)})") from None
        except BotoCoreError as exc:
            raise OutputError(f"{self.url}: the output bucket cannot be reached ({_reason(exc)})") from None

    def _head(self, relative: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.s3().head_object(Bucket=self.bucket, Key=self.key(relative))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def has(self, relative: str) -> bool:
        return self._head(relative) is not None

    def exists(self, vsi_path: str) -> bool:
        """Publishing's file test, on ``/vsis3/`` names."""
        return self.has(self.relative(vsi_path))

    def modified(self, vsi_path: str) -> datetime | None:
        head = self._head(self.relative(vsi_path))
        return None if head is None else head["LastModified"]

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
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.s3().upload_file(str(local), self.bucket, self.key(relative),
                                  Config=TransferConfig(multipart_threshold=64 * 2**20))
        except (ClientError, BotoCoreError) as exc:
            raise OutputError(f"{self.uri(relative)}: upload failed ({_reason(exc)})") from None

    def delete(self, relative: str) -> None:
        self.s3().delete_object(Bucket=self.bucket, Key=self.key(relative))

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
                    result.outputs["mask"].startswith("s3://"):
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
        from botocore.exceptions import BotoCoreError, ClientError

        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.tmp")
        try:
            self.s3().download_file(self.bucket, self.key(relative), str(tmp))
        except (ClientError, BotoCoreError) as exc:
            tmp.unlink(missing_ok=True)
            raise OutputError(f"{self.uri(relative)}: cannot download ({_reason(exc)})") from None
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


def _reason(exc: Exception) -> str:
    """A short reason without credentials or signed URLs: the S3 error code, or the exception's class."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
    return f"S3 error {code}" if code else type(exc).__name__

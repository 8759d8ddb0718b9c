"""Which scenes a run processes and where each (scene, prompt) writes: one directory per pair, never shared.

Layout (``OUT`` is ``--out``)::

    OUT/<scene key>/<prompt key>/mask.tif            outputs of one (scene, prompt)
    OUT/.rrsis-work/<scene key>/<prompt key>/         its work journal while unfinished

* **scene key** = the scene's folder path relative to the input folder it was found in (nothing for a file given
  directly or listed in a ``.txt``), then ``<stem>-<8 hex>``. The hex digits are a *content fingerprint*: a
  hash of the file's size and of its first and last MiB. So ``a/x.tif`` and ``b/x.tif``, ``x.tif`` and ``x.vrt``,
  or two ``scene.tif`` given from different folders never share a directory, and the key does not depend on
  where the data is mounted, on the other inputs of the run or on the order they are given in: a moved or
  re-staged copy (HPC scratch) keeps its key, so resume and skip-existing still find its outputs.
* **prompt key** = a slug of the prompt (``a-z0-9-``, at most 48 characters) then ``-<8 hex>`` of a hash of
  the exact prompt text: ``water`` and ``Water!``, or two long prompts that differ only at the end, stay apart.

The same file reached twice (listed twice, through a symlink or a hard link, in a folder and in a list) is
processed once, with a warning; so is a second file with the same content at the same relative path.

Remote scenes (:mod:`rrsis_cli.remote`): a URL (``https://``, ``s3://``, ``gs://``, ``az://``) or a GDAL ``/vsi…/``
path, on the command line or in a ``.txt`` list, is a :class:`~rrsis_cli.remote.RemotePath` (never a
:class:`~pathlib.Path`); one that ends in ``/`` is a prefix, listed recursively with the rules of folders. An
``http(s)``, S3 or GCS object has the content fingerprint of a local copy (:func:`sampled_fingerprint` of two
ranged reads, cached: :func:`rrsis_cli.remote.remote_fingerprint`), so a URL and the downloaded file share their
key; other file systems (``az://``, ``/vsi…``; ``gs://`` without ``google-cloud-storage``) a hash of the name. Its scene key is built as for a local
file (relative folder under the prefix, stem, 8 hex). STAC inputs (``.json`` items,
ItemCollections, catalogs, on the command line or in a ``.txt`` list, and ``--stac-search``) become scenes in
:mod:`rrsis_cli.stac_inputs`, keyed by item id.
"""

from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rrsis_cli import console
from rrsis_cli.errors import InputError, UsageError
from rrsis_cli.fingerprint import SAMPLE_BYTES, sampled_fingerprint, tail_start
from rrsis_cli.remote import (
    FingerprintCache,
    RemotePath,
    dataset_path,
    find_sidecars,
    is_prefix,
    is_remote,
    list_prefix,
    remote_fingerprint,
)

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")
WORK_DIR = ".rrsis-work"
SLUG_CHARS = 48
FINGERPRINT_THREADS = 16  # remote scenes fingerprinted at once (I/O-bound: round trips to their servers)


@dataclass(frozen=True)
class Scene:
    """One input raster of a run: ``path`` as found (a local :class:`~pathlib.Path`, or a
    :class:`~rrsis_cli.remote.RemotePath` that GDAL opens: URL, object store, ``/vsi`` path, in-memory VRT of
    STAC band assets), ``key`` its output directory relative to ``OUT``, ``fingerprint`` (sha256 hex of size +
    first and last MiB, local or ``http(s)``/S3; see :func:`content_fingerprint`).

    Scenes from STAC (:mod:`rrsis_cli.stac_inputs`) also carry, for the outputs that link back to them:
    ``stac_item`` the absolute href of the source Item (its self link: a file path or URL, query string kept as
    given), ``stac_item_id``, ``stac_collection`` (the Item's collection id, or None) and ``stac_assets`` (the asset
    keys read, in band order). ``url`` is the remote dataset's name as given, redacted (:attr:`url`)."""

    path: Path | RemotePath
    key: str
    fingerprint: str
    size: int | None = None
    stac_item: str | None = None
    stac_item_id: str | None = None
    stac_collection: str | None = None
    stac_assets: tuple[str, ...] = ()

    @property
    def url(self) -> str | None:
        """The remote dataset's name as given (``https://…``, ``s3://…``, ``/vsi…``), credentials and query-string
        values redacted; None for a local file."""
        return str(self.path) if isinstance(self.path, RemotePath) else None

    def as_dict(self) -> dict[str, str | int | list[str] | None]:
        record: dict[str, str | int | list[str] | None] = {
            "path": str(self.path), "key": self.key, "fingerprint": self.fingerprint, "size": self.size}
        if self.stac_item_id is not None:
            record.update(stac_item=self.stac_item, stac_item_id=self.stac_item_id,
                          stac_collection=self.stac_collection, stac_assets=list(self.stac_assets))
        return record

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        return cls(dataset_path(data["path"]), data["key"], data["fingerprint"], data.get("size"),
                   data.get("stac_item"), data.get("stac_item_id"), data.get("stac_collection"),
                   tuple(data.get("stac_assets") or ()))


def slugify(text: str, limit: int | None = SLUG_CHARS) -> str:
    """Lower-case ``a-z0-9`` runs joined by ``-``, at most ``limit`` characters (None: no limit)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "prompt"


def short_hash(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:8]


def prompt_key(prompt: str) -> str:
    """``<slug>-<8 hex of the exact prompt>``: readable, and distinct for distinct prompts."""
    return f"{slugify(prompt)}-{short_hash(prompt)}"


def content_fingerprint(path: Path | RemotePath, cache: FingerprintCache | None = None) -> tuple[str, int | None]:
    """(:func:`sampled_fingerprint`, size) of a file; for a path that is not a readable local file (missing), a
    hash of the path string and ``None``: the scene then fails later, when it is opened, with its own error. A
    remote object: :func:`rrsis_cli.remote.remote_fingerprint` (the same fingerprint from ranged reads for
    ``http(s)`` and S3, ``cache`` sparing them on reruns; a hash of the name elsewhere)."""
    if isinstance(path, RemotePath):
        return remote_fingerprint(path, cache)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(SAMPLE_BYTES)
            tail = b""
            if size > SAMPLE_BYTES:
                f.seek(tail_start(size, SAMPLE_BYTES))
                tail = f.read(SAMPLE_BYTES)
        return sampled_fingerprint(size, head, tail), size
    except OSError:
        return hashlib.sha256(f"path:{path}".encode()).hexdigest(), None


def key_in_folder(folder: str, stem: str, fingerprint: str) -> str:
    """``[folder/]<stem>-<8 hex of the fingerprint>`` (``folder`` ``""`` or ``"."``: none)."""
    name = f"{stem}-{fingerprint[:8]}"
    return name if folder in (".", "") else f"{folder}/{name}"


def read_list_file(path: Path) -> list[Path | RemotePath | str]:
    """Entries of a ``.txt`` list: one per line, blank lines and ``#`` comments ignored; relative paths taken
    relative to the list file's folder; URLs and ``/vsi`` names as they are (a prefix ending in ``/`` stays text:
    it is listed like a folder)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read the input list: {exc.strerror}", path) from exc
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    listed: list[Path | RemotePath | str] = []
    for entry in entries:
        if is_prefix(entry):
            listed.append(entry)
        elif is_remote(entry):
            listed.append(RemotePath(entry))
        else:
            listed.append(Path(entry) if Path(entry).is_absolute() else path.parent / entry)
    return listed


def check_inputs_exist(inputs: list[str | Path | RemotePath]) -> None:
    """UsageError naming every local INPUT given on the command line that does not exist (paths listed in a
    ``.txt`` file, and remote names, are not checked here: such a scene fails on its own, the others run)."""
    missing = [str(item) for item in inputs if not is_remote(item) and not Path(item).exists()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UsageError(f"INPUT not found: {shown}")


def read_prompts_file(path: str | Path) -> list[str]:
    """Prompts of a ``--prompts-file``: one per line, stripped; blank lines and ``#`` comment lines ignored; a
    prompt repeated in the file is dropped with a note naming its lines. UsageError when the file cannot be read
    or holds no prompt."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"--prompts-file cannot be read: {reason}", path) from exc
    first: dict[str, int] = {}
    repeats: list[str] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text in first:
            repeats.append(f"line {number} repeats line {first[text]} ({text!r})")
            continue
        first[text] = number
    if repeats:
        console.info(f"{path}: {len(repeats)} repeated prompt(s) dropped: " + "; ".join(repeats[:5])
                     + (" ..." if len(repeats) > 5 else ""))
    if not first:
        raise UsageError("--prompts-file has no prompt (only blank or # comment lines)", path)
    return list(first)


def _candidates(inputs: list[str | Path], glob: str | None) -> list[tuple[Path | RemotePath, str]]:
    """(path, its folder relative to the folder or prefix it was found in, ``""`` for none) for every input
    item, in the order given; ``.txt`` lists expanded (their prefixes listed too; their STAC entries left to
    :func:`listed_stac_inputs`)."""
    from rrsis_cli.stac_inputs import is_stac_input

    check_inputs_exist(inputs)
    found: list[tuple[Path | RemotePath, str]] = []
    for given in inputs:
        if isinstance(given, str) and is_prefix(given):
            found += list_prefix(given, glob, RASTER_SUFFIXES)
            continue
        item = dataset_path(given)
        if isinstance(item, RemotePath):
            found.append((item, ""))
        elif item.is_dir():
            matches = sorted(p for p in item.rglob(glob or "*")
                             if p.is_file() and (glob or p.suffix.lower() in RASTER_SUFFIXES))
            found += [(p, p.parent.relative_to(item).as_posix()) for p in matches]
        elif is_list_file(item):
            for entry in read_list_file(item):
                if is_stac_input(entry):
                    continue  # read as STAC (listed_stac_inputs)
                found += _candidates([entry], glob) if isinstance(entry, str) else [(entry, "")]
        else:
            found.append((item, ""))
    return found


def is_list_file(item: Path | RemotePath) -> bool:
    """A local ``.txt`` file: a list of inputs (:func:`read_list_file`)."""
    return isinstance(item, Path) and item.suffix.lower() == ".txt" and item.is_file()


def listed_stac_inputs(inputs: list) -> list[Path | RemotePath | str]:
    """The STAC entries (names ending in ``.json``: files, URLs, ``s3://`` objects) of the ``.txt`` lists among
    ``inputs``, in order: they are read as STAC inputs, not as rasters."""
    from rrsis_cli.stac_inputs import is_stac_input

    listed: list[Path | RemotePath | str] = []
    for given in inputs:
        item = dataset_path(given)
        if not is_stac_input(item) and is_list_file(item):
            listed += [entry for entry in read_list_file(item) if is_stac_input(entry)]
    return listed


def _file_identity(path: Path | RemotePath) -> tuple[int, int] | None:
    if isinstance(path, RemotePath):
        return None
    try:
        st = path.stat()  # follows symlinks: a link and its target are one file
    except OSError:
        return None
    return st.st_dev, st.st_ino


def stac_scene(source, cache: FingerprintCache | None = None) -> Scene:
    """The scene of a :class:`~rrsis_cli.stac_inputs.StacSource`: keyed by its item id; fingerprint of the item
    id, the asset keys and each asset's fingerprint (:func:`content_fingerprint`)."""
    digest = hashlib.sha256(f"stac:{source.item_id}|{','.join(source.asset_keys)}".encode())
    if isinstance(source.path, RemotePath):
        find_sidecars(source.path)
    for asset in source.asset_paths:
        digest.update(content_fingerprint(asset, cache)[0].encode())
    fingerprint = digest.hexdigest()
    return Scene(source.path, key_in_folder("", source.stem, fingerprint), fingerprint, None, source.item_href,
                 source.item_id, source.collection, source.asset_keys)


def find_scenes(inputs: list[str | Path], glob: str | None = None,
                duplicates: list[dict[str, str]] | None = None, stac=None) -> list[Scene]:
    """Every scene of the run, each once, with its output key: files, folders (recursive
    ``*.tif|*.tiff|*.vrt`` or ``glob``), ``.txt`` lists of paths and URLs, URLs and ``/vsi`` names, object-store
    prefixes (ending in ``/``, listed like folders), STAC inputs (``.json`` Items, ItemCollections, Catalogs and
    Collections, and ``stac.search``: see :mod:`rrsis_cli.stac_inputs`; ``stac`` is its
    :class:`~rrsis_cli.stac_inputs.StacOptions`). Inputs dropped as duplicates are warned about and appended to
    ``duplicates`` as ``{"path", "same_as"}``. Remote fingerprints go through the user's
    :class:`~rrsis_cli.remote.FingerprintCache`."""
    duplicates = [] if duplicates is None else duplicates
    check_inputs_exist(inputs)  # local STAC files too: a missing INPUT is a usage error (exit 2)
    cache = FingerprintCache()
    try:
        scenes = keyed_scenes(inputs, glob, duplicates, stac, cache)
    finally:
        cache.save()
    if not scenes:
        raise UsageError("no input scenes found")
    return scenes


def fingerprint_remote(paths: list, cache: FingerprintCache) -> dict[RemotePath, tuple[str, int | None]]:
    """The fingerprints of the remote scenes among ``paths``, and whether each has side-car files
    (:func:`~rrsis_cli.remote.find_sidecars`, noted on the path), asked of their servers by up to
    :data:`FINGERPRINT_THREADS` threads at once (each costs a few round trips: a run over thousands of remote
    scenes would otherwise wait for them one by one before any work starts)."""
    remote = list(dict.fromkeys(path for path in paths if isinstance(path, RemotePath)))
    if not remote:
        return {}

    def examine(path: RemotePath) -> tuple[str, int | None]:
        find_sidecars(path)
        return content_fingerprint(path, cache)

    with ThreadPoolExecutor(min(FINGERPRINT_THREADS, len(remote)), thread_name_prefix="rrsis-fingerprint") as pool:
        found = dict(zip(remote, pool.map(examine, remote), strict=True))
    examined = {path: path for path in remote}
    for path in paths:  # the same name given twice: both copies know its side-cars
        if isinstance(path, RemotePath):
            path.sidecars = examined[path].sidecars
    return found


def keyed_scenes(inputs: list[str | Path], glob: str | None, duplicates: list[dict[str, str]], stac,
                 cache: FingerprintCache) -> list[Scene]:
    """The scenes of :func:`find_scenes`, remote fingerprints looked up in and added to ``cache``."""
    from rrsis_cli import stac_inputs

    scenes: list[Scene] = []
    seen_files: dict[tuple[int, int], Path | RemotePath] = {}
    seen_keys: dict[str, Scene] = {}
    rasters = [item for item in inputs if not stac_inputs.is_stac_input(item)]
    stac_given = [item for item in inputs if stac_inputs.is_stac_input(item)] + listed_stac_inputs(rasters)
    found = [(source.path, "", stac_scene(source, cache))
             for source in stac_inputs.find_stac_sources(stac_given, stac)]
    found += [(path, folder, None) for path, folder in _candidates(rasters, glob)] if rasters else []
    remote = fingerprint_remote([path for path, _, stac_scene_ in found if stac_scene_ is None], cache)
    for path, folder, stac_scene_ in found:
        identity = _file_identity(path)
        if identity is not None and identity in seen_files:
            console.warn(f"{path}: same file as {seen_files[identity]}; processed once")
            duplicates.append({"path": str(path), "same_as": str(seen_files[identity])})
            continue
        if stac_scene_ is not None:
            scene = stac_scene_
        else:
            fingerprint, size = remote[path] if isinstance(path, RemotePath) else content_fingerprint(path, cache)
            scene = Scene(path, key_in_folder(folder, path.stem, fingerprint), fingerprint, size)
        if scene.key in seen_keys:
            first = seen_keys[scene.key]
            if first.fingerprint != scene.fingerprint:  # cannot happen unless 32 bits of sha256 collide
                raise InputError(f"output key {scene.key} also belongs to {first.path} (hash collision); "
                                 "rename one of the files", path)
            console.warn(f"{path}: same content and name as {first.path}; processed once")
            duplicates.append({"path": str(path), "same_as": str(first.path)})
            continue
        if identity is not None:
            seen_files[identity] = path
        seen_keys[scene.key] = scene
        scenes.append(scene)
    return scenes


def relative_output_dir(scene: Scene, prompt: str) -> str:
    """``<scene key>/<prompt key>``: where the pair writes, relative to ``OUT`` (recorded in the manifest)."""
    return f"{scene.key}/{prompt_key(prompt)}"


def output_dir(out: Path, scene: Scene, prompt: str) -> Path:
    return Path(out) / relative_output_dir(scene, prompt)


def work_dir(out: Path, scene: Scene, prompt: str) -> Path:
    return Path(out) / WORK_DIR / scene.key / prompt_key(prompt)


def strip_key_hash(name: str) -> str:
    """``x-1a2b3c4d`` -> ``x`` (the readable part of a scene or prompt key)."""
    return re.sub(r"-[0-9a-f]{8}$", "", name)

"""What GDAL's network file systems remember about a remote scene in this process, and forgetting it when the
scene has changed.

GDAL's ``/vsicurl/``, ``/vsis3/``, ... handlers keep, for the life of the process, each object's size and the byte
ranges already fetched (``CPL_VSIL_CURL_CACHE_SIZE``, 16 MB by default). A process that opens the same name again
after the object was replaced — a long-lived dask worker (``--scheduler ADDR``) on the next night's run, or a
Python session calling :func:`rrsis_cli.predict.predict` twice — would read the old header and blocks mixed with
new ones: a wrong result with exit code 0.

Each scene carries the fingerprint its run computed (:mod:`rrsis_cli.remote`: size, first and last MiB of the
object's content), which changes when the object does — except for an object rewritten in place with the same
size, first and last MiB, which rrsis treats as the same scene everywhere (its key and skip-existing too), as
for local files. :func:`forget_if_replaced` remembers the last fingerprint this process opened each remote name
with, and when a scene comes with another one it drops GDAL's cache of that name
(``VSICurlPartialClearCache``, GDAL's C API: rasterio does not bind it, so it is called through ctypes in the
GDAL library rasterio has loaded). Within one run the fingerprint does not change, so nothing is fetched twice.
Names fingerprinted by name alone (``az://``, other ``/vsi`` paths: see :mod:`rrsis_cli.inputs`) cannot tell a
replaced object and keep GDAL's cache. A scene of stacked STAC band assets (an in-memory VRT) clears the cache of
each of its sources.
"""

from __future__ import annotations

import ctypes
import functools
import html
import re
import threading
from pathlib import Path

from rrsis_cli import console
from rrsis_cli.remote import RemotePath

_opened_with: dict[str, str] = {}  # remote GDAL name -> fingerprint this process last opened it with
_lock = threading.Lock()


def rasterio_gdal_first(paths: set[str], rasterio_libs: Path) -> list[str]:
    """GDAL libraries mapped in this process, rasterio's first: the one in its wheel's ``rasterio.libs`` folder,
    then a system GDAL (a rasterio built from source), and last the copies other wheels bundle (pyogrio's, in
    ``pyogrio.libs``), whose caches rasterio's reads do not use."""
    def rank(path: str) -> tuple[int, str]:
        folder = Path(path).parent
        if folder == rasterio_libs:
            return 0, path
        return (2 if folder.name.endswith(".libs") else 1), path

    return sorted(paths, key=rank)


@functools.cache
def loaded_gdal_library() -> ctypes.CDLL | None:
    """The GDAL shared library rasterio uses in this process, or None when it cannot be found (several may be
    mapped: pyogrio's wheel bundles its own)."""
    import rasterio  # loads GDAL

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = {line.split()[-1] for line in maps.splitlines() if "libgdal" in line.rsplit("/", 1)[-1]}
    for path in rasterio_gdal_first(paths, Path(rasterio.__file__).resolve().parent.parent / "rasterio.libs"):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def clear_gdal_cache(gdal_name: str) -> bool:
    """Drop what GDAL's network file systems cached in this process about ``gdal_name`` (its size and fetched
    ranges; every name starting with it). False when GDAL's function could not be reached."""
    library = loaded_gdal_library()
    clear = getattr(library, "VSICurlPartialClearCache", None) if library is not None else None
    if clear is None:
        console.debug(f"cannot clear GDAL's network cache of {gdal_name}: VSICurlPartialClearCache not found")
        return False
    clear.argtypes, clear.restype = [ctypes.c_char_p], None
    clear(gdal_name.encode())
    return True


def forget_if_replaced(path, fingerprint: str) -> bool:
    """Before opening scene ``path`` with ``fingerprint``: when this process opened the same remote name with
    another fingerprint (the object was replaced), clear GDAL's cache of it. True when the cache was cleared.
    Local paths: nothing to do."""
    if not isinstance(path, RemotePath):
        return False
    with _lock:
        before = _opened_with.get(path.gdal)
        _opened_with[path.gdal] = fingerprint
    if before is None or before == fingerprint:
        return False
    console.debug(f"{path}: changed since this process last read it; GDAL's cache of it is cleared")
    return all([clear_gdal_cache(name) for name in cached_names(path)])


def cached_names(path: RemotePath) -> list[str]:
    """The names GDAL caches for scene ``path``: its own, or for an in-memory VRT (STAC band assets stacked,
    :func:`rrsis_cli.stac_inputs.stack_vrt`) those of its sources."""
    if not path.gdal.lstrip().startswith("<VRTDataset"):
        return [path.gdal]
    return list(dict.fromkeys(html.unescape(name) for name in
                              re.findall(r"<SourceFilename[^>]*>([^<]+)</SourceFilename>", path.gdal)))

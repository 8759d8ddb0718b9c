"""Is a (scene, prompt) finished? The configuration hash of a pair, the tags of its outputs that prove it, and
the checks behind skip-existing, resume and re-thresholding (locally or in an object store)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rrsis_cli import __version__
from rrsis_cli.inputs import Scene, output_dir, relative_output_dir
from rrsis_cli.predict.options import PredictOptions
from rrsis_cli.vectors import VECTOR_DRIVERS

if TYPE_CHECKING:
    from rrsis_cli.scene import SceneReader
    from rrsis_cli.store import RemoteOutput


def config_hash(model_sha: str | None, scene: Scene, prompt: str, options: PredictOptions, tile: int,
                threshold: bool = True) -> str:
    """Identifies one (scene, prompt, model, parameters): stored in ``mask.tif`` and in the journal, so an
    existing output is skipped, and a journal resumed, only for exactly this pair and configuration.

    ``threshold=False`` leaves the threshold out: the hash of the probability raster (tag ``rrsis_prob_hash``),
    which does not depend on it in tile grounding, so a ``prob.tif`` is re-thresholded for any threshold. With
    scene grounding the threshold picks the coarse candidates, so it stays in (no re-thresholding)."""
    payload = {"model": model_sha, "scene": scene.fingerprint, "prompt": prompt, "tile": tile,
               "overlap": options.overlap,
               "threshold": options.threshold, "bands": options.bands, "gsd": options.gsd,
               "stretch": options.stretch, "version": __version__}
    if options.rpc_height is not None or options.rpc_dem is not None:
        payload["rpc"] = [options.rpc_height, options.rpc_dem]
    if options.aoi is not None:
        from rrsis_cli.aoi import parse_aoi

        payload["aoi"] = parse_aoi(options.aoi).record()
    if options.grounding != "tiles":
        payload["grounding"] = [options.grounding, options.coarse_size, options.coarse_weight,
                                options.coarse_support, options.refine_margin, options.min_object_size, 2]
    elif not threshold:
        payload.pop("threshold")
        payload["kind"] = "probability"
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def is_finished(mask_path: Path, scene: Scene, prompt: str, chash: str) -> bool:
    """True when ``mask_path`` exists and its tags prove it is the output of this scene (fingerprint), this exact
    prompt and this configuration: a file of the same name is not enough."""
    import rasterio

    if not mask_path.exists():
        return False
    try:
        with rasterio.open(mask_path) as ds:
            tags = ds.tags()
    except rasterio.errors.RasterioIOError:
        return False
    return tags_prove_finished(tags, scene, prompt, chash)


def tags_prove_finished(tags: dict[str, str] | None, scene: Scene, prompt: str, chash: str) -> bool:
    """The rule of :func:`is_finished` on a mask's tags (read locally or from an object store)."""
    return (tags is not None and tags.get("rrsis_config_hash") == chash and tags.get("prompt") == prompt
            and tags.get("rrsis_scene_fingerprint") == scene.fingerprint)


def reusable_prob(prob_path: Path, reader: SceneReader, scene: Scene, prompt: str, phash: str) -> bool:
    """True when ``prob_path`` exists and its tags prove it is the probability raster of this scene, this exact
    prompt and this configuration except the threshold (``rrsis_prob_hash``), on the scene's grid."""
    import rasterio

    if not prob_path.exists():
        return False
    try:
        with rasterio.open(prob_path) as ds:
            tags, shape = ds.tags(), (ds.height, ds.width)
    except rasterio.errors.RasterioIOError:
        return False
    return (tags.get("rrsis_prob_hash") == phash and tags.get("prompt") == prompt
            and tags.get("rrsis_scene_fingerprint") == scene.fingerprint
            and shape == (reader.ds.height, reader.ds.width))


def output_tags(model, scene: Scene, prompt: str, options: PredictOptions, tile: int) -> dict[str, str]:
    """Tags of ``mask.tif`` and ``prob.tif``: what produced them, and the hashes that let a later run skip the
    pair (``rrsis_config_hash``) or re-threshold its ``prob.tif`` (``rrsis_prob_hash``). The scene is named by its
    file name and content fingerprint, never by where it was read from (the manifest has the path or URL), so the
    same scene read from another mount, a URL or an object store gives the same bytes."""
    tags = {"prompt": prompt, "model": str(model.config.get("name")), "model_sha256": str(model.sha256),
            "rrsis_version": __version__, "tile_size": str(tile), "overlap": str(options.overlap),
            "threshold": str(options.threshold),
            "rrsis_config_hash": config_hash(model.sha256, scene, prompt, options, tile),
            "rrsis_prob_hash": config_hash(model.sha256, scene, prompt, options, tile, threshold=False),
            "rrsis_scene": scene.path.name, "rrsis_scene_fingerprint": scene.fingerprint}
    if options.gsd is not None:
        tags["gsd"] = str(options.gsd)
    return tags


def pair_finished(out: Path, scene: Scene, prompt: str, options: PredictOptions, model_sha: str | None,
                  tile: int, remote: RemoteOutput | None = None) -> bool:
    """True when the pair's ``mask.tif`` proves it is finished with this model and configuration
    (:func:`is_finished`) and its vectors are there (unless ``--no-vectors``; missing vectors are rebuilt).
    With an object-store output (``remote``) both are looked up in the store."""
    target = output_dir(out, scene, prompt)
    vectors = target / f"mask.{VECTOR_DRIVERS[options.vector_format][1]}"
    chash = config_hash(model_sha, scene, prompt, options, tile)
    if remote is not None:
        rel = relative_output_dir(scene, prompt)
        return tags_prove_finished(remote.tags(f"{rel}/mask.tif"), scene, prompt, chash) and \
            (not options.vectors or remote.has(f"{rel}/{vectors.name}"))
    return is_finished(target / "mask.tif", scene, prompt, chash) and (vectors.is_file() or not options.vectors)


def finished_pairs(scenes: list[Scene], prompts: list[str], out: Path, options: PredictOptions, model_sha: str,
                   tile: int, remote: RemoteOutput | None = None) -> set[tuple[Path, str]]:
    """(scene path, prompt) of every finished pair (:func:`pair_finished`): the decision :class:`SceneRunner`
    takes, made from the model's hash alone, before the model is loaded."""
    return {(scene.path, prompt) for scene in scenes for prompt in prompts
            if pair_finished(out, scene, prompt, options, model_sha, tile, remote)}

"""No result is ever lost: every (scene, prompt) has its own output and work directory, by construction.

Same-stem scenes in sibling folders, ``x.tif`` beside ``x.vrt``, files of one name given from different folders,
prompts that slug alike (``water`` / ``Water!``) or share their first 100 characters: each pair gets its own
mask, byte-identical to a run on that pair alone; a rerun skips them all; a 2-worker LocalCluster gives the same
files; the same file reached twice runs once; skip-existing checks the scene and prompt recorded in the mask."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from rrsis_cli.inputs import find_scenes, prompt_key, work_dir
from rrsis_cli.manifest import merge_manifests
from rrsis_cli.models import build_model, save_model
from rrsis_cli.predict import PredictOptions, predict
from stub_models import PromptPointwise, use_model

DATA = Path(__file__).parents[1] / "examples" / "data"
LONG = "the large rectangular grey industrial building with a flat roof beside the river bend near the bridge "
PROMPTS = ["water", "Water!", LONG + "one", LONG + "two"]
OPTIONS = dict(tile_size=64, batch_size=8, device="cpu")




@pytest.fixture()
def prompt_model(monkeypatch):
    return use_model(monkeypatch, PromptPointwise())


def _crop(path: Path, row: int, col: int, size: int = 96) -> Path:
    with rasterio.open(DATA / "RGB.byte.tif") as src:
        window = Window(col, row, size, size)
        profile = {**src.profile, "width": size, "height": size, "transform": src.window_transform(window),
                   "tiled": False}
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return path


@pytest.fixture()
def same_stem(tmp_path):
    """``root/a/x.tif`` and ``root/b/x.tif``: same name, different pixels."""
    root = tmp_path / "scenes"
    return root, _crop(root / "a" / "x.tif", 300, 300), _crop(root / "b" / "x.tif", 350, 420)


def _results(manifest) -> dict[tuple[str, str], str]:
    return {(Path(r.scene).parent.name, r.prompt): r.output_dir for r in manifest.results}


def test_same_stem_scenes_and_slug_alike_prompts_get_distinct_outputs(prompt_model, same_stem, tmp_path):
    root, a, b = same_stem
    out = tmp_path / "out"
    manifest = predict([root], "m", PROMPTS, out, PredictOptions(**OPTIONS))
    assert manifest.exit_code == 0 and [r.status for r in manifest.results] == ["done"] * 8
    dirs = _results(manifest)
    assert len(set(dirs.values())) == 8  # eight pairs, eight directories
    masks = sorted(out.rglob("mask.tif"))
    assert len(masks) == 8 and {str(p.parent.relative_to(out)) for p in masks} == set(dirs.values())
    # readable and stable: the scene's folder relative to the input folder, stem, then the hashes
    assert dirs[("a", "water")].startswith("a/x-") and dirs[("b", "water")].startswith("b/x-")
    assert dirs[("a", "water")].endswith("/" + prompt_key("water")) and prompt_key("water").startswith("water-")
    pixels = {key: rasterio.open(out / d / "mask.tif").read(1) for key, d in dirs.items()}
    assert not np.array_equal(pixels[("a", "water")], pixels[("b", "water")])
    assert not np.array_equal(pixels[("a", "water")], pixels[("a", "Water!")])
    assert not np.array_equal(pixels[("a", LONG + "one")], pixels[("a", LONG + "two")])
    scenes = find_scenes([root])
    assert len({work_dir(out, s, p) for s in scenes for p in PROMPTS}) == 8

    # each mask is byte-identical to a run on that pair alone
    for scene in (a, b):
        for prompt in PROMPTS:
            alone = predict([scene], "m", [prompt], tmp_path / "alone", PredictOptions(**OPTIONS))
            solo = tmp_path / "alone" / alone.results[0].output_dir / "mask.tif"
            assert solo.read_bytes() == (out / dirs[(scene.parent.name, prompt)] / "mask.tif").read_bytes()
            shutil.rmtree(tmp_path / "alone")

    rerun = predict([root], "m", PROMPTS, out, PredictOptions(**OPTIONS))
    assert [r.status for r in rerun.results] == ["skipped-existing"] * 8


def test_files_of_one_name_from_different_folders_and_tif_beside_vrt(prompt_model, same_stem, tmp_path):
    root, a, b = same_stem
    vrt = a.with_suffix(".vrt")  # x.vrt beside x.tif, pointing at b's pixels
    rasterio.shutil.copy(b, vrt, driver="VRT")
    manifest = predict([a, b, vrt], "m", ["water"], tmp_path / "out", PredictOptions(**OPTIONS))
    assert [r.status for r in manifest.results] == ["done"] * 3
    assert len({r.output_dir for r in manifest.results}) == 3
    assert len(list((tmp_path / "out").rglob("mask.tif"))) == 3


def test_the_same_file_reached_twice_runs_once(prompt_model, same_stem, tmp_path, caplog):
    root, a, _ = same_stem
    link = tmp_path / "link.tif"
    link.symlink_to(a)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# scenes for tonight\n\n{a}\n")
    manifest = predict([a, a, link, root / "a", listing], "m", ["water"], tmp_path / "out",
                       PredictOptions(**OPTIONS))
    assert [r.status for r in manifest.results] == ["done"]
    assert len(manifest.duplicates) == 4 and {d["same_as"] for d in manifest.duplicates} == {str(a)}
    written = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(written["duplicates"]) == 4 and len(written["inputs"]) == 1


def test_repeated_prompt_runs_once(prompt_model, same_stem, tmp_path):
    _, a, _ = same_stem
    manifest = predict([a], "m", ["water", "water"], tmp_path / "out", PredictOptions(**OPTIONS))
    assert [r.prompt for r in manifest.results] == ["water"]


def test_skip_existing_proves_the_scene_and_prompt(prompt_model, same_stem, tmp_path):
    _, a, b = same_stem
    out = tmp_path / "out"
    first = predict([a, b], "m", ["water"], out, PredictOptions(**OPTIONS))
    dir_a, dir_b = (out / r.output_dir for r in first.results)
    # a mask of the right name but of another scene is not a finished result for this one
    shutil.copyfile(dir_a / "mask.tif", dir_b / "mask.tif")
    rerun = predict([a, b], "m", ["water"], out, PredictOptions(**OPTIONS))
    assert [r.status for r in rerun.results] == ["skipped-existing", "done"]
    with rasterio.open(dir_b / "mask.tif") as ds:
        assert ds.tags()["rrsis_scene"] == "x.tif" and ds.tags()["prompt"] == "water"
        assert ds.tags()["rrsis_scene_fingerprint"] == find_scenes([b])[0].fingerprint
    # a scene rewritten with other pixels under the same name is a new scene: its own directory, the old kept
    _crop(a, 100, 500)
    again = predict([a], "m", ["water"], out, PredictOptions(**OPTIONS))
    assert again.results[0].status == "done" and out / again.results[0].output_dir != dir_a
    assert (dir_a / "mask.tif").exists()


def test_a_moved_scene_keeps_its_key(same_stem, tmp_path):
    _, a, _ = same_stem
    moved = tmp_path / "elsewhere" / "a" / "x.tif"
    moved.parent.mkdir(parents=True)
    shutil.copyfile(a, moved)
    assert find_scenes([a])[0].key == find_scenes([moved])[0].key


def test_list_file_paths_are_relative_to_the_list(same_stem, tmp_path):
    root, a, b = same_stem
    listing = root / "tonight.txt"
    listing.write_text("# comment\na/x.tif\n\n  b/x.tif  \n")
    assert [s.path for s in find_scenes([listing])] == [root / "a" / "x.tif", root / "b" / "x.tif"]


def test_manifest_maps_pairs_and_merge_keeps_the_mapping(prompt_model, same_stem, tmp_path):
    root, _, _ = same_stem
    out = tmp_path / "out"
    for index in range(2):
        predict([root], "m", ["water", "Water!"], out, PredictOptions(**OPTIONS), shard=f"{index}/2")
    merged = merge_manifests(out)
    pairs = {(r["scene"], r["prompt"]): r["output_dir"] for r in merged["results"]}
    assert len(pairs) == 4 == len(set(pairs.values()))
    for (scene, prompt), directory in pairs.items():
        with rasterio.open(out / directory / "mask.tif") as ds:
            assert ds.tags()["rrsis_scene"] == Path(scene).name and ds.tags()["prompt"] == prompt


def test_local_cluster_gives_the_same_files(same_stem, tmp_path):
    """Two dask workers on same-stem scenes and slug-alike prompts write the same files as one process."""
    logging.getLogger("distributed").setLevel(logging.ERROR)
    root, _, _ = same_stem
    model = tmp_path / "model"
    save_model(build_model("lavt-tiny", seed=5), model)
    opts = dict(OPTIONS, bands=[1, 2, 3])
    here = predict([root], str(model), PROMPTS[:2], tmp_path / "here", PredictOptions(**opts))
    dask = predict([root], str(model), PROMPTS[:2], tmp_path / "dask", PredictOptions(**opts), cluster="local:2")
    assert here.exit_code == dask.exit_code == 0

    def files(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("mask.*"))}

    assert len(files(tmp_path / "here")) == 8  # mask.tif + mask.geojson for 4 pairs
    assert files(tmp_path / "here") == files(tmp_path / "dask")
    assert sorted(r.output_dir for r in here.results) == sorted(r.output_dir for r in dask.results)

"""``rrsis predict``: stream GeoTIFF scenes through a model tile by tile, blend overlapping tiles in bounded
memory, write a Cloud-Optimised GeoTIFF mask and vector polygons per (scene, prompt).

Data path, one module per stage, in one direction: :mod:`rrsis_cli.inputs` (which scenes, where each pair
writes) → :mod:`rrsis_cli.scene` (georeference, windowed reads, nodata mask, scene-level normalisation) →
:mod:`rrsis_cli.pipeline` (parallel reads, one read per tile for every prompt, batched inference through
:mod:`rrsis_cli.inference`, streaming blend and band journal of :mod:`rrsis_cli.blend`) →
:mod:`rrsis_cli.outputs` (COG mask and probability, vectors). This package decides what each pair needs
(skip, re-threshold, compute), drives the pipeline per scene and writes the manifest. Memory depends on the
tile size, the scene width and the batches in flight, not on the scene's height. Every output is written under a
temporary name and renamed; a killed run resumes from its journal.

Its modules, each importing only those before it (``tests/test_import_graph.py`` checks the order):

- :mod:`~rrsis_cli.predict.options`: :class:`PredictOptions` and the checks that need no scene or model;
- :mod:`~rrsis_cli.predict.records`: :class:`SceneResult`, :class:`RunManifest` and its atomic write;
- :mod:`~rrsis_cli.predict.finished`: configuration hash, output tags, skip-existing and re-threshold checks;
- :mod:`~rrsis_cli.predict.coarse`: scene grounding's coarse pass and fusion for a pair;
- :mod:`~rrsis_cli.predict.tiles`: text cache, device, the tiles of the pairs of a scene (read, infer, blend);
- :mod:`~rrsis_cli.predict.write`: a pair's rasters from its journal, its COGs and vectors, moved into place;
- :mod:`~rrsis_cli.predict.runner`: :class:`SceneRunner`, a scene (or a window of tile rows) with one model;
- :mod:`~rrsis_cli.predict.plan`: ``--dry-run``;
- :mod:`~rrsis_cli.predict.local`: the in-process driver;
- :mod:`~rrsis_cli.predict.tasks`: the dask tasks, window plans and the dask driver;
- :mod:`~rrsis_cli.predict.driver`: :func:`predict`, which chooses between the two drivers.

:mod:`rrsis_cli.distributed` and :mod:`rrsis_cli.grounding` serve this package and never import it.
"""

from rrsis_cli.pipeline import mask_from_probability, quantise
from rrsis_cli.predict.driver import predict
from rrsis_cli.predict.options import PredictOptions
from rrsis_cli.predict.records import RunManifest, SceneResult
from rrsis_cli.predict.runner import SceneRunner
from rrsis_cli.predict.tasks import run_scene_task, run_window_task, window_plan
from rrsis_cli.predict.tiles import TextCache, pick_device
from rrsis_cli.tiling import blend_weights, tile_origins

__all__ = ["PredictOptions", "RunManifest", "SceneResult", "SceneRunner", "TextCache", "blend_weights",
           "mask_from_probability", "pick_device", "predict", "quantise", "run_scene_task", "run_window_task",
           "tile_origins", "window_plan"]

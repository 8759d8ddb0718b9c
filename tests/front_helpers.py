"""Shared by the tests of the CLI's front end (validation, dry run, prompts, help, start-up): small scenes, the CLI
run in-process, and a model loader that fails the test if anything loads a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rrsis_cli import console


def write_scene(path: Path, count: int = 3, dtype: str = "uint8", size: int = 64, nodata_rows: int = 0,
                colorinterp: list[str] | None = None, crs: str | None = "EPSG:32618") -> Path:
    """A small georeferenced GeoTIFF (5 m pixels) with a gradient; the first ``nodata_rows`` rows are nodata (0)."""
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    data = rng.integers(10, 200, size=(count, size, size)).astype(dtype)
    data[:, :nodata_rows] = 0
    profile = {"driver": "GTiff", "width": size, "height": size, "count": count, "dtype": dtype,
               "transform": from_origin(500000, 4000000, 5, 5), "nodata": 0 if nodata_rows else None}
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if colorinterp:
            dst.colorinterp = [ColorInterp[c] for c in colorinterp]
    return path


def tiny_model_dir(folder: Path) -> Path:
    """A lavt-tiny model directory (seeded random weights): a model with weights, as predict needs."""
    from rrsis_cli.models import build_model, save_model

    return save_model(build_model("lavt-tiny", seed=0), Path(folder) / "lavt-tiny")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``rrsis ARGS`` in this process: (exit code, stdout, stderr)."""
    from rrsis_cli.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    console.configure()  # settings are process-wide: back to the defaults for the next call
    return exit_info.value.code, captured.out, captured.err


def refuse_model_loading(monkeypatch) -> list[str]:
    """Make ``rrsis_cli.models.load_model`` fail the test (use in a ``no_model`` fixture); returns the specs it
    was called with."""
    import rrsis_cli.models

    calls: list[str] = []

    def refuse(spec, device="cpu"):
        calls.append(str(spec))
        raise AssertionError(f"load_model({spec!r}) was called")

    monkeypatch.setattr(rrsis_cli.models, "load_model", refuse)
    return calls

"""``rrsis data``: inspect benchmark dataset folders; generate synthetic referring data and demo scenes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rrsis_cli import console
from rrsis_cli.cli.base import RrsisTyper

app = RrsisTyper(help="Datasets: inspect benchmark folders, generate synthetic referring data.", no_args_is_help=True)


@app.command("info")
def data_info(
    root: Annotated[Path, typer.Argument(help="Dataset root.")],
    format: Annotated[str, typer.Option("--format", "-f", help="folder, refsegrs, rrsisd, risbench.")] = "folder",
    splits: Annotated[list[str] | None, typer.Option("--split", help="Split(s) to inspect [train, val, test].")] = None,
    check: Annotated[bool, typer.Option(help="Read every image header and mask (sizes, empty masks, "
                                             "undecodable annotations).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Split counts, categories, expression lengths and problems found in a dataset."""
    from rrsis_cli.data import open_dataset
    from rrsis_cli.errors import DatasetError

    reports = []
    for split in splits or ["train", "val", "test"]:
        try:
            reports.append(open_dataset(format, root, split).info(check=check))
        except DatasetError as exc:
            if splits:  # a split the user asked for must open
                raise
            reports.append({"format": format, "split": split, "root": str(root), "error": exc.message})
    if all("error" in r for r in reports):
        raise DatasetError(f"no readable split ({reports[0]['error']})", root)
    if as_json:
        console.stdout.print_json(json.dumps(reports))
        return
    table = Table(title=f"{format} dataset at {root}")
    for column in ("split", "samples", "images", "categories", "words mean/median/max", "problems"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for r in reports:
        if "error" in r:
            table.add_row(r["split"], "-", "-", "-", "-", r["error"])
            continue
        w = r["expression_words"]
        problems = "not checked" if r["problems"] is None else str(len(r["problems"]))
        table.add_row(r["split"], str(r["n_samples"]), str(r["n_images"]), str(len(r["categories"])),
                      f"{w['mean']}/{w['median']}/{w['max']}", problems)
    console.stdout.print(table)
    for r in reports:
        if r.get("categories"):
            console.stdout.print(f"{r['split']} categories: " + ", ".join(f"{k} {v}" for k, v in r["categories"].items()))
        if r.get("undecodable_refs"):
            console.stdout.print(f"{r['split']}: {r['undecodable_refs']} ref(s) whose annotation cannot be decoded "
                                 "(read as empty masks)")
        for problem in (r.get("problems") or [])[:10]:
            console.stdout.print(f"{r['split']}: {problem}", markup=False)
        if r.get("problems") and len(r["problems"]) > 10:
            console.stdout.print(f"{r['split']}: ... {len(r['problems']) - 10} more problems (use --json)")


@app.command("synth")
def data_synth(
    sources: Annotated[list[Path], typer.Argument(help="Real GeoTIFFs whose pixels become the backgrounds.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory to write (folder format).")],
    train_size: Annotated[int, typer.Option("--train", help="Training samples.")] = 2000,
    val_size: Annotated[int, typer.Option("--val", help="Validation samples.")] = 200,
    test_size: Annotated[int, typer.Option("--test", help="Test samples.")] = 400,
    chip_size: Annotated[int, typer.Option(help="Chip side in pixels.")] = 96,
    seed: Annotated[int, typer.Option(help="Seed (same arguments -> identical files).")] = 0,
    scene_size: Annotated[int, typer.Option(help="Also write a demo scene of this side (0 = none).")] = 0,
    absent_fraction: Annotated[float, typer.Option(help="Share of training chips whose referent is absent "
                                                        "(empty mask).")] = 0.0,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty directory.")] = False,
) -> None:
    """Generate a referring-segmentation dataset whose expressions need the language (attribute, position,
    comparison, relation), and optionally a large georeferenced demo scene with ground-truth polygons."""
    from rrsis_cli.synth import make_dataset, make_demo_scene

    report = make_dataset(sources, out, {"train": train_size, "val": val_size, "test": test_size},
                          chip_size=chip_size, seed=seed, absent_fraction=absent_fraction, overwrite=overwrite)
    for split, info in report["splits"].items():
        unseen = report["heldout_vocabulary_check"].get(split, {}).get("unseen_in_train", [])
        console.info(f"{split}: {info['samples']} samples {info['by_type']}"
                     + (f"; words unseen in train: {unseen}" if unseen else ""))
    if scene_size:
        scene = make_demo_scene(sources[0], out / "scene", size=scene_size, seed=seed, overwrite=overwrite)
        console.info(f"scene: {out / 'scene' / 'scene.tif'} ({scene['objects']} objects; ground truth for "
                     f"{', '.join(scene['prompts'])})")


@app.command("scene")
def data_scene(
    source: Annotated[Path, typer.Argument(help="Real GeoTIFF whose pixels are mirror-tiled into the scene.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for scene.tif, objects and ground truth.")],
    size: Annotated[int, typer.Option(help="Scene side in pixels.")] = 2048,
    seed: Annotated[int, typer.Option(help="Seed (same arguments -> identical files).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing scene.")] = False,
) -> None:
    """Write a large georeferenced demo scene with composited objects and ground-truth polygons (GeoJSON)."""
    from rrsis_cli.synth import make_demo_scene

    report = make_demo_scene(source, out, size=size, seed=seed, overwrite=overwrite)
    console.info(f"wrote {out / 'scene.tif'} ({size}x{size}, {report['crs']}, {report['objects']} objects); "
                 "ground truth: " + ", ".join(f"{v['path']} ({v['objects']})" for v in report["prompts"].values()))



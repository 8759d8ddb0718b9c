"""Corpus check: run ``rrsis predict`` over every raster in some folders, as a user would (one process, JSON
logs), and check each result: status, whether ``mask.tif`` lies on the input's grid and CRS (or, for inputs
georeferenced by GCPs or RPCs, on the grid GDAL suggests for warping them, covering the footprint GDAL's own
GCP/RPC transformer gives), the vectors' CRS, and the error line of each failure. Prints a markdown table.

Usage::

    python benchmarks/corpus_check.py FOLDER... [--out DIR] [--model MODEL_DIR] [--prompt TEXT] [--json FILE]

Every file in the folders is tried except sidecars (``.aux.xml``, ``.ovr``, ``.msk``, shapefile parts, files
named ``README*``): a file GDAL cannot open as a raster must fail with a clear one-line error, not crash the run.
Without ``--model`` a seeded ``lavt-tiny`` model directory (random weights, seed 0) is written under ``--out``:
the check is about reading, georeferencing and writing, not about segmentation quality.

Verdicts: ``ok`` (done, mask on the expected grid, vectors in EPSG:4326, or without CRS for inputs without
georeference); ``clear error`` (failed with one line naming the file, no bare exception text); ``BAD`` otherwise
(wrong grid, crash, result missing, an error that does not say what happened).

Run it on rasterio's test data (``tests/data`` of github.com/rasterio/rasterio) to reproduce the table in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

METHODS = {"gcps": "GCPs", "rpcs": "RPCs"}
SIDECAR_SUFFIXES = (".aux.xml", ".ovr", ".msk", ".dbf", ".shx", ".prj", ".cpg", ".qix", ".sbn", ".sbx")


def candidate_files(folders: list[Path]) -> list[Path]:
    """Every file under ``folders`` (sorted) except sidecars and READMEs."""
    found = []
    for folder in folders:
        paths = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else [folder]
        for path in paths:
            name = path.name.lower()
            if name.endswith(SIDECAR_SUFFIXES) or name.startswith("readme"):
                continue
            found.append(path)
    return found


def describe_input(path: Path) -> dict[str, Any]:
    """What GDAL sees: raster or not, band count, georeference method (transform / gcps / rpcs / none)."""
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with rasterio.open(path) as ds:
                gcps, gcp_crs = ds.gcps
                if not ds.transform.is_identity:
                    method = "transform"
                elif gcps:
                    method = "gcps"
                elif ds.rpcs:
                    method = "rpcs"
                else:
                    method = "none"
                return {"kind": "raster" if ds.count else f"container ({len(ds.subdatasets)} subdatasets)",
                        "method": method, "crs": ds.crs, "transform": ds.transform, "shape": ds.shape,
                        "gcps": gcps, "gcp_crs": gcp_crs, "rpcs": ds.rpcs}
        except Exception as exc:  # noqa: BLE001 - anything GDAL cannot open is "not a raster" here
            return {"kind": "not a raster", "method": "-", "open_error": str(exc).splitlines()[0]}


def footprint_points(info: dict[str, Any], dst_crs, rpc_height: float | None = None
                     ) -> tuple[list[float], list[float]]:
    """Map coordinates in ``dst_crs`` of points along the input's edges, through GDAL's GCP/RPC transformer
    (RPCs at ``rpc_height``, the height the run used, from its manifest)."""
    from rasterio.transform import GCPTransformer, RPCTransformer
    from rasterio.warp import transform

    height, width = info["shape"]
    steps = 20
    rows = [r * height / steps for r in range(steps + 1)]
    cols = [c * width / steps for c in range(steps + 1)]
    edge = ([(r, 0) for r in rows] + [(r, width) for r in rows] + [(0, c) for c in cols]
            + [(height, c) for c in cols])
    if info["method"] == "gcps":
        transformer, src_crs = GCPTransformer(info["gcps"]), info["gcp_crs"]
    else:
        options = {} if rpc_height is None else {"RPC_HEIGHT": rpc_height}
        transformer, src_crs = RPCTransformer(info["rpcs"], **options), "EPSG:4326"
    with transformer:
        xs, ys = transformer.xy([r for r, _ in edge], [c for _, c in edge], offset="ul")
    return transform(src_crs, dst_crs, list(xs), list(ys))


def check_grid(info: dict[str, Any], mask_path: Path, record: dict[str, Any]) -> tuple[bool, str]:
    """(as expected, description) for the mask's grid against the input (``record``: its manifest entry)."""
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(mask_path) as mask:
            crs, transform, shape, bounds = mask.crs, mask.transform, mask.shape, mask.bounds
    method = info["method"]
    if method == "transform":
        same = (crs == info["crs"] and transform.almost_equals(info["transform"], 1e-9)
                and shape == info["shape"])
        return same, ("input grid" if same else f"NOT the input grid ({crs}, {transform[:6]}, {shape})") + (
            "" if info["crs"] else ", no CRS")
    if method == "none":
        same = crs is None and transform.is_identity and shape == info["shape"]
        return same, "pixel grid (no georeference)" if same else f"NOT the pixel grid ({crs}, {transform[:6]})"
    if crs is None:
        return False, f"NOT placed ({method} ignored: no CRS)"
    xs, ys = footprint_points(info, crs, (record.get("georeference") or {}).get("rpc_height"))
    pixel = max(abs(transform.a), abs(transform.e))
    errors = [abs(min(xs) - bounds.left), abs(max(xs) - bounds.right), abs(min(ys) - bounds.bottom),
              abs(max(ys) - bounds.top)]
    ok = max(errors) <= pixel
    label = f"warped grid from {METHODS[method]} ({crs.to_string()}, {pixel:.3g} m/px)"
    return ok, label if ok else f"NOT the footprint of the {method} (off by {max(errors) / pixel:.1f} px)"


def check_vectors(path: Path, mask_path: Path, georeferenced: bool) -> tuple[bool, str]:
    """(as expected, description): EPSG:4326 for a georeferenced mask (RFC 7946 GeoJSON); for a mask without CRS,
    coordinates in the mask's own space (GeoJSON cannot say "no CRS": readers will assume EPSG:4326)."""
    import pyogrio
    import rasterio

    try:
        meta = pyogrio.read_info(path)
    except Exception as exc:  # noqa: BLE001
        return False, f"unreadable ({exc})"
    count = f"{meta['features']} features"
    if georeferenced:
        ok = meta["crs"] in ("EPSG:4326", "OGC:CRS84")
        return ok, f"{meta['crs'] or 'no CRS'}, {count}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(mask_path) as mask:
            left, bottom, right, top = mask.bounds
    box = meta.get("total_bounds")
    inside = box is None or not meta["features"] or (
        min(left, right) - 1e-6 <= box[0] and box[2] <= max(left, right) + 1e-6
        and min(bottom, top) - 1e-6 <= box[1] and box[3] <= max(bottom, top) + 1e-6)
    return inside, f"mask coordinates, no CRS, {count}" if inside else f"outside the mask's space, {count}"


def run_predict(files: list[Path], model: Path, prompt: str, out: Path) -> tuple[int, list[str]]:
    """One ``rrsis predict`` process over every file (JSON logs); returns its exit code and stderr lines."""
    command = [sys.executable, "-m", "rrsis_cli", "predict", *map(str, files), "--model", str(model),
               "--prompt", prompt, "--out", str(out), "--log-format", "json", "--overwrite"]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return proc.returncode, proc.stderr.splitlines()


def is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def verdict(row: dict[str, Any]) -> str:
    if row["status"] == "done":
        return "ok" if row["grid_ok"] and row["vectors_ok"] else "BAD"
    error = row.get("error") or ""
    clear = (row["status"] == "failed" and error.startswith(row["file"]) and "See previous exception" not in error
             and "\n" not in error)
    return "clear error" if clear else "BAD"


def check(folders: list[Path], out: Path, model: Path | None, prompt: str) -> tuple[list[dict[str, Any]],
                                                                                  dict[str, Any]]:
    files = candidate_files(folders)
    if model is None:
        from rrsis_cli.models import build_model, save_model

        model = save_model(build_model("lavt-tiny", seed=0), out / "model")
    run_dir = out / "run"
    code, stderr = run_predict(files, model, prompt, run_dir)
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"results": [], "inputs": []}
    results = {Path(r["scene"]): r for r in manifest["results"]}
    rows = []
    for path in files:
        info = describe_input(path)
        result = results.get(path)
        row: dict[str, Any] = {"file": str(path), "name": path.name, "kind": info["kind"],
                               "georeference": info["method"], "status": result["status"] if result else
                               "not reached", "grid": "", "grid_ok": False, "vectors": "", "vectors_ok": False,
                               "error": (result or {}).get("error")}
        if result and result["status"] == "done":
            pair = run_dir / result["output_dir"]
            records = {r["path"]: r for r in manifest["inputs"]}
            row["grid_ok"], row["grid"] = check_grid(info, pair / "mask.tif", records.get(str(path), {}))
            georeferenced = info["method"] in ("gcps", "rpcs") or info.get("crs") is not None
            row["vectors_ok"], row["vectors"] = check_vectors(Path(result["outputs"]["vectors"]), pair / "mask.tif",
                                                              georeferenced)
        row["verdict"] = verdict(row)
        rows.append(row)
    non_json = [line for line in stderr if not is_json(line)]
    summary = {"exit_code": code, "stderr_lines": len(stderr), "non_json_stderr_lines": len(non_json),
               "non_json_sample": non_json[:5], "files": len(rows),
               "verdicts": {v: sum(r["verdict"] == v for r in rows) for v in ("ok", "clear error", "BAD")}}
    return rows, summary


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    def cell(text: Any) -> str:
        return str(text or "").replace("|", "\\|").replace("\n", " ")

    lines = ["| file | GDAL sees | georeference | status | mask grid | vectors | error | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        error = row["error"] or ""
        if error.startswith(row["file"]):
            error = "…" + error[len(row["file"]):]
        lines.append("| " + " | ".join(cell(v) for v in (row["name"], row["kind"], row["georeference"],
                                                          row["status"], row["grid"], row["vectors"], error,
                                                          row["verdict"])) + " |")
    verdicts = ", ".join(f"{n} {v}" for v, n in summary["verdicts"].items())
    lines += ["", f"{summary['files']} files: {verdicts}. Exit code {summary['exit_code']}; "
              f"{summary['stderr_lines']} stderr lines, {summary['non_json_stderr_lines']} not JSON."]
    lines += [f"    {line}" for line in summary["non_json_sample"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="Work directory (kept) [a temporary one, removed].")
    parser.add_argument("--model", type=Path, help="Model directory [seeded lavt-tiny].")
    parser.add_argument("--prompt", default="the building")
    parser.add_argument("--json", type=Path, help="Also write the rows and summary as JSON here.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rrsis-corpus-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        rows, summary = check([f.resolve() for f in args.folders], out.resolve(), args.model, args.prompt)
    print(markdown(rows, summary))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2, default=str) + "\n")
    return 0 if summary["verdicts"]["BAD"] == 0 and summary["non_json_stderr_lines"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

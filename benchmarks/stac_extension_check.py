"""Validate the STAC Items that ``predict --publish`` writes against STAC extension JSON schemas given as files.

The test suite validates Items and the Catalog against the STAC core schemas vendored in
``tests/data/stac-schemas``; the projection and raster extension schemas are published only on GitHub
(github.com/stac-extensions/projection ``json-schema/schema.json`` at tag v2.0.0, github.com/stac-extensions/raster
at tag v1.1.0), which no installed package ships and the test machines cannot reach, so the tests check those
fields structurally. Run this where the schema files are at hand:

    python benchmarks/stac_extension_check.py projection-v2.0.0.json raster-v1.1.0.json

It publishes two small scenes × two prompts with the null model in a temporary folder, validates every Item against
each schema whose ``$id`` the Item lists in ``stac_extensions``, then checks that a deliberately broken Item fails
each schema (the validator is not a rubber stamp). Exit status 1 when an Item fails, an extension the Items list
has no schema here, or the broken Item passes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def published_items(folder: Path) -> list[Path]:
    from test_remote_sidecars import write_plain, write_with_msk

    from rrsis_cli.predict import PredictOptions, predict

    (folder / "in").mkdir()
    scenes = [write_plain(folder / "in" / "a.tif", 1), write_with_msk(folder / "in" / "b.tif", 2)]
    manifest = predict([str(s) for s in scenes], "null", ["the fields", "a road"], folder / "out",
                       PredictOptions(read_workers=1, vectors=False), publish=True)
    if manifest.exit_code != 0:
        raise SystemExit(f"predict --publish exited {manifest.exit_code}")
    return sorted((folder / "out").rglob("item.json"))


def broken(item: dict) -> dict:
    """``item`` with a one-element ``proj:shape`` and an unknown raster ``data_type``."""
    item = json.loads(json.dumps(item))
    item["properties"]["proj:shape"] = [1]
    for asset in item["assets"].values():
        for band in asset.get("raster:bands", []):
            band["data_type"] = "uint7"
    return item


def main() -> int:
    from jsonschema import Draft7Validator

    parser = argparse.ArgumentParser()
    parser.add_argument("schemas", nargs="+", type=Path)
    validators = {}
    for path in parser.parse_args().schemas:
        schema = json.loads(path.read_text())
        validators[schema["$id"].rstrip("#")] = Draft7Validator(schema)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        items = published_items(Path(tmp))
        for path in items:
            item = json.loads(path.read_text())
            for extension in item["stac_extensions"]:
                if extension not in validators:
                    print(f"{path.parent.name}: no schema given for {extension}")
                    failures += 1
                    continue
                errors = [e.message for e in validators[extension].iter_errors(item)]
                failures += bool(errors)
                print(f"{path.parent.parent.name}/{path.parent.name}: {extension}: "
                      f"{'valid' if not errors else errors}")
        wrong = broken(json.loads(items[0].read_text()))
        for extension, validator in validators.items():
            caught = any(True for _ in validator.iter_errors(wrong))
            failures += not caught
            print(f"broken item against {extension}: {'rejected' if caught else 'ACCEPTED'}")
    print(f"{len(items)} item(s), {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

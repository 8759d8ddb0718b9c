"""The README's install path is enough for the quickstart, and the quickstart script fails loudly.

`make quickstart` runs on a venv built by `make install` alone (CI proves it for real in .ci/run); these
checks catch the same mistakes in seconds: the demo model's text-encoder package missing from what
`make install` installs, and a quickstart that exits 0 although a step failed or an output is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.sh"


def _installed_by_make_install() -> set[str]:
    """Canonical names of the distributions that `make install` asks pip for (besides torch): the project's
    core dependencies plus those of the extras named in its `pip install -e .[...]` line."""
    tomllib = pytest.importorskip("tomllib")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    recipe = subprocess.run(["make", "-n", "install", "VENV=/nonexistent-venv"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    match = re.search(r"pip install\b.*\s-e\s+[\"']?\.(?:\[([^\]]*)\])?", recipe)
    assert match, f"make install does not install the project (pip install -e .):\n{recipe}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    pending = [Requirement(r) for r in project["dependencies"]]
    pending += [Requirement(r) for extra in (match.group(1) or "").split(",") if extra.strip()
                for r in extras[extra.strip()]]
    names: set[str] = set()
    while pending:
        req = pending.pop()
        if canonicalize_name(req.name) == canonicalize_name(project["name"]):  # rrsis[extra] self-reference
            pending += [Requirement(r) for extra in req.extras for r in extras[extra]]
        else:
            names.add(canonicalize_name(req.name))
    return names


def test_make_install_brings_the_demo_models_text_encoder():
    encoder = json.loads((ROOT / "examples" / "demo-model" / "config.json").read_text())["text_encoder"]
    source = encoder.get("source", "")
    if not source.startswith("pkg:") or encoder.get("stored", True):
        pytest.skip("the demo model no longer reads its text encoder from a package")
    package = canonicalize_name(source[len("pkg:"):])
    assert package in _installed_by_make_install(), (
        f"examples/demo-model reads its text encoder from the package {package!r}, which `make install` "
        "(the README's quickstart install) does not install")


def _fake_rrsis(tmp_path: Path, body: str) -> dict[str, str]:
    """An environment whose `rrsis` is a stub script that logs its arguments and runs ``body``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "rrsis"
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> "{tmp_path / "calls.log"}"\n{body}\n')
    stub.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                QS_OUT=str(tmp_path / "demo"), QS_SIZE="64")


def _calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def test_quickstart_fails_when_a_step_fails(tmp_path):
    env = _fake_rrsis(tmp_path, 'if [ "$1" = predict ]; then echo "error: no text encoder" >&2; exit 1; fi')
    res = subprocess.run(["bash", str(QUICKSTART)], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode != 0
    assert _calls(tmp_path) == ["data", "predict"]  # stopped at the failing step


def test_quickstart_fails_when_an_output_is_missing(tmp_path):
    env = _fake_rrsis(tmp_path, "exit 0")  # every step "succeeds" but writes nothing
    res = subprocess.run(["bash", str(QUICKSTART)], capture_output=True, text=True, env=env, timeout=60)
    assert _calls(tmp_path) == ["data", "predict"]  # no manifest: the mask folder cannot be known
    assert res.returncode != 0, res.stdout + res.stderr
    assert "manifest.json was not written" in res.stderr


def test_quickstart_fails_when_a_later_output_is_missing(tmp_path):
    """predict writes its manifest, the later steps "succeed" but write nothing."""
    manifest = '{"results": [{"output_dir": "scene-00000000/the-red-circle-842bc5d3"}]}'
    env = _fake_rrsis(tmp_path, f'if [ "$1" = predict ]; then mkdir -p "$QS_OUT/predict"; '
                                f"echo '{manifest}' > \"$QS_OUT/predict/manifest.json\"; fi")
    res = subprocess.run(["bash", str(QUICKSTART)], capture_output=True, text=True, env=env, timeout=60)
    assert _calls(tmp_path) == ["data", "predict", "evaluate", "overlay"]
    assert res.returncode != 0, res.stdout + res.stderr
    assert "scene-00000000/the-red-circle-842bc5d3/mask.tif was not written" in res.stderr

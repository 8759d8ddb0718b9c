"""Fixtures shared by several test files. A file that defines a fixture of the same name uses its own."""

from __future__ import annotations

import pytest
import torch
from front_helpers import refuse_model_loading, tiny_model_dir, write_scene


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A lavt-tiny model directory with seeded random weights (the CLI front-end tests)."""
    return tiny_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture()
def no_model(monkeypatch):
    """Loading a model fails the test; the specs asked for are listed."""
    return refuse_model_loading(monkeypatch)


@pytest.fixture()
def scene(tmp_path):
    """A small georeferenced 3-band GeoTIFF."""
    return write_scene(tmp_path / "scene.tif")


@pytest.fixture(scope="module")
def one_thread():
    """The tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP threads of
    concurrent jobs oversubscribe it (a learning test ran 10x slower); restored afterwards. Use as
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def session_cache_dir(tmp_path_factory):
    """No test reads or writes the user's cache (``~/.cache/rrsis``): module fixtures included, the session has
    its own ``RRSIS_CACHE_DIR`` (subprocesses inherit it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RRSIS_CACHE_DIR", str(tmp_path_factory.mktemp("rrsis-cache")))
        yield


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch, session_cache_dir):
    """Each test starts with an empty cache folder of its own (``RRSIS_CACHE_DIR``), which it may fill."""
    path = tmp_path_factory.mktemp("rrsis-cache")
    monkeypatch.setenv("RRSIS_CACHE_DIR", str(path))
    return path

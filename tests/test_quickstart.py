"""The README quickstart runs as written (with a smaller scene) and the demo model finds the referent."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_quickstart_script(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", QS_OUT=str(tmp_path / "demo"), QS_SIZE="512",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    res = subprocess.run(["bash", str(ROOT / "examples" / "quickstart.sh")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    out = tmp_path / "demo"
    pair = json.loads((out / "predict" / "manifest.json").read_text())["results"][0]["output_dir"]
    assert pair.startswith("scene-") and "/the-red-circle-" in pair
    for path in (f"predict/{pair}/mask.tif", f"predict/{pair}/mask.geojson", "eval/metrics.json", "overlay.png"):
        assert (out / path).is_file(), path
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["n_scenes"] == 1
    assert metrics["precision"] > 0.6 and metrics["IoU"] > 0.3, metrics  # measured: precision 0.80, IoU 0.49

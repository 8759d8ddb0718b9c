"""Model-building benchmark: parameter counts per zoo card, build time and one CPU forward at the card's size.

Usage: python benchmarks/model_build.py [--cards lavt-tiny lavt-swin-t lavt-swin-b] [--repeats 3]
Writes benchmarks/results/model_build.json and prints a Markdown table (paste into benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from rrsis_cli.models import build_model, list_cards


def measure(card: str, repeats: int) -> dict:
    builds, forwards = [], []
    model = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        model = build_model(card, seed=0)
        builds.append(time.perf_counter() - t0)
    size = int(model.config["image_size"])
    ids, mask = model.tokenize(["the white storage tank north of the road"])
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        model(x, ids, mask)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x, ids, mask)
            forwards.append(time.perf_counter() - t0)
    return {"card": card, "arch": model.arch, "image_size": size, **model.parameter_counts(),
            "build_s_median": statistics.median(builds), "forward_s_median": statistics.median(forwards),
            "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cards", nargs="*", default=[c["name"] for c in list_cards()])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "model_build.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = [measure(card, args.repeats) for card in args.cards]
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} {platform.processor()} "
            f"{torch.get_num_threads()} threads", "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print("| card | arch | params total | text encoder | vision + fusion + decoder | build s | forward s (1×img) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['card']} | {r['arch']} | {r['total']:,} | {r['text_encoder']:,} | {r['vision_and_fusion']:,} "
              f"| {r['build_s_median']:.2f} | {r['forward_s_median']:.2f} ({r['image_size']}²) |")


if __name__ == "__main__":
    main()

"""CroBIM parameter counts and forward FLOPs per module (random init, CPU, batch 1).

Usage: python benchmarks/crobim_flops.py [--cards crobim-swin-b crobim-convnext-b] [--size 480] [--tokens 20 40]
Writes benchmarks/results/crobim_flops.json and prints Markdown tables (copied into benchmarks/results/crobim.md).
FLOPs are torch.utils.flop_counter.FlopCounterMode counts (matmul/conv/attention; 1 multiply-add = 2 FLOPs;
norms, activations and interpolation are not counted).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from rrsis_cli.models import build_model

MODULES = ("text_encoder", "backbone", "capm", "lgfa", "mid", "head")


def measure(card: str, size: int, tokens: int) -> dict:
    model = build_model(card, seed=0, max_tokens=tokens).requires_grad_(False)  # the module tracker of the
    # counter trips over parameters that require grad inside no_grad / inference_mode
    ids, mask = model.tokenize(["the white storage tank " * 20])  # long enough to fill every token
    x = torch.randn(1, 3, size, size)
    counter = FlopCounterMode(display=False, depth=2)
    t0 = time.perf_counter()
    with counter:
        model(x, ids, mask)
    seconds = time.perf_counter() - t0
    per_module = counter.get_flop_counts()
    flops = {name: sum(per_module.get(f"CroBIM.{name}", {}).values()) for name in MODULES}
    params = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in MODULES
              if getattr(model, name) is not None}
    return {"card": card, "image_size": size, "tokens": tokens, "params": params,
            "params_total": sum(params.values()), "flops": flops, "flops_total": counter.get_total_flops(),
            "forward_s_under_counter": seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cards", nargs="*", default=["crobim-swin-b", "crobim-convnext-b"])
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--tokens", type=int, nargs="*", default=[20, 40])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "crobim_flops.json"))
    args = parser.parse_args()
    rows = [measure(card, args.size, t) for card in args.cards for t in args.tokens]
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} {torch.get_num_threads()} threads",
            "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print("| card | tokens | GFLOPs total | " + " | ".join(MODULES) + " |")
    print("|---|---:|---:|" + "---:|" * len(MODULES))
    for r in rows:
        cells = " | ".join(f"{r['flops'][m] / 1e9:.2f}" for m in MODULES)
        print(f"| {r['card']} | {r['tokens']} | {r['flops_total'] / 1e9:.2f} | {cells} |")
    print()
    print("| card | params total | " + " | ".join(MODULES) + " |")
    print("|---|---:|" + "---:|" * len(MODULES))
    for r in rows[:: len(args.tokens)]:
        cells = " | ".join(f"{r['params'].get(m, 0):,}" for m in MODULES)
        print(f"| {r['card']} | {r['params_total']:,} | {cells} |")


if __name__ == "__main__":
    main()

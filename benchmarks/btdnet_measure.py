"""BTDNet measurements: parameter counts and FLOPs at 480x480 (batch 1, 20 tokens) of btdnet-swin-b (random
init, CPU), next to lavt-swin-b for scale, plus the forward FLOPs of a training step (D-MOLS masked pass included).

Usage: python benchmarks/btdnet_measure.py [--cards btdnet-swin-b lavt-swin-b] [--size 480]
Prints JSON lines; the numbers are recorded in benchmarks/results/btdnet.md.
FLOPs are torch.utils.flop_counter counts (2 per multiply-accumulate) of matmul/conv/attention operators.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from rrsis_cli.models import build_model


def flops(fn) -> tuple[FlopCounterMode, float]:
    counter = FlopCounterMode(display=False)
    t0 = time.perf_counter()
    with counter:
        fn()
    return counter, time.perf_counter() - t0


def module_flops(counter: FlopCounterMode, suffixes: tuple[str, ...]) -> dict[str, int]:
    """Total FLOPs of the modules whose hierarchical name ends with one of ``suffixes`` (summed per suffix)."""
    out = dict.fromkeys(suffixes, 0)
    for name, ops in counter.get_flop_counts().items():
        for suffix in suffixes:
            if name.endswith(suffix):
                out[suffix] += sum(ops.values())
    return out


def measure(card: str, size: int) -> dict:
    model = build_model(card, seed=0)
    ids, mask = model.tokenize(["the white storage tank north of the road"])
    assert ids.shape[1] == 20
    x = torch.randn(1, 3, size, size)
    row = {"card": card, "size": size, **model.parameter_counts()}
    with torch.no_grad():
        counter, row["forward_s"] = flops(lambda: model(x, ids, mask))
        row["forward_flops"] = counter.get_total_flops()
        parts = module_flops(counter, (".text_encoder", ".backbone", ".decoder", ".classifier", ".bsc", ".fusion"))
        row["flops_by_module"] = {k.lstrip("."): v for k, v in parts.items() if v}
    if hasattr(model, "training_losses"):
        row["inference_parameters"] = model.inference_parameter_count()
        target = torch.zeros(1, size, size, dtype=torch.long)
        target[:, size // 4: size // 2, size // 4: size // 2] = 1
        model.train()
        torch.manual_seed(0)
        with torch.no_grad():
            counter, _ = flops(lambda: model.training_losses(x, ids, mask, target))
        row["training_step_forward_flops"] = counter.get_total_flops()
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cards", nargs="*", default=["btdnet-swin-b", "lavt-swin-b"])
    parser.add_argument("--size", type=int, default=480)
    args = parser.parse_args()
    for card in args.cards:
        print(json.dumps(measure(card, args.size)), flush=True)


if __name__ == "__main__":
    main()

"""Recipe parity: rrsis' training recipe against the official LAVT-family training code, on fixed inputs.

Usage::

    python benchmarks/recipe_parity.py --official-src /tmp/official-rmsin --official-src /tmp/official-lavt \
        [--official-src /tmp/official-lgce] [--json parity.json] [--no-real-models]

Each ``--official-src`` is an extracted checkout of ``Lsan2401/RMSIN``, ``yz93/LAVT-RIS`` or ``zhu-xlab/rrsis``
(LGCE's posted training script, which is LAVT's with the dataset swapped). Nothing of it is copied: its files are
imported at run time, in a child process per checkout, with stand-ins for what a CPU-only machine without the
official environment lacks (``.cuda()`` on the class-weight tensor returns the tensor; ``wandb``, ``cv2``,
``torchvision`` when absent, the bundled BERT, ``lib.segmentation``, ``h5py`` and ``refer.refer`` are empty
modules, since none of them is used by the parts compared). What is compared:

* **loss** — the official criterion (RMSIN ``loss.loss.Loss``; LAVT/LGCE ``train.criterion``) and RMSIN's
  ``DiceLoss`` against :func:`rrsis_cli.train.losses.segmentation_loss` with the card's ``loss:`` section, on
  seeded random logits and targets (batch 1, 2, 8; random, empty and full masks; 480 x 480 and 16 x 16):
  max |difference| must be <= 1e-6;
* **occlusion** (RMSIN) — the official ``add_random_boxes`` and :func:`rrsis_cli.train.data.paint_boxes` fed
  ``random.Random`` generators in the same state must paint identical pixels (square, tall and wide images);
  box statistics (count, size, covered share) over a seeded run of each; and the official dataset's occluded
  subset (``ReferDataset`` built on a stand-in REFER index, global ``random`` seeded 2401 as ``train.py`` does)
  against :func:`rrsis_cli.train.data.occluded_subset` with seed 2401: identical sets;
* **optimiser parameter groups** — the official ``params_to_optimize`` block of ``train.py`` is executed on a
  module tree with the official key names (``tests/data/reference/*.keys.tsv``) and compared with
  :func:`rrsis_cli.train.schedule.parameter_groups` on the real rrsis model of the card (``--no-real-models``:
  on the same key tree) — which parameters train, which get weight decay, with what value;
* **schedule** — the official ``LambdaLR`` statement against :func:`poly_lr_factor` over a whole run;
* **data order** — ``torch.utils.data.DistributedSampler`` (what the official scripts use, seed 0) against
  :class:`rrsis_cli.train.data.EpochSampler` (seed 0) for 1 and 4 processes;
* **input size and resizing** — the official ``transforms`` (or, without torchvision, PIL's resize that
  torchvision 0.8 calls for PIL images) against :class:`rrsis_cli.train.data.ReferringTrainSet`'s resize;
* **defaults** — the official ``args.py`` defaults next to the card's ``training:`` values.

Exit status 0 when every comparison passes. ``tests/test_recipe.py`` pins the official numbers printed here.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import operator
import random
import subprocess
import sys
import textwrap
import types
from functools import reduce
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "tests" / "data" / "reference"
TOLERANCE = 1e-6

# --------------------------------------------------------------------------------------------- fixed inputs


LOSS_KINDS = ("random", "empty", "full", "mixed")


def _pattern_case(batch: int, size: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form inputs (no random generator, so the values pinned in the tests cannot drift with a library's
    RNG): logits 3 sin(...) of the index, targets from a modular pattern (about 30 % target pixels)."""
    b, c, i, j = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (batch, 2, size, size)),
                                indexing="ij")
    logits = (3.0 * torch.sin(0.37 * i + 1.13 * j + 2.71 * b + 1.9 * c + 0.01 * i * j)).float()
    bi, ii, jj = torch.meshgrid(*(torch.arange(n) for n in (batch, size, size)), indexing="ij")
    pattern = ((7 * ii + 13 * jj + 5 * bi + ii * jj) % 10 < 3).long()
    if kind == "empty":
        return logits, torch.zeros_like(pattern)
    if kind == "full":
        return logits, torch.ones_like(pattern)
    if kind == "mixed":  # an empty, a full and patterned masks in one batch
        pattern[0] = 0
        if batch > 1:
            pattern[1] = 1
    return logits, pattern


def loss_cases(large: bool = True) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, logits (B, 2, H, W), target (B, H, W) int64): closed-form 16 x 16 cases (pinned in the tests) and,
    with ``large``, seeded random 480 x 480 ones; batch 1, 2 and 8; random, empty, full and mixed masks."""
    cases = []
    for batch in (1, 2, 8):
        for kind in LOSS_KINDS:
            cases.append((f"{kind} b{batch} 16px", *_pattern_case(batch, 16, kind)))
    if large:
        for batch in (1, 2, 8):
            for kind in LOSS_KINDS:
                g = torch.Generator().manual_seed(480_000 + 10 * batch + LOSS_KINDS.index(kind))
                logits = 3.0 * torch.randn(batch, 2, 480, 480, generator=g)
                target = (torch.rand(batch, 480, 480, generator=g) < (0.3 if kind == "random" else 0.5)).long()
                if kind == "empty":
                    target.zero_()
                elif kind == "full":
                    target.fill_(1)
                elif kind == "mixed":
                    target[0] = 0
                    if batch > 1:
                        target[1] = 1
                cases.append((f"{kind} b{batch} 480px", logits, target))
    return cases


BOX_SHAPES = ((800, 800), (600, 800), (800, 600), (512, 512))  # (H, W): square, wide, tall, RefSegRS-sized


def box_image(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return np.full((h, w, 3), 255, np.uint8)


def stand_in_refs(n: int = 12_181, seed: int = 7) -> list[int]:
    """RRSIS-D-like train ref ids (12,181 of them, ids with gaps, in a shuffled file order)."""
    ids = random.Random(seed).sample(range(1, 23_464), n)
    return ids


# ------------------------------------------------------------------------------------------------ helpers


def param_names(manifest: Path) -> tuple[list[str], list[str]]:
    """(model parameter names, separate-BERT parameter names) of an official key manifest (buffers dropped)."""
    model, bert = [], []
    for line in manifest.read_text().splitlines():
        key, _, dtype = line.split("\t")
        if not dtype.startswith("float") or key.endswith(("running_mean", "running_var")):
            continue
        if key.startswith("bert_model/"):
            bert.append(key[len("bert_model/"):])
        else:
            model.append(key)
    return model, bert


class Node(nn.Module):
    """A container whose numbered children can be indexed (``node[3]``) and iterated like a ModuleList's."""

    def __getitem__(self, index: int) -> nn.Module:
        return getattr(self, str(index))

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)


def module_tree(names: list[str]) -> nn.Module:
    """A module tree holding one 1-element parameter at every dotted name (so that
    ``tree.text_encoder.encoder.layer[3].parameters()`` works as on the real models)."""
    root = Node()
    for name in names:
        node = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, Node())
            node = getattr(node, part)
        node.register_parameter(leaf, nn.Parameter(torch.zeros(1)))
    return root


def group_summary(model: nn.Module, groups: list[dict], weight_decay: float = 0.01) -> dict[str, dict]:
    """name -> weight decay for every parameter in ``groups`` (resolved through a real AdamW), plus the names
    left out of the optimiser."""
    optimizer = torch.optim.AdamW(groups, lr=1e-5, weight_decay=weight_decay)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            decay[names[id(p)]] = float(group["weight_decay"])
    frozen = sorted(n for n in names.values() if n not in decay)
    return {"decay": decay, "frozen": frozen}


def names_digest(names) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def summarize_groups(summary: dict) -> dict:
    decay = summary["decay"]
    no_decay = [n for n, v in decay.items() if v == 0.0]
    return {"trained": len(decay), "no_decay": len(no_decay),
            "decay_0.01": sum(1 for v in decay.values() if v == 0.01), "frozen": len(summary["frozen"]),
            "digest": {"no_decay": names_digest(no_decay), "frozen": names_digest(summary["frozen"])}}


@contextlib.contextmanager
def official_imports(src: Path):
    """sys.path at the checkout, stand-ins for what is not installed or needs CUDA, everything undone after."""
    saved_modules = set(sys.modules)
    saved_path = list(sys.path)
    saved_argv = list(sys.argv)
    saved_cuda = torch.Tensor.cuda
    sys.path.insert(0, str(src))
    sys.argv = [sys.argv[0]]

    def stub(name: str, **attrs) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
        return module

    class _Anything:
        def __init__(self, *args, **kwargs):
            pass

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            return cls()

        def encode(self, text, add_special_tokens=True):
            return [101, 102]

    stub("wandb")  # never the real one: it would start a run
    stub("cv2")
    try:
        import h5py  # noqa: F401
    except ImportError:
        stub("h5py")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        tv = stub("torchvision")
        tv.transforms = stub("torchvision.transforms")
        tv.transforms.functional = stub("torchvision.transforms.functional")
    stub("bert")
    stub("bert.modeling_bert", BertModel=_Anything)
    stub("bert.tokenization_bert", BertTokenizer=_Anything)
    lib = stub("lib")
    lib.segmentation = stub("lib.segmentation")
    refer = stub("refer")
    refer.refer = stub("refer.refer", REFER=_Anything)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # CUDA-only lines: .cuda() on the class weights
    try:
        yield
    finally:
        torch.Tensor.cuda = saved_cuda
        sys.path[:] = saved_path
        sys.argv[:] = saved_argv
        for name in set(sys.modules) - saved_modules:
            del sys.modules[name]


def source_block(path: Path, start: str, end: str) -> str:
    """The statements of ``path`` between the line containing ``start`` and the one containing ``end``,
    dedented (they sit inside ``main``)."""
    lines = path.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if start in line)
    last = next(i for i, line in enumerate(lines) if i > first and end in line)
    return textwrap.dedent("\n".join(lines[first:last]))


def kind_of(src: Path) -> str:
    if (src / "loss" / "loss.py").is_file():
        return "rmsin"
    if "LAVT training" in (src / "args.py").read_text() and not (src / "data").is_dir():
        return "lgce"
    return "lavt"


CARDS = {"rmsin": "rmsin-swin-b", "lavt": "lavt-swin-b", "lgce": "lgce-swin-b"}
MANIFEST_OF = {"rmsin": "rmsin-swin-b-w12.keys.tsv", "lavt": "lavt-swin-b-w12.keys.tsv",
               "lgce": "lgce-swin-b-w12.keys.tsv"}

# ------------------------------------------------------------------------------------------------- checks


def check_loss(kind: str, src: Path) -> dict:
    from rrsis_cli.models.registry import config_for
    from rrsis_cli.train.losses import dice_loss, segmentation_loss

    spec = config_for(CARDS[kind]).get("loss")
    rows, worst = [], 0.0
    with official_imports(src):
        if kind == "rmsin":
            from loss.loss import DiceLoss, Loss

            def official(logits, target):
                return Loss(weight=0.1)(logits, target)
        else:
            import train as official_train

            official = official_train.criterion
            DiceLoss = None
        for name, logits, target in loss_cases():
            ref = float(official(logits, target))
            ours = float(segmentation_loss(logits, target, spec))
            row = {"case": name, "official": ref, "rrsis": ours, "abs_diff": abs(ref - ours)}
            if DiceLoss is not None:
                dice_ref, dice_ours = float(DiceLoss()(logits, target)), float(dice_loss(logits, target))
                row.update(official_dice=dice_ref, rrsis_dice=dice_ours)
                row["abs_diff"] = max(row["abs_diff"], abs(dice_ref - dice_ours))
            worst = max(worst, row["abs_diff"])
            rows.append(row)
    return {"check": "loss", "loss_spec": spec, "cases": rows, "max_abs_diff": worst, "ok": worst <= TOLERANCE}


def check_occlusion(src: Path, draws: int = 2000) -> dict:
    from rrsis_cli.train.data import OFFICIAL_OCCLUSION, occluded_subset, occlusion_rng, paint_boxes

    with official_imports(src):
        import data.dataset_refer_bert as official

        class Recorder:
            """Stands in for the official module's ``random``: draws from a given generator."""

            def __init__(self, rng: random.Random):
                self.rng = rng

            def randint(self, a, b):
                return self.rng.randint(a, b)

        real_random = official.random
        same, total = 0, 0
        pins = {}
        for shape in BOX_SHAPES:
            from PIL import Image

            for seed in range(25):
                official.random = Recorder(random.Random(seed))
                theirs = np.asarray(official.add_random_boxes(Image.fromarray(box_image(shape))))
                ours = paint_boxes(box_image(shape), random.Random(seed), **OFFICIAL_OCCLUSION)
                same += int(np.array_equal(theirs, ours))
                total += 1
                if seed < 3:  # pinned in tests/test_recipe.py: boxes drawn and black pixels, official code
                    pins[f"{shape[0]}x{shape[1]} seed {seed}"] = {
                        "boxes": random.Random(seed).randint(20, 60),
                        "black_pixels": int((theirs[..., 0] == 0).sum())}
        official.random = real_random

        # box count per draw: the first randint of each draw, recorded on both sides
        class Counting(random.Random):
            def __init__(self, seed):
                super().__init__(seed)
                self.calls = []

            def randint(self, a, b):
                value = super().randint(a, b)
                self.calls.append((a, b, value))
                return value

        def official_draw(k: int, shape=(800, 800), min_num=20, max_num=60):
            gen = Counting(10_000 + k)
            official.random = gen
            img = np.asarray(official.add_random_boxes(Image.fromarray(box_image(shape)), min_num, max_num))
            official.random = real_random
            return img, gen.calls

        def our_draw(k: int, shape=(800, 800), min_boxes=20, max_boxes=60):
            gen = occlusion_rng(2401, k // 100, k % 100)
            calls = []
            original = gen.randint

            def record(a, b):
                value = original(a, b)
                calls.append((a, b, value))
                return value

            gen.randint = record
            img = paint_boxes(box_image(shape), gen, min_boxes, max_boxes, 32, 0)
            return img, calls

        def box_stats(draw) -> dict:
            counts, covered, sides = [], [], []
            for k in range(draws):
                img, calls = draw(k)
                counts.append(calls[0][2])
                covered.append(float((img[..., 0] == 0).mean()))
            for k in range(200):  # one box per draw: its painted extent is the box size
                img, _ = draw(k, (800, 800), 1, 1)
                ys, xs = np.nonzero(img[..., 0] == 0)
                sides.append((int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)))
            return {"draws": draws, "count_mean": float(np.mean(counts)), "count_min": int(np.min(counts)),
                    "count_max": int(np.max(counts)), "covered_share_mean": float(np.mean(covered)),
                    "box_sides": sorted({f"{h}x{w}" for h, w in sides})}

        theirs_stats, our_stats = box_stats(official_draw), box_stats(our_draw)

        # the occluded subset: the official dataset on a stand-in REFER index, global random seeded as train.py
        ref_ids = stand_in_refs()

        class StandInRefer:
            def __init__(self, *args, **kwargs):
                self.Refs = {r: {"sentences": [{"raw": "x"}], "sent_ids": [r]} for r in ref_ids}
                self.Imgs = {r: {"file_name": f"{r:05d}.jpg"} for r in ref_ids}

            def getRefIds(self, split=""):
                return list(ref_ids)

            def getImgIds(self, ref_ids):
                return list(ref_ids) if isinstance(ref_ids, list) else [ref_ids]

        official.REFER = StandInRefer
        args = types.SimpleNamespace(refer_data_root="", dataset="rrsisd", splitBy="unc", bert_tokenizer="")
        random.seed(2401)  # seed_everything(2401); nothing in the repository draws from random before this
        dataset = official.ReferDataset(args, split="train")
        official_subset = set(dataset.images_to_mask)
    ours_subset = set(k for _, k in occluded_subset([("ref", r) for r in ref_ids], 0.2, 2401))
    subset_ok = official_subset == ours_subset
    stats_ok = (theirs_stats["count_min"] >= 20 and theirs_stats["count_max"] <= 60
                and our_stats["count_min"] >= 20 and our_stats["count_max"] <= 60
                and theirs_stats["box_sides"] == our_stats["box_sides"] == ["32x32"]
                and abs(theirs_stats["count_mean"] - our_stats["count_mean"]) < 1.0
                and abs(theirs_stats["covered_share_mean"] - our_stats["covered_share_mean"]) < 0.005)
    return {"check": "occlusion", "identical_paint": f"{same}/{total}", "official_stats": theirs_stats,
            "rrsis_stats": our_stats, "refs": len(ref_ids), "official_subset": len(official_subset),
            "rrsis_subset": len(ours_subset), "subset_fraction": len(ours_subset) / len(ref_ids),
            "subset_identical": subset_ok, "official_subset_digest": names_digest(map(str, official_subset)),
            "official_paint_pins": pins,
            "ok": same == total and subset_ok and stats_ok}


def check_groups(kind: str, src: Path, real_models: bool) -> dict:
    from rrsis_cli.models.registry import config_for
    from rrsis_cli.train.schedule import parameter_groups

    model_names, bert_names = param_names(MANIFESTS / MANIFEST_OF[kind])
    block = source_block(src / "train.py", "# parameters to optimize", "# optimizer")
    single_model = module_tree(model_names)
    single_bert = module_tree(bert_names) if bert_names else None
    bert_wrapper = None
    if single_bert is not None:  # RMSIN's train.py reads .module of the DDP-wrapped BERT, LAVT's the bare one
        bert_wrapper = nn.Module()
        bert_wrapper.module = single_bert
        bert_wrapper.encoder = single_bert.encoder
    namespace = {"single_model": single_model, "single_bert_model": bert_wrapper, "reduce": reduce,
                 "operator": operator,
                 "args": types.SimpleNamespace(model="lavt_one" if single_bert is None else "lavt")}
    exec(compile(block, str(src / "train.py"), "exec"), namespace)  # the official statements, unchanged
    official_tree = nn.Module()
    official_tree.add_module("m", single_model)
    if single_bert is not None:
        official_tree.add_module("b", single_bert)
    official = group_summary(official_tree, namespace["params_to_optimize"])
    rename = {("m." + n): n for n in model_names} | {("b." + n): "text_encoder." + n for n in bert_names}
    official = {"decay": {rename[k]: v for k, v in official["decay"].items()},
                "frozen": sorted(rename[k] for k in official["frozen"])}

    recipe = config_for(CARDS[kind])["training"]
    if real_models:
        from rrsis_cli.models import build_model

        ours_model = build_model(CARDS[kind], seed=0)
    else:
        ours_model = module_tree(model_names + ["text_encoder." + n for n in bert_names])
    ours = group_summary(ours_model, parameter_groups(ours_model, float(recipe["weight_decay"]),
                                                      recipe.get("text_layers")))
    same_names = set(official["decay"]) | set(official["frozen"]) == set(ours["decay"]) | set(ours["frozen"])
    differ = sorted(n for n in official["decay"] if ours["decay"].get(n) != official["decay"][n])
    differ += sorted(n for n in ours["decay"] if n not in official["decay"])
    return {"check": "parameter_groups", "manifest": MANIFEST_OF[kind], "real_model": real_models,
            "official": summarize_groups(official), "rrsis": summarize_groups(ours), "same_names": same_names,
            "differing": differ[:10], "ok": same_names and not differ}


def check_schedule(src: Path) -> dict:
    from rrsis_cli.train.schedule import poly_lr_factor

    block = source_block(src / "train.py", "# learning rate scheduler", "# housekeeping")
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=3e-5)
    namespace = {"torch": torch, "optimizer": optimizer, "data_loader": range(1522),
                 "args": types.SimpleNamespace(epochs=40)}
    exec(compile(block, str(src / "train.py"), "exec"), namespace)
    scheduler = namespace["lr_scheduler"]
    total = 1522 * 40
    worst = 0.0
    for step in range(total):
        official = optimizer.param_groups[0]["lr"]
        worst = max(worst, abs(official - 3e-5 * poly_lr_factor(step, total)))
        optimizer.step()
        scheduler.step()
    return {"check": "schedule", "iterations": total, "max_abs_lr_diff": worst, "ok": worst <= 1e-12}


def check_order() -> dict:
    from torch.utils.data import DistributedSampler

    from rrsis_cli.train.data import EpochSampler

    ok = True
    for world in (1, 4):
        for rank in range(world):
            for epoch in (0, 1, 7):
                official = DistributedSampler(range(1001), num_replicas=world, rank=rank, shuffle=True)
                official.set_epoch(epoch)
                ours = EpochSampler(1001, seed=0, rank=rank, world=world)
                ours.set_epoch(epoch)
                ok &= list(official) == list(ours)
    return {"check": "data_order", "ok": ok}


def check_resize(src: Path) -> dict:
    from rrsis_cli.data.transforms import official_resize_image, official_resize_mask

    rng = np.random.default_rng(0)
    results = {}
    has_torchvision = importlib.util.find_spec("torchvision") is not None
    with official_imports(src):
        if has_torchvision:
            import transforms as T

            pipeline = T.Compose([T.Resize(480, 480), T.ToTensor()])
            how = "official transforms.Resize + ToTensor (torchvision)"
        else:
            pipeline = None
            how = "PIL resize (BILINEAR image, NEAREST mask): what torchvision 0.8's F.resize runs on PIL images"
        from PIL import Image

        for shape in ((800, 800), (512, 512), (600, 800)):
            image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
            mask = rng.random(shape) < 0.3
            pil_img, pil_mask = Image.fromarray(image), Image.fromarray(mask.astype(np.uint8), mode="L")
            if pipeline is not None:
                ref_img, ref_mask = pipeline(pil_img, pil_mask)
            else:
                ref_img = torch.from_numpy(np.asarray(pil_img.resize((480, 480), Image.BILINEAR))).permute(
                    2, 0, 1).float() / 255
                ref_mask = torch.from_numpy(np.asarray(pil_mask.resize((480, 480), Image.NEAREST))).long()
            ours_img, ours_mask = official_resize_image(image, 480), official_resize_mask(mask, 480)
            results[f"{shape[0]}x{shape[1]}"] = {
                "image_max_abs_diff": float((ref_img - ours_img).abs().max()),
                "mask_pixels_differing": int((ref_mask != ours_mask).sum())}
    ok = all(r["image_max_abs_diff"] == 0 and r["mask_pixels_differing"] == 0 for r in results.values())
    return {"check": "resize", "reference": how, "sizes": results, "ok": ok}


def check_defaults(kind: str, src: Path) -> dict:
    from rrsis_cli.models.registry import config_for

    with official_imports(src):
        from args import get_parser

        defaults = vars(get_parser().parse_args([]))
    recipe = config_for(CARDS[kind])["training"]
    card_lr = recipe["lr"]
    rows = {"lr": (defaults["lr"], card_lr), "weight_decay": (defaults["weight_decay"], recipe["weight_decay"]),
            "epochs": (defaults["epochs"], recipe["epochs"]), "amsgrad": (defaults["amsgrad"],
                                                                          recipe.get("amsgrad", False)),
            "img_size": (defaults["img_size"], config_for(CARDS[kind])["image_size"]),
            "batch_size per process": (defaults["batch_size"], recipe["batch_size"])}
    # the official global batch = per-process batch x GPUs of the README command (RMSIN: 2 x 4 = 8; LAVT's
    # RefCOCO command: 8 x 4 = 32; LGCE's script hard-codes device 0: 8 x 1 = 8)
    gpus = {"rmsin": 4, "lavt": 4, "lgce": 1}[kind]
    rows["global batch"] = (defaults["batch_size"] * gpus, recipe["batch_size"])
    named = {"lavt": {"global batch", "batch_size per process"}, "rmsin": {"batch_size per process"},
             "lgce": set()}[kind]
    table = {k: {"official": v[0], "card": v[1], "equal": v[0] == v[1],
                 "difference named in the card": (v[0] != v[1]) and k in named} for k, v in rows.items()}
    ok = all(r["equal"] or r["difference named in the card"] for r in table.values())
    return {"check": "defaults", "card": CARDS[kind], "values": table, "ok": ok}


def run_one(src: Path, real_models: bool) -> dict:
    kind = kind_of(src)
    checks = [check_loss(kind, src), check_groups(kind, src, real_models), check_schedule(src), check_order(),
              check_resize(src), check_defaults(kind, src)]
    if kind == "rmsin":
        checks.insert(1, check_occlusion(src))
    return {"official_src": str(src), "kind": kind, "checks": checks, "ok": all(c["ok"] for c in checks)}


def report(result: dict) -> None:
    print(f"\n## {result['kind'].upper()} ({result['official_src']}): {'PASS' if result['ok'] else 'FAIL'}")
    for c in result["checks"]:
        status = "ok  " if c["ok"] else "FAIL"
        if c["check"] == "loss":
            print(f"- [{status}] loss {c['loss_spec']}: {len(c['cases'])} cases, max |official - rrsis| = "
                  f"{c['max_abs_diff']:.2e}")
            for row in c["cases"]:
                if row["case"].endswith("480px"):
                    extra = (f"  Dice official {row['official_dice']:.6f} rrsis {row['rrsis_dice']:.6f}"
                             if "official_dice" in row else "")
                    print(f"    {row['case']:<20} official {row['official']:.7f}  rrsis {row['rrsis']:.7f}{extra}")
        elif c["check"] == "occlusion":
            print(f"- [{status}] occlusion: identical pixels from the same generator {c['identical_paint']}; "
                  f"subset {c['rrsis_subset']}/{c['refs']} refs ({c['subset_fraction']:.4f}), identical to the "
                  f"official subset: {c['subset_identical']}")
            for side in ("official_stats", "rrsis_stats"):
                s = c[side]
                print(f"    {side.split('_')[0]:<8} boxes/ref mean {s['count_mean']:.2f} (min {s['count_min']}, "
                      f"max {s['count_max']}), box {', '.join(s['box_sides'])}, covered share of an 800x800 image "
                      f"{s['covered_share_mean']:.4f} ({s['draws']} draws)")
        elif c["check"] == "parameter_groups":
            print(f"- [{status}] parameter groups ({c['manifest']}, rrsis {'real model' if c['real_model'] else 'key tree'}):"
                  f" official {c['official']} / rrsis {c['rrsis']}")
        elif c["check"] == "schedule":
            print(f"- [{status}] poly schedule over {c['iterations']} iterations: max |lr diff| {c['max_abs_lr_diff']:.1e}")
        elif c["check"] == "data_order":
            print(f"- [{status}] data order: DistributedSampler(seed 0) == EpochSampler(seed 0) for 1 and 4 processes")
        elif c["check"] == "resize":
            sizes = "; ".join(f"{k}: image {v['image_max_abs_diff']:.1e}, mask {v['mask_pixels_differing']} px"
                              for k, v in c["sizes"].items())
            print(f"- [{status}] resize to 480 against {c['reference']}: {sizes}")
        elif c["check"] == "defaults":
            cells = "; ".join(f"{k} {v['official']} vs {v['card']}" + ("" if v["equal"] else " (named)")
                              for k, v in c["values"].items())
            print(f"- [{status}] official args.py defaults vs card {c['card']}: {cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-src", action="append", type=Path, required=True,
                        help="extracted official checkout (repeat for several)")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--no-real-models", action="store_true",
                        help="compare parameter groups on key trees instead of the real Swin-B models")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # child process: one checkout, JSON on stdout
        print(json.dumps(run_one(args.official_src[0].resolve(), not args.no_real_models)))
        return 0
    results = []
    for src in args.official_src:
        cmd = [sys.executable, __file__, "--one", "--official-src", str(src)]
        if args.no_real_models:
            cmd.append("--no-real-models")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            return 1
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        report(results[-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    ok = all(r["ok"] for r in results)
    print(f"\nrecipe parity: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

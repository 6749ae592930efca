"""Training-step speed of the backbone: dense vs MoT (fixed layout, grouped towers, general path) vs mask routing.

One training step = forward, backward, AdamW step. Variants run interleaved (shuffled order in every
repetition) so machine noise hits them alike; we report medians and ratios to dense. The last
line printed is one JSON object.

    python benchmarks/backbone.py                 # defaults: B=16, S=128/192/64, D=256, 8 heads, 4 layers
    python benchmarks/backbone.py --reps 10       # quicker, noisier
    python benchmarks/backbone.py --threads 1 --clock thread   # CPU time: steadier on a shared machine
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mask_reference import MaskRoutedMoT  # noqa: E402

from mot_neuro.model import ModalityLayout, MoTBackbone, MoTConfig  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--segments", type=int, nargs="+", default=[128, 192, 64], help="tokens per modality")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clock",
        choices=["wall", "thread"],
        default="wall",
        help="thread: the CPU time of this thread (needs --threads 1), far steadier than wall time on a shared machine",
    )
    return p.parse_args(argv)


def build_variants(args) -> dict:
    names = [f"m{i}" for i in range(len(args.segments))]
    layout = ModalityLayout(tuple(names), tuple(args.segments))
    # The reference places norms on sublayer outputs; every variant uses that placement so that
    # only routing differs.
    cfg = MoTConfig(names, dim=args.dim, n_layers=args.layers, n_heads=args.heads, norm_placement="output")
    mot = MoTBackbone(cfg)
    dense = MoTBackbone(cfg.dense())
    reference = MaskRoutedMoT(args.dim, args.layers, args.heads, cfg.ffn_hidden_dim, len(names))
    reference.copy_from(mot)

    ids = layout.modality_ids(cfg.modalities).expand(args.batch, -1).contiguous()
    # General path on a genuinely interleaved sequence: same tokens, shuffled positions.
    perm = torch.randperm(layout.seq_len, generator=torch.Generator().manual_seed(args.seed))
    shuffled_ids = ids[:, perm].contiguous()
    masks = [shuffled_ids == i for i in range(len(names))]

    def fresh_copy(model):
        clone = type(model)(model.cfg)
        clone.load_state_dict(model.state_dict())
        return clone

    mot_general = fresh_copy(mot)
    # The same MoT with one module call per run of tokens instead of the tower ops (what the ops save, or cost)
    mot_per_run = fresh_copy(mot)
    mot_per_run.tower_ops = False
    # Tower grouping (the separation analysis): the last two modalities share one tower, still fixed layout.
    grouped_towers = {name: name for name in names}
    if len(names) > 1:
        grouped_towers.update({name: "merged" for name in names[-2:]})
    grouped = MoTBackbone(replace(cfg, towers=grouped_towers))
    return {
        "dense": (dense, lambda m, x: m(x, layout)),
        "mot_fixed": (mot, lambda m, x: m(x, layout)),
        "mot_fixed_per_run": (mot_per_run, lambda m, x: m(x, layout)),
        "mot_grouped": (grouped, lambda m, x: m(x, layout)),
        "mot_general": (mot_general, lambda m, x: m(x, shuffled_ids)),
        "mask_reference": (reference, lambda m, x: m(x, masks)),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.clock == "thread" and args.threads != 1:
        raise SystemExit("--clock thread needs --threads 1 (all work on one thread)")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    variants = build_variants(args)
    seq = sum(args.segments)
    steps = {}
    for name, (model, forward) in variants.items():
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(args.batch, seq, args.dim)

        def step(model=model, forward=forward, optimizer=optimizer, x=x):
            optimizer.zero_grad(set_to_none=True)
            forward(model, x).square().mean().backward()
            optimizer.step()

        steps[name] = step

    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    order = list(steps)
    rng = random.Random(args.seed)
    for _ in range(args.reps):
        rng.shuffle(order)
        for name in order:
            start = clock()
            steps[name]()
            times[name].append(clock() - start)

    medians = {name: statistics.median(t) for name, t in times.items()}
    dense = medians["dense"]
    print(
        f"B={args.batch} S={seq} ({'/'.join(map(str, args.segments))}) D={args.dim} heads={args.heads} "
        f"layers={args.layers} reps={args.reps} threads={torch.get_num_threads()} torch={torch.__version__}"
    )
    print(f"{'variant':<16}{'median ms':>12}{'p10 ms':>10}{'p90 ms':>10}{'vs dense':>10}")
    for name, t in times.items():
        q = statistics.quantiles(t, n=10)
        ms = [medians[name] * 1e3, q[0] * 1e3, q[-1] * 1e3]
        print(f"{name:<16}{ms[0]:>12.1f}{ms[1]:>10.1f}{ms[2]:>10.1f}{medians[name] / dense:>10.3f}")
    result = {
        "mot_fixed_vs_dense": round(medians["mot_fixed"] / dense, 4),
        "mot_fixed_per_run_vs_dense": round(medians["mot_fixed_per_run"] / dense, 4),
        "mot_general_vs_dense": round(medians["mot_general"] / dense, 4),
        "mot_grouped_vs_dense": round(medians["mot_grouped"] / dense, 4),
        "mask_reference_vs_dense": round(medians["mask_reference"] / dense, 4),
        "median_step_ms": {name: round(m * 1e3, 2) for name, m in medians.items()},
        "config": {
            "batch": args.batch,
            "segments": args.segments,
            "dim": args.dim,
            "heads": args.heads,
            "layers": args.layers,
            "reps": args.reps,
            "threads": torch.get_num_threads(),
            "clock": args.clock,
        },
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

"""PLINK -> gene tokens throughput: `data_adapters.gene.plink` on a synthetic PLINK 1 binary file set.

Writes random genotypes (0/1/2, a fraction missing) with bed_reader.to_bed into a temporary folder, then
times the adapter (read + group into window tokens + presence) and, for reference, bed-reader's plain read
of the same matrix. Reports the median of a few repetitions as genotypes (subjects x SNPs) per second and
.bed megabytes per second. The last line printed is one JSON object.

    python benchmarks/tokenize_plink.py                       # 2000 subjects x 20000 SNPs, 1 Mb windows
    python benchmarks/tokenize_plink.py --samples 5000 --snps 50000 --grouping chromosome
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from bed_reader import open_bed, to_bed

from data_adapters.gene import plink


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--snps", type=int, default=20000)
    p.add_argument("--chromosomes", type=int, default=4, help="SNPs spread evenly over this many chromosomes")
    p.add_argument("--chrom-length-bp", type=int, default=50_000_000, help="positions drawn in [1, this]")
    p.add_argument("--grouping", choices=["window", "chromosome", "snp"], default="window")
    p.add_argument("--window-bp", type=int, default=1_000_000)
    p.add_argument("--max-features-per-token", type=int, default=None)
    p.add_argument("--missing", type=float, default=0.01, help="fraction of missing calls")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", type=Path, default=None, help="where to write the .bed (default: a temp dir)")
    return p.parse_args(argv)


def write_synthetic_bed(prefix: Path, args) -> Path:
    rng = np.random.default_rng(args.seed)
    genotypes = rng.integers(0, 3, size=(args.samples, args.snps), dtype=np.int8)
    genotypes[rng.random(genotypes.shape) < args.missing] = -127  # bed-reader's int8 missing code
    chrom = np.repeat(np.arange(1, args.chromosomes + 1), -(-args.snps // args.chromosomes))[: args.snps]
    position = np.concatenate(
        [np.sort(rng.integers(1, args.chrom_length_bp, size=int((chrom == c).sum()))) for c in np.unique(chrom)]
    )
    bed = prefix.with_suffix(".bed")
    properties = {
        "iid": [f"s{i}" for i in range(args.samples)],
        "sid": [f"rs{j}" for j in range(args.snps)],
        "chromosome": chrom.astype(str).tolist(),
        "bp_position": position.tolist(),
    }
    to_bed(bed, genotypes, properties=properties)
    return bed


def _median_seconds(fn, reps: int) -> tuple[float, object]:
    fn()  # warm-up: page cache, imports
    times, result = [], None
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def plink_benchmark(args) -> dict:
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        bed = write_synthetic_bed(Path(tmp) / "synthetic", args)
        bed_mb = bed.stat().st_size / 1e6
        options = {"grouping": args.grouping, "max_features_per_token": args.max_features_per_token}
        if args.grouping == "window":
            options["window_bp"] = args.window_bp

        def raw_read():
            with open_bed(bed, iid_count=args.samples, sid_count=args.snps) as reader:
                return reader.read(dtype=np.float32)

        raw_s, _ = _median_seconds(raw_read, args.reps)
        adapter_s, modality = _median_seconds(lambda: plink(bed, **options), args.reps)

    genotypes = args.samples * args.snps
    n, t, f = modality.values.shape
    rows = [
        ("bed_reader read (reference)", raw_s, (args.samples, args.snps)),
        ("gene.plink -> tokens", adapter_s, (n, t, f)),
    ]
    print(
        f"{args.samples} subjects x {args.snps} SNPs on {args.chromosomes} chromosomes, grouping={args.grouping}"
        + (f" window_bp={args.window_bp}" if args.grouping == "window" else "")
        + f", .bed {bed_mb:.1f} MB, missing {args.missing:.0%}, reps={args.reps}"
    )
    print(f"{'step':<30}{'median s':>10}{'Mgeno/s':>10}{'MB/s':>9}  output shape")
    for label, seconds, shape in rows:
        print(f"{label:<30}{seconds:>10.3f}{genotypes / seconds / 1e6:>10.1f}{bed_mb / seconds:>9.1f}  {shape}")
    result = {
        "plink_genotypes_per_s": round(genotypes / adapter_s),
        "plink_bed_mb_per_s": round(bed_mb / adapter_s, 1),
        "plink_median_s": round(adapter_s, 4),
        "bed_reader_read_median_s": round(raw_s, 4),
        "adapter_vs_raw_read": round(adapter_s / raw_s, 3),
        "tokens": t,
        "max_features_per_token": f,
        "padding_fraction": round(1 - float(modality.feature_mask.mean()), 4),
        "config": {
            "samples": args.samples,
            "snps": args.snps,
            "chromosomes": args.chromosomes,
            "grouping": args.grouping,
            "window_bp": args.window_bp if args.grouping == "window" else None,
            "max_features_per_token": args.max_features_per_token,
            "missing": args.missing,
            "reps": args.reps,
        },
        "numpy": np.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    return result


def main(argv=None) -> dict:
    result = plink_benchmark(parse_args(argv))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

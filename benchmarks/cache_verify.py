"""Cost of verifying a cohort's content on load (the CRC-32 of every array, checked by default).

Builds the synthetic cohort of ``benchmarks/scale.py`` (its ``build`` phase, same layout: 600 tokens, ~5 KB
per subject) for each size, then times in fresh processes, alternating, ``--repeats`` times each:

* ``load_cohort(verify=False)``: sizes, shapes and names only (the memory maps are opened, no value read);
* ``load_cohort()`` (the default): also every array read once and its CRC-32 compared with the manifest's;
* the same default load a second time in the same process (a forked loader worker, an ablation cell): the
  files' stat is unchanged, so nothing is read again.

The files are in the page cache (written just before, or read by the previous repetition): the figures are
the CPU cost of the checksum; a cold read from disk adds the disk's sequential read time, which the first
training epoch pays anyway.

    python benchmarks/cache_verify.py --sizes 10000 100000

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TIMING = """
import json, sys, time
from data_adapters.cache import load_cohort
folder, verify = sys.argv[1], sys.argv[2] == "1"
started = time.perf_counter()
load_cohort(folder, verify=verify)
first = time.perf_counter() - started
started = time.perf_counter()
load_cohort(folder, verify=verify)
print(json.dumps({"first_s": first, "again_s": time.perf_counter() - started}))
"""


def _timed(folder: Path, verify: bool) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", TIMING, str(folder), "1" if verify else "0"], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=None, help="parent of the temporary data folder (default: the system's)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import scale

    root = Path(tempfile.mkdtemp(prefix="mot-neuro-verify-", dir=args.dir))
    results = []
    try:
        for n in args.sizes:
            workdir = root / f"n{n}"
            workdir.mkdir()
            built = scale._phase(scale.parse_args(["--sizes", str(n)]), "build", n, workdir)
            folder = workdir / "cohort"
            plain, verified, again = [], [], []
            for _ in range(args.repeats):
                plain.append(_timed(folder, verify=False)["first_s"])
                timing = _timed(folder, verify=True)
                verified.append(timing["first_s"])
                again.append(timing["again_s"])
            row = {
                "n_subjects": n,
                "cohort_mb": built["cohort_mb"],
                "build_s": built["build_s"],
                "load_s": min(plain),
                "load_verified_s": min(verified),
                "load_verified_again_s": min(again),
            }
            row["verify_s"] = row["load_verified_s"] - row["load_s"]
            row["verify_mb_per_s"] = row["cohort_mb"] / row["verify_s"] if row["verify_s"] > 0 else float("nan")
            results.append(row)
            print(
                f"N={n:>7} {row['cohort_mb']:.0f} MB: load {row['load_s']:.3f} s, verified {row['load_verified_s']:.3f}"
                f" s (+{row['verify_s']:.3f} s, {row['verify_mb_per_s']:.0f} MB/s), again in-process"
                f" {row['load_verified_again_s']:.3f} s; build {row['build_s']:.1f} s",
                flush=True,
            )
            shutil.rmtree(workdir)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    import os
    import platform

    from machine import cpu_name

    cpu = cpu_name()
    summary = {
        "benchmark": "cache_verify",
        "machine": {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
        "repeats": args.repeats,
        "results": results,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

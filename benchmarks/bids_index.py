"""Finding one image per subject in a BIDS tree: ``data_adapters.bids`` (a small reader of the naming rules)
against pybids' ``BIDSLayout``.

Writes a synthetic fMRIPrep-style derivatives tree (empty files: indexing reads names, not contents) with,
per subject and session, raw and preprocessed T1w, masks, probabilistic segmentations, two runs of a rest task
(preprocessed bold, mask, confounds, boldref) and JSON sidecars: 35 files per session. Then times, alternating
which goes first, ``--repeats`` times each, in this process:

* ``ours``: :func:`data_adapters.bids.bids_manifest` for the query (walk, parse every name, match, read
  participants.tsv): everything it does on every call;
* ``pybids``: ``BIDSLayout(root, validate=False, config=["bids", "derivatives"],
  indexer=BIDSLayoutIndexer(validate=False, index_metadata=False))`` (the index) and ``layout.get(...)``
  for the same query;
* ``pybids_query``: ``layout.get(...)`` alone on an index already built (what a process that keeps the
  layout pays per query).

Both must return the same files (checked on every size). Medians are reported.

    nice -n 10 python benchmarks/bids_index.py --subjects 100 500 --repeats 5

pybids is not a dependency of the package: ``pip install pybids`` for this comparison. The last line printed
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPACE = "MNI152NLin2009cAsym"
QUERY = {"session": "1", "task": "rest", "run": 1, "space": SPACE, "desc": "preproc", "suffix": "bold"}


def session_files(subject: str, ses: str) -> list[str]:
    """The files of one session of an fMRIPrep-style derivatives subject (relative paths)."""
    prefix = f"{subject}_ses-{ses}"
    anat = [
        f"{prefix}_desc-preproc_T1w.nii.gz",
        f"{prefix}_desc-preproc_T1w.json",
        f"{prefix}_desc-brain_mask.nii.gz",
        f"{prefix}_dseg.nii.gz",
        *(f"{prefix}_label-{t}_probseg.nii.gz" for t in ("GM", "WM", "CSF")),
        f"{prefix}_space-{SPACE}_desc-preproc_T1w.nii.gz",
        f"{prefix}_space-{SPACE}_desc-preproc_T1w.json",
        f"{prefix}_space-{SPACE}_desc-brain_mask.nii.gz",
        f"{prefix}_space-{SPACE}_dseg.nii.gz",
        *(f"{prefix}_space-{SPACE}_label-{t}_probseg.nii.gz" for t in ("GM", "WM", "CSF")),
        f"{prefix}_from-T1w_to-{SPACE}_mode-image_xfm.h5",
    ]
    func = []
    for run in ("1", "2"):
        stem = f"{prefix}_task-rest_run-{run}"
        func += [
            f"{stem}_desc-confounds_timeseries.tsv",
            f"{stem}_desc-confounds_timeseries.json",
            f"{stem}_space-{SPACE}_boldref.nii.gz",
            f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz",
            f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz",
            f"{stem}_space-{SPACE}_desc-preproc_bold.json",
            f"{stem}_space-T1w_desc-preproc_bold.nii.gz",
            f"{stem}_space-T1w_desc-preproc_bold.json",
            f"{stem}_space-T1w_boldref.nii.gz",
            f"{stem}_space-T1w_desc-brain_mask.nii.gz",
        ]
    return [f"{subject}/ses-{ses}/anat/{n}" for n in anat] + [f"{subject}/ses-{ses}/func/{n}" for n in func]


def write_tree(root: Path, n_subjects: int, sessions=("1", "2")) -> int:
    root.mkdir(parents=True)
    subjects = [f"sub-{i:05d}" for i in range(1, n_subjects + 1)]
    (root / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "synthetic",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "fMRIPrep"}],
            }
        )  # fmt: skip
    )
    (root / "participants.tsv").write_text("participant_id\tage\n" + "".join(f"{s}\t40\n" for s in subjects))
    count = 0
    for subject in subjects:
        for ses in sessions:
            for rel in session_files(subject, ses):
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
                count += 1
        (root / f"{subject}.html").touch()
        count += 1
    return count


def ours(root: Path) -> list[str]:
    from data_adapters.bids import bids_manifest

    return sorted(bids_manifest(root, **QUERY)["path"])


def pybids_layout(root: Path):
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    indexer = BIDSLayoutIndexer(validate=False, index_metadata=False)
    return BIDSLayout(root, validate=False, config=["bids", "derivatives"], indexer=indexer)


def pybids_query(layout) -> list[str]:
    found = layout.get(
        session=QUERY["session"], task=QUERY["task"], run=QUERY["run"], space=QUERY["space"], desc=QUERY["desc"],
        suffix=QUERY["suffix"], extension=[".nii", ".nii.gz"], return_type="filename",
    )  # fmt: skip
    return sorted(os.path.abspath(f) for f in found)


def timed(function, *args):
    started = time.perf_counter()
    out = function(*args)
    return time.perf_counter() - started, out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", type=int, nargs="+", default=[100, 500])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dir", default=None, help="parent of the temporary tree (default: the system's)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import bids

    results = []
    parent = Path(tempfile.mkdtemp(prefix="bids-index-", dir=args.dir))
    try:
        for n in args.subjects:
            root = parent / f"n{n}"
            n_files = write_tree(root, n)
            expected = ours(root)  # warm the page cache and the imports for both
            layout = pybids_layout(root)
            same = pybids_query(layout) == expected and len(expected) == n
            times: dict[str, list[float]] = {"ours": [], "pybids": [], "pybids_query": []}
            for repeat in range(args.repeats):
                order = ("ours", "pybids") if repeat % 2 == 0 else ("pybids", "ours")
                for name in order:
                    if name == "ours":
                        seconds, found = timed(ours, root)
                    else:
                        index_s, layout = timed(pybids_layout, root)
                        query_s, found = timed(pybids_query, layout)
                        seconds = index_s + query_s
                        times["pybids_query"].append(query_s)
                    times[name].append(seconds)
                    same = same and found == expected
            row = {
                "subjects": n,
                "files": n_files,
                "matched": len(expected),
                "same_files": same,
                **{f"{k}_s": statistics.median(v) for k, v in times.items()},
            }
            row["speedup"] = row["pybids_s"] / row["ours_s"]
            results.append(row)
            print(
                f"{n:>6} subjects {n_files:>7} files: ours {row['ours_s']:.3f} s, pybids index+query"
                f" {row['pybids_s']:.3f} s (query alone {row['pybids_query_s']:.4f} s), x{row['speedup']:.1f};"
                f" same files: {same}",
                flush=True,
            )
            shutil.rmtree(root)
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    from machine import cpu_name

    cpu = cpu_name()
    summary = {
        "benchmark": "bids_index",
        "machine": {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version()},
        "pybids": bids.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "repeats": args.repeats,
        "query": QUERY,
        "results": results,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()

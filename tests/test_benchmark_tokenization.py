"""`benchmarks/tokenization.py` runs and reports our region means equal to nilearn's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "tokenization.py"


@pytest.mark.slow  # the benchmark script in a process of its own
def test_tokenize_benchmark_script_agrees_with_nilearn(tmp_path):
    small = ["--subjects", "2", "--fmri-subjects", "1", "--fmri-volumes", "5", "--reps", "1"]
    small += ["--samples", "40", "--snps", "300", "--dir", str(tmp_path)]
    done = subprocess.run([sys.executable, str(SCRIPT), *small], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["nifti_max_abs_diff"] < 1e-4 and result["fmri_max_abs_diff"] < 1e-3
    for key in ("nifti_speedup_vs_nilearn", "nifti_speedup_vs_nilearn_without_isal", "plink_genotypes_per_s"):
        assert result[key] > 0
    assert list(tmp_path.iterdir()) == []  # inputs written to a temporary folder and removed

"""What several test files share and is not a fixture: repository paths, running ``mot-neuro`` in this process,
and the bad-input corpus's case folder (``Case``) with its check (``assert_refused``). The fixtures are in
``conftest.py``."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch  # noqa: F401  (imported here, its log handler binds to pytest's global stderr, not one test's)
import numpy as np
import pandas as pd
import yaml

from mot_neuro.cli import lightning_cli, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
EXPERIMENTS = CONFIGS / "experiments"
EXPERIMENT = EXPERIMENTS / "demo.yaml"  # the README's main experiment on the demo cohort
DENSE_EXPERIMENT = EXPERIMENTS / "demo_dense.yaml"
DEBUG_TRAINER = CONFIGS / "trainer" / "debug.yaml"
DEMO_DATA = yaml.safe_load((CONFIGS / "data" / "demo.yaml").read_text())
NO_LOGGER = ("--trainer.logger", "false")  # runs that get as far as the trainer: no MLflow database to set up
MAX_LINES = 3  # of an error message on stderr


def run_cli(*args, run: bool = True):
    """``mot-neuro ARGS`` through Lightning's CLI in this process (fit, validate, test, predict): the CLI object.
    (conftest.py silences Lightning's warning that it does not parse pytest's own argv.)"""
    return lightning_cli([str(a) for a in args], run=run)


def run_main(capfd, *argv) -> tuple[int, str, str]:
    """``mot-neuro ARGV`` through its entry point in this process: (exit status, stdout, stderr), the output
    read from ``capfd`` (what was captured before is dropped). A ``SystemExit`` (argparse, ``--print_config``)
    gives its code as the status."""
    capfd.readouterr()
    try:
        status = main([str(a) for a in argv])
    except SystemExit as done:
        status = done.code
    captured = capfd.readouterr()
    return status, captured.out, captured.err


class Case:
    """One bad input: files written into ``folder`` (the working directory), a data config pointing at them."""

    def __init__(self, demo: Path, folder: Path, capfd):
        self.demo, self.folder, self.capfd = demo, folder, capfd
        self.participants = pd.read_csv(demo / "participants.csv", dtype={"eid": str})
        self.behaviour = pd.read_csv(demo / "behaviour.csv", dtype={"eid": str})
        manifest = pd.read_csv(demo / "brain_manifest.csv", dtype=str)
        manifest["path"] = [str(demo / p) for p in manifest["path"]]
        self.manifest = manifest
        self.first_scan_subject = manifest["eid"].iloc[0]

    # ------------------------------------------------------------------ files
    def path(self, name: str) -> Path:
        return self.folder / name

    def write(self, name: str, data: bytes | str) -> Path:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def csv(self, name: str, df: pd.DataFrame) -> Path:
        path = self.path(name)
        df.to_csv(path, index=False)
        return path

    def scan_bytes(self) -> bytes:
        return Path(self.manifest["path"].iloc[0]).read_bytes()

    def manifest_with_first_scan(self, image: Path | str) -> Path:
        """The demo manifest with the first subject's scan replaced by ``image``."""
        manifest = self.manifest.copy()
        manifest.loc[0, "path"] = str(image)
        return self.csv("manifest.csv", manifest)

    def with_text(self, df: pd.DataFrame, column: str, row: int, value: str) -> pd.DataFrame:
        df = df.copy()
        df[column] = df[column].astype(object)
        df.loc[row, column] = value
        return df

    def feature_table(self) -> pd.DataFrame:
        rng = np.random.default_rng(0)
        eids = self.participants["eid"]
        return pd.DataFrame({"eid": eids, "prs_a": rng.normal(size=len(eids)), "prs_b": rng.normal(size=len(eids))})

    # ------------------------------------------------------------------ configs and runs
    def data_config(self, *, modalities: dict | None = None, **settings) -> Path:
        """The demo data config on the demo files, with ``modalities`` (name -> spec) and top-level ``settings``
        replaced; the splits file stays inside this case's folder."""
        config = copy.deepcopy(DEMO_DATA)
        demo = self.demo
        config.update(
            participants=str(demo / "participants.csv"),
            generate_demo=None,
            cache_dir=str(self.demo.parent / "cache"),  # shared: entries are keyed by every input and setting
            splits_file=str(self.path("splits.json")),
        )
        config["modalities"]["gene"]["path"] = str(demo / "genotypes")
        config["modalities"]["brain"].update(
            manifest=str(demo / "brain_manifest.csv"),
            atlas=str(demo / "atlas.nii.gz"),
            labels=str(demo / "atlas_labels.csv"),
        )
        config["modalities"]["behaviour"]["path_or_df"] = str(demo / "behaviour.csv")
        config["modalities"].update(modalities or {})
        config.update(settings)
        path = self.path("data.yaml")
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def run(self, *args, command: str = "fit", data: Path | None = None) -> tuple[int, str]:
        """``mot-neuro COMMAND --config demo --trainer debug [--data DATA] ARGS`` in this process: (status, stderr)."""
        argv = [command, "--config", str(EXPERIMENT), "--trainer", str(DEBUG_TRAINER)]
        if data is not None:
            argv += ["--data", str(data)]
        return self.main(*argv, *map(str, args))

    def main(self, *argv: str) -> tuple[int, str]:
        """``mot-neuro ARGV`` in this process: (status, stderr)."""
        status, _, err = run_main(self.capfd, *argv)
        return status, err


def assert_refused(status, stderr: str, *expected: str) -> None:
    """Exit 2, a short message without a traceback, holding every ``expected`` piece."""
    assert status == 2, f"exit status {status!r}; stderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= MAX_LINES, stderr[-3000:]
    assert "error:" in stderr
    for piece in expected:
        assert piece in stderr, f"{piece!r} not in:\n{stderr}"

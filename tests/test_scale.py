"""Large cohorts: training and embedding from a streamed cohort folder (``cohort_dir``), and benchmarks/scale.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import CONFIGS, ROOT

from data_adapters.cache import CohortWriter, cohort_fingerprint
from data_adapters.core import AdapterError

SCRIPT = ROOT / "benchmarks" / "scale.py"
TINY = ["--gene", "6", "--brain", "4", "--behaviour", "4"]  # tokens per modality: seconds, not minutes, per step


def load_scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scale():
    return load_scale()


def write_cohort(scale, folder: Path, n: int, block: int) -> Path:
    """The benchmark's synthetic cohort (tiny token counts), streamed in blocks of ``block`` subjects."""
    args = scale.parse_args(TINY)
    shapes = scale.layouts(args)
    with CohortWriter(
        folder, n_subjects=n, modalities=shapes, targets=["target"], confounds=["age", "sex", "site"]
    ) as writer:
        for start in range(0, n, block):
            writer.append(*scale.synthetic_block(start, min(block, n - start), 0, shapes))
    return folder


def experiment(tmp_path: Path, cohort: Path, **data) -> Path:
    config = {
        "seed_everything": 0,
        "data": {
            "cohort_dir": str(cohort),
            "targets": ["target"],
            "confounds": ["age", "sex", "site"],
            "splits_file": str(tmp_path / "splits.json"),
            "batch_size": 16,
            **data,
        },
        "model": str(CONFIGS / "model" / "mot.yaml"),
        "trainer": str(CONFIGS / "trainer" / "cpu.yaml"),
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow  # fits and embeds through the CLI
def test_fit_and_embed_from_a_streamed_cohort_folder(tmp_path, scale, monkeypatch, capsys):
    from mot_neuro.cli import main
    from mot_neuro.embed import read_embeddings

    monkeypatch.chdir(tmp_path)
    cohort = write_cohort(scale, tmp_path / "cohort", n=90, block=32)
    config = experiment(tmp_path, cohort)
    fit = ["fit", "--config", str(config), "--trainer.max_epochs", "1", "--trainer.logger", "false"]
    assert main([*fit, "--test_after_fit", "false"]) == 0
    checkpoint = tmp_path / "outputs" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()

    assert main(["embed", "--config", str(config), "--ckpt_path", str(checkpoint), "--output", "emb.parquet"]) == 0
    table, metadata = read_embeddings(tmp_path / "emb.parquet")
    assert sorted(table["eid"]) == sorted(str(1_000_000 + i) for i in range(90))  # every subject, once
    assert set(table["split"]) == {"train", "val", "test"}
    assert np.isfinite(np.stack(table["embedding"])).all()
    assert metadata["config_fingerprint"] == cohort_fingerprint(cohort)  # the data's key, recorded with them
    assert metadata["modalities"] == ["gene", "brain", "behaviour"]
    assert not list(cohort.parent.glob(".tmp-*"))


def test_cohort_dir_with_other_targets_and_clear_errors(tmp_path, scale, capsys):
    from mot_neuro.cli import main
    from mot_neuro.data.datamodule import NeuroOmicsDataModule

    cohort = write_cohort(scale, tmp_path / "cohort", n=40, block=40)
    common = {"splits_file": str(tmp_path / "splits.json"), "batch_size": 8}

    # pretraining without targets, confound regression on age only, one modality left out
    data = NeuroOmicsDataModule(
        cohort_dir=str(cohort), targets=[], confounds=["age"], drop_modalities=["gene"], **common
    )
    inputs = data.model_inputs
    assert inputs.targets == {} and inputs.fingerprint == cohort_fingerprint(cohort)
    assert [(m.name, m.n_tokens) for m in inputs.modalities] == [("gene", 0), ("brain", 4), ("behaviour", 4)]
    batch = next(iter(data.train_dataloader()))
    assert set(batch["values"]) == {"brain", "behaviour"} and batch["targets"] == {}

    with pytest.raises(AdapterError, match="not both"):
        NeuroOmicsDataModule(participants="p.csv", modalities={"x": {}}, cohort_dir=str(cohort))
    with pytest.raises(AdapterError, match=r"no data: give participants and modalities .*missing: \['modalities'\]"):
        NeuroOmicsDataModule(participants="p.csv")
    with pytest.raises(AdapterError, match="cohort_dir not found"):
        NeuroOmicsDataModule(cohort_dir=str(tmp_path / "nowhere"))
    with pytest.raises(AdapterError, match=r"drop_modalities names unknown modality\(ies\) \['genes'\]"):
        NeuroOmicsDataModule(cohort_dir=str(cohort), drop_modalities=["genes"])
    wrong = NeuroOmicsDataModule(cohort_dir=str(cohort), targets=["IQ"], **common)
    with pytest.raises(AdapterError, match=r"cohort: target/confound column\(s\) \['IQ'\] not in participants.*'site'"):
        wrong.setup("fit")

    config = experiment(tmp_path, cohort, participants="p.csv")
    assert main(["fit", "--config", str(config), "--trainer.logger", "false"]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.slow  # the benchmark script in a process of its own
def test_scale_benchmark_runs_end_to_end(tmp_path):
    """Tiny sizes, one step: the script's phases, figures and clean-up, not its timings."""
    small = ["--sizes", "40", "--steps", "1", "--warmup", "1", "--batch-size", "8", "--embed-batch-size", "32"]
    explain = ["--phases", "build", "train", "embed", "explain", "--explain-subjects", "2", "4"]
    explain += ["--explain-batch-size", "4", "--explain-methods", "integrated_gradients", "occlusion"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *small, *TINY, *explain, "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["n_subjects"] for r in summary["results"]] == [40]
    for result in summary["results"]:
        assert result["tokens"] == 14 and result["embedded"] == result["n_subjects"]
        for key in (
            "build_s",
            "build_subjects_per_s",
            "cohort_mb",
            "train_setup_s",
            "train_subjects_per_s",
            "train_step_ms",
            "attention_bound_ms",
            "step_vs_attention_bound",
            "embed_s",
            "embed_subjects_per_s",
        ):
            assert result[key] > 0, key
        for phase in ("build", "train", "embed"):
            assert result[f"{phase}_peak_rss_mb"] >= result[f"{phase}_rss_after_imports_mb"] > 10
            assert result[f"{phase}_peak_anon_mb"] > 0
        # explain: one process per --max_subjects, each over the fold's test split (8 of 40 subjects)
        runs = result["explain"]
        assert [(r["max_subjects"], r["explained"], r["test_split_rows"]) for r in runs] == [(2, 2, 8), (4, 4, 8)]
        for run in runs:
            assert run["explain_predict_s"] <= run["explain_s"] and run["explain_subjects_per_s"] > 0
            assert run["explain_peak_rss_mb"] >= run["explain_rss_after_imports_mb"] > 10
            assert run["attribution_rows"] > 0 and run["ig_max_gap"] <= 1.0
        assert result["explain_rss_growth_mb"] == runs[1]["explain_peak_rss_mb"] - runs[0]["explain_peak_rss_mb"]
        assert result["explain_peak_rss_mb"] == max(r["explain_peak_rss_mb"] for r in runs)
    assert summary["flatness"] == {}  # a ratio needs two sizes
    last = summary["results"][-1]
    assert summary["step_vs_attention_bound"] == pytest.approx(last["train_step_ms"] / last["attention_bound_ms"])
    assert summary["train_peak_rss_mb"] == last["train_peak_rss_mb"]
    assert summary["machine"]["cpus"] >= 1 and summary["settings"]["steps"] == 1
    assert summary["settings"]["explain"]["n_steps"] == 16 and summary["settings"]["explain"]["attention"]
    assert summary["explain_rss_growth_mb"] == last["explain_rss_growth_mb"]
    assert list(tmp_path.iterdir()) == []  # the data folder is removed


def test_scale_benchmark_phases_need_their_inputs(scale, tmp_path):
    for phases, needed in ((["build", "explain"], "explain needs train"), (["train"], "train needs build")):
        with pytest.raises(SystemExit, match=needed):
            scale.main(["--sizes", "40", "--phases", *phases, "--dir", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []  # refused before any data folder is made
    assert scale.parse_args([]).phases == ["build", "train", "embed"]  # explain only when asked for


def resident_kb_of(folder: Path) -> dict[str, int]:
    """Resident kB of this process's mappings of files under ``folder``, by file name."""
    sizes, name = {}, None
    with open("/proc/self/smaps") as fh:
        for line in fh:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):  # a mapping's header line
                name = parts[5] if len(parts) > 5 else None
            elif parts[0] == "Rss:" and name and name.startswith(str(folder)):
                key = str(Path(name).relative_to(folder))
                sizes[key] = sizes.get(key, 0) + int(parts[1])
    return sizes


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads Linux's /proc/self/smaps")
def test_reading_batches_leaves_no_cohort_pages_resident(tmp_path, scale):
    from mot_neuro.data.datamodule import NeuroOmicsDataModule

    args = scale.parse_args([])  # the benchmark's 600 tokens: ~5 KB per subject, 10 MB in all
    shapes = scale.layouts(args)
    with CohortWriter(tmp_path / "cohort", n_subjects=2000, modalities=shapes, targets=["target"]) as writer:
        for start in range(0, 2000, 500):
            writer.append(*scale.synthetic_block(start, 500, 0, shapes))
    data = NeuroOmicsDataModule(
        cohort_dir=str(tmp_path / "cohort"), confounds=[], splits_file=str(tmp_path / "s.json"), batch_size=32
    )
    data.setup("fit")  # fits the preprocessing on 1,400 training rows
    batches = iter(data.train_dataloader())
    for _ in range(8):
        batch = next(batches)
    assert batch["values"]["brain"].shape == (32, 200, 4)
    resident = resident_kb_of((tmp_path / "cohort").resolve())
    values = sum(kb for name, kb in resident.items() if name.endswith("values.npy"))
    # without release_pages each shuffled batch maps MBs of the values files (whole folios around each row)
    assert values < 512, resident
    assert sum(resident.values()) < 4096, resident  # what is left: the last batch's present masks

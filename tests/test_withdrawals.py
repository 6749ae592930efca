"""Withdrawn participants removed from the cohort, its cache, the splits and the outputs (``data.withdrawals``)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import CONFIGS

from data_adapters.cache import cohort_fingerprint
from data_adapters.core import AdapterError
from mot_neuro.data.datamodule import NeuroOmicsDataModule
from mot_neuro.data.splits import Splits
from mot_neuro.data.withdrawals import read_withdrawals

N = 60
IDS = [str(1_000_000 + i) for i in range(N)]
WITHDRAWN_PARTICIPANTS = [IDS[4], IDS[17], IDS[33]]
ONLY_IN_BEHAVIOUR = "1999999"  # a behaviour row of no participant, withdrawn too
NOWHERE = ["2000001", "2000002"]  # withdrawn IDs the cohort never had


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    participants = pd.DataFrame(
        {"eid": IDS, "target": (np.arange(N) % 3 == 0).astype(int), "age": rng.normal(60, 8, N).round(1)}
    )
    behaviour = pd.DataFrame({"eid": [*IDS, ONLY_IN_BEHAVIOUR]})
    for k in range(4):
        behaviour[f"m{k}"] = rng.normal(size=N + 1).round(3)
    out = {"participants": tmp_path / "participants.csv", "behaviour": tmp_path / "behaviour.csv"}
    participants.to_csv(out["participants"], index=False)
    behaviour.to_csv(out["behaviour"], index=False)
    # UK Biobank's style: one ID per line, no header; here with a blank line, a comment and a float-written ID
    lines = [WITHDRAWN_PARTICIPANTS[0], "", "# withdrawn 2026-11", f"{WITHDRAWN_PARTICIPANTS[1]}.0"]
    lines += [WITHDRAWN_PARTICIPANTS[2], ONLY_IN_BEHAVIOUR, *NOWHERE, WITHDRAWN_PARTICIPANTS[0]]  # one listed twice
    out["withdrawals"] = tmp_path / "w12345_20261101.csv"
    out["withdrawals"].write_text("\r\n".join(lines) + "\r\n")
    return out


def data_settings(files, tmp_path, **changes) -> dict:
    settings = {
        "participants": str(files["participants"]),
        "modalities": {"behaviour": {"adapter": "measures_table", "path_or_df": str(files["behaviour"])}},
        "targets": ["target"],
        "confounds": ["age"],
        "cache_dir": str(tmp_path / "cache"),
        "splits_file": str(tmp_path / "splits.json"),
        "n_folds": 3,
        "val_fraction": 0.15,
        "stratify": "target",
        "batch_size": 16,
    }
    return {**settings, **changes}


def prepared(**settings) -> NeuroOmicsDataModule:
    data = NeuroOmicsDataModule(**settings)
    data.setup("fit")
    return data


def split_ids(splits: Splits) -> set[str]:
    return splits.subject_ids()


# ====================================================================== the file
def test_reading_skips_blank_lines_comments_a_header_and_repeats(tmp_path, files):
    withdrawals = read_withdrawals(files["withdrawals"])
    assert withdrawals.ids == {*WITHDRAWN_PARTICIPANTS, ONLY_IN_BEHAVIOUR, *NOWHERE}
    with_header = tmp_path / "with_header.csv"
    with_header.write_text("eid\n" + files["withdrawals"].read_text())
    assert read_withdrawals(with_header).ids == withdrawals.ids
    assert read_withdrawals(with_header).fingerprint != withdrawals.fingerprint


@pytest.mark.parametrize(
    "content, match",
    [
        ("1000001\n1000002,1000003\n", "line 2 holds more than one field"),
        ("1000001\n1000002 1\n", "line 2 holds more than one field"),
        ("1000001\n\n1.00012E+06\n", "line 3 writes an ID in scientific notation"),
        ("eid\nsubject\n", None),  # a header, then a text ID: fine
    ],
)
def test_a_bad_withdrawals_file_gets_one_line_naming_file_and_line(tmp_path, content, match):
    path = tmp_path / "withdrawn.csv"
    path.write_text(content)
    if match is None:
        assert read_withdrawals(path).ids == {"subject"}
        return
    with pytest.raises(AdapterError, match=match) as err:
        read_withdrawals(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_quoted_ids_are_read_without_their_quotes(tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_text('"eid"\n"1000004"\n\'1000017\'\n""\n')
    assert read_withdrawals(path).ids == {"1000004", "1000017"}


@pytest.mark.parametrize("content", ["", "\n\n", "eid\n", "# withdrawn 2026-11\n\n", '""\n'])
def test_a_withdrawals_file_listing_no_id_is_refused(tmp_path, content):
    path = tmp_path / "withdrawn.csv"
    path.write_text(content)
    with pytest.raises(AdapterError, match="withdrawals file lists no ID") as err:
        read_withdrawals(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def _cache_folders(tmp_path) -> list[Path]:
    return list((tmp_path / "cache").glob("cohort-*")) if (tmp_path / "cache").exists() else []


@pytest.mark.parametrize(
    "write, style, why",
    [
        (lambda sid: f"sub-{sid}", "'sub-#######' in the file", "prefix 'sub-'"),
        (lambda sid: f"0{sid}", "'0#######' in the file", "leading zeros"),
    ],
)
def test_withdrawals_written_otherwise_than_the_cohort_are_refused(tmp_path, files, write, style, why):
    path = tmp_path / "withdrawn.csv"
    path.write_text("".join(write(sid) + "\n" for sid in WITHDRAWN_PARTICIPANTS))
    with pytest.raises(AdapterError, match=r"none of its 3 ID\(s\) is a subject of the cohort") as err:
        prepared(**data_settings(files, tmp_path, withdrawals=str(path)))
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message and style in message and why in message
    assert "'#######' in the cohort" in message and not any(sid in message for sid in WITHDRAWN_PARTICIPANTS)
    assert not _cache_folders(tmp_path)  # refused before the cohort was cached
    # one written as the cohort does, two otherwise: those two would stay in, refused whatever the share found
    path.write_text("\n".join([WITHDRAWN_PARTICIPANTS[0], *map(write, WITHDRAWN_PARTICIPANTS[1:])]) + "\n")
    with pytest.raises(
        AdapterError, match=r"2 of its 3 ID\(s\) are cohort subjects written otherwise \(1 found"
    ) as err:
        prepared(**data_settings(files, tmp_path, withdrawals=str(path)))
    assert style.replace("in the file", "in the file for those") in str(err.value)


def test_withdrawals_written_otherwise_are_refused_for_a_cached_cohort_too(tmp_path, files, monkeypatch):
    from mot_neuro.data import sources

    path = tmp_path / "withdrawn.csv"
    path.write_text("".join(f"sub-{sid}\n" for sid in WITHDRAWN_PARTICIPANTS))
    settings = data_settings(files, tmp_path)
    cohort_settings = {k: settings[k] for k in ("participants", "modalities", "targets", "confounds", "cache_dir")}
    # a cache built before this check existed: loading it must refuse the file too, and leave the cache alone
    monkeypatch.setattr(sources, "_check_withdrawn", lambda cohort, withdrawn: None)
    sources.build_cached_cohort(**cohort_settings, withdrawals=str(path))
    monkeypatch.undo()
    assert len(_cache_folders(tmp_path)) == 1
    with pytest.raises(AdapterError, match=r"none of its 3 ID\(s\) is a subject of the cohort"):
        sources.build_cached_cohort(**cohort_settings, withdrawals=str(path))
    assert len(_cache_folders(tmp_path)) == 1


def test_withdrawals_none_of_them_in_the_cohort_but_written_alike_are_logged(tmp_path, files, caplog):
    path = tmp_path / "withdrawn.csv"  # UK Biobank lists the whole biobank's withdrawals: often none of a subset
    path.write_text("\n".join(NOWHERE) + "\n")
    caplog.set_level(logging.INFO)
    data = prepared(**data_settings(files, tmp_path, withdrawals=str(path)))
    assert set(data.cohort.subject_ids) == set(IDS)
    said = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "none of the 2 ID(s)" in said and "written alike" in said and not any(sid in said for sid in NOWHERE)


def test_a_missing_withdrawals_file_is_refused_before_the_build(tmp_path, files):
    settings = data_settings(files, tmp_path, withdrawals=str(tmp_path / "nowhere.csv"))
    with pytest.raises(AdapterError, match="withdrawals file not found"):
        prepared(**settings)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("cohort-*"))


# ====================================================================== built cohort, cache, saved splits
def test_withdrawn_subjects_leave_the_cohort_its_cache_and_the_saved_splits(tmp_path, files, caplog):
    before = prepared(**data_settings(files, tmp_path))  # splits made while the withdrawn were still in
    assert set(WITHDRAWN_PARTICIPANTS) <= split_ids(before.splits)

    caplog.set_level(logging.INFO)
    after = prepared(**data_settings(files, tmp_path, withdrawals=str(files["withdrawals"])))
    assert after.cohort_dir != before.cohort_dir  # the cache holding them is not reused
    kept = set(IDS) - set(WITHDRAWN_PARTICIPANTS)
    assert set(after.cohort.subject_ids) == kept
    assert set(after.cohort.modalities["behaviour"].subject_ids.astype(str)) == kept
    counts = after.cohort.match_counts
    assert (counts["withdrawn/found"], counts["withdrawn/not_found"], counts["withdrawn/in_participants"]) == (4, 2, 3)
    assert counts["behaviour/only_in_modality"] == 0  # left out before matching: not counted as a mismatch
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "4 withdrawn ID(s) found" in said and "2 not found" in said
    assert not any(sid in said for sid in WITHDRAWN_PARTICIPANTS)  # counts, never IDs

    # the saved splits lost them; every other subject kept its part in every fold
    assert split_ids(after.splits) == kept
    for old, new in zip(before.splits.folds, after.splits.folds, strict=True):
        for part in ("train", "val", "test"):
            assert new[part] == [sid for sid in old[part] if sid not in set(WITHDRAWN_PARTICIPANTS)]
    on_disk = Path(data_settings(files, tmp_path)["splits_file"]).read_text()
    assert not any(sid in on_disk for sid in WITHDRAWN_PARTICIPANTS)
    assert json.loads(on_disk)["settings"]["withdrawn"]["subjects_removed"] == 3
    served = np.concatenate([after.rows[s] for s in ("train", "val", "test")])
    assert len(served) == len(kept) == after.cohort.n_subjects
    # a checkpoint of the splits before the removal saw no subject these splits hold out: accepted
    after._check_checkpoint_fold({"fold": 0, "splits_fingerprint": before.splits.fingerprint()})
    with pytest.raises(AdapterError, match="other splits"):
        after._check_checkpoint_fold({"fold": 0, "splits_fingerprint": "0" * 16})

    # a new withdrawal file: a new cache key again
    files["withdrawals"].write_text(files["withdrawals"].read_text() + IDS[50] + "\n")
    again = prepared(**data_settings(files, tmp_path, withdrawals=str(files["withdrawals"])))
    assert again.cohort_dir not in (before.cohort_dir, after.cohort_dir)
    assert IDS[50] not in set(again.cohort.subject_ids) and IDS[50] not in split_ids(again.splits)

    # the same splits file without the withdrawals: refused, saying why
    with pytest.raises(AdapterError, match=r"withdrawn subject\(s\) removed: give the same data.withdrawals file"):
        prepared(**data_settings(files, tmp_path))


# ====================================================================== a saved cohort folder and the outputs
def test_a_saved_cohort_folder_keeps_its_rows_but_no_split_loader_or_embedding_holds_them(tmp_path, files):
    from mot_neuro.embed import EmbeddingWriter, read_embeddings
    from mot_neuro.lit_module import NeuroOmicsModule

    full = prepared(**data_settings(files, tmp_path, splits_file=str(tmp_path / "full.json")))
    folder = full.cohort_dir  # a cohort folder holding the withdrawn subjects
    data = prepared(
        cohort_dir=str(folder),
        targets=["target"],
        confounds=["age"],
        splits_file=str(tmp_path / "splits.json"),
        n_folds=3,
        val_fraction=0.15,
        batch_size=16,
        withdrawals=str(files["withdrawals"]),
    )
    assert set(WITHDRAWN_PARTICIPANTS) <= set(data.cohort.subject_ids)  # the folder is not rewritten
    kept = set(IDS) - set(WITHDRAWN_PARTICIPANTS)
    assert split_ids(data.splits) == kept
    served = np.concatenate([data.rows[s] for s in ("train", "val", "test")])
    assert set(data.cohort.subject_ids[served]) == kept
    assert data.model_inputs.fingerprint != cohort_fingerprint(folder)  # the data it serves differ
    counts = data.cohort.match_counts
    assert (counts["withdrawn/found"], counts["withdrawn/not_found"]) == (3, 3)

    pl.seed_everything(0)
    model = NeuroOmicsModule(data_spec=data.model_inputs)
    writer = EmbeddingWriter(tmp_path / "emb.parquet")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[writer], enable_progress_bar=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infer the batch indices.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.predict(model, datamodule=data, return_predictions=False)
    table, _ = read_embeddings(tmp_path / "emb.parquet")
    assert set(table["eid"]) == kept and len(table) == len(kept)

    # the probes' labels come from the saved participants table: its withdrawn rows must not reach them
    from mot_neuro.probe_features import _fold_labels

    targets, _, _ = _fold_labels(data)
    assert set(targets.index) == kept


def test_a_saved_cohort_folder_refuses_withdrawals_written_otherwise(tmp_path, files):
    full = prepared(**data_settings(files, tmp_path, splits_file=str(tmp_path / "full.json")))
    path = tmp_path / "withdrawn.csv"
    path.write_text("".join(f"sub-{sid}\n" for sid in WITHDRAWN_PARTICIPANTS))
    settings = {"targets": ["target"], "confounds": ["age"], "n_folds": 3, "val_fraction": 0.15, "batch_size": 16}
    with pytest.raises(AdapterError, match=r"none of its 3 ID\(s\) .*'sub-#######' in the file") as err:
        prepared(
            cohort_dir=str(full.cohort_dir), splits_file=str(tmp_path / "s.json"), withdrawals=str(path), **settings
        )
    assert str(err.value).startswith(str(path)) and not (tmp_path / "s.json").exists()


# ====================================================================== the CLI's data config
def test_both_options_from_a_data_yaml_through_the_cli(tmp_path, files, monkeypatch):
    from mot_neuro.experiment import lightning_cli

    monkeypatch.chdir(tmp_path)
    rel = tmp_path / "ukb_rel.dat"
    rel.write_text(f"ID1 ID2 HetHet IBS0 Kinship\n{IDS[0]} {IDS[1]} 0.1 0.0 0.25\n{IDS[1]} {IDS[2]} 0.1 0.0 0.2\n")
    data = data_settings(files, tmp_path, relatedness={"path": str(rel), "threshold": 0.0884})
    data["withdrawals"] = str(files["withdrawals"])
    config = {
        "seed_everything": 0,
        "data": data,
        "model": str(CONFIGS / "model" / "mot.yaml"),
        "trainer": str(CONFIGS / "trainer" / "debug.yaml"),
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = lightning_cli(["--config", str(path), "--trainer.logger", "false"], run=False)
    datamodule = cli.datamodule
    datamodule.setup("fit")
    assert datamodule.hparams.relatedness == {"path": str(rel), "threshold": 0.0884}
    assert not set(WITHDRAWN_PARTICIPANTS) & split_ids(datamodule.splits)
    settings = datamodule.splits.settings
    assert settings["relatedness"]["threshold"] == 0.0884
    assert (
        settings["related_groups"]["related_groups"] == 1 and settings["related_groups"]["largest_related_group"] == 3
    )
    for fold in datamodule.splits.folds:
        part = {sid: name for name, members in fold.items() for sid in members}
        assert part[IDS[0]] == part[IDS[1]] == part[IDS[2]]
    # a bare path is a relatedness file at the default threshold
    again = ["--config", str(path), "--data.relatedness", str(rel), "--trainer.logger", "false"]
    with pytest.raises(AdapterError, match=r"relatedness .*0\.0884.* saved, .*0\.0442.* asked"):
        lightning_cli(again, run=False)  # the saved splits were made at another threshold
    cli = lightning_cli([*again, "--data.splits_file", str(tmp_path / "default.json")], run=False)
    assert cli.datamodule.hparams.relatedness == str(rel)
    assert cli.datamodule.splits.settings["relatedness"]["threshold"] == pytest.approx(0.0442)


def test_the_probes_keep_the_families_of_the_splits_whole(tmp_path, files):
    from mot_neuro.probe_features import _fold_groups

    rel = tmp_path / "ukb_rel.dat"
    families = [[IDS[0], IDS[1], IDS[2]], [IDS[10], IDS[11]], [IDS[20], WITHDRAWN_PARTICIPANTS[1]]]
    lines = [f"{a} {b} 0.1 0.0 0.25" for family in families for a, b in zip(family, family[1:], strict=False)]
    rel.write_text("ID1 ID2 HetHet IBS0 Kinship\n" + "\n".join(lines) + "\n")
    data = prepared(**data_settings(files, tmp_path, relatedness=str(rel), withdrawals=str(files["withdrawals"])))
    assert data.hparams.group is None
    groups = _fold_groups(data)  # the inner CV and the cluster bootstrap of the probes keep these whole
    assert set(groups.index) == split_ids(data.splits) == set(IDS) - set(WITHDRAWN_PARTICIPANTS)
    for family in families[:2]:
        assert groups[family].nunique() == 1
    assert groups[families[0][0]] != groups[families[1][0]]
    assert groups.nunique() == len(groups) - 3  # everyone else a group of one; the withdrawn relative is gone
    assert groups.map(type).eq(str).all()
    # without relatedness or group: none, as before
    plain = prepared(**data_settings(files, tmp_path, splits_file=str(tmp_path / "plain.json")))
    assert plain.split_groups is None and _fold_groups(plain) is None


@pytest.mark.slow  # a (one-batch) fit through the CLI
def test_mot_neuro_fit_with_both_options(tmp_path, files, monkeypatch):
    from mot_neuro.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rel = tmp_path / "ukb_rel.dat"
    rel.write_text(f"ID1 ID2 HetHet IBS0 Kinship\n{IDS[0]} {IDS[1]} 0.1 0.0 0.25\n")
    data = data_settings(files, tmp_path, relatedness=str(rel), withdrawals=str(files["withdrawals"]))
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(data))
    argv = ["fit", "--model", str(CONFIGS / "model" / "mot.yaml"), "--trainer", str(CONFIGS / "trainer" / "debug.yaml")]
    assert main([*argv, "--data", str(path), "--trainer.logger", "false"]) == 0
    saved = json.loads((tmp_path / "splits.json").read_text())
    assert saved["settings"]["relatedness"]["threshold"] == pytest.approx(0.0442)
    listed = {sid for fold in saved["folds"] for part in fold.values() for sid in part}
    assert listed == set(IDS) - set(WITHDRAWN_PARTICIPANTS)


def test_the_splits_api_refuses_withdrawn_subjects_among_the_subjects_to_split(tmp_path):
    from mot_neuro.data.splits import load_or_make_splits

    with pytest.raises(AdapterError, match=r"subject_ids holds 2 withdrawn subject\(s\)"):
        load_or_make_splits(tmp_path / "splits.json", IDS, withdrawn=[IDS[0], IDS[1], "2000001"])
    assert not (tmp_path / "splits.json").exists()

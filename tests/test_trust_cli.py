"""Issue 13, classes 11, 12 and 14 (probe): one experiment for every subcommand, subject IDs structurally out
of MLflow, and probes that keep groups whole.

* Every subcommand takes the experiment ``fit`` takes (the UKB template, with fit-only keys), and ``embed`` and
  ``probe`` take ``--data``/``--model``/``--trainer`` as ``fit`` does; ``embed`` builds the checkpoint's model.
* A cohort whose IDs look like ordinary numbers, with the IDs written into every adapter option that can hold
  them (VCF ``samples``, embeddings ``ids``, connectivity ``ids``): after a fit no ID is in any MLflow param,
  metric name, tag or artifact, nor in the run's output.
* ``mot-neuro probe`` with the data config's ``group``: inner CV splits never share a group, and the bootstrap
  resamples groups (checked against a cluster bootstrap written here).
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import CONFIGS, DEMO_DATA, NO_LOGGER, Case, assert_refused, run_main

UKB = CONFIGS / "experiments" / "ukb_template.yaml"
DENSE = CONFIGS / "model" / "dense.yaml"
# a fast trainer that still writes checkpoints (the debug trainer's fast_dev_run writes none)
QUICK_FIT = (
    "--trainer.max_epochs",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
)


def mentions(text: str, ids) -> list[str]:
    """IDs that occur in ``text`` as a whole token: not digits inside a longer number or a decimal.

    In a binary file (a checkpoint's pickle puts opcode letters right after a string) only digits around
    an ID make it part of something else."""
    binary = "\x00" in text
    pattern = r"(?<!\d){}(?!\d)" if binary else r"(?<![\w.]){}(?!\w|\.\d)"
    return sorted(i for i in ids if re.search(pattern.format(re.escape(i)), text))


def demo_data(case: Case, **settings) -> Path:
    """The demo data config on the shared demo files, splits in this case's folder."""
    return case.data_config(**settings)


def ukb(case: Case, command: str, *args: str, data: Path | None = None) -> tuple[int, str]:
    """``mot-neuro COMMAND --config ukb_template.yaml --data DATA ARGS`` in this process: (status, stderr)."""
    data = data or demo_data(case)
    return case.main(command, "--config", str(UKB), "--data", str(data), *map(str, args))


def fit_checkpoint(case: Case, data: Path, *extra: str) -> Path:
    status, err = ukb(case, "fit", *QUICK_FIT, *NO_LOGGER, "--test_after_fit", "false", *extra, data=data)
    assert status == 0, err[-3000:]
    return case.folder / "outputs" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def ukb_checkpoints(demo_cohort, tmp_path_factory):
    """``ukb_checkpoints(case, *extra)``: what ``fit_checkpoint(case, demo_data(case), *extra)`` leaves, a fit's
    outputs/checkpoints/last.ckpt in the case's folder (copied there), without fitting again: each ``extra`` is
    fitted once for the module, in a folder of its own with its own demo data config (the same settings, so the
    same splits). The case's data config is written too, as the tests' own demo_data(case) would."""
    from mot_neuro.cli import main

    fitted: dict[tuple, Path] = {}

    def checkpoint(case: Case, *extra: str) -> Path:
        if extra not in fitted:
            folder = tmp_path_factory.mktemp("ukb_fit")
            data = Case(demo_cohort, folder, capfd=None).data_config()
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(folder)
                mp.delenv("MLFLOW_TRACKING_URI", raising=False)
                mp.delenv("MOT_NEURO_DEBUG", raising=False)
                argv = ["fit", "--config", UKB, "--data", data, *QUICK_FIT, *NO_LOGGER, "--test_after_fit", "false"]
                assert main([str(a) for a in (*argv, *extra)]) == 0
            fitted[extra] = folder / "outputs" / "checkpoints" / "last.ckpt"
        demo_data(case)
        path = case.folder / "outputs" / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fitted[extra], path)
        return path

    return checkpoint


# ====================================================================== class 11: one experiment everywhere
@pytest.mark.slow  # fits through the CLI
def test_ukb_template_workflow_test_embed_probe_with_data_override(case, ukb_checkpoints):
    """fit, test, embed and probe all take the UKB template (fit-only keys) with --data; embed takes --model and
    --trainer overrides like fit, and probe reads the embeddings it wrote."""
    checkpoint = ukb_checkpoints(case)  # fit_checkpoint(case, demo_data(case)), fitted once for the module
    status, err = ukb(case, "test", "--ckpt_path", checkpoint, *NO_LOGGER, "--trainer.enable_progress_bar", "false")
    assert status == 0, err[-3000:]

    status, err = ukb(
        case, "embed", "--ckpt_path", checkpoint, "--output", "emb.parquet", "--trainer.enable_progress_bar", "false"
    )
    assert status == 0, err[-3000:]
    from mot_neuro.embed import read_embeddings

    table, metadata = read_embeddings(case.path("emb.parquet"))
    assert len(table) == len(case.participants) and metadata["variant"] == "mot"

    status, err = ukb(case, "probe", "--embeddings", "emb.parquet", "--bootstrap", "20", "--out", "probes")
    assert status == 0, err[-3000:]
    results = pd.read_csv(case.path("probes") / "probes.csv")
    assert set(results["feature_set"]) == {"mot", "mot_late_fusion", "early_fusion"}
    assert results["value"].notna().all()


@pytest.mark.slow  # fits through the CLI
def test_data_override_means_the_same_in_embed_as_in_fit(case):
    """--data.fold 1 selects fold 1 in embed as it does in fit: the rows are labelled by fold 1's splits."""
    data = demo_data(case)
    checkpoint = fit_checkpoint(case, data, "--data.fold", "1")  # a checkpoint is embedded on its own fold only
    status, err = ukb(case, "embed", "--ckpt_path", checkpoint, "--output", "emb.parquet", "--data.fold", "1")
    assert status == 0, err[-3000:]
    from mot_neuro.embed import read_embeddings

    table, _ = read_embeddings(case.path("emb.parquet"))
    assert set(table["fold"]) == {1}


@pytest.mark.slow  # fits through the CLI
def test_embed_with_a_smoke_trainer_still_embeds_every_subject(case, ukb_checkpoints):
    """The debug trainer (fast_dev_run: one batch) or limit_predict_batches must not leave a partial file that
    probe would take for the cohort."""
    checkpoint = ukb_checkpoints(case)  # fit_checkpoint(case, demo_data(case)), fitted once for the module
    debug = CONFIGS / "trainer" / "debug.yaml"
    status, err = ukb(case, "embed", "--ckpt_path", checkpoint, "--output", "emb.parquet", "--trainer", debug)
    assert status == 0, err[-3000:]
    status, err = ukb(
        case, "embed", "--ckpt_path", checkpoint, "--output", "limited.parquet", "--trainer.limit_predict_batches", "2"
    )
    assert status == 0, err[-3000:]
    from mot_neuro.embed import read_embeddings

    for name in ("emb.parquet", "limited.parquet"):
        assert len(read_embeddings(case.path(name))[0]) == len(case.participants), name


@pytest.mark.slow  # fits through the CLI
def test_embed_builds_the_checkpoints_variant_not_the_configs(case, ukb_checkpoints):
    """A dense checkpoint under the MoT config embeds as the dense model (settings from the checkpoint, as
    test --ckpt_path does): the same vectors as embedding it under the dense config."""
    checkpoint = ukb_checkpoints(case, "--model", str(DENSE))  # fit_checkpoint(case, data, "--model", DENSE)
    status, err = ukb(case, "embed", "--ckpt_path", checkpoint, "--output", "mot_config.parquet")
    assert status == 0, err[-3000:]
    assert "Traceback" not in err and "state_dict" not in err
    assert "note: the model is built from the checkpoint's settings (encoder.untie differ" in err
    status, err = ukb(case, "embed", "--ckpt_path", checkpoint, "--output", "dense_config.parquet", "--model", DENSE)
    assert status == 0, err[-3000:]
    from mot_neuro.embed import read_embeddings

    under_mot, meta = read_embeddings(case.path("mot_config.parquet"))
    under_dense, _ = read_embeddings(case.path("dense_config.parquet"))
    assert meta["variant"] == "dense"
    np.testing.assert_array_equal(np.stack(under_mot["embedding"]), np.stack(under_dense["embedding"]))


def test_embed_refuses_weights_of_another_variant_without_settings_in_one_line(case, ukb_checkpoints):
    """A checkpoint that saves no settings (hyper_parameters stripped) and holds dense weights, under the MoT
    config: one line naming both models, and no embeddings file or part file left."""
    import torch

    checkpoint = torch.load(ukb_checkpoints(case, "--model", str(DENSE)), weights_only=True)
    del checkpoint["hyper_parameters"]
    stripped = case.path("weights_only.ckpt")
    torch.save(checkpoint, stripped)
    status, err = ukb(case, "embed", "--ckpt_path", stripped, "--output", "emb.parquet")
    assert_refused(status, err, "weights_only.ckpt", "config's model mot", "checkpoint's model unknown")
    assert not list(case.folder.glob("emb.parquet*"))


@pytest.mark.parametrize("command", ["embed", "probe"])
def test_tools_refuse_an_option_that_is_not_theirs_nor_the_experiments(case, command):
    args = ["--ckpt_path", "never_read.ckpt"] if command == "embed" else []  # the option is refused first
    status, err = ukb(case, command, *args, "--bootstrp", "10")
    assert_refused(status, err, "'--bootstrp'", f"mot-neuro {command} --help")


@pytest.mark.slow  # fits through the CLI
def test_tools_take_a_trainer_file_as_fit_does(case, ukb_checkpoints):
    """probe uses only the data: a GPU or MLflow trainer file (here on a CPU-only run) neither fails nor creates an
    MLflow store; embed with a trainer this machine cannot run says so in one line naming the trainer."""
    import torch

    gpu = CONFIGS / "trainer" / "gpu.yaml"
    status, err = ukb(case, "probe", "--trainer", gpu, "--bootstrap", "10", "--out", "probes")
    assert status == 0, err[-3000:]
    assert (case.path("probes") / "probes.csv").is_file() and not case.path("mlflow.db").exists()
    if torch.cuda.is_available():
        return
    status, err = ukb(case, "embed", "--ckpt_path", ukb_checkpoints(case), "--trainer", gpu)
    assert_refused(status, err, "trainer settings cannot run here", "--trainer")
    assert not list(case.path("outputs").glob("embeddings.parquet*"))


def test_probe_refuses_a_missing_data_file_naming_it(case):
    status, err = case.main("probe", "--config", str(UKB), "--data", "no_such_cohort.yaml")
    assert_refused(status, err, "no_such_cohort.yaml")


# ====================================================================== class 12: subject IDs out of MLflow
N_NUMERIC = 60
NUMERIC_IDS = [str(1_000_001 + i) for i in range(N_NUMERIC)]  # IDs that look like any other number


def _write_vcf(path: Path, samples: list[str], rng: np.random.Generator) -> Path:
    lines = [
        "##fileformat=VCFv4.2",
        "##contig=<ID=1,length=10000000>",
        "##contig=<ID=2,length=10000000>",
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples]),
    ]
    for chrom in ("1", "2"):
        for k in range(4):
            calls = [("0/0", "0/1", "1/1")[g] for g in rng.integers(0, 3, len(samples))]
            fixed = [chrom, str(1000 * (k + 1)), f"rs{chrom}{k}", "A", "G", ".", "PASS", ".", "GT"]
            lines.append("\t".join([*fixed, *calls]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def numeric_cohort(tmp_path_factory) -> dict:
    """A cohort with numeric IDs whose every ID-holding adapter option lists the IDs inline."""
    folder = tmp_path_factory.mktemp("numeric_ids")
    rng = np.random.default_rng(0)
    ids = NUMERIC_IDS
    n = len(ids)
    signal = rng.normal(size=n)
    pd.DataFrame(
        {
            "eid": ids,
            "target": signal + 0.3 * rng.normal(size=n),
            "age": rng.normal(60, 5, size=n).round(1),
            "family": [f"fam{i // 3}" for i in range(n)],  # three relatives per family
        }
    ).to_csv(folder / "participants.csv", index=False)
    pd.DataFrame({"eid": ids, "m1": signal + rng.normal(size=n), "m2": rng.normal(size=n)}).to_csv(
        folder / "behaviour.csv", index=False
    )
    np.save(folder / "emb.npy", (signal[:, None] + rng.normal(size=(n, 6))).astype(np.float32))
    matrices = rng.normal(size=(n, 4, 4)).astype(np.float32)
    np.save(folder / "conn.npy", (matrices + matrices.transpose(0, 2, 1)) / 2)
    # the VCF's sample order differs from the participants': samples= picks and orders them
    _write_vcf(folder / "genotypes.vcf", list(reversed(ids)) + ["9999999"], rng)
    modalities = {
        "gene": {"adapter": "vcf", "path": str(folder / "genotypes.vcf"), "samples": list(ids)},
        "emb": {"adapter": "embeddings", "path_or_df": str(folder / "emb.npy"), "ids": list(ids), "tokens": 2},
        "conn": {"adapter": "connectivity_matrices", "source": str(folder / "conn.npy"), "ids": list(ids)},
        "behaviour": {"adapter": "measures_table", "path_or_df": str(folder / "behaviour.csv")},
    }
    return {"folder": folder, "ids": ids, "modalities": modalities}


def numeric_data_config(case: Case, cohort: dict, **settings) -> Path:
    config = copy.deepcopy(DEMO_DATA)
    config.update(
        participants=str(cohort["folder"] / "participants.csv"),
        generate_demo=None,
        modalities=copy.deepcopy(cohort["modalities"]),
        confounds=["age"],
        categorical_confounds=[],  # the UKB template's [site] would carry over to a cohort without a site column
        stratify=None,
        cache_dir=str(case.path("cache")),
        splits_file=str(case.path("splits.json")),
        batch_size=16,
    )
    config.update(settings)
    path = case.path("numeric.yaml")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def mlflow_texts(case: Case) -> dict[str, str]:
    """Every param, metric name, tag and artifact (as text) of every run in the case's MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{case.path('mlflow.db')}")
    texts = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            run_id = run.info.run_id
            texts[f"{run_id}/params"] = repr(sorted(run.data.params.items()))
            texts[f"{run_id}/metric names"] = repr(sorted(run.data.metrics))
            texts[f"{run_id}/tags"] = repr(sorted(run.data.tags.items()))
            texts[f"{run_id}/run name"] = run.info.run_name or ""
            folder = Path(client.download_artifacts(run_id, "", str(case.path(f"artifacts-{run_id}"))))
            for file in sorted(p for p in folder.rglob("*") if p.is_file()):
                texts[f"{run_id}/{file.relative_to(folder)}"] = file.read_bytes().decode("latin-1")
    return texts


def assert_no_subject_id_in_mlflow(case: Case, ids: list[str], output: str) -> dict[str, str]:
    texts = mlflow_texts(case)
    assert any(name.endswith("config.yaml") for name in texts), sorted(texts)  # the scan saw the config
    leaks = {name: mentions(text, ids)[:3] for name, text in texts.items() if mentions(text, ids)}
    assert leaks == {}
    assert mentions(output, ids) == []
    return texts


@pytest.mark.parametrize(
    ("logger", "log_model"),
    [
        ("mot_neuro.tracking.MLflowLogger", "false"),
        ("mot_neuro.tracking.MLflowLogger", "true"),  # the checkpoints become artifacts too
        ("lightning.pytorch.loggers.MLFlowLogger", "false"),
    ],
)
@pytest.mark.slow  # fits through the CLI
def test_ids_in_adapter_options_never_reach_mlflow(case, numeric_cohort, logger, log_model):
    """VCF samples, embeddings ids and connectivity ids list every (numeric) subject ID; after a fit (and its
    test) none is in a param, metric name, tag or artifact (checkpoints included with log_model), with
    mot-neuro's logger or Lightning's own."""
    ids = numeric_cohort["ids"]
    data = numeric_data_config(case, numeric_cohort)
    assert len(mentions(data.read_text(), ids)) == len(ids)  # the IDs are in the configuration: the scan can fail
    args = [
        "--trainer.logger",
        logger,
        "--trainer.logger.init_args.tracking_uri",
        f"sqlite:///{case.path('mlflow.db')}",
        "--trainer.logger.init_args.log_model",
        log_model,
    ]
    status, out, err = run_main(
        case.capfd, "fit", "--config", UKB, "--data", data, *QUICK_FIT, *args, "--checkpoint_dir", "ckpt"
    )
    assert status == 0, err[-3000:]
    assert "test/target/r2" in out  # the output scanned below is the run's
    texts = assert_no_subject_id_in_mlflow(case, ids, out + err)
    if log_model == "true":
        assert any(name.endswith(".ckpt") for name in texts), sorted(texts)
    params = next(text for name, text in texts.items() if name.endswith("/params"))
    assert "samples" in params and "not logged" in params  # the options are there, summarised
    assert "'targets', \"['target']\"" in params  # name lists stay readable


def test_value_lists_are_summarised_wherever_they_sit():
    """The structural rule on a tree no adapter has today: an unknown option holding IDs (list, tuple, mapping
    keyed by subject, array) is summarised; name lists and scalar options stay as they are."""
    from mot_neuro.tracking import without_value_lists

    ids = NUMERIC_IDS[:5]
    tree = {
        "targets": ["target"],
        "participants": "participants.csv",
        "batch_size": 32,
        "future_option": tuple(ids),
        "modalities": {
            "new": {"adapter": "some_future_adapter", "path": "x.npy", "keep": ids, "weights": dict.fromkeys(ids, 1.0)},
            "arr": {"adapter": "embeddings", "ids": np.array(ids)},
        },
        "data_spec": {"modalities": [{"name": "new", "n_tokens": 3}]},
    }
    assert mentions(repr(tree), ids) == ids  # the check can fail
    clean = without_value_lists(tree)
    assert mentions(repr(clean), ids) == []
    assert clean["targets"] == ["target"] and clean["batch_size"] == 32
    assert clean["modalities"]["new"]["path"] == "x.npy" and "not logged" in clean["modalities"]["new"]["keep"]
    assert clean["data_spec"]["modalities"][0]["n_tokens"] == 3  # records are walked, not hidden


# ====================================================================== class 14: probes keep groups whole
def _grouped_data(n_groups: int = 40, per_group: int = 5, seed: int = 0):
    """Rows in groups with a strong shared effect, and predictions whose errors are shared within a group."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per_group)
    y = rng.normal(size=n_groups)[groups] + 0.1 * rng.normal(size=len(groups))
    pred = y + rng.normal(scale=0.6, size=n_groups)[groups] + 0.05 * rng.normal(size=len(groups))
    return y, pred, groups


def _cluster_bootstrap_mae(y, pred, groups, n_resamples: int, seed: int) -> tuple[float, float]:
    """An independent cluster bootstrap: draw whole groups with replacement, one resample at a time."""
    rng = np.random.default_rng(seed + 12345)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    values = []
    for _ in range(n_resamples):
        rows = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        values.append(np.mean(np.abs(y[rows] - pred[rows])))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def test_grouped_bootstrap_matches_an_independent_cluster_bootstrap():
    from mot_neuro.probe import _bootstrap

    y, pred, groups = _grouped_data()
    grouped = _bootstrap("regression", y, pred, None, 2000, 0, groups)["mae"]
    by_row = _bootstrap("regression", y, pred, None, 2000, 0)["mae"]
    low, high = _cluster_bootstrap_mae(y, pred, groups, 2000, 0)
    assert grouped[0] == pytest.approx(np.mean(np.abs(y - pred)))
    width, reference = grouped[2] - grouped[1], high - low
    assert abs(width - reference) < 0.15 * reference  # Monte Carlo error of 2000 resamples is a few percent
    assert abs(grouped[1] - low) < 0.1 * reference and abs(grouped[2] - high) < 0.1 * reference
    # resampling rows treats 5 correlated visits as 5 independent subjects: a CI far too narrow
    assert by_row[2] - by_row[1] < 0.7 * width


@pytest.mark.parametrize("kind", ["regression", "binary", "multiclass"])
def test_probe_inner_cv_never_puts_a_group_on_both_sides(kind, monkeypatch):
    """probe(groups=...) tunes its penalty on splits that keep groups whole; without groups it uses plain k-fold
    splits of the whole pipeline."""
    import mot_neuro.probe as probe_module

    rng = np.random.default_rng(1)
    n_groups, per_group = 30, 4
    ids = np.array([f"s{i:03d}" for i in range(n_groups * per_group)], dtype=object)
    groups = pd.Series(np.repeat([f"family{g}" for g in range(n_groups)], per_group), index=ids)
    latent = np.repeat(rng.normal(size=n_groups), per_group) + 0.3 * rng.normal(size=len(ids))
    y = {
        "regression": latent,
        "binary": (latent > 0).astype(float),
        "multiclass": np.digitize(latent, [-0.5, 0.5]).astype(float),
    }[kind]
    features = pd.DataFrame({"a": latent + rng.normal(size=len(ids)), "b": rng.normal(size=len(ids))}, index=ids)
    targets = pd.DataFrame({"t": y}, index=ids)
    fit_ids, test_ids = ids[: 20 * per_group], ids[20 * per_group :]
    seen = []
    original = probe_module._pipeline

    def recording(kind_, n_folds, seed, inner_splits=None):
        seen.append(inner_splits)
        return original(kind_, n_folds, seed, inner_splits)

    monkeypatch.setattr(probe_module, "_pipeline", recording)
    splits = {"train": fit_ids[:60], "val": fit_ids[60:], "test": test_ids}
    results = probe_module.probe({"x": features}, targets, splits, kinds={"t": kind}, n_bootstrap=50, groups=groups)
    assert results["value"].notna().all(), results
    (inner,) = seen
    assert inner is not None and len(inner) >= 2
    fit_groups = groups.reindex(np.union1d(splits["train"], splits["val"]).astype(object)).to_numpy()
    for train, test in inner:
        assert not set(fit_groups[train]) & set(fit_groups[test])
    assert sorted(np.concatenate([test for _, test in inner])) == list(range(len(fit_groups)))
    seen.clear()
    probe_module.probe({"x": features}, targets, splits, kinds={"t": kind}, n_bootstrap=0)
    assert seen == [None]


def test_probe_cli_with_group_keeps_families_whole(case, numeric_cohort):
    """The data config's group reaches the probe: it says so, and its CIs resample families."""
    data = numeric_data_config(case, numeric_cohort, group="family", confounds=["age", "family"])
    status, out, err = run_main(
        case.capfd, "probe", "--config", UKB, "--data", data, "--bootstrap", "100", "--out", "probes", *NO_LOGGER
    )
    assert status == 0, err[-3000:]
    assert "whole groups of 'family'" in out and "early_fusion" in out
    results = pd.read_csv(case.path("probes") / "probes.csv")
    assert results["value"].notna().all() and (results["ci_high"] > results["ci_low"]).all()
    assert mentions(out + err, numeric_cohort["ids"]) == []


def test_probe_gives_no_ci_when_the_test_subjects_form_one_group():
    """A cluster bootstrap over one group resamples the same rows every time: NaN with a note, not [v, v]."""
    from mot_neuro.probe import probe

    rng = np.random.default_rng(2)
    ids = np.array([f"s{i}" for i in range(60)], dtype=object)
    x = rng.normal(size=60)
    features = pd.DataFrame({"a": x}, index=ids)
    targets = pd.DataFrame({"t": x + 0.5 * rng.normal(size=60)}, index=ids)
    # grouped folds by site: the test part is one whole site, the fit part ten others
    groups = pd.Series([f"site{i // 4}" for i in range(40)] + ["test_site"] * 20, index=ids)
    splits = {"train": ids[:30], "val": ids[30:40], "test": ids[40:]}
    results = probe({"x": features}, targets, splits, kinds={"t": "regression"}, n_bootstrap=50, groups=groups)
    assert results["value"].notna().all()
    assert results["ci_low"].isna().all() and results["ci_high"].isna().all()
    assert (results["note"] == "no CI: the test subjects are all in one group").all()


def test_an_error_raised_in_a_dataloader_worker_is_one_line():
    """torch re-raises a worker's exception with the worker's traceback as its message: the CLI keeps its last line."""
    from torch._utils import ExceptionWrapper

    from data_adapters.core import AdapterError
    from mot_neuro.cli import _error_line

    try:
        raise AdapterError("value is not finite after standardization", file="behaviour.csv", column="memory")
    except AdapterError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(AdapterError) as caught:
        wrapped.reraise()
    assert "Original Traceback" in str(caught.value)  # what the CLI is given
    line = _error_line("fit", caught.value)
    assert line == "mot-neuro fit: error: behaviour.csv: column 'memory': value is not finite after standardization"


@pytest.mark.slow  # fits through the CLI
def test_ablate_takes_the_experiment_overrides_and_keeps_them_out_of_tags(case):
    """ablate takes --data like fit (the cells train on that data config) and records only a digest of overrides."""
    from mlflow.tracking import MlflowClient

    from mot_neuro.ablate import ABLATION_TAG, OVERRIDES_TAG

    data = case.data_config()  # its splits file is this case's own: made only if the cells read this config
    quick = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.enable_progress_bar=false"]
    argv = ["ablate", "--config", UKB, "--data", data, "--variants", "mot", "--drop", "none", "--folds", "0"]
    status, out, err = run_main(case.capfd, *argv, "--set", *quick, "--out", "ablation")
    assert status == 0, err[-3000:]
    assert case.path("splits.json").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{case.path('mlflow.db')}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if ABLATION_TAG in r.data.tags]
    assert re.fullmatch(r"[0-9a-f]{16}", parent.data.tags[OVERRIDES_TAG])
    assert not any("limit_train_batches" in value for run in runs for value in run.data.tags.values())
    # the same grid with other overrides would mix settings: refused in one line
    status, err = case.main(*map(str, argv), "--set", "trainer.max_epochs=2", "--out", "ablation")
    assert_refused(status, err, "other overrides")


# ====================================================================== checkpoints of another fold, or none
@pytest.mark.slow  # fits through the CLI
def test_a_checkpoint_of_another_fold_is_refused_by_test_embed_and_resume(case, ukb_checkpoints):
    """A fold-0 model tested, embedded or resumed on fold 1 would report numbers on subjects it trained on."""
    checkpoint = ukb_checkpoints(case)  # fit_checkpoint(case, demo_data(case)): in this case's outputs/checkpoints
    for command, extra in (
        ("test", ()),
        ("embed", ("--output", "emb.parquet")),
        ("fit", ("--trainer.max_epochs", "2", *NO_LOGGER)),  # --ckpt_path last: the folder holds fold 0's file
    ):
        path = "last" if command == "fit" else checkpoint
        status, err = ukb(case, command, "--ckpt_path", path, "--data.fold", "1", *extra)
        assert_refused(status, err, "trained on fold 0 (this run: fold 1)", "--data.fold 0")
    assert not case.path("emb.parquet").exists()
    status, err = ukb(case, "test", "--ckpt_path", checkpoint, *NO_LOGGER, "--trainer.enable_progress_bar", "false")
    assert status == 0, err[-3000:]  # its own fold is fine


def test_test_without_a_checkpoint_is_refused(case):
    """Without --ckpt_path Lightning would evaluate an untrained model and log it as an ordinary run."""
    for command in ("test", "validate"):
        status, err = ukb(case, command, *NO_LOGGER)
        assert_refused(status, err, f"{command} needs --ckpt_path", "untrained")

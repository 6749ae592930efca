"""The harmonisation axis of `mot-neuro ablate` (--harmonize none combat): cells, overrides, summaries."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import EXPERIMENTS

from mot_neuro.ablate import Cell, build_grid, harmonize_effect

DEMO = str(EXPERIMENTS / "demo.yaml")
COMBAT = {"method": "combat", "batch": "site", "covariates": ["age", "sex"], "modalities": ["brain"]}
MODALITIES = ["gene", "brain", "behaviour"]


def test_without_the_axis_the_grid_and_its_names_are_unchanged():
    cells = build_grid(["dense", "mot"], ["none", "brain"], [0], [0, 1], MODALITIES)
    assert all(c.harmonize is None for c in cells)
    assert "mot__drop-brain__seed0__fold1" in {c.id for c in cells}
    assert not any("harmonize" in arg for arg in cells[0].overrides(MODALITIES, COMBAT))


def test_the_axis_repeats_the_grid_per_setting_with_its_own_overrides():
    plain = build_grid(["dense", "mot"], ["none", "brain"], [0], [0], MODALITIES, eval_masking=True)
    cells = build_grid(
        ["dense", "mot"], ["none", "brain"], [0], [0], MODALITIES, eval_masking=True, harmonize=["none", "combat"]
    )
    assert len(cells) == 2 * len(plain) and len({c.id for c in cells}) == len(cells)
    combat = Cell("mot", "brain@test", 0, 0, "combat")
    assert combat.id == "mot__drop-brain@test__seed0__fold0__harmonize-combat"
    assert combat.trained_by == Cell("mot", "none", 0, 0, "combat")  # the masked test uses its own setting's model
    args = combat.overrides(MODALITIES, COMBAT)
    assert json.loads(args[args.index("--data.harmonize") + 1]) == COMBAT
    args = Cell("mot", "none", 0, 0, "none").overrides(MODALITIES, COMBAT)
    assert json.loads(args[args.index("--data.harmonize") + 1]) == {"method": "none"}
    with pytest.raises(ValueError, match="needs the data config's harmonize"):
        Cell("mot", "none", 0, 0, "combat").overrides(MODALITIES, None)
    for bad in (["quantile"], ["none", "none"], []):
        with pytest.raises(ValueError, match="--harmonize"):
            build_grid(["mot"], ["none"], [0], [0], MODALITIES, harmonize=bad)


def test_harmonize_effect_pairs_each_cell_with_the_same_cell_without_harmonisation():
    rows = []
    for fold, (none, combat) in enumerate([(0.30, 0.38), (0.25, 0.27), (0.40, 0.45)]):
        for level, value in (("none", none), ("combat", combat)):
            rows.append(dict(harmonize=level, variant="mot", dropped="none", seed=0, fold=fold, metric="test/y/r2",
                             value=value))  # fmt: skip
            rows.append(dict(harmonize=level, variant="dense", dropped="none", seed=0, fold=fold, metric="test/y/r2",
                             value=value - 0.1))  # fmt: skip
    effect = harmonize_effect(pd.DataFrame(rows), ["none", "combat"], {0: 0.25, 1: 0.25, 2: 0.25})
    assert set(zip(effect["variant"], effect["harmonize"], strict=True)) == {("mot", "combat"), ("dense", "combat")}
    mot = effect.set_index("variant").loc["mot"]
    assert mot["reference_harmonize"] == "none" and mot["n_pairs"] == 3
    assert mot["mean_diff"] == pytest.approx((0.08 + 0.02 + 0.05) / 3)


@pytest.mark.slow
def test_ablate_runs_each_cell_with_and_without_combat_and_reports_both(workdir, capsys):
    from mlflow.tracking import MlflowClient

    from mot_neuro.cli import main

    grid = ["ablate", "--config", DEMO, "--variants", "mot", "--drop", "none", "--folds", "0", "1"]
    grid += ["--set", "trainer.max_epochs=1", "--name", "harm"]
    # the config has no harmonize settings: a combat cell would have nothing to run
    assert main([*grid, "--harmonize", "none", "combat"]) == 2
    assert "this config has none" in capsys.readouterr().err
    assert main([*grid, "--harmonize", "none", "combat", "--data.harmonize", json.dumps(COMBAT)]) == 0
    out = workdir / "outputs" / "ablation" / "harm"
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["harmonize"]) == {"none", "combat"}
    results = pd.read_csv(out / "results.csv")
    r2 = results[results["metric"] == "test/target/r2"].pivot(index="fold", columns="harmonize", values="value")
    assert r2.shape == (2, 2) and (r2["combat"] != r2["none"]).all()  # other inputs, other models
    effect = pd.read_csv(out / "harmonize_effect.csv").set_index(["variant", "harmonize", "metric"])
    row = effect.loc[("mot", "combat", "test/target/r2")]
    assert row["n_pairs"] == 2 and row["mean_diff"] == pytest.approx((r2["combat"] - r2["none"]).mean())
    assert (out / "harmonize-combat" / "ablation.png").is_file()
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mot-neuro")
    cells = {
        r.data.tags["mot_neuro.cell"]: r
        for r in client.search_runs([experiment.experiment_id])
        if "mot_neuro.cell" in r.data.tags
    }
    assert set(cells) == {f"mot__drop-none__seed0__fold{f}__harmonize-{h}" for f in (0, 1) for h in ("none", "combat")}

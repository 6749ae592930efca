"""What a run on a real cohort records in MLflow about relatedness and harmonisation: counts, never IDs."""

from __future__ import annotations

import pytest
from helpers import Case


@pytest.mark.slow  # fits through the CLI
def test_mlflow_gets_the_related_group_and_combat_counts(case: Case):
    import mlflow

    eids = case.participants["eid"].astype(str).tolist()
    pairs = [(eids[0], eids[1], 0.25), (eids[1], eids[2], 0.12), (eids[3], eids[4], 0.01)]  # a chain; one too far
    relatedness = case.path("rel.dat")
    relatedness.write_text("ID1 ID2 HetHet IBS0 Kinship\n" + "".join(f"{a} {b} 0.1 0.0 {k}\n" for a, b, k in pairs))
    harmonize = '{"method": "combat", "batch": "site", "covariates": ["age", "sex"], "modalities": ["brain"]}'
    fast = ("--trainer.fast_dev_run", "false", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1")
    status, err = case.run(
        *("--data.relatedness", str(relatedness), "--data.harmonize", harmonize, "--test_after_fit", "false"),
        *fast,
        data=case.data_config(),
    )
    assert status == 0, err[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{case.path('mlflow.db')}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    params = run.data.params
    assert params["split/related_groups"] == "1"  # eids 0-1-2 chained; 3-4 below the threshold
    assert params["split/largest_related_group"] == "3"
    n_train = int(params["split/n_train"])
    assert params["harmonize/brain/n_train"] == str(n_train)
    assert 0 < int(params["harmonize/brain/n_fit"]) <= n_train

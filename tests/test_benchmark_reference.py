"""The boolean-mask MoT in benchmarks/ computes what MoTBackbone computes, so the benchmark
compares routing cost and nothing else."""

from __future__ import annotations

import sys

import torch
from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from mask_reference import MaskRoutedMoT  # noqa: E402

from mot_neuro.model import ModalityLayout, MoTBackbone, MoTConfig  # noqa: E402


def test_mask_routed_reference_matches_backbone():
    layout = ModalityLayout.from_counts({"gene": 6, "brain": 8, "behaviour": 4})
    torch.manual_seed(0)
    cfg = MoTConfig(layout.names, dim=32, n_layers=2, n_heads=4, norm_placement="output")
    model = MoTBackbone(cfg)
    reference = MaskRoutedMoT(32, 2, 4, cfg.ffn_hidden_dim, 3)
    x = torch.randn(3, layout.seq_len, 32)
    ids = layout.modality_ids().expand(3, -1)
    perm = torch.randperm(layout.seq_len)
    masks = [ids[:, perm] == i for i in range(3)]
    assert not torch.allclose(reference(x[:, perm], masks), model(x, layout)[:, perm], atol=1e-3)
    reference.copy_from(model)
    torch.testing.assert_close(reference(x[:, perm], masks), model(x, layout)[:, perm], rtol=1e-5, atol=1e-5)


def test_benchmark_uses_the_model_specification():
    import mask_reference

    from mot_neuro.model import reference

    assert mask_reference.MaskRoutedMoT is reference.MaskRoutedMoT


def test_benchmark_runs_and_reports_ratios():
    import backbone

    result = backbone.main(
        [
            "--batch",
            "2",
            "--segments",
            "4",
            "6",
            "2",
            "--dim",
            "16",
            "--heads",
            "2",
            "--layers",
            "1",
            "--reps",
            "2",
            "--warmup",
            "1",
        ]
    )
    for key in ("mot_fixed_vs_dense", "mot_grouped_vs_dense", "mot_general_vs_dense", "mask_reference_vs_dense"):
        assert result[key] > 0

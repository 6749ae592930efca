"""Interpretation of trained models: token attributions (:mod:`mot_neuro.explain.attributions`)."""

from mot_neuro.explain.attributions import (
    ALL_TOKENS,
    Attributions,
    Explainable,
    aggregate_attributions,
    attribution_table,
    explainable,
    integrated_gradients,
    occlusion,
    target_output,
)

__all__ = [
    "ALL_TOKENS",
    "Attributions",
    "Explainable",
    "aggregate_attributions",
    "attribution_table",
    "explainable",
    "integrated_gradients",
    "occlusion",
    "target_output",
]

"""MoT routed the way the published reference routes: boolean masks at every projection.

The implementation is the model package's executable specification, :mod:`mot_neuro.model.reference`
(for each modality and each projection the tokens are picked with ``x[mask]`` and merged back by masked
assignment). It is the comparison point for ``benchmarks/backbone.py``; it computes the same function as
``MoTBackbone`` with the same weights (``tests/test_mot_spec.py``, ``tests/test_benchmark_reference.py``),
so the benchmark compares routing cost only. Not for use in models.
"""

from __future__ import annotations

from mot_neuro.model.reference import MaskRoutedMoT, MaskRoutedMoTBlock

__all__ = ["MaskRoutedMoT", "MaskRoutedMoTBlock"]

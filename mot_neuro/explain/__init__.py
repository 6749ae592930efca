"""Interpretation of trained models: token attributions (:mod:`mot_neuro.explain.attributions`)."""

from mot_neuro.explain import attributions
from mot_neuro.explain.attributions import *  # noqa: F403  (the public names, listed once in attributions)

__all__ = attributions.__all__

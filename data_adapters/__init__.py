"""Readers that turn neuro-omics files into modality-tagged token arrays (numpy/pandas/nibabel; no torch)."""

from .core import DEFAULT_ID_COLUMN, AdapterError, TokenizedModality, normalize_ids

__all__ = ["DEFAULT_ID_COLUMN", "AdapterError", "TokenizedModality", "normalize_ids"]

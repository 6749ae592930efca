"""Data side of mot-neuro: saved splits, fold-safe preprocessing and batching."""

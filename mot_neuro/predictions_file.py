"""The ``--predictions_file`` of ``fit`` and ``test``: one row per test subject and observed target, written
atomically as parquet. Subject IDs never go in: ``row`` is the subject's position in the cohort."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PREDICTION_COLUMNS = ("row", "target", "kind", "truth", "score")
"""Columns of ``--predictions_file`` (then ``score_0`` .. ``score_{K-1}`` when a target is multiclass)."""


def write_test_predictions(model, path: str | os.PathLike) -> Path | None:
    """Write the module's last test predictions (:meth:`NeuroOmicsModule.test_predictions_table`) to ``path`` as
    parquet, atomically (a temporary file beside it, then renamed): readers see the previous file or the whole new
    one. One row per (subject, target) with an observed target: ``row`` (the subject's position in the cohort,
    never its ID), ``target``, ``kind``, ``truth`` (binary 0/1, multiclass class index, regression in the target's
    units), ``score`` (binary: P(class 1); regression: the prediction in the target's units; multiclass: NaN) and
    ``score_<k>`` (multiclass class probabilities). Returns the path, or None when there was nothing to write."""
    import io

    from data_adapters.core import AdapterError, atomic_write_bytes, storage_problem

    table = model.test_predictions_table()
    if table is None:
        print(f"note: no test predictions to write to {path} (the model has no supervised target)", file=sys.stderr)
        return None
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as err:
        folder = Path(path).parent
        fix = "point --predictions_file at a writable folder with space"
        raise AdapterError(storage_problem(err, folder, f"writing {Path(path).name}", fix), file=folder) from err
    print(f"test predictions ({table['row'].nunique()} subjects, {len(table)} rows) written to {path}")
    return Path(path)

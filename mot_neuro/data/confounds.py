"""Confounds fitted on a fold's training rows: which are categorical, their statistics (a numeric confound's
mean and SD, a categorical one's categories and shares) and the design matrix regressed out of every slot.

The design is an intercept, the numeric confounds z-scored with training statistics, and the categorical
confounds one-hot coded and centred by their training shares. A confound is categorical when it holds text or
when it is declared in ``categorical_confounds``, whatever its dtype (see :mod:`mot_neuro.data.preprocess`).
A category is matched by value (:func:`~mot_neuro.data.column_values.category_label`); a missing or unseen
category gives an all-zero row in its centred one-hot block, i.e. the training average, like a missing
numeric confound (z = 0).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from data_adapters.core import AdapterError

from .column_values import as_float, category_labels, is_numeric, number_label, refuse_beyond_float32
from .scaling import scaled_mean_sd, usable_sd

# A numeric confound not declared categorical, with this many distinct whole-number values or fewer in the
# training rows (and at least 3), is warned about: UK Biobank's assessment centre (field 54) has about 26 codes
# in a whole-cohort extract and multi-site consortia about 20, while age in whole years spans 30 to 40 values or
# more. A quantity with few whole values (a narrow age band, years of education) gets a harmless log line.
FEW_CODES = 30

log = logging.getLogger(__name__)


def check_categorical_confounds(
    confounds: Sequence[str], categorical_confounds: Sequence[str], *, prefix: str = ""
) -> list[str]:
    """The declared categorical confounds, in the order of ``confounds``; a name that is not a confound is
    refused in one line naming it (a declaration must not be silently ignored). ``prefix`` goes before the
    option names in the message (``"data."`` for a data config)."""
    declared = [categorical_confounds] if isinstance(categorical_confounds, str) else list(categorical_confounds or ())
    declared = [str(name) for name in declared]
    confounds = [confounds] if isinstance(confounds, str) else [str(name) for name in confounds or ()]
    for name in declared:
        if name not in confounds:
            raise AdapterError(
                f"{prefix}categorical_confounds lists {name!r}, which is not in {prefix}confounds {confounds};"
                f" a categorical confound must also be listed under {prefix}confounds (or drop it from"
                f" {prefix}categorical_confounds)"
            )
    return [name for name in confounds if name in set(declared)]


def check_confound_range(participants: pd.DataFrame, confounds: Sequence[str]) -> None:
    """Confounds are float64, but beyond float32's range they are data errors, as in targets and features."""
    for column in confounds:
        refuse_beyond_float32(participants, column, "confound", "its regression would overflow")


def fit_confounds(
    participants: pd.DataFrame, rows: np.ndarray, confounds: Sequence[str], categorical: Sequence[str]
) -> list[dict]:
    """Per confound, in order, its training statistics from ``rows``: ``{"name", "kind": "numeric", "mean",
    "sd"}`` or ``{"name", "kind": "categorical", "categories", "shares"}``."""
    specs = []
    for column in confounds:
        series = participants[column].iloc[rows]
        if series.isna().all():
            raise AdapterError(
                "confound has no observed value in the training rows; fill it in or drop it", column=column
            )
        if is_numeric(series) and column not in categorical:
            values = as_float(series)
            _warn_if_codes(column, values)
            mean, sd = scaled_mean_sd(values)  # scaled: squares of values near 1e300 overflow float64
            if not (np.isfinite(mean) and np.isfinite(sd)):
                raise AdapterError(
                    "confound's training mean or SD is not finite; check the column's values", column=column
                )
            sd = sd if usable_sd(sd, mean) else 1.0
            specs.append({"name": column, "kind": "numeric", "mean": mean, "sd": sd})
        else:
            labels = pd.Series(category_labels(series), dtype=object).dropna()
            if labels.empty:  # only missing-value text such as "NA" or ""
                raise AdapterError(
                    "confound has no observed value in the training rows; fill it in or drop it", column=column
                )
            counts = labels.value_counts().sort_index()
            specs.append(
                {
                    "name": column,
                    "kind": "categorical",
                    "categories": counts.index.tolist(),
                    "shares": (counts.to_numpy() / counts.sum()).tolist(),
                }
            )
    return specs


def _warn_if_codes(
    column: str, values: np.ndarray, *, role: str = "confound", option: str = "categorical_confounds"
) -> None:
    """Log a numeric confound whose training values look like category codes (:data:`FEW_CODES`). ``role``
    and ``option`` name the column's role and the option declaring categories (ComBat's covariates:
    ``"harmonize covariate"``, ``"harmonize.categorical_covariates"``)."""
    distinct = np.unique(values[~np.isnan(values)])
    # two levels are not warned about: with the intercept, the number and one centred dummy span one space
    if 3 <= len(distinct) <= FEW_CODES and bool(np.all(distinct == np.round(distinct))):
        log.warning(
            "%s %r holds %d distinct whole numbers (%s) and is regressed as one number, a linear trend"
            " across them; if they are codes (site, assessment centre, scanner, batch) declare them with the"
            " data option %s: [%s]",
            role,
            column,
            len(distinct),
            ", ".join(number_label(v) for v in distinct[:3]) + (", ..." if len(distinct) > 3 else ""),
            option,
            column,
        )


def confound_design(
    participants: pd.DataFrame, rows: np.ndarray, specs: Sequence[dict]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Design matrix [len(rows), C] (intercept first) and, per categorical confound, which of the rows hold a
    category not seen in the training rows (bool [len(rows)])."""
    columns = [np.ones((len(rows), 1))]
    unseen = {}
    for spec in specs:
        if spec["name"] not in participants.columns:
            raise AdapterError("confound not in this cohort's participants", column=spec["name"])
        series = participants[spec["name"]].iloc[rows]
        if spec["kind"] == "numeric":
            z = (as_float(series) - spec["mean"]) / spec["sd"]
            columns.append(np.nan_to_num(z, nan=0.0)[:, None])
            continue
        position = {label: i for i, label in enumerate(spec["categories"])}
        labels = pd.Series(category_labels(series), dtype=object)
        observed = labels.notna().to_numpy()
        codes = labels.map(position).fillna(-1).to_numpy(dtype=np.int64)
        block = np.zeros((len(rows), len(position)))
        known = codes >= 0
        block[known] = -np.asarray(spec["shares"])
        block[known, codes[known]] += 1.0
        columns.append(block)
        unseen[spec["name"]] = observed & ~known
    return np.hstack(columns), unseen

"""ComBat harmonisation of site (scanner) effects, fitted on the training rows of a fold only.

Data option (``NeuroOmicsDataModule(harmonize=...)``)::

    harmonize: {method: combat, batch: site, covariates: [age, sex], modalities: [brain]}

``method: none`` (or ``harmonize: null``) turns it off. ``batch`` is the participants column holding each
subject's site or scanner; ``covariates`` are participants columns whose effects ComBat preserves (never a
target: harmonising with the outcome in the model would leak it into the inputs); ``categorical_covariates``
(optional, a subset of ``covariates``) declares integer-coded categories, as ``categorical_confounds`` does
(text and boolean columns are categories anyway, other numbers one continuous column each; a numeric covariate
not declared whose training values are 3 to 30 distinct whole numbers, such as ``ethnicity_code`` 1..4, is
logged as likely codes, as an undeclared confound is);
``modalities`` names the modalities harmonised (required: genotypes, say, must not be). ``batch`` and
``covariates`` may be any column of the cohort's participants table: the cohort keeps every participants
column, not only targets and confounds, so they need not be listed under ``confounds`` (list them there only to
regress them out as well: a site confound regressed after ComBat finds the site means of the training rows
already equal, which is harmless; an age confound removes the age effect ComBat preserved, which is what a
confound means).

Order of the steps, per modality and slot (a numeric token feature that ``feature_mask`` keeps): raw ->
ComBat -> confound regression -> standardisation (:mod:`mot_neuro.data.preprocess`). Categorical tokens pass
through untouched.

The fit uses ``neuroCombat.neuroCombat`` (parametric empirical Bayes, the reference implementation, MIT) on
the training rows only; its prints are silenced. Its own ``neuroCombatFromTraining`` cannot serve held-out rows:
it replaces every subject's covariate effects by the training average. So the estimates are kept (per site
``gamma.star``, ``delta.star``; per feature ``var.pooled``, ``stand.mean``) and the covariate coefficients are
recovered from ``mod.mean`` (the fitted covariate effects of the training rows, linear in the covariate design)
by least squares on our covariate design (an intercept, each continuous covariate as neuroCombat sees it, i.e.
rounded to float32, and one indicator per category of a categorical covariate but the first). Any row is then
harmonised by::

    s = (x - stand_mean - X_cov B) / sqrt(var_pooled)
    x* = (s - gamma*[site]) / sqrt(delta*[site]) * sqrt(var_pooled) + stand_mean + X_cov B

which on the training rows equals neuroCombat's output (``tests/test_harmonize.py`` checks it to 1e-9).

Missing values. ComBat needs complete data, so the fit uses the training subjects that have every harmonised
feature of the modality observed (token present, value not NaN) and a known site and covariates ("complete
cases"; the counts, overall and per site, are logged and kept in the state as ``n_train``, ``n_fit`` and
``n_fit_per_site``). Applying is per value: a missing value stays missing (NaN in, NaN out; imputation comes
later), so subjects left out of the fit are harmonised wherever they are observed. A missing covariate of a row
being harmonised takes the training mean (continuous) or the training average of the categories (categorical),
as does a category unseen in the training rows; a missing or unseen *site* cannot be harmonised and is refused
(one line naming the unseen sites, or the batch column and the number of subjects without a site: fill them in
or drop those subjects), unless the row has no observed value of the modality (nothing to harmonise). The sites
ComBat fits are those of the training subjects with any observed value of the modality: a site whose training
subjects all lack the modality has nothing to harmonise and is left out (a held-out subject of that site with
data is then refused as of an unseen site).

Refused with one line each: an unknown method or key, a covariate that is a target or the batch column, a
modality not in the cohort, a batch or covariate column not in participants, fewer than 2 sites in the fit rows,
a site with fewer than 2 complete training subjects (its scale cannot be estimated), a feature constant in the
fit rows, a modality with fewer than 2 harmonised features (the empirical Bayes priors pool over features),
covariates collinear with the sites, and held-out subjects of a site absent from training (``group: site`` puts
whole sites in test: ComBat has no estimate for them; split with ``stratify: site`` instead, so that every site
trains).

Memory: the fit holds the complete-case training matrix (subjects x harmonised features, float64), and
neuroCombat makes a few copies: fine for regional measures, heavy for a 10^5-feature connectome.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from data_adapters.core import AdapterError
from data_adapters.io import release_pages

from .column_values import category_labels, is_numeric
from .confounds import _warn_if_codes
from .slot_statistics import blocks, numeric_slots

log = logging.getLogger(__name__)

METHODS = ("none", "combat")
KEYS = ("method", "batch", "covariates", "categorical_covariates", "modalities")
RECOVERY_TOLERANCE = 1e-6  # relative residual of the covariate-coefficient recovery (float64 round-off: ~1e-13)


def _names(value, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence):
        raise AdapterError(f"{what} must be a list of column names, got {value!r}")
    return [str(v) for v in value]


def check_harmonize(
    harmonize: Mapping | None,
    *,
    targets: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
    prefix: str = "data.",
) -> dict | None:
    """The harmonisation settings as a plain dict (``method, batch, covariates, categorical_covariates,
    modalities``), or None when off (``None`` or ``method: none``); a bad setting is refused in one line naming
    it. ``targets`` and ``modalities``, when given, are checked against (a covariate is never a target)."""
    key = f"{prefix}harmonize"
    if harmonize is None:
        return None
    if not isinstance(harmonize, Mapping):
        raise AdapterError(f"{key} must be a mapping such as {{method: combat, batch: site, ...}}, got {harmonize!r}")
    unknown = sorted(set(map(str, harmonize)) - set(KEYS))
    if unknown:
        raise AdapterError(f"{key} has unknown key(s) {unknown}; known: {list(KEYS)}")
    method = harmonize.get("method", "combat")
    method = "none" if method is None else str(method).lower()
    if method not in METHODS:
        raise AdapterError(f"{key}.method {harmonize.get('method')!r} is unknown; choose one of {list(METHODS)}")
    if method == "none":
        return None
    batch = harmonize.get("batch")
    if not isinstance(batch, str) or not batch:
        raise AdapterError(f"{key}.batch must name the participants column holding the site, got {batch!r}")
    covariates = _names(harmonize.get("covariates"), f"{key}.covariates")
    categorical = _names(harmonize.get("categorical_covariates"), f"{key}.categorical_covariates")
    chosen = _names(harmonize.get("modalities"), f"{key}.modalities")
    if len(set(covariates)) != len(covariates):
        raise AdapterError(f"{key}.covariates {covariates} list a column twice")
    if batch in covariates:
        raise AdapterError(f"{key}.covariates lists the batch column {batch!r}; ComBat removes its effect")
    stray = [c for c in categorical if c not in covariates]
    if stray:
        raise AdapterError(f"{key}.categorical_covariates lists {stray}, which are not in {key}.covariates")
    outcome = [c for c in [batch, *covariates] if targets is not None and c in set(targets)]
    if outcome:
        raise AdapterError(
            f"{key} names the target {outcome[0]!r} as its batch or a covariate: preserving (or removing) the"
            " outcome in the inputs would leak it; drop it from the harmonisation"
        )
    if not chosen:
        raise AdapterError(f"{key}.modalities must name the modalities to harmonise (e.g. [brain])")
    if len(set(chosen)) != len(chosen):
        raise AdapterError(f"{key}.modalities {chosen} list a modality twice")
    if modalities is not None:
        missing = [m for m in chosen if m not in set(modalities)]
        if missing:
            raise AdapterError(f"{key}.modalities names unknown modality(ies) {missing}; known: {list(modalities)}")
    return {
        "method": method,
        "batch": batch,
        "covariates": covariates,
        "categorical_covariates": [c for c in covariates if c in set(categorical)],
        "modalities": chosen,
    }


def check_columns(participants: pd.DataFrame, settings: Mapping) -> None:
    """The batch and covariate columns must be participants columns of the cohort."""
    for role, column in [("batch", settings["batch"])] + [("covariates", c) for c in settings["covariates"]]:
        if column not in participants.columns:
            raise AdapterError(
                f"harmonize.{role} column {column!r} is not in the cohort's participants columns"
                f" {list(participants.columns)[:20]}; add it to the participants table"
            )


# ------------------------------------------------------------------------------------------------ covariates
def _continuous(series: pd.Series) -> np.ndarray:
    """A continuous covariate as neuroCombat's design holds it: float64 of the float32-rounded value."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return values.astype(np.float32).astype(np.float64)


def _is_categorical(series: pd.Series, name: str, settings: Mapping) -> bool:
    return name in settings["categorical_covariates"] or not is_numeric(series) or series.dtype == bool


def covariate_values(participants: pd.DataFrame, rows: np.ndarray, settings: Mapping) -> dict[str, np.ndarray]:
    """Per covariate, its values of ``rows``: float (NaN missing) or category labels (None missing)."""
    out = {}
    for name in settings["covariates"]:
        series = participants[name].iloc[rows]
        out[name] = category_labels(series) if _is_categorical(series, name, settings) else _continuous(series)
    return out


def _observed(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.array([v is not None for v in values], dtype=bool)
    return ~np.isnan(values)


def fit_covariates(values: Mapping[str, np.ndarray]) -> list[dict]:
    """Training statistics of the covariates (of the fit rows): a continuous one's mean, a categorical one's
    sorted categories (as neuroCombat orders them) and shares."""
    specs = []
    for name, column in values.items():
        if column.dtype == object:
            labels, counts = np.unique(column.astype(str), return_counts=True)
            specs.append(
                {
                    "name": name,
                    "kind": "categorical",
                    "categories": labels.tolist(),
                    "shares": (counts / counts.sum()).tolist(),
                }
            )
        else:
            specs.append({"name": name, "kind": "numeric", "mean": float(column.mean())})
    return specs


def covariate_design(values: Mapping[str, np.ndarray], specs: Sequence[Mapping]) -> np.ndarray:
    """[rows, C]: an intercept, each continuous covariate (missing: training mean), and per categorical
    covariate one indicator per category but the first (missing or unseen: the training shares)."""
    n = len(next(iter(values.values()))) if values else 0
    columns = [np.ones((n, 1))]
    for spec in specs:
        column = values[spec["name"]]
        if spec["kind"] == "numeric":
            columns.append(np.where(np.isnan(column), spec["mean"], column)[:, None])
            continue
        position = {label: i for i, label in enumerate(spec["categories"])}
        block = np.tile(np.asarray(spec["shares"])[1:], (n, 1))
        codes = np.array([position.get(v, -1) if v is not None else -1 for v in column], dtype=np.int64)
        known = codes >= 0
        block[known] = 0.0
        hit = known & (codes > 0)
        block[np.flatnonzero(hit), codes[hit] - 1] = 1.0
        columns.append(block)
    return np.hstack(columns)


# ------------------------------------------------------------------------------------------------ fit
def _feature_name(modality, slot: int) -> str:
    token = modality.token_names[slot // modality.n_features]
    feature = slot % modality.n_features
    names = getattr(modality, "feature_names", None)
    return f"token {token!r}" + (f" feature {names[feature]!r}" if names and modality.n_features > 1 else "")


def fit_combat(values: np.ndarray, sites: np.ndarray, covariates: Mapping[str, np.ndarray]) -> tuple[dict, np.ndarray]:
    """ComBat (neuroCombat, parametric empirical Bayes) on complete data: ``values`` [n, S] float64,
    ``sites`` [n] labels, ``covariates`` name -> [n] values (float, or object labels for categories), all
    observed. Returns the JSON-able estimates (see the module docstring) and the covariate design of the rows."""
    from neuroCombat import neuroCombat

    specs = fit_covariates(covariates)
    frame = pd.DataFrame({"__site__": np.asarray(sites, dtype=str)})
    categorical, continuous = [], []
    for spec in specs:
        column = covariates[spec["name"]]
        frame[spec["name"]] = column.astype(str) if spec["kind"] == "categorical" else column
        (categorical if spec["kind"] == "categorical" else continuous).append(spec["name"])
    with contextlib.redirect_stdout(io.StringIO()):  # neuroCombat prints its progress
        result = neuroCombat(
            np.ascontiguousarray(values.T, dtype=np.float64),
            frame,
            "__site__",
            categorical_cols=categorical,
            continuous_cols=continuous,
        )
    estimates = result["estimates"]
    design = covariate_design(covariates, specs)
    mod_mean = np.asarray(estimates["mod.mean"], dtype=np.float64).T.reshape(len(values), -1)
    coef = np.linalg.lstsq(design, mod_mean, rcond=None)[0]
    residual = np.abs(design @ coef - mod_mean).max() if mod_mean.size else 0.0
    if residual > RECOVERY_TOLERANCE * max(1.0, float(np.abs(mod_mean).max())):
        raise AdapterError(
            f"harmonize: the covariate effects of ComBat could not be recovered (residual {residual:.3g})"
        )
    state = {
        "sites": [str(s) for s in estimates["batches"]],
        "gamma": np.asarray(estimates["gamma.star"], dtype=np.float64).tolist(),
        "delta": np.asarray(estimates["delta.star"], dtype=np.float64).tolist(),
        "var_pooled": np.asarray(estimates["var.pooled"], dtype=np.float64).ravel().tolist(),
        "stand_mean": np.asarray(estimates["stand.mean"], dtype=np.float64)[:, 0].tolist(),
        "covariates": specs,
        "coef": coef.tolist(),
    }
    fitted = [np.asarray(state[k], dtype=np.float64) for k in ("gamma", "delta", "var_pooled", "stand_mean", "coef")]
    if not all(np.isfinite(a).all() for a in fitted) or (np.asarray(state["delta"]) <= 0).any():
        raise AdapterError("harmonize: ComBat's estimates are not finite; check the harmonised features' values")
    return state, design


def fit_modality_combat(
    modality, rows: np.ndarray, participants: pd.DataFrame, settings: Mapping, *, block_rows: int = 4096
) -> dict:
    """ComBat of one modality on the complete-case training ``rows`` (see the module docstring)."""
    name = modality.name
    slots, tokens = numeric_slots(modality)
    if len(slots) < 2:
        raise AdapterError(
            f"harmonize: modality {name!r} has {len(slots)} numeric feature(s); ComBat's empirical Bayes pools"
            " over features and needs at least 2"
        )
    check_columns(participants, settings)
    sites = category_labels(participants[settings["batch"]].iloc[rows])
    covariates = covariate_values(participants, rows, settings)
    for covariate, column in covariates.items():
        if column.dtype != object:  # a number: codes (ethnicity 1..4) would be one linear column
            _warn_if_codes(covariate, column, role="harmonize covariate", option="harmonize.categorical_covariates")
    keep = _observed(sites)
    for column in covariates.values():
        keep &= _observed(column)
    with_data = np.zeros(len(rows), dtype=bool)  # any observed value of the modality
    parts = []
    for block in blocks(len(rows), block_rows):
        raw = np.asarray(modality.values[rows[block]]).reshape(len(rows[block]), -1)[:, slots].astype(np.float64)
        present = np.asarray(modality.present[rows[block]])[:, tokens]
        release_pages(modality.values, modality.present)
        observed = present & np.isfinite(raw)
        with_data[block] = observed.any(axis=1)
        keep[block] &= observed.all(axis=1)
        parts.append(raw[keep[block]])
    values = np.concatenate(parts) if parts else np.zeros((0, len(slots)))
    fit_sites = sites[keep].astype(str)
    labels, counts = np.unique(fit_sites, return_counts=True)
    per_site = {str(s): int(c) for s, c in zip(labels, counts, strict=True)}
    # the sites to harmonise: those of training subjects with data (a site whose subjects all lack the
    # modality has nothing to harmonise; a held-out subject of it with data is refused as of an unseen site)
    all_sites = sorted({str(s) for s in sites[_observed(sites) & with_data]})
    without_data = sorted({str(s) for s in sites[_observed(sites)]} - set(all_sites))
    small = [s for s in all_sites if per_site.get(s, 0) < 2]
    if len(all_sites) < 2:
        raise AdapterError(
            f"harmonize: ComBat needs at least 2 sites, but the training rows of modality {name!r} with data hold"
            f" only {all_sites} in column {settings['batch']!r}"
        )
    if small:
        raise AdapterError(
            f"harmonize: site(s) {small} have fewer than 2 training subjects with every feature of modality"
            f" {name!r}, the site and the covariates observed (complete cases per site: {per_site}); ComBat cannot"
            " estimate their effect: merge small sites, or drop their subjects"
        )
    spread = values.max(axis=0) - values.min(axis=0)
    if (spread == 0).any():
        slot = int(slots[np.flatnonzero(spread == 0)[0]])
        raise AdapterError(
            f"harmonize: modality {name!r}, {_feature_name(modality, slot)} is constant in the training rows"
            " ComBat fits on; drop it from the modality (it has no variance to harmonise)"
        )
    fit_covs = {k: v[keep] for k, v in covariates.items()}
    onehot = (fit_sites[:, None] == labels[None, :]).astype(np.float64)
    full = np.hstack([onehot, covariate_design(fit_covs, fit_covariates(fit_covs))[:, 1:]])
    if np.linalg.matrix_rank(full) < full.shape[1]:
        raise AdapterError(
            f"harmonize: covariates {settings['covariates']} are collinear with the sites in the training rows"
            f" of modality {name!r} (a covariate constant there, or one that only varies between sites); drop it"
        )
    state, _ = fit_combat(values, fit_sites, fit_covs)
    state.update(
        slots=slots.tolist(),
        n_features=int(modality.n_features),
        batch=settings["batch"],
        n_train=len(rows),
        n_fit=int(keep.sum()),
        n_fit_per_site=per_site,
        sites_without_data=without_data,
    )
    log.info(
        "harmonize: ComBat on modality %r fitted on %d of %d training subjects (complete cases), per site %s",
        name,
        state["n_fit"],
        len(rows),
        per_site,
    )
    return state


# ------------------------------------------------------------------------------------------------ apply
class CombatApplier:
    """Applies a fitted ComBat state to rows of one cohort; the site and covariate design of every row are made
    once (small: rows x covariate columns), each call takes its rows with one fancy index."""

    def __init__(self, state: Mapping, participants: pd.DataFrame, modality_name: str):
        if state["batch"] not in participants.columns:
            raise AdapterError(f"harmonize: batch column {state['batch']!r} is not in this cohort's participants")
        for spec in state["covariates"]:
            if spec["name"] not in participants.columns:
                raise AdapterError(f"harmonize: covariate {spec['name']!r} is not in this cohort's participants")
        self.name = modality_name
        self.batch = state["batch"]
        self.slots = np.asarray(state["slots"], dtype=np.int64)
        self.sites = list(state["sites"])
        self.without_data = set(state.get("sites_without_data", ()))  # training sites all lacking the modality
        self.gamma = np.asarray(state["gamma"], dtype=np.float64)
        self.scale = np.sqrt(np.asarray(state["delta"], dtype=np.float64))
        self.sd = np.sqrt(np.asarray(state["var_pooled"], dtype=np.float64))
        self.mean = np.asarray(state["stand_mean"], dtype=np.float64)
        self.coef = np.asarray(state["coef"], dtype=np.float64).reshape(-1, len(self.slots))
        self.tokens = self.slots // int(state["n_features"])
        self.labels = category_labels(participants[self.batch])
        position = {s: i for i, s in enumerate(self.sites)}
        self.site = np.array([position.get(s, -1) if s is not None else -1 for s in self.labels], dtype=np.int64)
        values = {}
        for spec in state["covariates"]:
            series = participants[spec["name"]]
            values[spec["name"]] = category_labels(series) if spec["kind"] == "categorical" else _continuous(series)
        self.design = covariate_design(values, state["covariates"])  # rows x covariate columns

    def __call__(self, rows: np.ndarray, flat: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
        """Harmonised copy of ``flat`` [len(rows), T*F] (float64; NaN stays NaN), only ``slots`` changed.
        ``present`` [len(rows), T]: the tokens present (a row of unknown site with none is not refused)."""
        out = np.array(flat, dtype=np.float64)
        x = out[:, self.slots]
        site = self.site[rows]
        observed = np.isfinite(x)
        if present is not None:
            observed &= np.asarray(present, dtype=bool)[:, self.tokens]
        unknown = (site < 0) & observed.any(axis=1)
        if unknown.any():
            self._refuse(rows[unknown])
        site = np.maximum(site, 0)  # a row of unknown site has nothing observed: what it holds is never used
        base = self.mean + self.design[rows] @ self.coef
        s = (x - base) / self.sd
        out[:, self.slots] = (s - self.gamma[site]) / self.scale[site] * self.sd + base
        return out

    def _refuse(self, rows: np.ndarray) -> None:
        labels = self.labels[rows]
        unseen = sorted({str(s) for s in labels if s is not None})
        n_missing = int(sum(s is None for s in labels))
        n_unseen = len(rows) - n_missing
        said = []
        if unseen:
            what = f"site(s) {unseen[:5]}" + (f" (and {len(unseen) - 5} more)" if len(unseen) > 5 else "")
            why = (
                f"the training subjects of those sites all lack modality {self.name!r}, so ComBat has no estimate"
                " for them; leave those subjects out of the modality, or give the sites' training subjects data"
                if set(unseen) <= self.without_data
                else f"ComBat has no estimate for them. Split with stratify: {self.batch} instead of group:"
                f" {self.batch} so that every site trains, or leave those subjects out"
            )
            said.append(
                f"{n_unseen} subject(s) with modality {self.name!r} data have {what}, not among the training rows'"
                f" sites {self.sites[:5]}: {why}"
            )
        if n_missing:
            said.append(
                f"{n_missing} subject(s) with modality {self.name!r} data have no {self.batch!r} value (missing"
                f" in participants column {self.batch!r}): ComBat cannot harmonise a subject of unknown site;"
                f" fill in the missing sites in column {self.batch!r}, or drop those subjects"
            )
        raise AdapterError("harmonize: " + "; and ".join(said))


class _HarmonizedValues:
    """``modality.values`` as ComBat gives them: indexing with rows reads the raw rows and harmonises them."""

    def __init__(self, values, present, applier: CombatApplier):
        self._raw, self._present, self._applier = values, present, applier
        self.shape, self.ndim = values.shape, values.ndim

    def __getitem__(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1:
            raise TypeError("harmonised values are read by a 1-D array of row positions")
        raw = np.asarray(self._raw[rows], dtype=np.float64)
        present = np.asarray(self._present[rows], dtype=bool)
        release_pages(self._raw, self._present)
        flat = self._applier(rows, raw.reshape(len(rows), -1), present)
        return flat.reshape(raw.shape)


class HarmonizedModality:
    """A modality whose ``values`` are harmonised on read (everything else is the modality's own)."""

    def __init__(self, modality, applier: CombatApplier):
        self._modality = modality
        self.values = _HarmonizedValues(modality.values, modality.present, applier)

    def __getattr__(self, name):
        return getattr(self._modality, name)

"""Probe metrics on weighted test subjects, and their bootstrap CIs (the resampling schemes of ``mot_neuro.probe``).

Every metric is computed from per-subject weights, so a block of bootstrap resamples (a matrix of counts) is
scored without a Python loop over resamples. The notes here say why a metric is undefined or its CI limited.
"""

from __future__ import annotations

import numpy as np

RESAMPLING = {
    ("plain", False): "subjects",
    ("plain", True): "groups (cluster)",
    ("stratified", False): "subjects within class (stratified)",
    ("stratified", True): "groups (cluster) within class pattern (stratified)",
}
"""``resampling`` column: subjects or whole groups drawn with replacement; for the ranking metrics of a
classification target (:data:`STRATIFIED_METRICS`) within each class (with groups: within each set of classes a
group holds), keeping the test set's counts; ``"none"`` when no resample was drawn."""
STRATIFIED_METRICS = ("auroc", "auprc")
"""Classification metrics resampled within class: they need every class in a resample, and they are conditional on
the class counts anyway (AUROC does not depend on them; AUPRC's baseline is the prevalence). Brier, ECE and
accuracy are defined in any resample and depend on the prevalence, so they are resampled plainly: held to the
test set's class counts, a constant classifier's accuracy would get a CI of zero width."""
MIN_VALID_FRACTION = 0.9
"""Below this share of valid resamples a CI is NaN: the rest would be a selected subset, not a bootstrap."""
FEW_CASES = 5
"""A class held by fewer test subjects (groups) than this gets a note: its few cases limit the CI."""
ECE_BINS = 10
_BLOCK_CELLS = 2_000_000  # resamples x subjects held at once while bootstrapping


def _levels(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending order of ``scores`` and where each run of tied scores starts in that order."""
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return order, starts


def _ranking_metrics(counts: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted AUROC and average precision per row of ``counts`` (NaN where one class has no weight).

    Ties are grouped into one threshold, as sklearn's ``roc_auc_score`` (ties count 1/2) and
    ``average_precision_score`` (one precision-recall point per distinct score) do.
    """
    order, starts = _levels(scores)
    ordered = counts[:, order]
    pos = np.add.reduceat(ordered * positive[order], starts, axis=1)  # weight of positives per score level
    neg = np.add.reduceat(ordered * (1.0 - positive[order]), starts, axis=1)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    defined = (n_pos > 0) & (n_neg > 0)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        tp = np.cumsum(pos[:, ::-1], axis=1)  # thresholds from the highest score down
        fp = np.cumsum(neg[:, ::-1], axis=1)
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
        auprc = (pos[:, ::-1] * precision).sum(axis=1) / n_pos
    return np.where(defined, auroc, np.nan), np.where(defined, auprc, np.nan)


def _calibration_error(counts: np.ndarray, confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Expected calibration error, 10 equal-width confidence bins: sum over bins |accuracy - confidence| * share."""
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, ECE_BINS - 1)
    onehot = np.zeros((len(confidence), ECE_BINS))
    onehot[np.arange(len(confidence)), bins] = 1.0
    gap = counts @ (onehot * (correct - confidence)[:, None])
    return np.abs(gap).sum(axis=1) / counts.sum(axis=1)


def _metric_values(kind: str, counts: np.ndarray, y: np.ndarray, pred: np.ndarray, classes=None) -> dict:
    """Every metric of ``kind`` for each row of ``counts`` (``[resamples, subjects]`` weights); NaN = undefined.

    ``pred``: regression predictions; binary P(class 1); multiclass probabilities ``[subjects, classes]`` in the
    order of ``classes``.
    """
    total = counts.sum(axis=1)
    if kind == "regression":
        # centred on the full test means first: the weighted moments below then lose no precision
        yc, pc_ = y - y.mean(), pred - pred.mean()
        mean_y, mean_p = counts @ yc / total, counts @ pc_ / total
        var_y = counts @ (yc * yc) / total - mean_y**2
        var_p = counts @ (pc_ * pc_) / total - mean_p**2
        cov = counts @ (yc * pc_) / total - mean_y * mean_p
        tiny_y = 1e-12 * max(float(np.var(y)), np.finfo(float).tiny)
        tiny_p = 1e-12 * max(float(np.var(pred)), np.finfo(float).tiny)
        with np.errstate(invalid="ignore", divide="ignore"):
            r2 = 1.0 - (counts @ (y - pred) ** 2 / total) / var_y
            pearson = cov / np.sqrt(var_y * var_p)
        return {
            "r2": np.where(var_y > tiny_y, r2, np.nan),
            "mae": counts @ np.abs(y - pred) / total,
            "pearson": np.where((var_y > tiny_y) & (var_p > tiny_p), np.clip(pearson, -1.0, 1.0), np.nan),
        }
    if kind == "binary":
        auroc, auprc = _ranking_metrics(counts, y, pred)
        return {
            "auroc": auroc,
            "auprc": auprc,
            "brier": counts @ (pred - y) ** 2 / total,
            "ece": _calibration_error(counts, pred, y),
        }
    classes = np.asarray(classes)
    per_class = [_ranking_metrics(counts, (y == c).astype(float), pred[:, k]) for k, c in enumerate(classes)]
    auroc = np.mean([a for a, _ in per_class], axis=0)  # NaN as soon as one class is undefined: macro needs all
    auprc = np.mean([p for _, p in per_class], axis=0)
    if not np.isin(y, classes).all():  # a test label the probe never saw: one-vs-rest over its classes is undefined
        auroc = auprc = np.full(len(counts), np.nan)
    correct = (classes[pred.argmax(axis=1)] == y).astype(float)
    return {
        "auroc": auroc,
        "auprc": auprc,
        "accuracy": counts @ correct / total,
        "ece": _calibration_error(counts, pred.max(axis=1), correct),
    }


def _resample_counts(
    rng: np.random.Generator, size: int, n: int, groups: np.ndarray | None, strata: np.ndarray | None = None
) -> np.ndarray:
    """``[size, n]`` bootstrap weights: how often each subject is drawn in each resample.

    The units drawn are the subjects, or with ``groups`` (a code 0..G-1 per subject) whole groups (a cluster
    bootstrap): a subject weighs as often as its group is drawn, so the CI reflects the group, not the visit or
    relative, as the unit of independent data. ``strata`` (a code per unit) makes it a stratified bootstrap: each
    stratum's units are drawn with replacement as many times as the stratum has units, so every resample keeps
    the stratum sizes. Draws: per stratum in ascending code order, ``rng.integers(0, units in it, (size, units
    in it))``; without strata, one stratum of all units."""
    units = n if groups is None else int(groups.max()) + 1 if len(groups) else 0
    strata = np.zeros(units, dtype=np.int64) if strata is None else np.asarray(strata)
    offsets = units * np.arange(size)[:, None]
    counts = np.zeros(size * units)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        picks = members[rng.integers(0, len(members), size=(size, len(members)))] + offsets
        counts += np.bincount(picks.ravel(), minlength=size * units)
    counts = counts.reshape(size, units)
    return counts if groups is None else counts[:, groups]


def _resampling(
    kind: str, y: np.ndarray, groups: np.ndarray | None, metric: str | None = None
) -> tuple[np.ndarray | None, str]:
    """(stratum code per resampled unit, or None for no strata; the ``resampling`` label) of ``metric``.

    Units are the subjects, or the groups 0..G-1 of ``groups``. A classification target's ranking metrics
    (:data:`STRATIFIED_METRICS`; ``metric=None`` means one of them) are stratified: by class, or with groups by
    the set of classes a group holds, the coarsest grouping of whole groups that still puts every class of the
    test set in every resample (strata by a group's majority class would not: a lone case in a family of
    controls could be left out). Everything else is resampled plainly."""
    grouped = groups is not None
    if kind == "regression" or (metric is not None and metric not in STRATIFIED_METRICS):
        return None, RESAMPLING["plain", grouped]
    _, label = np.unique(y, return_inverse=True)
    if not grouped:
        return label.reshape(-1), RESAMPLING["stratified", False]
    held = np.zeros((int(groups.max()) + 1 if len(groups) else 0, int(label.max()) + 1 if len(label) else 0), bool)
    held[groups, label.reshape(-1)] = True
    _, pattern = np.unique(held, axis=0, return_inverse=True)
    return pattern.reshape(-1), RESAMPLING["stratified", True]


def _bootstrap(
    kind, y, pred, classes, n_bootstrap: int, seed: int, groups: np.ndarray | None = None
) -> dict[str, tuple[float, float, float, int, int]]:
    """metric -> (value, ci_low, ci_high, valid resamples, resamples drawn); ``groups``: resample whole groups
    (codes 0..G-1).

    Each resampling scheme (:func:`_resampling`: plain, and stratified for a classification target's ranking
    metrics) draws its own ``n_bootstrap`` resamples from ``default_rng(seed)``, so every feature set with the same
    test subjects gets the same resamples. None are drawn (0) when every stratum has one unit (one test group,
    one subject per class): each resample would be the test set itself, a CI of zero width that would read as
    certainty. The CI is NaN when fewer than :data:`MIN_VALID_FRACTION` of the drawn resamples are valid."""
    n = len(y)
    point = _metric_values(kind, np.ones((1, n)), y, pred, classes)
    schemes: dict[str, list[str]] = {}
    for name in point:
        schemes.setdefault(_resampling(kind, y, groups, name)[1], []).append(name)
    out = {}
    for names in schemes.values():
        strata, _ = _resampling(kind, y, groups, names[0])
        units = np.bincount(strata) if strata is not None else [n if groups is None else len(np.unique(groups))]
        drawn = n_bootstrap if len(units) and max(units) > 1 else 0
        rng = np.random.default_rng(seed)
        draws = {name: [] for name in names}
        block = max(1, _BLOCK_CELLS // max(n, 1))
        for start in range(0, drawn, block):
            size = min(block, drawn - start)
            counts = _resample_counts(rng, size, n, groups, strata)
            values = _metric_values(kind, counts, y, pred, classes)
            for name in names:
                draws[name].append(values[name])
        for name in names:
            values = np.concatenate(draws[name]) if draws[name] else np.empty(0)
            values = values[np.isfinite(values)]
            enough = len(values) > 0 and len(values) >= MIN_VALID_FRACTION * drawn
            low, high = np.percentile(values, [2.5, 97.5]) if enough else (np.nan, np.nan)
            out[name] = (float(point[name][0]), float(low), float(high), int(len(values)), drawn)
    return {name: out[name] for name in point}


def _resampling_label(kind: str, metric: str, grouped: bool, drawn: int) -> str:
    if not drawn:
        return "none"
    stratified = kind != "regression" and metric in STRATIFIED_METRICS
    return RESAMPLING["stratified" if stratified else "plain", grouped]


def _undefined_note(kind: str, metric: str, y: np.ndarray, pred: np.ndarray, classes) -> str:
    """Why ``metric`` is undefined (NaN) on the whole test set, as :func:`_metric_values` decides it."""
    if kind == "regression":
        reasons = []
        if np.ptp(y) == 0:
            reasons.append("the test targets are all equal (constant truth)")
        if metric == "pearson" and np.ptp(pred) == 0:
            reasons.append("the probe predicts one value for every test subject (constant prediction)")
        return "undefined on the test set: " + (" and ".join(reasons) or "a zero variance")
    present = np.unique(y)
    if kind == "binary":
        return f"undefined on the test set: it holds only class {', '.join(f'{c:g}' for c in present)}"
    unseen = np.setdiff1d(present, classes)
    if len(unseen):
        listed = ", ".join(f"{c:g}" for c in unseen)
        return f"undefined on the test set: it holds class(es) {listed} the probe never saw in training"
    absent = ", ".join(f"{c:g}" for c in np.setdiff1d(classes, present))
    return f"undefined on the test set: class(es) {absent} absent there (one-vs-rest macro needs every class)"


def _resample_reason(kind: str, metric: str) -> str:
    """What makes ``metric`` undefined in a resample (as in :func:`_metric_values`)."""
    if kind == "regression":
        return "constant truth" if metric == "r2" else "constant truth or constant prediction"
    return "a class missing"


def _few_cases_note(kind: str, y: np.ndarray, groups: np.ndarray | None) -> str:
    """A note when a class is held by fewer than :data:`FEW_CASES` test subjects (groups), else ``""``."""
    if kind == "regression" or not len(y):
        return ""
    labels = np.unique(y)
    held = [len(np.unique(groups[y == c])) if groups is not None else int((y == c).sum()) for c in labels]
    k = int(np.argmin(held))
    if held[k] >= FEW_CASES:
        return ""
    unit = "group" if groups is not None else "subject"
    return (
        f"class {labels[k]:g} in only {held[k]} test {unit}(s): resampled within class, the CI leaves out the"
        " uncertainty of having so few cases"
    )


def _ci_note(kind: str, metric: str, estimate: tuple, requested: int, one_group: bool) -> str:
    """Why the CI of a metric defined on the test set is missing, or how many resamples it skipped; else ``""``.

    ``estimate``: the metric's ``(value, low, high, valid, drawn)`` from :func:`_bootstrap`; ``requested``: the
    resamples asked for; ``one_group``: the test subjects are all in one group.
    """
    _, low, _, valid, drawn = estimate
    if requested and not drawn:
        if one_group:
            return "no CI: the test subjects are all in one group"
        return "no CI: every resample would be the test set itself (one subject or group per stratum)"
    if drawn and not np.isfinite(low):
        return (
            f"no CI: the metric is defined in only {valid} of {drawn} resamples (under"
            f" {MIN_VALID_FRACTION:.0%}; undefined in the others: {_resample_reason(kind, metric)}); the rest"
            " would be a selected subset"
        )
    if valid < drawn:
        return f"{drawn - valid} of {drawn} resamples undefined ({_resample_reason(kind, metric)}) and skipped"
    return ""


def _metric_notes(
    kind: str, estimates: dict, requested: int, y: np.ndarray, pred: np.ndarray, classes, groups: np.ndarray | None
) -> dict[str, list[str]]:
    """Per metric of :func:`_bootstrap`'s ``estimates`` on the test set ``y``, ``pred``: why it is undefined there
    (:func:`_undefined_note`), else why its CI is missing or skipped resamples (:func:`_ci_note`) and, for a CI
    drawn within class, a class with few test cases (:func:`_few_cases_note`)."""
    few = _few_cases_note(kind, y, groups)
    one_group = groups is not None and len(np.unique(groups)) < 2
    notes = {}
    for metric, estimate in estimates.items():
        value, drawn = estimate[0], estimate[4]
        if not np.isfinite(value):
            notes[metric] = [_undefined_note(kind, metric, y, pred, classes)]
            continue
        found = [_ci_note(kind, metric, estimate, requested, one_group)]
        if drawn and metric in STRATIFIED_METRICS:
            found.append(few)
        notes[metric] = [note for note in found if note]
    return notes

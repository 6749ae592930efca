"""A cohort described in a config (participants + one adapter call per modality), built once and cached.

A data config names, for every modality, an adapter of ``data_adapters`` and its arguments::

    modalities:
      gene:      {adapter: plink, path: demo_cohort/genotypes, grouping: chromosome}
      brain:     {adapter: regions_from_nifti, manifest: demo_cohort/brain_manifest.csv,
                  atlas: demo_cohort/atlas.nii.gz, labels: demo_cohort/atlas_labels.csv}
      behaviour: {adapter: measures_table, path_or_df: demo_cohort/behaviour.csv, categorical: [handedness]}

The arguments are the adapter function's own keyword arguments (``help(data_adapters.gene.plink)``);
the modality's name is passed as ``name``, and the data-level ``id_column`` to every adapter that takes one
unless its spec sets its own. Modality names follow :mod:`mot_neuro.names` (identifiers of at most 64
characters; they become parameter keys, folders and MLflow keys) and are checked before any file is opened.
``min_match`` (see :mod:`data_adapters.cohort`) accepts a modality that matches only part of the participants.

The aligned cohort is saved under ``cache_dir`` in a folder
keyed by a fingerprint of every input file (manifests *and* the files they list) and of the settings, and
loaded memory-mapped from there: NIfTI and PLINK parsing run once. Confirming that the cache is fresh opens
only files whose size, mtime, ctime or inode changed since they were last hashed (the stat index
``cache_dir/.fingerprint-index.json``, see ``data_adapters.cache``): a manifest of 40,000 scans costs
40,000 ``stat`` calls, not 5 GB of reads.

A cohort too large to build in memory is written with ``data_adapters.cache.CohortWriter`` instead and
given to the DataModule as ``cohort_dir``.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from data_adapters.cache import STAT_INDEX, fingerprint, load_cohort, save_cohort
from data_adapters.cohort import DEFAULT_MIN_MATCH, Cohort, build_cohort
from data_adapters.core import DEFAULT_ID_COLUMN, AdapterError
from data_adapters.names import name_problem
from data_adapters.registry import ADAPTERS, FILE_ARGUMENTS, FILESETS, input_files

from .withdrawals import read_withdrawals

log = logging.getLogger(__name__)
ADAPTERS_VERSION = 3
"""Part of every built cohort's cache key: raise it when an adapter gives other tokens for the same files and
settings (2: chromosome names such as ``01`` read as ``1``; 3: genotype tokens record ``feature_positions``, which
``explain`` places on the genome), so that caches built by the older code are rebuilt."""


def _resolve(value, base: Path, kind: str):
    """A relative path in a config is relative to ``base`` (the working directory by default) when it names
    something there (for a fileset argument such as PLINK's, also a prefix of its files there)."""
    if isinstance(value, str) and value and not Path(value).is_absolute():
        candidate = base / value
        if candidate.exists() or (kind in FILESETS and FILESETS[kind](candidate)):
            return str(candidate)
    return value


def check_modality_names(modalities) -> None:
    """The data config's modality names against the one rule (:mod:`mot_neuro.names`), before any file is read.

    Two names differing only in case are refused too: their cache folders would be one folder on
    case-insensitive file systems (macOS, Windows)."""
    if not isinstance(modalities, Mapping):
        raise AdapterError(f"modalities must be a mapping of name -> adapter spec, got {type(modalities).__name__}")
    if not modalities:
        raise AdapterError("data config lists no modalities")
    by_case: dict[str, str] = {}
    for name in modalities:
        problem = name_problem(name)
        if problem:
            raise AdapterError(f"data config: {problem}")
        if name.lower() in by_case:
            raise AdapterError(
                f"data config: modality names {by_case[name.lower()]!r} and {name!r} differ only in case; their"
                " cache folders would collide on case-insensitive file systems: rename one"
            )
        by_case[name.lower()] = name


def _adapter_call(
    modality: str, spec: Mapping, base: Path, id_column: str = DEFAULT_ID_COLUMN
) -> tuple[Callable, dict]:
    if not isinstance(spec, Mapping) or "adapter" not in spec:
        raise AdapterError(
            f"modality {modality!r}: give a mapping with 'adapter' (one of {sorted(ADAPTERS)}) and its arguments"
        )
    name = spec["adapter"]
    if name not in ADAPTERS:
        raise AdapterError(f"modality {modality!r}: unknown adapter {name!r}; choose one of {sorted(ADAPTERS)}")
    function = ADAPTERS[name]
    paths = FILE_ARGUMENTS[name]  # the adapter's declared file arguments; other values are not paths
    kwargs = {k: _resolve(v, base, paths[k]) if k in paths else v for k, v in spec.items() if k != "adapter"}
    accepted = set(inspect.signature(function).parameters) - {"name"}
    if "id_column" in accepted and "id_column" not in kwargs:
        kwargs["id_column"] = id_column  # the data-level ID column: "the same name in every table"
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise AdapterError(
            f"modality {modality!r}: adapter {name!r} has no argument(s) {unknown};"
            f" its arguments are {sorted(accepted)}"
        )
    return function, kwargs


def build_cached_cohort(
    *,
    participants: str,
    modalities: Mapping[str, Mapping],
    targets: list[str],
    confounds: list[str],
    join: str = "outer",
    id_column: str = DEFAULT_ID_COLUMN,
    cache_dir: str | os.PathLike = "outputs/cache",
    base_dir: str | os.PathLike | None = None,
    min_match: float | Mapping[str, float] = DEFAULT_MIN_MATCH,
    withdrawals: str | os.PathLike | None = None,
) -> tuple[Cohort, str]:
    """The aligned cohort (memory-mapped from the cache) and its fingerprint.

    ``min_match``: the fraction of a modality's subjects that must be participants, and of the participants
    that must be in the modality (a number for all, or modality -> number); below it the build stops with
    the ID styles of both files. Lower it for a modality that really covers only part of the cohort.
    ``withdrawals``: a file of withdrawn IDs (:mod:`mot_neuro.data.withdrawals`) left out of every modality and
    of the participants before the cohort is aligned and cached; the file is an input of the cache key, so a
    cache built without it, or with another version of it, is not reused. How many of its IDs were found is
    logged and kept in the cohort's ``build_info["withdrawn"]`` (and ``match_counts``).
    """
    check_modality_names(modalities)  # first: a bad name must not cost a NIfTI pass before it is refused
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    participants = _resolve(participants, base, "file")
    if not Path(participants).is_file():
        raise AdapterError("participants table not found", file=participants)
    calls = {m: _adapter_call(m, spec, base, id_column) for m, spec in modalities.items()}
    withdrawn = None
    if withdrawals is not None:
        withdrawals = _resolve(str(withdrawals), base, "file")
        withdrawn = read_withdrawals(withdrawals, id_column=id_column)  # before any adapter: a bad file costs nothing
    inputs = [participants]
    for modality, spec in modalities.items():
        inputs += input_files(spec["adapter"], calls[modality][1])
    settings = {
        "modalities": {m: {"adapter": spec["adapter"], **calls[m][1]} for m, spec in modalities.items()},
        "targets": list(targets),
        "confounds": list(confounds),
        "join": join,
        "id_column": id_column,
        "min_match": dict(min_match) if isinstance(min_match, Mapping) else min_match,
        "adapters": ADAPTERS_VERSION,
    }
    if withdrawn is not None:  # only then: the keys of caches built without withdrawals stay what they were
        inputs.append(withdrawn.path)
        settings["withdrawals"] = True
    key = fingerprint(inputs, settings, stat_index=Path(cache_dir) / STAT_INDEX)
    folder = Path(cache_dir) / f"cohort-{key}"
    try:
        cached = load_cohort(folder, mmap=True)
    except AdapterError:
        cached = None
        if folder.exists():
            log.warning("cache %s is not usable; rebuilding it", folder)
            shutil.rmtree(folder, ignore_errors=True)
    if cached is not None:
        _check_withdrawn(cached, withdrawn)  # outside the try: a refused file is no unusable cache
        return _report_withdrawn(cached), key
    log.info("building the cohort into %s", folder)
    built = {m: function(**kwargs, name=m) for m, (function, kwargs) in calls.items()}
    cohort = build_cohort(
        participants,
        built,
        targets=targets,
        confounds=confounds,
        join=join,
        id_column=id_column,
        min_match=min_match,
        exclude=None if withdrawn is None else withdrawn.ids,
    )
    _check_withdrawn(cohort, withdrawn)  # before saving: a refused file leaves no cache behind
    save_cohort(cohort, folder)
    return _report_withdrawn(load_cohort(folder, mmap=True)), key


def _check_withdrawn(cohort: Cohort, withdrawn) -> None:
    """Refuse a withdrawals file whose IDs are written otherwise than the cohort's (:mod:`.withdrawals`): the
    subjects left in are checked against it, with the count of its IDs found in the inputs before they left."""
    if withdrawn is not None:
        withdrawn.check_ids(cohort.subject_ids, found=cohort.build_info["withdrawn"]["found"])


def _report_withdrawn(cohort: Cohort) -> Cohort:
    counts = cohort.build_info.get("withdrawn")
    if counts is not None:
        log.info(
            "withdrawals: %d withdrawn ID(s) found in the inputs and left out (%d of them participants), %d not found",
            counts["found"],
            counts["in_participants"],
            counts["not_found"],
        )
    return cohort

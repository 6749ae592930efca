"""The adapters a data config can name, and which of their arguments are files.

Each adapter declares its file arguments and how to read them (:data:`FILE_ARGUMENTS`), so that a caller
(``mot_neuro.data.sources``) knows which config values are paths to resolve and which files a cache key
must cover, without guessing from the values:

* ``"file"``: one file (when the value is a path to an existing file);
* ``"plink"``: a PLINK fileset, given as the ``.bed`` file or as the prefix of ``.bed``/``.bim``/``.fam``;
* ``"bgen"``: a ``.bgen`` file and the ``.sample`` beside it (same name) when there is one;
* ``"pgen"``: a PLINK 2 fileset, given as any of ``.pgen``/``.pvar``/``.psam`` or as their prefix: all three;
* ``"manifest"``: a table of subject IDs and paths: the table and every listed file that exists;
* ``"manifest_or_stack"``: a manifest, or one stacked ``.npy`` array (the rule of
  :func:`~data_adapters.connectivity.is_stacked`).
* ``"bids_root"``: a BIDS dataset folder: its participants.tsv and every image the call's query matches
  (:func:`~data_adapters.bids.bids_files`);
* ``"subjects_dir"``: a FreeSurfer SUBJECTS_DIR: every stats file the call reads
  (:func:`~data_adapters.freesurfer.stats_files`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from . import behaviour, embeddings, gene, ukb
from .bgen import bgen
from .bids import bids_files, regions_from_bids
from .connectivity import connectivity_matrices, is_stacked
from .core import DEFAULT_ID_COLUMN, IDS_FILENAME
from .freesurfer import freesurfer_stats, stats_files
from .idp import idp_table
from .manifests import listed_files
from .nifti import regions_from_nifti
from .pgen import pgen
from .ukb import ukb_fields

ADAPTERS: dict[str, Callable] = {
    "feature_table": gene.feature_table,
    "plink": gene.plink,
    "vcf": gene.vcf,
    "bgen": bgen,
    "pgen": pgen,
    "regions_from_nifti": regions_from_nifti,
    "regions_from_bids": regions_from_bids,
    "freesurfer_stats": freesurfer_stats,
    "idp_table": idp_table,
    "connectivity_matrices": connectivity_matrices,
    "measures_table": behaviour.measures_table,
    "embeddings": embeddings.load_embeddings,
    "ukb_fields": ukb_fields,
}

FILE_ARGUMENTS: dict[str, dict[str, str]] = {
    "feature_table": {"path_or_df": "file", "grouping": "file"},  # grouping: a column name, or a .gmt file
    "plink": {"path": "plink", "regions": "file"},
    "vcf": {"path": "file", "regions": "file"},
    "bgen": {"path": "bgen", "sample": "file", "regions": "file", "variants": "file"},
    "pgen": {"path": "pgen", "regions": "file", "variants": "file"},
    "regions_from_nifti": {"manifest": "manifest", "atlas": "file", "labels": "file"},
    "regions_from_bids": {"root": "bids_root", "atlas": "file", "labels": "file", "participants": "file"},
    "freesurfer_stats": {"subjects_dir": "subjects_dir", "subjects": "file"},
    "idp_table": {"path_or_df": "file"},
    "connectivity_matrices": {"source": "manifest_or_stack", "ids": "file"},
    "measures_table": {"path_or_df": "file"},
    "embeddings": {"path_or_df": "file", "ids": "file"},
    "ukb_fields": {"path_or_df": "file", "dictionary": "file", "rules": "file", "extra_rules": "file"},
}

DEFAULT_FILES: dict[str, dict[str, Callable[[], Path]]] = {"ukb_fields": {"rules": lambda: ukb.RULES_FILE}}
"""Files an adapter reads when an argument is not given (a file shipped with the package): a cache key must
change when they are edited or a new version of the package changes them."""


def plink_files(path: Path) -> list[Path]:
    """The files of a PLINK argument (any of ``.bed``/``.bim``/``.fam``, or their prefix): those that exist.

    All three, whichever is named: the ``.bim`` and ``.fam`` decide which variant and subject each genotype is."""
    prefix = path.with_suffix("") if path.suffix.lower() in (".bed", ".bim", ".fam") and path.is_file() else path
    return [f for f in (prefix.with_name(prefix.name + ext) for ext in (".bed", ".bim", ".fam")) if f.is_file()]


def bgen_files(path: Path) -> list[Path]:
    """The files of a BGEN argument: the ``.bgen`` and, when it exists, the ``.sample`` of the same name."""
    if not path.is_file():
        return []
    sample = path.with_suffix(".sample")
    return [path, sample] if sample.is_file() else [path]


def pgen_files(path: Path) -> list[Path]:
    """The files of a PLINK 2 argument (any of ``.pgen``/``.pvar``/``.psam``, or their prefix): those that exist."""
    prefix = path.with_suffix("") if path.suffix.lower() in (".pgen", ".pvar", ".psam") else path
    return [f for f in (prefix.with_name(prefix.name + ext) for ext in (".pgen", ".pvar", ".psam")) if f.is_file()]


FILESETS: dict[str, Callable[[Path], list[Path]]] = {"plink": plink_files, "bgen": bgen_files, "pgen": pgen_files}
"""Argument kinds that stand for several files, and how to list them."""


def input_files(adapter: str, kwargs: Mapping) -> list[str]:
    """Every file a call of ``adapter`` with ``kwargs`` reads, as declared in :data:`FILE_ARGUMENTS`."""
    files: list[Path] = []
    for argument, kind in FILE_ARGUMENTS[adapter].items():
        value = kwargs.get(argument)
        if not isinstance(value, str):  # a DataFrame, a list of IDs, or not given
            continue
        path = Path(value)
        files += FILESETS[kind](path) if kind in FILESETS else [path] if path.is_file() else []
        if kind == "manifest" or (kind == "manifest_or_stack" and not is_stacked(value)):
            listed = listed_files(
                value,
                id_column=kwargs.get("id_column", DEFAULT_ID_COLUMN),
                path_column=kwargs.get("path_column", "path"),
            )
            files += listed
        if kind == "bids_root":
            files += bids_files(value, kwargs)
        if kind == "subjects_dir":
            files += stats_files(value, kwargs)
    files += [default() for argument, default in DEFAULT_FILES.get(adapter, {}).items() if kwargs.get(argument) is None]
    files += _ids_beside(adapter, kwargs)
    return [str(p) for p in files]


def _ids_beside(adapter: str, kwargs: Mapping) -> list[Path]:
    """The ``ids.npy`` that a ``.npy`` array argument reads its subject IDs from when ``ids`` is not given
    (:func:`~data_adapters.core.read_subject_ids`): a cache key must change when only the IDs are edited."""
    if "ids" not in FILE_ARGUMENTS[adapter] or kwargs.get("ids") is not None:
        return []
    found = []
    for argument in FILE_ARGUMENTS[adapter]:
        value = kwargs.get(argument)
        if isinstance(value, str) and value.lower().endswith(".npy"):
            beside = Path(value).with_name(IDS_FILENAME)
            if beside.is_file():
                found.append(beside)
    return found

"""The adapters a data config can name, and which of their arguments are files.

Each adapter declares its file arguments and how to read them (:data:`FILE_ARGUMENTS`), so that a caller
(``mot_neuro.data.sources``) knows which config values are paths to resolve and which files a cache key
must cover, without guessing from the values:

* ``"file"``: one file (when the value is a path to an existing file);
* ``"plink"``: a PLINK fileset, given as the ``.bed`` file or as the prefix of ``.bed``/``.bim``/``.fam``;
* ``"manifest"``: a table of subject IDs and paths: the table and every listed file that exists;
* ``"manifest_or_stack"``: a manifest, or one stacked ``.npy`` array (the rule of
  :func:`~data_adapters.connectivity.is_stacked`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from . import behaviour, embeddings, gene
from .connectivity import connectivity_matrices, is_stacked
from .core import DEFAULT_ID_COLUMN, IDS_FILENAME
from .idp import idp_table
from .manifests import listed_files
from .nifti import regions_from_nifti

ADAPTERS: dict[str, Callable] = {
    "feature_table": gene.feature_table,
    "plink": gene.plink,
    "vcf": gene.vcf,
    "regions_from_nifti": regions_from_nifti,
    "idp_table": idp_table,
    "connectivity_matrices": connectivity_matrices,
    "measures_table": behaviour.measures_table,
    "embeddings": embeddings.load_embeddings,
}

FILE_ARGUMENTS: dict[str, dict[str, str]] = {
    "feature_table": {"path_or_df": "file", "grouping": "file"},  # grouping: a column name, or a .gmt file
    "plink": {"path": "plink", "regions": "file"},
    "vcf": {"path": "file", "regions": "file"},
    "regions_from_nifti": {"manifest": "manifest", "atlas": "file", "labels": "file"},
    "idp_table": {"path_or_df": "file"},
    "connectivity_matrices": {"source": "manifest_or_stack", "ids": "file"},
    "measures_table": {"path_or_df": "file"},
    "embeddings": {"path_or_df": "file", "ids": "file"},
}


def plink_files(path: Path) -> list[Path]:
    """The files of a PLINK argument: the file itself, or the ``.bed``/``.bim``/``.fam`` of a prefix."""
    if path.is_file():
        return [path]
    if path.with_name(path.name + ".bed").is_file():
        return [path.with_name(path.name + ext) for ext in (".bed", ".bim", ".fam")]
    return []


def input_files(adapter: str, kwargs: Mapping) -> list[str]:
    """Every file a call of ``adapter`` with ``kwargs`` reads, as declared in :data:`FILE_ARGUMENTS`."""
    files: list[Path] = []
    for argument, kind in FILE_ARGUMENTS[adapter].items():
        value = kwargs.get(argument)
        if not isinstance(value, str):  # a DataFrame, a list of IDs, or not given
            continue
        path = Path(value)
        files += plink_files(path) if kind == "plink" else [path] if path.is_file() else []
        if kind == "manifest" or (kind == "manifest_or_stack" and not is_stacked(value)):
            listed = listed_files(
                value,
                id_column=kwargs.get("id_column", DEFAULT_ID_COLUMN),
                path_column=kwargs.get("path_column", "path"),
            )
            files += listed
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

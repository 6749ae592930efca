"""Gene adapters: subject x feature tables, PLINK 1 binary genotypes and VCF genotypes as tokens.

Three readers, one output (:class:`~data_adapters.core.TokenizedModality`):

* :func:`feature_table` -- a subjects x features table (polygenic scores, gene burden, expression) from
  CSV/TSV/parquet or a DataFrame. A token is one column, a fixed-size chunk of columns, or a gene set
  (GMT file or a ``{set: [members]}`` dict).
* :func:`plink` -- PLINK 1 ``.bed/.bim/.fam`` read with bed-reader: dosage = count of the A1 allele (5th
  ``.bim`` column), as PLINK and bed-reader count it.
* :func:`vcf` -- VCF/BCF through cyvcf2 (optional extra): dosage = number of non-reference alleles in GT.

Genotypes are grouped into tokens by chromosome, by fixed base-pair windows, by named regions (genes), or
one token per variant; :func:`plink` and :func:`vcf` share that code. Tokens with different numbers of
variants are padded with 0 and marked False in ``feature_mask``. A missing call stays NaN; ``present`` is
False where every call of the token is missing. Which variant sits in which slot is recorded in
``source["token_features"]`` (token name -> variant IDs, in slot order).

Region tables (``regions=``) have one row per region with columns ``name``, ``chrom``, ``start``, ``end``
(aliases ``gene``/``region``, ``chr``/``chromosome``; case-insensitive). Coordinates are 1-based and
inclusive, the convention of ``.bim``/VCF positions and of GTF/Ensembl gene annotations: a variant at ``pos``
belongs to a region when ``start <= pos <= end``. Regions may overlap; a variant then feeds each of them.
Convert a 0-based BED file by adding 1 to its start. Chromosome names are compared after dropping a ``chr``
prefix and mapping PLINK's numeric codes 23/24/25/26 to X/Y/XY/MT.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .core import DEFAULT_ID_COLUMN, AdapterError, TokenizedModality, check_choice, normalize_ids
from .tables import read_table

__all__ = ["feature_table", "plink", "read_gmt", "vcf"]

VARIANT_GROUPINGS = ("chromosome", "window", "region", "snp")
EMPTY_GROUP_POLICIES = ("drop", "error")

_BED_MAGIC = b"\x6c\x1b"
_F32_MAX = float(np.finfo(np.float32).max)
# Genotype blocks read at once: bounds the temporary copy (~64 MB of float32) whatever the cohort size.
_BLOCK_VALUES = 1 << 24


# ====================================================================== tables and gene sets
def feature_table(
    path_or_df: str | os.PathLike | pd.DataFrame,
    *,
    id_column: str = DEFAULT_ID_COLUMN,
    grouping: str | int | os.PathLike | Mapping[str, Sequence[str]] = "feature",
    columns: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    name: str = "gene",
    empty_groups: str = "drop",
) -> TokenizedModality:
    """Tokens from a subjects x features table (polygenic scores, gene burden, expression).

    ``path_or_df``: ``.csv``, ``.tsv``/``.txt``/``.tab`` (optionally ``.gz``), ``.parquet``, or a DataFrame
    (the ID may be a column or the index). ``columns`` selects feature columns (default: every column but the
    ID and ``exclude``). ``grouping``:

    * ``"feature"``: one token per column (F = 1);
    * an int ``k``: chunks of ``k`` consecutive columns, the last one padded (``feature_mask`` False);
    * a GMT file path (or a ``{set: [members]}`` dict): one token per gene set, its features the members
      found among the columns, in the set's order. Members absent from the table are skipped and listed
      in ``source["skipped_members"]``. A set with no member in the table is dropped with a warning and
      listed in ``source["dropped_groups"]`` (``empty_groups="drop"``, default) or is an error
      (``empty_groups="error"``); no set left is always an error.

    Empty cells and NaN are missing values (kept NaN); infinite or non-numeric values are errors that name
    the column and subject.
    """
    check_choice(empty_groups, EMPTY_GROUP_POLICIES, "empty_groups")
    if isinstance(path_or_df, pd.DataFrame):
        label, frame = "<DataFrame>", path_or_df
        if id_column not in frame.columns and frame.index.name == id_column:
            frame = frame.reset_index()
    else:
        label = str(path_or_df)
        frame, _ = read_table(path_or_df, id_column=id_column, what="feature table")
    if len(frame) == 0:
        raise AdapterError("no rows (header only?): the table needs one row per subject", file=label)
    duplicated_columns = frame.columns[frame.columns.duplicated()].tolist()
    if duplicated_columns:
        raise AdapterError(f"duplicated column name(s) {duplicated_columns[:5]}", file=label)
    if id_column not in frame.columns:
        raise AdapterError(
            f"no subject ID column {id_column!r}; columns are {list(frame.columns)[:10]} "
            "(set id_column= to the one holding subject IDs)",
            file=label,
        )
    subject_ids = normalize_ids(frame[id_column], file=label, column=id_column)

    unknown = [c for c in [*(columns or ()), *exclude] if c not in frame.columns]
    if unknown:
        raise AdapterError(f"column(s) {unknown[:5]} not in the table (from columns=/exclude=)", file=label)
    if columns is None:
        columns = [c for c in frame.columns if c != id_column and c not in set(exclude)]
    else:
        columns = [c for c in columns if c != id_column and c not in set(exclude)]
    if not columns:
        raise AdapterError("no feature columns left after removing the ID column and exclude=", file=label)
    matrix = _numeric_matrix(frame, list(columns), subject_ids, label)
    columns = [str(c) for c in columns]

    source: dict = {"adapter": "gene.feature_table", "files": [] if label == "<DataFrame>" else [label]}
    source.update(id_column=id_column, columns=columns)
    if isinstance(grouping, str) and grouping == "feature":
        token_names, groups = columns, [np.array([j]) for j in range(len(columns))]
        source["grouping"] = "feature"
    elif isinstance(grouping, (int, np.integer)) and not isinstance(grouping, bool):
        if grouping < 1:
            raise AdapterError(f"grouping={grouping}: a chunk size must be a positive number of columns")
        starts = range(0, len(columns), int(grouping))
        token_names = [f"chunk{i}" for i in range(len(starts))]
        groups = [np.arange(s, min(s + int(grouping), len(columns))) for s in starts]
        source["grouping"] = int(grouping)
    elif isinstance(grouping, Mapping) or _looks_like_path(grouping):
        if isinstance(grouping, Mapping):
            gene_sets, set_label = {str(k): [str(m) for m in v] for k, v in grouping.items()}, "<gene-set dict>"
        else:
            gene_sets, set_label = read_gmt(grouping), str(grouping)
            source["files"].append(set_label)
        token_names, groups, notes = _gene_set_groups(gene_sets, columns, empty_groups, set_label, label)
        source["grouping"] = "gene_sets"
        source.update(notes)
    else:
        raise AdapterError(
            f"unknown grouping {grouping!r}: use 'feature', an int chunk size, a GMT file path, "
            "or a {set name: [columns]} dict"
        )
    source["token_features"] = {t: [columns[j] for j in g] for t, g in zip(token_names, groups, strict=True)}

    def read_columns(cols: np.ndarray) -> np.ndarray:
        return matrix[:, _column_index(cols)]

    values, feature_mask, present = _fill_tokens(len(subject_ids), groups, read_columns)
    return TokenizedModality(
        name=name,
        values=values,
        present=present,
        token_names=token_names,
        subject_ids=subject_ids,
        feature_mask=feature_mask,
        source=source,
    )


def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Gene sets from a GMT file: ``name<TAB>description<TAB>member1<TAB>member2...`` per line.

    Members keep their order; repeated members and empty fields (trailing tabs) are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise AdapterError("GMT gene-set file not found", file=path)
    gene_sets: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for line_number, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                raise AdapterError(
                    f"line {line_number}: expected 'name<TAB>description<TAB>members...', got no tab "
                    "(is the file space-separated?)",
                    file=path,
                )
            set_name = fields[0].strip()
            if not set_name:
                raise AdapterError(f"line {line_number}: gene set without a name", file=path)
            if set_name in gene_sets:
                raise AdapterError(f"line {line_number}: gene set {set_name!r} defined twice", file=path)
            members = [m.strip() for m in fields[2:] if m.strip()]
            gene_sets[set_name] = list(dict.fromkeys(members))
    if not gene_sets:
        raise AdapterError("no gene set in the file", file=path)
    return gene_sets


def _gene_set_groups(
    gene_sets: Mapping[str, Sequence[str]], columns: list[str], empty_groups: str, set_label: str, table_label: str
) -> tuple[list[str], list[np.ndarray], dict]:
    position = {c: j for j, c in enumerate(columns)}
    token_names, groups, skipped, dropped = [], [], {}, []
    for set_name, members in gene_sets.items():
        found = [position[m] for m in members if m in position]
        missing = [m for m in members if m not in position]
        if missing:
            skipped[set_name] = missing
        if not found:
            if empty_groups == "error":
                raise AdapterError(
                    f"gene set {set_name!r}: none of its {len(members)} members is a column of {table_label} "
                    f"(first: {list(members)[:3]}); pass empty_groups='drop' to skip such sets",
                    file=set_label,
                )
            dropped.append(set_name)
            continue
        token_names.append(set_name)
        groups.append(np.asarray(found))
    if not groups:
        raise AdapterError(
            f"no gene set has a member among the {len(columns)} columns of {table_label} "
            f"(columns start {columns[:3]}): do the set members and column names use the same gene IDs?",
            file=set_label,
        )
    if dropped:
        warnings.warn(
            f"{set_label}: dropped {len(dropped)} gene set(s) with no member in the table: {dropped[:5]}", stacklevel=3
        )
    return token_names, groups, {"skipped_members": skipped, "dropped_groups": dropped}


def _numeric_matrix(frame: pd.DataFrame, columns: list, subject_ids: np.ndarray, label: str) -> np.ndarray:
    """float32 [subjects, columns]; NaN stays missing, text and +-inf are errors naming column and subject."""
    converted = {}
    for column, dtype in zip(columns, frame[columns].dtypes, strict=True):
        if pd.api.types.is_bool_dtype(dtype):
            converted[column] = frame[column].astype("float64")
        elif not pd.api.types.is_numeric_dtype(dtype):
            series = frame[column]
            numbers = pd.to_numeric(series, errors="coerce")
            bad = np.flatnonzero((numbers.isna() & series.notna()).to_numpy())
            if len(bad):
                raise AdapterError(
                    f"non-numeric value {series.iloc[bad[0]]!r} ({len(bad)} row(s)); encode it as numbers "
                    "or leave the column out with exclude=",
                    file=label,
                    column=str(column),
                    subject=subject_ids[bad[0]],
                )
            converted[column] = numbers
    # One bulk conversion: per-column copies cost seconds on expression tables with 20k genes.
    numeric = frame[columns]
    if converted:
        numeric = pd.DataFrame({c: converted.get(c, numeric[c]) for c in columns}, index=frame.index)
    wide = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    too_big = np.abs(wide) > _F32_MAX  # +-inf, or finite but infinite once stored as float32
    if too_big.any():
        row, col = np.argwhere(too_big)[0]
        value = wide[row, col]
        raise AdapterError(
            f"infinite value {value} ({int(too_big[:, col].sum())} row(s)); use an empty cell or NaN for a missing "
            "value"
            if np.isinf(value)
            else f"value {value:g} is beyond float32 range; rescale the column",
            file=label,
            column=str(columns[col]),
            subject=subject_ids[row],
        )
    return wide.astype(np.float32)


# ====================================================================== PLINK 1 binary
def plink(
    path: str | os.PathLike,
    *,
    grouping: str = "chromosome",
    window_bp: int | None = None,
    regions: str | os.PathLike | pd.DataFrame | None = None,
    name: str = "gene",
    max_features_per_token: int | None = None,
    id_format: str = "iid",
    empty_groups: str = "drop",
) -> TokenizedModality:
    """Genotype tokens from PLINK 1 binary files (``path``: the prefix, or the .bed, .bim or .fam path).

    Values are A1-allele dosages (0, 1, 2; float32), missing calls NaN. Subject IDs are the ``.fam`` IID
    (``id_format="iid"``) or ``"{FID}_{IID}"`` (``id_format="fid_iid"``). ``grouping``: ``"chromosome"``,
    ``"window"`` (``window_bp`` base pairs per token: ``chr1:0-1000000`` holds positions 0 <= pos < 1000000;
    windows without a variant make no token), ``"region"`` (a ``regions``
    table, see the module docstring; regions without a variant follow ``empty_groups``) or ``"snp"`` (one
    token per variant). ``max_features_per_token`` splits longer tokens into consecutive parts
    (``chr1/part0``, ``chr1/part1``, ...) so that F stays bounded. The genotypes are read once, in blocks
    of variants.
    """
    check_choice(id_format, ("iid", "fid_iid"), "id_format")
    bed_path, bim_path, fam_path = _plink_paths(path)
    fam = _read_fam(fam_path)
    bim = _read_bim(bim_path)
    raw_ids = fam["iid"] if id_format == "iid" else fam["fid"] + "_" + fam["iid"]
    subject_ids = normalize_ids(raw_ids, file=fam_path, column="IID" if id_format == "iid" else "FID_IID")
    mode = _check_bed_header_and_size(bed_path, n_samples=len(fam), n_variants=len(bim), fam=fam_path, bim=bim_path)

    token_names, groups, notes = _variant_groups(
        bim["chrom"].to_numpy(),
        bim["pos"].to_numpy(),
        bim["id"].to_numpy(),
        grouping=grouping,
        window_bp=window_bp,
        regions=regions,
        max_features_per_token=max_features_per_token,
        empty_groups=empty_groups,
        file=bim_path,
    )

    from bed_reader import open_bed

    try:
        # Counts given: bed-reader does not parse .fam/.bim again (we did, with clearer errors).
        with open_bed(bed_path, iid_count=len(fam), sid_count=len(bim), count_A1=True) as reader:

            def read_columns(cols: np.ndarray) -> np.ndarray:
                # Column-major: bed-reader decodes it faster, and token slices copy from it faster.
                return reader.read(index=np.s_[:, _column_index(cols)], dtype=np.float32, order="F")

            values, feature_mask, present = _fill_tokens(len(subject_ids), groups, read_columns)
    except (ValueError, OSError, RuntimeError) as err:
        raise AdapterError(f"bed-reader could not read the genotypes: {err}", file=bed_path) from err

    source = {
        "adapter": "gene.plink",
        "files": [str(bed_path), str(bim_path), str(fam_path)],
        "dosage": "count of the A1 allele (5th .bim column); missing call = NaN",
        "bed_mode": "variant-major" if mode == 1 else "sample-major",
        "id_format": id_format,
        "n_variants_in_file": len(bim),
        **notes,
    }
    variant_ids = bim["id"].to_numpy(dtype=object)
    source["token_features"] = {t: variant_ids[g].tolist() for t, g in zip(token_names, groups, strict=True)}
    return TokenizedModality(
        name=name,
        values=values,
        present=present,
        token_names=token_names,
        subject_ids=subject_ids,
        feature_mask=feature_mask,
        source=source,
    )


def _plink_paths(path: str | os.PathLike) -> tuple[Path, Path, Path]:
    path = Path(path)
    prefix = path.with_suffix("") if path.suffix.lower() in (".bed", ".bim", ".fam") else path
    paths = tuple(prefix.with_name(prefix.name + ext) for ext in (".bed", ".bim", ".fam"))
    for file, role in zip(paths, ("genotypes", "variant list", "sample list"), strict=True):
        if not file.is_file():
            raise AdapterError(
                f"PLINK {role} file not found: PLINK 1 binary data needs {prefix.name}.bed, .bim and .fam "
                "side by side with the same prefix",
                file=file,
            )
    return paths  # type: ignore[return-value]


def _read_whitespace_table(path: Path, usecols: list[int], names: list[str], what: str) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep=r"\s+", header=None, usecols=usecols, dtype=str, comment=None)
    except pd.errors.EmptyDataError:
        raise AdapterError(f"{what} file is empty", file=path) from None
    except (ValueError, pd.errors.ParserError) as err:
        raise AdapterError(f"could not parse {what} file: {err}", file=path) from err
    table.columns = names
    short = np.flatnonzero(table.isna().any(axis=1).to_numpy())
    if len(short):
        raise AdapterError(f"line {short[0] + 1}: too few fields ({what} lines need {max(usecols) + 1})", file=path)
    return table


def _read_fam(path: Path) -> pd.DataFrame:
    return _read_whitespace_table(path, [0, 1], ["fid", "iid"], "PLINK .fam")


def _read_bim(path: Path) -> pd.DataFrame:
    bim = _read_whitespace_table(path, [0, 1, 3, 4, 5], ["chrom", "id", "pos", "a1", "a2"], "PLINK .bim")
    position = pd.to_numeric(bim["pos"], errors="coerce")
    bad = np.flatnonzero((position.isna() | (position % 1 != 0) | (position < 0)).to_numpy())
    if len(bad):
        raise AdapterError(
            f"line {bad[0] + 1}: base-pair position {bim['pos'].iloc[bad[0]]!r} is not a non-negative integer "
            "(4th column; lines need chrom, ID, cM, bp, A1, A2)",
            file=path,
        )
    bim["pos"] = position.to_numpy(dtype=np.int64)
    return bim


def _check_bed_header_and_size(bed: Path, *, n_samples: int, n_variants: int, fam: Path, bim: Path) -> int:
    """Checks bed-reader reports cryptically; returns the mode byte (1 variant-major, 0 sample-major)."""
    size = bed.stat().st_size
    with open(bed, "rb") as fh:
        header = fh.read(3)
    if len(header) < 3 or header[:2] != _BED_MAGIC:
        raise AdapterError(
            f"not a PLINK 1 binary .bed: it must start with bytes 6c 1b, found {header[:2].hex(' ') or 'nothing'} "
            "(a UCSC BED text file, or a PLINK 2 .pgen, has the same extension: convert with plink --make-bed)",
            file=bed,
        )
    mode = header[2]
    if mode not in (0, 1):
        raise AdapterError(f"unknown .bed mode byte {mode:#04x} (expected 01, variant-major, or 00)", file=bed)
    per_line, lines = (n_samples, n_variants) if mode == 1 else (n_variants, n_samples)
    expected = 3 + lines * ((per_line + 3) // 4)
    if size != expected:
        raise AdapterError(
            f"size {size} bytes does not match {n_samples} samples in {fam.name} and {n_variants} variants in "
            f"{bim.name}: expected {expected} bytes (3 + {lines} x ceil({per_line}/4)). The .bed is truncated "
            "or belongs to other .bim/.fam files",
            file=bed,
        )
    return mode


# ====================================================================== VCF
def vcf(
    path: str | os.PathLike,
    *,
    grouping: str = "chromosome",
    window_bp: int | None = None,
    regions: str | os.PathLike | pd.DataFrame | None = None,
    name: str = "gene",
    samples: Sequence[str] | None = None,
    max_features_per_token: int | None = None,
    empty_groups: str = "drop",
) -> TokenizedModality:
    """Genotype tokens from a VCF/BCF (plain or bgzipped) through cyvcf2 (``pip install mot-neuro[vcf]``).

    Dosage = number of non-reference alleles in GT (any ALT at multi-allelic sites; a haploid call counts
    0 or 1); a call with any missing allele (``./.``, ``./1``) is NaN. ``samples`` keeps those samples (in
    the file's order); subject IDs are the sample names. Grouping options as in :func:`plink`.
    """
    try:
        import cyvcf2
    except ImportError as err:
        raise ImportError(
            "reading VCF needs cyvcf2, an optional dependency: pip install 'mot-neuro[vcf]' (or pip install cyvcf2)"
        ) from err

    path = Path(path)
    if not path.is_file():
        raise AdapterError("VCF file not found", file=path)
    try:
        reader = cyvcf2.VCF(str(path))
    except OSError as err:
        raise AdapterError(f"cyvcf2 could not open it as VCF/BCF: {err}", file=path) from err
    try:
        if samples is not None:
            samples = [str(s) for s in samples]
            known = set(reader.samples)
            unknown = [s for s in samples if s not in known]
            if unknown:
                raise AdapterError(
                    f"{len(unknown)} requested sample(s) not in the VCF header: {unknown[:5]}", file=path
                )
            reader.set_samples(samples)
        subject_ids = normalize_ids(reader.samples, file=path, column="sample")
        if len(subject_ids) == 0:
            raise AdapterError("no sample columns (a sites-only VCF has no genotypes)", file=path)
        chroms, positions, variant_ids, dosages, n_multiallelic = _read_vcf_dosages(reader, path)
    finally:
        reader.close()

    token_names, groups, notes = _variant_groups(
        chroms,
        positions,
        variant_ids,
        grouping=grouping,
        window_bp=window_bp,
        regions=regions,
        max_features_per_token=max_features_per_token,
        empty_groups=empty_groups,
        file=path,
    )

    def read_columns(cols: np.ndarray) -> np.ndarray:
        block = dosages[cols].T.astype(np.float32)
        block[block < 0] = np.nan
        return block

    values, feature_mask, present = _fill_tokens(len(subject_ids), groups, read_columns)
    source = {
        "adapter": "gene.vcf",
        "files": [str(path)],
        "dosage": "number of non-reference alleles in GT; any missing allele = NaN",
        "samples": None if samples is None else list(samples),
        "n_variants_in_file": len(positions),
        "n_multiallelic": n_multiallelic,
        **notes,
    }
    source["token_features"] = {t: variant_ids[g].tolist() for t, g in zip(token_names, groups, strict=True)}
    return TokenizedModality(
        name=name,
        values=values,
        present=present,
        token_names=token_names,
        subject_ids=subject_ids,
        feature_mask=feature_mask,
        source=source,
    )


def _read_vcf_dosages(reader, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """One pass over the records: dosages as int8 [variants, samples] (-1 = missing), 4x smaller than float32."""
    chroms, positions, variant_ids, rows = [], [], [], []
    n_multiallelic = 0
    record = None
    try:
        for record in reader:
            genotype = record.genotype
            if genotype is None:
                raise AdapterError(f"variant {record.CHROM}:{record.POS} has no GT field", file=path)
            # Columns: one per allele of the largest ploidy (-1 missing, -2 past a smaller ploidy), then phasing.
            alleles = genotype.array()[:, :-1]
            dosage = (alleles > 0).sum(axis=1).astype(np.int8)
            dosage[(alleles == -1).any(axis=1)] = -1
            rows.append(dosage)
            chroms.append(record.CHROM)
            positions.append(record.POS)
            alts = record.ALT
            n_multiallelic += len(alts) > 1
            variant_ids.append(record.ID or f"{record.CHROM}:{record.POS}:{record.REF}:{','.join(alts)}")
    except AdapterError:
        raise
    except Exception as err:  # cyvcf2 raises plain Exception on malformed records
        where = "the first record" if record is None else f"variant {record.CHROM}:{record.POS}"
        raise AdapterError(f"cyvcf2 could not read {where}: {err}", file=path) from err
    if not rows:
        raise AdapterError("no variant records", file=path)
    return (
        np.asarray(chroms, dtype=object),
        np.asarray(positions, dtype=np.int64),
        np.asarray(variant_ids, dtype=object),
        np.stack(rows),
        int(n_multiallelic),
    )


# ====================================================================== grouping variants into tokens
_CHROM_ALIASES = {"23": "X", "24": "Y", "25": "XY", "26": "MT", "M": "MT"}


def _normalize_chromosome(value) -> str:
    text = str(value).strip()
    if text.lower().startswith("chr"):
        text = text[3:]
    text = text.upper()
    return _CHROM_ALIASES.get(text, text)


def _chromosome_sort_key(chrom: str) -> tuple:
    if chrom.isdigit():
        return (0, int(chrom), "")
    named = {"X": 1, "Y": 2, "XY": 3, "MT": 4}
    return (1, named.get(chrom, 5), chrom)


def _variant_groups(
    chrom: np.ndarray,
    pos: np.ndarray,
    variant_ids: np.ndarray,
    *,
    grouping: str,
    window_bp: int | None,
    regions,
    max_features_per_token: int | None,
    empty_groups: str,
    file,
) -> tuple[list[str], list[np.ndarray], dict]:
    """Token names and, per token, the variant (column) indices in position order. Shared by plink and vcf."""
    if not isinstance(grouping, str) or grouping not in VARIANT_GROUPINGS:
        raise AdapterError(
            f"unknown grouping {grouping!r}: use 'chromosome', 'window' (with window_bp=), "
            "'region' (with regions=) or 'snp'"
        )
    check_choice(empty_groups, EMPTY_GROUP_POLICIES, "empty_groups")
    if (window_bp is not None) != (grouping == "window"):
        raise AdapterError("window_bp= goes with grouping='window' (both or neither)")
    if (regions is not None) != (grouping == "region"):
        raise AdapterError("regions= goes with grouping='region' (both or neither)")
    if grouping == "window" and (not isinstance(window_bp, (int, np.integer)) or window_bp < 1):
        raise AdapterError(f"window_bp={window_bp!r}: give a positive whole number of base pairs")
    if max_features_per_token is not None and max_features_per_token < 1:
        raise AdapterError(f"max_features_per_token={max_features_per_token!r}: give a positive number")

    # Few distinct chromosome labels: normalise those, then map back (fast for millions of variants).
    labels, label_index = np.unique(np.asarray(chrom).astype(str), return_inverse=True)
    normalized = np.array([_normalize_chromosome(c) for c in labels], dtype=object)
    chrom_names = sorted(set(normalized), key=_chromosome_sort_key)
    rank_of = {c: r for r, c in enumerate(chrom_names)}
    chrom_rank = np.array([rank_of[c] for c in normalized], dtype=np.int64)[label_index.ravel()]
    pos = np.asarray(pos, dtype=np.int64)
    order = np.lexsort((np.arange(len(pos)), pos, chrom_rank))  # genome order; file order breaks ties
    sorted_rank, sorted_pos = chrom_rank[order], pos[order]
    notes: dict = {"grouping": grouping}

    if grouping == "region":
        token_names, groups, notes_regions = _region_groups(
            regions, chrom_names, sorted_rank, sorted_pos, order, empty_groups, file
        )
        notes.update(notes_regions)
    else:
        if grouping == "chromosome":
            key = sorted_rank
        elif grouping == "window":
            key = sorted_rank * (int(sorted_pos.max()) // window_bp + 1) + sorted_pos // window_bp
            notes["window_bp"] = int(window_bp)
        else:
            key = np.arange(len(order))
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        groups = np.split(order, starts[1:])
        first = order[starts]
        if grouping == "chromosome":
            token_names = [f"chr{chrom_names[chrom_rank[i]]}" for i in first]
        elif grouping == "window":
            token_names = []
            for i in first:
                begin = pos[i] // window_bp * window_bp
                token_names.append(f"chr{chrom_names[chrom_rank[i]]}:{begin}-{begin + window_bp}")
        else:
            token_names = [str(variant_ids[i]) for i in first]
            dup = pd.Index(token_names)[pd.Index(token_names).duplicated()].unique().tolist()
            if dup:
                raise AdapterError(
                    f"grouping='snp' needs unique variant IDs, found duplicates {dup[:5]}; rename them",
                    file=file,
                )

    if max_features_per_token is not None:
        cap = int(max_features_per_token)
        split_names, split_groups, n_split = [], [], 0
        for token, group in zip(token_names, groups, strict=True):
            if len(group) <= cap:
                split_names.append(token)
                split_groups.append(group)
                continue
            n_split += 1
            for part, begin in enumerate(range(0, len(group), cap)):
                split_names.append(f"{token}/part{part}")
                split_groups.append(group[begin : begin + cap])
        token_names, groups = split_names, split_groups
        notes.update(max_features_per_token=cap, n_tokens_split=n_split)
    return token_names, groups, notes


def _region_groups(regions, chrom_names, sorted_rank, sorted_pos, order, empty_groups, file):
    table, label = _read_regions(regions)
    rank_of = {c: r for r, c in enumerate(chrom_names)}
    # Start of each chromosome's run in the genome-sorted variants.
    bounds = np.searchsorted(sorted_rank, np.arange(len(chrom_names) + 1))
    token_names, groups, dropped = [], [], []
    for region, chrom, start, end in table.itertuples(index=False, name=None):
        rank = rank_of.get(chrom)
        if rank is None:
            members = order[:0]
        else:
            lo, hi = bounds[rank], bounds[rank + 1]
            first = lo + np.searchsorted(sorted_pos[lo:hi], start, side="left")
            last = lo + np.searchsorted(sorted_pos[lo:hi], end, side="right")
            members = order[first:last]
        if len(members) == 0:
            if empty_groups == "error":
                raise AdapterError(
                    f"region {region!r} (chr{chrom}:{start}-{end}) holds no variant of {file}; "
                    "pass empty_groups='drop' to skip such regions",
                    file=label,
                )
            dropped.append(region)
            continue
        token_names.append(region)
        groups.append(members)
    if not groups:
        raise AdapterError(
            f"no variant of {file} falls in any of the {len(table)} regions: variants are on "
            f"{['chr' + c for c in chrom_names[:5]]}, regions on "
            f"{sorted({'chr' + c for c in table['chrom']})[:5]}; check chromosome names, the genome build "
            "and that start/end are base-pair coordinates",
            file=label,
        )
    if dropped:
        warnings.warn(f"{label}: dropped {len(dropped)} region(s) with no variant: {dropped[:5]}", stacklevel=4)
    return token_names, groups, {"regions": label, "n_regions": len(table), "dropped_groups": dropped}


_REGION_COLUMNS = {
    "name": ("name", "gene", "region"),
    "chrom": ("chrom", "chr", "chromosome"),
    "start": ("start",),
    "end": ("end",),
}


def _read_regions(regions) -> tuple[pd.DataFrame, str]:
    if isinstance(regions, pd.DataFrame):
        table, label = regions, "<regions DataFrame>"
    else:
        table, label = read_table(regions, id_column=None, what="region table")[0], str(regions)
    by_lower = {str(c).strip().lower().lstrip("#"): c for c in table.columns}
    column_of = {}
    for role, aliases in _REGION_COLUMNS.items():
        found = [by_lower[a] for a in aliases if a in by_lower]
        if not found:
            raise AdapterError(
                f"no {role!r} column (accepted names: {', '.join(aliases)}); a region table needs "
                f"name, chrom, start, end; found {list(table.columns)[:8]}",
                file=label,
            )
        column_of[role] = found[0]
    picked = {role: table[column] for role, column in column_of.items()}
    if len(table) == 0:
        raise AdapterError("region table has no rows", file=label)
    out = pd.DataFrame({"name": picked["name"].astype(str).str.strip(), "chrom": picked["chrom"]})
    out["chrom"] = [_normalize_chromosome(c) for c in out["chrom"]]
    for role in ("start", "end"):
        numbers = pd.to_numeric(picked[role], errors="coerce")
        bad = np.flatnonzero((numbers.isna() | (numbers % 1 != 0)).to_numpy())
        if len(bad):
            raise AdapterError(
                f"region {out['name'].iloc[bad[0]]!r}: {role} {picked[role].iloc[bad[0]]!r} is not a whole number",
                file=label,
                column=str(column_of[role]),
            )
        out[role] = numbers.to_numpy(dtype=np.int64)
    backwards = np.flatnonzero((out["start"] > out["end"]).to_numpy())
    if len(backwards):
        row = out.iloc[backwards[0]]
        raise AdapterError(f"region {row['name']!r}: start {row['start']} > end {row['end']}", file=label)
    duplicated = out["name"][out["name"].duplicated()].unique().tolist()
    if duplicated:
        raise AdapterError(
            f"duplicated region name(s) {duplicated[:5]}: one row per region (merge or rename them)", file=label
        )
    return out, label


# ====================================================================== shared: columns -> [N, T, F]
def _fill_tokens(
    n_subjects: int, groups: Sequence[np.ndarray], read_columns: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """values [N, T, F] (pads 0), feature_mask [T, F], present [N, T] from per-token source-column indices.

    ``read_columns(sorted unique column indices)`` returns float32 [N, k] with NaN for missing; it is called
    once per block of columns, in increasing column order, so a file is read in one forward pass.
    """
    n_tokens = len(groups)
    width = max(len(g) for g in groups)
    gather = np.full((n_tokens, width), -1, dtype=np.int64)
    for t, group in enumerate(groups):
        gather[t, : len(group)] = group
    feature_mask = gather >= 0
    slots = np.flatnonzero(feature_mask)  # flat (token, feature) positions that hold a real value
    sources = gather.ravel()[slots]
    by_source = np.argsort(sources, kind="stable")
    slots, sources = slots[by_source], sources[by_source]
    needed = np.unique(sources)

    values = np.zeros((n_subjects, n_tokens, width), dtype=np.float32)
    flat = values.reshape(n_subjects, n_tokens * width)
    block = max(1, _BLOCK_VALUES // max(n_subjects, 1))
    for begin in range(0, len(needed), block):
        columns = needed[begin : begin + block]
        lo = np.searchsorted(sources, columns[0], side="left")
        hi = np.searchsorted(sources, columns[-1], side="right")
        data = read_columns(columns)
        _scatter(flat, slots[lo:hi], data, np.searchsorted(columns, sources[lo:hi]))

    present = np.empty((n_subjects, n_tokens), dtype=bool)
    rows = max(1, _BLOCK_VALUES // max(n_tokens * width, 1))
    for begin in range(0, n_subjects, rows):
        chunk = values[begin : begin + rows]
        present[begin : begin + rows] = (~np.isnan(chunk) & feature_mask).any(axis=2)
    return values, feature_mask, present


def _column_index(cols: np.ndarray) -> slice | np.ndarray:
    """A slice when the sorted columns are consecutive: views and sequential reads instead of gathers."""
    return slice(int(cols[0]), int(cols[-1]) + 1) if cols[-1] - cols[0] + 1 == len(cols) else cols


def _scatter(flat: np.ndarray, slots: np.ndarray, data: np.ndarray, data_columns: np.ndarray) -> None:
    """flat[:, slots] = data[:, data_columns], as slice copies where both run consecutively (the usual case:
    variants sorted by position fill token after token), else with one fancy-indexed copy."""
    breaks = np.flatnonzero((np.diff(slots) != 1) | (np.diff(data_columns) != 1)) + 1
    if len(breaks) + 1 > max(1, len(slots) // 16):
        flat[:, slots] = data[:, data_columns]
        return
    for begin, end in zip(np.r_[0, breaks], np.r_[breaks, len(slots)], strict=True):
        s, d, k = slots[begin], data_columns[begin], end - begin
        flat[:, s : s + k] = data[:, d : d + k]


# ====================================================================== helpers
def _looks_like_path(grouping) -> bool:
    if isinstance(grouping, os.PathLike):
        return True
    return isinstance(grouping, str) and (
        grouping.lower().endswith(".gmt") or os.sep in grouping or Path(grouping).is_file()
    )

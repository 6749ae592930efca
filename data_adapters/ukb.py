"""UK Biobank showcase tables: imaging-derived phenotypes picked by field or category, as region tokens.

UK Biobank delivers one wide table (tens of thousands of columns) whose columns are ``<field>-<instance>.<array>``
(``25782-2.0``, as ``ukbconv`` writes them) or, in Research Analysis Platform exports, ``p<field>_i<instance>``
and ``p<field>_i<instance>_a<array>`` (``p25782_i2``); the subject ID column is ``eid``. With it comes the
showcase data dictionary (``Data_Dictionary_Showcase.tsv``) that gives every field its title (``Field``),
showcase ``Category``, ``ValueType`` and data-coding (``Coding``).

:func:`ukb_fields` picks fields (by ``FieldID`` and/or showcase ``Category``) at ONE instance (the first imaging
visit, 2, by default) and reads, from each field's title, a region and a measure with a small rule set
(``ukb_idp_rules.tsv`` beside this module; see there): ``"Mean thickness of insula (left hemisphere)"`` becomes
the feature ``thickness`` of the token ``left_insula``. The tokens are then built by
:func:`~data_adapters.idp.idp_table`, as for any region x measure table: one token per region, its measures as
features, a measure a region lacks masked in ``feature_mask``.

A numeric field with a data-coding (``Coding`` not empty, e.g. 1160 "Sleep duration", coding 100291, where -1 is
"Do not know" and -3 "Prefer not to answer") holds codes among its numbers; it is refused unless
``special_codes=`` says which values are codes (they become NaN, counted in ``source["special_codes"]``).
Imaging-derived phenotypes have no data-coding.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from .core import DEFAULT_ID_COLUMN, AdapterError, TokenizedModality, check_choice, normalize_ids
from .idp import idp_table
from .tables import TABLE_SUFFIXES, check_unique_columns, numeric_column, require_id_column, table_suffix

log = logging.getLogger(__name__)

RULES_FILE = Path(__file__).with_name("ukb_idp_rules.tsv")
"""The shipped title rules (measure <TAB> pattern), tried in order; see the comments in the file."""
NUMERIC_VALUE_TYPES = ("Continuous", "Integer")
ARRAY_POLICIES = ("refuse", "features")
UNPARSED_POLICIES = ("error", "token")
MISSING_POLICIES = ("error", "skip")
DICTIONARY_COLUMNS = ("FieldID", "Field", "Category", "ValueType", "Units", "Coding")
SPECIAL_CODE_POLICIES = ("negative_to_nan",)
UNPARSED_MEASURE = "value"

_LEGACY_COLUMN = re.compile(r"(\d+)-(\d+)\.(\d+)")  # 25782-2.0
_RAP_COLUMN = re.compile(r"p(\d+)(?:_i(\d+))?(?:_a(\d+))?")  # p25782_i2, p25782_i2_a0, p31
_HEMISPHERE_SUFFIX = re.compile(r"\s*\((left|right|whole brain)(?: hemisphere)?\)\s*$", re.IGNORECASE)
_HEMISPHERE_PREFIX = re.compile(r"^(left|right)[-\s]+", re.IGNORECASE)
_SEPARATOR = ":"  # between region and measure in the columns handed to idp_table; never in a slug


@dataclass(frozen=True)
class TitleRule:
    """A field title pattern (matched whole, ignoring case) with a ``region`` group, and the measure it gives."""

    measure: str
    pattern: re.Pattern


# ---------------------------------------------------------------------------------------------------- rules
def read_rules(rules: str | os.PathLike | Sequence[Mapping] | None = None) -> list[TitleRule]:
    """Title rules from a file (``measure<TAB>pattern`` lines, ``#`` comments, an optional header) or a list of
    ``{measure, pattern}`` mappings; ``None`` reads the shipped :data:`RULES_FILE`."""
    source = RULES_FILE if rules is None else rules
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise AdapterError("title rules file not found", file=path)
        entries = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            measure, tab, pattern = line.partition("\t")
            if not tab or not measure.strip() or not pattern.strip():
                raise AdapterError(f"line {number} is not <measure><TAB><pattern>: {line[:80]!r}", file=path)
            if (measure.strip(), pattern.strip()) == ("measure", "pattern"):
                continue  # the header
            entries.append({"measure": measure.strip(), "pattern": pattern.strip(), "where": f"line {number}"})
        where = str(path)
    elif isinstance(source, Sequence):
        entries = [dict(e, where=f"rule {i}") if isinstance(e, Mapping) else e for i, e in enumerate(source)]
        where = None
    else:
        raise AdapterError(f"title rules must be a file or a list of {{measure, pattern}}, got {type(source).__name__}")
    return [_rule(entry, where) for entry in entries]


def _rule(entry, file) -> TitleRule:
    if not isinstance(entry, Mapping) or not {"measure", "pattern"} <= set(entry):
        raise AdapterError(f"a title rule is a mapping with 'measure' and 'pattern', got {entry!r}", file=file)
    try:
        pattern = re.compile(str(entry["pattern"]), re.IGNORECASE)
    except re.error as err:
        raise AdapterError(f"{entry['where']}: bad pattern {entry['pattern']!r}: {err}", file=file) from err
    if "region" not in pattern.groupindex:
        raise AdapterError(f"{entry['where']}: pattern {pattern.pattern!r} has no (?P<region>...) group", file=file)
    if "{measure}" in str(entry["measure"]) and "measure" not in pattern.groupindex:
        raise AdapterError(f"{entry['where']}: measure uses {{measure}} but the pattern has no such group", file=file)
    return TitleRule(str(entry["measure"]), pattern)


def slug(text: str) -> str:
    """Lower case, every run of characters other than letters and digits turned into one ``_``."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


def region_token(region: str, hemisphere: str | None = None) -> str:
    """The token of a region as a title names it: ``"Insular Cortex (left)"``, ``"Left Insular Cortex"`` and
    ``"Left-Insular-Cortex (left hemisphere)"`` all give ``left_insular_cortex``; ``(whole brain)`` is dropped."""
    text = region.strip()
    hemisphere = hemisphere.lower() if hemisphere else None
    suffix = _HEMISPHERE_SUFFIX.search(text)
    if suffix:
        text = text[: suffix.start()]
        word = suffix.group(1).lower()
        if word != "whole brain":
            hemisphere = hemisphere or word
    prefix = _HEMISPHERE_PREFIX.match(text)
    if prefix and hemisphere in (None, prefix.group(1).lower()):
        hemisphere = prefix.group(1).lower()
        text = text[prefix.end() :]
    name = slug(text)
    if not name:
        return ""
    return f"{hemisphere}_{name}" if hemisphere else name


def parse_title(title: str, rules: Sequence[TitleRule]) -> tuple[str, str] | None:
    """(token, measure) of a field title by the first rule that matches it whole, or None."""
    for rule in rules:
        match = rule.pattern.fullmatch(title.strip())
        if match is None:
            continue
        groups = match.groupdict()
        token = region_token(groups["region"] or "", groups.get("hemisphere"))
        measure = slug(rule.measure.replace("{measure}", groups.get("measure") or ""))
        if token and measure:
            return token, measure
    return None


# ---------------------------------------------------------------------------------------------------- columns
def parse_column(column: str) -> tuple[str, int | None, int | None] | None:
    """(field, instance, array) of a showcase column name (``25782-2.0``, ``p25782_i2_a0``, ``p31``), or None."""
    match = _LEGACY_COLUMN.fullmatch(column) or _RAP_COLUMN.fullmatch(column)
    if match is None:
        return None
    field, instance, array = match.groups()
    return field, None if instance is None else int(instance), None if array is None else int(array)


def _field_id(value) -> str:
    text = str(value).strip()
    return text[:-2] if text.endswith(".0") and text[:-2].isdigit() else text


# ---------------------------------------------------------------------------------------------------- reading
def read_dictionary(dictionary: str | os.PathLike | pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The showcase data dictionary (``Data_Dictionary_Showcase.tsv`` or its ``.csv``), indexed by FieldID (text),
    with the columns :data:`DICTIONARY_COLUMNS` that it has; and its file name for messages."""
    if isinstance(dictionary, pd.DataFrame):
        df, file = dictionary.copy(), None
    elif isinstance(dictionary, (str, os.PathLike)):
        path = Path(dictionary)
        if not path.is_file():
            raise AdapterError("data dictionary file not found", file=path)
        suffix = table_suffix(path)
        if suffix not in TABLE_SUFFIXES:
            raise AdapterError(f"unknown data dictionary format {suffix!r}; use .tsv or .csv", file=path)
        file = str(path)
        try:
            if TABLE_SUFFIXES[suffix] is None:
                df = pd.read_parquet(path)
            else:
                # The showcase TSV is not quoted (titles and notes hold stray quotes); its CSV version is.
                quoting = csv.QUOTE_NONE if TABLE_SUFFIXES[suffix] == "\t" else csv.QUOTE_MINIMAL
                df = pd.read_csv(
                    path,
                    sep=TABLE_SUFFIXES[suffix],
                    dtype=str,
                    keep_default_na=False,
                    quoting=quoting,
                    usecols=lambda column: column in DICTIONARY_COLUMNS,
                )
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise AdapterError(f"cannot read the data dictionary: {first_line}", file=path) from err
    else:
        raise AdapterError(f"expected a data dictionary file or DataFrame, got {type(dictionary).__name__}")
    missing = [c for c in ("FieldID", "Field", "ValueType") if c not in df.columns]
    if missing:
        raise AdapterError(
            f"data dictionary lacks column(s) {missing}; expected the showcase's Data_Dictionary_Showcase.tsv"
            f" (columns FieldID, Field, Category, ValueType, ...)",
            file=file,
        )
    df = df[[c for c in DICTIONARY_COLUMNS if c in df.columns]].copy()
    df["FieldID"] = [_field_id(v) for v in df["FieldID"]]
    repeated = df["FieldID"][df["FieldID"].duplicated()].unique().tolist()
    if repeated:
        raise AdapterError(f"data dictionary lists field(s) {repeated[:5]} twice", file=file)
    return df.set_index("FieldID"), file


def _read_header(path_or_df, what: str) -> tuple[list[str], str | None]:
    """The column names of the table, reading only its first line (or the parquet schema)."""
    if isinstance(path_or_df, pd.DataFrame):
        columns = [str(c) for c in path_or_df.columns]
        check_unique_columns(columns, file=None, what=what)
        if path_or_df.index.name is not None and str(path_or_df.index.name) not in columns:
            columns.insert(0, str(path_or_df.index.name))  # a frame indexed by eid
        return columns, None
    if not isinstance(path_or_df, (str, os.PathLike)):
        raise AdapterError(f"expected a {what} file path or a pandas DataFrame, got {type(path_or_df).__name__}")
    path = Path(path_or_df)
    if not path.is_file():
        raise AdapterError(f"{what} file not found", file=path)
    suffix = table_suffix(path)
    if suffix not in TABLE_SUFFIXES:
        raise AdapterError(f"unknown {what} format {suffix or '(no extension)'!r}; use one of .csv, .tsv, .parquet")
    try:
        if TABLE_SUFFIXES[suffix] is None:
            import pyarrow.parquet as pq

            columns = [str(c) for c in pq.read_schema(path).names]
        else:
            header = pd.read_csv(
                path, sep=TABLE_SUFFIXES[suffix], header=None, nrows=1, dtype=str, keep_default_na=False
            )
            columns = header.iloc[0].tolist() if len(header) else []
    except pd.errors.EmptyDataError as err:
        raise AdapterError(f"{what} is empty (no header, no rows)", file=path) from err
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as err:
        raise AdapterError(f"cannot read the {what}'s header: {str(err).strip()[:200]}", file=path) from err
    check_unique_columns(columns, file=path, what=what)
    return [str(c) for c in columns], str(path)


def _read_columns(path_or_df, columns: list[str], id_column: str, what: str) -> pd.DataFrame:
    """Only ``columns`` of the table (the ID column first): ``usecols`` for text, ``columns=`` for parquet."""
    wanted = [id_column, *columns]
    if isinstance(path_or_df, pd.DataFrame):
        if id_column not in map(str, path_or_df.columns) and path_or_df.index.name == id_column:
            path_or_df = path_or_df.reset_index()
        original = {str(c): c for c in path_or_df.columns}
        df = path_or_df[[original[c] for c in wanted]].copy()
        df.columns = wanted
        return df
    path = Path(path_or_df)
    try:
        if TABLE_SUFFIXES[table_suffix(path)] is None:
            return pd.read_parquet(path, columns=wanted)
        return pd.read_csv(path, sep=TABLE_SUFFIXES[table_suffix(path)], usecols=wanted, dtype={id_column: str})[wanted]
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AdapterError(f"cannot read the {what}: {first_line}", file=path) from err


# ---------------------------------------------------------------------------------------------------- adapter
def ukb_fields(
    path_or_df: str | os.PathLike | pd.DataFrame,
    *,
    dictionary: str | os.PathLike | pd.DataFrame,
    instance: int = 2,
    fields: Iterable[int | str] | None = None,
    categories: Iterable[int | str] | None = None,
    exclude_fields: Iterable[int | str] = (),
    rules: str | os.PathLike | Sequence[Mapping] | None = None,
    extra_rules: str | os.PathLike | Sequence[Mapping] | None = None,
    arrays: str = "refuse",
    special_codes: str | Mapping[int | str, Sequence[float]] | None = None,
    unparsed: str = "error",
    missing_fields: str = "error",
    id_column: str = DEFAULT_ID_COLUMN,
    name: str = "brain",
) -> TokenizedModality:
    """Imaging-derived phenotypes of a UK Biobank showcase table as region tokens (measures as features).

    * ``path_or_df``: the main table (``.csv``/``.tsv``, optionally compressed, or ``.parquet``, or a DataFrame),
      columns ``<field>-<instance>.<array>`` or ``p<field>_i<instance>[_a<array>]`` (both may be mixed) and
      ``id_column``. Other columns are ignored. Cost: the header is read first, then ONLY the ID column and the
      chosen fields' columns (``usecols`` / parquet ``columns=``), so memory grows with the chosen columns, not
      with the table's tens of thousands; but a text table is still parsed once from start to end (the time
      grows with its size on disk, whatever the columns chosen), while a parquet file reads just those column
      chunks. Convert a table you read often to parquet once.
    * ``dictionary``: ``Data_Dictionary_Showcase.tsv`` (or ``.csv``) as downloaded with the data: the fields'
      titles (``Field``), ``Category`` and ``ValueType``.
    * ``instance``: the visit whose columns are read (2 = first imaging visit, 3 = repeat imaging). One instance
      only: columns of other instances are never read, and a field without a column at this instance is a
      missing field (below), never filled from another visit.
    * ``fields`` (FieldIDs) and/or ``categories`` (showcase Category IDs, their fields in dictionary order);
      one of them is required. ``exclude_fields`` leaves fields out (e.g. a category's global measures).
    * ``missing_fields``: ``"error"`` (default) refuses a chosen field with no column at ``instance``, naming it;
      ``"skip"`` leaves such fields out with a warning (a category of which your application lacks some fields).
    * Titles -> (token, measure): ``rules`` (default :data:`RULES_FILE`) with ``extra_rules`` tried first; each a
      rules file or a list of ``{measure, pattern}`` (see :func:`read_rules` and the rules file). A title that no
      rule parses is an error naming the field and title; ``unparsed="token"`` makes such a field a token of its
      own (its title in lower case as the token, one feature ``"value"``). Two fields giving the same token and
      measure (the same title in two categories, e.g. two FreeSurfer parcellations) are an error naming both:
      put such categories in separate modalities.
    * ``arrays``: a field with one array column (IDPs have only ``.0``) is its measure. A field with several
      array columns at ``instance`` is refused by default (``"refuse"``); ``"features"`` makes each array its own
      feature ``<measure>_a<array>``.
    * Value types: only ``Continuous`` and ``Integer`` fields; categorical, text, date and compound fields are
      refused naming the field (read categories with ``measures_table`` and ``categorical=``). A value that is
      not a number is an error naming the column (as in the table) and the subject; empty is missing.
    * ``special_codes``: a numeric field with a data-coding (the dictionary's ``Coding`` not empty) mixes codes
      with its numbers (coding 100291 of 1160 "Sleep duration": -1 "Do not know", -3 "Prefer not to answer";
      look a coding up at ``biobank.ndph.ox.ac.uk/showcase/coding.cgi?id=<coding>``). Such a field is refused,
      naming it, its title and its coding, unless ``special_codes`` says what its codes are:

      - ``{coding: [values]}`` (e.g. ``{100291: [-1, -3]}``; in a data config ``special_codes: {100291: [-1,
        -3]}``): in the fields of that coding the listed values become NaN (missing). A coded field whose
        coding is not listed is still refused; a negative value that its coding's list leaves out is an error
        naming the column and subject (UK Biobank's codes are negative: list it). ``{coding: []}`` declares
        that a coding has no codes to remove (its negative values are still refused).
      - ``"negative_to_nan"``: in every coded field, every negative value becomes NaN (all of UK Biobank's
        special codes are negative; codes that stand for a quantity, such as -10 "Less than one", are lost).

      Fields without a data-coding (every imaging-derived phenotype) are read as they are in both cases. How
      many values of each code became NaN is kept, per column, in ``source["special_codes"]``. A dictionary
      without a ``Coding`` column is refused (it cannot say which fields hold codes).
    * Subject IDs: duplicated or missing ``eid`` values are an error naming the file.
    """
    check_choice(arrays, ARRAY_POLICIES, "arrays")
    check_choice(unparsed, UNPARSED_POLICIES, "unparsed")
    check_choice(missing_fields, MISSING_POLICIES, "missing_fields")
    codes = _special_codes(special_codes)
    if isinstance(instance, bool) or not isinstance(instance, (int, np.integer)) or instance < 0:
        raise AdapterError(f"instance must be a visit number (0, 1, 2, 3), got {instance!r}")
    instance = int(instance)
    title_rules = (read_rules(extra_rules) if extra_rules is not None else []) + read_rules(rules)
    meta, dictionary_file = read_dictionary(dictionary)
    chosen = _chosen_fields(meta, fields, categories, exclude_fields, dictionary_file)

    what = "UK Biobank table"
    header, file = _read_header(path_or_df, what)
    require_id_column(SimpleNamespace(columns=header), id_column, file)  # type: ignore[arg-type]
    by_field = _columns_by_field(header, id_column)
    located = _locate(chosen, by_field, meta, instance, missing_fields, file)
    _check_value_types(located, meta, dictionary_file)
    coded = _coded_fields(located, meta, codes, dictionary_file, file)
    if arrays == "refuse":
        several = {f: cols for f, cols in located.items() if len(cols) > 1}
        if several:
            field, cols = next(iter(several.items()))
            raise AdapterError(
                f"{len(several)} field(s) have several array columns at instance {instance}, e.g. field {field}"
                f" ({_title(meta, field)!r}): {[c for _, c in cols][:5]}; pass arrays='features' to make each"
                " array a feature, or exclude_fields= to leave the field out",
                file=file,
            )
    targets = _targets(located, meta, title_rules, unparsed, file)

    df = _read_columns(path_or_df, list(targets), id_column, what)
    if len(df) == 0:
        raise AdapterError(f"{what} has no rows (header only?): it needs one row per subject", file=file)
    ids = normalize_ids(df[id_column], file=file, column=id_column)
    frame, removed = {id_column: ids}, {}
    for column, (field, token, measure) in targets.items():
        numbers = _numbers(df[column], column, field, meta, ids, file)
        if field in coded:
            numbers, removed[column] = _remove_codes(numbers, coded[field], codes, column, field, meta, ids, file)
        frame[f"{token}{_SEPARATOR}{measure}"] = numbers
    modality = idp_table(
        pd.DataFrame(frame), id_column=id_column, layout="region_measure", separator=_SEPARATOR, name=name
    )
    modality.source = {
        "adapter": "ukb.ukb_fields",
        "file": file,
        "dictionary": dictionary_file,
        "id_column": id_column,
        "instance": instance,
        "fields": list(dict.fromkeys(field for field, _, _ in targets.values())),
        "columns": {column: f"{token}{_SEPARATOR}{measure}" for column, (_, token, measure) in targets.items()},
    }
    if removed:
        modality.source["special_codes"] = removed
        log.info(
            "%s: special codes made NaN: %s",
            file or "table",
            "; ".join(f"{c} (coding {r['coding']}): {r['to_nan'] or 'none'}" for c, r in removed.items()),
        )
    return modality


def _title(meta: pd.DataFrame, field: str) -> str:
    return str(meta.at[field, "Field"]) if field in meta.index else "?"


def _chosen_fields(meta: pd.DataFrame, fields, categories, exclude_fields, file) -> list[str]:
    """The FieldIDs to read, in order: ``fields`` as given, then the categories' fields in dictionary order."""
    if fields is None and categories is None:
        raise AdapterError(
            "choose the fields to read: fields=[FieldIDs] and/or categories=[showcase Category IDs]"
            " (a UK Biobank table has tens of thousands of columns)"
        )
    if isinstance(fields, (str, int)):
        fields = [fields]
    if isinstance(categories, (str, int)):
        categories = [categories]
    chosen = [_field_id(f) for f in fields or ()]
    unknown = [f for f in chosen if f not in meta.index]
    if unknown:
        raise AdapterError(f"field(s) {unknown[:5]} not in the data dictionary (fields=)", file=file)
    if categories is not None:
        if "Category" not in meta.columns:
            raise AdapterError("data dictionary has no Category column: choose fields= instead", file=file)
        category_of = meta["Category"].map(_field_id)
        for category in map(_field_id, categories):
            members = category_of.index[category_of == category].tolist()
            if not members:
                raise AdapterError(f"category {category} has no fields in the data dictionary (categories=)", file=file)
            chosen += members
    excluded = [_field_id(f) for f in exclude_fields]
    not_chosen = [f for f in excluded if f not in chosen]
    if not_chosen:
        raise AdapterError(f"exclude_fields names field(s) {not_chosen[:5]} that are not chosen", file=file)
    chosen = [f for f in dict.fromkeys(chosen) if f not in set(excluded)]
    if not chosen:
        raise AdapterError("no fields left to read (check fields=, categories= and exclude_fields=)", file=file)
    return chosen


def _columns_by_field(header: list[str], id_column: str) -> dict[str, list[tuple[int | None, int | None, str]]]:
    """FieldID -> [(instance, array, column)] for every showcase column of the header."""
    by_field: dict[str, list] = {}
    for column in header:
        parsed = None if column == id_column else parse_column(column)
        if parsed is not None:
            field, instance, array = parsed
            by_field.setdefault(field, []).append((instance, array, column))
    return by_field


def _locate(chosen, by_field, meta, instance: int, missing_fields: str, file) -> dict[str, list[tuple[int, str]]]:
    """FieldID -> [(array, column)] at ``instance``, in array order; fields without one refused or skipped."""
    located, missing = {}, []
    for field in chosen:
        at = sorted((array or 0, column) for inst, array, column in by_field.get(field, []) if inst == instance)
        for (array, first), (again, second) in zip(at, at[1:], strict=False):
            if array == again:  # p26856_i2 and p26856_i2_a0, or 26856-2.0 and p26856_i2: two exports joined?
                first, second = sorted((first, second), key=lambda c: (not _LEGACY_COLUMN.fullmatch(c), len(c), c))
                raise AdapterError(
                    f"field {field} ({_title(meta, field)!r}) is spelled twice at instance {instance} (array"
                    f" {array}): columns {first!r} and {second!r}; keep one of them (drop the other column)",
                    file=file,
                )
        if at:
            located[field] = at
        else:
            missing.append(field)
    if not located:
        found = sorted({str(i) for f in chosen for i, _, _ in by_field.get(f, []) if i is not None})
        where = f"instances {', '.join(found)}" if found else "none of them at any instance"
        raise AdapterError(
            f"no column of instance {instance} for the {len(chosen)} chosen field(s) (the table has {where});"
            " set instance= (2: first imaging visit, 3: repeat imaging)",
            file=file,
        )
    if missing:
        described = []
        for field in missing[:3]:
            others = sorted({"none" if i is None else str(i) for i, _, _ in by_field.get(field, [])})
            has = f"only instance(s) {', '.join(others)}" if others else "not in the table"
            described.append(f"field {field} ({_title(meta, field)!r}: {has})")
        message = f"{len(missing)} chosen field(s) have no column of instance {instance}: {'; '.join(described)}" + (
            " ..." if len(missing) > 3 else ""
        )
        if missing_fields == "error":
            raise AdapterError(
                f"{message}; leave them out with exclude_fields=, or pass missing_fields='skip'", file=file
            )
        log.warning("%s: %s; skipped (missing_fields='skip')", file or "table", message)
    return located


def _check_value_types(located, meta: pd.DataFrame, file) -> None:
    for field in located:
        value_type = str(meta.at[field, "ValueType"]).strip()
        if value_type not in NUMERIC_VALUE_TYPES:
            hint = (
                "read categorical fields with measures_table (categorical=) instead"
                if value_type.lower().startswith("categorical")
                else "only Continuous and Integer fields are region measures"
            )
            raise AdapterError(
                f"field {field} ({_title(meta, field)!r}) is {value_type or 'of no ValueType'}: {hint};"
                " leave it out with exclude_fields=",
                file=file,
            )


def _special_codes(special_codes) -> str | dict[str, list[float]] | None:
    """``special_codes`` checked: None, a policy name, or coding (text) -> the values that become NaN."""
    if special_codes is None or isinstance(special_codes, str):
        if special_codes is not None:
            check_choice(special_codes, SPECIAL_CODE_POLICIES, "special_codes")
        return special_codes
    if not isinstance(special_codes, Mapping):
        raise AdapterError(
            "special_codes must be 'negative_to_nan' or a mapping {coding: [values that become NaN]}"
            f" (e.g. {{100291: [-1, -3]}}), got {type(special_codes).__name__} {special_codes!r:.80}"
        )
    checked = {}
    for coding, values in special_codes.items():
        numbers = values if isinstance(values, (list, tuple)) else None
        if numbers is None or not all(
            isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, (bool, np.bool_))
            and math.isfinite(v)
            for v in numbers
        ):
            raise AdapterError(
                f"special_codes[{coding}] must be a list of numbers (the values of coding {coding} that become NaN,"
                f" e.g. [-1, -3]), got {values!r:.80}"
            )
        checked[_field_id(coding)] = [float(v) for v in numbers]
    return checked


def _coding(meta: pd.DataFrame, field: str) -> str | None:
    value = meta.at[field, "Coding"]
    if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
        return None
    return _field_id(value)


def _coded_fields(located, meta: pd.DataFrame, codes, dictionary_file, file) -> dict[str, str]:
    """FieldID -> data-coding of the located fields that have one; refused where ``codes`` does not cover it."""
    if "Coding" not in meta.columns:
        raise AdapterError(
            "data dictionary has no Coding column, so it cannot tell which fields hold special codes (-1 'Do not"
            " know', -3 'Prefer not to answer', ...); use the showcase's Data_Dictionary_Showcase.tsv, or add a"
            " Coding column (empty for fields without a data-coding)",
            file=dictionary_file,
        )
    coded = {field: coding for field in located if (coding := _coding(meta, field)) is not None}
    uncovered = [f for f, c in coded.items() if codes is None or (isinstance(codes, dict) and c not in codes)]
    if uncovered:
        described = "; ".join(
            f"field {f} ({_title(meta, f)!r}, {str(meta.at[f, 'ValueType']).strip()}) has data-coding {coded[f]}"
            for f in uncovered[:3]
        ) + (f" (and {len(uncovered) - 3} more)" if len(uncovered) > 3 else "")
        example = coded[uncovered[0]]
        raise AdapterError(
            f"{described}: its special codes (such as -1 'Do not know', -3 'Prefer not to answer') would be read"
            f" as numbers; say which values are codes (they become NaN): special_codes={{{example}: [-1, -3]}}"
            f" after checking showcase coding.cgi?id={example}, or special_codes='negative_to_nan'; or leave the"
            " field out with exclude_fields=",
            file=file,
        )
    return coded


def _code_text(value: float) -> str:
    return f"{value:g}"


def _remove_codes(numbers: np.ndarray, coding: str, codes, column: str, field: str, meta, ids, file):
    """The column with its special codes made NaN, and {coding, to_nan: {code: count}} for ``source``."""
    if codes == "negative_to_nan":
        hit = numbers < 0
    else:
        listed = codes[coding]
        hit = np.isin(numbers, listed)
        stray = np.flatnonzero((numbers < 0) & ~hit)
        if len(stray):
            row = int(stray[0])
            raise AdapterError(
                f"value {_code_text(numbers[row])} of field {field} ({_title(meta, field)!r}) is negative but not one"
                f" of special_codes[{coding}] {[float(v) if v % 1 else int(v) for v in listed]} (UK Biobank's codes"
                f" are negative; {len(stray)} such value(s)): add it to the list if coding {coding} defines it",
                file=file,
                column=column,
                subject=str(ids[row]),
            )
    found, counts = np.unique(numbers[hit], return_counts=True)
    numbers = np.where(hit, np.nan, numbers)
    return numbers, {"coding": coding, "to_nan": {_code_text(v): int(n) for v, n in zip(found, counts, strict=True)}}


def _targets(located, meta, title_rules, unparsed: str, file) -> dict[str, tuple[str, str, str]]:
    """Table column -> (field, token, measure); unparsed titles and clashes refused, naming the fields."""
    targets, failed, owner = {}, [], {}
    for field, columns in located.items():
        title = _title(meta, field)
        parsed = parse_title(title, title_rules)
        if parsed is None:
            if unparsed == "error":
                failed.append(f"field {field} {title!r}")
                continue
            parsed = (slug(title) or f"field_{field}", UNPARSED_MEASURE)
        token, measure = parsed
        for array, column in columns:
            feature = f"{measure}_a{array}" if len(columns) > 1 else measure
            key = (token, feature)
            if key in owner:
                other = owner[key]
                raise AdapterError(
                    f"fields {other} ({_title(meta, other)!r}) and {field} ({title!r}) both give region {token!r},"
                    f" measure {feature!r}: read them as separate modalities (e.g. one per category), or"
                    " leave one out with exclude_fields=",
                    file=file,
                )
            owner[key] = field
            targets[column] = (field, token, feature)
    if failed:
        raise AdapterError(
            f"no title rule parses {len(failed)} field(s): {'; '.join(failed[:3])}"
            + (" ..." if len(failed) > 3 else "")
            + "; add a rule with extra_rules=, leave them out with exclude_fields=, or pass unparsed='token'",
            file=file,
        )
    return targets


def _numbers(series: pd.Series, column: str, field: str, meta, ids, file) -> np.ndarray:
    """A field's column as float64 (NaN missing), or an error naming the column, the field and a subject."""
    try:
        return numeric_column(series, column=column, ids=ids, file=file)
    except AdapterError as err:
        subject = err.subject
        if subject is None:  # every entry is text: name the first such subject
            text = (series.notna() & pd.to_numeric(series, errors="coerce").isna()).to_numpy()
            subject = str(ids[int(np.flatnonzero(text)[0])]) if text.any() else None
        reason = err.reason.split(";")[0]
        value_type = str(meta.at[field, "ValueType"]).strip()
        raise AdapterError(
            f"{reason}, in field {field} ({_title(meta, field)!r}, {value_type}); fix or blank those entries",
            file=file,
            column=column,
            subject=subject,
        ) from err

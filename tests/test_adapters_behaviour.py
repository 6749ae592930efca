"""Tabular measures -> one token per measure (data_adapters.behaviour)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_adapters.behaviour import measures_table
from data_adapters.core import AdapterError


def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def table_csv(tmp_path):
    return write(
        tmp_path / "behaviour.csv",
        "eid,memory,hand,rt\n007,1.5,right,300\n1002,,left,\n1003,2.5,,310\n1004,3.0,right,320\n",
    )


def test_numeric_and_categorical_measures_become_tokens(table_csv):
    m = measures_table(table_csv, categorical=["hand"])
    assert m.values.shape == (4, 3, 1) and m.values.dtype == np.float32
    assert m.token_names == ["memory", "hand", "rt"]
    assert m.feature_names == ["value"]
    assert list(m.subject_ids) == ["007", "1002", "1003", "1004"]  # IDs read as text keep leading zeros
    assert m.categories == {"hand": ["left", "right"]}
    np.testing.assert_array_equal(m.values[:, 1, 0], [1.0, 0.0, np.nan, 1.0])
    assert np.isnan(m.values[1, 0, 0]) and np.isnan(m.values[1, 2, 0])
    np.testing.assert_array_equal(m.present, [[1, 1, 1], [0, 1, 0], [1, 0, 1], [1, 1, 1]])
    assert m.source["file"] == str(table_csv) and m.source["categorical"] == ["hand"]


def test_category_indices_do_not_depend_on_row_order():
    df = pd.DataFrame({"eid": [1, 2, 3, 4], "site": ["b", "a", "c", "a"]})
    forward = measures_table(df, categorical=["site"])
    backward = measures_table(df.iloc[::-1], categorical=["site"])
    assert forward.categories == backward.categories == {"site": ["a", "b", "c"]}
    np.testing.assert_array_equal(forward.values[:, 0, 0], backward.values[::-1, 0, 0])


def test_numeric_labels_sort_as_numbers_and_pandas_categorical_keeps_its_order():
    df = pd.DataFrame(
        {
            "eid": [1, 2, 3],
            "grade": [10, 2, 2],
            "level": pd.Categorical(["high", "low", None], categories=["low", "mid", "high"]),
        }
    )
    m = measures_table(df, categorical=["grade", "level"])
    assert m.categories == {"grade": ["2", "10"], "level": ["low", "mid", "high"]}
    np.testing.assert_array_equal(m.values[:, 0, 0], [1, 0, 0])
    np.testing.assert_array_equal(m.values[:, 1, 0], [2, 0, np.nan])
    assert not m.present[2, 1]


def test_columns_and_exclude_select_measures(table_csv):
    assert measures_table(table_csv, columns=["rt", "memory"]).token_names == ["rt", "memory"]
    assert measures_table(table_csv, exclude=["hand"]).token_names == ["memory", "rt"]
    with pytest.raises(AdapterError, match=r"exclude names column\(s\) \['targt'\]"):
        measures_table(table_csv, exclude=["targt"], categorical=["hand"])
    with pytest.raises(AdapterError, match="no measure columns left"):
        measures_table(table_csv, exclude=["memory", "hand", "rt"])
    with pytest.raises(AdapterError, match=r"categorical column\(s\) \['hand'\] are excluded"):
        measures_table(table_csv, columns=["memory"], categorical=["hand"])


@pytest.mark.parametrize("suffix", [".tsv", ".parquet", ".csv.gz"])
def test_other_table_formats(tmp_path, suffix):
    df = pd.DataFrame({"eid": ["1", "2"], "score": [0.5, np.nan], "group": ["x", "y"]})
    path = tmp_path / f"measures{suffix}"
    if suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    m = measures_table(path, categorical=["group"], name="cognition")
    assert m.name == "cognition" and m.token_names == ["score", "group"]
    np.testing.assert_array_equal(m.values[:, :, 0], [[0.5, 0], [np.nan, 1]])


def test_boolean_and_nullable_columns_are_numbers():
    df = pd.DataFrame({"eid": [1, 2, 3], "smoker": [True, False, True], "n": pd.array([1, None, 3], dtype="Int64")})
    m = measures_table(df)
    np.testing.assert_array_equal(m.values[:, :, 0], [[1, 1], [0, np.nan], [1, 3]])


def test_text_column_not_declared_categorical_names_it(table_csv):
    with pytest.raises(AdapterError, match=r"column 'hand': non-numeric column.*categorical=\['hand'\]"):
        measures_table(table_csv)


def test_mixed_numbers_and_text_is_an_error_naming_the_entry(tmp_path):
    path = write(tmp_path / "b.csv", "eid,score\n1,1.5\n2,12;5\n3,4\n")
    with pytest.raises(AdapterError) as err:
        measures_table(path)
    assert err.value.column == "score" and err.value.subject == "2"
    assert "mixed numbers and text" in str(err.value) and "'12;5'" in str(err.value)


def test_infinite_value_names_subject_and_column(tmp_path):
    path = write(tmp_path / "b.csv", "eid,score\n1,1.5\n2,inf\n")
    with pytest.raises(AdapterError) as err:
        measures_table(path)
    assert (err.value.column, err.value.subject) == ("score", "2")
    df = pd.DataFrame({"eid": [5, 6], "x": [1e300, 1.0]})
    with pytest.raises(AdapterError, match="out-of-range") as err:
        measures_table(df)
    assert err.value.subject == "5"


def test_missing_id_column_lists_the_columns(table_csv):
    with pytest.raises(AdapterError, match=r"subject ID column 'subject' not found; columns are 'eid', 'memory'"):
        measures_table(table_csv, id_column="subject")


def test_dataframe_indexed_by_id_and_duplicate_ids():
    df = pd.DataFrame({"score": [1.0, 2.0]}, index=pd.Index([10, 11], name="eid"))
    assert list(measures_table(df).subject_ids) == ["10", "11"]
    with pytest.raises(AdapterError, match="duplicated subject ID"):
        measures_table(pd.DataFrame({"eid": [1, 1], "score": [1.0, 2.0]}))


def test_unreadable_inputs(tmp_path):
    with pytest.raises(AdapterError, match="file not found"):
        measures_table(tmp_path / "nope.csv")
    with pytest.raises(AdapterError, match="unknown table format '.xlsx'"):
        measures_table(write(tmp_path / "b.xlsx", "x"))
    with pytest.raises(AdapterError, match="table is empty"):
        measures_table(write(tmp_path / "empty.csv", ""))
    with pytest.raises(AdapterError, match=r"header.csv: measures table has no rows \(header only\?\)"):
        measures_table(write(tmp_path / "header.csv", "eid,score,hand\n"), categorical=["hand"])

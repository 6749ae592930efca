"""Precomputed embeddings -> tokens (data_adapters.embeddings)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_adapters.core import AdapterError
from data_adapters.embeddings import load_embeddings


@pytest.fixture
def vectors():
    return np.arange(4 * 6, dtype=np.float64).reshape(4, 6) / 10


def list_parquet(tmp_path, vectors, ids=("1", "2", "3", "4")):
    path = tmp_path / "emb.parquet"
    pd.DataFrame({"eid": list(ids), "embedding": list(vectors), "model": "fm-v1"}).to_parquet(path)
    return path


def test_list_column_one_token_by_default(tmp_path, vectors):
    m = load_embeddings(list_parquet(tmp_path, vectors), name="brain_fm")
    assert m.values.shape == (4, 1, 6) and m.token_names == ["brain_fm_0"]
    np.testing.assert_allclose(m.values[:, 0], vectors.astype(np.float32))
    assert list(m.subject_ids) == ["1", "2", "3", "4"] and m.present.all()


def test_tokens_k_splits_into_equal_chunks_or_refuses(tmp_path, vectors):
    path = list_parquet(tmp_path, vectors)
    m = load_embeddings(path, tokens=3)
    assert m.values.shape == (4, 3, 2) and m.token_names == ["embedding_0", "embedding_1", "embedding_2"]
    np.testing.assert_allclose(m.values[1, 2], vectors[1, 4:6].astype(np.float32))
    with pytest.raises(AdapterError, match="6 embedding values per subject cannot be split into 4 equal tokens"):
        load_embeddings(path, tokens=4)
    with pytest.raises(AdapterError, match="positive integer"):
        load_embeddings(path, tokens=0)


def test_wide_numeric_columns(vectors):
    df = pd.DataFrame(vectors, columns=[f"emb_{j}" for j in range(6)])
    df.insert(0, "eid", [11, 12, 13, 14])
    m = load_embeddings(df, name="gene_fm")
    assert m.values.shape == (4, 1, 6) and m.feature_names == [f"emb_{j}" for j in range(6)]
    assert load_embeddings(df, columns=["emb_0", "emb_1"]).values.shape == (4, 1, 2)
    df["model"] = "v1"
    with pytest.raises(AdapterError, match=r"column\(s\) \['model'\] are not numeric; pass columns="):
        load_embeddings(df)


def test_missing_rows_are_absent_and_partial_nan_stays(tmp_path, vectors):
    cells = list(vectors)
    cells[1] = None
    cells[2] = np.array([np.nan, 1, 2, 3, 4, 5.0])
    path = tmp_path / "e.parquet"
    pd.DataFrame({"eid": ["a", "b", "c", "d"], "vec": cells}).to_parquet(path)
    m = load_embeddings(path, tokens=2)
    np.testing.assert_array_equal(m.present, [[1, 1], [0, 0], [1, 1], [1, 1]])
    assert np.isnan(m.values[1]).all() and np.isnan(m.values[2, 0, 0]) and m.values[2, 0, 1] == 1


def test_ragged_vectors_name_the_subject(tmp_path):
    path = tmp_path / "e.parquet"
    pd.DataFrame({"eid": ["a", "b", "c"], "vec": [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0, 3.0]]}).to_parquet(path)
    with pytest.raises(AdapterError, match=r"ragged vectors: length 3 here but 2 for subject a") as err:
        load_embeddings(path)
    assert err.value.subject == "c" and err.value.column == "vec"


def test_several_vector_columns_need_a_choice(tmp_path):
    df = pd.DataFrame({"eid": [1, 2], "a": [[1.0], [2.0]], "b": [[3.0], [4.0]]})
    with pytest.raises(AdapterError, match=r"several vector columns \['a', 'b'\]; choose one with column="):
        load_embeddings(df)
    np.testing.assert_array_equal(load_embeddings(df, column="b").values[:, 0, 0], [3, 4])


def test_npy_matrix_with_ids_beside(tmp_path, vectors):
    np.save(tmp_path / "emb.npy", vectors.astype(np.float32))
    np.save(tmp_path / "ids.npy", np.array([101, 102, 103, 104]))
    m = load_embeddings(tmp_path / "emb.npy", tokens=2)
    assert m.values.shape == (4, 2, 3) and list(m.subject_ids) == ["101", "102", "103", "104"]
    assert m.source["ids_file"] == str(tmp_path / "ids.npy")


def test_npy_own_token_axis_or_flattened(tmp_path):
    array = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)
    np.save(tmp_path / "tok.npy", array)
    (tmp_path / "subjects.txt").write_text("s1\ns2\ns3\n")
    own = load_embeddings(tmp_path / "tok.npy", ids=tmp_path / "subjects.txt")
    assert own.values.shape == (3, 5, 4) and list(own.subject_ids) == ["s1", "s2", "s3"]
    np.testing.assert_array_equal(own.values, array)
    flat = load_embeddings(tmp_path / "tok.npy", ids=["s1", "s2", "s3"], tokens=1)
    assert flat.values.shape == (3, 1, 20)
    np.testing.assert_array_equal(flat.values[2, 0], array[2].ravel())


def test_npy_id_problems(tmp_path, vectors):
    np.save(tmp_path / "emb.npy", vectors)
    with pytest.raises(AdapterError, match="subject ID file not found"):
        load_embeddings(tmp_path / "emb.npy")
    np.save(tmp_path / "ids.npy", np.array(["a", "b", "c"]))
    with pytest.raises(AdapterError, match=r"4 rows but 3 subject IDs in .*ids.npy; they must match one to one"):
        load_embeddings(tmp_path / "emb.npy")
    np.save(tmp_path / "ids.npy", np.array(["a", 2, None, "d"], dtype=object), allow_pickle=True)
    with pytest.raises(AdapterError, match=r"holds Python objects \(pickled\)"):
        load_embeddings(tmp_path / "emb.npy")


def test_infinite_values_and_bad_arrays(tmp_path, vectors):
    vectors[2, 3] = np.inf
    np.save(tmp_path / "emb.npy", vectors)
    np.save(tmp_path / "ids.npy", np.array(["a", "b", "c", "d"]))
    with pytest.raises(AdapterError, match="infinite value") as err:
        load_embeddings(tmp_path / "emb.npy")
    assert err.value.subject == "c"
    vectors[2, 3] = 1e300  # finite, but not as float32
    np.save(tmp_path / "emb.npy", vectors)
    with pytest.raises(AdapterError, match="beyond float32 range") as err:
        load_embeddings(tmp_path / "emb.npy")
    assert err.value.subject == "c"
    np.save(tmp_path / "emb.npy", np.zeros(4))
    with pytest.raises(AdapterError, match=r"must be \[N, D\] or \[N, T, D\], got shape \(4,\)"):
        load_embeddings(tmp_path / "emb.npy")
    with pytest.raises(AdapterError, match="embeddings tables must be parquet"):
        load_embeddings(tmp_path / "emb.csv")

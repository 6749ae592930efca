"""Aligning modalities with participants (data_adapters.cohort)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from data_adapters.behaviour import measures_table
from data_adapters.cohort import build_cohort
from data_adapters.core import AdapterError, TokenizedModality


def modality(name, ids, n_tokens=2, token_names=None):
    """values[s, t, 0] = 10 * int(id) + t, so alignment can be checked by ID."""
    ids = [str(i) for i in ids]
    values = np.array([[[10 * int(i) + t] for t in range(n_tokens)] for i in ids], dtype=np.float32)
    return TokenizedModality(
        name=name,
        values=values,
        present=np.ones(values.shape[:2], dtype=bool),
        token_names=token_names or [f"{name}{t}" for t in range(n_tokens)],
        subject_ids=np.array(ids, dtype=object),
    )


@pytest.fixture
def participants():
    return pd.DataFrame(
        {
            "eid": [1, 2, 3, 4, 5, 6],
            "age": [50.0, 60, 70, 55, 65, 75],
            "site": ["a", "b", "a", "b", "a", "b"],
            "target": [0.1, 0.2, np.nan, 0.4, 0.5, 0.6],
        }
    )


@pytest.fixture
def modalities():
    # subject 9 is not in participants; 6 has no modality; 1 lacks brain; 2 lacks gene
    return {"gene": modality("gene", [5, 4, 3, 1, 9]), "brain": modality("brain", [2, 3, 4, 5], n_tokens=3)}


def test_inner_join_keeps_subjects_with_everything_in_participants_order(participants, modalities):
    cohort = build_cohort(participants, modalities, targets=["target"], confounds=["age"])
    assert list(cohort.subject_ids) == ["3", "4", "5"]
    assert cohort.participants.index.name == "eid" and list(cohort.participants["age"]) == [70, 55, 65]
    for name, m in cohort.modalities.items():
        assert m.name == name and list(m.subject_ids) == ["3", "4", "5"] and m.present.all()
        np.testing.assert_array_equal(m.values[:, 0, 0], [30, 40, 50])
    report = cohort.report()
    dropped = dict(zip(report.dropped["reason"], report.dropped["subjects"], strict=True))
    assert dropped == {
        "in 'gene' but not in participants": 1,
        "in participants, no data in 'gene'": 2,
        "in participants, no data in 'brain'": 2,
        "participants dropped in total (lacking at least one modality)": 3,
    }
    assert report.overlaps.to_dict("records") == [{"gene": True, "brain": True, "subjects": 3}]


def test_outer_join_flags_missing_modalities(participants, modalities):
    cohort = build_cohort(participants, modalities, targets="target", join="outer")
    assert list(cohort.subject_ids) == ["1", "2", "3", "4", "5"]
    np.testing.assert_array_equal(cohort.modalities["brain"].present.any(axis=1), [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(cohort.modalities["gene"].present.any(axis=1), [1, 0, 1, 1, 1])
    np.testing.assert_array_equal(cohort.modalities["brain"].values[:, 2, 0], [0, 22, 32, 42, 52])
    report = cohort.report()
    combos = {(r["gene"], r["brain"]): r["subjects"] for r in report.overlaps.to_dict("records")}
    assert combos == {(True, True): 3, (True, False): 1, (False, True): 1}
    assert report.modalities.set_index("modality")["with data in cohort"].to_dict() == {"gene": 4, "brain": 4}
    assert report.modalities.set_index("modality")["not in participants"].to_dict() == {"gene": 1, "brain": 0}
    assert "participants dropped in total (no data in any modality)" in set(report.dropped["reason"])
    assert report.columns.to_dict("records") == [{"column": "target", "role": "target", "observed": 4, "missing": 1}]


def test_report_prints_and_serialises_without_ids(participants, modalities):
    participants["eid"] = [9990001 + i for i in range(6)]
    renamed = {k: modality(k, [9990000 + int(i) for i in m.subject_ids]) for k, m in modalities.items()}
    report = build_cohort(participants, renamed, targets=["target"], join="outer").report()
    text = str(report)
    assert text.startswith("Cohort: 5 subjects (outer join; 6 rows in participants)")
    assert "Subjects per combination of modalities:" in text and "Dropped:" in text
    assert "999000" not in text
    assert json.loads(json.dumps(report.to_dict()))["n_subjects"] == 5


def test_a_row_of_nans_does_not_count_as_having_the_modality(participants):
    df = pd.DataFrame({"eid": [1, 2, 3], "memory": [1.0, np.nan, 3.0], "mood": [0.5, np.nan, np.nan]})
    cohort = build_cohort(
        participants, {"behaviour": measures_table(df), "gene": modality("gene", [1, 2, 3])}, targets=[]
    )
    assert list(cohort.subject_ids) == ["1", "3"]
    np.testing.assert_array_equal(cohort.modalities["behaviour"].present, [[1, 1], [1, 0]])


def test_target_and_confound_tokens_are_removed_from_inputs(participants, modalities):
    behaviour = measures_table(
        pd.DataFrame({"eid": [3, 4, 5], "target": [0.3, 0.4, 0.5], "age": [1, 2, 3], "hand": ["l", "r", "l"]}),
        categorical=["hand"],
    )
    cohort = build_cohort(participants, {**modalities, "behaviour": behaviour}, targets=["target"], confounds=["age"])
    kept = cohort.modalities["behaviour"]
    assert kept.token_names == ["hand"] and kept.values.shape == (3, 1, 1) and kept.categories == {"hand": ["l", "r"]}
    excluded = cohort.report().excluded_tokens.to_dict("records")
    assert excluded == [
        {"modality": "behaviour", "token": "target", "reason": "is a target column"},
        {"modality": "behaviour", "token": "age", "reason": "is a confound column"},
    ]


def test_modality_that_is_only_the_target_is_an_error(participants, modalities):
    answer = measures_table(pd.DataFrame({"eid": [1, 2, 3], "target": [0.1, 0.2, 0.3]}), name="answer")
    with pytest.raises(AdapterError, match=r"modality 'answer': every token \(\['target'\]\) is a target or confound"):
        build_cohort(participants, {**modalities, "answer": answer}, targets=["target"])


def test_missing_target_column(participants, modalities):
    with pytest.raises(AdapterError, match=r"column 'iq': target column not in participants \(columns: \['age'"):
        build_cohort(participants, modalities, targets=["iq"])
    with_iq = {**modalities, "tests": modality("tests", [1, 2], token_names=["iq", "memory"])}
    with pytest.raises(AdapterError, match="it is a token of modality 'tests'.*add it to the participants table"):
        build_cohort(participants, with_iq, targets=["iq"])
    with pytest.raises(AdapterError, match="column 'height': confound column not in participants"):
        build_cohort(participants, modalities, targets=["target"], confounds=["height"])


def test_target_without_observed_values(participants, modalities):
    participants["empty"] = np.nan
    with pytest.raises(AdapterError, match=r"column 'empty': target column is entirely missing in participants"):
        build_cohort(participants, modalities, targets=["empty"])
    participants["sparse"] = [1.0, 2.0, np.nan, np.nan, np.nan, 6.0]  # observed only outside the inner join
    with pytest.raises(AdapterError, match="column 'sparse': confound column has no observed value among the 3"):
        build_cohort(participants, modalities, targets=["target"], confounds=["sparse"])


def test_duplicate_participant_ids(participants, modalities, tmp_path):
    participants.loc[3, "eid"] = 1
    path = tmp_path / "participants.csv"
    participants.to_csv(path, index=False)
    with pytest.raises(AdapterError, match=r"participants.csv: column 'eid': 1 duplicated subject ID\(s\): 1"):
        build_cohort(path, modalities, targets=["target"])


def test_no_shared_subjects_says_the_counts(participants):
    strangers = {"gene": modality("gene", [70, 71, 72]), "brain": modality("brain", [3, 4])}
    with pytest.raises(AdapterError) as err:  # min_match=0: past the per-modality ID check, to the join's own
        build_cohort(participants, strangers, targets=["target"], min_match=0)
    message = str(err.value)
    assert "no subject is both in participants (6 subjects) and in all modalities" in message
    assert "'gene' 3 with data (0 of them in participants), 'brain' 2 with data (2 of them in participants)" in message


def test_id_column_missing_lists_columns(participants, modalities):
    with pytest.raises(AdapterError, match=r"subject ID column 'subject_id' not found; columns are 'eid', 'age'"):
        build_cohort(participants, modalities, targets=["target"], id_column="subject_id")


def test_participants_from_files_and_other_id_column(participants, modalities, tmp_path):
    participants = participants.rename(columns={"eid": "subject"})
    participants["subject"] = participants["subject"].astype(float)  # 3.0 and "3" are the same subject
    path = tmp_path / "participants.parquet"
    participants.to_parquet(path)
    cohort = build_cohort(path, modalities, targets=["target"], id_column="subject")
    assert list(cohort.subject_ids) == ["3", "4", "5"] and cohort.id_column == "subject"
    tsv = tmp_path / "participants.tsv"
    participants.to_csv(tsv, sep="\t", index=False)
    assert len(build_cohort(tsv, modalities, targets=["target"], id_column="subject")) == 3


def test_argument_errors(participants, modalities):
    with pytest.raises(AdapterError, match="join must be one of"):
        build_cohort(participants, modalities, targets=["target"], join="left")
    with pytest.raises(AdapterError, match=r"\['age'\] are listed both as target and as confound"):
        build_cohort(participants, modalities, targets=["age"], confounds=["age"])
    with pytest.raises(AdapterError, match="no modalities given"):
        build_cohort(participants, {}, targets=["target"])
    with pytest.raises(AdapterError, match="modality 'x' is a ndarray, expected a TokenizedModality"):
        build_cohort(participants, {"x": np.zeros((2, 2))}, targets=["target"])


def test_empty_modality_is_refused_where_it_is_made_and_where_it_is_joined(tmp_path):
    with pytest.raises(AdapterError, match=r"modality 'brain': no tokens \(empty modality\)"):
        TokenizedModality("brain", np.zeros((3, 0, 1)), np.zeros((3, 0), bool), [], ["1", "2", "3"])
    with pytest.raises(AdapterError, match="no modalities given"):
        build_cohort(pd.DataFrame({"eid": ["1"], "y": [1.0]}), {}, targets=["y"])
    table = tmp_path / "behaviour.csv"
    pd.DataFrame({"eid": ["1", "2"], "y": [0.5, 1.5]}).to_csv(table, index=False)
    with pytest.raises(AdapterError, match="behaviour.csv: no measure columns left to tokenize"):
        measures_table(table, exclude=["y"])

"""UK Biobank showcase tables (``data_adapters.ukb.ukb_fields``): fields picked by ID or category at one instance,
titles turned into region tokens and measures, both column spellings, and the errors that name what to fix.

The data dictionary and the table are written here: real showcase titles and field IDs, made-up values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_adapters.core import AdapterError
from data_adapters.ukb import RULES_FILE, parse_column, parse_title, read_rules, region_token, ukb_fields

# FieldID, title, category, value type
FIELDS = [
    (25782, "Volume of grey matter in Frontal Pole (left)", 1101, "Continuous"),
    (25783, "Volume of grey matter in Frontal Pole (right)", 1101, "Continuous"),
    (25784, "Volume of grey matter in Insular Cortex (left)", 1101, "Continuous"),
    (25011, "Volume of thalamus (left)", 1102, "Continuous"),
    (25012, "Volume of thalamus (right)", 1102, "Continuous"),
    (25025, "Volume of brain stem + 4th ventricle", 1102, "Continuous"),
    (26558, "Volume of Hippocampus (left hemisphere)", 190, "Continuous"),
    (26546, "Mean intensity of Hippocampus (left hemisphere)", 190, "Continuous"),
    (26528, "Volume of WM-hypointensities (whole brain)", 190, "Continuous"),
    (26755, "Mean thickness of insula (left hemisphere)", 192, "Continuous"),
    (26856, "Mean thickness of insula (right hemisphere)", 192, "Continuous"),
    (26788, "Area of insula (left hemisphere)", 192, "Integer"),
    (26889, "Area of insula (right hemisphere)", 192, "Integer"),
    (26822, "Volume of insula (left hemisphere)", 192, "Continuous"),
    (27143, "Mean thickness of insula (left hemisphere)", 196, "Continuous"),  # DKT: the same title as 26755
    (27329, "Mean thickness of G-front-sup (left hemisphere)", 197, "Continuous"),
    (26990, "Grey-white contrast in insula (left hemisphere)", 194, "Continuous"),
    (25061, "Mean FA in fornix on FA skeleton", 134, "Continuous"),
    (25062, "Mean FA in corticospinal tract on FA skeleton (right)", 134, "Continuous"),
    (25063, "Mean FA in corticospinal tract on FA skeleton (left)", 134, "Continuous"),
    (25109, "Mean MD in fornix on FA skeleton", 134, "Continuous"),
    (25488, "Weighted-mean FA in tract acoustic radiation (left)", 135, "Continuous"),
    (25536, "Weighted-mean MD in tract acoustic radiation (left)", 135, "Continuous"),
    (25026, "Median T2star in thalamus (left)", 109, "Continuous"),
    (4080, "Systolic blood pressure, automated reading", 100011, "Integer"),
    (21003, "Age when attended assessment centre", 100024, "Integer"),
    (31, "Sex", 100094, "Categorical single"),
    (25785, "Volume of grey matter in Insular Cortex (right)", 1101, "Continuous"),  # not in the table
    (1160, "Sleep duration", 100057, "Integer"),  # data-coding 100291: -1 "Do not know", -3 "Prefer not to answer"
    (20016, "Fluid intelligence score", 100027, "Integer"),
]
CODING = {31: 9, 1160: 100291}  # as in the showcase: IDPs (and 20016) have no data-coding
TITLE = {field: title for field, title, _, _ in FIELDS}
IN_TABLE = [f for f, _, _, _ in FIELDS if f not in (25785, 4080, 31, 1160, 20016)]
N = 6
EIDS = [str(1000001 + i) for i in range(N)]


def dictionary_frame() -> pd.DataFrame:
    rows = [
        {
            "Path": "Brain MRI > ...",
            "Category": category,
            "FieldID": field,
            "Field": title,
            "Participants": 40000,
            "Items": 40000,
            "Stability": "Complete",
            "ValueType": value_type,
            "Units": "mm3",
            "ItemType": "Data",
            "Strata": "Primary",
            "Sexed": "Unisex",
            "Instances": 2,
            "Array": 2 if field == 4080 else 1,
            "Coding": CODING.get(field, ""),
            "Notes": 'Derived from "aseg.stats by FreeSurfer',  # a stray quote, as in the real file's notes
            "Link": f"http://biobank.ndph.ox.ac.uk/showcase/field.cgi?id={field}",
        }
        for field, title, category, value_type in FIELDS
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def dictionary(tmp_path):
    path = tmp_path / "Data_Dictionary_Showcase.tsv"
    dictionary_frame().to_csv(path, sep="\t", index=False, quoting=3)  # csv.QUOTE_NONE: as the showcase writes it
    return path


def values(field: int, instance: int, array: int = 0) -> np.ndarray:
    """The made-up values of a field at one instance and array, one per subject (different at every instance)."""
    rng = np.random.default_rng(field * 100 + instance * 10 + array)
    return np.round(rng.uniform(1, 1000, N), 3)


def table(spelling: str = "legacy", instances=(0, 2, 3), fields=IN_TABLE) -> pd.DataFrame:
    """A main table: the chosen fields at imaging instances 2 and 3 (and 21003 also at 0), field 4080 with two
    arrays, sex (31) at instance 0; some entries missing."""

    def name(field, instance, array=0):
        if spelling == "legacy":
            return f"{field}-{instance}.{array}"
        return f"p{field}_i{instance}" + (f"_a{array}" if field == 4080 else "")

    columns = {"eid": EIDS, name(31, 0): [0, 1, 1, 0, 1, 0]}
    for field in fields:
        for instance in instances:
            if instance == 0 and field != 21003:
                continue  # imaging fields exist from instance 2 only
            columns[name(field, instance)] = values(field, instance)
    for instance in (2, 3):
        for array in (0, 1):
            columns[name(4080, instance, array)] = values(4080, instance, array)
    df = pd.DataFrame(columns)
    df.loc[2, name(25782, 2)] = np.nan  # one missing value
    df.loc[5, [c for c in df.columns if c.startswith(("2", "p2")) and ("-2." in c or "_i2" in c)]] = np.nan
    return df  # subject 6 was not scanned at instance 2


@pytest.fixture
def main_csv(tmp_path):
    path = tmp_path / "ukb_main.csv"
    table().to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------------------------------- rules
@pytest.mark.parametrize(
    "title, token, measure",
    [
        ("Volume of grey matter in Insular Cortex (left)", "left_insular_cortex", "grey_matter_volume"),
        ("Volume of grey matter in Left Insular Cortex", "left_insular_cortex", "grey_matter_volume"),
        ("Mean thickness of G-front-sup (left hemisphere)", "left_g_front_sup", "thickness"),
        ("Area of superiorfrontal (right hemisphere)", "right_superiorfrontal", "area"),
        ("Mean FA in fornix on FA skeleton", "fornix", "skeleton_fa"),
        ("Mean MD in corticospinal tract on FA skeleton (right)", "right_corticospinal_tract", "skeleton_md"),
        ("Mean ICVF in posterior limb of internal capsule on FA skeleton (left)", None, "skeleton_icvf"),
        ("Volume of Left-Hippocampus (left hemisphere)", "left_hippocampus", "volume"),
        ("Volume of Hippocampus (left hemisphere)", "left_hippocampus", "volume"),
        ("Volume of WM-hypointensities (whole brain)", "wm_hypointensities", "volume"),
        ("Volume of brain stem + 4th ventricle", "brain_stem_4th_ventricle", "volume"),
        ("Weighted-mean FA in tract acoustic radiation (left)", "left_acoustic_radiation", "tract_fa"),
        ("Mean intensity of Pallidum (right hemisphere)", "right_pallidum", "intensity"),
        ("Grey-white contrast in cuneus (right hemisphere)", "right_cuneus", "grey_white_contrast"),
        ("Median T2star in caudate (left)", "left_caudate", "t2star"),
    ],
)
def test_each_shipped_rule_gives_region_and_measure(title, token, measure):
    parsed = parse_title(title, read_rules())
    assert parsed is not None, title
    if token is None:  # the region of a long JHU name: only its hemisphere and wording matter
        token = "left_posterior_limb_of_internal_capsule"
    assert parsed == (token, measure)


def test_titles_no_rule_parses_and_rule_files(tmp_path):
    rules = read_rules()
    assert (
        parse_title("Sex", rules) is None and parse_title("Systolic blood pressure, automated reading", rules) is None
    )
    assert len(rules) == len(
        [line for line in RULES_FILE.read_text().splitlines() if line and not line.startswith(("#", "measure\t"))]
    )
    own = tmp_path / "rules.tsv"
    own.write_text("# mine\nmeasure\tpattern\nsbp\tSystolic blood pressure, (?P<region>.+) reading\n")
    assert parse_title("Systolic blood pressure, automated reading", read_rules(own)) == ("automated", "sbp")
    own.write_text("sbp\tSystolic blood pressure\n")
    with pytest.raises(AdapterError, match=r"rules.tsv: line 1: .*no \(\?P<region>\.\.\.\) group"):
        read_rules(own)
    with pytest.raises(AdapterError, match=r"bad pattern"):
        read_rules([{"measure": "x", "pattern": "(?P<region>"}])
    assert region_token("Insular Cortex (left)") == region_token("Left Insular Cortex") == "left_insular_cortex"


def test_column_spellings():
    assert parse_column("25782-2.0") == ("25782", 2, 0)
    assert parse_column("p25782_i2") == ("25782", 2, None)
    assert parse_column("p4080_i3_a1") == ("4080", 3, 1)
    assert parse_column("p31") == ("31", None, None)
    assert parse_column("eid") is None and parse_column("25782-2") is None


# ---------------------------------------------------------------------------------------------------- selection
def test_categories_at_the_imaging_instance_become_region_tokens(main_csv, dictionary):
    modality = ukb_fields(main_csv, dictionary=dictionary, categories=[192, 134], name="cortex")
    assert modality.name == "cortex"
    assert modality.token_names == ["left_insula", "right_insula", "fornix", "right_corticospinal_tract",
                                    "left_corticospinal_tract"]  # fmt: skip
    assert modality.feature_names == ["thickness", "area", "volume", "skeleton_fa", "skeleton_md"]
    mask = modality.feature_mask
    assert mask[0, :3].tolist() == [True, True, True] and mask[1, :3].tolist() == [True, True, False]
    assert mask[2, 3:].tolist() == [True, True] and not mask[2, :3].any() and not mask[3, 4]
    assert modality.subject_ids.tolist() == EIDS
    expected = table()
    for column, (token, measure) in {
        "26755-2.0": ("left_insula", "thickness"),
        "26889-2.0": ("right_insula", "area"),
        "25109-2.0": ("fornix", "skeleton_md"),
        "25063-2.0": ("left_corticospinal_tract", "skeleton_fa"),
    }.items():
        got = modality.values[:, modality.token_names.index(token), modality.feature_names.index(measure)]
        np.testing.assert_allclose(got, expected[column].to_numpy(), rtol=1e-6)
    assert modality.present[:5].all() and not modality.present[5].any()  # subject 6: no instance-2 scan
    assert modality.source["instance"] == 2 and modality.source["file"] == str(main_csv)
    assert modality.source["columns"]["26755-2.0"] == "left_insula:thickness"


def test_instance_is_explicit_and_never_mixed(main_csv, dictionary):
    fields = [25011, 25012, 25025]
    repeat = ukb_fields(main_csv, dictionary=dictionary, fields=fields, instance=3)
    first = ukb_fields(main_csv, dictionary=dictionary, fields=fields)
    assert repeat.token_names == first.token_names == ["left_thalamus", "right_thalamus", "brain_stem_4th_ventricle"]
    np.testing.assert_allclose(repeat.values[:, 0, 0], values(25011, 3), rtol=1e-6)
    np.testing.assert_allclose(first.values[:5, 0, 0], values(25011, 2)[:5], rtol=1e-6)
    assert repeat.present.all() and not first.present[5].any()  # instance 3 does not fill instance 2's gaps
    with pytest.raises(AdapterError, match=r"ukb_main.csv: no column of instance 1 .* instances 2, 3.*instance="):
        ukb_fields(main_csv, dictionary=dictionary, fields=fields, instance=1)
    with pytest.raises(AdapterError, match=r"instance must be a visit number"):
        ukb_fields(main_csv, dictionary=dictionary, fields=fields, instance="2")


def test_fields_and_categories_together_in_order_without_repeats(main_csv, dictionary):
    modality = ukb_fields(
        main_csv, dictionary=dictionary, fields=["25062", 26546], categories=[190], exclude_fields=[26528]
    )
    assert modality.token_names == ["right_corticospinal_tract", "left_hippocampus"]
    assert modality.feature_names == ["skeleton_fa", "intensity", "volume"]
    assert modality.source["fields"] == ["25062", "26546", "26558"]
    with pytest.raises(AdapterError, match=r"exclude_fields names field\(s\) \['25061'\] that are not chosen"):
        ukb_fields(main_csv, dictionary=dictionary, categories=[190], exclude_fields=[25061])
    with pytest.raises(AdapterError, match=r"choose the fields to read"):
        ukb_fields(main_csv, dictionary=dictionary)
    with pytest.raises(AdapterError, match=r"Data_Dictionary_Showcase.tsv: category 999 has no fields"):
        ukb_fields(main_csv, dictionary=dictionary, categories=[999])


def test_both_column_spellings_and_formats_give_the_same_modality(tmp_path, dictionary, main_csv):
    rap = tmp_path / "ukb_rap.parquet"
    table("rap").to_parquet(rap, index=False)
    tsv = tmp_path / "ukb_main.tsv.gz"
    table().to_csv(tsv, sep="\t", index=False)
    mixed = table()  # a frame with both spellings (two exports joined), indexed by eid
    mixed = mixed.rename(columns={"25061-2.0": "p25061_i2", "25109-2.0": "p25109_i2"}).set_index("eid")
    reference = ukb_fields(main_csv, dictionary=dictionary, categories=[134, 135])
    for source in (rap, tsv, mixed):
        modality = ukb_fields(source, dictionary=dictionary, categories=[134, 135])
        assert modality.token_names == reference.token_names
        assert modality.feature_names == reference.feature_names
        assert modality.subject_ids.tolist() == EIDS
        np.testing.assert_array_equal(modality.values, reference.values)


def test_only_the_chosen_columns_are_read(monkeypatch, tmp_path, dictionary, main_csv):
    calls = []
    read_csv, read_parquet = pd.read_csv, pd.read_parquet

    def spy_csv(*args, **kwargs):
        calls.append(("csv", kwargs.get("usecols"), kwargs.get("nrows")))
        return read_csv(*args, **kwargs)

    def spy_parquet(*args, **kwargs):
        calls.append(("parquet", kwargs.get("columns"), None))
        return read_parquet(*args, **kwargs)

    rap = tmp_path / "ukb_rap.parquet"
    table("rap").to_parquet(rap, index=False)
    monkeypatch.setattr(pd, "read_csv", spy_csv)
    monkeypatch.setattr(pd, "read_parquet", spy_parquet)
    ukb_fields(main_csv, dictionary=dictionary, fields=[25011, 25012])
    ukb_fields(rap, dictionary=dictionary, fields=[25011, 25012])
    table_reads = [c for c in calls if c[0] == "parquet" or (c[2] is None and isinstance(c[1], list))]
    assert table_reads == [
        ("csv", ["eid", "25011-2.0", "25012-2.0"], None),
        ("parquet", ["eid", "p25011_i2", "p25012_i2"], None),
    ]


# ---------------------------------------------------------------------------------------------------- arrays, titles
def test_several_arrays_are_refused_or_become_features(main_csv, dictionary):
    with pytest.raises(AdapterError, match=r"field\(s\) have several array columns at instance 2, e.g. field 4080"):
        ukb_fields(main_csv, dictionary=dictionary, fields=[4080], unparsed="token")
    modality = ukb_fields(main_csv, dictionary=dictionary, fields=[4080], unparsed="token", arrays="features")
    assert modality.token_names == ["systolic_blood_pressure_automated_reading"]
    assert modality.feature_names == ["value_a0", "value_a1"]
    np.testing.assert_allclose(modality.values[:, 0, 1], values(4080, 2, 1), rtol=1e-6)


def test_an_unparsed_title_is_named_or_becomes_its_own_token(main_csv, dictionary):
    with pytest.raises(
        AdapterError,
        match=r"ukb_main.csv: no title rule parses 1 field\(s\): field 21003 'Age when attended.*extra_rules=",
    ):
        ukb_fields(main_csv, dictionary=dictionary, fields=[25011, 21003])
    modality = ukb_fields(main_csv, dictionary=dictionary, fields=[25011, 21003], unparsed="token")
    assert modality.token_names == ["left_thalamus", "age_when_attended_assessment_centre"]
    assert modality.feature_names == ["volume", "value"]
    np.testing.assert_allclose(modality.values[:5, 1, 1], values(21003, 2)[:5], rtol=1e-6)  # instance 2, not 0
    extra = [{"measure": "age", "pattern": "Age when attended (?P<region>assessment centre)"}]
    modality = ukb_fields(main_csv, dictionary=dictionary, fields=[21003], extra_rules=extra)
    assert (modality.token_names, modality.feature_names) == (["assessment_centre"], ["age"])


def test_two_fields_with_one_region_and_measure_are_refused(main_csv, dictionary):
    with pytest.raises(AdapterError, match=r"fields 26755 .* and 27143 .* both give region 'left_insula', measure"):
        ukb_fields(main_csv, dictionary=dictionary, categories=[192, 196])


def test_a_field_spelled_twice_is_refused_naming_both_columns(tmp_path, dictionary):
    df = table()
    df["p26856_i2"] = df.pop("26856-2.0")
    df["p26856_i2_a0"] = values(26856, 2) + 1  # RAP: the bare spelling and the array-0 spelling in one table
    df["p25011_i3"] = df["25011-3.0"]  # spelled twice at another instance: never read at instance 2
    path = tmp_path / "twice.csv"
    df.to_csv(path, index=False)
    for arrays in ("refuse", "features"):
        with pytest.raises(
            AdapterError,
            match=r"twice.csv: field 26856 \('Mean thickness of insula \(right hemisphere\)'\) is spelled twice at"
            r" instance 2 \(array 0\): columns 'p26856_i2' and 'p26856_i2_a0'",
        ):
            ukb_fields(path, dictionary=dictionary, categories=[192], arrays=arrays)
    with pytest.raises(AdapterError, match=r"field 25011 .* columns '25011-2.0' and 'p25011_i2'"):
        ukb_fields(df.assign(p25011_i2=df["25011-2.0"]), dictionary=dictionary, fields=[25011])
    modality = ukb_fields(path, dictionary=dictionary, fields=[25011])  # spelled twice at instance 3 only
    np.testing.assert_allclose(modality.values[:5, 0, 0], values(25011, 2)[:5], rtol=1e-6)
    with pytest.raises(
        AdapterError, match=r"field 25011 .* instance 3 \(array 0\): columns '25011-3.0' and 'p25011_i3'"
    ):
        ukb_fields(path, dictionary=dictionary, fields=[25011], instance=3)


# ---------------------------------------------------------------------------------------------------- errors
def test_missing_fields_are_named_or_skipped(main_csv, dictionary, caplog):
    with pytest.raises(
        AdapterError,
        match=r"ukb_main.csv: 1 chosen field\(s\) have no column of instance 2: field 25785 .*not in the table",
    ):
        ukb_fields(main_csv, dictionary=dictionary, categories=[1101])
    modality = ukb_fields(main_csv, dictionary=dictionary, categories=[1101], missing_fields="skip")
    assert modality.token_names == ["left_frontal_pole", "right_frontal_pole", "left_insular_cortex"]
    assert "25785" in caplog.text
    with pytest.raises(AdapterError, match=r"field 31 \('Sex': only instance\(s\) 0\)"):
        ukb_fields(main_csv, dictionary=dictionary, fields=[25011, 31])
    with pytest.raises(AdapterError, match=r"Data_Dictionary_Showcase.tsv: field\(s\) \['99999'\] not in the data"):
        ukb_fields(main_csv, dictionary=dictionary, fields=[99999])


def test_categorical_fields_are_refused(tmp_path, dictionary):
    df = table()
    df["31-2.0"] = df["31-0.0"]
    path = tmp_path / "with_sex.csv"
    df.to_csv(path, index=False)
    with pytest.raises(AdapterError, match=r"field 31 \('Sex'\) is Categorical single: .*measures_table"):
        ukb_fields(path, dictionary=dictionary, fields=[25011, 31])


def test_text_in_a_numeric_field_names_column_and_subject(tmp_path, dictionary):
    df = table()
    df["25011-2.0"] = df["25011-2.0"].astype(object)
    df.loc[3, "25011-2.0"] = "12,5"
    path = tmp_path / "text.csv"
    df.to_csv(path, index=False)
    with pytest.raises(
        AdapterError, match=rf"text.csv: column '25011-2.0': subject {EIDS[3]}: mixed numbers and text.*field 25011"
    ):
        ukb_fields(path, dictionary=dictionary, fields=[25011])
    df["25012-2.0"] = "none"
    df.to_csv(path, index=False)
    with pytest.raises(AdapterError, match=rf"column '25012-2.0': subject {EIDS[0]}: non-numeric"):
        ukb_fields(path, dictionary=dictionary, fields=[25012])


def coded_table(tmp_path):
    df = table()
    df["1160-2.0"] = [7, -3, -1, 8, np.nan, 6]  # sleep duration, hours/day; -1 and -3 are its coding's codes
    df["20016-2.0"] = [6, 8, 0, 13, 9, np.nan]  # no data-coding: read as it is
    path = tmp_path / "coded.csv"
    df.to_csv(path, index=False)
    return path


def test_a_numeric_field_with_a_data_coding_needs_special_codes(tmp_path, dictionary):
    path = coded_table(tmp_path)
    refused = r"coded.csv: field 1160 \('Sleep duration', Integer\) has data-coding 100291: .*special_codes="
    with pytest.raises(AdapterError, match=refused):
        ukb_fields(path, dictionary=dictionary, fields=[1160, 20016], unparsed="token")
    with pytest.raises(AdapterError, match=refused):  # another coding's codes do not cover this one
        ukb_fields(path, dictionary=dictionary, fields=[1160], unparsed="token", special_codes={100290: [-1]})
    uncoded = ukb_fields(path, dictionary=dictionary, fields=[20016], unparsed="token")
    np.testing.assert_array_equal(uncoded.values[:5, 0, 0], [6, 8, 0, 13, 9])
    expected = [7, np.nan, np.nan, 8, np.nan, 6]
    for codes in ({100291: [-1, -3]}, {"100291": [-3, -1]}, "negative_to_nan"):
        modality = ukb_fields(path, dictionary=dictionary, fields=[1160, 20016], unparsed="token", special_codes=codes)
        np.testing.assert_array_equal(modality.values[:, 0, 0], expected)
        np.testing.assert_array_equal(modality.values[:5, 1, 0], [6, 8, 0, 13, 9])
        assert modality.source["special_codes"] == {"1160-2.0": {"coding": "100291", "to_nan": {"-1": 1, "-3": 1}}}
    with pytest.raises(
        AdapterError,
        match=rf"coded.csv: column '1160-2.0': subject {EIDS[1]}: value -3 of field 1160 \('Sleep duration'\) is"
        r" negative but not one of special_codes\[100291\] \[-1\]",
    ):
        ukb_fields(path, dictionary=dictionary, fields=[1160], unparsed="token", special_codes={100291: [-1]})
    frame = dictionary_frame()  # a DataFrame dictionary whose Coding column is numbers, NaN when empty
    frame["Coding"] = pd.to_numeric(frame["Coding"]).astype(float)
    with pytest.raises(AdapterError, match=r"field 1160 \('Sleep duration', Integer\) has data-coding 100291"):
        ukb_fields(path, dictionary=frame, fields=[1160, 20016], unparsed="token")
    ukb_fields(path, dictionary=frame, fields=[20016, 25011], unparsed="token")
    with pytest.raises(AdapterError, match=r"data dictionary has no Coding column"):
        ukb_fields(path, dictionary=frame.drop(columns=["Coding"]), fields=[20016], unparsed="token")
    for bad, message in (
        ("negative", r"special_codes='negative': choose one of 'negative_to_nan'"),
        ({100291: -1}, r"special_codes\[100291\] must be a list of numbers"),
        ({100291: ["-1"]}, r"special_codes\[100291\] must be a list of numbers"),
        ([-1, -3], r"special_codes must be 'negative_to_nan' or a mapping"),
    ):
        with pytest.raises(AdapterError, match=message):
            ukb_fields(path, dictionary=dictionary, fields=[1160], unparsed="token", special_codes=bad)


def test_duplicate_eids_and_bad_dictionaries(tmp_path, dictionary):
    df = table()
    df.loc[4, "eid"] = df.loc[1, "eid"]
    path = tmp_path / "dup.csv"
    df.to_csv(path, index=False)
    with pytest.raises(AdapterError, match=rf"dup.csv: column 'eid': 1 duplicated subject ID\(s\): {EIDS[1]}"):
        ukb_fields(path, dictionary=dictionary, fields=[25011])
    bad = tmp_path / "dict.tsv"
    dictionary_frame().drop(columns=["ValueType"]).to_csv(bad, sep="\t", index=False)
    with pytest.raises(AdapterError, match=r"dict.tsv: data dictionary lacks column\(s\) \['ValueType'\]"):
        ukb_fields(path, dictionary=bad, fields=[25011])
    with pytest.raises(AdapterError, match=r"data dictionary file not found"):
        ukb_fields(path, dictionary=tmp_path / "nowhere.tsv", fields=[25011])


# ---------------------------------------------------------------------------------------------------- from a config
def test_a_data_config_builds_a_cohort_and_its_cache_key_covers_the_dictionary(tmp_path, dictionary, main_csv):
    from mot_neuro.data.sources import build_cached_cohort

    rng = np.random.default_rng(0)
    pd.DataFrame({"eid": EIDS, "age": rng.uniform(45, 80, N), "target": rng.normal(size=N)}).to_csv(
        tmp_path / "participants.csv", index=False
    )
    modalities = {
        "subcortical": {"adapter": "ukb_fields", "path_or_df": main_csv.name, "dictionary": dictionary.name,
                        "categories": [1102], "instance": 2},
        "white_matter": {"adapter": "ukb_fields", "path_or_df": main_csv.name, "dictionary": dictionary.name,
                         "fields": [25061, 25488, 25536]},
    }  # fmt: skip
    settings = dict(targets=["target"], confounds=["age"], cache_dir=tmp_path / "cache", base_dir=tmp_path)
    cohort, key = build_cached_cohort(participants="participants.csv", modalities=modalities, **settings)
    assert cohort.modalities["subcortical"].token_names == [
        "left_thalamus",
        "right_thalamus",
        "brain_stem_4th_ventricle",
    ]
    assert cohort.modalities["white_matter"].feature_names == ["skeleton_fa", "tract_fa", "tract_md"]
    row = cohort.participants.index.get_loc(EIDS[1])
    np.testing.assert_allclose(cohort.modalities["subcortical"].values[row, 2, 0], values(25025, 2)[1], rtol=1e-6)
    edited = dictionary_frame()
    edited.loc[edited["FieldID"] == 25025, "Field"] = "Volume of brain stem"
    edited.to_csv(dictionary, sep="\t", index=False, quoting=3)
    cohort, again = build_cached_cohort(participants="participants.csv", modalities=modalities, **settings)
    assert again != key and cohort.modalities["subcortical"].token_names[2] == "brain_stem"


def test_the_shipped_rules_file_is_an_input_of_the_cache_key(tmp_path, dictionary, main_csv, monkeypatch):
    """Without rules=, the tokens depend on the shipped rules file: editing it (or a new version of the package)
    must not reuse tokens built with the old rules."""
    import data_adapters.ukb
    from data_adapters.registry import input_files
    from mot_neuro.data.sources import build_cached_cohort

    kwargs = {"path_or_df": str(main_csv), "dictionary": str(dictionary)}
    assert input_files("ukb_fields", kwargs) == [str(main_csv), str(dictionary), str(RULES_FILE)]
    own = tmp_path / "my_rules.tsv"
    own.write_text(RULES_FILE.read_text())
    assert input_files("ukb_fields", dict(kwargs, rules=str(own))) == [str(main_csv), str(dictionary), str(own)]
    listed = dict(kwargs, rules=[{"measure": "volume", "pattern": "Volume of (?P<region>.+)"}])
    assert input_files("ukb_fields", listed) == [str(main_csv), str(dictionary)]

    monkeypatch.setattr(data_adapters.ukb, "RULES_FILE", own)  # the shipped file, as a later version edits it
    pd.DataFrame({"eid": EIDS, "target": np.arange(N, dtype=float)}).to_csv(tmp_path / "participants.csv", index=False)
    modalities = {"subcortical": {"adapter": "ukb_fields", "path_or_df": main_csv.name, "dictionary": dictionary.name,
                                  "categories": [1102]}}  # fmt: skip
    settings = dict(targets=["target"], confounds=[], cache_dir=tmp_path / "cache", base_dir=tmp_path)
    cohort, key = build_cached_cohort(participants="participants.csv", modalities=modalities, **settings)
    assert cohort.modalities["subcortical"].feature_names == ["volume"]
    own.write_text(RULES_FILE.read_text().replace("\nvolume\tVolume of", "\nsubcortical_volume\tVolume of"))
    cohort, again = build_cached_cohort(participants="participants.csv", modalities=modalities, **settings)
    assert again != key and cohort.modalities["subcortical"].feature_names == ["subcortical_volume"]

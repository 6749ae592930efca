"""Gene adapters on real files shipped by installed packages (located at run time, never copied into the repo)
and on small tables written to tmp_path."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

bed_reader = pytest.importorskip("bed_reader")
from bed_reader import open_bed  # noqa: E402

from data_adapters.core import AdapterError  # noqa: E402
from data_adapters.gene import feature_table, plink, read_gmt, vcf  # noqa: E402

BED_DATA = Path(bed_reader.__file__).parent / "tests" / "data"


def _vcf_1kg() -> Path:
    spec = importlib.util.find_spec("vcf")
    if spec is None or spec.origin is None:
        pytest.skip("pyvcf3 (ships the 1000 Genomes sample VCF) is not installed")
    return Path(spec.origin).parent / "test" / "1kg.vcf.gz"


def reference_read(prefix: str) -> tuple[np.ndarray, list[str]]:
    """Dosages and SNP IDs straight from bed-reader, the independent reference."""
    with open_bed(BED_DATA / f"{prefix}.bed") as reader:
        return reader.read(dtype=np.float32), list(reader.sid)


def assert_tokens_match(modality, matrix: np.ndarray, column_ids: list[str]) -> None:
    """Every real slot equals the reference column named in token_features; pads are 0; NaN where missing."""
    json.dumps(modality.source)  # source feeds cache fingerprints and run metadata: plain JSON types only
    column = {sid: j for j, sid in enumerate(column_ids)}
    for t, token in enumerate(modality.token_names):
        members = modality.source["token_features"][token]
        k = len(members)
        np.testing.assert_array_equal(modality.values[:, t, :k], matrix[:, [column[m] for m in members]])
        assert modality.feature_mask[t, :k].all() and not modality.feature_mask[t, k:].any()
        assert (modality.values[:, t, k:] == 0).all()
        expected_present = ~np.isnan(matrix[:, [column[m] for m in members]]).all(axis=1)
        np.testing.assert_array_equal(modality.present[:, t], expected_present)


# ============================================================================ PLINK on bed-reader's test data
def test_plink_chromosome_tokens_match_bed_reader_small():
    modality = plink(BED_DATA / "small.bed")
    matrix, sids = reference_read("small")
    assert modality.token_names == ["chr1", "chr5", "chrY"]
    assert modality.values.dtype == np.float32 and modality.values.shape == (3, 3, 2)
    assert list(modality.subject_ids) == ["iid1", "iid2", "iid3"]
    assert modality.source["token_features"] == {"chr1": ["sid1", "sid2"], "chr5": ["sid3"], "chrY": ["sid4"]}
    assert_tokens_match(modality, matrix, sids)
    # sid3 is missing for iid1 and iid2: their chr5 token is NaN and absent, not imputed.
    assert np.isnan(modality.values[:2, 1, 0]).all()
    assert modality.present[:, 1].tolist() == [False, False, True]


@pytest.mark.parametrize("suffix", ["", ".bim", ".fam"])
def test_plink_accepts_prefix_or_any_of_the_three_files(suffix):
    modality = plink(str(BED_DATA / "small") + suffix)
    assert modality.token_names == ["chr1", "chr5", "chrY"]
    assert modality.source["files"][0].endswith("small.bed")


def test_plink_missing_calls_stay_nan():
    modality = plink(BED_DATA / "some_missing.bed", grouping="snp")
    matrix, sids = reference_read("some_missing")
    assert np.isnan(matrix).sum() > 0
    assert np.isnan(modality.values).sum() == np.isnan(matrix).sum()
    assert_tokens_match(modality, matrix, sids)


def test_plink_window_tokens_cover_every_snp_once_in_its_window():
    window = 5_000_000
    modality = plink(BED_DATA / "toydata.5chrom", grouping="window", window_bp=window)
    matrix, sids = reference_read("toydata.5chrom")
    bim = pd.read_csv(BED_DATA / "toydata.5chrom.bim", sep="\t", header=None, dtype={0: str})
    chrom_of, pos_of = dict(zip(bim[1], bim[0], strict=True)), dict(zip(bim[1], bim[3], strict=True))
    placed = []
    for token, members in modality.source["token_features"].items():
        chrom, begin, end = re.fullmatch(r"chr(\w+):(\d+)-(\d+)", token).groups()
        assert int(end) - int(begin) == window
        assert all(chrom_of[m] == chrom and int(begin) <= pos_of[m] < int(end) for m in members)
        placed += members
    assert sorted(placed) == sorted(sids)
    assert modality.feature_mask.sum() == len(sids)
    assert_tokens_match(modality, matrix, sids)


def test_plink_max_features_per_token_splits_long_tokens():
    whole = plink(BED_DATA / "toydata.5chrom")
    capped = plink(BED_DATA / "toydata.5chrom", max_features_per_token=700)
    assert capped.n_features == 700
    chr1 = whole.source["token_features"]["chr1"]
    parts = [capped.source["token_features"][t] for t in capped.token_names if t.startswith("chr1/")]
    assert len(chr1) == 2841 and [len(p) for p in parts] == [700, 700, 700, 700, 41]
    assert sum(parts, []) == chr1


def test_plink_region_tokens_from_a_gene_table(tmp_path):
    bim = pd.read_csv(BED_DATA / "toydata.5chrom.bim", sep="\t", header=None, dtype={0: str})
    chr2 = bim[bim[0] == "2"].sort_values(3)
    start, end = int(chr2[3].iloc[10]), int(chr2[3].iloc[29])  # 1-based, both ends inclusive
    expected = chr2[(chr2[3] >= start) & (chr2[3] <= end)][1].tolist()
    genes = tmp_path / "genes.tsv"
    pd.DataFrame(
        {"Gene": ["GENE_A", "NOWHERE"], "Chr": ["chr2", "chr7"], "Start": [start, 1], "End": [end, 100]}
    ).to_csv(genes, sep="\t", index=False)
    with pytest.warns(UserWarning, match="NOWHERE"):
        modality = plink(BED_DATA / "toydata.5chrom", grouping="region", regions=genes)
    assert modality.token_names == ["GENE_A"]
    assert modality.source["token_features"]["GENE_A"] == expected and len(expected) == 20
    assert modality.source["dropped_groups"] == ["NOWHERE"]
    matrix, sids = reference_read("toydata.5chrom")
    assert_tokens_match(modality, matrix, sids)

    with pytest.raises(AdapterError, match=r"region 'NOWHERE' \(chr7:1-100\) holds no variant") as err:
        plink(BED_DATA / "toydata.5chrom", grouping="region", regions=genes, empty_groups="error")
    assert "genes.tsv" in str(err.value)


def test_plink_no_variant_in_any_region_is_an_error():
    regions = pd.DataFrame({"name": ["G1"], "chrom": ["22"], "start": [1], "end": [10]})
    with pytest.raises(AdapterError, match="no variant of .* falls in any of the 1 regions"):
        plink(BED_DATA / "small", grouping="region", regions=regions)


def test_chromosome_names_with_leading_zeros_are_one_chromosome():
    # UK Biobank's imputed BGENs name chromosomes 01..09; .bim/.pvar files and region tables say 1, chr1
    from data_adapters.variant_groups import group_variants

    chrom = np.array(["01", "chr01", "1", "10", "chr023", "X"], dtype=object)
    pos = np.array([5, 6, 7, 1, 2, 3])
    ids = np.array([f"v{i}" for i in range(6)], dtype=object)
    options = {"window_bp": None, "max_features_per_token": None, "empty_groups": "drop", "file": "f"}
    names, groups, _ = group_variants(chrom, pos, ids, grouping="chromosome", regions=None, **options)
    assert names == ["chr1", "chr10", "chrX"]
    assert [g.tolist() for g in groups] == [[0, 1, 2], [3], [4, 5]]
    regions = pd.DataFrame({"name": ["G1", "G10"], "chrom": ["chr1", "010"], "start": [1, 1], "end": [6, 9]})
    names, groups, _ = group_variants(chrom, pos, ids, grouping="region", regions=regions, **options)
    assert names == ["G1", "G10"] and [g.tolist() for g in groups] == [[0, 1], [3]]


def test_plink_fid_iid_subject_ids():
    modality = plink(BED_DATA / "small", id_format="fid_iid")
    assert list(modality.subject_ids) == ["fid1_iid1", "fid1_iid2", "fid2_iid3"]


# ---------------------------------------------------------------------------- PLINK bad input
def test_plink_size_mismatch_explains_counts():
    with pytest.raises(AdapterError) as err:
        plink(BED_DATA / "small_too_short.bed")
    message = str(err.value)
    assert "small_too_short.bed" in message
    assert "size 6 bytes does not match 3 samples in small_too_short.fam and 4 variants" in message
    assert "expected 7 bytes" in message


def test_plink_missing_fam_names_the_file():
    with pytest.raises(AdapterError, match=r"small_no_fam\.fam: PLINK sample list file not found"):
        plink(BED_DATA / "small_no_fam.bed")


def test_plink_missing_bim_names_the_file():
    with pytest.raises(AdapterError, match=r"small_no_bim\.bim: PLINK variant list file not found"):
        plink(BED_DATA / "small_no_bim.bed")


def _small_with_bed(tmp_path: Path, bed_name: str) -> Path:
    """bed-reader's broken .bed next to small.bim/.fam, in tmp_path (the package folder stays untouched)."""
    shutil.copy(BED_DATA / bed_name, tmp_path / "x.bed")
    shutil.copy(BED_DATA / "small.bim", tmp_path / "x.bim")
    shutil.copy(BED_DATA / "small.fam", tmp_path / "x.fam")
    return tmp_path / "x.bed"


def test_plink_bad_magic_number(tmp_path):
    with pytest.raises(AdapterError, match=r"x\.bed: not a PLINK 1 binary \.bed: it must start with bytes 6c 1b"):
        plink(_small_with_bed(tmp_path, "badfile.bed"))


def test_plink_bad_mode_byte(tmp_path):
    with pytest.raises(AdapterError, match=r"x\.bed: unknown \.bed mode byte 0x30"):
        plink(_small_with_bed(tmp_path, "smallmodebad.bed"))


def test_plink_duplicated_sample_ids(tmp_path):
    bed = _small_with_bed(tmp_path, "small.bed")
    (tmp_path / "x.fam").write_text("f1 A 0 0 1 -9\nf2 B 0 0 1 -9\nf3 A 0 0 2 -9\n")
    with pytest.raises(AdapterError, match=r"x\.fam: column 'IID': 1 duplicated subject ID\(s\): A"):
        plink(bed)
    # The same IIDs in different families are distinct subjects under FID_IID.
    assert list(plink(bed, id_format="fid_iid").subject_ids) == ["f1_A", "f2_B", "f3_A"]


def test_plink_bad_bim_line_is_named(tmp_path):
    bed = _small_with_bed(tmp_path, "small.bed")
    shutil.copy(BED_DATA / "small.bad_bim", tmp_path / "x.bim")  # its 3rd line has 5 fields, not 6
    with pytest.raises(AdapterError, match=r"x\.bim: line 3: too few fields"):
        plink(bed)


def test_plink_unknown_grouping_lists_the_options():
    with pytest.raises(AdapterError, match=r"unknown grouping 'gene': use 'chromosome', 'window'"):
        plink(BED_DATA / "small", grouping="gene")
    with pytest.raises(AdapterError, match="window_bp= goes with grouping='window'"):
        plink(BED_DATA / "small", window_bp=1000)


# ============================================================================ VCF
def parse_gt_dosages(path: Path) -> tuple[list[str], dict[str, np.ndarray], dict[str, int]]:
    """Independent parse of GT with gzip + str.split: non-reference allele count, NaN if any allele is '.'.
    Returns sample names, dosages by variant ID (chrom:pos:ref:alt where ID is '.'), positions by ID."""
    samples, dosages, positions = [], {}, {}
    with gzip.open(path, "rt") as fh:
        for line in fh:
            if line.startswith("##"):
                continue
            fields = line.rstrip("\n").split("\t")
            if line.startswith("#"):
                samples = fields[9:]
                continue
            chrom, pos, vid, ref, alt = fields[:5]
            gt_index = fields[8].split(":").index("GT")
            row = []
            for call in fields[9:]:
                alleles = re.split(r"[/|]", call.split(":")[gt_index])
                row.append(np.nan if "." in alleles else sum(a != "0" for a in alleles))
            key = vid if vid != "." else f"{chrom}:{pos}:{ref}:{alt}"
            assert key not in dosages
            dosages[key] = np.array(row, dtype=np.float32)
            positions[key] = int(pos)
    return samples, dosages, positions


def test_vcf_dosages_match_an_independent_parse_of_1000_genomes():
    path = _vcf_1kg()
    samples, dosages, _ = parse_gt_dosages(path)
    modality = vcf(path, grouping="window", window_bp=50_000)
    assert list(modality.subject_ids) == samples and modality.n_subjects == 629
    assert all(t.startswith("chr2:") for t in modality.token_names)
    ids = list(dosages)
    matrix = np.stack([dosages[k] for k in ids], axis=1)
    assert np.isnan(matrix).any() and (matrix == 2).any()
    assert_tokens_match(modality, matrix, ids)
    assert modality.feature_mask.sum() == len(ids) == modality.source["n_variants_in_file"] == 381


def test_vcf_samples_and_regions(tmp_path):
    path = _vcf_1kg()
    regions = pd.DataFrame(
        {"gene": ["A", "B"], "chr": ["chr2", "2"], "start": [10_000, 25_000], "end": [19_999, 31_000]}
    )
    modality = vcf(path, grouping="region", regions=regions, samples=["HG00100", "HG00098"])
    assert list(modality.subject_ids) == ["HG00098", "HG00100"]  # the file's order
    assert modality.token_names == ["A", "B"]
    samples, dosages, positions = parse_gt_dosages(path)
    keep = [samples.index("HG00098"), samples.index("HG00100")]
    for t, token in enumerate(modality.token_names):
        members = modality.source["token_features"][token]
        lo, hi = regions.loc[t, "start"], regions.loc[t, "end"]
        assert members == [m for m, p in positions.items() if lo <= p <= hi]
        reference = np.stack([dosages[m][keep] for m in members], axis=1)
        np.testing.assert_array_equal(modality.values[:, t, : len(members)], reference)
    with pytest.raises(AdapterError, match=r"1kg\.vcf\.gz: 1 requested sample\(s\) not in the VCF header: \['NOPE'\]"):
        vcf(path, samples=["HG00098", "NOPE"])


def test_vcf_haploid_multiallelic_and_partial_calls(tmp_path):
    header = '##fileformat=VCFv4.2\n##contig=<ID=X>\n##FORMAT=<ID=GT,Number=1,Type=String,Description="GT">\n'
    rows = [
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1\ts2\ts3",
        "X\t100\trs1\tA\tG\t.\t.\t.\tGT\t0\t1\t0/1",  # haploid calls count 0 or 1
        "X\t200\trs2\tA\tG,T\t.\t.\t.\tGT\t1/2\t0|2\t2/2",  # any ALT counts
        "X\t300\trs3\tA\tG\t.\t.\t.\tGT\t./1\t./.\t1/1",  # a partly missing call is missing
    ]
    path = tmp_path / "tiny.vcf"
    path.write_text(header + "\n".join(rows) + "\n")
    modality = vcf(path, grouping="snp")
    assert modality.token_names == ["rs1", "rs2", "rs3"]
    np.testing.assert_array_equal(modality.values[:, :, 0], [[0, 2, np.nan], [1, 1, np.nan], [1, 2, 2]])
    assert modality.source["n_multiallelic"] == 1
    assert modality.present[:, 2].tolist() == [False, False, True]


def test_vcf_without_cyvcf2_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cyvcf2", None)  # makes `import cyvcf2` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'mot-neuro\[vcf\]' \(or pip install cyvcf2\)"):
        vcf(_vcf_1kg())


def test_vcf_not_a_vcf(tmp_path):
    path = tmp_path / "notes.vcf"
    path.write_text("this is not a VCF\n")
    with pytest.raises(AdapterError, match=r"notes\.vcf: cyvcf2 could not open it as VCF/BCF"):
        vcf(path)


# ============================================================================ feature tables
@pytest.fixture
def scores() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "eid": ["007", "1002", "1003"],
            "PGS_AD": [0.5, np.nan, -1.25],
            "PGS_SCZ": [1.0, 2.0, 3.0],
            "APOE": [np.nan, np.nan, 1.0],
            "TREM2": [0.0, np.nan, 1.0],
            "BIN1": [4.0, 5.0, 6.0],
        }
    )


def test_table_csv_one_token_per_feature(tmp_path, scores):
    path = tmp_path / "pgs.csv"
    scores.to_csv(path, index=False)
    modality = feature_table(path)
    assert list(modality.subject_ids) == ["007", "1002", "1003"]  # IDs read as text: the leading zero stays
    assert modality.token_names == ["PGS_AD", "PGS_SCZ", "APOE", "TREM2", "BIN1"]
    assert modality.values.shape == (3, 5, 1) and modality.feature_mask.all()
    np.testing.assert_array_equal(modality.values[:, :, 0], scores.drop(columns="eid").to_numpy(np.float32))
    assert modality.present[:, 0].tolist() == [True, False, True]  # NaN kept, marked absent
    assert modality.source["files"] == [str(path)]


def test_table_tsv_chunks_pad_the_last_token(tmp_path, scores):
    path = tmp_path / "burden.tsv"
    scores.to_csv(path, sep="\t", index=False)
    modality = feature_table(path, grouping=2, exclude=["PGS_SCZ"])
    assert modality.token_names == ["chunk0", "chunk1"]
    assert modality.feature_mask.tolist() == [[True, True], [True, True]]
    modality = feature_table(path, grouping=2)
    assert modality.token_names == ["chunk0", "chunk1", "chunk2"]
    assert modality.feature_mask.tolist() == [[True, True], [True, True], [True, False]]
    assert modality.source["token_features"]["chunk2"] == ["BIN1"]
    np.testing.assert_array_equal(modality.values[:, 2], [[4, 0], [5, 0], [6, 0]])
    # APOE and TREM2 share chunk1: subject 1002 has neither.
    assert modality.present[:, 1].tolist() == [True, False, True]


def test_table_parquet_gmt_gene_sets(tmp_path, scores):
    path = tmp_path / "expression.parquet"
    scores.to_parquet(path, index=False)
    gmt = tmp_path / "sets.gmt"
    gmt.write_text(
        "AMYLOID\thttp://example.org/a\tAPOE\tBIN1\tCLU\tTREM2\n"
        "MICROGLIA\tmicroglial genes\tTREM2\n"
        "\n"
        "ABSENT\tno member in the table\tCD33\tMS4A6A\n"
    )
    assert read_gmt(gmt)["AMYLOID"] == ["APOE", "BIN1", "CLU", "TREM2"]
    with pytest.warns(UserWarning, match=r"dropped 1 gene set\(s\) with no member in the table: \['ABSENT'\]"):
        modality = feature_table(path, grouping=gmt, columns=["APOE", "TREM2", "BIN1"])
    assert modality.token_names == ["AMYLOID", "MICROGLIA"]
    assert modality.source["token_features"] == {"AMYLOID": ["APOE", "BIN1", "TREM2"], "MICROGLIA": ["TREM2"]}
    assert modality.source["skipped_members"]["AMYLOID"] == ["CLU"]
    assert modality.source["dropped_groups"] == ["ABSENT"]
    assert modality.feature_mask.tolist() == [[True, True, True], [True, False, False]]
    np.testing.assert_array_equal(modality.values[:, 0], scores[["APOE", "BIN1", "TREM2"]].to_numpy(np.float32))
    np.testing.assert_array_equal(modality.values[:, 1], [[0, 0, 0], [np.nan, 0, 0], [1, 0, 0]])
    assert modality.present[:, 1].tolist() == [True, False, True]
    assert str(gmt) in modality.source["files"]
    json.dumps(modality.source)


def test_table_dataframe_with_id_index_and_dict_gene_sets(scores):
    frame = scores.set_index("eid")
    modality = feature_table(frame, grouping={"S1": ["BIN1", "PGS_AD"]}, name="pgs")
    assert modality.name == "pgs" and modality.token_names == ["S1"]
    np.testing.assert_array_equal(modality.values[:, 0], scores[["BIN1", "PGS_AD"]].to_numpy(np.float32))


# ---------------------------------------------------------------------------- table bad input
def test_table_non_numeric_column_names_column_and_subject(tmp_path, scores):
    scores["TREM2"] = ["0.1", "high", None]  # text in a number column
    path = tmp_path / "t.csv"
    scores.to_csv(path, index=False)
    with pytest.raises(AdapterError, match=r"t\.csv: column 'TREM2': subject 1002: non-numeric value 'high'"):
        feature_table(path)


def test_table_inf_names_subject_and_column(tmp_path, scores):
    scores.loc[2, "BIN1"] = np.inf
    path = tmp_path / "t.csv"
    scores.to_csv(path, index=False)
    with pytest.raises(AdapterError, match=r"t\.csv: column 'BIN1': subject 1003: infinite value"):
        feature_table(path)


def test_table_duplicated_subject_ids(tmp_path, scores):
    scores.loc[2, "eid"] = "1002"
    path = tmp_path / "t.tsv"
    scores.to_csv(path, sep="\t", index=False)
    with pytest.raises(AdapterError, match=r"t\.tsv: column 'eid': 1 duplicated subject ID\(s\): 1002"):
        feature_table(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "feature table is empty"), ("eid,PGS_AD\n", r"no rows \(header only\?\)")],
)
def test_table_empty_or_header_only_csv(tmp_path, content, message):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(AdapterError, match=rf"empty\.csv: {message}"):
        feature_table(path)


def test_table_gmt_set_with_no_member_in_the_table(tmp_path, scores):
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("AMYLOID\t-\tAPOE\nABSENT\t-\tCD33\tMS4A6A\n")
    with pytest.raises(AdapterError, match=r"sets\.gmt: gene set 'ABSENT': none of its 2 members is a column"):
        feature_table(scores, grouping=gmt, empty_groups="error")
    gmt.write_text("ABSENT\t-\tCD33\tMS4A6A\n")
    with pytest.raises(AdapterError, match=r"sets\.gmt: no gene set has a member among the 5 columns"):
        feature_table(scores, grouping=gmt)


def test_table_unknown_grouping_missing_id_column_and_format(tmp_path, scores):
    with pytest.raises(AdapterError, match=r"unknown grouping 'pathway': use 'feature', an int chunk size"):
        feature_table(scores, grouping="pathway")
    with pytest.raises(AdapterError, match=r"no subject ID column 'IID'"):
        feature_table(scores, id_column="IID")
    with pytest.raises(AdapterError, match=r"column\(s\) \['PGS_XX'\] not in the table"):
        feature_table(scores, exclude=["PGS_XX"])
    path = tmp_path / "t.xlsx"
    path.write_bytes(b"")
    with pytest.raises(AdapterError, match=r"t\.xlsx: unknown feature table format"):
        feature_table(path)


def test_gmt_space_separated_line_is_named(tmp_path):
    gmt = tmp_path / "spaces.gmt"
    gmt.write_text("SET1\tdesc\tA\nSET2 desc B C\n")
    with pytest.raises(AdapterError, match=r"spaces\.gmt: line 2: expected 'name<TAB>description<TAB>members"):
        read_gmt(gmt)


def test_plink_reads_in_blocks_of_variants_with_the_same_result(monkeypatch):
    # Blocks of 7 variants, and regions with gaps between them: exercises block edges and non-contiguous reads.
    import data_adapters.gene as gene

    monkeypatch.setattr(gene, "_BLOCK_VALUES", 500 * 7)
    bim = pd.read_csv(BED_DATA / "toydata.5chrom.bim", sep="\t", header=None, dtype={0: str})
    chr3 = bim[bim[0] == "3"][3].sort_values().to_numpy()
    regions = pd.DataFrame(
        {"name": ["R1", "R2", "R3"], "chrom": "3", "start": chr3[[0, 40, 45]], "end": chr3[[9, 60, 50]]}
    )
    modality = plink(BED_DATA / "toydata.5chrom", grouping="region", regions=regions)
    assert [len(v) for v in modality.source["token_features"].values()] == [10, 21, 6]  # R3 overlaps R2
    matrix, sids = reference_read("toydata.5chrom")
    assert_tokens_match(modality, matrix, sids)


def test_vcf_malformed_record_is_named():
    # pyvcf3's issue-16.vcf: a record whose ALT is '.' with GT calls cyvcf2 cannot decode.
    with pytest.raises(AdapterError, match=r"issue-16\.vcf: cyvcf2 could not read variant 20:1234568"):
        vcf(_vcf_1kg().parent / "issue-16.vcf")


def test_gene_adapters_import_neither_torch_nor_cyvcf2():
    # The adapter room is torch-free, and cyvcf2 is an optional extra imported only by vcf().
    code = "import sys, data_adapters.gene; print(sorted({'torch', 'lightning', 'cyvcf2'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

"""BGEN v1.2 genotypes as gene tokens (``data_adapters.bgen``): files written here (``bgen_files``), read through
cbgen, compared with the same genotypes as PLINK 1 through ``gene.plink`` and with the probabilities written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bgen_files import Variant, diploid_probabilities, write_bgen, write_sample, zstd_frame

bed_reader = pytest.importorskip("bed_reader")
pytest.importorskip("cbgen")
from bed_reader import open_bed  # noqa: E402

from data_adapters import bgen as bgen_module  # noqa: E402
from data_adapters import token_fill  # noqa: E402
from data_adapters.bgen import bgen, variant_stats  # noqa: E402
from data_adapters.core import AdapterError  # noqa: E402
from data_adapters.gene import plink  # noqa: E402

BED_DATA = Path(bed_reader.__file__).parent / "tests" / "data"


def bed_as_bgen(prefix: str, folder: Path) -> Path:
    """bed-reader's shipped PLINK 1 files as BGEN hard calls: alleles (A2, A1), so the second allele is PLINK's A1
    (the one gene.plink counts); the .sample holds the .fam's FID and IID as ID_1 and ID_2."""
    with open_bed(BED_DATA / f"{prefix}.bed") as reader:
        calls = reader.read(dtype=np.float64)
        chrom, sid, pos = reader.chromosome, reader.sid, reader.bp_position
        a1, a2, fid, iid = reader.allele_1, reader.allele_2, reader.fid, reader.iid
    variants = [
        Variant(str(chrom[j]), int(pos[j]), str(sid[j]), diploid_probabilities(calls[:, j]), alleles=(a2[j], a1[j]))
        for j in range(calls.shape[1])
    ]
    path = folder / f"{prefix}.bgen"
    write_bgen(path, variants, calls.shape[0])
    write_sample(path.with_suffix(".sample"), list(fid), list(iid))
    return path


def assert_same_modality(ours, reference) -> None:
    json.dumps(ours.source)  # source feeds cache fingerprints and run metadata: plain JSON types only
    assert ours.token_names == reference.token_names
    assert ours.source["token_features"] == reference.source["token_features"]
    np.testing.assert_array_equal(ours.subject_ids, reference.subject_ids)
    np.testing.assert_array_equal(ours.values, reference.values)
    np.testing.assert_array_equal(ours.feature_mask, reference.feature_mask)
    np.testing.assert_array_equal(ours.present, reference.present)


@pytest.fixture(scope="module")
def some_missing(tmp_path_factory) -> Path:
    return bed_as_bgen("some_missing", tmp_path_factory.mktemp("bgen"))


REGIONS = pd.DataFrame(  # positions of some_missing (cumulative over chromosomes): 2-3, 2-4 and 1 variant
    {
        "name": ["A", "B", "C"],
        "chrom": ["1", "chr2", "22"],
        "start": [1, 290_000_000, 2_071_291_000],
        "end": [61_260_001, 400_000_000, 2_071_291_300],
    }
)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"grouping": "window", "window_bp": 40_000_000},
        {"grouping": "snp"},
        {"grouping": "region", "regions": REGIONS},
        {"max_features_per_token": 3},
        {"id_format": "fid_iid"},
    ],
    ids=["chromosome", "window", "snp", "region", "capped", "fid_iid"],
)
def test_hard_calls_equal_plink_on_the_same_genotypes(some_missing, options):
    # bed-reader's some_missing (100 samples x 100 variants on 22 chromosomes, missing calls) both ways
    assert_same_modality(bgen(some_missing, **options), plink(BED_DATA / "some_missing", **options))


def random_variants(rng, n: int, m: int, *, missing: float = 0.1) -> list[Variant]:
    """Soft genotype probabilities on chromosomes 1-3, some samples missing, one variant with hard calls."""
    variants = []
    for j in range(m):
        probabilities = rng.dirichlet([0.3, 0.6, 1.0] if j % 2 else [2.0, 1.0, 0.2], size=n)
        probabilities[rng.random(n) < missing] = np.nan
        variants.append(Variant(str(1 + j % 3), 1000 * (j + 1), f"rs{j}", probabilities))
    variants[-1].probabilities = diploid_probabilities(rng.integers(0, 3, n).astype(float))
    return variants


def written(folder: Path, variants, n: int, **options) -> tuple[Path, list[np.ndarray]]:
    path = folder / "cohort.bgen"
    stored = write_bgen(path, variants, n, **options)
    write_sample(path.with_suffix(".sample"), [str(1000 + i) for i in range(n)])
    return path, stored


def by_variant(modality) -> dict[str, np.ndarray]:
    """Each variant's column of values, by variant ID (from token_features)."""
    out = {}
    for t, token in enumerate(modality.token_names):
        for f, variant in enumerate(modality.source["token_features"][token]):
            out[variant] = modality.values[:, t, f]
    return out


@pytest.mark.parametrize("bits", [8, 3, 16, 32])
def test_dosages_are_the_expected_second_allele_counts_of_the_written_probabilities(tmp_path, bits):
    rng = np.random.default_rng(bits)
    variants = random_variants(rng, 30, 12)
    path, stored = written(tmp_path, variants, 30, bits=bits)
    modality = bgen(path)
    columns = by_variant(modality)
    assert len(columns) == 12 and modality.token_names == ["chr1", "chr2", "chr3"]
    for variant, probabilities in zip(variants, stored, strict=True):
        expected = probabilities[:, 1] + 2 * probabilities[:, 2]  # NaN where the sample is missing
        np.testing.assert_allclose(columns[variant.rsid], expected, rtol=0, atol=1e-6)
    assert np.isnan(modality.values).any() and modality.present.all()


def test_haploid_phased_and_multiallelic_samples(tmp_path):
    rng = np.random.default_rng(1)
    n = 8
    ploidy = np.array([1, 2, 2, 1, 2, 2, 2, 1])
    unphased = rng.dirichlet([1, 1, 1], size=n)
    unphased[ploidy == 1, :2] = rng.dirichlet([1, 1], size=3)
    unphased[ploidy == 1, 2] = np.nan
    unphased[4] = np.nan  # a missing sample
    phased = rng.dirichlet([1, 1], size=(n, 2)).reshape(n, 4)
    phased[ploidy == 1, 2:] = np.nan
    three = rng.dirichlet(np.ones(6), size=n)  # genotypes AA, AB, BB, AC, BC, CC (colex order)
    variants = [
        Variant("X", 10, "haploid", unphased, ploidy=ploidy),
        Variant("X", 20, "phased", phased, ploidy=ploidy, phased=True),
        Variant("3", 30, "triallelic", three, alleles=("A", "C", "T")),
    ]
    path, stored = written(tmp_path, variants, n, bits=16)
    columns = by_variant(bgen(path, grouping="snp"))
    p = stored[0]
    expected = np.where(ploidy == 1, 2 * p[:, 1], p[:, 1] + 2 * p[:, 2])  # haploid: 0-2, as plink2 stores it
    np.testing.assert_allclose(columns["haploid"], expected, atol=1e-6)
    assert np.isnan(columns["haploid"][4])
    h = stored[1]
    expected = np.where(ploidy == 1, 2 * h[:, 1], h[:, 1] + h[:, 3])  # P(second allele), summed over haplotypes
    np.testing.assert_allclose(columns["phased"], expected, atol=1e-6)
    t = stored[2]
    non_first = t @ np.array([0, 1, 2, 1, 2, 2])  # copies of C or T in AA, AB, BB, AC, BC, CC
    np.testing.assert_allclose(columns["triallelic"], non_first, atol=1e-6)
    assert bgen(path).source["n_multiallelic"] == 1


def impute2_info(probabilities: np.ndarray) -> tuple[float, float]:
    """(alt allele frequency, IMPUTE2 info) of diploid probabilities [N, 3], sample by sample as published."""
    e_sum = f_sum = 0.0
    var_sum, n = 0.0, 0
    for p0, p1, p2 in probabilities:
        if np.isnan(p0):
            continue
        e, f = p1 + 2 * p2, p1 + 4 * p2
        e_sum, var_sum, n = e_sum + e, var_sum + (f - e * e), n + 1
        f_sum += f
    theta = e_sum / (2 * n)
    info = 1.0 if theta in (0.0, 1.0) else 1 - var_sum / (2 * n * theta * (1 - theta))
    return theta, info


def test_info_and_maf_match_a_direct_computation(tmp_path):
    rng = np.random.default_rng(5)
    variants = random_variants(rng, 40, 10)
    n = 40
    variants.append(Variant("4", 1, "uninformative", np.tile([0.25, 0.5, 0.25], (n, 1))))  # HWE prior: info 0
    variants.append(Variant("4", 2, "monomorphic", np.tile([1.0, 0.0, 0.0], (n, 1))))  # theta 0: info 1
    path, stored = written(tmp_path, variants, n, bits=16)
    table = variant_stats(path)
    assert table["id"].tolist() == [v.rsid for v in variants]
    for row, probabilities in zip(table.itertuples(), stored, strict=True):
        theta, info = impute2_info(probabilities)
        assert row.alt_freq == pytest.approx(theta, abs=1e-9)
        assert row.maf == pytest.approx(min(theta, 1 - theta), abs=1e-9)
        assert row.info == pytest.approx(info, abs=1e-9)
    assert table.set_index("id").loc["uninformative", "info"] == pytest.approx(0.0, abs=1e-4)
    assert table.set_index("id").loc["monomorphic", "info"] == 1.0
    assert table.set_index("id").loc[variants[-3].rsid, "info"] == pytest.approx(1.0)  # hard calls


def test_min_info_and_min_maf_keep_exactly_the_variants_that_pass(tmp_path):
    rng = np.random.default_rng(7)
    path, _ = written(tmp_path, random_variants(rng, 40, 24), 40)
    table = variant_stats(path)
    for options in ({"min_info": 0.3}, {"min_maf": 0.2}, {"min_info": 0.3, "min_maf": 0.2}):
        passes = np.ones(len(table), dtype=bool)
        for argument, threshold in options.items():
            passes &= table[argument.removeprefix("min_")].to_numpy() >= threshold
        assert 0 < passes.sum() < len(table), "the thresholds must split these variants"
        modality = bgen(path, grouping="snp", **options)
        assert sorted(modality.token_names) == sorted(table["id"][passes])
        assert modality.source["n_variants_kept"] == passes.sum()
        removed = modality.source["filters"]["removed"]
        for argument, threshold in options.items():
            assert removed[argument] == (table[argument.removeprefix("min_")] < threshold).sum()


def test_reading_in_blocks_gives_the_same_tokens(tmp_path, monkeypatch):
    rng = np.random.default_rng(11)
    path, _ = written(tmp_path, random_variants(rng, 20, 30), 20)
    options = {"grouping": "window", "window_bp": 4000, "min_info": 0.1}
    whole = bgen(path, **options)
    widths = []
    real = bgen_module._Blocks.dosages
    monkeypatch.setattr(bgen_module._Blocks, "dosages", lambda self, idx: widths.append(len(idx)) or real(self, idx))
    monkeypatch.setattr(token_fill, "_BLOCK_VALUES", 20 * 4)  # 4 variants per block
    blocked = bgen(path, **options)
    assert_same_modality(blocked, whole)
    assert max(widths) == 4 and sum(widths) == whole.source["n_variants_kept"]


def test_variant_list_and_variant_ids(tmp_path):
    rng = np.random.default_rng(3)
    variants = random_variants(rng, 10, 6)
    variants[2].rsid = "."  # no rsID: the variant ID field, then chrom:pos:alleles stand in
    variants[3].rsid, variants[3].varid = "", "var3"
    path, _ = written(tmp_path, variants, 10)
    ids = bgen(path, grouping="snp").token_names
    assert sorted(ids) == sorted(["rs0", "rs1", "3:3000:A:G", "var3", "rs4", "rs5"])
    positions = bgen(path, grouping="snp", variant_id="position").token_names
    assert sorted(positions) == sorted(f"{v.chrom}:{v.pos}:A:G" for v in variants)
    listed = tmp_path / "keep.txt"
    listed.write_text("rs4\nvar3 some comment\n# a comment line\nnot_in_file\n")
    with pytest.warns(UserWarning, match="1 of the 3 IDs"):
        kept = bgen(listed.with_name("cohort.bgen"), grouping="snp", variants=listed)
    assert sorted(kept.token_names) == ["rs4", "var3"]
    assert bgen(path, variants=["rs0", "rs1"]).source["token_features"] == {"chr1": ["rs0"], "chr2": ["rs1"]}


def test_sample_ids_from_the_sample_file_or_the_bgen(tmp_path):
    rng = np.random.default_rng(2)
    variants = random_variants(rng, 4, 3)
    path = tmp_path / "ukb22828_c1_b0_v3.bgen"
    write_bgen(path, variants, 4, samples=["s1", "s2", "s3", "s4"])
    assert bgen(path).subject_ids.tolist() == ["s1", "s2", "s3", "s4"]  # no .sample: the stored IDs
    one_line_error(lambda: bgen(path, id_format="fid_iid"), "stores only one ID per sample", "ukb22828_c1_b0_v3.sample")
    write_bgen(path, variants, 4)  # UK Biobank's imputed BGENs store no sample IDs
    sample = tmp_path / "ukb22828_c1_b0_v3_s4.sample"  # UK Biobank's naming: not the BGEN's name
    write_sample(sample, ["1", "2", "3", "-1"], ["1001", "1002", "1003", "-1"])  # -1: a withdrawn participant
    assert bgen(path, sample=sample).subject_ids.tolist() == ["1001", "1002", "1003", "-1"]
    assert bgen(path, sample=sample, id_format="fid_iid").subject_ids.tolist()[0] == "1_1001"
    shutil.copy(sample, path.with_suffix(".sample"))  # beside, with the BGEN's name: found by default
    modality = bgen(path)
    assert modality.subject_ids.tolist()[0] == "1001" and modality.source["files"][1].endswith(".sample")
    assert "stored_sample_ids_match" not in modality.source


def test_stored_sample_ids_must_match_the_sample_file(tmp_path):
    variants = random_variants(np.random.default_rng(12), 4, 2)
    path = tmp_path / "cohort.bgen"
    write_bgen(path, variants, 4, samples=["s1", "s2", "s3", "s4"])
    sample = path.with_suffix(".sample")
    # plink2 stores the IID (ID_2), QCTOOL the ID_1 column; either matching row by row is the same sample order
    for id_1, id_2, column in [
        (["f1", "f2", "f3", "f4"], ["s1", "s2", "s3", "s4"], "ID_2"),
        (["s1", "s2", "s3", "s4"], ["1", "2", "3", "4"], "ID_1"),
    ]:
        write_sample(sample, id_1, id_2)
        modality = bgen(path)
        assert modality.subject_ids.tolist() == id_2 and modality.source["stored_sample_ids_match"] == column
    write_bgen(path, variants, 4, samples=["f1_s1", "f2_s2", "f3_s3", "f4_s4"])  # plink2's FID_IID
    write_sample(sample, ["f1", "f2", "f3", "f4"], ["s1", "s2", "s3", "s4"])
    assert bgen(path, id_format="fid_iid").source["stored_sample_ids_match"] == "ID_1_ID_2"
    write_bgen(path, variants, 4, samples=["s1", "s2", "s3", "s4"])
    write_sample(sample, ["s1", "s2", "s4", "s3"])  # rows 3 and 4 swapped: their genotypes would be swapped
    one_line_error(
        lambda: bgen(path),
        r"line 5 \(sample 3\): ID_2 is 's4', but cohort\.bgen stores 's3' as sample 3: the \.sample lists the same"
        " samples in another order",
        "cohort.sample",
    )
    write_sample(sample, ["x1", "x2", "x3", "x4"])
    one_line_error(lambda: bgen(path, sample=sample), r"line 3 \(sample 1\).*lists other samples", "cohort.sample")


def test_metafile_written_nowhere_by_default_or_once_where_asked(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    path, _ = written(tmp_path, random_variants(rng, 10, 8), 10)
    before = sorted(p.name for p in tmp_path.iterdir())
    first = bgen(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing left beside the data
    index = tmp_path / "index" / "cohort.metafile"
    assert_same_modality(bgen(path, metafile=index), first)
    # no temporary file left; beside the index, the record of which BGEN it indexes
    assert sorted(p.name for p in index.parent.iterdir()) == ["cohort.metafile", "cohort.metafile.source.json"]

    def no_new_index(*args, **kwargs):
        raise AssertionError("the metafile should have been reused")

    cbgen = pytest.importorskip("cbgen")
    monkeypatch.setattr(cbgen.bgen_file, "create_metafile", no_new_index)
    assert_same_modality(bgen(path, metafile=index), first)


def test_a_metafile_that_cannot_be_written_is_named(small):
    path, _ = small
    blocked = path.with_name("cohort.sample") / "index.metafile"  # its folder would be a file
    error = one_line_error(lambda: bgen(path, metafile=blocked), "cbgen could not index the variants", "cohort.bgen")
    assert str(blocked) in str(error)
    assert sorted(p.name for p in path.parent.iterdir()) == ["cohort.bgen", "cohort.sample"]


def test_a_metafile_of_another_bgen_beside_it_is_ignored(tmp_path):
    rng = np.random.default_rng(6)
    variants = random_variants(rng, 10, 8)
    path, _ = written(tmp_path, variants, 10)
    expected = bgen(path)
    other = tmp_path / "other"
    other.mkdir()
    for v in variants:
        v.rsid = v.rsid + "_longer_name"  # same counts, other offsets
    other_path, _ = written(other, variants, 10)
    bgen(other_path, metafile=tmp_path / "cohort.bgen.metafile")  # the other file's index, beside this one
    assert_same_modality(bgen(path), expected)


# ---------------------------------------------------------------------------------------------- bad inputs
def one_line_error(call, match: str, file_name: str) -> AdapterError:
    with pytest.raises(AdapterError, match=match) as caught:
        call()
    assert "\n" not in str(caught.value) and Path(caught.value.file).name == file_name
    return caught.value


@pytest.fixture
def small(tmp_path) -> tuple[Path, list[Variant]]:
    variants = random_variants(np.random.default_rng(0), 4, 3)
    path, _ = written(tmp_path, variants, 4)
    return path, variants


def test_missing_sample_file_names_where_it_was_expected(small):
    path, _ = small
    path.with_suffix(".sample").unlink()
    one_line_error(lambda: bgen(path), r"no \.sample file: this BGEN stores no sample IDs", "cohort.sample")
    one_line_error(lambda: bgen(path, sample=path.with_name("nope.sample")), "sample file not found", "nope.sample")


def test_sample_count_must_match_the_bgen_header(small):
    path, _ = small
    write_sample(path.with_suffix(".sample"), ["1", "2", "3"])
    one_line_error(lambda: bgen(path), r"3 samples, but the header of cohort\.bgen declares 4", "cohort.sample")


def test_duplicated_sample_ids(small):
    path, _ = small
    write_sample(path.with_suffix(".sample"), ["1", "2", "3", "4"], ["7", "8", "7", "9"])
    one_line_error(lambda: bgen(path), "1 duplicated subject ID", "cohort.sample")
    assert bgen(path, id_format="fid_iid").subject_ids.tolist() == ["1_7", "2_8", "3_7", "4_9"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("FID IID\n0 0\n1 1\n", "must start 'ID_1 ID_2'"),
        ("ID_1 ID_2 missing\n1 1 0\n2 2 0\n", "column-type row"),
        ("ID_1 ID_2\n0 0\n1 1\n2\n3 3\n4 4\n", "line 4: a sample line needs ID_1 and ID_2"),
    ],
)
def test_malformed_sample_file(small, content, match):
    path, _ = small
    path.with_suffix(".sample").write_text(content)
    one_line_error(lambda: bgen(path), match, "cohort.sample")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"layout": 1}, r"layout 1 \(v1\.1\) is not supported"),
        ({"layout": 3}, "unknown BGEN layout 3"),
        ({"compression": 0}, "uncompressed layout-2 BGEN is not supported"),
        ({"bits_field": 40}, "40 bits per probability"),
        ({"bits_field": 0}, "0 bits per probability"),
        ({"declared_samples": 5}, "holds 4 samples, the header 5"),
    ],
)
def test_unsupported_or_inconsistent_bgen(tmp_path, small, options, match):
    _, variants = small
    path = tmp_path / "bad.bgen"
    write_bgen(path, variants, 4, **{k: v for k, v in options.items() if k != "compression"})
    if options.get("compression") == 0:  # flag the blocks as uncompressed: refused from the header alone
        raw = bytearray(path.read_bytes())
        header_length = int.from_bytes(raw[4:8], "little")
        raw[header_length : header_length + 4] = (2 << 2).to_bytes(4, "little")  # the flags: layout 2, no compression
        path.write_bytes(bytes(raw))
    write_sample(path.with_suffix(".sample"), ["1", "2", "3", "4"] + (["5"] if "declared_samples" in options else []))
    one_line_error(lambda: bgen(path), match, "bad.bgen")


def test_a_later_block_decoding_to_impossible_probabilities_is_named(tmp_path):
    variants = random_variants(np.random.default_rng(8), 6, 4, missing=0.0)
    # stored as the bytes 128, 127 per sample; read as 4-bit numbers, the 2nd sample's are 15/15 and 7/15, which
    # leaves -7/15 for its third genotype
    variants[2].probabilities = np.tile([0.5, 0.5, 0.0], (6, 1))
    variants[2].declared_bits = 4
    path, _ = written(tmp_path, variants, 6)
    one_line_error(lambda: bgen(path), r"variant 3:3000 \(rs2\): decoded genotype probabilities outside", "cohort.bgen")


def test_not_a_bgen(tmp_path):
    path = tmp_path / "text.bgen"
    path.write_text("chrom pos id ref alt and more text here\n")
    one_line_error(lambda: bgen(path), "not a BGEN file", "text.bgen")
    path.write_bytes(b"\x01\x02")
    one_line_error(lambda: bgen(path), "too short to be a BGEN file", "text.bgen")
    one_line_error(lambda: bgen(tmp_path / "absent.bgen"), "BGEN file not found", "absent.bgen")


def test_nothing_left_after_the_filters_names_them(small):
    path, _ = small
    error = one_line_error(
        lambda: bgen(path, min_info=1.0, min_maf=0.5), "no variant left after the filters", "cohort.bgen"
    )
    assert "min_maf=0.5 fails" in str(error) and "min_info=1 fails" in str(error)
    one_line_error(lambda: bgen(path, variants=["rs404"]), "none of the 1 IDs of the variant list", "cohort.bgen")
    with pytest.raises(AdapterError, match=r"min_maf=0\.7: give a number between 0 and 0\.5"):
        bgen(path, min_maf=0.7)
    with pytest.raises(AdapterError, match="variant_id='name': choose one of"):
        bgen(path, variant_id="name")


def test_bgen_and_pgen_modules_import_no_torch_and_no_reader_until_called():
    import subprocess
    import sys

    code = (
        "import sys, data_adapters.bgen, data_adapters.pgen;"
        " print(sorted({'torch', 'lightning', 'cbgen', 'pgenlib'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_sample_file_with_na_ids_or_a_byte_order_mark(small):
    path, _ = small
    sample = path.with_suffix(".sample")
    header = "ID_1 ID_2 missing sex\n0 0 0 D\n"
    sample.write_text(header + "1 1 0 1\n2 NA 0 2\n3 3 0 1\n4 4 0 2\n")
    one_line_error(lambda: bgen(path), r"line 4: ID_2 is 'NA', a missing-value code, not a sample ID", "cohort.sample")
    sample.write_text(header + "1 1 0 1\nNA 2 0 2\n3 3 0 1\n4 4 0 2\n")
    assert bgen(path).subject_ids.tolist() == ["1", "2", "3", "4"]  # ID_1 is not used for "iid"
    one_line_error(lambda: bgen(path, id_format="fid_iid"), "line 4: ID_1 is 'NA'", "cohort.sample")
    sample.write_bytes(("\ufeff" + header + "1 1 0 1\n\n2 2 0 2\r\n3 3 0 1\n4 4 0 2\n").encode())  # BOM, blank, CRLF
    assert bgen(path).subject_ids.tolist() == ["1", "2", "3", "4"]
    sample.write_text(header + "1 1 0 1\n\n2 2 0 2\n3\n4 4 0 2\n")
    one_line_error(lambda: bgen(path), "line 6: a sample line needs ID_1 and ID_2", "cohort.sample")


def joined_bgen(folder: Path, n_first: int, n_second: int, **options) -> Path:
    """A BGEN whose header and first variant are of a file of ``n_first`` samples, followed by the variant of a
    file of ``n_second`` samples: the genotype block of the second variant declares another sample count."""
    first = write_bgen(
        folder / "a.bgen", [Variant("1", 100, "rs1", diploid_probabilities(np.zeros(n_first)))], n_first, **options
    )
    write_bgen(
        folder / "b.bgen", [Variant("1", 200, "rs2", diploid_probabilities(np.ones(n_second)))], n_second, **options
    )
    a, b = (folder / "a.bgen").read_bytes(), (folder / "b.bgen").read_bytes()
    offset_a, offset_b = int.from_bytes(a[:4], "little"), int.from_bytes(b[:4], "little")
    head = bytearray(a[: offset_a + 4])
    head[8:12] = (2).to_bytes(4, "little")  # two variants
    path = folder / "joined.bgen"
    path.write_bytes(bytes(head) + a[offset_a + 4 :] + b[offset_b + 4 :])
    write_sample(path.with_suffix(".sample"), [f"s{i}" for i in range(n_first)])
    assert first
    return path


def test_every_genotype_block_sample_count_is_checked_before_decoding(tmp_path):
    # cbgen sizes its buffer by the header's sample count and fills it with the block's: past its end for 6 of 4
    path = joined_bgen(tmp_path, 4, 6)
    match = r"variant 1:200 \(rs2\): its genotype block holds 6 samples, the header 4"
    one_line_error(lambda: bgen(path), match, "joined.bgen")
    one_line_error(lambda: variant_stats(path), match, "joined.bgen")
    one_line_error(lambda: bgen(path, variants=["rs1", "rs2"], grouping="snp"), match, "joined.bgen")
    assert bgen(path, variants=["rs1"]).source["token_features"] == {"chr1": ["rs1"]}  # only the read blocks


class FakeZstandard:
    """Just enough of the ``zstandard`` module to decode ``zstd_frame``'s raw-block frames, streaming."""

    class ZstdError(Exception):
        pass

    class ZstdDecompressor:
        def decompressobj(self):
            return FakeZstandard.Stream()

    class Stream:
        def __init__(self):
            self.buffer, self.done = b"", 0

        def decompress(self, chunk: bytes) -> bytes:
            self.buffer += chunk
            if not self.buffer.startswith(b"\x28\xb5\x2f\xfd"[: len(self.buffer)]):
                raise FakeZstandard.ZstdError("unknown frame descriptor")
            out, at = b"", 9  # magic, frame header descriptor, 4-byte content size
            while at + 3 <= len(self.buffer):
                size = int.from_bytes(self.buffer[at : at + 3], "little") >> 3
                out += self.buffer[at + 3 : at + 3 + size]
                at += 3 + size
            new, self.done = out[self.done :], len(out)
            return new


def test_zstd_blocks_are_checked_with_zstandard_or_refused_without(tmp_path, monkeypatch):
    assert zstd_frame(b"abc")[:4] == bytes.fromhex("28b52ffd")
    rng = np.random.default_rng(13)
    variants = random_variants(rng, 6, 5)
    path, stored = written(tmp_path, variants, 6, compression=2, bits=16)
    monkeypatch.setattr(bgen_module, "_import_zstandard", lambda: None)
    one_line_error(lambda: bgen(path), r"zstd-compressed BGEN: .*pip install zstandard", "cohort.bgen")
    monkeypatch.setattr(bgen_module, "_import_zstandard", lambda: FakeZstandard)
    columns = by_variant(bgen(path))
    for variant, probabilities in zip(variants, stored, strict=True):
        np.testing.assert_allclose(columns[variant.rsid], probabilities[:, 1] + 2 * probabilities[:, 2], atol=1e-6)
    joined = joined_bgen(tmp_path, 4, 6, compression=2)
    one_line_error(lambda: bgen(joined), "its genotype block holds 6 samples, the header 4", "joined.bgen")


def test_chromosomes_with_leading_zeros_as_uk_biobank_writes_them(tmp_path):
    calls = np.array([0, 1, 2, 0.0])
    variants = [Variant(c, 100 + j, f"rs{j}", diploid_probabilities(calls)) for j, c in enumerate(["01", "01", "10"])]
    path, _ = written(tmp_path, variants, 4)
    assert bgen(path).token_names == ["chr1", "chr10"]
    regions = pd.DataFrame({"name": ["G1"], "chrom": ["chr1"], "start": [1], "end": [1000]})
    assert bgen(path, grouping="region", regions=regions).source["token_features"] == {"G1": ["rs0", "rs1"]}


def test_chrx_haploid_males_give_the_values_of_the_same_calls_in_pgen(tmp_path):
    # plink2 stores a male's chrX call as a homozygous diploid one (0 or 2); BGEN stores it haploid (ploidy 1)
    pgenlib = pytest.importorskip("pgenlib")
    from data_adapters.pgen import pgen

    sex = np.array([1, 2, 1, 2, 2, 1])
    ploidy = np.where(sex == 1, 1, 2)
    calls = np.array([[1, 2, 0, 1, 0, np.nan], [0, 0, 1, 2, 1, 1], [1, 1, 1, 2, 2, 0]])  # copies of the 2nd allele
    variants = []
    for j, row in enumerate(calls):
        probabilities = np.full((6, 3), np.nan)
        for i, c in enumerate(row):
            if not np.isnan(c):
                probabilities[i, : ploidy[i] + 1] = np.eye(ploidy[i] + 1)[int(c)]
        variants.append(Variant("X", 1000 * (j + 1), f"rsX{j}", probabilities, ploidy=ploidy))
    path, _ = written(tmp_path, variants, 6)
    prefix = tmp_path / "same"
    diploid = np.where(ploidy == 1, 2 * calls, calls)  # what plink2 --make-pgen writes for these samples
    with pgenlib.PgenWriter(bytes(prefix.with_suffix(".pgen")), 6, variant_ct=3, nonref_flags=False) as writer:
        writer.append_biallelic_batch(np.where(np.isnan(diploid), -9, diploid).astype(np.int8))
    prefix.with_suffix(".pvar").write_text(
        "#CHROM\tPOS\tID\tREF\tALT\n" + "".join(f"X\t{1000 * (j + 1)}\trsX{j}\tA\tG\n" for j in range(3))
    )
    prefix.with_suffix(".psam").write_text("#IID\tSEX\n" + "".join(f"{1000 + i}\t{s}\n" for i, s in enumerate(sex)))
    ours, reference = bgen(path), pgen(prefix)
    assert ours.source["token_features"] == reference.source["token_features"]
    np.testing.assert_array_equal(ours.subject_ids, reference.subject_ids)
    np.testing.assert_array_equal(ours.values, reference.values)
    table = variant_stats(path)  # frequencies count a male's chrX once
    alleles = np.where(np.isnan(calls), 0, ploidy).sum(axis=1)
    np.testing.assert_allclose(table["alt_freq"], np.nansum(calls, axis=1) / alleles)


def test_a_bed_whose_a1_is_the_first_bgen_allele_gives_two_minus_the_dosage(tmp_path):
    # the documented conversion: gene.plink counts A1; where A1 is the record's first allele (its copies are
    # 2 - the second allele's), gene.plink gives 2 - the BGEN dosage
    with open_bed(BED_DATA / "small.bed") as reader:
        calls = reader.read(dtype=np.float64)
        chrom, sid, pos, a1, a2 = reader.chromosome, reader.sid, reader.bp_position, reader.allele_1, reader.allele_2
        iid = reader.iid
    variants = [
        Variant(str(chrom[j]), int(pos[j]), str(sid[j]), diploid_probabilities(2 - calls[:, j]), alleles=(a1[j], a2[j]))
        for j in range(calls.shape[1])
    ]
    path = tmp_path / "swapped.bgen"
    write_bgen(path, variants, calls.shape[0])
    write_sample(path.with_suffix(".sample"), list(iid))
    reference = plink(BED_DATA / "small")
    ours = bgen(path)
    assert ours.source["token_features"] == reference.source["token_features"]
    mask = reference.feature_mask[None, :, :]
    np.testing.assert_array_equal(np.where(mask, ours.values, 0), np.where(mask, 2 - reference.values, 0))
    assert "2 - dosage" in ours.source["dosage"]


def test_duplicated_variant_ids_are_kept_with_a_warning(tmp_path):
    calls = np.array([0, 1, 2, 0.0])
    variants = [  # one rsID for the two biallelic records of a multi-allelic site, as in UK Biobank's files
        Variant("1", 600, "rsDup", diploid_probabilities(calls)),
        Variant("1", 600, "rsDup", diploid_probabilities(2 - calls), alleles=("A", "T")),
        Variant("1", 700, "rs7", diploid_probabilities(calls)),
    ]
    path, _ = written(tmp_path, variants, 4)
    with pytest.warns(
        UserWarning, match=r"1 variant ID\(s\) occur more than once .*\(rsDup x2\).*variant_id='position'"
    ):
        modality = bgen(path)
    assert modality.source["token_features"] == {"chr1": ["rsDup", "rsDup", "rs7"]}
    assert modality.source["n_duplicated_variant_ids"] == 1
    with pytest.warns(
        UserWarning, match="1 of them are IDs of the variant list, which keeps every variant with the ID"
    ):
        assert bgen(path, variants=["rsDup"]).source["token_features"] == {"chr1": ["rsDup", "rsDup"]}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bgen(path, variant_id="position").source["token_features"] == {
            "chr1": ["1:600:A:G", "1:600:A:T", "1:700:A:G"]
        }
        bgen(path, variants=["rs7"])


def test_multiallelic_maf_is_the_first_allele_against_the_rest_over_all_samples(tmp_path):
    p = np.zeros((4, 6))
    p[:, 4] = 1  # genotype C/G (colex order AA, AB, BB, AC, BC, CC): no copy of the first allele
    path, _ = written(tmp_path, [Variant("1", 500, "rsM", p, alleles=("A", "C", "G"))], 4)
    row = variant_stats(path).iloc[0]
    assert row.alt_freq == 1.0 and row.maf == 0.0  # documented: not the rarer ALT's frequency (0.5)
    modality = bgen(path, min_info=0.0)
    assert modality.source["filters"]["computed_over"] == "all 4 samples of the file"
    assert modality.source["n_multiallelic"] == 1


def test_a_metafile_is_reused_only_for_the_bgen_it_was_built_for(tmp_path, monkeypatch):
    calls = np.array([0, 1, 2, 0.0])
    chunks = []
    for k in (1, 2):  # same shape, other variants: offsets and counts agree
        path = tmp_path / f"chunk{k}.bgen"
        write_bgen(
            path, [Variant(str(k), 1000 * k + j, f"rs{k}{j}", diploid_probabilities(calls)) for j in range(3)], 4
        )
        write_sample(path.with_suffix(".sample"), ["a", "b", "c", "d"])
        chunks.append(path)
    shared = tmp_path / "index.metafile"
    assert bgen(chunks[0], metafile=shared).source["token_features"] == {"chr1": ["rs10", "rs11", "rs12"]}
    with pytest.warns(UserWarning, match="indexed another BGEN"):
        second = bgen(chunks[1], metafile=shared)
    assert second.source["token_features"] == {"chr2": ["rs20", "rs21", "rs22"]}

    cbgen = pytest.importorskip("cbgen")
    built = []
    real = cbgen.bgen_file.create_metafile
    monkeypatch.setattr(cbgen.bgen_file, "create_metafile", lambda self, name: built.append(name) or real(self, name))
    bgen(chunks[1], metafile=shared)
    assert built == []  # the record matches chunk2 now: reused
    chunks[1].write_bytes(chunks[1].read_bytes())  # rewritten (a new modification time): rebuilt in place
    bgen(chunks[1], metafile=shared)
    assert len(built) == 1
    foreign = tmp_path / "foreign.metafile"  # a metafile this module did not build (no record): left alone
    shutil.copy(shared, foreign)
    with pytest.warns(UserWarning, match="no record of which BGEN it indexes"):
        assert bgen(chunks[0], metafile=foreign).token_names == ["chr1"]
    assert len(built) == 2 and not foreign.with_name("foreign.metafile.source.json").exists()

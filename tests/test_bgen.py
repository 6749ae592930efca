"""BGEN v1.2 genotypes as gene tokens (``data_adapters.bgen``): files written here (``bgen_files``), read through
cbgen, compared with the same genotypes as PLINK 1 through ``gene.plink`` and with the probabilities written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bgen_files import Variant, diploid_probabilities, write_bgen, write_sample

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
    expected = np.where(ploidy == 1, p[:, 1], p[:, 1] + 2 * p[:, 2])
    np.testing.assert_allclose(columns["haploid"], expected, atol=1e-6)
    assert np.isnan(columns["haploid"][4])
    h = stored[1]
    expected = h[:, 1] + np.where(ploidy == 1, 0.0, h[:, 3])  # P(second allele), summed over haplotypes
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
    sample = tmp_path / "ukb22828_c1_b0_v3_s4.sample"  # UK Biobank's naming: not the BGEN's name
    write_sample(sample, ["1", "2", "3", "-1"], ["1001", "1002", "1003", "-1"])  # -1: a withdrawn participant
    assert bgen(path, sample=sample).subject_ids.tolist() == ["1001", "1002", "1003", "-1"]
    assert bgen(path, sample=sample, id_format="fid_iid").subject_ids.tolist()[0] == "1_1001"
    shutil.copy(sample, path.with_suffix(".sample"))  # beside, with the BGEN's name: found by default
    modality = bgen(path)
    assert modality.subject_ids.tolist()[0] == "1001" and modality.source["files"][1].endswith(".sample")


def test_metafile_written_nowhere_by_default_or_once_where_asked(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    path, _ = written(tmp_path, random_variants(rng, 10, 8), 10)
    before = sorted(p.name for p in tmp_path.iterdir())
    first = bgen(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing left beside the data
    index = tmp_path / "index" / "cohort.metafile"
    assert_same_modality(bgen(path, metafile=index), first)
    assert sorted(p.name for p in index.parent.iterdir()) == ["cohort.metafile"]  # no temporary file left

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

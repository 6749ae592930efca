"""Bad inputs of the real-cohort formats and options, through the CLI: one line naming the file (or option) and
what is wrong, exit 2, no traceback, nothing trained (the rest of the corpus: ``test_trust_*.py``)."""

from __future__ import annotations

import pytest
from freesurfer_files import write_subjects_dir
from helpers import Case, assert_refused


def _bgen_not_bgen(case: Case):
    case.write("geno.bgen", b"\x00" * 64)
    case.write("geno.sample", "ID_1 ID_2 missing\n0 0 0\n1 1 0\n")
    return {"gene": {"adapter": "bgen", "path": str(case.path("geno.bgen"))}}, (), "geno.bgen"


def _pgen_bad_pvar(case: Case):
    case.write("geno.pgen", b"l\x1b\x10" + b"\x00" * 32)
    case.write("geno.pvar", "CHROM POS ID REF ALT\n1 10 rs1 A G\n")  # no '#CHROM' header line
    case.write("geno.psam", "#IID\n1\n")
    return {"gene": {"adapter": "pgen", "path": str(case.path("geno"))}}, (), "geno"


def _freesurfer_without_colheaders(case: Case):
    root = write_subjects_dir(case.path("fs"), ["1000001", "1000002"])
    stats = root / "1000002" / "stats" / "lh.aparc.stats"
    stats.write_text("\n".join(line for line in stats.read_text().splitlines() if "ColHeaders" not in line))
    return {"cortex": {"adapter": "freesurfer_stats", "subjects_dir": str(root)}}, (), "lh.aparc.stats"


def _bids_without_participants(case: Case):
    (case.path("bids") / "sub-01" / "anat").mkdir(parents=True)
    spec = {"adapter": "regions_from_bids", "root": str(case.path("bids")), "suffix": "T1w"}
    spec.update(atlas=str(case.demo / "atlas.nii.gz"), labels=str(case.demo / "atlas_labels.csv"))
    return {"brain": spec}, (), "participants.tsv"


def _ukb_field_not_in_dictionary(case: Case):
    case.write("ukb.csv", "eid,25781-2.0\n1000001,1.5\n1000002,2.5\n")
    case.write("dictionary.tsv", "FieldID\tField\tValueType\tCategory\n25000\tVolume of brain\tContinuous\t110\n")
    spec = {"adapter": "ukb_fields", "path_or_df": str(case.path("ukb.csv")), "fields": [25781]}
    spec["dictionary"] = str(case.path("dictionary.tsv"))
    return {"idps": spec}, (), "25781"


def _relatedness_without_id2(case: Case):
    case.write("rel.dat", "ID1 Kinship\n1000001 0.25\n")
    return {}, ("--data.relatedness", str(case.path("rel.dat"))), "rel.dat"


def _withdrawals_with_two_fields(case: Case):
    case.write("withdrawn.csv", "1000001\n1000002,1000003\n")
    return {}, ("--data.withdrawals", str(case.path("withdrawn.csv"))), "withdrawn.csv"


def _harmonize_target_as_covariate(case: Case):
    settings = '{"method": "combat", "batch": "site", "covariates": ["age", "target"], "modalities": ["brain"]}'
    return {}, ("--data.harmonize", settings), "target"


def _harmonize_unknown_modality(case: Case):
    settings = '{"method": "combat", "batch": "site", "covariates": ["age"], "modalities": ["cortex"]}'
    return {}, ("--data.harmonize", settings), "cortex"


CASES = {
    "bgen: not a BGEN file": _bgen_not_bgen,
    "pgen: .pvar without its #CHROM header": _pgen_bad_pvar,
    "freesurfer: a stats file without # ColHeaders": _freesurfer_without_colheaders,
    "bids: a root without participants.tsv": _bids_without_participants,
    "ukb: a field the dictionary lacks": _ukb_field_not_in_dictionary,
    "relatedness: no ID2 column": _relatedness_without_id2,
    "withdrawals: two IDs on a line": _withdrawals_with_two_fields,
    "harmonize: the target as a covariate": _harmonize_target_as_covariate,
    "harmonize: a modality the data lacks": _harmonize_unknown_modality,
}


@pytest.mark.parametrize("make", CASES.values(), ids=CASES.keys())
def test_bad_real_cohort_input_gets_one_line(case: Case, make):
    modalities, options, named = make(case)
    status, stderr = case.run(*options, data=case.data_config(modalities=modalities))
    assert_refused(status, stderr, named)
    assert not case.path("outputs/checkpoints").exists()

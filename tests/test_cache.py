"""Fingerprinted, memory-mapped caches of tokenized modalities and cohorts (data_adapters.cache)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from data_adapters import cache
from data_adapters.behaviour import measures_table
from data_adapters.cache import (
    CorruptEntry,
    cache_status,
    cached_modality,
    fingerprint,
    load_cohort,
    save_cohort,
)
from data_adapters.cohort import build_cohort
from data_adapters.core import AdapterError


def is_memory_mapped(array: np.ndarray) -> bool:
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base
    return False


class CountingBuild:
    def __init__(self, path):
        self.path, self.calls = path, 0

    def __call__(self):
        self.calls += 1
        return measures_table(self.path, categorical=["hand"])


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "data" / "behaviour.csv"
    path.parent.mkdir()
    path.write_text("eid,memory,hand\n1,0.5,left\n2,,right\n3,1.5,left\n")
    return path


@pytest.fixture
def build(table):
    return CountingBuild(table)


def entry_folder(cache_dir):
    (folder,) = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    return folder


def test_second_call_loads_memory_mapped_without_building(tmp_path, table, build):
    settings = {"categorical": ["hand"]}
    first = cached_modality(tmp_path / "cache", build, [table], settings, name="behaviour")
    second = cached_modality(tmp_path / "cache", build, [table], settings, name="behaviour")
    assert build.calls == 1
    fresh = build()
    for loaded in (first, second):
        np.testing.assert_array_equal(loaded.values, fresh.values)
        np.testing.assert_array_equal(loaded.present, fresh.present)
        assert loaded.token_names == fresh.token_names and loaded.categories == {"hand": ["left", "right"]}
        assert list(loaded.subject_ids) == ["1", "2", "3"] and loaded.feature_names == ["value"]
        assert is_memory_mapped(loaded.values) and not loaded.values.flags.writeable
    assert entry_folder(tmp_path / "cache").name.startswith("behaviour-")
    assert cache_status(tmp_path / "cache", [table], settings, name="behaviour") == ("fresh", "up to date")


def test_changed_or_touched_input_rebuilds(tmp_path, table, build):
    cached_modality(tmp_path / "c", build, table, {})
    stat = table.stat()
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cache_status(tmp_path / "c", table, {})[0] == "stale"
    cached_modality(tmp_path / "c", build, table, {})
    assert build.calls == 2
    table.write_text(table.read_text().replace("0.5", "9.5"))
    assert cached_modality(tmp_path / "c", build, table, {}).values[0, 0, 0] == 9.5
    assert build.calls == 3
    assert len([p for p in (tmp_path / "c").iterdir()]) == 1  # replaced in place: no stale entries pile up


def test_different_settings_are_different_entries(tmp_path, table, build):
    cached_modality(tmp_path / "c", build, table, {"a": 1})
    cached_modality(tmp_path / "c", build, table, {"a": 2})
    cached_modality(tmp_path / "c", build, table, {"a": 1})
    assert build.calls == 2
    assert fingerprint(table, {"a": 1}) != fingerprint(table, {"a": 2})


@pytest.mark.parametrize(
    "damage",
    [
        "truncate_values",
        "delete_present",
        "garbage_manifest",
        "manifest_shape_lie",
        "swap_present_for_other_shape",
    ],
)
def test_corrupt_entries_are_detected_and_rebuilt(tmp_path, table, build, damage):
    good = cached_modality(tmp_path / "c", build, table, {})
    folder = entry_folder(tmp_path / "c")
    if damage == "truncate_values":
        data = (folder / "values.npy").read_bytes()
        (folder / "values.npy").write_bytes(data[:-4])
    elif damage == "delete_present":
        (folder / "present.npy").unlink()
    elif damage == "garbage_manifest":
        (folder / "manifest.json").write_text("{not json")
    elif damage == "manifest_shape_lie":
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["arrays"]["values"]["shape"] = [3, 2, 2]
        (folder / "manifest.json").write_text(json.dumps(manifest))
    else:  # a well-formed array of the wrong shape, with the manifest updated to match it
        np.save(folder / "present.npy", np.ones((2, 2), dtype=bool))
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["arrays"]["present"].update(shape=[2, 2], bytes=(folder / "present.npy").stat().st_size)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    status, why = cache_status(tmp_path / "c", table, {})
    assert status == "corrupt", why
    rebuilt = cached_modality(tmp_path / "c", build, table, {})
    assert build.calls == 2
    np.testing.assert_array_equal(rebuilt.values, good.values)
    assert cache_status(tmp_path / "c", table, {})[0] == "fresh"


def test_same_size_bit_flip_is_caught_with_verify(tmp_path, table, build):
    cached_modality(tmp_path / "c", build, table, {})
    values = entry_folder(tmp_path / "c") / "values.npy"
    data = bytearray(values.read_bytes())
    data[-1] ^= 0xFF
    values.write_bytes(bytes(data))
    assert cache_status(tmp_path / "c", table, {})[0] == "fresh"  # sizes and shapes still agree
    assert cache_status(tmp_path / "c", table, {}, verify=True)[0] == "corrupt"
    cached_modality(tmp_path / "c", build, table, {}, verify=True)
    assert build.calls == 2


def test_big_files_hash_head_and_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "SMALL_FILE_BYTES", 1000)
    monkeypatch.setattr(cache, "EDGE_BYTES", 100)
    path = tmp_path / "scan.bin"
    path.write_bytes(bytes(5000))
    stat = path.stat()
    base = fingerprint(path)

    def rewrite(offset):
        data = bytearray(5000)
        data[offset] = 1
        path.write_bytes(bytes(data))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime: only content can tell
        return fingerprint(path)

    assert rewrite(4990) != base  # tail
    assert rewrite(10) != base  # head
    assert rewrite(2500) == base  # the documented blind spot: middle of a big file, size and mtime kept


def test_failed_build_leaves_nothing_behind(tmp_path, table):
    def broken():
        raise RuntimeError("parser crashed")

    with pytest.raises(RuntimeError):
        cached_modality(tmp_path / "c", broken, table, {})
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
    with pytest.raises(AdapterError, match="build_fn returned dict"):
        cached_modality(tmp_path / "c", lambda: {}, table, {})
    with pytest.raises(AdapterError, match="cache input not found"):
        cached_modality(tmp_path / "c", broken, tmp_path / "missing.nii.gz", {})
    with pytest.raises(AdapterError, match="cache settings must be JSON-like"):
        cached_modality(tmp_path / "c", broken, table, {"fn": object()})


def test_folder_inputs_are_walked(tmp_path, table, build):
    cached_modality(tmp_path / "c", build, table.parent, {})
    (table.parent / "new_scan.nii.gz").write_bytes(b"x")
    assert cache_status(tmp_path / "c", table.parent, {})[0] == "stale"
    cached_modality(tmp_path / "c", build, table.parent, {})
    assert build.calls == 2 and len(list((tmp_path / "c").iterdir())) == 1


@pytest.fixture
def cohort(table):
    participants = pd.DataFrame({"eid": ["1", "2", "3"], "target": [1.0, 0.0, 1.0], "site": ["a", "b", "a"]})
    behaviour = measures_table(table, categorical=["hand"])
    return build_cohort(participants, {"behaviour": behaviour}, targets=["target"], confounds=["site"])


def test_cohort_round_trip(tmp_path, cohort):
    save_cohort(cohort, tmp_path / "cohort")
    loaded = load_cohort(tmp_path / "cohort")
    pd.testing.assert_frame_equal(loaded.participants, cohort.participants)
    assert (loaded.targets, loaded.confounds, loaded.id_column, loaded.join) == (["target"], ["site"], "eid", "inner")
    ((name, m),) = loaded.modalities.items()
    original = cohort.modalities["behaviour"]
    assert name == "behaviour" and is_memory_mapped(m.values)
    np.testing.assert_array_equal(m.values, original.values)
    assert m.categories == original.categories and list(m.subject_ids) == list(original.subject_ids)
    assert str(loaded.report()) == str(cohort.report())
    assert not is_memory_mapped(load_cohort(tmp_path / "cohort", mmap=False).modalities["behaviour"].values)


def test_saving_again_replaces_and_foreign_folders_are_refused(tmp_path, cohort):
    save_cohort(cohort, tmp_path / "cohort")
    save_cohort(cohort, tmp_path / "cohort")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort", "data"]
    with pytest.raises(AdapterError, match="folder exists and is not a saved cohort"):
        save_cohort(cohort, tmp_path / "data")


def test_corrupt_saved_cohort_is_refused(tmp_path, cohort):
    folder = save_cohort(cohort, tmp_path / "cohort")
    values = folder / "modalities" / "behaviour" / "values.npy"
    values.write_bytes(values.read_bytes()[:-1])
    with pytest.raises(CorruptEntry, match=r"values.npy: .*bytes, the manifest says .*\(truncated\?\)"):
        load_cohort(folder)
    (folder / "cohort.json").unlink()
    with pytest.raises(CorruptEntry, match="not a saved cohort"):
        load_cohort(folder)

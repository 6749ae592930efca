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
    CohortWriter,
    CorruptEntry,
    ModalityLayout,
    cache_status,
    cached_modality,
    fingerprint,
    load_cohort,
    save_cohort,
)
from data_adapters.cohort import build_cohort
from data_adapters.core import AdapterError, TokenizedModality


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


def test_same_size_bit_flip_is_caught_by_default(tmp_path, table, build):
    cached_modality(tmp_path / "c", build, table, {})
    values = entry_folder(tmp_path / "c") / "values.npy"
    data = bytearray(values.read_bytes())
    data[-1] ^= 0xFF
    values.write_bytes(bytes(data))
    assert cache_status(tmp_path / "c", table, {}, verify=False)[0] == "fresh"  # sizes and shapes still agree
    assert cache_status(tmp_path / "c", table, {})[0] == "corrupt"  # the recorded CRC-32 does not
    cached_modality(tmp_path / "c", build, table, {})
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


# ---------------------------------------------------------------------------------------------- stat index
class CountingOpen:
    """Counts opens of the watched paths through the cache module (the content hash reads with ``open``)."""

    def __init__(self, monkeypatch, *paths):
        self.watched = {str(p) for p in paths}
        self.count = 0
        real_open = open

        def counting(path, *args, **kwargs):
            if str(path) in self.watched:
                self.count += 1
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(cache, "open", counting, raising=False)


def test_unchanged_inputs_are_not_read_again(tmp_path, table, build, monkeypatch):
    monkeypatch.setattr(cache, "RACY_SECONDS", 0.0)  # the file was written a moment ago
    opens = CountingOpen(monkeypatch, table)
    cached_modality(tmp_path / "c", build, table, {})
    assert opens.count == 1  # the check after the build (did an input change meanwhile?) goes by the stat index
    assert (tmp_path / "c" / cache.STAT_INDEX).is_file()
    opens.count = 0
    for _ in range(2):
        cached_modality(tmp_path / "c", build, table, {})
    assert cache_status(tmp_path / "c", table, {})[0] == "fresh"
    assert opens.count == 0 and build.calls == 1

    # a rewrite that keeps size and mtime is still seen: ctime changes, so the file is hashed again
    stat = table.stat()
    table.write_text(table.read_text().replace("0.5", "7.5"))
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert table.stat().st_size == stat.st_size and table.stat().st_mtime_ns == stat.st_mtime_ns
    assert cached_modality(tmp_path / "c", build, table, {}).values[0, 0, 0] == 7.5
    assert opens.count >= 1 and build.calls == 2

    opens.count = 0
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: hashed again, entry stale
    assert cache_status(tmp_path / "c", table, {})[0] == "stale"
    assert opens.count == 1
    table.write_text(table.read_text() + "4,2.5,left\n")  # other size
    assert list(cached_modality(tmp_path / "c", build, table, {}).subject_ids) == ["1", "2", "3", "4"]
    assert build.calls == 3


def test_recently_changed_files_are_not_trusted_and_a_bad_index_is_rebuilt(tmp_path, table, build, monkeypatch):
    opens = CountingOpen(monkeypatch, table)
    cached_modality(tmp_path / "c", build, table, {})
    opens.count = 0
    cached_modality(tmp_path / "c", build, table, {})
    assert opens.count == 1  # written within RACY_SECONDS: a same-tick rewrite could hide, so it is re-hashed

    monkeypatch.setattr(cache, "RACY_SECONDS", 0.0)
    index = tmp_path / "c" / cache.STAT_INDEX
    index.write_text("{not json")
    assert cache_status(tmp_path / "c", table, {})[0] == "fresh"  # the key does not depend on the index
    assert str(table.absolute()) in json.loads(index.read_text())["files"]
    opens.count = 0
    cached_modality(tmp_path / "c", build, table, {})
    assert opens.count == 0 and build.calls == 1


def test_data_config_cohort_skips_reading_unchanged_inputs(tmp_path, table, monkeypatch):
    from mot_neuro.data.sources import build_cached_cohort

    monkeypatch.setattr(cache, "RACY_SECONDS", 0.0)
    participants = tmp_path / "data" / "participants.csv"
    participants.write_text("eid,target\n1,0.5\n2,1.5\n3,2.5\n")
    hashed = []
    real_hash = cache._hash_file_content
    monkeypatch.setattr(cache, "_hash_file_content", lambda path, size: hashed.append(path) or real_hash(path, size))
    kwargs = {
        "participants": str(participants),
        "modalities": {"behaviour": {"adapter": "measures_table", "path_or_df": str(table), "categorical": ["hand"]}},
        "targets": ["target"],
        "confounds": [],
        "cache_dir": tmp_path / "cache",
    }
    first, key = build_cached_cohort(**kwargs)
    assert len(hashed) == 2
    hashed.clear()
    again, same_key = build_cached_cohort(**kwargs)
    assert hashed == [] and same_key == key

    table.write_text(table.read_text().replace("1.5", "9.5"))  # other size, other mtime
    changed, new_key = build_cached_cohort(**kwargs)
    assert [p.name for p in hashed] == ["behaviour.csv"] and new_key != key
    assert np.nanmax(changed.modalities["behaviour"].values) == 9.5


# ---------------------------------------------------------------------------------------------- streamed cohorts
@pytest.fixture
def wide_cohort():
    """Two modalities with NaN, absent subjects, masked features and categories; participants of mixed types."""
    rng = np.random.default_rng(0)
    n = 11
    ids = [str(500 + i) for i in range(n)]
    brain_values = rng.standard_normal((n, 4, 3)).astype(np.float32)
    brain_values[2, 1, 0] = np.nan
    mask = np.ones((4, 3), bool)
    mask[3, 1:] = False
    brain_values[:, ~mask] = 0
    brain_present = np.ones((n, 4), bool)
    brain_present[5] = False
    brain_values[5] = 0
    brain = TokenizedModality(
        name="brain",
        values=brain_values,
        present=brain_present,
        token_names=["r0", "r1", "r2", "r3"],
        subject_ids=ids,
        feature_mask=mask,
        feature_names=["volume", "thickness", "area"],
        source={"synthetic": True},
    )
    behaviour = TokenizedModality(
        name="behaviour",
        values=rng.integers(0, 2, (n, 2, 1)).astype(np.float32),
        present=rng.random((n, 2)) > 0.2,
        token_names=["memory", "hand"],
        subject_ids=ids,
        categories={"hand": ["left", "right"]},
    )
    participants = pd.DataFrame(
        {
            "eid": ids,
            "target": rng.standard_normal(n),
            "age": rng.integers(40, 80, n),
            "site": rng.choice(["a", "b"], n),
        }
    )
    return build_cohort(
        participants,
        {"brain": brain, "behaviour": behaviour},
        targets=["target"],
        confounds=["age", "site"],
        join="outer",
    )


def layouts_of(cohort):
    return {
        name: ModalityLayout(
            token_names=m.token_names,
            n_features=m.n_features,
            feature_mask=m.feature_mask,
            feature_names=m.feature_names,
            categories=m.categories,
            source=m.source,
        )
        for name, m in cohort.modalities.items()
    }


def stream(cohort, folder, sizes, **kwargs):
    settings = {"targets": cohort.targets, "confounds": cohort.confounds, "join": cohort.join}
    with CohortWriter(
        folder,
        n_subjects=cohort.n_subjects,
        modalities=layouts_of(cohort),
        build_info=cohort.build_info,
        **settings,
        **kwargs,
    ) as writer:
        start = 0
        for size in sizes:
            rows = slice(start, start + size)
            arrays = {name: (m.values[rows], m.present[rows]) for name, m in cohort.modalities.items()}
            writer.append(cohort.participants.iloc[rows], arrays)
            start += size
    return writer


def test_streamed_cohort_is_the_saved_cohort_byte_for_byte(tmp_path, wide_cohort):
    save_cohort(wide_cohort, tmp_path / "saved")
    stream(wide_cohort, tmp_path / "streamed", [4, 1, 6])
    saved, streamed = load_cohort(tmp_path / "saved"), load_cohort(tmp_path / "streamed")
    pd.testing.assert_frame_equal(streamed.participants, saved.participants)
    pd.testing.assert_frame_equal(streamed.participants, wide_cohort.participants)
    assert (streamed.targets, streamed.confounds, streamed.join) == (["target"], ["age", "site"], "outer")
    assert list(streamed.modalities) == list(saved.modalities) == ["brain", "behaviour"]
    for name, original in wide_cohort.modalities.items():
        m = streamed.modalities[name]
        assert is_memory_mapped(m.values) and is_memory_mapped(m.present)
        np.testing.assert_array_equal(m.values, original.values)  # NaN compare equal here
        np.testing.assert_array_equal(m.present, original.present)
        np.testing.assert_array_equal(m.feature_mask, original.feature_mask)
        assert list(m.subject_ids) == list(original.subject_ids)
        assert (m.token_names, m.feature_names, m.categories, m.source) == (
            original.token_names,
            original.feature_names,
            original.categories,
            original.source,
        )
        for array in cache.ARRAY_NAMES:  # the very same .npy files, headers included
            path = f"modalities/{name}/{array}.npy"
            assert (tmp_path / "streamed" / path).read_bytes() == (tmp_path / "saved" / path).read_bytes(), path
        manifests = [
            json.loads((tmp_path / f / f"modalities/{name}/manifest.json").read_text()) for f in ("saved", "streamed")
        ]
        assert manifests[0] == manifests[1]
    assert load_cohort(tmp_path / "streamed", verify=True).n_subjects == 11  # recorded hashes match the bytes
    assert str(streamed.report()) == str(wide_cohort.report())
    assert cache.cohort_fingerprint(tmp_path / "streamed") == cache.cohort_fingerprint(tmp_path / "saved")


def test_streaming_without_build_info_reports_counts(tmp_path, wide_cohort):
    writer = CohortWriter(tmp_path / "c", n_subjects=11, modalities=layouts_of(wide_cohort), targets=["target"])
    m = wide_cohort.modalities
    writer.append(wide_cohort.participants, {name: (m[name].values, m[name].present) for name in m})
    writer.close()
    report = load_cohort(tmp_path / "c").report()
    rows = report.modalities.set_index("modality")
    assert rows.loc["brain", "with data in input"] == 10 and rows.loc["brain", "with data in cohort"] == 10
    with pytest.raises(AdapterError, match="writer is closed"):
        writer.append(wide_cohort.participants, {})


def test_a_failed_writer_leaves_nothing(tmp_path, wide_cohort):
    class Crash(RuntimeError):
        pass

    with pytest.raises(Crash):
        with CohortWriter(tmp_path / "c", n_subjects=11, modalities=layouts_of(wide_cohort)) as writer:
            m = wide_cohort.modalities
            writer.append(wide_cohort.participants.iloc[:5], {n: (m[n].values[:5], m[n].present[:5]) for n in m})
            assert any(tmp_path.iterdir())  # the temporary folder exists while writing
            raise Crash("generator failed")
    assert list(tmp_path.iterdir()) == []

    # too few subjects at the end: refused, and an older cohort at the destination stays as it was
    save_cohort(wide_cohort, tmp_path / "c")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "c").rglob("*") if p.is_file()}
    with pytest.raises(AdapterError, match="5 subjects written, but n_subjects is 11; nothing was saved"):
        stream(wide_cohort, tmp_path / "c", [5])
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "c").rglob("*") if p.is_file()}
    assert after == before and [p.name for p in tmp_path.iterdir()] == ["c"]
    stream(wide_cohort, tmp_path / "c", [11])  # a complete rewrite replaces it
    assert load_cohort(tmp_path / "c").n_subjects == 11 and [p.name for p in tmp_path.iterdir()] == ["c"]


def test_bad_blocks_are_refused_and_write_nothing(tmp_path, wide_cohort):
    m, people = wide_cohort.modalities, wide_cohort.participants

    def arrays(rows, **replace):
        out = {n: (m[n].values[rows], m[n].present[rows]) for n in m}
        out.update(replace)
        return out

    writer = CohortWriter(tmp_path / "c", n_subjects=11, modalities=layouts_of(wide_cohort), targets=["target"])
    first = slice(0, 4)
    wrong_tokens = (m["brain"].values[first][:, :3], m["brain"].present[first][:, :3])
    with pytest.raises(
        AdapterError, match=r"block 0, modality 'brain': values have shape \(4, 3, 3\), expected \(4, 4, 3\)"
    ):
        writer.append(people.iloc[first], arrays(first, brain=wrong_tokens))
    with pytest.raises(AdapterError, match=r"modality 'behaviour': present has shape \(3, 2\), expected \(4, 2\)"):
        writer.append(
            people.iloc[first], arrays(first, behaviour=(m["behaviour"].values[first], m["behaviour"].present[:3]))
        )
    with pytest.raises(AdapterError, match=r"must give every modality .* missing: \['behaviour'\]"):
        writer.append(people.iloc[first], {"brain": (m["brain"].values[first], m["brain"].present[first])})
    infinite = m["brain"].values[first].copy()
    infinite[1, 2, 0] = np.inf
    with pytest.raises(AdapterError, match="infinite value") as err:
        writer.append(people.iloc[first], arrays(first, brain=(infinite, m["brain"].present[first])))
    assert err.value.subject == "501"
    twice = pd.concat([people.iloc[:2], people.iloc[:1]])
    with pytest.raises(AdapterError, match="duplicated subject ID"):
        writer.append(twice, arrays([0, 1, 0]))
    writer.append(people.iloc[first], arrays(first))  # the rejected blocks left no trace
    with pytest.raises(AdapterError, match="already written in an earlier block") as err:
        writer.append(people.iloc[3:6], arrays(slice(3, 6)))
    assert err.value.subject == "503" and err.value.column == "eid"
    with pytest.raises(AdapterError, match=r"block 1 of participants has columns \['age', 'target'\]"):
        writer.append(people.iloc[4:6][["target", "age"]], arrays(slice(4, 6)))
    with pytest.raises(AdapterError, match="more than n_subjects"):
        writer.append(
            pd.concat([people.iloc[4:]] * 2).set_axis([str(i) for i in range(14)]), arrays(list(range(4, 11)) * 2)
        )
    writer.append(people.iloc[4:], arrays(slice(4, 11)))
    writer.close()
    np.testing.assert_array_equal(load_cohort(tmp_path / "c").modalities["brain"].values, m["brain"].values)

    with pytest.raises(AdapterError, match="target/confound column"):
        with CohortWriter(tmp_path / "d", n_subjects=1, modalities=layouts_of(wide_cohort), targets=["x"]) as bad:
            bad.append(people.iloc[:1], arrays(slice(0, 1)))
    with pytest.raises(AdapterError, match="duplicated token names"):
        CohortWriter(tmp_path / "e", n_subjects=1, modalities={"x": ModalityLayout(["a", "a"])})
    with pytest.raises(AdapterError, match="folder exists and is not a saved cohort"):
        CohortWriter(tmp_path, n_subjects=1, modalities={"x": ModalityLayout(["a"])})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # failed writers cleaned up after themselves


def test_loading_does_not_read_the_values(tmp_path, wide_cohort, monkeypatch):
    save_cohort(wide_cohort, tmp_path / "c")
    import data_adapters.core

    scans = []
    real = data_adapters.core.check_finite_or_missing
    monkeypatch.setattr(
        data_adapters.core,
        "check_finite_or_missing",
        lambda values, **k: scans.append(len(values)) or real(values, **k),
    )
    load_cohort(tmp_path / "c", verify=False)
    assert scans and max(scans) <= 1  # only the first row, for the names and shapes
    scans.clear()
    # the default verification compares each file's CRC-32 with the one recorded when it was written (already
    # scanned for +-inf then): the bytes are read once, sequentially, but never scanned again as values
    load_cohort(tmp_path / "c")
    assert scans and max(scans) <= 1


def test_release_pages_drops_mapped_pages(tmp_path):
    np.save(tmp_path / "big.npy", np.ones((64, 1024, 16), dtype=np.float32))  # 4 MiB
    mapped = np.load(tmp_path / "big.npy", mmap_mode="r")

    def resident_kb():
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("RssFile:"))

    before = resident_kb()
    assert float(np.asarray(mapped).sum()) == 64 * 1024 * 16  # touches every page
    assert resident_kb() - before > 3000
    assert cache.release_pages(np.asarray(mapped)[3:], np.zeros(3)) == 1  # views find their map; plain arrays skip
    assert resident_kb() - before < 1000
    assert float(mapped[5, 5, 5]) == 1.0  # still readable


@pytest.mark.parametrize("adapter, argument", [("embeddings", "path_or_df"), ("connectivity_matrices", "source")])
def test_a_stacked_arrays_ids_file_is_part_of_its_inputs(tmp_path, adapter, argument):
    """A ``.npy`` array given without ``ids`` reads its subject IDs from ``ids.npy`` beside it: editing only that
    file must change the cache key, so the file is among the adapter's inputs; with ``ids`` given it is not."""
    from data_adapters.registry import input_files

    array = tmp_path / "stack.npy"
    np.save(array, np.zeros((2, 3, 3), dtype=np.float32))
    np.save(tmp_path / "ids.npy", np.array(["s1", "s2"]))
    assert str(tmp_path / "ids.npy") in input_files(adapter, {argument: str(array)})
    (tmp_path / "other.txt").write_text("s1\ns2\n")
    given = input_files(adapter, {argument: str(array), "ids": str(tmp_path / "other.txt")})
    assert str(tmp_path / "ids.npy") not in given and str(tmp_path / "other.txt") in given


@pytest.mark.parametrize("given", ["data", "data.bed", "data.bim", "data.fam"])
def test_a_plink_fileset_is_all_three_files_whichever_is_named(tmp_path, given):
    """``path: x.bed`` reads x.bim and x.fam too (which variant and subject each genotype is): editing only one of
    them must change the cache key, so all three are the adapter's inputs however the fileset is named."""
    from data_adapters.registry import input_files

    for ext in (".bed", ".bim", ".fam"):
        (tmp_path / f"data{ext}").write_text("x")
    expected = [str(tmp_path / f"data{ext}") for ext in (".bed", ".bim", ".fam")]
    assert input_files("plink", {"path": str(tmp_path / given)}) == expected


@pytest.mark.parametrize("kind, ext", [("plink", ".bed"), ("pgen", ".pgen"), ("bgen", "")])
def test_a_relative_fileset_prefix_is_resolved_against_the_config_folder(tmp_path, kind, ext):
    from mot_neuro.data.sources import _resolve

    (tmp_path / f"geno{ext or '.bgen'}").write_text("x")
    name = "geno" if ext else "geno.bgen"  # a BGEN is named by its file, the others by their prefix too
    assert _resolve(name, tmp_path, kind) == str(tmp_path / name)
    assert _resolve("elsewhere", tmp_path, kind) == "elsewhere"  # nothing there: left as given


def test_a_new_adapters_version_rebuilds_built_cohorts(tmp_path, monkeypatch):
    """Adapters that give other tokens for the same files (a fix) must not meet caches of the older code."""
    from mot_neuro.data import sources

    ids = [f"s{i}" for i in range(8)]
    pd.DataFrame({"eid": ids, "y": np.arange(8.0)}).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame({"eid": ids, "m1": np.arange(8.0) ** 2}).to_csv(tmp_path / "b.csv", index=False)
    spec = {"b": {"adapter": "measures_table", "path_or_df": str(tmp_path / "b.csv")}}
    build = dict(participants=str(tmp_path / "p.csv"), modalities=spec, targets=["y"], confounds=[])
    _, key = sources.build_cached_cohort(**build, cache_dir=tmp_path / "cache")
    _, same = sources.build_cached_cohort(**build, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(sources, "ADAPTERS_VERSION", sources.ADAPTERS_VERSION + 1)
    _, newer = sources.build_cached_cohort(**build, cache_dir=tmp_path / "cache")
    assert key == same != newer

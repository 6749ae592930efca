"""The pictures of ``mot-neuro explain``: what is painted into the atlas, what the figures show, atomic writes and
the errors of bad input (mot_neuro.explain.figures)."""

from __future__ import annotations

import ast
import gc
import socket
import weakref
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mot_neuro.explain import figures

TAB_RED = np.array([0.839, 0.153, 0.157])  # the colour of highlighted variants


def _png(path: Path) -> np.ndarray:
    """The RGB pixels of a PNG, checked to be a real, non-trivial image."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    return pixels[..., :3]


def _only(folder: Path, *names: str) -> None:
    """Nothing but ``names`` in ``folder``: no temporary file left behind."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def _atlas(folder: Path, data: np.ndarray, name: str = "atlas.nii.gz") -> Path:
    # 4 mm voxels around the MNI origin, as the demo atlas
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -2.0 * np.array(data.shape[:3])
    path = folder / name
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture
def small_atlas(tmp_path) -> Path:
    """Labels 1..4 in four slabs along x, background 0 at both ends."""
    labels = np.zeros((12, 6, 5), dtype=np.int16)
    for label in range(1, 5):
        labels[2 * label : 2 * label + 2] = label
    folder = tmp_path / "atlas"
    folder.mkdir()
    return _atlas(folder, labels)


# --- paint_atlas ------------------------------------------------------------------------------------------------


def test_paint_atlas_puts_each_value_on_its_region_and_zero_elsewhere(demo_cohort_files, tmp_path):
    atlas = nib.load(demo_cohort_files["atlas"])
    labels = np.asarray(atlas.dataobj)
    ids = [3, 1, 7, 12, 20]
    values = [0.5, -1.25, np.nan, 2.0, -0.001]

    out = figures.paint_atlas(demo_cohort_files["atlas"], ids, values, tmp_path / "map.nii.gz")

    assert out == tmp_path / "map.nii.gz"
    painted = nib.load(out)
    data = np.asarray(painted.dataobj)
    assert data.dtype == np.float32 and data.shape == atlas.shape
    np.testing.assert_allclose(painted.affine, atlas.affine)
    assert int(painted.header["sform_code"]) == int(atlas.header["sform_code"])
    for label, value in zip(ids, values, strict=True):
        expected = 0.0 if np.isnan(value) else np.float32(value)
        assert (data[labels == label] == expected).all(), label
    assert (data[~np.isin(labels, [3, 1, 12, 20])] == 0).all()  # unlisted, background and the NaN region
    _only(tmp_path, "map.nii.gz")


@pytest.mark.parametrize(
    "store",
    [
        pytest.param(lambda labels: labels[..., np.newaxis], id="4-D with one volume"),
        pytest.param(lambda labels: labels.astype(np.float32), id="whole numbers stored as floats"),
    ],
)
def test_paint_atlas_takes_labelled_atlases_in_other_storage(small_atlas, tmp_path, store):
    labels = np.asarray(nib.load(small_atlas).dataobj)
    atlas = _atlas(tmp_path, store(labels), "stored.nii.gz")

    data = nib.load(figures.paint_atlas(atlas, [2, 4], [1.5, -3.0], tmp_path / "map.nii")).get_fdata()

    assert data.shape == labels.shape
    np.testing.assert_array_equal(data, np.select([labels == 2, labels == 4], [1.5, -3.0], 0.0))


def test_paint_atlas_replaces_an_existing_output_atomically(small_atlas, tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "map.nii.gz"
    out.write_bytes(b"an older map")

    figures.paint_atlas(small_atlas, [1], [4.0], out)
    assert nib.load(out).get_fdata().max() == 4.0
    _only(out_dir, "map.nii.gz")

    def write_half_then_fail(image, filename):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    before = out.read_bytes()
    monkeypatch.setattr(figures.nib, "save", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        figures.paint_atlas(small_atlas, [1], [5.0], out)
    assert out.read_bytes() == before  # the previous map, whole
    _only(out_dir, "map.nii.gz")


def test_paint_atlas_errors_name_what_is_wrong(small_atlas, tmp_path):
    out = tmp_path / "map.nii.gz"
    with pytest.raises(FileNotFoundError, match="nowhere.nii.gz"):
        figures.paint_atlas(tmp_path / "nowhere.nii.gz", [1], [1.0], out)
    with pytest.raises(ValueError, match="2 label ids but 1 values"):
        figures.paint_atlas(small_atlas, [1, 2], [1.0], out)
    with pytest.raises(ValueError, match=r"label id 9 is not a region of atlas .*atlas\.nii\.gz"):
        figures.paint_atlas(small_atlas, [1, 9], [1.0, 2.0], out)
    with pytest.raises(ValueError, match="label id 0 .*background"):
        figures.paint_atlas(small_atlas, [0], [1.0], out)
    with pytest.raises(ValueError, match="label id 2 is given more than once"):
        figures.paint_atlas(small_atlas, [2, 1, 2], [1.0, 2.0, 3.0], out)
    with pytest.raises(ValueError, match="label id 1.5 is not an integer"):
        figures.paint_atlas(small_atlas, [1.5], [1.0], out)
    with pytest.raises(ValueError, match="infinite"):
        figures.paint_atlas(small_atlas, [1], [np.inf], out)

    probabilistic = _atlas(tmp_path, np.random.default_rng(0).random((6, 6, 6, 3), dtype=np.float32), "prob.nii.gz")
    with pytest.raises(ValueError, match=r"prob\.nii\.gz is 4-D with 3 volumes .*only labelled atlases"):
        figures.paint_atlas(probabilistic, [1], [1.0], out)
    fractional = _atlas(tmp_path, np.full((6, 6, 6), 0.25, dtype=np.float32), "fraction.nii.gz")
    with pytest.raises(ValueError, match=r"fraction\.nii\.gz holds non-integer values \(e\.g\. 0\.25\)"):
        figures.paint_atlas(fractional, [1], [1.0], out)
    assert not out.exists()


# --- brain_map_figures ------------------------------------------------------------------------------------------


def _coloured(pixels: np.ndarray) -> tuple[int, int]:
    """Red and blue pixels left of the colour bar (which always shows both): the painted regions."""
    brain = pixels[:, : int(pixels.shape[1] * 0.85)]
    red = (brain[..., 0] - brain[..., 2] > 0.3).sum()
    blue = (brain[..., 2] - brain[..., 0] > 0.3).sum()
    return int(red), int(blue)


@pytest.mark.slow  # nilearn takes seconds to import and to resample onto its template
def test_brain_map_figures_draw_signed_and_all_zero_maps_offline(demo_cohort_files, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("brain_map_figures tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("NILEARN_DATA", str(tmp_path / "nilearn_data"))
    atlas = demo_cohort_files["atlas"]
    ids = list(range(1, 21))
    signed = figures.paint_atlas(atlas, ids, [(-1) ** i * (0.5 + i / 20) for i in ids], tmp_path / "signed.nii.gz")
    zero = figures.paint_atlas(atlas, [1], [0.0], tmp_path / "zero.nii.gz")
    (tmp_path / "signed_stat_map.png").write_bytes(b"an older picture")

    paths = figures.brain_map_figures(signed, tmp_path / "signed", "brain attributions")
    zero_paths = figures.brain_map_figures(zero, tmp_path / "zero", "nothing")

    assert paths == {"stat_map": tmp_path / "signed_stat_map.png", "glass_brain": tmp_path / "signed_glass_brain.png"}
    for kind in ("stat_map", "glass_brain"):
        red, blue = _coloured(_png(paths[kind]))
        assert red > 100 and blue > 100, kind  # a diverging scale: both signs drawn
        assert _coloured(_png(zero_paths[kind])) == (0, 0), kind  # rendered, nothing painted
    _only(
        tmp_path,
        *("signed.nii.gz", "signed_stat_map.png", "signed_glass_brain.png"),
        *("zero.nii.gz", "zero_stat_map.png", "zero_glass_brain.png"),
    )
    assert not (tmp_path / "nilearn_data").exists()  # nothing fetched


def test_brain_map_figures_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        figures.brain_map_figures(tmp_path / "missing.nii.gz", tmp_path / "brain", "t")
    series = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), dtype=np.float32), np.eye(4)), series)
    with pytest.raises(ValueError, match=r"series\.nii\.gz has shape \(4, 4, 4, 2\): expected one 3-D map"):
        figures.brain_map_figures(series, tmp_path / "brain", "t")


# --- manhattan_figure -------------------------------------------------------------------------------------------


def test_genome_axis_puts_chromosomes_in_natural_order():
    table = pd.DataFrame(
        {
            "chromosome": ["10", "2", "X", 1.0, "MT", "Y", "Un", "22", "chr3", "2", "1", "alt"],
            "position": [50, 300, 10, 1_000, 5, 7, 3, 40, 90, 100, 400, 8],
        }
    )
    x, blocks = figures._genome_axis(table)

    assert blocks["chromosome"].tolist() == ["1", "2", "3", "10", "22", "X", "Y", "MT", "Un", "alt"]
    assert (blocks["start"].to_numpy()[1:] > blocks["end"].to_numpy()[:-1]).all()  # one after the other, a gap
    assert ((blocks["start"] <= blocks["centre"]) & (blocks["centre"] <= blocks["end"])).all()
    rank = {c: i for i, c in enumerate(blocks["chromosome"])}
    natural = table.assign(rank=table["chromosome"].map(figures._chromosome_name).map(rank), x=x)
    assert natural.sort_values(["rank", "position"])["x"].is_monotonic_increasing
    # within a chromosome, distances in bp are kept
    assert x[1] - x[9] == 300 - 100 and x[3] - x[10] == 1_000 - 400


def _variants(n_per_chromosome: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    chromosomes = ["1", "2", "10", "X"]
    return pd.DataFrame(
        {
            "feature": [f"rs{i}" for i in range(n_per_chromosome * len(chromosomes))],
            "chromosome": np.repeat(chromosomes, n_per_chromosome),
            "position": np.tile(np.arange(n_per_chromosome) * 10_000 + 1, len(chromosomes)),
            "value": rng.normal(size=n_per_chromosome * len(chromosomes)),
        }
    )


def test_manhattan_figure_plots_abs_values_and_highlights_named_variants(tmp_path):
    table = _variants()
    table.loc[5, "value"] = -9.0  # the tallest point, from a negative attribution
    table.loc[[7, 8], ["position", "value"]] = np.nan  # no value: dropped, so its missing position is no error

    figure = figures._manhattan_plot(table.dropna(), "genes", ["rs5", "rs70", "rs_absent"])
    axes = figure.axes[0]
    assert axes.get_ylabel() == "|attribution|"
    assert [t.get_text() for t in axes.get_xticklabels()] == ["1", "2", "10", "X"]
    assert axes.get_ylim()[0] == 0 and axes.get_ylim()[1] >= 9.0
    (legend_text,) = [t.get_text() for t in axes.get_legend().get_texts()]
    assert legend_text == "highlighted: rs5, rs70 (1 not in the table)"

    marked = figures.manhattan_figure(table, tmp_path / "marked.png", "genes", highlight=["rs5", "rs70"])
    plain = figures.manhattan_figure(table, tmp_path / "plain.png", "genes")
    red = [int((np.abs(_png(p) - TAB_RED).max(axis=2) < 0.05).sum()) for p in (marked, plain)]
    assert red[0] > 20 and red[1] == 0
    _only(tmp_path, "marked.png", "plain.png")


def test_manhattan_figure_errors_name_what_is_wrong(tmp_path):
    out = tmp_path / "m.png"
    with pytest.raises(ValueError, match="no rows"):
        figures.manhattan_figure(_variants().iloc[:0], out, "t")
    with pytest.raises(ValueError, match="lacks column.*'position'"):
        figures.manhattan_figure(_variants().drop(columns="position"), out, "t")
    missing = _variants()
    missing.loc[[3, 4], "position"] = np.nan
    with pytest.raises(ValueError, match="2 rows have no position \\(e.g. feature 'rs3'\\)"):
        figures.manhattan_figure(missing, out, "t")
    with pytest.raises(ValueError, match="all 160 rows have no value"):
        figures.manhattan_figure(_variants().assign(value=np.nan), out, "t")
    assert not out.exists()


# --- attention_heatmaps -----------------------------------------------------------------------------------------


def _shares(modalities: list[str], seed: int) -> pd.DataFrame:
    raw = np.random.default_rng(seed).random((len(modalities), len(modalities)))
    return pd.DataFrame(raw / raw.sum(axis=1, keepdims=True), index=modalities, columns=modalities)


def test_attention_heatmaps_one_panel_per_matrix_on_one_scale(tmp_path):
    matrices = {"mot": _shares(["brain", "gene", "behaviour"], 0), "dense": _shares(["brain", "gene"], 1)}
    shares = {name: m.to_numpy() for name, m in matrices.items()}

    figure = figures._attention_plot(matrices, shares, "attention")
    mot, dense, colourbar = figure.axes
    assert [mot.get_title(), dense.get_title()] == ["mot", "dense"]
    for axes, matrix in ((mot, matrices["mot"]), (dense, matrices["dense"])):
        assert axes.images[0].get_clim() == (0.0, 1.0)
        assert [t.get_text() for t in axes.get_yticklabels()] == list(matrix.index)
        assert [t.get_text() for t in axes.get_xticklabels()] == list(matrix.columns)
        assert (axes.get_xlabel(), axes.get_ylabel()) == ("key", "query")
        assert [t.get_text() for t in axes.texts] == [f"{v:.2f}" for v in matrix.to_numpy().ravel()]
    assert colourbar.get_ylabel() == "share of attention"

    out = figures.attention_heatmaps(matrices, tmp_path / "attention.png", "attention")
    pixels = _png(out)
    assert pixels.shape[1] > pixels.shape[0]  # panels side by side
    _only(tmp_path, "attention.png")


def test_attention_heatmaps_errors_name_the_matrix(tmp_path):
    out = tmp_path / "a.png"
    with pytest.raises(ValueError, match="no matrices given"):
        figures.attention_heatmaps({}, out, "t")
    with pytest.raises(ValueError, match=r"matrix 'dense' must be a non-empty square DataFrame .*\(2, 3\)"):
        figures.attention_heatmaps({"dense": _shares(["a", "b", "c"], 0).iloc[:2]}, out, "t")
    too_much = _shares(["a", "b"], 0)
    too_much.iloc[1, 0] = 1.5
    with pytest.raises(ValueError, match="matrix 'mot' holds 1.5, outside"):
        figures.attention_heatmaps({"mot": too_much}, out, "t")
    assert not out.exists()


def test_figures_are_freed_after_writing(tmp_path, monkeypatch):
    made = []
    new_figure = figures._new_figure

    def tracked(*args, **kwargs):
        figure = new_figure(*args, **kwargs)
        made.append(weakref.ref(figure))
        return figure

    monkeypatch.setattr(figures, "_new_figure", tracked)
    for i in range(3):
        figures.attention_heatmaps({"mot": _shares(["a", "b"], i)}, tmp_path / "a.png", "t")
    gc.collect()
    assert len(made) == 3 and all(ref() is None for ref in made)


# --- modality_bar_charts ----------------------------------------------------------------------------------------


def _attributions() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    rows = []
    for modality, n in (("gene", 40), ("brain", 6)):
        rows.append({"modality": modality, "token": "*", "value": 100.0, "sd": np.nan, "n": 50})
        for i in range(n):
            sd = abs(rng.normal()) if i % 2 else np.nan
            rows.append({"modality": modality, "token": f"{modality}{i}", "value": rng.normal(), "sd": sd, "n": 50})
    return pd.DataFrame(rows)


def test_top_tokens_selects_by_magnitude_largest_first():
    rows = pd.DataFrame({"token": list("abcdef"), "value": [0.1, -3.0, 2.0, -2.0, 0.0, 0.5]})

    assert figures._top_tokens(rows, 3)["token"].tolist() == ["b", "c", "d"]  # c before d: the table's order
    assert figures._top_tokens(rows, 10)["token"].tolist() == ["b", "c", "d", "f", "a", "e"]


def test_modality_bar_charts_show_top_tokens_per_modality(tmp_path):
    table = _attributions()
    tokens = table.loc[table["token"] != "*"]

    figure = figures._bar_plot(tokens, "tokens", top=10)
    gene, brain = figure.axes[:2]
    assert [gene.get_title(), brain.get_title()] == ["gene (top 10 of 40)", "brain"]  # order of first appearance
    genes = tokens.loc[tokens["modality"] == "gene"]
    expected = genes.loc[genes["value"].abs().sort_values(ascending=False).index[:10], "token"].tolist()
    top_down = sorted(zip(gene.get_yticks(), gene.get_yticklabels(), strict=True), key=lambda tick: -tick[0])
    assert [label.get_text() for _, label in top_down] == expected  # largest on top
    assert "*" not in [t.get_text() for t in brain.get_yticklabels()]  # totals are not tokens
    widths = [bar.get_width() for bar in gene.patches]
    np.testing.assert_allclose(widths, genes.set_index("token").loc[expected, "value"])  # signed means

    out = figures.modality_bar_charts(table, tmp_path / "bars.png", "tokens", top=10)
    _png(out)
    _only(tmp_path, "bars.png")


def test_modality_bar_charts_errors_name_what_is_wrong(tmp_path):
    out = tmp_path / "b.png"
    with pytest.raises(ValueError, match="lacks column.*'sd'"):
        figures.modality_bar_charts(_attributions().drop(columns="sd"), out, "t")
    with pytest.raises(ValueError, match="top must be a positive integer, got 0"):
        figures.modality_bar_charts(_attributions(), out, "t", top=0)
    totals = _attributions().query("token == '*'")
    with pytest.raises(ValueError, match="no token rows .*modality totals"):
        figures.modality_bar_charts(totals, out, "t")
    assert not out.exists()


def test_figures_module_imports_neither_torch_nor_lightning():
    tree = ast.parse(Path(figures.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    roots = {name.split(".")[0] for name in imported}
    assert not roots & {"torch", "lightning", "pytorch_lightning", "captum"}

"""Pictures of token attributions: brain maps painted on the atlas, a Manhattan plot of the variants, the share
of attention between modalities, and the top tokens of each modality.

No torch and no Lightning here: numpy, pandas, nibabel, matplotlib and, for brain maps only, nilearn (imported
lazily: it takes seconds). Figures are matplotlib ``Figure`` objects on an Agg canvas, never pyplot's: no display
is needed, pyplot's global state is left alone, and each figure is cleared before its function returns, so many
calls do not pile up figures. Every file is written under a temporary name beside its final path and renamed:
readers see the previous file or the whole new one, and a failed write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "attention_heatmaps",
    "brain_map_figures",
    "manhattan_figure",
    "modality_bar_charts",
    "paint_atlas",
]

_DPI = 120
_DIVERGING = "RdBu_r"  # signed attributions: red up, blue down, white at 0 (with a symmetric scale)
_SEX_AND_MITO = ("X", "Y", "MT")  # after the autosomes, in this order
_TOTAL_TOKEN = "*"  # the token name of a modality's total in an aggregated attribution table


@contextlib.contextmanager
def _replaced_atomically(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, ending like it (nibabel and matplotlib pick the format from the
    suffix); renamed onto ``path`` if the block succeeds, removed in any case."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    # Hidden, so that a glob for *.png does not pick up a half-written file; created by the writer itself, so it
    # gets the usual permissions (mkstemp's would be owner-only).
    tmp = path.with_name(f".{stem}.tmp-{uuid.uuid4().hex[:12]}{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    figure = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure: Figure, path: str | os.PathLike, dpi: int = _DPI) -> Path:
    path = Path(path)
    try:
        with _replaced_atomically(path) as tmp:
            figure.savefig(tmp, format="png", dpi=dpi)
    finally:
        figure.clear()  # breaks the figure's reference cycles now rather than at the next garbage collection
    return path


def _require_columns(table: pd.DataFrame, columns: Sequence[str], caller: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"{caller}: the table lacks column(s) {', '.join(map(repr, missing))} "
            f"(it has {', '.join(map(repr, map(str, table.columns)))})"
        )


# --- brain ---------------------------------------------------------------------------------------------------


def _atlas_labels(atlas: nib.spatialimages.SpatialImage, atlas_path: Path) -> np.ndarray:
    """The atlas's labels as a 3-D integer array; a clear error for probabilistic or fractional atlases."""
    shape = atlas.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    elif len(shape) == 4:
        raise ValueError(
            f"atlas {atlas_path} is 4-D with {shape[3]} volumes (a probabilistic atlas?): "
            "only labelled atlases (3-D, integer labels) are painted"
        )
    if len(shape) != 3:
        raise ValueError(f"atlas {atlas_path} has {len(shape)} dimensions {tuple(shape)}: expected a 3-D label image")
    data = np.asanyarray(atlas.dataobj).reshape(shape)
    if not np.issubdtype(data.dtype, np.integer):
        # Labels are often stored as floats; they are still labels if every value is a whole number.
        fractional = ~np.isfinite(data) | (data != np.round(data))
        if fractional.any():
            example = data[fractional].flat[0]
            raise ValueError(
                f"atlas {atlas_path} holds non-integer values (e.g. {example}): "
                "only labelled atlases (3-D, integer labels) are painted"
            )
        data = data.astype(np.int64)
    return data


def _label_ids(label_ids: Sequence[int]) -> np.ndarray:
    ids = np.asarray(label_ids)
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or np.issubdtype(ids.dtype, np.floating)):
        raise ValueError(f"paint_atlas: label ids must be a flat sequence of integers, got {ids.dtype} {ids.shape}")
    if np.issubdtype(ids.dtype, np.floating):
        whole = np.isfinite(ids) & (ids == np.round(ids))
        if not whole.all():
            raise ValueError(f"paint_atlas: label id {ids[~whole][0]} is not an integer")
    return ids.astype(np.int64)


def paint_atlas(
    atlas_path: str | os.PathLike, label_ids: Sequence[int], values: Sequence[float], output_path: str | os.PathLike
) -> Path:
    """Write a float32 NIfTI in the atlas's grid (same shape and affine) where every voxel of label
    ``label_ids[i]`` holds ``values[i]`` and every other voxel 0; returns ``output_path``.

    A NaN value leaves its region at 0, like an unlisted one: a brain map cannot say "undefined", and 0 is the
    colour of "no attribution". The atlas must be a labelled one: 3-D (or 4-D with one volume) and integer-valued
    (floats holding whole numbers count), 0 being the background. Raises FileNotFoundError for a missing atlas,
    ValueError for a probabilistic or fractional atlas, a label id that is not in it (or is 0, or repeats), and a
    number of values that differs from the number of ids.
    """
    atlas_path = Path(atlas_path)
    if not atlas_path.is_file():
        raise FileNotFoundError(f"paint_atlas: atlas file not found: {atlas_path}")
    ids = _label_ids(label_ids)
    try:
        painted_values = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"paint_atlas: values must be numbers, got {list(values)[:3]!r}...") from None
    if np.isinf(painted_values).any():
        raise ValueError(f"paint_atlas: value {painted_values[np.isinf(painted_values)][0]} is infinite")
    if ids.size != painted_values.size:
        raise ValueError(
            f"paint_atlas: {ids.size} label ids but {painted_values.size} values for atlas {atlas_path} "
            "(one value per label)"
        )
    atlas = nib.load(atlas_path)
    labels = _atlas_labels(atlas, atlas_path)

    present = np.unique(labels)
    unknown = ids[~np.isin(ids, present) | (ids == 0)]
    if unknown.size:
        hint = "0 is the background" if unknown[0] == 0 else f"it has {present[present != 0].size} labels"
        raise ValueError(f"paint_atlas: label id {unknown[0]} is not a region of atlas {atlas_path} ({hint})")
    unique_ids, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"paint_atlas: label id {unique_ids[counts > 1][0]} is given more than once")

    # One value per distinct label, then one lookup for all voxels (no loop over regions).
    per_label = np.zeros(present.size, dtype=np.float32)
    per_label[np.searchsorted(present, ids)] = np.where(np.isnan(painted_values), 0.0, painted_values)
    painted = per_label[np.searchsorted(present, labels)]

    image = nib.Nifti1Image(painted.astype(np.float32), atlas.affine)
    if isinstance(atlas.header, nib.Nifti1Header):  # keep the space code (e.g. MNI) and units of a NIfTI atlas
        image.header.set_xyzt_units(*atlas.header.get_xyzt_units())
        if sform_code := int(atlas.header["sform_code"]):
            image.set_sform(atlas.affine, code=sform_code)
        if qform_code := int(atlas.header["qform_code"]):
            image.set_qform(atlas.affine, code=qform_code)

    output_path = Path(output_path)
    with _replaced_atomically(output_path) as tmp:
        nib.save(image, tmp)
    return output_path


def _brain_map(nifti_path: Path) -> nib.Nifti1Image:
    if not nifti_path.is_file():
        raise FileNotFoundError(f"brain_map_figures: NIfTI file not found: {nifti_path}")
    image = nib.load(nifti_path)
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"brain_map_figures: {nifti_path} has shape {image.shape}: expected one 3-D map")
    data = np.asanyarray(image.dataobj, dtype=np.float32).reshape(shape)
    return nib.Nifti1Image(np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0), image.affine)


def brain_map_figures(
    nifti_path: str | os.PathLike, output_stem: str | os.PathLike, title: str, *, signed: bool = True
) -> dict[str, Path]:
    """Two PNGs of a painted map (:func:`paint_atlas`) on nilearn's packaged MNI152 template: slices
    (``<output_stem>_stat_map.png``) and a glass brain (``<output_stem>_glass_brain.png``).

    Signed maps (attributions): a diverging colour map with a scale symmetric about 0, and the glass brain shows
    signed maxima (``plot_abs=False``). ``signed=False`` (importances, never negative): a sequential colour map
    from 0. Exact zeros (outside the painted regions) stay transparent;
    non-finite voxels are drawn as 0. An all-zero map still renders, with the cuts at the origin and "(all zero)"
    added to the title. Returns {"stat_map": path, "glass_brain": path}.
    """
    image = _brain_map(Path(nifti_path))
    from nilearn import plotting  # seconds to import: only when brain maps are drawn

    vmax = float(np.abs(image.get_fdata()).max())
    all_zero = vmax == 0.0
    if all_zero:  # nilearn cannot scale colours to 0 or find cuts in an empty map: give it both
        vmax, cut_coords, title = 1.0, (0.0, 0.0, 0.0), f"{title} (all zero)"
    else:
        cut_coords = None  # nilearn centres the slices on the strongest region
    # Hides only the exact zeros, so a region with a tiny attribution is still drawn.
    threshold = vmax * 1e-6
    if signed:
        common = {"title": title, "cmap": _DIVERGING, "vmax": vmax, "symmetric_cbar": True, "threshold": threshold}
    else:
        common = {"title": title, "cmap": "YlOrRd", "vmin": 0.0, "vmax": vmax, "symmetric_cbar": False}
        common["threshold"] = threshold

    output_stem = Path(output_stem)
    paths = {
        "stat_map": output_stem.with_name(f"{output_stem.name}_stat_map.png"),
        "glass_brain": output_stem.with_name(f"{output_stem.name}_glass_brain.png"),
    }
    with warnings.catch_warnings():
        if all_zero:  # nilearn finds nothing to bound when every voxel is under the threshold: expected here
            warnings.filterwarnings("ignore", message="empty mask", category=UserWarning)
        figure = _new_figure(8.0, 3.0, layout=None)  # nilearn places its own axes
        plotting.plot_stat_map(image, figure=figure, cut_coords=cut_coords, draw_cross=False, **common)
        _save_png(figure, paths["stat_map"], dpi=100)

        figure = _new_figure(8.0, 3.0, layout=None)
        plotting.plot_glass_brain(image, figure=figure, cut_coords=cut_coords, plot_abs=not signed, **common)
        _save_png(figure, paths["glass_brain"], dpi=100)
    return paths


# --- genome --------------------------------------------------------------------------------------------------


def _chromosome_order(name: str) -> tuple[int, int, str]:
    """Sort key: numbered chromosomes by number, then X, Y, MT, then any other name alphabetically."""
    if name.isdigit():
        return (0, int(name), "")
    if name in _SEX_AND_MITO:
        return (1, _SEX_AND_MITO.index(name), "")
    return (2, 0, name)


def _chromosome_name(raw: object) -> str:
    # "chr1", "1", 1 and 1.0 (a column read as numbers) name the same chromosome; "M" is the other spelling of MT.
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    name = str(raw).strip()
    if name.lower().startswith("chr"):
        name = name[3:]
    name = name.upper() if name.upper() in ("X", "Y", "MT", "M") else name
    return "MT" if name == "M" else name


def _genome_axis(table: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Cumulative genome positions of the rows of ``table`` (columns ``chromosome``, ``position``).

    Chromosomes follow each other in natural order (1..22, X, Y, MT, others alphabetically), each spanning its
    lowest to highest position, separated by a gap of 1% of the total span. Returns the x of every row (in the
    table's row order) and one row per chromosome, in plotting order: ``chromosome``, ``start``, ``end``,
    ``centre`` (where its label goes).
    """
    chromosomes = table["chromosome"].map(_chromosome_name).to_numpy()
    positions = table["position"].to_numpy(dtype=np.float64)
    order = sorted(pd.unique(chromosomes), key=_chromosome_order)
    lowest = {c: positions[chromosomes == c].min() for c in order}
    spans = {c: positions[chromosomes == c].max() - lowest[c] for c in order}
    gap = max(0.01 * sum(spans.values()), 1.0)

    x = np.empty(positions.size, dtype=np.float64)
    blocks, start = [], 0.0
    for chromosome in order:
        rows = chromosomes == chromosome
        x[rows] = start + positions[rows] - lowest[chromosome]
        end = start + spans[chromosome]
        blocks.append({"chromosome": chromosome, "start": start, "end": end, "centre": (start + end) / 2})
        start = end + gap
    return x, pd.DataFrame(blocks, columns=["chromosome", "start", "end", "centre"])


def _highlight_label(found: Sequence[str], asked: int) -> str:
    shown = ", ".join(found[:5]) + (f" +{len(found) - 5} more" if len(found) > 5 else "")
    absent = asked - len(found)
    return f"highlighted: {shown}" + (f" ({absent} not in the table)" if absent else "")


def manhattan_figure(table: pd.DataFrame, path: str | os.PathLike, title: str, highlight: Collection[str] = ()) -> Path:
    """A Manhattan plot PNG of variant attributions: |value| against the cumulative genome position, chromosomes
    in natural order with alternating colours, labelled at their centres; returns ``path``.

    ``table`` has columns ``feature`` (variant ID), ``chromosome``, ``position`` (bp) and ``value`` (signed
    attribution). Rows without a value are dropped; the rest must all have a position. The variants named in
    ``highlight`` (e.g. the planted ones of the demo cohort) are drawn as red stars and named in the legend.
    """
    _require_columns(table, ("feature", "chromosome", "position", "value"), "manhattan_figure")
    if table.empty:
        raise ValueError("manhattan_figure: the table has no rows")
    values = pd.to_numeric(table["value"], errors="coerce")
    rows = table.loc[values.notna()]
    if rows.empty:
        raise ValueError(f"manhattan_figure: all {len(table)} rows have no value (NaN)")
    positions = pd.to_numeric(rows["position"], errors="coerce")
    if positions.isna().any():
        example = rows.loc[positions.isna(), "feature"].iloc[0]
        raise ValueError(
            f"manhattan_figure: {int(positions.isna().sum())} rows have no position (e.g. feature {example!r})"
        )
    unplaced = rows["chromosome"].isna().to_numpy()
    if unplaced.any():
        example = rows.loc[unplaced, "feature"].iloc[0]
        raise ValueError(f"manhattan_figure: {int(unplaced.sum())} rows have no chromosome (e.g. feature {example!r})")
    rows = rows.assign(position=positions, value=values[values.notna()])
    return _save_png(_manhattan_plot(rows, title, highlight), path)


def _manhattan_plot(rows: pd.DataFrame, title: str, highlight: Collection[str]) -> Figure:
    x, blocks = _genome_axis(rows)
    height = np.abs(rows["value"].to_numpy(dtype=np.float64))
    chromosomes = rows["chromosome"].map(_chromosome_name).to_numpy()

    figure = _new_figure(12.0, 4.0)
    axes = figure.subplots()
    for i, chromosome in enumerate(blocks["chromosome"]):
        on = chromosomes == chromosome
        axes.scatter(x[on], height[on], s=8, color="tab:blue" if i % 2 == 0 else "tab:gray", linewidths=0)

    if isinstance(highlight, str):  # one ID given bare, not a collection of characters
        highlight = [highlight]
    marked = rows["feature"].astype(str).isin({str(h) for h in highlight}).to_numpy()
    if marked.any():
        found = list(pd.unique(rows["feature"].astype(str)[marked]))
        axes.scatter(
            x[marked], height[marked], s=90, marker="*", color="tab:red", edgecolors="black", linewidths=0.5,
            zorder=3, label=_highlight_label(found, len(set(map(str, highlight)))),
        )  # fmt: skip
        axes.legend(loc="upper right", fontsize=8)

    axes.set_xticks(blocks["centre"], blocks["chromosome"], fontsize=8 if len(blocks) <= 26 else 6)
    axes.set_xlim(blocks["start"].iloc[0] - 1, blocks["end"].iloc[-1] + 1)
    axes.set_ylim(bottom=0)
    axes.set_xlabel("chromosome")
    axes.set_ylabel("|attribution|")
    axes.set_title(title)
    return figure


# --- attention -----------------------------------------------------------------------------------------------


def _attention_matrix(name: str, matrix: pd.DataFrame) -> np.ndarray:
    if not isinstance(matrix, pd.DataFrame) or matrix.empty or matrix.shape[0] != matrix.shape[1]:
        shape = getattr(matrix, "shape", type(matrix).__name__)
        raise ValueError(
            f"attention_heatmaps: matrix {name!r} must be a non-empty square DataFrame (query x key), got {shape}"
        )
    shares = matrix.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    outside = np.isfinite(shares) & ((shares < -1e-6) | (shares > 1 + 1e-6))
    if outside.any():
        raise ValueError(
            f"attention_heatmaps: matrix {name!r} holds {shares[outside][0]:g}, outside [0, 1] "
            "(entries are shares of attention mass)"
        )
    return shares


def attention_heatmaps(matrices: Mapping[str, pd.DataFrame], path: str | os.PathLike, title: str) -> Path:
    """One heatmap per matrix (e.g. "mot" and "dense"), side by side, of the share of each query modality's
    attention that goes to each key modality; returns ``path``.

    One colour scale, 0..1, for all panels and one colour bar; every cell is annotated with its share (2
    decimals; "n/a" where undefined). Panels may have different modalities: each is labelled by its own matrix.
    """
    if not matrices:
        raise ValueError("attention_heatmaps: no matrices given (expected e.g. {'mot': ..., 'dense': ...})")
    shares = {name: _attention_matrix(name, matrix) for name, matrix in matrices.items()}
    return _save_png(_attention_plot(matrices, shares, title), path)


def _attention_plot(matrices: Mapping[str, pd.DataFrame], shares: Mapping[str, np.ndarray], title: str) -> Figure:
    largest = max(m.shape[0] for m in shares.values())
    side = max(2.5, 0.7 * largest + 1.2)

    figure = _new_figure(side * len(shares) + 1.0, side + 0.6)
    panels = figure.subplots(1, len(shares), squeeze=False)[0]
    image = None
    for axes, (name, matrix) in zip(panels, matrices.items(), strict=True):
        grid = shares[name]
        image = axes.imshow(np.ma.masked_invalid(grid), vmin=0.0, vmax=1.0, cmap="viridis")
        for (row, col), share in np.ndenumerate(grid):
            text = "n/a" if not np.isfinite(share) else f"{share:.2f}"
            # Light text on viridis's dark low end, dark text on its light high end.
            colour = "white" if not np.isfinite(share) or share < 0.6 else "black"
            axes.text(col, row, text, ha="center", va="center", fontsize=9, color=colour)
        axes.set_xticks(range(grid.shape[1]), [str(c) for c in matrix.columns], rotation=30, ha="right")
        axes.set_yticks(range(grid.shape[0]), [str(i) for i in matrix.index])
        axes.set_xlabel("key")
        axes.set_ylabel("query")
        axes.set_title(str(name))
    figure.colorbar(image, ax=list(panels), label="share of attention", shrink=0.8)
    figure.suptitle(title)
    return figure


# --- tokens --------------------------------------------------------------------------------------------------


def _top_tokens(rows: pd.DataFrame, top: int) -> pd.DataFrame:
    """The ``top`` rows of largest |value|, largest first (ties keep the table's order)."""
    magnitude = rows["value"].abs()
    order = magnitude.sort_values(ascending=False, kind="stable").index
    return rows.loc[order].head(top)


def modality_bar_charts(table: pd.DataFrame, path: str | os.PathLike, title: str, top: int = 25) -> Path:
    """One panel per modality (in order of first appearance) of horizontal bars: its ``top`` tokens by
    |mean attribution|, largest on top, error bars = sd over subjects where it is finite; returns ``path``.

    ``table`` has columns ``modality``, ``token``, ``value`` (mean attribution), ``sd`` (may be NaN), and
    optionally ``n`` (not used). Rows whose token is "*" are a modality's total, not a token: they are left out.
    Rows without a value are left out too. A panel that shows only some of its tokens says "top k of n".
    """
    _require_columns(table, ("modality", "token", "value", "sd"), "modality_bar_charts")
    if isinstance(top, bool) or not isinstance(top, int | np.integer) or top < 1:
        raise ValueError(f"modality_bar_charts: top must be a positive integer, got {top!r}")
    values = pd.to_numeric(table["value"], errors="coerce")
    tokens = table.assign(value=values, sd=pd.to_numeric(table["sd"], errors="coerce"))
    tokens = tokens.loc[(tokens["token"].astype(str) != _TOTAL_TOKEN) & values.notna()]
    if tokens.empty:
        raise ValueError(
            f"modality_bar_charts: no token rows with a value among the {len(table)} rows "
            f"(rows with token {_TOTAL_TOKEN!r} are modality totals and are not drawn)"
        )
    return _save_png(_bar_plot(tokens, title, top), path)


def _bar_plot(tokens: pd.DataFrame, title: str, top: int) -> Figure:
    modalities = list(pd.unique(tokens["modality"]))
    shown = {m: _top_tokens(tokens.loc[tokens["modality"] == m], top) for m in modalities}

    columns = min(3, len(modalities))
    rows_of_panels = -(-len(modalities) // columns)
    tallest = max(len(s) for s in shown.values())
    figure = _new_figure(4.6 * columns, (0.22 * tallest + 1.3) * rows_of_panels + 0.4)
    panels = figure.subplots(rows_of_panels, columns, squeeze=False).ravel()
    for axes, modality in zip(panels, modalities, strict=False):
        bars = shown[modality]
        y = np.arange(len(bars))[::-1]  # the largest on top
        heights = bars["value"].to_numpy(dtype=np.float64)
        spread = bars["sd"].to_numpy(dtype=np.float64)
        axes.barh(y, heights, color=np.where(heights < 0, "tab:blue", "tab:red"))
        finite = np.isfinite(spread)
        if finite.any():
            axes.errorbar(heights[finite], y[finite], xerr=spread[finite], fmt="none", ecolor="black", capsize=2)
        axes.axvline(0.0, color="black", linewidth=0.8)
        axes.set_ylim(len(bars) - tallest - 0.6, len(bars) - 0.4)  # bars as thick in every panel, from the top
        axes.set_yticks(y, bars["token"].astype(str).tolist(), fontsize=7)
        total = int((tokens["modality"] == modality).sum())
        axes.set_title(f"{modality} (top {len(bars)} of {total})" if total > len(bars) else str(modality))
        axes.set_xlabel("mean attribution (± sd)")
    for unused in panels[len(modalities) :]:
        unused.set_visible(False)
    figure.suptitle(title)
    return figure

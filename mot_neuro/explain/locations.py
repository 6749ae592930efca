"""Where a modality's tokens are: brain regions of a labelled NIfTI atlas, variants on the genome (pandas only).

Both come from what the adapter recorded in the cohort (``TokenizedModality.source``):

* brain: ``atlas`` (the atlas file) and ``label_ids`` (one per token, in token order), written by
  ``regions_from_nifti`` and ``regions_from_bids``;
* genes: ``feature_positions`` (token -> chromosome and base-pair positions of its variants, in slot order),
  written by the genotype readers (``plink``, ``vcf``, ``bgen``, ``pgen``).

A modality that lacks them has no brain map or genome plot; asking for one by name is an error naming what is
missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class AtlasRegions:
    """A modality's tokens as regions of a labelled atlas: ``label_ids[i]`` is token ``tokens[i]``."""

    atlas: Path
    tokens: list[str]
    label_ids: list[int]


def atlas_regions(modality, *, required: bool) -> AtlasRegions | None:
    """The atlas regions of a cohort modality (``name``, ``token_names``, ``source``), or None when it has none
    and is not ``required``. A recorded atlas file that is gone is an error either way (the map was expected)."""
    source = modality.source or {}
    atlas, label_ids = source.get("atlas"), source.get("label_ids")
    if not atlas or label_ids is None:
        if required:
            raise ValueError(
                f"modality {modality.name!r} did not come from a NIfTI atlas (adapter"
                f" {source.get('adapter', 'unknown')}): it has no brain map; leave it out of --brain_maps"
            )
        return None
    if len(label_ids) != len(modality.token_names):
        if required:
            raise ValueError(
                f"modality {modality.name!r}: {len(label_ids)} atlas labels for {len(modality.token_names)} tokens;"
                " its tokens are not one per region, so it has no brain map"
            )
        return None
    path = Path(atlas)
    if not path.is_file():
        raise FileNotFoundError(
            f"modality {modality.name!r}: its atlas {path} (recorded when the cohort was built) is not there: restore"
            " it, or pass --brain_maps none"
        )
    return AtlasRegions(path, list(modality.token_names), [int(i) for i in label_ids])


def variant_positions(modality, *, required: bool) -> pd.DataFrame | None:
    """``token, slot, feature, chromosome, position`` of every variant of a cohort modality, or None when its
    adapter recorded no positions and it is not ``required``."""
    source = modality.source or {}
    positions, features = source.get("feature_positions"), source.get("token_features")
    if not positions or not features:
        if required:
            raise ValueError(
                f"modality {modality.name!r} has no variant positions (adapter {source.get('adapter', 'unknown')};"
                " genotype readers record them, a cache built before they did is rebuilt on the next fit):"
                " leave it out of --genome_plots"
            )
        return None
    rows = []
    for token in modality.token_names:
        where, ids = positions.get(token), features.get(token)
        if where is None or ids is None:
            continue
        chroms = where.get("chromosomes") or [where.get("chromosome")] * len(where["positions"])
        for slot, (variant, chrom, bp) in enumerate(zip(ids, chroms, where["positions"], strict=True)):
            rows.append((token, slot, str(variant), str(chrom), int(bp)))
    return pd.DataFrame(rows, columns=["token", "slot", "feature", "chromosome", "position"])

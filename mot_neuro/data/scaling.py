"""The means and SDs the preprocessing subtracts and divides by: computed without overflow near float32's
range, and an SD that is float round-off of a constant left out (the values are not scaled)."""

from __future__ import annotations

import numpy as np

MIN_RELATIVE_SD = 1e-9  # an SD this small next to the mean is float round-off of a constant, not a spread


def usable_sd(sd, center):
    """Whether an SD measures a real spread (then values are divided by it) or a constant (left unscaled).

    Relative to the mean, not absolute: a feature or target in small units (a diffusivity in mm^2/s, a value
    scaled by 1e-13) has a tiny SD and must still be standardised, not flattened to a constant."""
    sd, center = np.asarray(sd, dtype=np.float64), np.asarray(center, dtype=np.float64)
    return (sd > 0) & (sd > MIN_RELATIVE_SD * np.abs(center))


def scaled_mean_sd(values: np.ndarray) -> tuple[float, float]:
    """Mean and SD of the non-NaN ``values``, computed on the values divided by their largest magnitude (squares
    of values near 1e300 overflow float64) and scaled back. Not finite when the values are not."""
    magnitude = float(np.nanmax(np.abs(values))) or 1.0
    mean = magnitude * float(np.nanmean(values / magnitude))
    sd = magnitude * float(np.nanstd(values / magnitude))
    return mean, sd

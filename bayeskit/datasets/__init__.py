"""Data sets shipped with bayeskit for the examples and tests (no download at run time).

* ``gpdp``: from the research compendium of Boettiger, Mangel & Munch, "Avoiding tipping points in
  fisheries management through Gaussian process dynamic programming" (Proc. R. Soc. B 2015),
  repository cboettig/nonparametric-bayes, ``manuscripts/components/data/``. Licence: CC0 1.0.
  ``training_data`` is the 40-step simulated stock series (x_t, x_{t+1}); ``figure1``, ``figure2``,
  ``figure3``, ``figure5`` are the published figure data (trajectories, fits with bands, policies,
  net present values), used to compare our reproduction with the paper.
* ``sbirr``: snapshot data accompanying Shen, Berlinghieri & Broderick, "Multi-marginal Schrödinger
  bridges with iterative reference refinement" (AISTATS 2025), repository YunyiShen/SBIRR,
  ``Notebooks/data/``: ``LV`` (Lotka–Volterra, 9 snapshots x 50 particles x 2), ``repres``
  (repressilator, 11 x 50 x 3), ``GoMvortex`` (Gulf of Mexico drifters, 9 x 111 x 2), ``eb``
  (embryoid body scRNA, 5 x 300 x 5 PCA), ``hESC`` (ragged list of 5 snapshots x 5 PCA).
"""

from __future__ import annotations

import csv
from importlib import resources

import numpy as np

from bayeskit.errors import ConfigurationError

__all__ = ["load_gpdp", "load_sbirr", "GPDP_FILES", "SBIRR_FILES"]

GPDP_FILES = ("training_data", "figure1", "figure2", "figure3", "figure5")
SBIRR_FILES = ("LV", "repres", "GoMvortex", "eb", "hESC")


def _path(*parts: str):
    return resources.files("bayeskit.datasets").joinpath("data", *parts)


def load_gpdp(name: str = "training_data") -> dict[str, np.ndarray]:
    """Load one CSV of the GPDP fisheries study as ``{column: array}`` (numeric columns as floats).

    Example:
        >>> d = load_gpdp("training_data")
        >>> d["x"].shape, d["y"].shape
        ((41,), (41,))
    """
    if name not in GPDP_FILES:
        raise ConfigurationError(f"`name` must be one of {GPDP_FILES}, got {name!r}")
    with _path("gpdp", f"{name}.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for col in rows[0]:
        if col == "":
            continue
        values = [r[col] for r in rows]
        try:
            out[col] = np.array([float("nan") if v == "NA" else float(v) for v in values])
        except ValueError:
            out[col] = np.array(values)
    return out


def load_sbirr(name: str = "LV"):
    """Load SBIRR snapshot data: an array (snapshot, particle, dim), or a list of arrays for ``hESC``."""
    if name not in SBIRR_FILES:
        raise ConfigurationError(f"`name` must be one of {SBIRR_FILES}, got {name!r}")
    if name == "hESC":
        with _path("sbirr", "hESC_data.npz").open("rb") as fh:
            z = np.load(fh, allow_pickle=False)
            return [z[f"snapshot_{i}"] for i in range(len(z.files))]
    with _path("sbirr", f"{name}_data.npy").open("rb") as fh:
        return np.load(fh, allow_pickle=False)

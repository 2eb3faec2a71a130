"""Results to ArviZ: every backend's ``Result.to_arviz()`` goes through :func:`to_datatree`.

ArviZ 1.x represents inference results as an :class:`xarray.DataTree` whose children are groups
(``posterior``, ``sample_stats``, ``log_likelihood``, ``observed_data``, ...). bayeskit's convention
(docs page "ArviZ output") is:

* every result has a ``posterior`` group with leading ``(chain, draw)`` axes, so that ``az.summary``
  and ArviZ's plots work on it: MCMC iterations, particles resampled to equal weights
  (:func:`equal_weight_draws`), sampled paths, or a point estimate as one draw;
* per-step SMC diagnostics (``ess``, ``resampled``, ``log_evidence_increment``, ...) and the
  ``log_evidence`` of one SMC run sit in ``sample_stats`` with the run as one draw (:func:`one_run`);
* other groups (a filter's moments over ``time``, an optimisation history over ``iteration``) are
  plain datasets with named dims.

Booleans are stored as ``int8`` (ArviZ's summaries subtract values) and root attributes are kept
netCDF-compatible, so ``tree.to_netcdf(path)`` writes one file that ``az.from_netcdf(path)`` reads
back. ArviZ is imported lazily: the core package runs without it (e.g. on GPU machines that lack it).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from bayeskit.errors import DataError

__all__ = ["to_datatree", "one_chain", "one_run", "equal_weight_draws", "ess", "summary"]

# groups whose arrays have leading (chain, draw) axes
SAMPLE_GROUPS = ("posterior", "posterior_predictive", "prior", "prior_predictive", "sample_stats", "log_likelihood")


def one_chain(variables: Mapping[str, Any]) -> dict:
    """Add a leading ``chain`` axis of length 1 to each array: draws ``(D, ...)`` -> ``(1, D, ...)``."""
    return {k: np.asarray(v)[None] for k, v in variables.items()}


def one_run(variables: Mapping[str, Any]) -> dict:
    """Add leading ``(chain, draw)`` axes of length 1: one SMC run (or one point estimate) as one draw."""
    return {k: np.asarray(v)[None, None] for k, v in variables.items()}


def equal_weight_draws(particles, log_weights) -> np.ndarray:
    """Weighted particles as equally weighted draws, deterministically (systematic resampling at the
    midpoints ``(i + 1/2) / N``: particle ``i`` appears ``floor(N W_i)`` or ``ceil(N W_i)`` times).

    Args:
        particles: ``(N, ...)`` particles, or ``(T, N, ...)`` particles at each of ``T`` steps.
        log_weights: unnormalised log-weights, ``(N,)`` or ``(T, N)`` matching ``particles``.

    Returns:
        ``(N, ...)`` draws, or ``(N, T, ...)`` (draws first, as ArviZ's ``draw`` axis) for ``(T, N, ...)``
        input; at each step, draws are ordered by particle index.
    """
    x = np.asarray(particles)
    lw = np.asarray(log_weights, dtype=float)
    single = lw.ndim == 1
    if single:
        x, lw = x[None], lw[None]
    if lw.ndim != 2 or x.shape[:2] != lw.shape:
        raise DataError(f"`log_weights` {np.shape(log_weights)} must match the leading axes of `particles` "
                        f"{np.shape(particles)}: (N,) or (T, N)")
    if not np.all(np.isfinite(lw.max(axis=-1))):
        raise DataError("`log_weights` must have a finite maximum at every step (some weight positive, no NaN)")
    n = lw.shape[-1]
    w = np.exp(lw - lw.max(axis=-1, keepdims=True))
    cw = np.cumsum(w / w.sum(axis=-1, keepdims=True), axis=-1)
    u = (np.arange(n) + 0.5) / n
    idx = np.minimum(np.stack([np.searchsorted(c, u) for c in cw]), n - 1)  # (T, N)
    draws = np.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)
    return draws[0] if single else np.moveaxis(draws, 1, 0)


def _array(value) -> np.ndarray:
    arr = np.asarray(value)
    return arr.astype(np.int8) if arr.dtype == bool else arr


def _dataset(variables: Mapping[str, Any], dims: Mapping[str, list[str]], coords: Mapping[str, Any]):
    import xarray as xr

    data_vars = {}
    for name, value in variables.items():
        arr = _array(value)
        var_dims = list(dims.get(name, []))
        extra = arr.ndim - len(var_dims)
        if extra < 0:
            raise DataError(f"variable {name!r} has shape {arr.shape}, fewer axes than dims {var_dims}")
        var_dims += [f"{name}_dim_{i}" for i in range(extra)]
        data_vars[name] = (var_dims, arr)
    used = {d for _, (vd, _) in data_vars.items() for d in vd}
    ds_coords = {k: np.asarray(v) for k, v in coords.items() if k in used}
    return xr.Dataset(data_vars, coords=ds_coords)


def _attr(value):
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, float, str, np.integer, np.floating)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, np.number)) for v in value):
        return np.asarray(value)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value)


def to_datatree(groups: Mapping[str, Mapping[str, Any]], *, dims: Mapping[str, list[str]] | None = None,
                coords: Mapping[str, Any] | None = None, attrs: Mapping[str, Any] | None = None):
    """Assemble a result's ArviZ ``DataTree`` from ``{group: {variable: array}}`` and declared dims.

    Variables in the sample groups (``posterior``, ``sample_stats``, ``log_likelihood``, ...) must have
    leading ``(chain, draw)`` axes (see :func:`one_chain`, :func:`one_run`); other groups are stored as
    given. ``dims`` names the remaining axes of each variable; a key ``"group/variable"`` overrides
    ``"variable"`` in that group (for a name used with different dims in two groups). ``coords`` gives
    coordinate values. Empty groups are dropped; ``None`` attributes are dropped, booleans become ints.

    Args:
        groups: ``{group name: {variable name: array}}``; must include a non-empty ``posterior``.
        dims: dim names of each variable's axes after any ``(chain, draw)``.
        coords: coordinate values by dim name.
        attrs: root attributes (method, settings, ``log_evidence``, ...).

    Returns:
        An :class:`xarray.DataTree` with one child per non-empty group.

    Raises:
        DataError: no ``posterior`` group (every result must have one), or a variable with fewer axes
            than its declared dims.

    Example:
        >>> import numpy as np
        >>> dt = to_datatree({"posterior": {"mu": np.zeros((2, 10))},
        ...                   "observed_data": {"y": np.ones(5)}}, dims={"y": ["time"]})
        >>> sorted(dt.children)
        ['observed_data', 'posterior']
    """
    import arviz as az
    import xarray as xr

    dims = dict(dims or {})
    coords = dict(coords or {})
    if not groups.get("posterior"):
        raise DataError("a result's DataTree needs a non-empty 'posterior' group (docs: ArviZ output)")
    tree = xr.DataTree()
    for g, variables in groups.items():
        if not variables:
            continue
        gdims = {k: dims.get(f"{g}/{k}", dims.get(k, [])) for k in variables}
        if g in SAMPLE_GROUPS:
            sub = az.from_dict({g: {k: _array(v) for k, v in variables.items()}}, dims=gdims, coords=coords)
            tree[g] = sub[g]
        else:
            tree[g] = xr.DataTree(_dataset(variables, gdims, coords))
    if attrs:
        tree.attrs.update({k: _attr(v) for k, v in attrs.items() if v is not None})
    tree.attrs.setdefault("inference_library", "bayeskit")
    return tree


def ess(log_weights) -> np.ndarray:
    """Effective sample size ``1 / sum(W_i^2)`` of (unnormalised) log-weights along the last axis."""
    lw = np.asarray(log_weights, dtype=float)
    lw = lw - lw.max(axis=-1, keepdims=True)
    w = np.exp(lw)
    w /= w.sum(axis=-1, keepdims=True)
    return 1.0 / np.sum(w**2, axis=-1)


def summary(tree, group: str = "posterior", **kwargs):
    """ArviZ summary table (means, sds, ESS, R-hat) of a group of a result's DataTree."""
    import arviz as az

    return az.summary(tree, group=group, **kwargs)

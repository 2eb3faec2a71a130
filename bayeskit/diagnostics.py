"""Results to ArviZ: every backend's ``Result.to_arviz()`` goes through here.

ArviZ 1.x represents inference results as an :class:`xarray.DataTree` whose children are groups
(``posterior``, ``sample_stats``, ``observed_data``, ...). Groups that hold posterior draws are built
with :func:`arviz.from_dict` (so they carry ``chain``/``draw`` dims and ArviZ's attributes); groups
with other leading axes (a particle filter's ``time`` x ``particle`` cloud, a learning history) are
plain datasets with named dims. ArviZ is imported lazily: the core package runs without it (e.g. on
GPU machines that lack it).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

__all__ = ["to_datatree", "save_datatree", "ess", "summary"]

# groups whose arrays have leading (chain, draw) axes
SAMPLE_GROUPS = ("posterior", "posterior_predictive", "prior", "prior_predictive", "sample_stats", "log_likelihood")


def _dataset(variables: Mapping[str, Any], dims: Mapping[str, list[str]], coords: Mapping[str, Any],
             leading: tuple[str, ...] = ()):
    import xarray as xr

    data_vars = {}
    for name, value in variables.items():
        arr = np.asarray(value)
        var_dims = list(leading) + list(dims.get(name, []))
        extra = arr.ndim - len(var_dims)
        if extra < 0:
            raise ValueError(f"variable {name!r} has shape {arr.shape}, fewer axes than dims {var_dims}")
        var_dims += [f"{name}_dim_{i}" for i in range(extra)]
        data_vars[name] = (var_dims, arr)
    used = {d for _, (vd, _) in data_vars.items() for d in vd}
    ds_coords = {k: np.asarray(v) for k, v in coords.items() if k in used}
    return xr.Dataset(data_vars, coords=ds_coords)


def to_datatree(groups: Mapping[str, Mapping[str, Any]], *, dims: Mapping[str, list[str]] | None = None,
                coords: Mapping[str, Any] | None = None, attrs: Mapping[str, Any] | None = None,
                sample_groups: tuple[str, ...] = SAMPLE_GROUPS):
    """Assemble an ArviZ ``DataTree`` from ``{group: {variable: array}}``.

    Variables in the sample groups (``posterior``, ``sample_stats``, ...) must have leading
    ``(chain, draw)`` axes; ``dims`` names the remaining axes of each variable, ``coords`` gives
    coordinate values. Other groups are stored with the dims given, without sample axes. Pass
    ``sample_groups=()`` for results that are not posterior draws (e.g. a filter's ``sample_stats``
    indexed by ``time``).

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
    sample = {g: dict(v) for g, v in groups.items() if g in sample_groups and v}
    other = {g: dict(v) for g, v in groups.items() if g not in sample_groups and v}
    if sample:
        tree = az.from_dict({g: {k: np.asarray(x) for k, x in v.items()} for g, v in sample.items()},
                            dims=dims, coords=coords)
    else:
        tree = xr.DataTree()
    for g, variables in other.items():
        tree[g] = xr.DataTree(_dataset(variables, dims, coords))
    if attrs:
        tree.attrs.update({k: v for k, v in attrs.items() if v is not None})
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


def save_datatree(tree, folder) -> list[str]:
    """Write each group of a result's DataTree to ``folder/<group>.nc`` (netCDF via SciPy, no extra
    dependency; booleans stored as int8) and the root attributes to ``folder/attrs.json``.
    Returns the written paths. Read a group back with ``xarray.open_dataset(path)``."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, node in tree.children.items():
        ds = node.to_dataset()
        for var in list(ds.data_vars) + list(ds.coords):
            if ds[var].dtype == bool:
                ds[var] = ds[var].astype("int8")
        ds.attrs = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in ds.attrs.items()}
        path = folder / f"{name}.nc"
        ds.to_netcdf(path, engine="scipy")
        paths.append(str(path))
    attrs_path = folder / "attrs.json"
    attrs_path.write_text(json.dumps({k: (v if isinstance(v, (int, float, str)) else str(v))
                                      for k, v in tree.attrs.items()}, indent=2))
    paths.append(str(attrs_path))
    return paths

"""Plots that ArviZ does not have, for results over time (``bk.plots``).

* :func:`states`: a state coordinate over ``time`` with posterior bands, for filtering and smoothing
  results side by side, and the true states when they are known;
* :func:`smc_diagnostics`: the effective sample size per step with the resampling steps marked, and the
  log-evidence increments.

* :func:`save`: write a figure to a file, and show it inline when running in a Jupyter notebook.

The first two take a result (anything with ``to_arviz()``) or its ArviZ ``DataTree`` laid out as in the docs page
"ArviZ output", label their axes, and return the matplotlib ``Figure``. matplotlib is imported lazily.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from bayeskit.errors import ConfigurationError, DataError

__all__ = ["states", "smc_diagnostics", "save"]


def _tree(result):
    if hasattr(result, "to_arviz"):
        return result.to_arviz()
    if hasattr(result, "children"):
        return result
    raise DataError(f"expected a bayeskit result or its ArviZ DataTree, got {type(result).__name__}")


def _axes(ax, nrows=1):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, axes = plt.subplots(nrows, 1, figsize=(8, 3 + 1.5 * nrows), sharex=True, constrained_layout=True)
    return fig, axes


def _band(tree, var: str, state: int, prob: float):
    """(time coords, centre, lower, upper, kind) of ``var``'s marginals over time."""
    if "posterior" in tree.children and var in tree["posterior"].data_vars:
        da = tree["posterior"][var]
        if "time" not in da.dims:
            raise DataError(f"posterior variable {var!r} has no 'time' dim (dims {da.dims}); was the result "
                            "run with its history/paths kept?")
        da = da.transpose("chain", "draw", "time", ...)
        x = np.asarray(da.values, dtype=float).reshape(da.sizes["chain"] * da.sizes["draw"], da.sizes["time"], -1)
        _check_state(state, x.shape[-1])
        x = x[..., state]
        q = (1.0 - prob) / 2
        return (np.asarray(da["time"].values), np.mean(x, axis=0), np.quantile(x, q, axis=0),
                np.quantile(x, 1 - q, axis=0), "quantiles")
    if "filtering" in tree.children:  # a filter run without history: Gaussian band from the moments
        from scipy.stats import norm

        f = tree["filtering"]
        t = np.asarray(f["time"].values)
        m = np.asarray(f["filter_mean"].values, dtype=float).reshape(t.size, -1)
        v = np.asarray(f["filter_var"].values, dtype=float).reshape(t.size, -1)
        _check_state(state, m.shape[-1])
        z = norm.ppf(0.5 + prob / 2)
        s = np.sqrt(v[:, state])
        return t, m[:, state], m[:, state] - z * s, m[:, state] + z * s, "mean ± z sd"
    raise DataError(f"the result has no posterior variable {var!r} over time and no 'filtering' group")


def _check_state(state, size):
    if not isinstance(state, (int, np.integer)) or not 0 <= state < size:
        raise ConfigurationError(f"`state` must be an integer in [0, {size}), got {state!r}")


def states(results: Any, *, labels: Sequence[str] | None = None, truth=None, var: str = "x", state: int = 0,
           prob: float = 0.9, ax=None, title: str | None = None):
    """Marginals of one state coordinate over time: mean and a central ``prob`` band per result.

    Filtering results (``bk.smc.particle_filter``; with ``history=True`` the resampled particles, else
    the Gaussian band of the filtering moments) and smoothing results (``ffbs``, ``particle_gibbs``,
    ``ppg`` with ``keep_paths=True``, ...) can share the axes.

    Args:
        results: a result or DataTree, or a sequence of them (drawn in order).
        labels: one legend label per result (default ``"result 0"``, ...).
        truth: the true states, ``(T,)`` or ``(T, ...)`` (coordinate ``state`` of the flattened trailing
            axes is drawn), or None.
        var: the posterior variable over ``time``.
        state: index of the state coordinate (flattened trailing axes).
        prob: band probability in (0, 1).
        ax: a matplotlib ``Axes`` to draw on (default: a new figure).
        title: axes title (default: none).

    Returns:
        The matplotlib ``Figure``.

    Example:
        >>> import jax, bayeskit as bk
        >>> from bayeskit.models import linear_gaussian as lg
        >>> params = lg.example_params(1)
        >>> xs, ys = lg.ssm.simulate(jax.random.key(0), params, 20)
        >>> pf = bk.smc.particle_filter(jax.random.key(1), lg.ssm, params, ys, 100, history=True)
        >>> fig = bk.plots.states(pf, labels=["filter"], truth=xs)
    """
    if not 0.0 < float(prob) < 1.0:
        raise ConfigurationError(f"`prob` must be in (0, 1), got {prob!r}")
    seq = list(results) if isinstance(results, (list, tuple)) else [results]
    if labels is not None and len(labels) != len(seq):
        raise ConfigurationError(f"`labels` must have one entry per result ({len(seq)}), got {len(labels)}")
    labels = list(labels) if labels is not None else [f"result {i}" for i in range(len(seq))]
    fig, ax = _axes(ax)
    pct = int(round(100 * prob))
    for i, (res, label) in enumerate(zip(seq, labels)):
        t, centre, lo, hi, _ = _band(_tree(res), var, state, prob)
        colour = f"C{i}"
        ax.fill_between(t, lo, hi, color=colour, alpha=0.25, lw=0, label=f"{label}: {pct}% band")
        ax.plot(t, centre, color=colour, lw=1.5, label=f"{label}: mean")
    if truth is not None:
        x = np.asarray(truth, dtype=float)
        x = x.reshape(x.shape[0], -1)
        _check_state(state, x.shape[-1])
        ax.plot(np.arange(x.shape[0]), x[:, state], ".", ms=3, color="k", label="true state")
    ax.set_xlabel("time step")
    ax.set_ylabel(f"{var}[{state}]")
    if title:
        ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    return fig


def smc_diagnostics(result: Any, *, axes=None, title: str | None = None):
    """Effective sample size per step (as a fraction of N when the result records N) with the resampling
    steps marked, and the log-evidence increments when the result has them.

    Args:
        result: an SMC result (particle filter, PaRIS, FFBS, tempered SMC, FKC, inference-time scaling)
            or its DataTree: ``sample_stats`` with ``ess`` over a step dim (``time``, ``tempering_step``
            or ``step``).
        axes: two matplotlib ``Axes`` (ESS, increments) to draw on (default: a new figure).
        title: figure title (default: none).

    Returns:
        The matplotlib ``Figure``.
    """
    tree = _tree(result)
    if "sample_stats" not in tree.children or "ess" not in tree["sample_stats"].data_vars:
        raise DataError("the result has no per-step 'ess' in sample_stats (not an SMC result?)")
    stats = tree["sample_stats"]
    ess = stats["ess"]
    step_dims = [d for d in ess.dims if d not in ("chain", "draw")]
    if len(step_dims) != 1 or ess.sizes["chain"] * ess.sizes["draw"] != 1:
        raise DataError(f"expected the ESS of one SMC run over one step dim, got dims {ess.dims}")
    step = step_dims[0]
    t = np.asarray(ess[step].values)
    n = tree.attrs.get("num_particles")
    e = np.asarray(ess.values, dtype=float).ravel()
    fig, axes = _axes(None, nrows=2) if axes is None else (axes[0].figure, axes)
    a0, a1 = axes
    a0.plot(t, e / n if n else e, color="C0", lw=1.2, label="ESS / N" if n else "ESS")
    if "resampled" in stats.data_vars:
        r = np.asarray(stats["resampled"].values).ravel().astype(bool)
        top = 1.0 if n else e.max()
        a0.plot(t[r], np.full(r.sum(), top), "|", color="C3", ms=8, label="resampled")
    a0.set_ylabel("ESS / N" if n else "ESS")
    a0.legend(loc="lower left", fontsize=8)
    if "log_evidence_increment" in stats.data_vars:
        inc = np.asarray(stats["log_evidence_increment"].values, dtype=float).ravel()
        a1.plot(t, inc, color="C2", lw=1.2)
        a1.set_ylabel("log-evidence increment")
    else:
        a1.set_visible(False)
    (a1 if a1.get_visible() else a0).set_xlabel("time step" if step == "time" else step.replace("_", " "))
    if title:
        fig.suptitle(title)
    return fig


def save(fig, path, *, dpi: int = 120) -> None:
    """Write ``fig`` to ``path``; in a Jupyter notebook also show it inline; then close it.

    The examples end every figure with this, so the same script writes PNGs when run from the command
    line and shows its figures when run as a notebook (where a closed figure would not be shown).

    Args:
        fig: a matplotlib ``Figure``.
        path: the output file (its suffix picks the format).
        dpi: resolution of raster formats.
    """
    import matplotlib.pyplot as plt

    from bayeskit.cli import in_notebook

    fig.savefig(path, dpi=dpi)
    if in_notebook():  # as a PNG, whatever the backend (the examples select Agg for scripts)
        import io

        from IPython.display import Image, display

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        display(Image(data=buf.getvalue()))
    plt.close(fig)

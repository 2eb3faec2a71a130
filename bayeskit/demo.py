"""``bayeskit demo``: a short end-to-end job on built-in simulated data.

1. A 2-D linear-Gaussian state-space model: particle-filter log-likelihood (several independent runs,
   mean and spread) beside the exact Kalman log-likelihood, and filtering means against Kalman's.
2. The stochastic-volatility model: filtered log-volatility with 90% bands.
Writes a PNG of the filtered states with bands (``bk.plots.states``) and the SV filter's ESS and
resampling steps (``bk.plots.smc_diagnostics``), and each result's ArviZ DataTree as one netCDF file
(``result.to_arviz().to_netcdf(path)``; read back with ``arviz.from_netcdf(path)``) to the output folder,
and prints a table.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def run_demo(outdir: str = "bayeskit-output/demo", num_particles: int = 2000, num_runs: int = 20,
             seed: int = 0, progress_bar: bool = False) -> dict:
    """Run the demo (see the module docstring) and return its table rows and output paths.

    Args:
        outdir: folder for the PNG and the netCDF files.
        num_particles: particles per filter.
        num_runs: independent filter runs for the log-likelihood spread.
        seed: the seed of every key.
        progress_bar: show tqdm bars of the stages and the repeated runs (``bayeskit demo`` shows them
            unless ``--no-progress``).

    Returns:
        A dict: the exact Kalman log-likelihood, the filters' mean log-likelihood and the SV band coverage.
    """
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tqdm.auto import tqdm

    import bayeskit as bk
    from bayeskit.models import linear_gaussian as lg
    from bayeskit.models import stochastic_volatility as sv

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(seed)
    k_sim, k_pf, k_sv_sim, k_sv = jax.random.split(key, 4)
    rows = []

    stages = tqdm(total=4, desc="bayeskit demo", unit="stage", disable=not progress_bar)
    # --- linear Gaussian: exact answer available
    params = lg.example_params(2, rho=0.9, sigma_x=0.5, sigma_y=0.7)
    xs, ys = lg.ssm.simulate(k_sim, params, 200)
    kf = lg.kalman_filter(params, ys)
    stages.update(1)
    t0 = time.perf_counter()
    pf = bk.smc.particle_filter(k_pf, lg.ssm, params, ys, num_particles)
    jax.block_until_ready(pf.log_evidence)
    first = time.perf_counter() - t0
    logzs = []
    t0 = time.perf_counter()
    for k in tqdm(jax.random.split(k_pf, num_runs), desc="repeated filters", leave=False,
                  disable=not progress_bar):
        logzs.append(float(bk.smc.particle_filter(k, lg.ssm, params, ys, num_particles).log_evidence))
    per_run = (time.perf_counter() - t0) / num_runs
    logzs = np.array(logzs)
    err = np.abs(np.asarray(pf.filter_mean) - np.asarray(kf.means)).max()
    rows.append(("linear-Gaussian (d=2, T=200)", "Kalman log-lik (exact)", f"{float(kf.log_likelihood):.3f}"))
    rows.append(("", f"PF log-lik, {num_runs} runs mean ± sd", f"{logzs.mean():.3f} ± {logzs.std(ddof=1):.3f}"))
    rows.append(("", "max |PF mean - Kalman mean|", f"{err:.3f}"))
    rows.append(("", "time per filter (compile / run)", f"{first:.2f} s / {per_run * 1e3:.1f} ms"))
    pf_tree = pf.to_arviz()
    pf_tree.to_netcdf(out / "linear_gaussian.nc")
    stages.update(1)

    # --- stochastic volatility
    sp = sv.example_params()
    vol, rets = sv.ssm.simulate(k_sv_sim, sp, 300)
    pfs = bk.smc.particle_filter(k_sv, sv.ssm, sp, rets, num_particles, history=True)
    sv_tree = pfs.to_arviz()
    draws = sv_tree["posterior"]["x"].values[0]  # (N, T): the filtering marginals as equally weighted draws
    lo, hi = np.quantile(draws, 0.05, axis=0), np.quantile(draws, 0.95, axis=0)
    cover = np.mean((np.asarray(vol) >= lo) & (np.asarray(vol) <= hi))
    rows.append(("stochastic volatility (T=300)", "PF log-lik", f"{float(pfs.log_evidence):.3f}"))
    rows.append(("", "true x_t inside 90% filter band", f"{100 * cover:.0f}%"))
    rows.append(("", "mean ESS / N", f"{float(np.mean(pfs.ess)) / num_particles:.2f}"))
    sv_tree.to_netcdf(out / "stochastic_volatility.nc")
    stages.update(1)

    # --- figure
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), constrained_layout=True)
    bk.plots.states(pf_tree, labels=["particle filter"], truth=xs, ax=axes[0],
                    title="Linear-Gaussian model, first state coordinate")
    axes[0].plot(np.arange(ys.shape[0]), np.asarray(kf.means[:, 0]), "k--", lw=1, label="Kalman mean (exact)")
    axes[0].legend(loc="upper right", fontsize=8)
    bk.plots.states(sv_tree, labels=["particle filter"], truth=vol, ax=axes[1],
                    title="Stochastic volatility: filtered log-volatility")
    bk.plots.smc_diagnostics(sv_tree, axes=axes[2:])
    axes[2].set_title("Stochastic volatility filter: ESS and resampling steps")
    fig.savefig(out / "filtered_states.png", dpi=120)
    plt.close(fig)
    stages.update(1)
    stages.close()

    width = max(len(r[1]) for r in rows)
    print(f"\nbayeskit {bk.__version__} demo  (N = {num_particles} particles, JAX {jax.__version__}, "
          f"{jax.devices()[0].platform})")
    print("-" * (34 + width + 24))
    for a, b, c in rows:
        print(f"{a:<34}{b:<{width + 2}}{c}")
    print("-" * (34 + width + 24))
    print(f"wrote {out / 'filtered_states.png'} and the ArviZ DataTrees {out}/linear_gaussian.nc, "
          f"{out}/stochastic_volatility.nc (arviz.from_netcdf reads them)")
    return {"kalman": float(kf.log_likelihood), "pf_mean": float(logzs.mean()), "sv_cover": float(cover)}


# %% [markdown]
# # NIW-Meta: hierarchical Bayesian few-shot learning
#
# Reproduces, at laptop scale, the regression and classification experiments of Kim & Hospedales,
# "A Hierarchical Bayesian Model for Few-Shot Meta Learning" (ICLR 2024):
#
# 1. **Sine regression** (A ~ U[0.1, 5], phase ~ U[0, π], x ~ U[-5, 5]; K = 5 and 10 shots), a
#    1-40-40-1 MLP: query MSE, Gaussian NLL and calibration (interval-coverage error) of NIW-Meta
#    against no adaptation (pooled fit), fine-tuning and MAML, all with the same number of training
#    episodes; and the learned prior (per-layer prior standard deviations of θ).
# 2. **Few-shot classification on fixed features** generated here (5-way, K = 1 and 5 shots; 16-d
#    features of which only 4 carry class information): a linear softmax head per episode.
#
# Run: `python examples/niw_meta.py --outdir out [--quick]` (or `bayeskit reproduce niw`).

# %%
from __future__ import annotations

import argparse
import json
import os
import time

# XLA's backend optimisation level 1 compiles these small programs in about half the default's time at
# the same run time (see tests/conftest.py); most of a --quick run is compilation. Read when JAX first
# computes, so it applies under `bayeskit reproduce niw` too; set XLA_FLAGS yourself to override.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import bayeskit as bk  # noqa: E402
from bayeskit.cli import parse_example_args  # noqa: E402

M = bk.meta
B = bk.testing.meta_baselines

# %% sine tasks


def sample_sine(key, batch_size, num_points):
    ka, kp, kx = jax.random.split(key, 3)
    amp = jax.random.uniform(ka, (batch_size, 1), minval=0.1, maxval=5.0)
    phase = jax.random.uniform(kp, (batch_size, 1), minval=0.0, maxval=jnp.pi)
    x = jax.random.uniform(kx, (batch_size, num_points), minval=-5.0, maxval=5.0)
    return x[..., None], amp * jnp.sin(x - phase)


def init_mlp(key, sizes=(1, 40, 40, 1)):
    params = []
    for k, (m, n) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        params.append((jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / m), jnp.zeros(n)))
    return params


def mlp(params, x):
    h = x
    for w, b in params[:-1]:
        h = jax.nn.relu(h @ w + b)
    w, b = params[-1]
    return (h @ w + b)[..., 0]


def mse_loss(model):
    return lambda th, x, y: jnp.mean((model.predict_fn(th, x) - y) ** 2)


# %% metrics


LEVELS = np.linspace(0.1, 0.9, 9)


def regression_metrics(mean, log_density, interval, y):
    """MSE, NLL, 90% coverage and calibration error = mean |coverage - level| of central intervals.

    ``log_density`` (episodes, query) is the predictive log density of y; ``interval(level) -> (lo, hi)``.
    """
    mean, y = np.asarray(mean, dtype=float), np.asarray(y, dtype=float)
    per_task = ((mean - y) ** 2).reshape(y.shape[0], -1).mean(-1)
    cover = []
    for lv in LEVELS:
        lo, hi = interval(lv)
        cover.append(((y >= lo) & (y <= hi)).mean())
    cover = np.array(cover)
    return dict(mse=per_task.mean(), mse_se=per_task.std() / np.sqrt(len(per_task)),
                nll=-np.mean(np.asarray(log_density)), cover90=cover[-1],
                calib=np.abs(cover - LEVELS).mean()), (LEVELS, cover)


def gaussian_metrics(mean, std, y):
    """:func:`regression_metrics` of a Gaussian predictive N(mean, std²)."""
    from scipy.stats import norm

    mean, std = np.asarray(mean, dtype=float), np.asarray(std, dtype=float)
    half = lambda lv: norm.ppf(0.5 + lv / 2) * std  # noqa: E731
    return regression_metrics(mean, norm.logpdf(np.asarray(y, float), mean, std),
                              lambda lv: (mean - half(lv), mean + half(lv)), y)


def niw_metrics(pred, y):
    """:func:`regression_metrics` of a NIW-Meta prediction (exact Student-t density and intervals)."""
    return regression_metrics(pred.mean, pred.log_predictive_density, pred.interval, y)


def class_metrics(probs, y, num_bins=10):
    probs, y = np.asarray(probs, float), np.asarray(y)
    pred = probs.argmax(-1)
    acc_task = (pred == y).reshape(y.shape[0], -1).mean(-1)
    nll = -np.log(np.take_along_axis(probs, y[..., None], -1)[..., 0] + 1e-12).mean()
    conf = probs.max(-1).ravel()
    correct = (pred == y).ravel()
    bins = np.minimum((conf * num_bins).astype(int), num_bins - 1)
    ece = sum(abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean()
              for b in range(num_bins) if np.any(bins == b))
    return dict(acc=acc_task.mean(), acc_se=acc_task.std() / np.sqrt(len(acc_task)), nll=nll, ece=ece)


# %% sine experiment


def sine_experiment(key, shots, args, outdir):
    num_steps, batch = args.steps, args.batch
    noise = 0.5
    k_init, k_niw, k_maml, k_pool, k_test, k_val, k_pred = jax.random.split(key, 7)
    model = M.EpisodeModel.from_network(mlp, init_mlp(k_init), likelihood="normal", noise_scale=noise)
    loss = mse_loss(model)

    def train_sampler(k, b):  # training episodes: K support + K query points
        return sample_sine(k, b, 2 * shots)

    t0 = time.perf_counter()
    niw = M.NIWMeta(model, covariance="diag", local_approximation="sgld", inner_step_size=args.eta,
                    sgld_temperature=0.01, num_burnin=2, num_sgld_samples=3, max_grad_norm=1000.0,
                    optimizer=optax.adam(1e-2), batch_size=batch,
                    num_iterations=num_steps, chunk_size=max(1, num_steps // 10), init_prior_std=1.0,
                    progress_bar=args.progress_bar)
    niw_fit = niw.fit(k_niw, train_sampler)
    t_niw = time.perf_counter() - t0
    mamls = {}
    for lr in (1e-3, 1e-2):  # MAML at the usual outer rate and at NIW-Meta's
        t0 = time.perf_counter()
        mamls[lr] = B.maml(k_maml, model, train_sampler, num_support=shots, inner_steps=5, inner_learning_rate=0.01,
                           optimizer=optax.inject_hyperparams(optax.adam)(learning_rate=lr), batch_size=batch,
                           num_iterations=num_steps, loss_fn=loss,
                           max_grad_norm=50.0)
        t_maml = time.perf_counter() - t0
    maml = mamls[1e-3]
    pooled = B.pretrain(k_pool, model, train_sampler, num_iterations=num_steps, batch_size=batch,
                        optimizer=optax.adam(1e-3), loss_fn=loss)

    # test episodes: K support points, 50 query points
    sx, sy = sample_sine(k_test, args.test_tasks, shots + 50)
    support, (qx, qy) = (sx[:, :shots], sy[:, :shots]), (sx[:, shots:], sy[:, shots:])
    vx, vy = sample_sine(k_val, 100, shots + 50)
    vsup, (vqx, vqy) = (vx[:, :shots], vy[:, :shots]), (vx[:, shots:], vy[:, shots:])

    def fitted_std(pred_fn):  # baselines' noise level fitted on validation episodes (fair calibration)
        return float(np.sqrt(np.mean((np.asarray(pred_fn(vsup, vqx)) - np.asarray(vqy)) ** 2)))

    rows, curves = {}, {}
    preds = {
        "no adaptation": lambda s, q: pooled.predict(q),
        "fine-tuning": lambda s, q: jax.vmap(model.predict_fn)(
            B.fine_tune(pooled.theta, model, s, num_iterations=10, learning_rate=0.01, loss_fn=loss, max_grad_norm=50.0), q),
        "MAML (lr 1e-3)": mamls[1e-3].predict,
        "MAML (lr 1e-2)": mamls[1e-2].predict,
    }
    for name, fn in preds.items():
        mean = fn(support, qx)
        std = np.full(np.shape(mean), fitted_std(fn))
        rows[name], curves[name] = gaussian_metrics(mean, std, qy)
    pred = niw_fit.predict(k_pred, support, (qx, qy), num_samples=args.samples)
    rows["NIW-Meta"], curves["NIW-Meta"] = niw_metrics(pred, qy)
    rows["NIW-Meta"]["train_s"], rows["MAML (lr 1e-2)"]["train_s"] = t_niw, t_maml
    plots = dict(support=support, qx=qx, qy=qy, niw=pred, maml=maml.predict(support, qx),
                 pooled=pooled.predict(qx), fit=niw_fit)
    return rows, curves, plots


# %% classification on fixed features


def make_feature_bank(key, num_classes=40, dim=16, informative=4):
    """Class prototypes: only the first `informative` feature dims carry class information."""
    k1, _ = jax.random.split(key)
    protos = jax.random.normal(k1, (num_classes, informative)) * 1.5
    return protos, dim, informative


def sample_classification(key, bank, batch_size, ways, shots_per_class):
    protos, dim, inf = bank
    kc, kn, kz, kp = jax.random.split(key, 4)
    classes = jax.vmap(lambda k: jax.random.choice(k, protos.shape[0], (ways,), replace=False))(
        jax.random.split(kc, batch_size))
    labels = jnp.tile(jnp.arange(ways), shots_per_class)  # (ways * shots,)
    n = labels.shape[0]
    centre = protos[classes][:, labels]  # (B, n, informative)
    signal = centre + 0.8 * jax.random.normal(kn, (batch_size, n, inf))
    clutter = 3.0 * jax.random.normal(kz, (batch_size, n, dim - inf))
    x = jnp.concatenate([signal, clutter], -1)
    perm = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(kp, batch_size))
    x = jnp.take_along_axis(x, perm[..., None], 1)
    y = jnp.take_along_axis(jnp.broadcast_to(labels, (batch_size, n)), perm, 1)
    return x, y


def classification_experiment(key, shots, args):
    ways, dim = 5, 16
    k_bank, k_niw, k_maml, k_test, k_pred = jax.random.split(key, 5)
    bank = make_feature_bank(k_bank, dim=dim)
    head0 = (jnp.zeros((dim, ways)), jnp.zeros(ways))
    model = M.EpisodeModel.from_network(lambda p, x: x @ p[0] + p[1], head0, likelihood="categorical")

    def sampler(k, b):  # training episodes: shots + 5 query points per class
        return sample_classification(k, bank, b, ways, shots + 5)

    steps = max(50, args.steps // 2)
    niw = M.NIWMeta(model, covariance="diag", local_approximation="laplace", num_inner_iterations=5,
                    inner_step_size=0.05, optimizer=optax.adam(3e-2), batch_size=args.batch, num_iterations=steps,
                    chunk_size=max(1, steps // 5), progress_bar=args.progress_bar)
    niw_fit = niw.fit(k_niw, sampler)
    maml = B.maml(k_maml, model, sampler, num_support=ways * shots, inner_steps=5, inner_learning_rate=0.1,
                  optimizer=optax.adam(1e-2), batch_size=args.batch, num_iterations=steps)
    x, y = sample_classification(k_test, bank, args.test_tasks, ways, shots + 15)
    ns = ways * shots
    support, qx, qy = (x[:, :ns], y[:, :ns]), x[:, ns:], y[:, ns:]
    rows = {}
    uniform = jnp.full(qy.shape + (ways,), 1.0 / ways)
    rows["no adaptation"] = class_metrics(uniform, qy)
    ft = B.fine_tune(model.init_theta, model, support, num_iterations=20, learning_rate=0.1)
    rows["fine-tuning"] = class_metrics(jax.vmap(model.predict_fn)(ft, qx), qy)
    rows["MAML"] = class_metrics(maml.predict(support, qx), qy)
    pred = niw_fit.predict(k_pred, support, (qx, qy), num_samples=args.samples)
    rows["NIW-Meta"] = class_metrics(pred.mean, qy)
    prior_std = np.asarray(1.0 / np.sqrt(niw_fit.posterior.expected_precision))[: dim * ways].reshape(dim, ways)
    return rows, prior_std


# %% main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--outdir", default="out/niw_meta")
    parser.add_argument("--quick", action="store_true")
    a = parse_example_args(parser, argv)
    args = argparse.Namespace(steps=150 if a.quick else 1500, batch=8 if a.quick else 16,
                              test_tasks=40 if a.quick else 300, samples=16 if a.quick else 50, eta=2e-3,
                              progress_bar=a.progress_bar)
    os.makedirs(a.outdir, exist_ok=True)
    # JAX's persistent compilation cache: the second MAML (another learning rate, same program through
    # optax.inject_hyperparams) and the repeated adaptation calls reuse compiled programs, and a re-run skips
    # compilation (unless a cache is configured already, as in the test suite)
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(a.outdir, "jax-cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = jax.random.key(0)
    results, lines = {}, []
    lines.append(f"NIW-Meta few-shot experiments ({'quick' if a.quick else 'full'}: {args.steps} training steps x "
                 f"{args.batch} episodes per method, {args.test_tasks} test episodes)\n")
    lines.append("Sine regression (query MSE ± s.e., predictive NLL, coverage of 90% intervals, "
                 "calibration error = mean |coverage - level| over levels 0.1..0.9)")
    lines.append(f"{'K':>3} {'method':<15} {'MSE':>14} {'NLL':>8} {'cov90':>6} {'calib':>7}")
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for row, shots in enumerate((5, 10)):
        rows, curves, plots = sine_experiment(jax.random.fold_in(key, shots), shots, args, a.outdir)
        results[f"sine_K{shots}"] = rows
        for name, r in rows.items():
            lines.append(f"{shots:>3} {name:<15} {r['mse']:>7.3f} ± {r['mse_se']:<5.3f} {r['nll']:>8.3f} "
                         f"{r['cover90']:>6.3f} {r['calib']:>7.3f}")
        # figure: one test episode, predictive band
        i = 0
        order = np.argsort(np.asarray(plots["qx"][i, :, 0]))
        xq = np.asarray(plots["qx"][i, order, 0])
        ax = axes[row, 0]
        ax.plot(xq, np.asarray(plots["qy"][i, order]), "k-", label="truth")
        m, s = np.asarray(plots["niw"].mean[i, order]), np.asarray(plots["niw"].std[i, order])
        ax.plot(xq, m, "C0", label="NIW-Meta")
        ax.fill_between(xq, m - 2 * s, m + 2 * s, color="C0", alpha=0.2)
        ax.plot(xq, np.asarray(plots["maml"][i, order]), "C1--", label="MAML (lr 1e-3)")
        ax.plot(xq, np.asarray(plots["pooled"][i, order]), "C2:", label="no adaptation")
        ax.plot(np.asarray(plots["support"][0][i, :, 0]), np.asarray(plots["support"][1][i]), "ko", label="support")
        ax.set_title(f"sine, K={shots}")
        ax.legend(fontsize=7)
        ax = axes[row, 1]
        for name, (lv, cov) in curves.items():
            ax.plot(lv, cov, "o-", label=name, ms=3)
        ax.plot([0, 1], [0, 1], "k:")
        ax.set_xlabel("nominal level")
        ax.set_ylabel("empirical coverage")
        ax.set_title(f"calibration, K={shots}")
        ax.legend(fontsize=7)
        ax = axes[row, 2]
        fit = plots["fit"]
        prec = np.asarray(fit.posterior.expected_precision)
        sizes = [(1, 40), (40,), (40, 40), (40,), (40, 1), (1,)]
        names = ["W1", "b1", "W2", "b2", "W3", "b3"]
        start, stds = 0, []
        for sz in sizes:
            n = int(np.prod(sz))
            stds.append(1.0 / np.sqrt(prec[start:start + n]))
            start += n
        ax.boxplot(stds, tick_labels=names) if hasattr(ax, "boxplot") else None
        ax.set_yscale("log")
        ax.set_title(f"learned prior std of θ by layer, K={shots}")
    fig.tight_layout()
    bk.plots.save(fig, os.path.join(a.outdir, "niw_sine.png"), dpi=110)

    lines.append("\nFew-shot classification on fixed features (5-way; accuracy ± s.e., NLL, ECE)")
    lines.append(f"{'K':>3} {'method':<15} {'accuracy':>15} {'NLL':>8} {'ECE':>7}")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for j, shots in enumerate((1, 5)):
        rows, prior_std = classification_experiment(jax.random.fold_in(key, 100 + shots), shots, args)
        results[f"class_K{shots}"] = rows
        for name, r in rows.items():
            lines.append(f"{shots:>3} {name:<15} {r['acc']:>8.3f} ± {r['acc_se']:<5.3f} {r['nll']:>8.3f} {r['ece']:>7.3f}")
        im = axes[j].imshow(prior_std, aspect="auto", cmap="viridis")
        axes[j].set_title(f"learned prior std of head weights, K={shots}\n(rows 0-3 informative features)")
        axes[j].set_xlabel("class slot")
        axes[j].set_ylabel("feature")
        fig.colorbar(im, ax=axes[j])
    fig.tight_layout()
    bk.plots.save(fig, os.path.join(a.outdir, "niw_classification.png"), dpi=110)

    table = "\n".join(lines)
    print(table)
    with open(os.path.join(a.outdir, "niw_meta_table.txt"), "w") as fh:
        fh.write(table + "\n")
    with open(os.path.join(a.outdir, "niw_meta_results.json"), "w") as fh:
        json.dump({k: {m: {kk: float(v) for kk, v in r.items()} for m, r in rows.items()}
                   for k, rows in results.items()}, fh, indent=1)
    return results


if __name__ == "__main__":
    main()

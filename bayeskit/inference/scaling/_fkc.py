r"""Feynman–Kac correctors (FKC) for diffusion models: annealing, products of experts, guidance.

Skreta, Akhound-Sadegh, Ohanesian, Bondesan, Aspuru-Guzik, Doucet, Brekelmans, Tong & Neklyudov,
"Feynman-Kac Correctors in Diffusion: Annealing, Guidance, and Product of Experts" (ICML 2025).

**Setting.** Pretrained score models :math:`s_i(x, t) = \nabla \log q^i_t(x)` of the marginals
:math:`q^i_t` of a variance-exploding forward process :math:`\mathrm{d}x = g(t)\,\mathrm{d}W`,
:math:`t \in [0, 1]` (data at 0, noise at 1; :class:`VESDE`). We want samples from the geometric
combination

.. math:: p_0(x) \propto \prod_i q^i_0(x)^{\beta_i}

— annealing (:math:`q^\beta`, one expert), a product of experts (:math:`\beta = (1, 1)`) or
classifier-free guidance (:math:`q_{\text{u}}^{1-w} q_{\text{c}}^{w}`). The heuristic — run the
reverse SDE with the mixed score :math:`\sum_i \beta_i s_i` — does *not* sample :math:`p_0`, since
the mixture of diffused marginals is not the diffusion of the mixture.

**Correction.** Take the path :math:`\tilde p_t = \prod_i (q^i_t)^{\beta_i}` and simulate, in
generative time :math:`\tau = 1 - t`, the SDE
:math:`\mathrm{d}x = g^2 S\,\mathrm{d}\tau + g\,\mathrm{d}\bar W` with :math:`S = \sum_i \beta_i s_i`.
Matching its Fokker–Planck equation with :math:`\partial_\tau \tilde p_t` (using
:math:`\partial_\tau \log q_t = -\tfrac{g^2}{2}(\Delta \log q_t + \|\nabla \log q_t\|^2)` for the VE
process) leaves no Laplacian terms and a Feynman–Kac weight

.. math::
    \mathrm{d} \log w_\tau = \frac{g^2}{2}\Big(\big\|\textstyle\sum_i \beta_i s_i\big\|^2
        - \sum_i \beta_i \|s_i\|^2\Big)\,\mathrm{d}\tau ,

i.e. :math:`\tfrac{\beta(\beta-1)}{2} g^2 \|s\|^2` for annealing and :math:`g^2 \langle s_1, s_2\rangle`
for a product of two experts (the paper's target-score / product FKC weights). The weighted
particle system targets :math:`\tilde p_t` at every time; SMC resampling (the
:mod:`bayeskit.inference.smc` engine, Euler–Maruyama moves, log-potential = the weight increment)
keeps the weights healthy. With ``log_densities`` given, the initial draw from the Gaussian
approximation of :math:`\tilde p_1` is also weighted exactly.

Only score functions are needed (no divergences, no densities).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit._checks import check_in_interval, check_key, check_positive_int
from bayeskit.errors import ConfigurationError, DegenerateWeightsError
from bayeskit.inference.smc import engine
from bayeskit.inference.smc._feynman_kac import FeynmanKac
from bayeskit.inference.smc.resampling import adaptive, get_scheme
from bayeskit.progress import progress

__all__ = ["VESDE", "FKCResult", "fkc_feynman_kac", "fkc_sample"]


class VESDE(NamedTuple):
    r"""Variance-exploding forward SDE :math:`\mathrm{d}x = g(t)\mathrm{d}W` with
    :math:`\sigma(t) = \sigma_{\min} (\sigma_{\max}/\sigma_{\min})^t`: the added variance is
    :math:`v(t) = \sigma(t)^2 - \sigma_{\min}^2` and :math:`g^2(t) = 2 \log(\sigma_{\max}/\sigma_{\min})\sigma(t)^2`."""

    sigma_min: float = 0.01
    sigma_max: float = 20.0

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def variance(self, t):
        """Variance added to the data by time ``t``."""
        return self.sigma(t) ** 2 - self.sigma_min**2

    def g2(self, t):
        return 2.0 * jnp.log(self.sigma_max / self.sigma_min) * self.sigma(t) ** 2


@dataclass(frozen=True)
class FKCResult:
    """FKC samples: ``samples`` (N, d), normalised-weight log ``log_weights`` (N,), per-step ``ess``
    (K+1,), ``resampled`` (K+1,), ``log_evidence`` (estimate of :math:`\\log` of the ratio of
    normalisers of the final to the initial target; ``log_normalizer`` before this release, which still
    works with a FutureWarning), ``times`` (K+1,) diffusion times."""

    samples: np.ndarray
    log_weights: np.ndarray
    ess: np.ndarray
    resampled: np.ndarray
    log_evidence: float
    times: np.ndarray
    weighted: bool = True
    extras: dict = field(default_factory=dict, repr=False)

    @property
    def log_normalizer(self) -> float:
        warnings.warn("FKCResult.log_normalizer is renamed log_evidence (the glossary's name); the old name "
                      "goes in the next release", FutureWarning, stacklevel=2)
        return self.log_evidence

    @property
    def weights(self):
        w = np.exp(self.log_weights - np.max(self.log_weights))
        return w / w.sum()

    def mean(self):
        return self.weights @ self.samples

    def cov(self):
        d = self.samples - self.mean()
        return (self.weights[:, None] * d).T @ d

    def resample(self, key, num_samples=None):
        n = self.samples.shape[0] if num_samples is None else num_samples
        idx = jax.random.choice(key, self.samples.shape[0], (n,), p=jnp.asarray(self.weights))
        return self.samples[np.asarray(idx)]

    def to_arviz(self):
        """ArviZ DataTree (docs: ArviZ output): ``posterior`` (``x``: the weighted samples as N equally
        weighted draws), ``particles`` (the weighted samples), ``sample_stats`` (the run as one draw: ess,
        resampled, diffusion_time over ``step``, ``log_evidence``)."""
        from bayeskit.diagnostics import equal_weight_draws, one_chain, one_run, to_datatree

        return to_datatree({"posterior": one_chain({"x": equal_weight_draws(self.samples, self.log_weights)}),
                            "particles": {"x": self.samples, "log_weight": self.log_weights},
                            "sample_stats": one_run({"ess": self.ess, "resampled": self.resampled,
                                                     "diffusion_time": self.times,
                                                     "log_evidence": self.log_evidence})},
                           dims={"x": ["dim"], "particles/x": ["particle", "dim"], "log_weight": ["particle"],
                                 "ess": ["step"], "resampled": ["step"], "diffusion_time": ["step"]},
                           attrs={"log_evidence": float(self.log_evidence), "weighted": int(self.weighted)})


def fkc_feynman_kac(score_fns: Sequence[Callable], betas, sde: VESDE, num_steps: int, *, t_min=1e-3,
                    log_densities: Sequence[Callable] | None = None, dim: int = 2,
                    weighted: bool = True) -> tuple[FeynmanKac, jax.Array]:
    """The FKC Feynman–Kac model (pure; usable inside ``jit``). Returns ``(fk, times)``.

    Step 0 draws :math:`x \\sim N(0, \\sigma_{\\max}^2 / \\sum\\beta_i I)` (weighted by
    :math:`\\tilde p_1 / N` when ``log_densities`` are given); step k moves by Euler–Maruyama from
    diffusion time :math:`t_{k-1}` to :math:`t_k` with drift :math:`g^2 \\sum_i\\beta_i s_i` and
    weights by the FKC increment at :math:`(x_{k-1}, t_{k-1})`.
    """
    betas = jnp.asarray(betas, jnp.result_type(float))
    times = jnp.linspace(1.0, t_min, num_steps + 1)
    var0 = sde.sigma(1.0) ** 2 / jnp.sum(betas)

    def scores(x, t):
        return jnp.stack([f(x, t) for f in score_fns], 0)  # (E, N, d)

    def init(key, n):
        return jnp.sqrt(var0) * jax.random.normal(key, (n, dim))

    def move(key, k, x):
        t, h = times[k - 1], times[k - 1] - times[k]
        s = jnp.einsum("e,end->nd", betas, scores(x, t))
        g2 = sde.g2(t)
        return x + g2 * s * h + jnp.sqrt(g2 * h) * jax.random.normal(key, x.shape)

    def log_potential(k, prev, x):
        if prev is None:
            if log_densities is None or not weighted:
                return jnp.zeros(x.shape[0])
            lp = sum(b * f(x, times[0]) for b, f in zip(betas, log_densities))
            lq = -0.5 * jnp.sum(x**2, -1) / var0
            return lp - lq
        if not weighted:
            return jnp.zeros(x.shape[0])
        t, h = times[k - 1], times[k - 1] - times[k]
        s = scores(prev, t)
        mix = jnp.einsum("e,end->nd", betas, s)
        inc = jnp.sum(mix**2, -1) - jnp.einsum("e,en->n", betas, jnp.sum(s**2, -1))
        return 0.5 * sde.g2(t) * inc * h

    return FeynmanKac(num_steps + 1, init, move, log_potential), times


@partial(jax.jit, static_argnames=("score_fns", "log_densities", "num_steps", "dim", "weighted", "num_particles",
                                   "resampling", "threshold", "progress_bar"))
def _fkc_run(key, betas, sde, t_min, *, score_fns, log_densities, num_steps, dim, weighted, num_particles,
             resampling, threshold, progress_bar=False):
    fk, times = fkc_feynman_kac(score_fns, betas, sde, num_steps, t_min=t_min, log_densities=log_densities, dim=dim,
                                weighted=weighted)
    state, out = engine.run(key, fk, num_particles, strategy=adaptive(resampling, threshold), progress_bar=progress_bar)
    return state, out, times


def fkc_sample(key, score_fns: Sequence[Callable], betas, *, num_particles: int = 1000, num_steps: int = 200,
               sde: VESDE = VESDE(), dim: int = 2, log_densities: Sequence[Callable] | None = None,
               weighted: bool = True, resampling="systematic", ess_threshold: float = 0.5,
               t_min: float = 1e-3, progress_bar: bool = False) -> FKCResult:
    r"""Sample :math:`p_0 \propto \prod_i (q^i_0)^{\beta_i}` from score models with Feynman–Kac correctors.

    Args:
        key: ``jax.random`` key.
        score_fns: experts' scores ``s_i(x, t) -> (N, d)`` at diffusion time ``t`` (VE process).
        betas: exponents :math:`\beta_i` (``[beta]`` anneals one model, ``[1, 1]`` is a product of
            experts, ``[1 - w, w]`` classifier-free guidance).
        num_particles: number of particles.
        num_steps: Euler–Maruyama steps.
        sde: the :class:`VESDE` the scores belong to.
        dim: dimension of x.
        log_densities: optional ``log q_i(x, t)`` used only to weight the initial draw exactly.
        weighted: ``False`` gives the heuristic baseline (mixed-score reverse SDE, no weights, no
            resampling).
        resampling: SMC resampling scheme.
        ess_threshold: resample when ESS < threshold × N.
        t_min: final diffusion time.
        progress_bar: show a tqdm bar of the diffusion steps.

    Returns:
        :class:`FKCResult`.

    Example:
        >>> import jax, jax.numpy as jnp, bayeskit as bk
        >>> gm = bk.testing.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-2., 0.], [2., 0.]]),
        ...                                 jnp.stack([jnp.eye(2)] * 2))
        >>> res = bk.scaling.fkc_sample(jax.random.key(0), [gm.score_fn(bk.scaling.VESDE())], [2.0],
        ...                             num_particles=64, num_steps=50)
        >>> res.samples.shape
        (64, 2)
    """
    check_key(key)
    num_particles = check_positive_int(num_particles, "num_particles")
    num_steps = check_positive_int(num_steps, "num_steps")
    check_in_interval(ess_threshold, "ess_threshold", 0.0, 1.0)
    check_in_interval(t_min, "t_min", 0.0, 1.0, closed="right")
    if len(score_fns) == 0:
        raise ConfigurationError("`score_fns` must hold at least one score function")
    b = np.asarray(betas, dtype=float).reshape(-1)
    if b.shape[0] != len(score_fns) or not np.all(np.isfinite(b)) or b.sum() <= 0:
        raise ConfigurationError(f"`betas` must hold one finite exponent per score function with a positive sum, got {betas}")
    if log_densities is not None and len(log_densities) != len(score_fns):
        raise ConfigurationError("`log_densities` must hold one function per score function")
    get_scheme(resampling)
    # one compiled program per (score functions, static options, shapes): pass the same score functions
    # (built once, not a fresh lambda per call) to reuse it (docs/scaling.md)
    thr = float(ess_threshold) if weighted else 0.0
    with progress(progress_bar, num_steps, "FKC"):
        state, out, times = _fkc_run(key, jnp.asarray(b), sde, t_min, score_fns=tuple(score_fns),
                                     log_densities=None if log_densities is None else tuple(log_densities),
                                     num_steps=num_steps, dim=int(dim), weighted=bool(weighted),
                                     num_particles=num_particles, resampling=resampling, threshold=thr,
                                     progress_bar=bool(progress_bar))
        jax.block_until_ready(state.log_weights)
    if bool(np.any(np.asarray(out.info.nonfinite))):
        raise DegenerateWeightsError("FKC weights became non-finite (check the score functions and `num_steps`)")
    lw = np.asarray(state.log_weights)
    lw = lw - np.max(lw)
    return FKCResult(np.asarray(state.particles), lw, np.asarray(out.info.ess), np.asarray(out.info.resampled),
                     float(state.log_evidence), np.asarray(times), bool(weighted))

r"""NumPyro time-series models written with ``scan``, converted into a :class:`~bayeskit.StateSpaceModel`.

A NumPyro user writes a state-space model as an ordinary NumPyro function: global parameters
:math:`\theta` first, an initial state :math:`c_{-1}`, then ``numpyro.contrib.control_flow.scan`` over a
body ``f(carry, x_s) -> (carry, out)`` that samples the next latent state and the observation(s):

.. math::
    \theta \sim p(\theta), \quad c_{-1} \sim p(c_{-1} \mid \theta), \quad
    c_s \sim p(c_s \mid c_{s-1}, \theta, x_s), \quad y_s \sim p(y_s \mid c_s, \theta, x_s),
    \quad s = 0, \dots, S-1.

:func:`from_numpyro` reads this structure with NumPyro's effect handlers (``trace``, ``seed``,
``substitute``, ``condition``, ``block`` and a small messenger that intercepts the ``scan`` message),
never by reading source, and builds the state-space model with :math:`T = S + 1` steps whose state at
step 0 is the initial carry and at step :math:`t \ge 1` the carry after scan step :math:`s = t - 1`:

* the latent sites sampled before ``scan`` that are not the initial carry are the parameters
  (``params`` is the dict of their values) and ``prior`` samples them;
* the sites of the initial carry give ``initial``; observed sites before ``scan`` (if any) observe it;
* the body's latent sites (the carry) give ``transition``, its observed sites the ``observation``.

A carry with several leaves (a tuple or dict of sites) is flattened into one state vector; several
observed sites are flattened into one observation vector. Each step's density is the sum of the
NumPyro sites' own ``log_prob`` (scales and masks inside the body included), so the joint density of
the converted model equals the NumPyro model's. When it is built the conversion checks, from the jaxpr of
the sites' log-densities, that observations depend on the current state only and that the initial state
reaches later steps only through the carry, and it compares each site's ``scale`` and distribution type in
the whole model with those in the body alone (a handler around ``scan`` would be lost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
from numpyro import handlers

from bayeskit.errors import ModelError
from bayeskit.model._scan_handlers import (CatchScan, Converter, Recorder, ScanFound, ScanStructure, StepLaw,
                                           native_law, pack, site_log_prob)
from bayeskit.model.ssm import StateSpaceModel

__all__ = ["NumPyroStateSpaceModel", "ScanStructure", "from_numpyro"]


# ----------------------------------------------------------------------------- reading the structure
def _keystr(path) -> str:
    return jax.tree_util.keystr(path) or "(the whole carry)"


def _match(leaf, trace, names):
    """The site among ``names`` whose value is ``leaf`` itself (the model passed the sampled value on)."""
    hits = [n for n in names if trace[n]["value"] is leaf]
    return hits[0] if hits else None


def _abstract_sites(model, args, kwargs):
    """Run the whole model abstractly (``jax.eval_shape``: nothing compiles, the scan is only traced) and
    record its sites: ``{name: (is_observed, shape, scale, type of fn)}`` and the :class:`Recorder`."""
    rec, sites = Recorder(), {}

    def run():
        with handlers.block(), handlers.trace() as tr, rec:
            handlers.seed(model, jax.random.key(0))(*args, **kwargs)
        for name, site in tr.items():
            if site["type"] == "sample":
                scale = site.get("scale")
                sites[name] = (site["is_observed"], tuple(jnp.shape(site["value"])),
                               scale if isinstance(scale, (int, float)) or scale is None else "array",
                               type(site["fn"]).__name__)

    try:
        jax.eval_shape(run)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"the model raised while being traced with the given arguments: {exc}") from exc
    return rec, sites


def read_structure(model, args, kwargs):
    """Read off the model's sites, its one ``scan`` and the carry's sites.

    Returns ``(ScanStructure, carry treedef, initial-site values, point, packed observations)``, where
    ``point`` holds concrete values of one draw: ``params``, the initial state ``x0`` and the state ``x1``
    after the first scan step.
    """
    rec, abstract = _abstract_sites(model, args, kwargs)
    if not rec.scans:
        raise ModelError("the model calls no `numpyro.contrib.control_flow.scan`: from_numpyro converts a model "
                         "whose time steps are one scan over a body that samples the next state and the observation")
    if len(rec.scans) > 1:
        groups = "; ".join(f"scan {i + 1} samples {s['sites']}" for i, s in enumerate(rec.scans))
        raise ModelError(f"the model calls `scan` {len(rec.scans)} times ({groups}); from_numpyro converts a model "
                         f"with exactly one scan over time: site(s) {rec.scans[1]['sites']} belong to a second scan, "
                         "move them into the first scan's body")
    if rec.after:
        raise ModelError(f"site(s) {rec.after} are sampled after the scan; from_numpyro needs every site either "
                         "before the scan (parameters, initial state) or inside its body (one time step)")
    body_sites = rec.scans[0]["sites"]
    body_latent = [n for n in body_sites if not abstract[n][0]]
    body_obs = [n for n in body_sites if abstract[n][0]]
    pre_latent = [n for n in rec.before if not abstract[n][0]]
    pre_obs = [n for n in rec.before if abstract[n][0]]
    if rec.scans[0]["args"][4]:
        raise ModelError(f"the scan runs with reverse=True, so its latent site(s) {body_latent} at each step depend "
                         "on the future steps (t + 1, ...); a state-space model moves forward in time: write the "
                         "scan forward (reverse=False)")

    # concrete values: the model up to its scan, then one step of the body
    with handlers.block(), handlers.trace() as tr:
        try:
            with CatchScan():
                handlers.seed(model, jax.random.key(0))(*args, **kwargs)
        except ScanFound as found:
            (f, init, xs, length, _), stack = found.args, found.substitute_stack
    for path, leaf in jax.tree_util.tree_flatten_with_path(xs)[0]:
        site = _match(leaf, tr, pre_latent)
        if site is not None:
            raise ModelError(f"latent site {site!r} (all time steps at once) enters the scan through `xs` "
                             f"{_keystr(path)}: each step of the body would depend on it, future steps included; "
                             "sample it inside the body, one step at a time")
    num_scan_steps = int(length) if length is not None else int(jnp.shape(jax.tree_util.tree_leaves(xs)[0])[0])
    conditioned = {}
    for kind, data in stack:
        if kind != "condition" or not isinstance(data, dict):
            raise ModelError("the model wraps its scan in a `substitute` handler or a `condition` with a function; "
                             "from_numpyro reads observations from `obs=` or `condition(data={...})` only")
        conditioned.update({k: v for k, v in data.items() if k in body_sites})

    def one_step(s, key):
        x_s = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[s], xs)
        fn = handlers.condition(f, data={k: jnp.asarray(v)[s] for k, v in conditioned.items()})
        with handlers.block(), handlers.trace() as tr1:
            carry_out, _ = handlers.seed(fn, key)(init, x_s)
        return tr1, carry_out

    tr1, carry_out = one_step(0, jax.random.key(1))
    for n in body_sites:
        sc = tr1[n].get("scale")
        here = (sc if isinstance(sc, (int, float)) or sc is None else "array", type(tr1[n]["fn"]).__name__)
        if here != abstract[n][2:]:
            raise ModelError(f"site {n!r} has scale / distribution {abstract[n][2:]} in the model but {here} in the "
                             "scan body alone: the model wraps `scan` in a handler (scale, mask, ...); put such "
                             "handlers inside the scan body")
    carry_leaves = jax.tree_util.tree_flatten_with_path(carry_out)[0]
    if not carry_leaves:
        raise ModelError(f"the scan body returns no carry (it returned {carry_out!r} as the carry), so its latent "
                         f"site(s) {body_latent} cannot be passed from one step to the next: return the new state "
                         "as the carry, e.g. `return x, None`")
    state_sites = []
    for path, leaf in carry_leaves:
        site = _match(leaf, tr1, body_sites)
        if site is None or site in body_obs:
            what = f"the observed site {site!r}" if site else "not the value of a latent sample site of the body"
            raise ModelError(f"carry leaf {_keystr(path)} returned by the scan body is {what}: the carry must hold "
                             f"the sampled latent state itself (one of {body_latent}), e.g. "
                             "`x = numpyro.sample('x', ...); return x, None`")
        if site in state_sites:
            raise ModelError(f"latent site {site!r} appears twice in the carry returned by the scan body")
        state_sites.append(site)
    for n in body_latent:
        if n not in state_sites:
            raise ModelError(f"site {n!r} in the scan body is not conditioned on data (no `obs=` value; the model was "
                             "called without its observations?) and is not part of the carry: condition it on data "
                             "(`obs=`, or numpyro.handlers.condition) if it is an observation, or return it in the "
                             "carry if it is a latent state")
    if not body_obs:
        raise ModelError(f"the scan body observes nothing: none of its sites {body_sites} is conditioned on data")
    init_sites = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(init)[0]:
        site = _match(leaf, tr, pre_latent)
        if site is None or site in init_sites:
            raise ModelError(f"leaf {_keystr(path)} of the initial carry passed to scan is not the value of a latent "
                             f"site sampled before the scan (one of {pre_latent}): sample the initial state, e.g. "
                             "`x0 = numpyro.sample('x0', ...)`, and pass it to scan unchanged")
        init_sites.append(site)
    leaf_shapes = tuple(tuple(jnp.shape(leaf)) for _, leaf in carry_leaves)
    state_shape = leaf_shapes[0] if len(leaf_shapes) == 1 else (sum(math.prod(s) for s in leaf_shapes),)
    obs_shapes = tuple(tuple(jnp.shape(tr1[n]["value"])) for n in body_obs)
    init_obs_shapes = tuple(tuple(jnp.shape(tr[n]["value"])) for n in pre_obs)
    p1, p0 = sum(math.prod(s) for s in obs_shapes), sum(math.prod(s) for s in init_obs_shapes)
    if len(obs_shapes) == 1 and (not pre_obs or init_obs_shapes == obs_shapes):
        obs_shape = obs_shapes[0]
    else:
        obs_shape = (max(p0, p1),)
    st = ScanStructure(global_sites=tuple(n for n in pre_latent if n not in init_sites),
                       initial_sites=tuple(init_sites), state_sites=tuple(state_sites), observed_sites=tuple(body_obs),
                       initial_observed_sites=tuple(pre_obs), leaf_shapes=leaf_shapes, state_shape=state_shape,
                       obs_shape=obs_shape, obs_shapes=obs_shapes, initial_obs_shapes=init_obs_shapes,
                       num_scan_steps=num_scan_steps,
                       scaled_sites=tuple(n for n, a in abstract.items() if a[2] is not None))

    # the observations of every step (data: they do not depend on the carry or on the draws)
    def step_obs(s):
        tr_s, _ = one_step(s, jax.random.key(1))
        return pack([tr_s[n]["value"] for n in body_obs], obs_shape)

    rows = jax.vmap(step_obs)(jnp.arange(num_scan_steps))
    row0 = pack([tr[n]["value"] for n in pre_obs], obs_shape)
    rows = jnp.concatenate([row0[None].astype(rows.dtype), rows], axis=0)
    point = {"params": {n: tr[n]["value"] for n in st.global_sites},
             "x0": pack([tr[n]["value"] for n in init_sites], state_shape),
             "x1": pack([leaf for _, leaf in carry_leaves], state_shape)}
    treedef = jax.tree_util.tree_structure(carry_out)
    template_init = {n: tr[n]["value"] for n in init_sites}
    return st, treedef, template_init, point, rows


# ----------------------------------------------------------------------------- checks
_CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "remat", "checkpoint")


def depends_on(fn, args, argnum: int) -> list[bool]:
    """For each output of ``fn(*args)`` (a tuple of arrays), whether it may depend on ``args[argnum]``.

    Conservative dependency analysis of the jaxpr (an output is independent only if no chain of
    operations links it to the argument); calls into jitted sub-functions are followed, any other
    higher-order primitive (loops, conditionals) makes all its outputs depend on all its inputs.
    """
    from jax.extend.core import Literal

    closed = jax.make_jaxpr(fn)(*args)
    counts = [len(jax.tree_util.tree_leaves(a)) for a in args]
    start = sum(counts[:argnum])
    marked = set(closed.jaxpr.invars[start:start + counts[argnum]])

    def propagate(jaxpr, marked):
        for eqn in jaxpr.eqns:
            hit = [not isinstance(v, Literal) and v in marked for v in eqn.invars]
            if not any(hit):
                continue
            sub = None
            if eqn.primitive.name in _CALLS:  # one call of a sub-jaxpr (not a loop: a carry feeds back)
                sub = next((p.jaxpr if hasattr(p, "jaxpr") else p for p in eqn.params.values()
                            if hasattr(p, "eqns") or hasattr(getattr(p, "jaxpr", None), "eqns")), None)
            if sub is not None and len(sub.invars) == len(eqn.invars) and len(sub.outvars) == len(eqn.outvars):
                inner = {v for v, h in zip(sub.invars, hit) if h}
                propagate(sub, inner)
                marked.update(o for o, io in zip(eqn.outvars, sub.outvars) if not isinstance(io, Literal) and io in inner)
            else:
                marked.update(eqn.outvars)

    propagate(closed.jaxpr, marked)
    return [not isinstance(v, Literal) and v in marked for v in closed.jaxpr.outvars]


def check_dependencies(conv, point):
    """Observations may depend on the current state only, and the body may see the initial state only
    through the carry; raise a :class:`ModelError` naming the site otherwise."""
    st = conv.st
    params, x0, x1 = point["params"], point["x0"], point["x1"]
    y1 = conv.data_rows[1]

    def obs_lps(carry_prev):
        tr = conv.body(params, carry_prev, 1, latent=conv.body_latent(x1), obs=conv.body_obs(y1))
        return tuple(site_log_prob(tr[n]) for n in st.observed_sites)

    for name, dep in zip(st.observed_sites, depends_on(obs_lps, (conv.carry(x0),), 0)):
        if dep:
            raise ModelError(f"observed site {name!r} depends on the previous step's carry; in a state-space model "
                             "an observation depends on the current state only: sample the new state first and "
                             "use it (not the incoming carry) in the observation")

    def body_lps(init_values):
        tr, (f, _, xs, _, _) = conv.prefix(params, init_values)
        x_s = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[0], xs)
        fn = handlers.condition(handlers.substitute(f, data=conv.body_latent(x1)), data=conv.body_obs(y1))
        with handlers.block(), handlers.trace() as tr1:
            handlers.seed(fn, jax.random.key(0))(conv.carry(x0), x_s)
        return (tuple(site_log_prob(tr1[n]) for n in st.state_sites + st.observed_sites)
                + tuple(site_log_prob(tr[n]) for n in st.global_sites))

    deps = depends_on(body_lps, (conv.init_latent(x0),), 0)
    names = st.state_sites + st.observed_sites + st.global_sites
    for name, dep in zip(names, deps):
        if dep:
            where = "parameter" if name in st.global_sites else "scan body's"
            raise ModelError(f"the {where} site {name!r} reads the initial state {list(st.initial_sites)} directly; "
                             "the initial state may reach later steps only through the scan's carry")


@dataclass(frozen=True)
class NumPyroStateSpaceModel(StateSpaceModel):
    """A :class:`~bayeskit.StateSpaceModel` converted from a NumPyro ``scan`` model by :func:`from_numpyro`.

    Every driver that takes a ``StateSpaceModel`` takes it, with ``params`` a dict of the global sites'
    values and ``ys`` the model's own observations, :attr:`ys` (shape ``(S + 1, *obs_shape)``: row 0
    observes the initial state, zeros when nothing does).

    Attributes:
        ys: the observed values of the NumPyro model, packed one row per converted step.
        structure: the :class:`ScanStructure` read off the model.
    """

    ys: Any = field(default=None, compare=False, repr=False)
    structure: ScanStructure | None = field(default=None, compare=False)
    converter: Any = field(default=None, compare=False, repr=False)

    def sample_params(self, key) -> dict:
        """One draw of the global sites from the prior (a valid starting ``params``).

        Args:
            key: ``jax.random`` key.
        """
        return handlers.seed(self.prior, key)()

    def path_from_sites(self, sites: dict):
        """NumPyro site values (e.g. NUTS's ``get_samples()``) -> state paths ``(..., S + 1, *state_shape)``.

        Args:
            sites: a dict holding each initial site (``(..., *leaf_shape)``) and each state site
                (``(..., S, *leaf_shape)``); extra keys are ignored.
        """
        st = self.structure
        out = []
        for init_name, name, shape in zip(st.initial_sites, st.state_sites, st.leaf_shapes):
            x0 = jnp.asarray(sites[init_name])
            batch = x0.shape[:x0.ndim - len(shape)]
            xs = jnp.asarray(sites[name]).reshape(batch + (st.num_scan_steps, -1))
            out.append(jnp.concatenate([x0.reshape(batch + (1, -1)), xs], axis=-2))
        path = out[0] if len(out) == 1 else jnp.concatenate(out, axis=-1)
        return path.reshape(path.shape[:-1] + st.state_shape)

    def sites_from_path(self, paths) -> dict:
        """State paths -> a dict of NumPyro site values (the inverse of :meth:`path_from_sites`).

        Args:
            paths: state paths ``(..., S + 1, *state_shape)``, e.g. ``particle_gibbs(...).paths``.
        """
        st = self.structure
        paths = jnp.asarray(paths)
        batch = paths.shape[:paths.ndim - 1 - len(st.state_shape)]
        flat = paths.reshape(batch + (st.num_scan_steps + 1, -1))
        out, i = {}, 0
        for init_name, name, shape in zip(st.initial_sites, st.state_sites, st.leaf_shapes):
            n = math.prod(shape)
            leaf = flat[..., i:i + n]
            out[init_name] = leaf[..., 0, :].reshape(batch + shape)
            out[name] = leaf[..., 1:, :].reshape(batch + (st.num_scan_steps,) + shape)
            i += n
        return out


def from_numpyro(model: Callable, *args, **kwargs) -> NumPyroStateSpaceModel:
    """Convert a NumPyro time-series model written with ``scan`` into a state-space model.

    See :meth:`bayeskit.StateSpaceModel.from_numpyro` (this function's public entry point).

    Args:
        model: the NumPyro model function.
        *args: positional arguments of ``model``, its data included.
        **kwargs: keyword arguments of ``model``.
    """
    st, treedef, template_init, point, rows = read_structure(model, args, kwargs)
    conv = Converter(model, args, kwargs, st, treedef, template_init, rows)
    check_dependencies(conv, point)
    # one site without a scale: its own distribution is the law of the step (PaRIS can bound its density)
    single_state = len(st.state_sites) == 1 and st.state_sites[0] not in st.scaled_sites
    single_init = len(st.initial_sites) == 1 and st.initial_sites[0] not in st.scaled_sites

    def initial(params):
        if single_init:
            tr, _ = conv.prefix(params)
            return native_law(tr[st.initial_sites[0]])
        return StepLaw(st.state_shape, lambda x: conv.log_initial(params, x),
                        lambda k: conv.sample_initial(k, params))

    def transition(params, x_prev, t):
        if single_state:
            # the site's law given the previous carry: substitute a placeholder value to read it
            tr = conv.body(params, conv.carry(x_prev), t, latent=conv.body_latent(x_prev),
                           obs=conv.body_obs(rows[t]))
            return native_law(tr[st.state_sites[0]])
        return StepLaw(st.state_shape, lambda x: conv.log_transition(params, x_prev, x, t),
                        lambda k: conv.sample_transition(k, params, x_prev, t))

    def observation(params, x, t):
        return StepLaw(st.obs_shape, lambda y: conv.log_observation(params, x, y, t),
                        lambda k: conv.sample_observation(k, params, x, t))

    # hide the initial state and its observations only: anything else (the global sites, and the factors an
    # outer handler adds for them, e.g. NUTS's log-Jacobian of each unconstraining transform) must get through
    hidden_sites = set(st.initial_sites) | set(st.initial_observed_sites)

    def prior():
        hidden = lambda msg: msg.get("name") in hidden_sites  # noqa: E731
        with handlers.block(hide_fn=hidden), handlers.trace() as tr:
            try:
                with CatchScan():
                    handlers.substitute(model, data=template_init)(*args, **kwargs)
            except ScanFound:
                pass
        return {name: tr[name]["value"] for name in st.global_sites}

    ssm = NumPyroStateSpaceModel(initial, transition, observation, vectorized=False, prior=prior, ys=rows,
                                 structure=st, converter=conv)
    return ssm

"""Effect-handler plumbing behind :func:`bayeskit.model.numpyro_scan.from_numpyro`.

Messengers that intercept a NumPyro model's ``scan`` and record its sites, the :class:`Converter` that
runs the model's prefix (up to ``scan``) and one step of its body under ``substitute`` / ``condition`` /
``seed``, and :class:`StepLaw`, a NumPyro distribution over one converted state or observation vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import Distribution, constraints
from numpyro.primitives import Messenger

from bayeskit.errors import ModelError

__all__ = ["ScanFound", "CatchScan", "Recorder", "Unobserve", "site_log_prob", "ScanStructure", "pack", "unpack",
           "Converter", "StepLaw", "native_law"]


# ----------------------------------------------------------------------------- messengers
class ScanFound(Exception):
    """Raised by :class:`CatchScan`: ``args`` = ``(f, init, xs, length, reverse)``; ``substitute_stack``:
    the ``condition`` / ``substitute`` handlers the model put around the scan."""

    def __init__(self, args, substitute_stack=()):
        super().__init__("scan intercepted")
        self.args, self.substitute_stack = args, list(substitute_stack)


class CatchScan(Messenger):
    """Stops the model at its ``scan`` and hands back the scan's ``(f, init, xs, length, reverse)``."""

    def process_message(self, msg):
        if msg["type"] == "control_flow":
            raise ScanFound(msg["args"], msg["kwargs"].get("substitute_stack", ()))


class Recorder(Messenger):
    """Records every ``scan`` call and which sample sites come before, inside and after it."""

    def __init__(self, fn=None):
        self.scans, self.before, self.after = [], [], []
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "control_flow":
            self.scans.append({"args": msg["args"], "sites": []})

    def postprocess_message(self, msg):
        if msg["type"] != "sample":
            return
        if "_scan_current_index" in (msg.get("infer") or {}):
            self.scans[-1]["sites"].append(msg["name"])
        else:
            (self.after if self.scans else self.before).append(msg["name"])


class Unobserve(Messenger):
    """Turns the named observed sites into latent ones (to simulate observations)."""

    def __init__(self, fn=None, names=()):
        self.names = set(names)
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.names:
            msg["value"], msg["is_observed"] = None, False


def site_log_prob(site):
    fn, value = site["fn"], site["value"]
    lp = fn.log_prob(value, site["intermediates"]) if site.get("intermediates") else fn.log_prob(value)
    if site.get("scale") is not None:
        lp = site["scale"] * lp
    return jnp.sum(lp)


# ----------------------------------------------------------------------------- structure
@dataclass(frozen=True)
class ScanStructure:
    """What :func:`from_numpyro` read off the model.

    Attributes:
        global_sites: latent sites before ``scan`` that are parameters (the keys of ``params``).
        initial_sites: latent sites before ``scan`` that form the initial carry, one per carry leaf.
        state_sites: the body's latent sites, one per carry leaf (same order as ``initial_sites``).
        observed_sites: the body's observed sites.
        initial_observed_sites: observed sites before ``scan`` (they observe the initial state at step 0).
        leaf_shapes: shape of each carry leaf; state_shape / obs_shape: of one converted state / observation.
        num_scan_steps: S, the length of the ``scan`` (the converted model has ``S + 1`` steps).
        scaled_sites: sites under a ``scale`` handler.
    """

    global_sites: tuple
    initial_sites: tuple
    state_sites: tuple
    observed_sites: tuple
    initial_observed_sites: tuple
    leaf_shapes: tuple
    state_shape: tuple
    obs_shape: tuple
    obs_shapes: tuple
    initial_obs_shapes: tuple
    num_scan_steps: int
    scaled_sites: tuple = ()


def pack(leaves, shape):
    flat = [jnp.ravel(jnp.asarray(v)) for v in leaves]
    if not flat:
        return jnp.zeros(shape)
    out = flat[0] if len(flat) == 1 else jnp.concatenate(flat)
    size = math.prod(shape)
    if out.shape[0] < size:
        out = jnp.concatenate([out, jnp.zeros(size - out.shape[0], out.dtype)])
    return out.reshape(shape)


def unpack(vec, shapes):
    flat = jnp.ravel(vec)
    out, i = [], 0
    for shape in shapes:
        n = math.prod(shape)
        out.append(flat[i:i + n].reshape(shape))
        i += n
    return out


# ----------------------------------------------------------------------------- the converter
class Converter:
    """Runs pieces of the user's model under effect handlers (no jit here: callers jit)."""

    def __init__(self, model, args, kwargs, st: ScanStructure, treedef, template_init, data_rows):
        self.model, self.args, self.kwargs, self.st = model, args, kwargs, st
        self.treedef, self.template_init, self.data_rows = treedef, template_init, data_rows

    # -- pieces of the model
    def prefix(self, params, init_values=None, *, key=None, obs0=None, unobserve=False):
        """Run the model up to its ``scan``; returns ``(trace, (f, init, xs, length, reverse))``."""
        fn = self.model
        if unobserve:
            fn = Unobserve(fn, self.st.initial_observed_sites)
        data = dict(params)
        data.update(self.template_init if init_values is None and key is None else (init_values or {}))
        fn = handlers.substitute(fn, data=data)
        if obs0 is not None:
            fn = handlers.condition(fn, data=obs0)
        if key is not None:
            fn = handlers.seed(fn, key)
        # block(): these internal runs stay invisible to handlers around the caller (NUTS, trace, ...)
        with handlers.block(), handlers.trace() as tr:
            try:
                with CatchScan():
                    fn(*self.args, **self.kwargs)
            except ScanFound as found:
                return tr, found.args
        raise ModelError("the model did not reach its `scan` when run again")  # pragma: no cover

    def body(self, params, carry_prev, t, *, latent=None, obs=None, key=None, unobserve=False):
        """Run the scan body at converted step ``t >= 1`` (scan step ``t - 1``); returns its trace."""
        _, (f, _, xs, _, _) = self.prefix(params)
        x_s = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[t - 1], xs)
        fn = f
        if unobserve:
            fn = Unobserve(fn, self.st.observed_sites)
        if latent is not None:
            fn = handlers.substitute(fn, data=latent)
        if obs is not None:
            fn = handlers.condition(fn, data=obs)
        fn = handlers.seed(fn, jax.random.key(0) if key is None else key)
        with handlers.block(), handlers.trace() as tr:
            fn(carry_prev, x_s)
        return tr

    # -- state / observation vectors
    def state_leaves(self, x):
        return unpack(x, self.st.leaf_shapes)

    def carry(self, x):
        return jax.tree_util.tree_unflatten(self.treedef, self.state_leaves(x))

    def body_latent(self, x):
        return dict(zip(self.st.state_sites, self.state_leaves(x)))

    def init_latent(self, x):
        return dict(zip(self.st.initial_sites, self.state_leaves(x)))

    def body_obs(self, y):
        return dict(zip(self.st.observed_sites, unpack(y, self.st.obs_shapes)))

    def init_obs(self, y):
        return dict(zip(self.st.initial_observed_sites, unpack(y, self.st.initial_obs_shapes)))

    # -- densities of one step
    def log_initial(self, params, x):
        tr, _ = self.prefix(params, self.init_latent(x))
        return sum((site_log_prob(tr[n]) for n in self.st.initial_sites), jnp.zeros(()))

    def log_transition(self, params, x_prev, x, t):
        tr = self.body(params, self.carry(x_prev), t, latent=self.body_latent(x), obs=self.body_obs(self.data_rows[t]))
        return sum((site_log_prob(tr[n]) for n in self.st.state_sites), jnp.zeros(()))

    def log_obs_initial(self, params, x, y):
        if not self.st.initial_observed_sites:
            return jnp.zeros(())
        tr, _ = self.prefix(params, self.init_latent(x), obs0=self.init_obs(y))
        return sum((site_log_prob(tr[n]) for n in self.st.initial_observed_sites), jnp.zeros(()))

    def log_obs_step(self, params, carry_prev, x, y, t):
        tr = self.body(params, carry_prev, t, latent=self.body_latent(x), obs=self.body_obs(y))
        return sum((site_log_prob(tr[n]) for n in self.st.observed_sites), jnp.zeros(()))

    def log_observation(self, params, x, y, t):
        # observations depend on the current state only (checked at conversion): any carry will do
        step = lambda tt: self.log_obs_step(params, self.carry(x), x, y, jnp.maximum(tt, 1))  # noqa: E731
        if isinstance(t, (int, np.integer)):
            return self.log_obs_initial(params, x, y) if t == 0 else step(t)
        return jax.lax.cond(t == 0, lambda tt: self.log_obs_initial(params, x, y), step, t)

    # -- draws
    def sample_initial(self, key, params):
        tr, _ = self.prefix(params, key=key)
        return pack([tr[n]["value"] for n in self.st.initial_sites], self.st.state_shape)

    def sample_transition(self, key, params, x_prev, t):
        tr = self.body(params, self.carry(x_prev), t, obs=self.body_obs(self.data_rows[t]), key=key)
        return pack([tr[n]["value"] for n in self.st.state_sites], self.st.state_shape)

    def sample_observation(self, key, params, x, t):
        def first(_):
            if not self.st.initial_observed_sites:
                return jnp.zeros(self.st.obs_shape)
            tr, _ = self.prefix(params, self.init_latent(x), key=key, unobserve=True)
            return pack([tr[n]["value"] for n in self.st.initial_observed_sites], self.st.obs_shape)

        def later(tt):
            tr = self.body(params, self.carry(x), jnp.maximum(tt, 1), latent=self.body_latent(x), key=key,
                           unobserve=True)
            return pack([tr[n]["value"] for n in self.st.observed_sites], self.st.obs_shape)

        if isinstance(t, (int, np.integer)):
            return first(t) if t == 0 else later(t)
        return jax.lax.cond(t == 0, first, later, t)


class StepLaw(Distribution):
    """The law of one converted step, as a NumPyro distribution over a state (or observation) vector."""

    arg_constraints: dict = {}

    def __init__(self, event_shape, log_prob_fn, sample_fn):
        self._log_prob_fn, self._sample_fn = log_prob_fn, sample_fn
        super().__init__(batch_shape=(), event_shape=tuple(event_shape), validate_args=False)

    @property
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    def sample(self, key, sample_shape=()):
        if not sample_shape:
            return self._sample_fn(key)
        keys = jax.random.split(key, math.prod(sample_shape))
        draws = jax.vmap(self._sample_fn)(keys)
        return draws.reshape(tuple(sample_shape) + draws.shape[1:])

    def log_prob(self, value):
        return self._log_prob_fn(value)


def native_law(site):
    """The site's own distribution as a law of one state (batch dims folded into the event)."""
    fn = site["fn"]
    return fn.to_event(len(fn.batch_shape)) if fn.batch_shape else fn

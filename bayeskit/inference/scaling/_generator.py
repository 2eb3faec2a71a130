r"""Generator and reward-model protocols for inference-time scaling.

Puri et al. (2025) cast generation as a state-space model: the *generator* (a language model
producing one reasoning step, or a diffusion model producing one denoising step) is the transition
kernel :math:`M_t(x_{t-1}, \cdot)`, and a *process reward model* (PRM) scoring the partial
generation is the emission, :math:`r_t = r(x_{1:t}) \in (0, 1)`. Every scaling algorithm in
:mod:`bayeskit.inference.scaling` drives generators and reward models through the two small
protocols below.

**Generator** (:class:`Generator`): a NamedTuple of pure functions over a batch of partial
generations, a pytree whose leaves share a leading particle axis ``N``.

* ``init(prompt, num_particles) -> states`` — ``N`` empty generations for one prompt.
* ``step(key, states) -> states`` — extend every live generation by one step (same tree
  structure, shapes and dtypes).
* ``is_done(states) -> (N,) bool`` — finished generations (end of sequence or maximal length).
* ``answer(states) -> (N,) int`` — the final answer extracted from each generation.
* ``max_steps`` — an upper bound on the number of steps of any generation (static).

Finished generations are never extended: the algorithms wrap ``step`` so that finished particles
keep their state and do not count as generator calls.

**RewardModel** (:class:`RewardModel`): ``process(states) -> (N,)`` process reward in ``[0, 1]``
of partial generations, and ``outcome(states) -> (N,)`` outcome reward of finished ones (defaults
to ``process``).

JAX-native generators run inside ``jit``. Any Python callable (for example a Hugging Face model
already on disk, wrapped in a function of token arrays) becomes a :class:`Generator` through
:func:`host_generator`, and any scoring function through :func:`host_reward_model`: the callable is
called once per step with the whole batch of live generations (no per-particle Python loop), through
``jax.pure_callback``, so the same jitted algorithms drive it. Errors raised by the callable are
kept on the Python side and re-raised, unchanged, by the driver after the run
(:func:`raise_pending_errors`); a reward model that raises on one particle is retried on halves of
the batch so that only the failing particles lose their score (they get reward 0 and are dropped at
the next resampling), with a warning.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayeskit.errors import DataError, ModelError

__all__ = [
    "Generator",
    "RewardModel",
    "TokenState",
    "host_generator",
    "host_reward_model",
    "raise_pending_errors",
    "check_generator",
    "guarded_step",
]


class Generator(NamedTuple):
    """A batched generator: the transition kernel of the generation state-space model.

    Fields: ``init(prompt, num_particles) -> states``, ``step(key, states) -> states``,
    ``is_done(states) -> (N,) bool``, ``answer(states) -> (N,) int``, ``max_steps`` (int).
    ``host`` is set by :func:`host_generator` (holds the adapter that records host errors).
    """

    init: Callable
    step: Callable
    is_done: Callable
    answer: Callable
    max_steps: int
    host: Any = None


class RewardModel(NamedTuple):
    """A process reward ``process(states) -> (N,)`` in [0, 1] and an outcome reward
    ``outcome(states) -> (N,)`` in [0, 1] (``None``: use ``process``)."""

    process: Callable
    outcome: Callable | None = None
    host: Any = None

    def outcome_fn(self) -> Callable:
        return self.outcome if self.outcome is not None else self.process


class TokenState(NamedTuple):
    """Partial generations as padded token arrays (the state of :func:`host_generator`).

    ``tokens`` (N, max_length) int32, ``length`` (N,) int32 (number of valid tokens), ``done``
    (N,) bool, ``num_steps`` (N,) int32 (generator steps taken).
    """

    tokens: jax.Array
    length: jax.Array
    done: jax.Array
    num_steps: jax.Array


def check_generator(generator, reward_model, prompt, num_particles: int = 2):
    """Check a generator and a reward model on ``num_particles`` particles by abstract evaluation
    (no computation): ``step`` keeps the tree structure, shapes and dtypes, ``is_done``/``answer``
    and the rewards return ``(N,)`` arrays. Raises :class:`~bayeskit.errors.ModelError`."""
    if not isinstance(generator, Generator):
        raise ModelError(f"`generator` must be a bayeskit.scaling.Generator, got {type(generator).__name__}")
    if not isinstance(reward_model, RewardModel):
        raise ModelError(f"`reward_model` must be a bayeskit.scaling.RewardModel, got {type(reward_model).__name__}")
    if generator.host is not None:  # shapes of host callables are checked at every call instead
        return
    try:
        cache_key = (generator, reward_model, num_particles, np.shape(prompt), np.asarray(prompt).dtype.str)
        if cache_key in _CHECKED:
            return
    except TypeError:  # unhashable parts: check every time
        cache_key = None
    _check_generator(generator, reward_model, prompt, num_particles)
    if cache_key is not None:
        _CHECKED.add(cache_key)


_CHECKED: set = set()


def _check_generator(generator, reward_model, prompt, num_particles):
    try:
        states = jax.eval_shape(lambda: generator.init(prompt, num_particles))
    except Exception as exc:
        raise ModelError(f"`generator.init(prompt, {num_particles})` failed: {exc}") from exc
    _check_leading(states, num_particles, "generator.init(prompt, num_particles)")
    key = jax.random.key(0)
    try:
        new = jax.eval_shape(generator.step, key, states)
    except Exception as exc:
        raise ModelError(f"`generator.step(key, states)` failed: {exc}") from exc
    s_in = jax.tree_util.tree_structure(states)
    s_out = jax.tree_util.tree_structure(new)
    if s_in != s_out:
        raise ModelError(f"`generator.step` must return states with the same structure as its input: got {s_out}, expected {s_in}")
    for a, b in zip(jax.tree_util.tree_leaves(states), jax.tree_util.tree_leaves(new)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ModelError(
                f"`generator.step` returned a leaf of shape {b.shape} and dtype {b.dtype}, expected the "
                f"input's shape {a.shape} and dtype {a.dtype} (one leading particle axis of size {num_particles})"
            )
    for name, fn in (("generator.is_done", generator.is_done), ("generator.answer", generator.answer),
                     ("reward_model.process", reward_model.process),
                     ("reward_model.outcome", reward_model.outcome_fn())):
        try:
            out = jax.eval_shape(fn, states)
        except Exception as exc:
            raise ModelError(f"`{name}(states)` failed: {exc}") from exc
        if not hasattr(out, "shape") or out.shape != (num_particles,):
            raise ModelError(f"`{name}(states)` must return an array of shape ({num_particles},), got {getattr(out, 'shape', out)}")


def _check_leading(tree, n, what):
    for leaf in jax.tree_util.tree_leaves(tree):
        if leaf.ndim == 0 or leaf.shape[0] != n:
            raise ModelError(f"`{what}` must return arrays with a leading particle axis of size {n}, got a leaf of shape {leaf.shape}")


def guarded_step(generator: Generator):
    """``step`` that leaves finished particles unchanged: ``where(done, old, step(old))``."""

    def step(key, states):
        done = generator.is_done(states)
        new = generator.step(key, states)

        def keep(old, nw):
            mask = done.reshape(done.shape + (1,) * (old.ndim - 1))
            return jnp.where(mask, old, nw)

        return jax.tree_util.tree_map(keep, states, new)

    return step


# --------------------------------------------------------------------------- host adapters


class _HostAdapter:
    """Python-side companion of a host callable: keeps the first error it raised."""

    def __init__(self, name):
        self.name = name
        self.error: BaseException | None = None
        self.failures = 0
        self.calls = 0

    def fail(self, exc):
        if self.error is None:
            self.error = exc


def raise_pending_errors(*objects):
    """Re-raise (and clear) the first error a host generator or reward model recorded."""
    for obj in objects:
        adapter = getattr(obj, "host", None)
        if adapter is not None and adapter.error is not None:
            exc, adapter.error = adapter.error, None
            raise exc


def host_generator(step_fn: Callable, *, max_length: int, max_steps: int, prompt_fn: Callable | None = None,
                   answer_fn: Callable | None = None, pad_id: int = 0) -> Generator:
    """Wrap a Python callable on token arrays as a :class:`Generator` usable inside ``jit``.

    Args:
        step_fn: ``step_fn(seed, tokens, lengths) -> (tokens, lengths, done)`` on NumPy arrays of
            the *live* particles only: ``tokens`` (n, max_length) int32 padded, ``lengths`` (n,),
            ``seed`` a Python int. It returns the extended generations (same shapes) and a done
            mask (n,). Called once per step with the whole batch, e.g. one batched
            ``model.generate`` call of a Hugging Face model stopping at a step delimiter.
        max_length: width of the padded token arrays.
        max_steps: upper bound on the number of steps of any generation.
        prompt_fn: ``prompt_fn(prompt) -> 1-D int array`` of prompt tokens (default: the prompt is
            already such an array).
        answer_fn: ``answer_fn(tokens, lengths) -> (n,) int`` extracting final answers on the host
            (default: the last token).
        pad_id: token used for padding.

    Returns:
        a :class:`Generator` over :class:`TokenState` whose ``step`` calls ``step_fn`` through
        ``jax.pure_callback``. Wrong output shapes or an exception in ``step_fn`` are recorded and
        re-raised by the driver after the run (as :class:`~bayeskit.errors.DataError` for shapes).
    """
    adapter = _HostAdapter("generator")
    max_length = int(max_length)

    def init(prompt, num_particles):
        p = np.asarray(prompt if prompt_fn is None else prompt_fn(prompt), dtype=np.int32).reshape(-1)
        if p.shape[0] > max_length:
            raise DataError(f"the prompt has {p.shape[0]} tokens, more than `max_length` = {max_length}")
        toks = np.full((num_particles, max_length), pad_id, np.int32)
        toks[:, : p.shape[0]] = p
        return TokenState(jnp.asarray(toks), jnp.full((num_particles,), p.shape[0], jnp.int32),
                          jnp.zeros((num_particles,), bool), jnp.zeros((num_particles,), jnp.int32))

    def host_step(seed, tokens, length, done):
        tokens = np.asarray(tokens)
        length = np.asarray(length)
        done = np.asarray(done)
        n = tokens.shape[0]
        out_t, out_l, out_d = tokens.copy(), length.copy(), done.copy()
        live = np.flatnonzero(~done)
        if adapter.error is not None or live.size == 0:
            return out_t, out_l, out_d
        try:
            adapter.calls += 1
            res = step_fn(int(np.asarray(seed).reshape(-1)[0]), tokens[live], length[live])
            if not (isinstance(res, tuple) and len(res) == 3):
                raise DataError("the host generator's `step_fn` must return a tuple (tokens, lengths, done)")
            nt, nl, nd = (np.asarray(r) for r in res)
            if nt.shape != (live.size, max_length):
                raise DataError(f"the host generator's `step_fn` returned tokens of shape {nt.shape}, expected "
                                f"({live.size}, {max_length}) (one row per live particle, padded to max_length)")
            if nl.shape != (live.size,) or nd.shape != (live.size,):
                raise DataError(f"the host generator's `step_fn` returned lengths of shape {nl.shape} and done of "
                                f"shape {nd.shape}, expected ({live.size},) each")
            out_t[live] = nt.astype(np.int32)
            out_l[live] = nl.astype(np.int32)
            out_d[live] = nd.astype(bool)
        except Exception as exc:  # kept and re-raised by the driver after the run
            adapter.fail(exc)
            out_d[:] = True
        del n
        return out_t, out_l, out_d

    def step(key, states: TokenState):
        seed = jax.random.randint(key, (1,), 0, 2**31 - 1, dtype=jnp.int32)
        shapes = (jax.ShapeDtypeStruct(states.tokens.shape, jnp.int32),
                  jax.ShapeDtypeStruct(states.length.shape, jnp.int32),
                  jax.ShapeDtypeStruct(states.done.shape, jnp.bool_))
        toks, length, done = jax.pure_callback(host_step, shapes, seed, states.tokens, states.length,
                                               states.done, vmap_method="sequential")
        over = states.num_steps + 1 >= max_steps
        return TokenState(toks, length, done | over, states.num_steps + (~states.done).astype(jnp.int32))

    def is_done(states):
        return states.done

    def answer(states):
        if answer_fn is None:
            idx = jnp.clip(states.length - 1, 0, max_length - 1)
            return jnp.take_along_axis(states.tokens, idx[:, None], axis=1)[:, 0]

        def host_answer(tokens, length):
            try:
                return np.asarray(answer_fn(np.asarray(tokens), np.asarray(length)), np.int32).reshape(tokens.shape[0])
            except Exception as exc:
                adapter.fail(exc)
                return np.zeros(tokens.shape[0], np.int32)

        return jax.pure_callback(host_answer, jax.ShapeDtypeStruct(states.length.shape, jnp.int32),
                                 states.tokens, states.length, vmap_method="sequential")

    return Generator(init, step, is_done, answer, int(max_steps), host=adapter)


def host_reward_model(score_fn: Callable, outcome_fn: Callable | None = None) -> RewardModel:
    """Wrap Python scoring callables on token arrays as a :class:`RewardModel`.

    ``score_fn(tokens, lengths) -> (n,)`` process rewards in [0, 1] of a batch (NumPy arrays, see
    :func:`host_generator`); ``outcome_fn`` likewise for finished generations (default
    ``score_fn``). The whole batch is scored in one call. If the call raises, the batch is split in
    halves recursively, so that only the particles whose scoring raises lose their work: they get
    reward 0 (and vanish at the next resampling) and a ``RuntimeWarning`` is issued. Values outside
    [0, 1] or NaN are passed through and rejected by the driver with a
    :class:`~bayeskit.errors.DataError`.
    """
    adapter = _HostAdapter("reward_model")

    def robust(fn, tokens, length):
        try:
            adapter.calls += 1
            out = np.asarray(fn(tokens, length), dtype=np.float64).reshape(-1)
            if out.shape[0] != tokens.shape[0]:
                raise DataError(f"the host reward model returned {out.shape[0]} scores for {tokens.shape[0]} particles")
            return out
        except DataError as exc:
            adapter.fail(exc)
            return np.zeros(tokens.shape[0])
        except Exception as exc:
            if tokens.shape[0] == 1:
                adapter.failures += 1
                warnings.warn(f"the reward model raised on one particle ({type(exc).__name__}: {exc}); "
                              "it gets reward 0, the other particles are kept", RuntimeWarning, stacklevel=2)
                return np.zeros(1)
            h = tokens.shape[0] // 2
            return np.concatenate([robust(fn, tokens[:h], length[:h]), robust(fn, tokens[h:], length[h:])])

    def make(fn):
        def host(tokens, length):
            tokens = np.asarray(tokens)
            return robust(fn, tokens, np.asarray(length)).astype(np.float32)

        def score(states: TokenState):
            r = jax.pure_callback(host, jax.ShapeDtypeStruct(states.length.shape, jnp.float32),
                                  states.tokens, states.length, vmap_method="sequential")
            return r.astype(jnp.result_type(float))

        return score

    return RewardModel(make(score_fn), None if outcome_fn is None else make(outcome_fn), host=adapter)

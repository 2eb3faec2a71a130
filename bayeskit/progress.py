"""Progress bars (``bayeskit.progress``): the one convention of the long-running drivers.

Every driver that can run more than a few seconds takes ``progress_bar: bool = False`` (quiet in scripts
and tests; the ``bayeskit`` command line turns bars on, ``--no-progress`` off). Bars come from
``tqdm.auto`` (widgets in a notebook). Two loop shapes get a bar, both here:

* :func:`chunk_loop` (and :func:`run_chunked`, the same over an array of keys): a loop of jitted
  ``scan`` chunks driven from Python (sweeps of particle Gibbs, optimiser steps of ``fit``, LightSB,
  NIW-Meta, SBIRR refinements), the bar advanced between chunks, no host work per step;
* :func:`progress` with :func:`tick`: a loop that runs inside one jitted program (the SMC engine's time
  loop, PPG and PMMH iterations, the inference-time-scaling drivers). ``tick`` is a
  ``jax.debug.callback`` traced in only when the driver's static ``progress_bar`` is True, so the
  program without a bar is unchanged; the values computed are the same either way.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["chunk_loop", "run_chunked", "progress", "tick"]

_OPEN_BARS: list = []  # bars opened by `progress`, innermost last; `tick` advances the innermost


def _tqdm(total, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc)


def chunk_loop(run_chunk, carry, total: int, *, chunk_size: int, progress_bar: bool, desc: str, postfix=None):
    """The one chunked loop: ``run_chunk(carry, start, size) -> (carry, out)`` over steps
    ``[0, total)`` in chunks of at most ``chunk_size``, with a tqdm bar advanced after each chunk.

    Args:
        run_chunk: runs steps ``start .. start + size - 1`` (typically a jitted ``lax.scan``; derive the
            chunk's keys from ``start`` so that the result does not depend on the chunking).
        carry: the initial carry.
        total: the number of steps.
        chunk_size: the most steps per chunk (>= 1).
        progress_bar: show a tqdm bar.
        desc: the bar's label.
        postfix: ``(carry, out) -> dict`` shown on the bar after each chunk, or None.

    Returns:
        ``(carry, outs)``: the final carry and the list of the chunks' outputs.
    """
    total, chunk_size = int(total), max(1, int(chunk_size))
    bar = _tqdm(total, desc) if progress_bar else None
    outs, start = [], 0
    try:
        while start < total:
            size = min(chunk_size, total - start)
            carry, out = run_chunk(carry, start, size)
            outs.append(out)
            start += size
            if bar is not None:
                bar.update(size)
                if postfix is not None:
                    bar.set_postfix(postfix(carry, out))
    finally:
        if bar is not None:
            bar.close()
    return carry, outs


def run_chunked(run_chunk, carry, keys, *, num_chunks: int, progress_bar: bool, desc: str, postfix=None):
    """Apply ``run_chunk(carry, keys[a:b]) -> (carry, outs)`` over ``num_chunks`` slices of ``keys``
    (one slice without a progress bar) and concatenate the outputs along the leading axis.

    Args:
        run_chunk: ``(carry, keys) -> (carry, outs)``, typically a jitted ``lax.scan`` over the keys.
        carry: the initial carry.
        keys: one key per step, ``(total, ...)``.
        num_chunks: slices with a bar (each a host round trip).
        progress_bar: show a tqdm bar (else one slice, no host work).
        desc: the bar's label.
        postfix: ``carry -> dict`` shown on the bar after each chunk, or None.

    Returns:
        ``(carry, outs)`` with ``outs`` concatenated over the slices.
    """
    total = keys.shape[0]
    n_chunks = min(num_chunks, total) if progress_bar else 1
    carry, outs = chunk_loop(lambda c, a, n: run_chunk(c, keys[a:a + n]), carry, total,
                             chunk_size=-(-total // n_chunks), progress_bar=progress_bar, desc=desc,
                             postfix=None if postfix is None else (lambda c, _: postfix(c)))
    return carry, jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=0), *outs)


@contextlib.contextmanager
def progress(enabled: bool, total: int, desc: str):
    """Open a bar of ``total`` steps for the jitted loop run inside the ``with`` block (its :func:`tick`
    calls advance it); a no-op unless ``enabled``. The caller blocks on the results
    (``jax.block_until_ready``) inside the block, so the bar closes when the work is done.

    Args:
        enabled: whether to show the bar.
        total: the number of steps the loop reports.
        desc: the bar's label.
    """
    if not enabled:
        yield None
        return
    bar = _tqdm(int(total), desc)
    _OPEN_BARS.append(bar)
    try:
        yield bar
    finally:
        _OPEN_BARS.remove(bar)
        bar.update(max(0, bar.total - bar.n))
        bar.close()


def _advance(done):
    if _OPEN_BARS:
        bar = _OPEN_BARS[-1]
        n = min(int(np.max(np.asarray(done))), bar.total)
        if n > bar.n:
            bar.update(n - bar.n)


def tick(done, total: int, enabled: bool):
    """Inside a jitted loop: report ``done`` of ``total`` steps to the innermost open :func:`progress`
    bar, at most about 100 times per loop. Traces to nothing unless ``enabled`` (a static bool).

    Args:
        done: the steps done so far (a traced integer; batched under ``vmap``: the maximum is shown).
        total: the loop's number of steps (static).
        enabled: the driver's static ``progress_bar``.
    """
    if not enabled:
        return
    every = max(1, int(total) // 100)
    done = jnp.asarray(done)
    jax.lax.cond((done % every == 0) | (done >= total), lambda d: jax.debug.callback(_advance, d), lambda d: None,
                 done)

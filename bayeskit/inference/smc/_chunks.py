"""Run a jitted ``scan`` chunk by chunk with an optional tqdm bar between chunks (no host work per step)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def run_chunked(run_chunk, carry, keys, *, num_chunks: int, progress_bar: bool, desc: str, postfix=None):
    """Apply ``run_chunk(carry, keys[a:b]) -> (carry, outs)`` over ``num_chunks`` slices of ``keys``
    (one slice without a progress bar) and concatenate the outputs along the leading axis.

    ``postfix(carry) -> dict`` is shown on the bar after each chunk. Returns ``(carry, outs)``.
    """
    total = keys.shape[0]
    n_chunks = min(num_chunks, total) if progress_bar else 1
    bounds = np.linspace(0, total, n_chunks + 1).astype(int)
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc)
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b <= a:
            continue
        carry, out = run_chunk(carry, keys[a:b])
        outs.append(out)
        if bar is not None:
            bar.update(int(b - a))
            if postfix is not None:
                bar.set_postfix(postfix(carry))
    if bar is not None:
        bar.close()
    return carry, jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=0), *outs)

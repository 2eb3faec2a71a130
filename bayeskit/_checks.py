"""Small input validators shared by every driver (Python side, before any compile)."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import numpy as np

from bayeskit.errors import ConfigurationError, DataError


def renamed_kwargs(where: str, kwargs: dict, renames: dict[str, str]) -> dict:
    """Keyword arguments renamed in this release, under their new names, each with a DeprecationWarning.

    The old names stay accepted for one release: a function takes them in ``**kwargs`` and reads the new value
    from the returned dict; a keyword that was never a name of the function raises ``TypeError`` as Python does.

    Args:
        where: the function's public name, for the messages (``"LightSB.fit"``).
        kwargs: the extra keyword arguments the function received.
        renames: old name -> new name.
    """
    out = {}
    for old, value in kwargs.items():
        if old not in renames:
            raise TypeError(f"{where}() got an unexpected keyword argument {old!r}")
        warnings.warn(f"`{old}` of {where} is renamed `{renames[old]}`; the old name will be removed in the next "
                      "release", DeprecationWarning, stacklevel=3)
        out[renames[old]] = value
    return out


def renamed_attribute(where: str, old: str, new: str) -> property:
    """A read-only property ``old`` that returns attribute ``new`` with a DeprecationWarning (an attribute renamed in
    this release; the old name stays for one release).

    Args:
        where: the class's public name, for the message (``"FFBSResult"``).
        old: the old attribute name.
        new: the new attribute name.
    """

    def get(self):
        warnings.warn(f"`{where}.{old}` is renamed `{new}`; the old name will be removed in the next release",
                      DeprecationWarning, stacklevel=2)
        return getattr(self, new)

    get.__doc__ = f"Deprecated name of ``{new}``."
    return property(get)


def check_key(key: Any, name: str = "key") -> jax.Array:
    """Return ``key`` if it is a single ``jax.random`` key (typed or raw uint32[2])."""
    try:
        arr = jax.numpy.asarray(key)
    except TypeError as exc:  # pragma: no cover - exotic inputs
        raise ConfigurationError(f"`{name}` must be a jax.random key, got {type(key).__name__}") from exc
    if jax.dtypes.issubdtype(arr.dtype, jax.dtypes.prng_key):
        if arr.shape != ():
            raise ConfigurationError(f"`{name}` must be a single jax.random key, got a batch of shape {arr.shape}")
        return key
    if arr.dtype != np.uint32 or arr.shape != (2,):
        raise ConfigurationError(
            f"`{name}` must be a jax.random key (jax.random.key(seed) or PRNGKey(seed)), "
            f"got an array of dtype {arr.dtype} and shape {arr.shape}"
        )
    return key


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``int(value)`` if it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigurationError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"`{name}` must be an integer >= {minimum}, got {value}")
    return int(value)


def check_in_interval(value: Any, name: str, low: float, high: float, *, closed: str = "both") -> float:
    """Return ``float(value)`` if it lies in the interval [low, high] (ends per ``closed``)."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"`{name}` must be a number, got {value!r}") from exc
    lo_ok = v >= low if closed in ("both", "left") else v > low
    hi_ok = v <= high if closed in ("both", "right") else v < high
    if not (np.isfinite(v) and lo_ok and hi_ok):
        lb = "[" if closed in ("both", "left") else "("
        rb = "]" if closed in ("both", "right") else ")"
        raise ConfigurationError(f"`{name}` must lie in {lb}{low}, {high}{rb}, got {value}")
    return v


def check_choice(value: Any, name: str, choices) -> Any:
    if value not in choices:
        raise ConfigurationError(f"`{name}` must be one of {sorted(choices)}, got {value!r}")
    return value


def check_finite_array(x: Any, name: str, *, ndim: int | tuple[int, ...] | None = None,
                       shape: tuple | None = None) -> np.ndarray:
    """Check that ``x`` is a numeric array with the expected rank/shape and no NaN/inf values.

    ``shape`` entries of ``None`` match any size. Returns ``x`` unchanged (as given).
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover
        raise DataError(f"`{name}` must be array-like, got {type(x).__name__}") from exc
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"`{name}` must be a numeric array, got dtype {arr.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            raise DataError(f"`{name}` must have {' or '.join(map(str, allowed))} dimensions, got shape {arr.shape}")
    if shape is not None:
        if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise DataError(f"`{name}` must have shape {want}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))
        raise DataError(
            f"`{name}` contains {len(bad)} NaN or infinite value(s), first at index {tuple(bad[0])}"
        )
    return x


def is_traced(*trees) -> bool:
    """Whether any leaf of ``trees`` is a JAX tracer (a driver called inside ``jit``/``vmap``/``grad``: its
    host-side validation, which needs concrete values, is then skipped)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))

"""The result of :func:`bayeskit.bridges.multimarginal` and :func:`bayeskit.bridges.vanilla_sb`."""

from __future__ import annotations

import dataclasses

import numpy as np

from bayeskit.errors import ConfigurationError
from bayeskit.inference.bridges._emd import emd as earth_movers_distance
from bayeskit.inference.bridges._reference import Reference

__all__ = ["MultiMarginalResult"]


@dataclasses.dataclass(frozen=True)
class MultiMarginalResult:
    """Result of :func:`multimarginal` / :func:`vanilla_sb`.

    Attributes:
        trajectories: (num_grid, num_trajectories, D) stitched trajectories of the last pass.
        grid: (num_grid,) time grid of the trajectories.
        times: (M + 1,) snapshot times.
        reference: the reference refitted on the last pass's trajectories.
        reference_history: parameters (flat dicts of arrays) after each refinement.
        snapshot_grid_index: (M + 1,) position of each snapshot time on ``grid``.
        initial_reference: the reference the first pass used.
    """

    trajectories: np.ndarray
    grid: np.ndarray
    times: np.ndarray
    reference: Reference
    reference_history: tuple
    snapshot_grid_index: np.ndarray
    initial_reference: Reference

    @property
    def num_refinements(self) -> int:
        return len(self.reference_history)

    def marginal(self, t: float) -> np.ndarray:
        """Particles (num_trajectories, D) at the grid time closest to ``t`` (linear interpolation between
        the two neighbouring grid times)."""
        if not (self.grid[0] <= t <= self.grid[-1]):
            raise ConfigurationError(f"`t` must lie in [{self.grid[0]}, {self.grid[-1]}], got {t}")
        j = int(np.clip(np.searchsorted(self.grid, t) - 1, 0, len(self.grid) - 2))
        w = (t - self.grid[j]) / (self.grid[j + 1] - self.grid[j])
        return (1 - w) * self.trajectories[j] + w * self.trajectories[j + 1]

    def emd(self, snapshot, t: float) -> float:
        """Earth mover's distance between a (held-out) snapshot observed at ``t`` and the bridge at ``t``."""
        return earth_movers_distance(self.marginal(t), snapshot)

    def to_arviz(self):
        """ArviZ DataTree (docs: ArviZ output): ``posterior`` (the trajectories ``x`` as draws of one chain,
        dims time x dim), ``reference`` (the reference's parameters per refinement)."""
        from bayeskit.diagnostics import one_chain, to_datatree

        ref = {k: np.stack([h[k] for h in self.reference_history]) for k in self.reference_history[0]}
        dims = {"x": ["time", "dim"], **{k: ["refinement"] for k in ref}}
        groups = {"posterior": one_chain({"x": np.moveaxis(np.asarray(self.trajectories), 1, 0)}), "reference": ref}
        return to_datatree(groups, dims=dims, coords={"time": self.grid},
                           attrs={"method": "SBIRR", "reference_family": self.reference.name,
                                  "sigma": self.reference.sigma, "snapshot_times": list(map(float, self.times))})

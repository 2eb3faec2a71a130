"""Sharding particle, chain and episode axes over devices (``jax.sharding``), multi-host start-up.

Single host: ``sharding = particle_sharding()`` spreads the leading (particle) axis over all local
devices; pass it to :func:`bayeskit.smc.particle_filter` (``sharding=``). Inside the jitted loop XLA
partitions the per-particle work and does the global reductions (log-sum-exp of the weights, the
cumulative sum used by resampling) across shards, so resampling uses the *global* weights and the
result equals the unsharded run (random numbers are partitionable: the same key gives the same draws).

Multi-host: call :func:`initialize` (``jax.distributed.initialize``) once per process before anything
else; ``jax.devices()`` then lists every host's devices and the same ``particle_sharding()`` spans
them. Launch one process per host, e.g.::

    # on each host i of n (coordinator = host 0)
    BAYESKIT_COORDINATOR=host0:1234 BAYESKIT_NUM_PROCESSES=n BAYESKIT_PROCESS_ID=i python my_run.py

Testing on one CPU: ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before importing JAX.
"""

from __future__ import annotations

import os

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["particle_mesh", "particle_sharding", "initialize"]


def particle_mesh(devices=None, axis_name: str = "particles") -> Mesh:
    """A one-dimensional device mesh over ``devices`` (default: all devices)."""
    import numpy as np

    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (axis_name,))


def particle_sharding(devices=None, axis_name: str = "particles") -> NamedSharding:
    """A sharding that splits the leading axis of an array over ``devices``.

    The number of particles must be divisible by the number of devices.
    """
    return NamedSharding(particle_mesh(devices, axis_name), PartitionSpec(axis_name))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Start a multi-host run (``jax.distributed.initialize``); arguments default to the
    ``BAYESKIT_COORDINATOR``, ``BAYESKIT_NUM_PROCESSES``, ``BAYESKIT_PROCESS_ID`` variables, then to
    JAX's own cluster auto-detection (SLURM, Kubernetes, ...)."""
    env = os.environ
    coordinator_address = coordinator_address or env.get("BAYESKIT_COORDINATOR")
    if num_processes is None and "BAYESKIT_NUM_PROCESSES" in env:
        num_processes = int(env["BAYESKIT_NUM_PROCESSES"])
    if process_id is None and "BAYESKIT_PROCESS_ID" in env:
        process_id = int(env["BAYESKIT_PROCESS_ID"])
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)

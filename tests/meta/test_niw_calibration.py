"""NIW-Meta's predictive on few-shot sine regression at K = 5 (the example's quick recipe): NLL at most
MAML's, and 90% predictive intervals covering 85-95% of the query points."""

import importlib.util
import os
import types

import jax
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def load_example():
    path = os.path.join(HERE, "..", "..", "examples", "niw_meta.py")
    spec = importlib.util.spec_from_file_location("niw_meta_example_calibration", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_niw_meta_calibrated_at_five_shots(tmp_path):
    example = load_example()
    args = types.SimpleNamespace(steps=150, batch=8, test_tasks=40, samples=16, eta=2e-3,  # the --quick recipe
                                 progress_bar=False)
    rows, _, plots = example.sine_experiment(jax.random.fold_in(jax.random.key(0), 5), 5, args, str(tmp_path))
    niw = rows["NIW-Meta"]
    assert niw["nll"] <= min(rows["MAML (lr 1e-3)"]["nll"], rows["MAML (lr 1e-2)"]["nll"])
    # the 85-95% band is +-0.05 around 0.9; with 40 x 50 query points it spans >= 4 binomial standard errors,
    # so a predictive whose coverage is really outside it fails
    n = np.size(plots["qy"])
    assert 4 * np.sqrt(0.9 * 0.1 / n) <= 0.05
    assert abs(niw["cover90"] - 0.9) <= 0.05, niw

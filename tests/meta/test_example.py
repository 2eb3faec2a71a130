"""The NIW-Meta example runs end to end at --quick size (slow: several minutes on 2 shared cores)."""

import importlib.util
import os

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
def test_niw_meta_example_quick(tmp_path):
    path = os.path.join(HERE, "..", "..", "examples", "niw_meta.py")
    spec = importlib.util.spec_from_file_location("niw_meta_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--quick", "--no-progress", "--outdir", str(tmp_path)])
    assert {"sine_K5", "sine_K10", "class_K1", "class_K5"} <= set(results)
    assert np.isfinite(results["sine_K5"]["NIW-Meta"]["mse"])
    for name in ("niw_sine.png", "niw_classification.png", "niw_meta_table.txt"):
        assert (tmp_path / name).exists()

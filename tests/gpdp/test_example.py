"""The fisheries example end to end at --quick size (slow: several NUTS fits)."""

import importlib.util
import os

import pytest

HERE = os.path.dirname(__file__)


@pytest.mark.slow
def test_fisheries_example_quick(tmp_path):
    path = os.path.join(HERE, "..", "..", "examples", "fisheries_gpdp.py")
    spec = importlib.util.spec_from_file_location("fisheries_gpdp", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(str(tmp_path), quick=True)
    assert out["policy_agreement"]["True"] == {"exact": 50, "paper": 50}
    npv = out["npv"]
    assert npv["GP"]["paper"][1] > 0.9  # published median 0.988
    assert npv["Allen"]["exact"][0] > 0.9  # published 0.990
    assert npv["Ricker"]["exact"][0] < 0.4 and npv["Myers"]["exact"][0] < 0.4  # published 0.22
    for name in ("figure2_fits.png", "figure3_policies.png", "figure5_npv.png"):
        assert (tmp_path / name).exists()

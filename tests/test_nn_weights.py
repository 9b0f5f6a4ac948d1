"""The shipped network weights: present, safe, within budget, and what they achieve."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from qsmflow.nn import inference  # noqa: E402

SHIPPED = ("metaqsm", "qsminvnet", "mesaqsm_0.5x0.5x2.0", "mesaqsm_0.7639x0.7639x3.0")


def test_all_shipped_models_present_and_load():
    avail = inference.available_models()
    for name in SHIPPED:
        assert name in avail, f"{name} weights missing from qsmflow/nn/weights"
        assert (inference.WEIGHTS_DIR / f"{name}.md").exists(), f"{name} has no model card"
        sd = inference.load_state_dict(inference.WEIGHTS_DIR / f"{name}.pt")
        assert all(torch.is_tensor(v) for v in sd.values())
        model, summary = inference.load_model(name)
        assert summary["steps"] > 0 and not model.training
    kinds = {n: avail[n]["config"]["model"]["kind"] for n in SHIPPED}
    assert kinds == {"metaqsm": "metaqsm", "qsminvnet": "qsminvnet",
                     "mesaqsm_0.5x0.5x2.0": "mesaqsm", "mesaqsm_0.7639x0.7639x3.0": "mesaqsm"}


def test_shipped_weights_within_50_mb():
    total = sum((inference.WEIGHTS_DIR / f"{n}.pt").stat().st_size for n in SHIPPED)
    assert total <= 50 * 1024**2


def test_mesa_picks_nearest_voxel_size():
    assert inference.nearest_mesa_model((0.55, 0.5, 2.2)) == "mesaqsm_0.5x0.5x2.0"
    assert inference.nearest_mesa_model((0.8, 0.75, 3.3)) == "mesaqsm_0.7639x0.7639x3.0"


def test_unknown_model_name_is_a_value_error():
    with pytest.raises(ValueError, match="no shipped model"):
        inference.metaqsm(np.zeros((4, 4, 4)), np.ones((4, 4, 4), bool), (1, 1, 1), model="nope")


# ------------------------------------------------------------------------------------ quality
VOXELS = ((0.75, 0.75, 3.0), (0.6, 0.9, 2.2), (1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def small_volumes(shared_data):
    from qsmflow.nn.evaluation import held_out_volume

    return [held_out_volume(i, vs, (64, 64, 32), shared=str(shared_data), stream=7)
            for i, vs in enumerate(VOXELS)]


def _scores(method, vol, **kw):
    from qsmflow import metrics
    from qsmflow.nn.evaluation import run_method

    chi = run_method(method, vol, **kw)
    return (metrics.rmse_percent(chi, vol["chi"], vol["mask"]),
            metrics.correlation(chi, vol["chi"], vol["mask"]))

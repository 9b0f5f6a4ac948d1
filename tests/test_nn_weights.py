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
    total = sum(p.stat().st_size for p in inference.WEIGHTS_DIR.glob("*.pt"))  # every checkpoint
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


# Measured with the shipped reduced CPU weights (2026-11-28; Meta-QSM after 6523 steps) on these
# three 64×64×32 volumes:
#   voxel (mm)        TKD RMSE/r    Meta-QSM     QSMInvNet    Mesa (nearest)
#   0.75×0.75×3.0     78.1 / 0.72   61.0 / 0.81  73.5 / 0.70  63.3 / 0.79
#   0.6×0.9×2.2       58.2 / 0.82   43.8 / 0.90  74.1 / 0.84  48.0 / 0.88
#   1.0×1.0×1.0       45.0 / 0.90   52.8 / 0.86  58.4 / 0.82  99.2 / 0.21 (far from its voxel)
@pytest.mark.parametrize("method", ["metaqsm", "qsminvnet"])
def test_shipped_networks_reconstruct_held_out_volumes(method, small_volumes):
    for vol in small_volumes:
        rmse, r = _scores(method, vol)
        assert r > 0.65, (method, vol["voxel_size"], r)  # a sign flip or wrong geometry: r < 0.3
        assert rmse < 80.0, (method, vol["voxel_size"], rmse)


def test_metaqsm_beats_tkd_on_anisotropic_volumes(small_volumes):
    rm, rr = _scores("metaqsm", small_volumes[0])
    tm, tr = _scores("tkd", small_volumes[0])
    assert rm < tm - 10.0 and rr > tr + 0.05
    rm1, rr1 = _scores("metaqsm", small_volumes[1])
    tm1, tr1 = _scores("tkd", small_volumes[1])
    assert rm1 < tm1 - 8.0 and rr1 > tr1 + 0.05


def test_mesa_beats_tkd_at_its_own_voxel_size(small_volumes):
    vol = small_volumes[0]  # 0.75×0.75×3.0 → mesaqsm_0.7639x0.7639x3.0
    assert _scores("mesaqsm", vol)[0] < _scores("tkd", vol)[0] - 5.0


@pytest.mark.xfail(strict=True, reason="the shipped weights are reduced CPU trainings (1000–6500 steps, width 8); "
                   "the paper target RMSE <= 0.75 x TKD needs the full model trained on a GPU")
def test_metaqsm_meets_paper_target_vs_tkd(small_volumes):
    meta = np.mean([_scores("metaqsm", v)[0] for v in small_volumes])
    tkd = np.mean([_scores("tkd", v)[0] for v in small_volumes])
    assert meta <= 0.75 * tkd

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


# Measured with the shipped reduced CPU weights (2026-11-28; Meta-QSM after 12,723 steps) on these
# three 64×64×32 volumes:
#   voxel (mm)        TKD RMSE/r    Meta-QSM     QSMInvNet    Mesa (nearest)
#   0.75×0.75×3.0     78.1 / 0.72   61.2 / 0.82  73.5 / 0.70  63.3 / 0.79
#   0.6×0.9×2.2       58.2 / 0.82   43.9 / 0.90  74.1 / 0.84  48.0 / 0.88
#   1.0×1.0×1.0       45.0 / 0.90   51.6 / 0.86  58.4 / 0.82  99.2 / 0.21 (far from its voxel)
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


# The same volumes, Meta-QSM followed by the data-consistency step (consistency="auto"), when
# written: 57.8 / 35.7 / 30.3 % (σ from the training range); noise-free: TKD 41.3 / 44.9 / 43.4,
# Meta-QSM 59.1 / 43.4 / 51.5, Meta-QSM + consistency 33.9 / 17.7 / 25.6 % (0.60 × TKD).
def test_data_consistency_improves_the_network(small_volumes, shared_data):
    for vol in small_volumes:
        assert _scores("metaqsm", vol, consistency="auto")[0] < _scores("metaqsm", vol)[0] - 2.0
    clean = [held_out_volume_clean(i, vs, shared_data) for i, vs in enumerate(VOXELS)]
    dc = np.mean([_scores("metaqsm", v, consistency="auto")[0] for v in clean])
    assert dc < 0.75 * np.mean([_scores("tkd", v)[0] for v in clean])
    assert dc < np.mean([_scores("metaqsm", v)[0] for v in clean]) - 15.0


def held_out_volume_clean(i, vs, shared_data):
    from qsmflow.nn.evaluation import held_out_volume

    return held_out_volume(i, vs, (64, 64, 32), shared=str(shared_data), stream=7, noise_ppm=0.0)


@pytest.mark.xfail(strict=True, reason="the shipped weights are reduced CPU trainings (1000–12,700 steps, width 8); "
                   "the paper target RMSE <= 0.75 x TKD needs the full model trained on a GPU")
def test_metaqsm_meets_paper_target_vs_tkd(small_volumes):
    meta = np.mean([_scores("metaqsm", v)[0] for v in small_volumes])
    tkd = np.mean([_scores("tkd", v)[0] for v in small_volumes])
    assert meta <= 0.75 * tkd


def test_noise_free_held_out_volume_is_the_same_volume_with_the_exact_dipole_field(shared_data):
    """Table (n) of bench-nn: the volumes of table (a) with noise-free fields (the papers' protocol)."""
    from qsmflow import physics
    from qsmflow.nn.evaluation import held_out_volume

    kw = dict(voxel_size=(0.7, 0.8, 2.5), shape=(64, 64, 32), shared=str(shared_data), stream=5)
    noisy, clean = held_out_volume(3, **kw), held_out_volume(3, noise_ppm=0.0, **kw)
    m = clean["mask"]
    assert np.array_equal(m, noisy["mask"]) and np.allclose(clean["chi"], noisy["chi"])
    diff = (noisy["field"] - clean["field"])[m]
    assert 1e-5 < diff.std() <= 0.0101 and abs(diff.mean()) < 4 * diff.std() / np.sqrt(diff.size)
    # the clean field is the dipole field of the truth (up to the removed mean χ·forward(mask))
    a = physics.forward_field(clean["chi"], kw["voxel_size"])[m]
    b = physics.forward_field(m.astype(float), kw["voxel_size"])[m]
    coef, *_ = np.linalg.lstsq(np.stack([a, b], 1), clean["field"][m], rcond=None)
    resid = clean["field"][m] - np.stack([a, b], 1) @ coef
    assert abs(coef[0] - 1.0) < 0.02
    assert np.linalg.norm(resid) < 0.02 * np.linalg.norm(clean["field"][m])


def test_consistency_parameter_is_listed_and_checked():
    from qsmflow.inversion import invert, method_parameters

    for m in ("metaqsm", "mesaqsm", "qsminvnet"):
        assert method_parameters(m)["consistency"]["default"] == "off"
    f, mask = np.zeros((16, 16, 16)), np.ones((16, 16, 16), bool)
    with pytest.raises(ValueError, match="consistency must be"):
        invert("metaqsm", f, mask, (1, 1, 1), consistency="yes")


def test_target_rows_compare_the_right_numbers():
    from qsmflow.nn.evaluation import target_rows

    rows = lambda r, s: {"rows": [{"rmse": r, "ssim": s}]}  # noqa: E731
    out = {"a": {"tkd": rows(40.0, 0.80), "metaqsm": rows(29.0, 0.85)},
           "n": {"tkd": rows(40.0, 0.80), "metaqsm": rows(31.0, 0.79)},
           "b0": {"metaqsm": rows(33.0, 0.9), "mesaqsm_0.5x0.5x2.0": rows(30.0, 0.9)},
           "c": {"metaqsm": rows(30.0, 0.9), "mesaqsm_0.5x0.5x2.0": rows(31.0, 0.9),
                 "mesaqsm_0.7639x0.7639x3.0": rows(29.0, 0.9)}}
    got = {r[0]: (r[1], r[2]) for r in target_rows(out)}
    assert got["(a, σ 0–0.01 ppm) metaqsm: RMSE ≤ 0.75 × TKD"] == ("0.72 × TKD", "yes")
    assert got["(n, noise-free) metaqsm: RMSE ≤ 0.75 × TKD"] == ("0.78 × TKD", "no")
    assert got["(n, noise-free) metaqsm: SSIM ≥ TKD"][1] == "no"
    assert got["Meta-QSM within 10 % of mesaqsm_0.5x0.5x2.0 at its voxel size"] == ("1.10 × Mesa", "yes")
    assert got["Meta-QSM better than both Mesa models at an unseen voxel size"][1] == "no"

"""The clinical maps besides χ (qsmflow.maps): R2*/T2* against the phantom's truth, the SWI's
sign (paramagnetic = dark), the minIP, and their DICOM export."""

from __future__ import annotations

import numpy as np
import pytest

from qsmflow import maps, physics
from qsmflow.sims.phantom import LABEL_NAMES, make_head_phantom
from qsmflow.sims.megre import simulate_megre

_LAB = {v: k for k, v in LABEL_NAMES.items()}


@pytest.fixture(scope="module")
def sim3mm():
    """Noise-free 3 mm head (the demo's grid), 4 echoes at 3 T."""
    ph = make_head_phantom(shape=(68, 84, 64), voxel_size=(3.0, 3.0, 3.0), seed=0)
    return ph, simulate_megre(ph, snr=None, phase_offset=False)


def test_r2star_matches_the_phantom_truth(sim3mm):
    ph, sim = sim3mm
    r2, t2 = maps.relaxation_maps(sim.magnitude, sim.te_s)
    b = ph.brain_mask
    rel = np.abs(r2[b] - ph.r2star[b]) / ph.r2star[b]
    # measured: median 0.01 %, 90th percentile 4.9 % (partial volume at CSF/vein edges)
    assert np.median(rel) < 0.01 and np.percentile(rel, 90) < 0.07
    for tissue, tol in (("white_matter", 0.02), ("grey_matter", 0.02),
                        ("globus_pallidus", 0.02), ("haemorrhage", 0.02)):
        s = ph.labels == _LAB[tissue]
        est, true = np.median(r2[s]), np.median(ph.r2star[s])
        assert abs(est - true) < tol * true, f"{tissue}: R2* {est:.1f} vs {true:.1f} 1/s"
    # T2* (ms) = 1000 / R2* (1/s) wherever R2* is measurable; the cap elsewhere
    pos = r2 > 1.0
    assert np.allclose(t2[pos], 1000.0 / r2[pos])
    assert np.all(t2[~pos] == maps.T2STAR_MAX_MS)
    assert 40 < np.median(t2[ph.labels == _LAB["white_matter"]]) < 55  # R2* 20.3 1/s


def test_relaxation_maps_clip_and_cap():
    te = np.array([0.005, 0.010, 0.015])
    m0 = np.ones((4, 4, 4))
    r2_true = np.zeros((4, 4, 4))
    r2_true[0] = -30.0  # a signal that grows: no decay, R2* clipped to 0
    r2_true[1] = 2000.0  # faster than the clip
    r2_true[2] = 25.0
    mag = m0[..., None] * np.exp(-r2_true[..., None] * te)
    r2, t2 = maps.relaxation_maps(mag, te)
    assert np.all(r2[0] == 0) and np.all(t2[0] == maps.T2STAR_MAX_MS)
    assert np.all(r2[1] == maps.R2STAR_MAX) and np.allclose(t2[1], 1000 / maps.R2STAR_MAX)
    assert np.allclose(r2[2], 25.0) and np.allclose(t2[2], 40.0)


def _vein_along_b0(chi_ppm=0.4, b0=3.0):
    """A cylinder of χ along B0 (third axis) in uniform tissue, uniform magnitude: its
    inside field is +χ/3 (paramagnetic, positive frequency); no R2* contrast at all."""
    shape, vs = (48, 48, 48), (1.0, 1.0, 1.0)
    x, y = np.meshgrid(np.arange(48) - 23.5, np.arange(48) - 23.5, indexing="ij")
    vein = np.broadcast_to(((x**2 + y**2) <= 9.0)[..., None], shape)
    chi = np.where(vein, chi_ppm, 0.0)
    field_hz = physics.ppm_to_hz(physics.forward_field(chi, vs, (0, 0, 1)), b0)
    te = np.array([0.005, 0.010, 0.015, 0.020])
    mag = np.ones(shape + (te.size,)) * np.exp(-20.0 * te)
    return vein, field_hz, mag, te


def test_swi_darkens_a_paramagnetic_vein():
    vein, field_hz, mag, te = _vein_along_b0()
    assert np.median(field_hz[vein]) > 10.0  # +χ/3 = 0.133 ppm = 17 Hz at 3 T
    swi, te_swi = maps.clear_swi(mag, te, field_hz)
    assert 0.005 < te_swi < 0.020
    core = vein.copy()
    core[:, :, :8] = core[:, :, -8:] = False  # away from the cylinder's ends
    bg = np.zeros_like(vein)
    bg[:8, :8, 16:32] = True
    ratio = np.median(swi[core]) / np.median(swi[bg])
    # (1 − 2·f·TE)^4 with f = 16.4 Hz, TE = 14.5 ms: measured 0.075; the wrong sign gives 1.01
    assert ratio < 0.2, f"vein/background {ratio:.3f}"
    flipped, _ = maps.clear_swi(mag, te, -field_hz)
    assert np.median(flipped[core]) / np.median(flipped[bg]) > 0.95
    # no phase: the magnitude combination alone (uniform here)
    plain, _ = maps.clear_swi(mag, te, np.zeros_like(field_hz))
    assert np.allclose(plain, plain.flat[0])


def test_swi_of_the_phantom_veins_and_haemorrhage(sim3mm):
    """With the true local field: veins and the haemorrhage darker than white matter, and
    darker than with the phase mask's sign flipped (measured 0.74 / 0.50 vs 0.80 / 0.65)."""
    ph, sim = sim3mm
    b = ph.brain_mask
    local_hz = physics.ppm_to_hz(sim.local_field_ppm, 3.0) * b
    swi, _ = maps.clear_swi(sim.magnitude, sim.te_s, local_hz)
    wrong, _ = maps.clear_swi(sim.magnitude, sim.te_s, -local_hz)
    wm = ph.labels == _LAB["white_matter"]
    for tissue, top in (("vein", 0.8), ("haemorrhage", 0.6)):
        s = (ph.labels == _LAB[tissue]) & b
        ratio = np.median(swi[s]) / np.median(swi[wm])
        ratio_wrong = np.median(wrong[s]) / np.median(wrong[wm])
        assert ratio < top and ratio < ratio_wrong - 0.04, (tissue, ratio, ratio_wrong)


def test_minip_is_the_slab_minimum():
    rng = np.random.default_rng(0)
    vol = rng.random((6, 5, 20))
    mip = maps.minimum_intensity_projection(vol, (1.0, 1.0, 3.0), slab_mm=12.0)
    n = maps.minip_slices(3.0, 12.0)
    assert n == 5  # 4 slices of 3 mm → the nearest odd count
    h = n // 2
    for k in range(20):
        lo, hi = max(0, k - h), min(20, k + h + 1)
        assert np.array_equal(mip[..., k], vol[..., lo:hi].min(axis=-1))
        assert np.all(mip[..., k] <= vol[..., k])
    assert maps.minip_slices(1.0, 12.0) == 13 and maps.minip_slices(20.0, 12.0) == 1


def test_snr_weighted_combination():
    te = np.array([0.01, 0.02])
    mag = np.stack([np.full((2, 2, 2), 3.0), np.full((2, 2, 2), 1.0)], axis=-1)
    # w = m·TE = (0.03, 0.02): (0.03·3 + 0.02·1) / sqrt(0.03² + 0.02²)
    assert np.allclose(maps.combine_magnitude_snr(mag, te), 0.11 / np.sqrt(0.0013))
    assert np.allclose(maps.combine_magnitude_snr(mag[..., :1], te[:1]), 3.0)


def test_maps_export_to_dicom(tmp_path):
    """R2* (1/s) and SWI round-trip through DICOM with their units and a window from 0."""
    import pydicom

    from qsmflow.dicom.export import export_map
    from qsmflow.io import save_nifti

    r2 = np.zeros((8, 9, 4))
    r2[2:6, 2:7] = np.linspace(10.0, 80.0, 4)
    f = save_nifti(tmp_path / "sub-01_R2starmap.nii.gz", r2, np.diag([2.0, 2.0, 3.0, 1.0]))
    src = {"StudyInstanceUID": "1.2.3", "FrameOfReferenceUID": "1.2.4", "PatientID": "P1",
           "SeriesNumber": 5}
    files = export_map(f, tmp_path / "r2", source=src, kind="r2star")
    assert len(files) == 4
    ds = pydicom.dcmread(files[3])
    assert list(ds.ImageType)[2] == "R2STAR" and ds.RescaleType == "1/S"
    assert "1/s" in ds.SeriesDescription and ds.PatientID == "P1"
    back = ds.pixel_array.T * float(ds.RescaleSlope)  # DICOM rows are NIfTI's y
    assert np.allclose(np.sort(np.unique(np.round(back, 2)))[-1], 80.0, atol=0.01)
    assert float(ds.WindowCenter) == pytest.approx(float(ds.WindowWidth) / 2)
    with pytest.raises(ValueError, match="unknown map kind"):
        export_map(f, tmp_path / "x", source=src, kind="flair")


def test_maps_are_workflow_nodes_and_can_be_turned_off():
    from qsmflow.cli import run
    from qsmflow.config import build_config
    from qsmflow.workflows.qsm import clinical_maps_made, init_qsm_wf

    def nodes(**kw):
        return {n.name for n in init_qsm_wf(inversions=["tkd"], **kw)._get_all_nodes()}

    assert {"compute_swi", "map_relaxation"} <= nodes()
    assert not {"compute_swi", "map_relaxation"} & nodes(clinical_maps=False)
    assert not {"compute_swi", "map_relaxation"} & nodes(has_magnitude=False)
    assert clinical_maps_made(True, True, 1) == ("swi", "swi_minip")  # no R2* from one echo
    opts = run.get_parser().parse_args(["in", "out", "participant", "--no-clinical-maps"])
    assert build_config(run._cli_settings(opts)).clinical_maps is False
    opts = run.get_parser().parse_args(["in", "out", "participant"])
    assert build_config(run._cli_settings(opts)).clinical_maps is True

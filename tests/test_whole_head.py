"""Whole-head field of view: the phantom (neck, skull base, face), the realistic simulator
settings (R2* per field strength, fat chemical shift, receive bias) and brain extraction that
holds beyond the brain (issue 12)."""

import numpy as np
import pytest

from qsmflow import masking, physics
from qsmflow.sims import megre
from qsmflow.sims.phantom import LABEL_NAMES, make_whole_head_phantom

L = {v: k for k, v in LABEL_NAMES.items()}


def dice(a, b) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def head():
    """3 mm whole head (fast)."""
    return make_whole_head_phantom((3.0, 3.0, 3.0), seed=0)


def test_whole_head_fov_reaches_from_vertex_into_the_neck(head):
    lab = head.labels
    z_head = np.nonzero(np.any(lab > 0, axis=(0, 1)))[0]
    z_brain = np.nonzero(np.any(head.brain_mask, axis=(0, 1)))[0]
    # the vertex is inside the FOV with air above it, the head continues to the FOV's bottom
    assert z_head[-1] < lab.shape[2] - 1 and z_head[0] == 0
    below = lab[:, :, :z_brain[0]]
    mm_below = z_brain[0] * head.voxel_size[2]
    assert mm_below >= 20.0, f"only {mm_below} mm of neck below the brain"
    # neck anatomy below the brain: muscle, fat, vertebrae, cord in its canal, airway
    for name in ("muscle", "fat", "bone", "spinal_cord", "csf", "air_sinus"):
        assert (below == L[name]).sum() > 0, f"{name} missing in the neck"
    # the cord below the brain is not brain; the brain mask is brain tissue only
    assert not head.brain_mask[lab == L["spinal_cord"]].any()
    assert 1100 <= head.brain_mask.sum() * np.prod(head.voxel_size) / 1000 <= 1700  # ml


def test_r2star_follows_the_field_strength():
    r = np.array([16.0, 21.0])
    np.testing.assert_allclose(megre.r2star_at_field(r, 3.0), r)
    np.testing.assert_allclose(megre.r2star_at_field(r, 7.0), 2.0 * r)
    np.testing.assert_allclose(megre.r2star_at_field(r, 1.5), 0.8 * r)
    np.testing.assert_allclose(megre.r2star_at_field(r, 5.0), 1.5 * r)


def test_fat_precesses_at_its_chemical_shift(head):
    te = (0.004, 0.006, 0.008)
    sim = megre.simulate_megre(head, te, 3.0, snr=None, phase_offset=False, dephasing=False,
                                  fat_shift=True)
    fat = head.fat_fraction > 0.99
    water = (head.fat_fraction == 0) & head.brain_mask
    assert fat.sum() > 100
    f_fat = physics.ppm_to_hz(megre.FAT_SHIFT_PPM, 3.0)  # -434 Hz at 3 T
    assert f_fat == pytest.approx(-434.4, abs=0.5)
    dphi = physics.wrap(sim.phase[..., 1] - sim.phase[..., 0])
    expected = physics.wrap(2 * np.pi * (sim.total_field_hz + f_fat) * 0.002)
    # (a fat fraction just below 1 leaves a few mrad of water beating)
    np.testing.assert_allclose(physics.wrap(dphi[fat] - expected[fat]), 0.0, atol=0.02)
    expected_w = physics.wrap(2 * np.pi * sim.total_field_hz * 0.002)
    np.testing.assert_allclose(physics.wrap(dphi[water] - expected_w[water]), 0.0, atol=1e-3)


def test_receive_bias_is_smooth_brighter_at_the_edge_with_mean_one():
    b = megre.receive_bias((40, 40, 40), np.random.default_rng(0), 0.3)
    assert b.mean() == pytest.approx(1.0, abs=1e-5)
    corner = b[[0, -1]][:, [0, -1]][:, :, [0, -1]].mean()
    assert corner > 1.15 * b[20, 20, 20]
    assert np.abs(np.diff(b, axis=0)).max() < 0.05  # smooth


@pytest.fixture(scope="module", params=["3T-1mm", "7T-1mm"])
def hard_case(request):
    """2 mm whole head whose non-brain tissue looks like brain (M0, R2*): the case on which a
    magnitude/morphology mask keeps the neck."""
    ph, sim = megre.simulate_case(request.param, coarsen=2.0, seed=4,
                                     contrast=megre.BRAIN_LIKE_CONTRAST)
    return request.param, ph, sim


def test_a_mask_that_keeps_the_neck_fails_the_dice_test(hard_case):
    _, ph, sim = hard_case
    truth = ph.brain_mask
    # the truth plus the tissue of the neck and skull base connected to it
    z0 = np.nonzero(np.any(truth, axis=(0, 1)))[0][0]
    neck = np.zeros_like(truth)
    neck[:, :, : z0 + 15] = (ph.labels[:, :, : z0 + 15] > 0) & ~ph.brain_mask[:, :, : z0 + 15]
    neck &= masking.dilate_ball(truth, ph.voxel_size, 30.0)
    assert dice(truth | neck, truth) < 0.95
    # and the morphology mask does keep the neck on this contrast
    m = masking.magnitude_mask(sim.magnitude, sim.voxel_size, te_s=sim.te_s)
    assert dice(m, truth) < 0.9
    assert (m & ~truth).sum() * np.prod(sim.voxel_size) / 1000 > 150  # ml outside the brain


@pytest.mark.skipif(not masking.deepbet_available(), reason="deepbet not installed")
def test_default_extractor_holds_on_whole_head_at_3T_and_7T(hard_case):
    case, ph, sim = hard_case
    assert masking.auto_mask_method(sim.magnitude.shape, sim.voxel_size) == "deepbet"
    m = masking.deepbet_mask(sim.magnitude, sim.affine, threads=2)
    d = dice(m, ph.brain_mask)
    assert d >= 0.95, f"{case}: Dice {d:.3f}"
    ml = np.prod(sim.voxel_size) / 1000
    outside = (m & ~ph.brain_mask).sum() * ml  # a one-voxel (2 mm) rim is ~100 ml
    assert outside < 100, f"{case}: {outside:.0f} ml outside the brain"
    z0 = np.nonzero(np.any(ph.brain_mask, axis=(0, 1)))[0][0]
    assert m[:, :, :z0].sum() * ml < 3, f"{case}: the mask reaches into the neck"


@pytest.mark.skipif(not masking.deepbet_available(), reason="deepbet not installed")
def test_deepbet_follows_the_array_orientation(hard_case):
    """A sagittal-like array order (axes permuted, affine permuted with them) gives the same
    mask, permuted: the network sees the head in RAS+ whatever the storage order."""
    case, ph, sim = hard_case
    if case != "3T-1mm":
        pytest.skip("one case is enough")
    perm = (2, 0, 1)
    mag = np.transpose(sim.magnitude, perm + (3,))
    aff = sim.affine.copy()
    aff[:3, :3] = sim.affine[:3, list(perm)]
    m = masking.deepbet_mask(mag, aff, threads=2)
    assert dice(m, np.transpose(ph.brain_mask, perm)) >= 0.95


def test_auto_uses_the_magnitude_mask_on_slabs_and_crops():
    assert masking.auto_mask_method((76, 128, 10), (2.19, 2.19, 3.0)) == "magnitude"
    assert masking.auto_mask_method((51, 51, 41), (0.47, 0.47, 1.0)) == "magnitude"
    assert not masking.covers_head((192, 232, 30), (1.0, 1.0, 3.0))
    assert masking.covers_head((64, 80, 60), (3.0, 3.0, 3.0))

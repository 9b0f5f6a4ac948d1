"""Head phantom: anatomy (labels, χ, R2*), orientation, resampling to any grid, seeds, fields."""

import numpy as np
import pytest

from qsmflow.sims.phantom import (BRAIN_LABELS, CHI_AIR, LABEL_NAMES, NONBRAIN_CHI_MAX,
                             make_head_phantom)

L = {v: k for k, v in LABEL_NAMES.items()}


@pytest.fixture(scope="module")
def ph():
    """2.5 mm isotropic, covering the head."""
    return make_head_phantom((76, 92, 72), (2.5, 2.5, 2.5), seed=0)


def _median(p, name, arr=None):
    arr = p.chi if arr is None else arr
    sel = p.labels == L[name]
    assert sel.any(), f"{name} missing"
    return float(np.median(arr[sel]))


def test_all_tissues_present_with_literature_chi(ph):
    present = set(np.unique(ph.labels).tolist())
    expected = set(LABEL_NAMES) - {L["spinal_cord"]}  # the cord below the head: neck_mm > 0
    assert present == expected, f"missing: {expected - present}"
    lit = {"globus_pallidus": 0.19, "putamen": 0.09, "caudate": 0.07, "thalamus": 0.04,
           "red_nucleus": 0.13, "substantia_nigra": 0.16, "dentate_nucleus": 0.12,
           "white_matter": -0.03}
    for name, value in lit.items():
        # per-seed jitter ≤ 20 %, partial volume at 2.5 mm pulls small nuclei towards WM
        assert _median(ph, name) == pytest.approx(value, rel=0.45, abs=0.02), name
    assert 0.015 <= _median(ph, "grey_matter") <= 0.06
    assert abs(_median(ph, "csf")) < 0.01
    assert _median(ph, "globus_pallidus") > _median(ph, "putamen") > _median(ph, "thalamus") \
        > _median(ph, "white_matter")
    assert _median(ph, "vein") > 0.25
    # lesions: a diamagnetic calcification and a paramagnetic haemorrhage in the brain
    chi_b = ph.chi_brain
    assert chi_b[ph.labels == L["calcification"]].min() < -0.2
    assert chi_b[ph.labels == L["haemorrhage"]].max() > 0.45
    # background sources: air +9.4 ppm (outside the head and in sinuses), bone ≈ −2 ppm
    assert _median(ph, "background_air") == pytest.approx(CHI_AIR)
    assert _median(ph, "air_sinus") == pytest.approx(CHI_AIR, rel=0.05)
    assert _median(ph, "bone") == pytest.approx(-2.0, rel=0.1)


def test_masks_m0_r2star(ph):
    assert ph.brain_mask.sum() * 2.5**3 / 1000 == pytest.approx(1500, rel=0.3)  # mL, brain+CSF
    assert np.all(ph.head_mask[ph.brain_mask])
    inside = np.isin(ph.labels, BRAIN_LABELS)
    # at 2.5 mm ~9 % of brain-labelled voxels carry bone/air χ by partial volume and are left out
    assert (inside & ph.brain_mask).sum() > 0.88 * inside.sum()
    # ... so no brain-mask voxel holds non-brain χ: the background field is harmonic inside
    nonbrain = ph.chi - ph.chi_in
    assert np.abs(nonbrain[ph.brain_mask]).max() <= NONBRAIN_CHI_MAX + 1e-6
    assert np.abs(nonbrain[ph.head_mask & ~ph.brain_mask]).max() > 1.0  # bone/air are outside
    assert np.all(ph.chi_brain[~ph.brain_mask] == 0)
    air = ph.m0[ph.labels == L["background_air"]]
    assert np.median(air) == 0 and air.mean() < 0.02  # only partial volume at the skin
    r2 = lambda n: _median(ph, n, ph.r2star)  # noqa: E731
    assert r2("globus_pallidus") > r2("white_matter") > r2("grey_matter") > r2("csf")
    assert 10 < r2("white_matter") < 30  # 1/s at 3 T
    assert ph.m0.min() >= 0 and ph.r2star.min() >= 0


def test_orientation_is_ras(ph):
    """RAS+ array axes: anterior = +axis 1, superior = +axis 2, the head roughly symmetric in x."""
    def centroid(name):
        return np.argwhere(ph.labels == L[name]).mean(0)

    thal, gp = centroid("thalamus"), centroid("globus_pallidus")
    dent, sinus = centroid("dentate_nucleus"), centroid("air_sinus")
    assert gp[1] > thal[1]                      # pallidum anterior to the thalamus
    assert dent[2] < thal[2] - 8 and dent[1] < thal[1]  # dentate inferior and posterior
    assert sinus[1] > thal[1] + 10 and sinus[2] < thal[2]  # sinuses anterior, inferior
    cx = (np.array(ph.shape) - 1) / 2
    assert abs(np.argwhere(ph.brain_mask).mean(0)[0] - cx[0]) < 4  # brain centred left-right
    np.testing.assert_allclose(ph.affine[:3, :3], np.diag([2.5] * 3))
    np.testing.assert_allclose(ph.affine[:3, :3] @ cx + ph.affine[:3, 3], 0, atol=1e-9)


def test_any_grid_anisotropic_odd_same_anatomy(ph):
    """An anisotropic, odd grid shows the same head in mm (catches axis-order mistakes)."""
    vs = (2.0, 3.0, 3.5)
    a = make_head_phantom((95, 61, 51), vs, seed=0)
    assert a.shape == (95, 61, 51) and a.labels.dtype == np.int16
    assert a.voxel_size == vs
    np.testing.assert_allclose(np.diag(a.affine)[:3], vs)
    vol = lambda p: p.brain_mask.sum() * np.prod(p.voxel_size)  # noqa: E731
    assert vol(a) == pytest.approx(vol(ph), rel=0.04)

    def centroid_mm(p, name):
        i = np.argwhere(p.labels == L[name]).mean(0)
        return p.affine[:3, :3] @ i + p.affine[:3, 3]

    for name in ("thalamus", "putamen", "vein", "bone"):
        np.testing.assert_allclose(centroid_mm(a, name), centroid_mm(ph, name), atol=3.0,
                                   err_msg=name)
    # partial volume: χ of WM/CSF boundary voxels takes intermediate values
    wm = np.median(a.chi_brain[a.labels == L["white_matter"]])
    n_mixed = ((a.chi_brain > wm + 0.005) & (a.chi_brain < -0.002) & a.brain_mask).sum()
    assert n_mixed > 100


def test_seed_reproducible_and_varied():
    a = make_head_phantom((40, 48, 38), (5.0, 5.0, 5.0), seed=3)
    b = make_head_phantom((40, 48, 38), (5.0, 5.0, 5.0), seed=3)
    c = make_head_phantom((40, 48, 38), (5.0, 5.0, 5.0), seed=4)
    np.testing.assert_array_equal(a.chi, b.chi)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.r2star, b.r2star)
    brain = a.brain_mask | c.brain_mask
    assert np.abs(a.chi_brain - c.chi_brain)[brain].mean() > 0.008  # ppm
    assert (a.labels != c.labels).mean() > 0.01


def test_fields_background_dominates(ph):
    b0 = (0.0, 0.0, 1.0)
    np.testing.assert_allclose(ph._b0(None), b0)  # the default B0 comes from the affine
    local = ph.local_field_ppm(b0)
    total = ph.total_field_ppm(b0)
    m = ph.brain_mask
    assert np.abs(local[~m]).max() < 0.2            # sources only inside the brain
    assert 0.005 < local[m].std() < 0.1             # local field: a few hundredths of a ppm
    bg = (total - local)[m]
    assert bg.std() > 5 * local[m].std()            # air/bone background ≫ local field
    assert np.percentile(np.abs(bg), 99) < 5.0      # but a few ppm at most in the brain
    # near the sinuses / ear canals the background is strongest: inferior slices > superior
    z = np.argwhere(m)[:, 2]
    zc = np.median(z)
    lo = np.abs((total - local))[m][z < zc - 8].std()
    hi = np.abs((total - local))[m][z > zc + 8].std()
    assert lo > hi


def test_small_fov_is_a_crop_with_the_same_total_field():
    """A FOV that cuts the head is the centre crop of a larger one, and its total field still
    includes the head outside the FOV (no artificial tissue/air edge at the FOV border)."""
    big = make_head_phantom((40, 48, 38), (5.0, 5.0, 5.0), seed=2)
    small = make_head_phantom((20, 24, 16), (5.0, 5.0, 5.0), seed=2)
    crop = (slice(10, 30), slice(12, 36), slice(11, 27))
    np.testing.assert_array_equal(small.labels, big.labels[crop])
    np.testing.assert_allclose(small.chi, big.chi[crop], atol=1e-6)
    assert small.chi_ext is not None
    fov = tuple(slice(o, o + n) for o, n in zip(small.ext_offset, small.shape))
    np.testing.assert_allclose(small.chi_ext[fov], small.chi, atol=1e-6)  # texture included: the
    # total field's brain part must be the local field's source, or the background is not harmonic
    f_big = big.total_field_ppm()[crop]
    f_small = small.total_field_ppm()
    m = small.brain_mask
    assert np.abs(f_small - f_big)[m].max() < 0.01 * np.abs(f_big[m]).max()
    # without the extension the FOV edge creates a large spurious field
    cut = make_head_phantom((20, 24, 16), (5.0, 5.0, 5.0), seed=2, extend_fov=False)
    assert np.abs(cut.total_field_ppm() - f_big)[m].std() > 0.1


@pytest.mark.parametrize("kw, msg", [({"shape": (64, 64)}, "three sizes"),
                                     ({"voxel_size": (1.0, 0.0, 1.0)}, "positive"),
                                     ({"voxel_size": (1.0, 1.0)}, "3 entries")])
def test_bad_input(kw, msg):
    with pytest.raises(ValueError, match=msg):
        make_head_phantom(**kw)

"""Brain masking against phantom truth, analytic erosion, real data and bad input."""

import json

import nibabel as nib
import numpy as np
import pytest

from qsmflow import masking, physics


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def sim():
    from qsmflow.phantom import make_head_phantom
    from qsmflow.simulate import simulate_megre

    p = make_head_phantom((96, 112, 96), (2.0, 2.0, 2.0), seed=1)
    return p, simulate_megre(p, snr=50, seed=4, dephasing=False)


def test_phantom_dice(sim):
    p, s = sim
    m = masking.magnitude_mask(s.magnitude, p.voxel_size, te_s=s.te_s)
    assert _dice(m, p.brain_mask) >= 0.95
    # without the R2* criterion the face and scalp stay attached: the criterion matters
    m2 = masking.magnitude_mask(s.magnitude, p.voxel_size)
    assert _dice(m2, p.brain_mask) < 0.9


def test_erosion_is_in_mm_on_anisotropic_voxels():
    vs = (1.0, 1.0, 2.5)
    shape = (64, 64, 26)
    ball = physics.sphere_mask(shape, vs, 25)
    er = masking.erode_ball(ball, vs, 5.0)
    ref = physics.sphere_mask(shape, vs, 20.0)
    assert _dice(er, ref) > 0.97
    # through magnitude_mask: a bright ball in noise, eroded by 5 mm
    rng = np.random.default_rng(0)
    mag = np.where(ball, 1.0, 0.0) + 0.02 * np.abs(rng.standard_normal(shape))
    m = masking.magnitude_mask(mag, vs, erode_mm=5.0, open_mm=0)
    assert _dice(m, ref) > 0.97
    assert abs(m.sum() / ref.sum() - 1) < 0.08  # (20/25)^3 of the ball, not a voxel count


def test_phase_quality_mask_drops_bad_region():
    shape = (30, 30, 30)
    resid = np.full(shape, 0.02)
    resid[5:10, 5:10, 5:10] = 1.0  # inconsistent echoes (e.g. flow, fat, noise)
    base = np.zeros(shape, bool)
    base[2:28, 2:28, 2:28] = True
    q = masking.phase_quality_mask(resid, mask=base)
    assert not q[5:10, 5:10, 5:10].any() and q[15, 15, 15]
    combined = masking.combine_masks(base, q)
    assert combined.sum() == base.sum() - 125
    # a smooth phase is coherent, a random one is not
    rng = np.random.default_rng(0)
    x = np.linspace(0, 6 * np.pi, 30)[:, None, None] * np.ones(shape)
    g = 6 * np.pi / 29  # rad per voxel along axis 0: |mean of 3 phasors| = (1 + 2 cos g) / 3
    np.testing.assert_allclose(masking.phase_coherence(physics.wrap(x))[5:25, 5:25, 5:25],
                               (1 + 2 * np.cos(g)) / 3, atol=1e-6)
    assert np.median(masking.phase_coherence(rng.uniform(-np.pi, np.pi, shape))) < 0.4


def test_real_data_mask(shared_data):
    """The real crop lies inside the brain: the magnitude mask keeps it whole; the fit-residual
    quality mask drops only the few inconsistent voxels (vessel, noise)."""
    from qsmflow import phase as ph

    d = shared_data / "real-gre-small"
    img = nib.load(str(d / "Mag.nii"))
    mag = np.asarray(img.dataobj, np.float32)
    vs = physics.voxel_size_from_affine(img.affine)
    te = [0.004, 0.008, 0.012]
    m = masking.magnitude_mask(mag, vs, te_s=te, r2star_max=None, open_mm=0)
    assert m.mean() > 0.95
    phase, _ = ph.load_phase_rad(d / "Phase.nii", {"Units": "arbitrary"})
    fit = ph.fit_multi_echo(ph.unwrap_echoes(phase, mag, te, vs, mask=m), mag, te, m)
    q = masking.phase_quality_mask(fit.residual, mask=m)
    dropped = 1 - q.sum() / m.sum()
    assert 0.0005 < dropped < 0.1
    assert np.median(fit.residual[m & ~q]) > 5 * np.median(fit.residual[q])


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        masking.magnitude_mask(np.full((8, 8, 8), np.nan), (1, 1, 1))
    with pytest.raises(ValueError, match="zero"):
        masking.magnitude_mask(np.zeros((8, 8, 8)), (1, 1, 1))
    with pytest.raises(ValueError, match="erod"):
        masking.magnitude_mask(np.pad(np.ones((4, 4, 4)), 4), (1, 1, 1), erode_mm=5, open_mm=0)
    with pytest.raises(ValueError, match="overlap"):
        a = np.zeros((5, 5, 5), bool)
        b = a.copy()
        a[0, 0, 0] = b[4, 4, 4] = True
        masking.combine_masks(a, b)
    with pytest.raises(ValueError, match="method"):
        masking.mask_files([tmp_path / "x.nii"], tmp_path / "m.nii.gz", method="deep")
    if not masking.bet_available():
        with pytest.raises(ValueError, match="bet"):
            masking.bet_mask(tmp_path / "x.nii", tmp_path / "m.nii.gz")


def test_mask_files(tmp_path, sim):
    p, s = sim
    files = []
    for k, te in enumerate(s.te_s):
        f = tmp_path / f"echo-{k + 1}_part-mag.nii.gz"
        nib.save(nib.Nifti1Image(s.magnitude[..., k], p.affine), str(f))
        f.with_name(f.name.replace(".nii.gz", ".json")).write_text(json.dumps({"EchoTime": te}))
        files.append(f)
    out = masking.mask_files(files, tmp_path / "out" / "brain_mask.nii.gz")
    m = nib.load(str(out)).get_fdata() > 0
    assert _dice(m, p.brain_mask) >= 0.95  # TEs read from the sidecars
    assert json.loads((tmp_path / "out" / "brain_mask.json").read_text())["Type"] == "Brain"

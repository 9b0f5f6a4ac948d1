"""qsmflow.physics against analytic solutions: sphere field, B0 direction, units, kernels."""

import numpy as np
import pytest
from scipy.special import erfc

from qsmflow import physics

OBLIQUE = (0.3, -0.4, 0.866)  # |b| = 1.0002, normalised by the code


# --------------------------------------------------------------------------------------------
# field of a magnetised sphere
# --------------------------------------------------------------------------------------------
def _smooth_sphere(shape, voxel_size, center, radius, sigma):
    """χ = 1 ppm sphere (mm) with a Gaussian-blurred edge (σ mm) and its exact field.

    For any spherically symmetric χ(r) the field (Lorentz-corrected, D = 1/3 − (k·b̂)²/k²) is
    (3cos²θ − 1)·[M(r)/(4π r³) − χ(r)/3] with M(r) the moment enclosed within r: outside it is
    the point-dipole field of a uniformly magnetised sphere, deep inside it is 0. The smooth
    edge removes the staircase error so the tolerance can be tight.
    """
    g = np.meshgrid(*[(np.arange(n) - c) * d for n, c, d in zip(shape, center, voxel_size)],
                    indexing="ij")
    r = np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2)
    profile = lambda s: 0.5 * erfc((s - radius) / (np.sqrt(2) * sigma))  # noqa: E731
    chi = profile(r)
    s = np.linspace(0.0, r.max() + 1.0, 20001)
    integrand = profile(s) * s**2
    m = np.concatenate([[0.0], np.cumsum(0.5 * (integrand[1:] + integrand[:-1]) * np.diff(s))])
    m_r = 4 * np.pi * np.interp(r, s, m)
    return chi, g, r, m_r, profile(r)


def _sphere_case(shape, vs, b0, center, radius=4.0, sigma=1.0, field_fn=physics.forward_field):
    chi, g, r, m_r, chi_r = _smooth_sphere(shape, vs, center, radius, sigma)
    f = field_fn(chi, vs, b0)
    b = np.asarray(b0, float) / np.linalg.norm(b0)
    rs = np.maximum(r, 1e-9)
    cos = (g[0] * b[0] + g[1] * b[1] + g[2] * b[2]) / rs
    ana = (3 * cos**2 - 1) * (m_r / (4 * np.pi * rs**3) - chi_r / 3)
    ana[r < 1e-6] = 0.0  # the limit at the centre
    out = r >= 2 * radius
    inside = r <= 0.5 * radius
    err_out = np.linalg.norm(f[out] - ana[out]) / np.linalg.norm(ana[out])
    return err_out, f[inside], ana[inside]


SPHERE_CASES = {
    # shape, voxel size (mm), B0 direction (voxel axes), sphere centre (voxels, off-centre
    # so that a wrap-around would put an image source close to the far side)
    "iso-B0z-odd": ((33, 33, 33), (1.0, 1.0, 1.0), (0, 0, 1), (16, 16, 16)),
    "iso-oblique-odd": ((33, 33, 33), (1.0, 1.0, 1.0), OBLIQUE, (12, 18, 15)),
    "aniso-oblique-odd": ((35, 41, 29), (1.0, 0.8, 1.3), OBLIQUE, (13, 17, 12)),
    "aniso-B0z-mixed": ((34, 41, 28), (1.2, 0.9, 1.1), (0, 0, 1), (15, 22, 13)),
    "aniso-oblique-even": ((32, 38, 28), (0.9, 1.2, 1.1), (0.5, 0.5, 0.7071), (14, 20, 13)),
}


@pytest.mark.parametrize("case", list(SPHERE_CASES))
def test_sphere_field_matches_analytic(case):
    shape, vs, b0, center = SPHERE_CASES[case]
    err_out, f_in, ana_in = _sphere_case(shape, vs, b0, center)
    # measured 0.4-0.7 %; the bugs below give 29-200 %
    assert err_out < 0.02, f"{case}: {100 * err_out:.2f} % error outside r >= 2a"
    # Lorentz sphere: ≈ 0 inside (χ = 1 ppm), and equal to the exact value of the smooth sphere
    assert np.abs(f_in).max() < 0.015
    assert np.abs(f_in - ana_in).max() < 0.003


@pytest.mark.parametrize("bug", ["voxel sizes reversed", "isotropic voxels", "B0 axes 0<->1",
                                 "B0 x sign", "field sign"])
def test_sphere_check_catches_axis_and_sign_bugs(bug):
    """The sphere comparison above must fail for the classic mistakes (so it can fail)."""
    orig = physics.forward_field
    buggy = {
        "voxel sizes reversed": lambda x, v, b: orig(x, v[::-1], b),
        "isotropic voxels": lambda x, v, b: orig(x, (1.0, 1.0, 1.0), b),
        "B0 axes 0<->1": lambda x, v, b: orig(x, v, np.asarray(b)[[1, 0, 2]]),
        "B0 x sign": lambda x, v, b: orig(x, v, np.asarray(b) * [-1, 1, 1]),
        "field sign": lambda x, v, b: -orig(x, v, b),
    }[bug]
    shape, vs, b0, center = SPHERE_CASES["aniso-oblique-odd"]
    err_out, _, _ = _sphere_case(shape, vs, b0, center, field_fn=buggy)
    assert err_out > 0.2


def test_forward_field_paramagnetic_sign_and_linearity():
    """Positive χ → positive field along B0 next to the source, negative beside it; linear."""
    chi, _, _, _, _ = _smooth_sphere((31, 31, 31), (1, 1, 1), (15, 15, 15), 3.0, 1.0)
    f = physics.forward_field(chi, (1, 1, 1), (0, 0, 1))
    assert f[15, 15, 25] > 0.005 and f[25, 15, 15] < -0.002  # on-axis +, equator −
    f2 = physics.forward_field(2.5 * chi, (1, 1, 1), (0, 0, 1))
    np.testing.assert_allclose(f2, 2.5 * f, atol=1e-12)


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------
def test_dipole_kernel_values_per_axis():
    """D(k) = 1/3 − (k·b̂)²/|k|² with k from fftfreq(n, d) of each axis (axis order, d)."""
    shape, vs = (5, 6, 7), (1.0, 2.0, 3.0)
    d = physics.dipole_kernel(shape, vs, (0, 0, 1))
    assert d.shape == shape and d[0, 0, 0] == 0.0
    assert d[1, 0, 0] == pytest.approx(1 / 3) and d[0, 0, 1] == pytest.approx(-2 / 3)
    ky, kz = 1 / (6 * 2.0), 1 / (7 * 3.0)
    assert d[0, 1, 1] == pytest.approx(1 / 3 - kz**2 / (ky**2 + kz**2))
    dx = physics.dipole_kernel(shape, vs, (2, 0, 0))  # B0 along axis 0, not normalised
    assert dx[1, 0, 0] == pytest.approx(-2 / 3) and dx[0, 1, 1] == pytest.approx(1 / 3)
    # even function of k: D(−k) = D(k) on the FFT grid (odd sizes pair up exactly)
    assert np.allclose(d, np.roll(d[::-1, ::-1, ::-1], 1, axis=(0, 1, 2)))
    assert d.min() >= -2 / 3 - 1e-12 and d.max() <= 1 / 3 + 1e-12


def test_smv_kernel_radius_in_mm_on_anisotropic_grid():
    shape, vs, rad = (20, 21, 22), (1.0, 0.5, 2.0), 4.0
    s = physics.smv_kernel(shape, vs, rad)
    assert s[0, 0, 0] == pytest.approx(1.0)
    ball = np.fft.ifftn(s).real
    assert ball.sum() == pytest.approx(1.0)
    support = ball > 1e-9
    # 4 mm = 4 voxels on axis 0, 8 on axis 1, 2 on axis 2 (wrap-around indices)
    assert support[4, 0, 0] and not support[5, 0, 0]
    assert support[0, 8, 0] and not support[0, 9, 0]
    assert support[0, 0, 2] and not support[0, 0, 3] and support[0, 0, -2]
    # mean of a constant is the constant
    x = np.full(shape, 3.0)
    np.testing.assert_allclose(physics.convolve_kspace(x, s), x, atol=1e-12)
    with pytest.raises(ValueError, match="radius"):
        physics.smv_kernel(shape, vs, 0.0)


def test_pad_crop_roundtrip_and_fast_sizes():
    ps = physics.padded_shape((33, 41, 29))
    assert all(p >= 2 * s for p, s in zip(ps, (33, 41, 29)))
    x = np.random.default_rng(0).standard_normal((33, 41, 29))
    np.testing.assert_array_equal(physics.crop_array(physics.pad_array(x, ps), x.shape), x)
    with pytest.raises(ValueError):
        physics.pad_array(x, (10, 10, 10))


# --------------------------------------------------------------------------------------------
# B0 direction from the affine
# --------------------------------------------------------------------------------------------
def _rx(deg):
    a = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def test_b0_direction_axial_sagittal_oblique_qfac():
    vs = np.diag([0.8, 0.9, 2.5])
    axial = np.eye(4)
    axial[:3, :3] = vs
    np.testing.assert_allclose(physics.b0_direction_from_affine(axial), [0, 0, 1], atol=1e-12)
    # sagittal: array axis 0 runs A→P... along world y, axis 1 along world z, axis 2 along x
    sag = np.eye(4)
    sag[:3, :3] = np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, 1.0, 0]]) @ vs
    np.testing.assert_allclose(physics.b0_direction_from_affine(sag), [0, 1, 0], atol=1e-12)
    # oblique: slab tilted 20° about x → b̂ = (0, sin 20°, cos 20°) in voxel axes
    obl = np.eye(4)
    obl[:3, :3] = _rx(20.0) @ vs
    a = np.deg2rad(20.0)
    np.testing.assert_allclose(physics.b0_direction_from_affine(obl), [0, np.sin(a), np.cos(a)],
                               atol=1e-12)
    # qfac = −1: a flipped third column (slices stored inferior→superior reversed)
    flip = obl.copy()
    flip[:3, 2] *= -1
    np.testing.assert_allclose(physics.b0_direction_from_affine(flip),
                               [0, np.sin(a), -np.cos(a)], atol=1e-12)
    # 3x3 accepted; a sidecar B0_dir wins and is normalised
    np.testing.assert_allclose(physics.b0_direction_from_affine(obl[:3, :3]),
                               physics.b0_direction_from_affine(obl))
    np.testing.assert_allclose(physics.b0_direction_from_affine(obl, sidecar_b0_dir=[0, 0, 2]),
                               [0, 0, 1])
    assert physics.voxel_size_from_affine(obl) == pytest.approx((0.8, 0.9, 2.5))


def test_b0_direction_bad_affine():
    with pytest.raises(ValueError, match="4x4"):
        physics.b0_direction_from_affine(np.eye(2))
    bad = np.eye(4)
    bad[:3, 1] = 0
    with pytest.raises(ValueError, match="zero-length"):
        physics.b0_direction_from_affine(bad)


# --------------------------------------------------------------------------------------------
# units
# --------------------------------------------------------------------------------------------
def test_unit_conversions_absolute_and_roundtrip():
    assert physics.ppm_to_hz(1.0, 3.0) == pytest.approx(127.7324, abs=1e-3)
    assert physics.ppm_to_hz(1.0, 7.0) == pytest.approx(298.0424, abs=1e-3)
    assert physics.rad_to_hz(2 * np.pi, 0.01) == pytest.approx(100.0)
    assert physics.hz_to_rad(25.0, 0.02) == pytest.approx(np.pi)
    x = np.random.default_rng(1).uniform(-3, 3, 50)
    np.testing.assert_allclose(physics.hz_to_ppm(physics.ppm_to_hz(x, 2.89), 2.89), x)
    np.testing.assert_allclose(physics.rad_to_ppm(physics.ppm_to_rad(x, 0.012, 3.0), 0.012, 3.0),
                               x)
    np.testing.assert_allclose(physics.rad_to_hz(physics.hz_to_rad(x, 0.004), 0.004), x)
    # 0.1 ppm at 3 T and TE = 20 ms is 2π·12.77 Hz·0.02 s = 1.605 rad
    assert physics.ppm_to_rad(0.1, 0.02, 3.0) == pytest.approx(1.6051, abs=1e-4)


def test_wrap_half_open_interval():
    w = physics.wrap(np.array([-np.pi, np.pi, 0.5, 2 * np.pi + 0.5, -2 * np.pi - 0.5]))
    np.testing.assert_allclose(w, [np.pi, np.pi, 0.5, 0.5, -0.5], atol=1e-12)
    x = np.random.default_rng(2).uniform(-50, 50, 1000)
    w = physics.wrap(x)
    assert np.all(w > -np.pi) and np.all(w <= np.pi)
    np.testing.assert_allclose(np.exp(1j * w), np.exp(1j * x), atol=1e-9)


# --------------------------------------------------------------------------------------------
# bad input → ValueError that names the fix
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vs, msg", [((1.0, 1.0), "3 entries"), ((1.0, 0.0, 1.0), "positive"),
                                     ((1.0, -1.0, 1.0), "positive"),
                                     ((1.0, np.nan, 1.0), "positive")])
def test_bad_voxel_size(vs, msg):
    with pytest.raises(ValueError, match=msg):
        physics.check_voxel_size(vs)
    with pytest.raises(ValueError):
        physics.forward_field(np.zeros((4, 4, 4)), vs)


def test_bad_b0_te_field_strength_and_shapes():
    with pytest.raises(ValueError, match="zero length"):
        physics.dipole_kernel((4, 4, 4), (1, 1, 1), (0, 0, 0))
    with pytest.raises(ValueError, match="3-vector"):
        physics.check_b0_dir((0, 1))
    with pytest.raises(ValueError, match="milliseconds"):
        physics.check_echo_times([4.0, 8.0, 12.0])
    with pytest.raises(ValueError, match="increasing"):
        physics.check_echo_times([0.008, 0.004])
    with pytest.raises(ValueError, match="positive"):
        physics.check_echo_times([0.0, 0.004])
    with pytest.raises(ValueError, match="no echo"):
        physics.check_echo_times([])
    np.testing.assert_allclose(physics.check_echo_times(0.004), [0.004])
    with pytest.raises(ValueError, match="tesla"):
        physics.check_field_strength(3000)  # mT
    with pytest.raises(ValueError, match="tesla"):
        physics.ppm_to_hz(1.0, -3.0)
    with pytest.raises(ValueError, match="3D"):
        physics.forward_field(np.zeros((8, 8)), (1, 1, 1))
    with pytest.raises(ValueError, match="NaN"):
        physics.forward_field(np.full((4, 4, 4), np.nan), (1, 1, 1))
    with pytest.raises(ValueError, match="shape"):
        physics.dipole_kernel((4, 4), (1, 1, 1))


def test_b0_direction_through_a_nifti_with_qfac_minus_one(tmp_path):
    """A left-handed affine is stored with qfac = −1; B0 read back from the file is the same."""
    from qsmflow.io import load_nifti, save_nifti

    aff = np.eye(4)
    aff[:3, :3] = _rx(-12.0) @ np.diag([1.0, 1.2, -2.0])  # flipped slice axis
    p = save_nifti(tmp_path / "x.nii.gz", np.zeros((4, 5, 6), np.float32), aff)
    _, aff2, hdr = load_nifti(p)
    assert hdr["pixdim"][0] == -1  # qfac
    a = np.deg2rad(-12.0)
    np.testing.assert_allclose(physics.b0_direction_from_affine(aff2),
                               [0, np.sin(a), -np.cos(a)], atol=1e-6)


def test_fft_threads_are_passed_down_not_put_in_the_environment(monkeypatch):
    """A step's thread count reaches the core's FFTs (``use_workers``, what the interfaces
    use) without touching the environment that child processes inherit."""
    import os

    monkeypatch.setenv("QSMFLOW_NUM_THREADS", "2")
    before = dict(os.environ)
    assert physics.fft_workers() == 2
    with physics.use_workers(3):
        assert physics.fft_workers() == 3 and dict(os.environ) == before
        with physics.use_workers(1):
            assert physics.fft_workers() == 1
        assert physics.fft_workers() == 3
    assert physics.fft_workers() == 2 and dict(os.environ) == before


def test_core_dispatchers_take_workers(monkeypatch):
    """``workers=`` of unwrap_echoes, remove_background and invert reaches the FFTs of the
    method they run (and only for that call)."""
    from qsmflow import bgremoval, inversion, phase

    monkeypatch.setenv("QSMFLOW_NUM_THREADS", "2")
    seen = []

    def spy(*args, **kw):
        seen.append(physics.fft_workers())
        return args[0] if len(args) > 2 else (args[0], args[1])

    monkeypatch.setitem(bgremoval.METHODS, "resharp", spy)
    monkeypatch.setattr(phase, "laplacian_unwrap", lambda ph, vs, mask=None: spy(ph, vs, mask))
    shape = (6, 6, 6)
    mask = np.ones(shape, bool)
    bgremoval.remove_background("resharp", np.zeros(shape), mask, (1, 1, 1), workers=3)
    phase.unwrap_echoes(np.zeros(shape + (2,)), None, [0.004, 0.008], (1, 1, 1),
                        method="laplacian", workers=4)
    monkeypatch.setattr(inversion, "get_method",
                        lambda name: lambda f, m, vs, b, **kw: spy(f, m, vs, b))
    monkeypatch.setattr(inversion, "resolved_parameters", lambda name, **kw: {})
    inversion.invert("tkd", np.zeros(shape), mask, (1, 1, 1), workers=5)
    bgremoval.remove_background("resharp", np.zeros(shape), mask, (1, 1, 1))
    assert seen == [3, 4, 4, 5, 2]

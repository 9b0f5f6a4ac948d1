"""Each interface on small volumes: files in → core function → files out, with the numbers
checked against known answers (units Hz ↔ ppm, echo order, signs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qsmflow import bgremoval, inversion, physics
from qsmflow.interfaces import (BackgroundRemoval, DerivativesSink, DipoleInversion,
                                MultiEchoFit, ReportFigures, ScalePhase)
from qsmflow.io import load_nifti, save_nifti

VS = (1.5, 1.5, 2.0)
SHAPE = (32, 32, 24)


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _affine(vs=VS):
    return np.diag([*vs, 1.0])


def _ball(radius_mm, centre=None):
    return physics.sphere_mask(SHAPE, VS, radius_mm, centre)


def test_scale_phase_orders_echoes_by_echo_time(cwd):
    rng = np.random.default_rng(0)
    tes = [0.012, 0.004, 0.008]  # file order is not TE order
    phase_files, mag_files, sidecars = [], [], []
    for i, te in enumerate(tes):
        ph = physics.wrap(2 * np.pi * 30.0 * te + rng.normal(0, 0.01, SHAPE))
        phase_files.append(str(save_nifti(cwd / f"p{i}.nii.gz", ph, _affine())))
        mag_files.append(str(save_nifti(cwd / f"m{i}.nii.gz", np.full(SHAPE, 1.0 + i), _affine())))
        sidecars.append({"EchoTime": te, "Units": "rad"})
    res = ScalePhase(phase_files=phase_files, magnitude_files=mag_files, sidecars=sidecars).run()
    assert res.outputs.echo_times == [0.004, 0.008, 0.012]
    mag = load_nifti(res.outputs.out_magnitude)[0]
    assert mag.shape == SHAPE + (3,)
    assert [mag[0, 0, 0, k] for k in range(3)] == [2.0, 3.0, 1.0]  # follows the TE order
    rss = load_nifti(res.outputs.out_magnitude_rss)[0]
    assert rss[0, 0, 0] == pytest.approx(np.sqrt(1 + 4 + 9), rel=1e-5)
    ph = load_nifti(res.outputs.out_phase)[0]
    assert np.median(ph[..., 0]) == pytest.approx(2 * np.pi * 30 * 0.004, abs=0.01)


def test_scale_phase_real_data_arbitrary_units(cwd, shared_data):
    src = shared_data / "real-gre-small" / "Phase.nii"
    res = ScalePhase(phase_files=[str(src)], magnitude_files=[str(src.with_name("Mag.nii"))],
                     sidecars=[{"EchoTime": [0.004, 0.008, 0.012], "Units": "arbitrary"}]).run()
    ph = load_nifti(res.outputs.out_phase)[0]
    assert ph.shape == (51, 51, 41, 3)
    assert -np.pi - 1e-3 <= ph.min() < -3.0 and 3.0 < ph.max() <= np.pi + 1e-3


def test_multi_echo_fit_recovers_a_wrapping_field(cwd):
    te = np.array([0.004, 0.008, 0.012, 0.016])
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    field = 80.0 * x + 30.0 * y * z + 10.0          # Hz: wraps from the 2nd echo on
    mask = _ball(20.0)
    phase = physics.wrap(2 * np.pi * field[..., None] * te + 0.3)
    assert np.abs(2 * np.pi * field[mask, None] * te).max() > 2 * np.pi
    p = save_nifti(cwd / "phase.nii.gz", phase, _affine())
    m = save_nifti(cwd / "mag.nii.gz", np.ones(SHAPE + (4,)), _affine())
    mk = save_nifti(cwd / "mask.nii.gz", mask, _affine())
    res = MultiEchoFit(in_phase=str(p), in_magnitude=str(m), mask=str(mk),
                       echo_times=te.tolist(), unwrapping="region-growing").run()
    est = load_nifti(res.outputs.out_field)[0]
    assert np.abs(est[mask] - field[mask]).max() < 0.5  # Hz: no 2π error anywhere
    assert load_nifti(res.outputs.out_noise)[0].shape == SHAPE


def _sphere_fields(b0=3.0):
    """χ (ppm): a 0.2 ppm ball inside a 'brain' ball, and a strong source outside it."""
    brain = _ball(16.0)
    chi_in = 0.2 * _ball(6.0, (18, 14, 12))
    chi_out = 5.0 * _ball(4.0, (16, 16, 1))  # below the brain
    local = physics.forward_field(chi_in, VS)
    total = physics.forward_field(chi_in + chi_out, VS)
    return brain, chi_in, physics.ppm_to_hz(local, b0), physics.ppm_to_hz(total, b0)


def test_background_removal_keeps_the_local_field_in_hz(cwd):
    brain, _, local_hz, total_hz = _sphere_fields()
    f = save_nifti(cwd / "total.nii.gz", total_hz, _affine())
    m = save_nifti(cwd / "brain.nii.gz", brain, _affine())
    res = BackgroundRemoval(in_field=str(f), mask=str(m), method="resharp",
                            params={"radius_mm": 4.0}).run()
    est = load_nifti(res.outputs.out_field)[0]
    em = load_nifti(res.outputs.out_mask)[0] > 0
    assert em.sum() > 0.2 * brain.sum() and not (em & ~brain).any()
    err = np.linalg.norm(est[em] - local_hz[em])
    before = np.linalg.norm(total_hz[em] - local_hz[em])
    assert err < 0.3 * before  # most of the background is gone, units kept (Hz)
    # the interface passes the geometry of the file (anisotropic voxels) to the core
    core, _ = bgremoval.remove_background("resharp", total_hz, brain, VS, (0, 0, 1),
                                          radius_mm=4.0)
    assert np.allclose(est[em], core[em], atol=1e-3 * np.abs(core[em]).max())
    assert res.outputs.out_meta["BackgroundRemoval"] == "resharp"


def test_dipole_inversion_converts_hz_to_ppm_and_references(cwd):
    brain, chi, local_hz, _ = _sphere_fields(b0=7.0)
    f = save_nifti(cwd / "local.nii.gz", local_hz, _affine())
    m = save_nifti(cwd / "brain.nii.gz", brain, _affine())
    res = DipoleInversion(local_field=str(f), mask=str(m), b0_tesla=7.0, method="tkd").run()
    est = load_nifti(res.outputs.out_file)[0]
    assert abs(est[brain].mean()) < 1e-4                    # mean in the mask = 0
    ref = chi - chi[brain].mean()
    slope = float(np.dot(est[brain], ref[brain]) / np.dot(ref[brain], ref[brain]))
    assert 0.6 < slope < 1.1                                 # TKD underestimates a little
    meta = res.outputs.out_meta
    assert meta["Method"] == "tkd" and meta["Parameters"]["threshold"] == 0.2
    assert "mean" in meta["Reference"] and meta["MagneticFieldStrength"] == 7.0


def test_nonlinear_inversions_take_the_acquisitions_phase_scale(cwd):
    """MEDI / FANSI get s = 2π·γ̄·B0·mean(TE) from the echo times and field strength (issue 17
    item 4), not the fixed 3 T / 20 ms scale; the sidecar records it; a user's value wins."""
    brain, _, local_hz, _ = _sphere_fields(b0=7.0)
    f = save_nifti(cwd / "local.nii.gz", local_hz, _affine())
    m = save_nifti(cwd / "brain.nii.gz", brain, _affine())
    te = [0.003, 0.006, 0.009, 0.012, 0.015]
    expected = 2 * np.pi * 42.57747892e6 * 7.0 * 0.009 * 1e-6    # rad per ppm at TE 9 ms, 7 T
    assert abs(expected - 16.9) < 0.05 and abs(expected - 16.05) > 0.5

    def scale(method, **params):
        res = DipoleInversion(local_field=str(f), mask=str(m), b0_tesla=7.0, method=method,
                              echo_times=te, params={"max_iter": 2, **params}).run()
        return res.outputs.out_meta["Parameters"].get("rad_per_ppm")

    assert scale("medi") == pytest.approx(expected, rel=1e-6)
    assert scale("fansi") == pytest.approx(expected, rel=1e-6)
    assert scale("fansi", rad_per_ppm=5.0) == 5.0
    assert inversion.acquisition_parameters("tkd", 7.0, te) == {}
    with pytest.raises(ValueError, match="milliseconds"):
        inversion.acquisition_parameters("medi", 7.0, [3.0, 6.0])


def test_derivatives_sink_writes_atomically_and_refuses_escapes(cwd):
    src = save_nifti(cwd / "chi.nii.gz", np.ones((3, 3, 3)), _affine())
    out = cwd / "deriv"
    res = DerivativesSink(in_file=[str(src)], base_directory=str(out),
                          relpath=["sub-01/anat/sub-01_desc-tkd_Chimap.nii.gz"],
                          sidecar={"Units": "ppm", "Method": "x"}, meta={"Method": "tkd"}).run()
    dst = out / "sub-01/anat/sub-01_desc-tkd_Chimap.nii.gz"
    assert res.outputs.out_file == str(dst) and dst.exists()  # one file: not a list
    assert json.loads(dst.with_name("sub-01_desc-tkd_Chimap.json").read_text()) == {
        "Units": "ppm", "Method": "tkd"}
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(".")]  # no temp left
    with pytest.raises(ValueError, match="escapes"):
        DerivativesSink(in_file=[str(src)], base_directory=str(out),
                        relpath=["../evil.nii.gz"]).run()
    assert not (cwd / "evil.nii.gz").exists()


def test_report_figures(cwd):
    brain, chi, local_hz, total_hz = _sphere_fields()
    files = {k: str(save_nifti(cwd / f"{k}.nii.gz", v, _affine())) for k, v in (
        ("mask", brain), ("total", total_hz), ("local", local_hz), ("chi1", chi),
        ("chi2", 0.5 * chi), ("mag", brain * 100.0))}
    res = ReportFigures(magnitude=files["mag"], mask=files["mask"], total_field=files["total"],
                        local_field=files["local"], chi_maps=[files["chi1"], files["chi2"]],
                        chi_names=["tkd", "medi"], prefix="sub-01").run()
    figs = res.outputs.out_figures
    assert [f.rsplit("_", 1)[1] for f in figs] == ["mask.png", "field.png", "chi.png"]
    for f in figs:
        with open(f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    # every χ map on one figure: one row per method, so taller than the one-row mask figure
    import matplotlib.image as mpimg

    assert mpimg.imread(figs[2]).shape[0] > 1.5 * mpimg.imread(figs[0]).shape[0]

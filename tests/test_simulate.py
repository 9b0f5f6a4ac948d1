"""MEGRE simulator (signal equations, noise, seeds) and BIDS writer (names, sidecars, validator)."""

import json
import shutil

import numpy as np
import pytest

from qsmflow import physics
from qsmflow.io import load_nifti, run_bids_validator
from qsmflow.sims.phantom import make_head_phantom
from qsmflow.sims.megre import (make_demo_dataset, simulate_megre, truth_file,
                                 write_bids_dataset)

TE = (0.004, 0.009, 0.014)


@pytest.fixture(scope="module")
def ph():
    return make_head_phantom((40, 48, 38), (5.0, 5.0, 5.0), seed=1)


def test_noise_free_signal_equations(ph):
    b0 = (0.0, 0.3, 0.95)
    sim = simulate_megre(ph, te_s=TE, b0_tesla=7.0, b0_dir=b0, snr=None, bipolar_rad=0.4, seed=2, dephasing=False)
    assert sim.magnitude.shape == ph.shape + (3,) and sim.phase.shape == ph.shape + (3,)
    f_hz = physics.ppm_to_hz(ph.total_field_ppm(b0), 7.0)
    np.testing.assert_allclose(sim.total_field_hz, f_hz, atol=1e-9)
    assert np.ptp(sim.phase_offset_rad) > 0.1  # a spatially varying φ0
    for n, t in enumerate(TE):
        expected = sim.phase_offset_rad + 2 * np.pi * f_hz * t + (0.2 if n % 2 == 0 else -0.2)
        d = np.angle(np.exp(1j * (sim.phase[..., n] - expected)))
        assert np.abs(d).max() < 1e-5, f"echo {n + 1}"
        assert sim.phase[..., n].min() > -np.pi - 1e-6 and sim.phase[..., n].max() <= np.pi + 1e-6
        np.testing.assert_allclose(sim.magnitude[..., n], ph.m0 * np.exp(-ph.r2star * t),
                                   rtol=1e-5, atol=1e-7)
    # the background field is large enough to wrap at the last echo, somewhere in the head
    unwrapped = sim.phase_offset_rad + 2 * np.pi * f_hz * TE[-1]
    assert np.abs(unwrapped[ph.head_mask]).max() > np.pi
    np.testing.assert_allclose(sim.b0_dir, np.array(b0) / np.linalg.norm(b0))
    np.testing.assert_allclose(sim.local_field_ppm, ph.local_field_ppm(b0), atol=1e-12)


def test_no_phase_offset_and_default_b0(ph):
    sim = simulate_megre(ph, te_s=TE, snr=0, phase_offset=False, dephasing=False)
    np.testing.assert_allclose(sim.b0_dir, [0, 0, 1])  # axial affine
    expected = physics.wrap(2 * np.pi * sim.total_field_hz * TE[0])
    d = np.angle(np.exp(1j * (sim.phase[..., 0] - expected)))
    assert np.abs(d).max() < 1e-5
    # 1 ppm = 127.73 Hz at 3 T: the stored field is the ppm field times γ̄·B0
    np.testing.assert_allclose(sim.total_field_hz, ph.total_field_ppm() * 127.7324, rtol=1e-5)


def test_noise_level_and_seed(ph):
    snr = 50.0
    a = simulate_megre(ph, te_s=TE, snr=snr, seed=5, dephasing=False)
    b = simulate_megre(ph, te_s=TE, snr=snr, seed=5, dephasing=False)
    c = simulate_megre(ph, te_s=TE, snr=snr, seed=6, dephasing=False)
    np.testing.assert_array_equal(a.magnitude, b.magnitude)
    np.testing.assert_array_equal(a.phase, b.phase)
    assert not np.array_equal(a.magnitude, c.magnitude)
    clean = ph.m0 * np.exp(-ph.r2star * TE[0])
    sigma = clean[ph.brain_mask].mean() / snr
    assert a.noise_sigma == pytest.approx(sigma)
    # air far from the head: pure noise, Rayleigh with mean σ·√(π/2)
    air = (ph.m0 == 0) & ~ph.head_mask
    assert a.magnitude[..., 0][air].mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.05)
    # in the brain: magnitude noise ≈ σ, phase noise ≈ σ / signal
    m = ph.brain_mask & (clean > 0.5)
    assert np.std(a.magnitude[..., 0][m] - clean[m]) == pytest.approx(sigma, rel=0.1)


def test_bad_input(ph):
    with pytest.raises(ValueError, match="milliseconds"):
        simulate_megre(ph, te_s=(4, 8, 12))
    with pytest.raises(ValueError, match="bipolar_rad"):
        simulate_megre(ph, te_s=TE, bipolar_rad=np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="snr"):
        simulate_megre(ph, te_s=TE, snr=-5)
    with pytest.raises(ValueError, match="zero length"):
        simulate_megre(ph, te_s=TE, b0_dir=(0, 0, 0))
    with pytest.raises(ValueError, match="tesla"):
        simulate_megre(ph, te_s=TE, b0_tesla=3000)


@pytest.fixture(scope="module")
def bids_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim") / "bids"
    write_bids_dataset(root, subjects=("01", "02"), sessions=("pre", "post"), runs=None,
                       shape=(36, 44, 36), voxel_size=(5.5, 5.5, 5.5), te_s=TE, b0_tesla=3.0,
                       snr=80, oblique_deg=15.0, seed=4)
    return root


def test_bids_layout_sidecars_and_geometry(bids_root):
    d = bids_root / "sub-02" / "ses-post" / "anat"
    names = sorted(p.name for p in d.iterdir())
    assert len(names) == 12  # 3 echoes × (mag, phase) × (nii.gz, json)
    mag = d / "sub-02_ses-post_echo-2_part-mag_MEGRE.nii.gz"
    pha = d / "sub-02_ses-post_echo-2_part-phase_MEGRE.nii.gz"
    sm = json.loads(mag.with_name(mag.name.replace(".nii.gz", ".json")).read_text())
    sp = json.loads(pha.with_name(pha.name.replace(".nii.gz", ".json")).read_text())
    assert sm["EchoTime"] == pytest.approx(TE[1]) and sp["Units"] == "rad"
    assert sm["MagneticFieldStrength"] == 3.0 and sm["Manufacturer"]
    assert "Units" not in sm
    data, aff, _ = load_nifti(pha)
    assert data.shape == (36, 44, 36) and np.abs(data).max() <= np.pi + 1e-5
    # the oblique acquisition: 15° about left-right → B0 = (0, sin15°, cos15°) in voxel axes
    a = np.deg2rad(15.0)
    np.testing.assert_allclose(physics.b0_direction_from_affine(aff), [0, np.sin(a), np.cos(a)],
                               atol=1e-5)
    assert physics.voxel_size_from_affine(aff) == pytest.approx((5.5,) * 3, abs=1e-5)
    # truth: same grid; sessions of one subject share the anatomy, subjects differ
    t = bids_root / "derivatives" / "qsmflow-truth"
    chi_pre = load_nifti(t / "sub-02/ses-pre/anat/sub-02_ses-pre_desc-truth_Chimap.nii.gz")[0]
    chi_post, aff_t, _ = load_nifti(
        t / "sub-02/ses-post/anat/sub-02_ses-post_desc-truth_Chimap.nii.gz")
    chi_1 = load_nifti(t / "sub-01/ses-pre/anat/sub-01_ses-pre_desc-truth_Chimap.nii.gz")[0]
    np.testing.assert_allclose(aff_t, aff, atol=1e-5)
    np.testing.assert_array_equal(chi_pre, chi_post)
    assert np.abs(chi_pre - chi_1).mean() > 1e-3
    mask = load_nifti(t / "sub-02/ses-post/anat/sub-02_ses-post_desc-brain_mask.nii.gz")[0] > 0
    assert np.all(chi_post[~mask] == 0) and mask.sum() > 1000
    # noise differs between sessions, the truth field maps exist in Hz and ppm
    p_pre = load_nifti(
        bids_root / "sub-02/ses-pre/anat/sub-02_ses-pre_echo-2_part-phase_MEGRE.nii.gz")[0]
    assert not np.array_equal(p_pre, data)
    f = json.loads(
        (t / "sub-02/ses-post/fmap/sub-02_ses-post_desc-total_fieldmap.json").read_text())
    assert f["Units"] == "Hz"
    assert (t / "desc-truth_dseg.tsv").read_text().startswith("index\tname")
    assert (bids_root / "participants.tsv").read_text().split() == ["participant_id", "sub-01",
                                                                    "sub-02"]


@pytest.mark.skipif(shutil.which("bids-validator-deno") is None,
                    reason="bids-validator-deno not installed")
def test_bids_validator_raw_and_truth(bids_root):
    for root in (bids_root, bids_root / "derivatives" / "qsmflow-truth"):
        errors, _ = run_bids_validator(root)
        assert errors == [], [(e.get("code"), e.get("location")) for e in errors]


def test_demo_dataset_small_and_valid(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", n_subjects=1, seed=0)
    files = sorted((root / "sub-01" / "anat").glob("*_MEGRE.nii.gz"))
    assert len(files) == 8
    data, aff, _ = load_nifti(files[0])
    assert data.size <= 400_000
    d = json.loads((root / "dataset_description.json").read_text())
    assert d["DatasetType"] == "raw"
    assert (root / "derivatives/qsmflow-truth/sub-01/anat/sub-01_desc-truth_Chimap.nii.gz").exists()
    assert truth_file(root, "01", "truth", "Chimap") == (
        root / "derivatives/qsmflow-truth/sub-01/anat/sub-01_desc-truth_Chimap.nii.gz")
    assert truth_file(root, "01", "local", "fieldmap", "fmap").exists()
    if shutil.which("bids-validator-deno"):
        errors, _ = run_bids_validator(root)
        assert errors == []


def test_bids_naming_helpers(tmp_path):
    from qsmflow.bids import (bids_filename, bids_path, parse_filename,
                              write_dataset_description)

    ents = {"part": "phase", "echo": 2, "run": 1, "sub": "01", "ses": "pre", "acq": "fast"}
    name = bids_filename(ents, "MEGRE", "nii.gz")
    assert name == "sub-01_ses-pre_acq-fast_run-1_echo-2_part-phase_MEGRE.nii.gz"
    assert bids_filename({"sub": "sub-02", "desc": "brain"}, "mask") == \
        "sub-02_desc-brain_mask.nii.gz"
    assert bids_filename({"sub": "01", "ses": None, "space": "orig", "desc": "x"}, "Chimap",
                         ".json") == "sub-01_space-orig_desc-x_Chimap.json"
    ents2, suffix, ext = parse_filename(name)
    assert suffix == "MEGRE" and ext == ".nii.gz" and ents2["echo"] == "2"
    assert bids_path("/r", ents, "MEGRE").as_posix() == f"/r/sub-01/ses-pre/anat/{name}"
    with pytest.raises(ValueError, match="unknown BIDS entities"):
        bids_filename({"sub": "01", "subject": "01"}, "T1w")
    with pytest.raises(ValueError, match="alphanumeric"):
        bids_filename({"sub": "01_a"}, "T1w")
    with pytest.raises(ValueError, match="'sub'"):
        bids_filename({"ses": "1"}, "T1w")
    d = write_dataset_description(tmp_path, "x", "derivative")
    desc = json.loads(d.read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "qsmflow"
    with pytest.raises(ValueError, match="raw"):
        write_dataset_description(tmp_path, "x", "derived")
    with pytest.raises(ValueError, match="n_subjects"):
        make_demo_dataset(tmp_path / "d", n_subjects=0)


def test_intravoxel_dephasing_signal_loss():
    """A field ramp of G Hz per voxel leaves |sinc(G·TE)| of the signal per axis: none at a
    uniform field, ≈ 0 where G·TE = 1 (a full cycle across the voxel)."""
    from qsmflow.sims.megre import dephasing_factor, dephasing_gradients
    x = np.arange(10.0)[:, None, None] * np.ones((10, 4, 4))
    g = dephasing_gradients(50.0 * x)  # 50 Hz per voxel along axis 0
    assert g[0] == pytest.approx(50.0) and np.all(g[1] == 0) and np.all(g[2] == 0)
    assert np.allclose(dephasing_factor(g, 0.01), np.sinc(0.5))  # 2/π
    assert np.allclose(dephasing_factor(g, 0.02), 0.0, atol=1e-12)
    assert np.allclose(dephasing_factor([np.zeros((2, 2, 2))] * 3, 0.02), 1.0)

"""Background field removal (RESHARP, V-SHARP, PDF) against analytic and phantom truth."""


import nibabel as nib
import numpy as np
import pytest

from qsmflow import bgremoval as bg
from qsmflow import metrics, physics

METHODS = ("resharp", "vsharp", "pdf")
#: the published 6 mm RESHARP (qsmflow's default before the whole-head study): its eroded mask
#: is the evaluation region of the analytic scenes
R6 = {"radius_mm": 6.0, "lam": 1e-4, "edge_mm": None}


def _scene(voxel_size=(1.5, 1.5, 1.5), fov_mm=(96, 96, 96), b0_dir=(0, 0, 1), head=True):
    """A spherical 'brain' (r 30 mm) with three χ spheres inside, in a head (r 44 mm) with a
    bone shell and an air sinus, surrounded by air: returns total field, true local field
    (ppm), brain mask and voxel size (mm).

    Fields are computed on a 2× finer grid and block-averaged, as an acquisition averages over
    its voxels: a sampled oblique dipole kernel is discontinuous at the edge of k-space, and
    on the acquisition grid itself a sharp 9.4 ppm air edge would leave a non-harmonic
    Nyquist-band ripple inside the brain that no background removal could remove.
    """
    vs = np.asarray(voxel_size, float)
    shape = tuple(int(round(f / d)) for f, d in zip(fov_mm, vs))
    fvs = vs / 2
    fshape = tuple(2 * n for n in shape)
    fc = (np.asarray(fshape) - 1) / 2.0

    def ball(r, off=(0, 0, 0)):
        return physics.sphere_mask(fshape, fvs, r, center=fc + np.asarray(off) / fvs)

    chi_in = 0.1 * ball(7, (4, 6, 2)) - 0.08 * ball(6, (-10, -6, -3)) + 0.05 * ball(5, (0, 14, 9))
    chi_out = 9.4 * ball(8, (30, 0, 30))  # a sinus-like air ball beside the brain
    if head:
        chi_out = chi_out + 9.4 * (~ball(44)) - 2.0 * (ball(38) & ~ball(34))

    def down(x):
        return x.reshape(shape[0], 2, shape[1], 2, shape[2], 2).mean(axis=(1, 3, 5))

    local = down(physics.forward_field(chi_in, fvs, b0_dir))
    total = local + down(physics.forward_field(chi_out, fvs, b0_dir))
    brain = physics.sphere_mask(shape, vs, 30)
    return total, local, brain, tuple(vs)


@pytest.fixture(scope="module")
def iso():
    return _scene()


@pytest.fixture(scope="module")
def common(iso):
    """The evaluation mask: the brain eroded by the 6 mm RESHARP kernel (inside every
    method's valid region)."""
    return bg.resharp(iso[0], iso[2], iso[3], **R6)[1]


@pytest.mark.parametrize("method,tol", [("resharp", 30.0), ("vsharp", 25.0), ("pdf", 25.0)])
def test_analytic_scene(iso, common, method, tol):
    total, local, mask, vs = iso
    loc, em = bg.remove_background(method, total, mask, vs, (0, 0, 1))
    assert em.sum() > 0.3 * mask.sum() and not (em & ~mask).any() and not (common & ~em).any()
    err = metrics.nrmse(loc, local, common)
    assert err < tol, err
    # without removal the "local" field is dominated by the background
    assert metrics.nrmse(total, local, common) > 100


@pytest.mark.parametrize("method,params,slack", [("resharp", R6, 8.0), ("resharp", {}, 10.0),
                                                 ("vsharp", {}, 8.0), ("pdf", {}, 12.0)])
def test_anisotropic_and_oblique_give_the_same_local_field(iso, method, params, slack):
    """Same object with 1.5×1.5×3 mm voxels, and with B0 tilted 25°: each local field matches
    its own truth as well as the isotropic case does (within 8 percentage points; PDF 12:
    it models the background with the sampled dipole kernel, whose discretisation error
    against the voxel-averaged truth grows with the 3 mm slices; the default RESHARP 10: its
    3 mm kernel is one 3 mm slice deep, 15.2 vs 6.3 %). Without the isotropic-moment SMV
    kernel RESHARP gave 200 % here."""
    ref = metrics.nrmse(bg.remove_background(method, iso[0], iso[2], iso[3], **params)[0],
                        iso[1], bg.resharp(iso[0], iso[2], iso[3], **R6)[1])
    for vs, b0 in (((1.5, 1.5, 3.0), (0, 0, 1)),
                   ((1.5, 1.5, 1.5), (np.sin(np.radians(25)), 0, np.cos(np.radians(25))))):
        total, local, mask, vsx = _scene(vs, b0_dir=b0)
        loc, em = bg.remove_background(method, total, mask, vsx, b0, **params)
        common = bg.resharp(total, mask, vsx, **R6)[1] & em
        err = metrics.nrmse(loc, local, common)
        assert err < ref + slack, (vs, b0, err, ref)


@pytest.mark.parametrize("method", METHODS)
def test_linear_in_units(iso, method):
    """Hz in → Hz out: scaling the field scales the result (ppm ↔ Hz ↔ rad are linear)."""
    total, _, mask, vs = iso
    a, _ = bg.remove_background(method, total, mask, vs)
    b, _ = bg.remove_background(method, 127.7 * total, mask, vs)
    np.testing.assert_allclose(b, 127.7 * a, rtol=2e-3, atol=2e-3 * np.abs(b).max())


def test_phantom_resharp_target():
    """Default head phantom at 2 mm (CI size; the 1 mm target lives in the benchmark), every
    method compared inside the 6 mm RESHARP mask (inside all the others)."""
    from qsmflow.sims.phantom import make_head_phantom

    p = make_head_phantom((96, 112, 96), (2.0, 2.0, 2.0), seed=0)
    b0 = (0.0, 0.0, 1.0)
    total, local, m = p.total_field_ppm(b0), p.local_field_ppm(b0), p.brain_mask
    res = {k: bg.remove_background(k, total, m, p.voxel_size, b0) for k in METHODS}
    res["resharp6"] = bg.resharp(total, m, p.voxel_size, **R6)
    common = res["resharp6"][1]
    assert all((common <= e).all() for _, e in res.values())
    err = {k: metrics.nrmse(v[0], local, common) for k, v in res.items()}
    assert err["resharp6"] < 34, err  # 32.0 % (and 31.8 % at 1 mm in the benchmark)
    # the default (2 voxels = 4 mm here, λ 4.4e-5) keeps 83 % of the brain instead of 73 %
    assert err["resharp"] < 34 and res["resharp"][1].sum() > 0.8 * m.sum(), err  # 31.6 %
    assert err["vsharp"] < 52 and err["pdf"] < 34, err  # 46.5 %, 30.3 %
    assert min(metrics.correlation(v[0], local, common) for v in res.values()) > 0.87


@pytest.mark.parametrize("kw,match", [
    (dict(mask=np.zeros((20, 20, 20))), "empty"),
    (dict(mask=np.ones((20, 20, 20))), "whole field of view"),
    (dict(mask=np.ones((20, 20, 10))), "shape"),
    (dict(field=np.full((20, 20, 20), np.nan)), "NaN"),
    (dict(method="sharp2"), "unknown"),
    (dict(radius_mm=30.0), "vanishes"),
])
def test_bad_input(kw, match):
    args = dict(method="resharp", field=np.zeros((20, 20, 20)),
                mask=physics.sphere_mask((20, 20, 20), (1, 1, 1), 8))
    args.update(kw)
    extra = {"radius_mm": args.pop("radius_mm")} if "radius_mm" in args else {}
    with pytest.raises(ValueError, match=match):
        bg.remove_background(args["method"], args["field"], args["mask"], (1, 1, 1), (0, 0, 1),
                             **extra)


def test_interface_matches_the_core_and_refuses_another_grid(tmp_path, iso, monkeypatch):
    """BackgroundRemoval (the one file-level path) gives the core's V-SHARP field and mask; a
    mask on another grid is refused and nothing is written."""
    from qsmflow.interfaces import BackgroundRemoval

    total, local, mask, vs = iso
    aff = np.diag([*vs, 1.0])
    nib.save(nib.Nifti1Image(total.astype(np.float32), aff), str(tmp_path / "f.nii.gz"))
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), aff), str(tmp_path / "m.nii.gz"))
    monkeypatch.chdir(tmp_path)
    res = BackgroundRemoval(in_field=str(tmp_path / "f.nii.gz"), mask=str(tmp_path / "m.nii.gz"),
                            method="vsharp", b0_dir=[0.0, 0.0, 1.0]).run()
    loc = nib.load(res.outputs.out_field).get_fdata()
    em = nib.load(res.outputs.out_mask).get_fdata() > 0
    ref, ref_mask = bg.vsharp(total, mask, vs)
    assert (em == ref_mask).all()
    np.testing.assert_allclose(loc, ref, atol=1e-5 * np.abs(ref).max())
    nib.save(nib.Nifti1Image(mask[:-1].astype(np.uint8), aff), str(tmp_path / "m2.nii.gz"))
    (tmp_path / "p").mkdir()
    monkeypatch.chdir(tmp_path / "p")
    with pytest.raises(ValueError, match="grid"):
        BackgroundRemoval(in_field=str(tmp_path / "f.nii.gz"), mask=str(tmp_path / "m2.nii.gz")).run()
    assert not any((tmp_path / "p").iterdir())

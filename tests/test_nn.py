"""Networks: WP-Conv, model shapes, synthesis physics, safe weight loading, training smoke test."""

import copy
import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from qsmflow import physics  # noqa: E402
from qsmflow.nn import inference, layers, models, synthesis, training  # noqa: E402

torch.set_num_threads(int(os.environ.get("QSMFLOW_NUM_THREADS", "1") or 1))


# ------------------------------------------------------------------------------------ WP-Conv
@pytest.mark.parametrize("dilation", [1, 2])
def test_wpconv_fixed_voxel_equals_conv3d_with_generated_kernel(dilation):
    torch.manual_seed(0)
    wp = layers.WPConv3d(3, 5, 3, dilation=dilation, hidden=8, n_basis=3)
    x = torch.randn(2, 3, 9, 8, 7)
    vs = (0.6, 0.8, 2.5)
    w, b = wp.kernel(vs)
    assert w.shape == (5, 3, 3, 3, 3) and b.shape == (5,)
    conv = torch.nn.Conv3d(3, 5, 3, padding=dilation, dilation=dilation)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)
        ref = conv(x)
        out = wp(x, vs)
    assert out.shape == x.shape[:1] + (5,) + x.shape[2:]
    assert torch.allclose(out, ref, atol=1e-5)
    # cached path (eval, no grad) gives the same and caches the kernel
    wp.eval()
    with torch.no_grad():
        assert torch.allclose(wp(x, vs), ref, atol=1e-5)
        assert wp._cache is not None and wp._cache[0] == vs


def test_wpconv_kernels_differ_between_voxel_sizes():
    torch.manual_seed(1)
    wp = layers.WPConv3d(2, 4, hidden=16, n_basis=4)
    torch.nn.init.normal_(wp.hyper[-1].weight, std=0.3)  # as after training: a(v) varies
    w1, b1 = wp.kernel((0.5, 0.5, 2.0))
    w2, b2 = wp.kernel((1.0, 1.0, 1.0))
    w3, _ = wp.kernel((0.5, 0.5, 2.0))
    rel = (w1 - w2).norm() / w1.norm()
    assert rel > 0.05
    assert not torch.allclose(b1, b2)
    assert torch.equal(w1, w3)  # same voxel size -> same kernel


def test_gradient_flows_to_hypernetwork():
    torch.manual_seed(2)
    wp = layers.WPConv3d(1, 2, hidden=8)
    x = torch.randn(1, 1, 6, 6, 6)
    wp(x, (0.7, 0.7, 3.0)).square().sum().backward()
    for lin in (wp.hyper[0], wp.hyper[2], wp.hyper[4]):
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    assert wp.basis.grad.abs().sum() > 0


def test_voxel_size_validation():
    with pytest.raises(ValueError, match="voxel_size"):
        layers.normalise_voxel_size((1.0, -1.0, 2.0))


# ------------------------------------------------------------------------------------ models
@pytest.mark.parametrize("kind", models.KINDS)
def test_model_shapes_batch_and_masking(kind):
    torch.manual_seed(0)
    kw = {"width": 2} if kind == "qsminvnet" else {"width": 2, "hidden": 4, "n_basis": 2}
    net = models.build_model(kind, **kw).eval()
    field = torch.randn(3, 1, 32, 16, 16) * 0.05
    mask = torch.ones_like(field)
    mask[..., :4] = 0
    with torch.no_grad():
        out = models.run_model(net, field, mask, (0.5, 0.5, 2.0))
    assert out.shape == field.shape
    assert torch.all(out[..., :4] == 0)


def test_unet_layer_counts_match_paper_figure():
    net = models.QSMUNet(width=2, hidden=4, n_basis=2)
    mods = list(net.modules())
    wp = [m for m in mods if isinstance(m, layers.WPConv3d)]
    assert sum(m.dilation == 1 for m in wp) == 6 + 1  # 6 + the final linear one
    assert sum(m.dilation == 2 for m in wp) == 3
    assert sum(isinstance(m, torch.nn.BatchNorm3d) for m in mods) == 9
    assert sum(isinstance(m, torch.nn.ConvTranspose3d) for m in mods) == 4
    inv = models.QSMInvNet(width=2)
    assert sum(isinstance(m, layers.GatedConv3d) for m in inv.modules()) == 9
    assert sum(isinstance(m, layers.NonLocalBlock3d) for m in inv.modules()) == 1


def test_build_model_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown model kind"):
        models.build_model("deepqsm")


def test_predict_odd_anisotropic_and_deterministic():
    torch.manual_seed(0)
    net = models.build_model("metaqsm", width=2, hidden=4, n_basis=2).eval()
    rng = np.random.default_rng(0)
    shape = (23, 30, 17)
    mask = np.zeros(shape, bool)
    mask[3:20, 4:27, 2:15] = True
    field = rng.standard_normal(shape).astype(np.float32) * 0.02
    a = inference.predict(net, field, mask, (0.55, 0.75, 2.7))
    b = inference.predict(net, field, mask, (0.55, 0.75, 2.7))
    c = inference.predict(net, field, mask, (1.0, 1.0, 1.0))
    assert a.shape == shape and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.all(a[~mask] == 0) and np.abs(a[mask]).sum() > 0
    assert not np.allclose(a, c)  # the voxel size changes the kernels
    with pytest.raises(ValueError, match="mask is empty"):
        inference.predict(net, field, np.zeros(shape, bool), (1, 1, 1))


# ------------------------------------------------------------------------------------ physics in torch
def test_dipole_kernel_torch_matches_physics():
    shape, vs, b0 = (9, 12, 7), (0.5, 0.8, 2.0), (0.1, -0.2, 0.97)
    d_np = physics.dipole_kernel(shape, vs, b0)
    d_t = synthesis.dipole_kernel_torch(shape, vs, b0, dtype=torch.float64).numpy()
    assert np.allclose(d_np, d_t, atol=1e-12)
    half = synthesis.dipole_kernel_torch(shape, vs, b0, dtype=torch.float64, half=True).numpy()
    assert np.allclose(half, d_np[..., : shape[2] // 2 + 1], atol=1e-12)


def test_forward_field_torch_matches_physics():
    rng = np.random.default_rng(3)
    chi = rng.standard_normal((14, 11, 9))
    f_np = physics.forward_field(chi, (0.6, 0.9, 2.5))
    f_t = synthesis.forward_field_torch(torch.from_numpy(chi), (0.6, 0.9, 2.5), pad_fraction=1.0)
    assert np.allclose(f_np, f_t.numpy(), atol=1e-10)


# ------------------------------------------------------------------------------------ synthesis
@pytest.fixture(scope="module")
def synth(shared_data):
    cfg = {"crop": [32, 32, 16], "margin": 1.0, "fft_pad": 1.0, "sources": ["cosmos"],
           "shared_data": str(shared_data), "noise_ppm": [0.0, 0.0]}
    return synthesis.Synthesizer(cfg)


def test_synthesis_is_seeded_and_physical(synth):
    a = synth.sample(7)
    b = synth.sample(7)
    c = synth.sample(8)
    for k in ("field", "chi", "mask"):
        assert torch.equal(a[k], b[k])
        assert a[k].shape == (1, 32, 32, 16)
    assert not torch.equal(a["chi"], c["chi"])
    vs = a["voxel_size"]
    assert (0.5 <= vs[0] <= 1.1 and 0.5 <= vs[1] <= 1.1 and 0.9 <= vs[2] <= 4.0)
    # with margin 1 and no noise the field is exactly the dipole field of chi at that voxel size
    chi = a["chi"][0].double().numpy()
    m = a["mask"][0].numpy() > 0
    assert m.mean() > 0.2
    ref = physics.forward_field(chi, vs) * m
    assert np.allclose(a["field"][0].numpy(), ref, atol=2e-6)
    # the wrong voxel size (e.g. axes swapped) gives a clearly different field
    wrong = physics.forward_field(chi, vs[::-1]) * m
    assert np.linalg.norm(wrong - ref) > 0.1 * np.linalg.norm(ref)


def test_synthesis_fixed_voxel_and_iso(shared_data):
    base = synthesis.load_cosmos(shared_data)
    s = synthesis.Synthesizer({"crop": [16, 16, 16], "fixed_voxel": [0.7639, 0.7639, 3.0]}, bases=[base])
    assert s.sample(1)["voxel_size"] == (0.7639, 0.7639, 3.0)
    g = torch.Generator().manual_seed(0)
    iso = synthesis.SynthConfig(p_iso=1.0)
    v = synthesis.draw_voxel_size(g, iso)
    assert all(0.9 <= x <= 1.1 for x in v)


def test_synth_config_rejects_unknown_option():
    with pytest.raises(ValueError, match="unknown \\[data\\] option"):
        synthesis.SynthConfig.from_dict({"crops": [64, 64, 32]})


def _axis_coords(shape, h):
    return [(torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0) * h for n in shape]


def test_tube_occupancy_is_a_tube_of_the_right_volume_along_the_right_axis():
    h, r = 0.5, 1.5
    coords = _axis_coords((96, 32, 32), h)
    pts = torch.tensor([[-10.0, 0, 0], [0.0, 0, 0], [10.0, 0, 0]])
    occ = synthesis.tube_occupancy(coords, pts, r, soft_mm=h)
    vol = float(occ.sum()) * h**3
    expect = np.pi * r**2 * 20.0 + 4.0 / 3.0 * np.pi * r**3  # cylinder + two half balls (mm³)
    assert abs(vol - expect) < 0.03 * expect
    i0 = np.argmin(np.abs(coords[0].numpy()))  # voxel nearest the centre line's middle
    assert float(occ[i0, 15:17, 15:17].min()) > 0.99
    along = int((occ[:, 15, 15] > 0.5).sum())  # extent along axis 0 ≈ (20 + 2r) / h voxels
    across = int((occ[i0, :, 15] > 0.5).sum())
    assert abs(along - 46) <= 2 and abs(across - 6) <= 2
    assert float(occ.amax()) <= 1.0 and float(occ.amin()) >= 0.0


def test_harmonic_residual_has_the_rms_and_no_laplacian_inside_the_mask():
    h = 1.0
    coords = _axis_coords((48, 48, 40), h)
    x = torch.stack(torch.meshgrid(*coords, indexing="ij"), -1)
    mask = (x**2).sum(-1) <= 14.0**2  # a 14 mm ball: room for near-edge sources around it
    g = torch.Generator().manual_seed(3)
    res, src = synthesis.harmonic_residual(g, coords, mask, (h, h, h), 0.01, n_dipoles=4)
    assert src.shape == (4, 3)
    assert abs(float(res[mask].pow(2).mean().sqrt()) - 0.01) < 1e-6
    dist = torch.cdist(x.reshape(-1, 3), src).amin(-1).reshape(mask.shape)
    assert float(dist[mask].min()) >= 4.0 - 1e-9  # every source outside the mask
    assert float(dist[mask].min()) < 20.0  # and some near its edge (the residual is edge-heavy)

    def lap(f):
        return sum(torch.roll(f, 1, a) + torch.roll(f, -1, a) - 2 * f for a in range(3)) / h**2
    inner = (x**2).sum(-1) <= 11.0**2  # ≥ 7 mm from any source
    rel = float(lap(res)[inner].abs().max()) * h**2 / float(res[inner].abs().max())
    assert rel < 0.006  # measured 0.0035 (discretisation of the near-edge dipoles)
    # a field that is not harmonic (x², Laplacian 2) fails the same measure
    x2 = 0.01 * (x[..., 0] / 14.0) ** 2
    assert float(lap(x2)[inner].abs().max()) * h**2 / float(x2[inner].abs().max()) > 0.015


def test_realistic_options_add_only_their_part(synth):
    base = synth.sample(11)
    vs = base["voxel_size"]
    m0 = base["mask"][0].numpy() > 0

    def variant(**opts):
        cfg = dict(synth.cfg.__dict__, **opts)
        return synthesis.Synthesizer(cfg, bases=synth.bases).sample(11)

    v = variant(n_veins=(4, 4), vein_chi=(0.5, 0.5), vein_radius_mm=(1.0, 1.5))
    assert torch.equal(v["mask"], base["mask"])
    dchi = (v["chi"] - base["chi"])[0].double().numpy()
    assert np.count_nonzero(np.abs(dchi) > 1e-6) > 20 and not np.any(dchi[~m0])
    assert 0.49 < float(v["chi"].max()) <= max(0.5, float(base["chi"].max())) + 1e-6
    # the veins make exactly their dipole field (margin 1, no noise: the crop is the region)
    dfield = (v["field"] - base["field"])[0].numpy()
    assert np.allclose(dfield, physics.forward_field(dchi, vs) * m0, atol=2e-6)

    r = variant(bg_residual_ppm=(0.008, 0.008))
    assert torch.equal(r["chi"], base["chi"]) and torch.equal(r["mask"], base["mask"])
    res = (r["field"] - base["field"])[0].numpy()
    assert abs(np.sqrt(np.mean(res[m0] ** 2)) - 0.008) < 1e-5 and not np.any(res[~m0])

    e = variant(erode_mm=(2.0, 2.0))
    me = e["mask"][0].numpy() > 0
    assert me.sum() < m0.sum() and not np.any(me & ~m0)
    # the field inside the eroded mask is still that of the whole χ (sources outside it count)
    assert torch.equal(e["field"], base["field"] * e["mask"])
    assert torch.equal(e["chi"], base["chi"] * e["mask"])
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(np.pad(m0, 8, mode="edge"), sampling=vs)[8:-8, 8:-8, 8:-8]
    assert np.array_equal(me, depth > 2.0)  # a ball of 2 mm; the crop's border is no brain edge


def test_split_is_9_to_1_and_seeded():
    tr, va = synthesis.split_indices(1000, 0.1, seed=4)
    assert len(tr) == 900 and len(va) == 100 and not set(tr) & set(va)
    tr2, _ = synthesis.split_indices(1000, 0.1, seed=4)
    assert np.array_equal(tr, tr2)


# ------------------------------------------------------------------------------------ safe loading
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_with_code_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    with pytest.raises(ValueError, match="not a plain state dict"):
        inference.load_state_dict(p)


def test_non_state_dict_checkpoints_are_refused(tmp_path):
    p = tmp_path / "ckpt.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "step": 3}, p)  # a training checkpoint
    with pytest.raises(ValueError, match="not a plain state dict"):
        inference.load_state_dict(p)
    q = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), q)  # a whole module (pickled class)
    with pytest.raises(ValueError, match="not a plain state dict"):
        inference.load_state_dict(q)
    ok = tmp_path / "ok.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), ok)
    assert set(inference.load_state_dict(ok)) == {"weight", "bias"}


# ------------------------------------------------------------------------------------ training
def test_training_smoke_resume_and_export(tmp_path, shared_data):
    cfg = {
        "name": "smoke",
        "model": {"kind": "metaqsm", "width": 2, "hidden": 4, "n_basis": 2},
        "data": {"crop": [16, 16, 16], "margin": 1.0, "sources": ["cosmos"],
                 "shared_data": str(shared_data)},
        "train": {"steps": 2, "batch_size": 2, "n_samples": 20, "n_val": 1, "val_every": 2,
                  "checkpoint_every": 2, "num_threads": 1, "lr": 1e-3},
    }
    out = tmp_path / "run"
    s = training.train(cfg, out, progress=False)
    assert s["steps"] == 2 and s["validation"]["n"] == 1
    rows = (out / "validation.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 2
    assert (out / "validation.png").exists()
    cfg["train"]["steps"] = 3
    s3 = training.train(cfg, out, resume=True, progress=False)
    assert s3["steps"] == 3  # continued from step 2, not restarted
    assert len((out / "validation.csv").read_text().strip().splitlines()) == 3
    pt = training.export_model(out, tmp_path / "w", "smoke", config_file="x_cpu.toml",
                               note="headline\nbody text")
    card = (tmp_path / "w" / "smoke.md").read_text()
    assert "3 steps" in card and "headline" in card
    net, summary = inference.load_model(pt)
    assert summary["steps"] == 3
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    ref = models.build_model(**cfg["model"])
    ref.load_state_dict(ck["model"])
    ref.eval()
    x = torch.randn(1, 1, 16, 16, 16) * 0.05
    with torch.no_grad():
        assert torch.allclose(net(x, (1, 1, 1)), ref(x, (1, 1, 1)))


def test_prefetching_batches_changes_nothing_but_the_time(tmp_path, shared_data):
    """Batches made ahead in a background thread (``[train] prefetch``) are the same batches:
    the trained weights equal those of a run without prefetching, bit for bit; a time budget
    stops the run with the thread."""
    import threading

    def cfg(prefetch, **train):
        return {"model": {"kind": "metaqsm", "width": 2, "hidden": 4, "n_basis": 2},
                "data": {"crop": [16, 16, 16], "margin": 1.0, "sources": ["cosmos"],
                         "shared_data": str(shared_data)},
                "train": {"steps": 3, "batch_size": 2, "n_samples": 20, "n_val": 1,
                          "val_every": 3, "checkpoint_every": 3, "num_threads": 1, "lr": 1e-3,
                          "prefetch": prefetch, **train}}

    weights = []
    for prefetch in (0, 2):
        training.train(cfg(prefetch), tmp_path / f"p{prefetch}", progress=False)
        weights.append(torch.load(tmp_path / f"p{prefetch}" / "model.pt", weights_only=True))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    before = threading.active_count()
    s = training.train(cfg(2, steps=1000, max_time_s=1e-6), tmp_path / "t", progress=False)
    assert s["steps"] == 1 and threading.active_count() == before


def test_training_init_from_weights_fine_tunes(tmp_path, shared_data):
    """``[train] init`` starts from a weights file: with lr 0 the result equals that file."""
    cfg = {
        "model": {"kind": "mesaqsm", "width": 2},
        "data": {"crop": [16, 16, 16], "margin": 1.0, "sources": ["cosmos"],
                 "fixed_voxel": [1.0, 1.0, 2.0], "shared_data": str(shared_data)},
        "train": {"steps": 1, "batch_size": 2, "n_samples": 10, "n_val": 1, "val_every": 1,
                  "checkpoint_every": 1, "num_threads": 1, "lr": 0.0, "l2": 0.0},
    }
    torch.manual_seed(5)
    start = {k: v.clone() for k, v in models.build_model(**cfg["model"]).state_dict().items()}
    w = tmp_path / "start.pt"
    torch.save(start, w)
    training.train({**cfg, "train": {**cfg["train"], "init": str(w)}}, tmp_path / "run", progress=False)
    got = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    conv = [k for k in start if k.endswith("weight") and start[k].dim() == 5]
    assert conv and all(torch.equal(got[k], start[k]) for k in conv)
    with pytest.raises(ValueError, match="does not exist"):
        training.train({**cfg, "train": {**cfg["train"], "init": str(tmp_path / "nope.pt")}},
                       tmp_path / "run2", progress=False)


def test_dipole_misfit_is_zero_for_the_true_chi_and_sees_a_wrong_kernel():
    """The physics term of ``[train] dc_loss``: 0 for the χ whose field the input is; a
    transposed (anisotropic) voxel size or a sign flip is seen, at the size of the field."""
    g = torch.Generator().manual_seed(0)
    chi = torch.nn.functional.avg_pool3d(torch.randn(2, 1, 24, 24, 24, generator=g), 5, 1, 2)
    vs = (1.0, 1.0, 3.0)
    mask = torch.zeros_like(chi)
    mask[..., 4:20, 4:20, 4:20] = 1
    field = synthesis.forward_field_torch(chi, vs, pad_fraction=0.5)
    scale = float(torch.mean(torch.abs(field * mask)))
    assert float(training.dipole_misfit(chi, field, mask, vs)) < 1e-6 * scale
    assert float(training.dipole_misfit(chi, field, mask, vs[::-1])) > 0.2 * scale
    assert float(training.dipole_misfit(-chi, field, mask, vs)) > 1.5 * scale


def test_consistency_blend_is_the_pipelines_step_in_torch():
    """``[train] dc_step``'s blend equals the pipeline's closed-form data-consistency step
    (:func:`qsmflow.inversion.consistency.data_consistency`, no CG) at the same λ and padding,
    with λ from each sample's noise, and it repairs a prior of half the true contrast."""
    from qsmflow.inversion.consistency import LAM_MIN, PRIOR_ERROR, data_consistency

    g = torch.Generator().manual_seed(0)
    chi = torch.nn.functional.avg_pool3d(torch.randn(2, 1, 24, 24, 24, generator=g), 5, 1, 2)
    vs = (1.0, 1.0, 2.0)
    mask = torch.zeros_like(chi)
    mask[..., 3:21, 3:21, 3:21] = 1
    field = synthesis.forward_field_torch(chi, vs, pad_fraction=0.5) * mask
    prior, sigma = 0.5 * chi, torch.tensor([0.01, 0.0])
    out = training.consistency_blend(prior, field, mask, vs, sigma).numpy()
    for n in range(2):
        m = mask[n, 0].numpy() > 0
        rms = float(np.sqrt(np.mean(prior[n, 0].numpy()[m] ** 2)))
        lam = max((float(sigma[n]) / (PRIOR_ERROR * rms)) ** 2, LAM_MIN)
        ref, _ = data_consistency(prior[n, 0].numpy(), field[n, 0].numpy(), m, vs, lam=lam,
                                  iterations=0, pad=12)
        assert np.abs(out[n, 0] - ref)[m].max() < 1e-5 * np.abs(ref[m]).max()
        truth = chi[n, 0].numpy()[m]
        assert np.linalg.norm(out[n, 0][m] - truth) < 0.9 * np.linalg.norm(0.5 * truth)


def test_dc_loss_enters_the_gradient():
    """``dc`` or ``dc_step`` > 0 changes the update (the physics terms have a gradient); 0 is the
    old step."""
    torch.manual_seed(0)
    base = models.build_model("metaqsm", width=2, hidden=4, n_basis=2)
    g = torch.Generator().manual_seed(1)
    chi = torch.randn(2, 1, 16, 16, 16, generator=g) * 0.05
    batch = {"chi": chi, "mask": torch.ones_like(chi), "voxel_size": (1.0, 1.0, 1.0),
             "field": synthesis.forward_field_torch(chi, (1.0, 1.0, 1.0), pad_fraction=0.5)}
    after = []
    batch["noise_ppm"] = torch.tensor([0.005, 0.0])
    for dc, dc_step in ((0.0, 0.0), (0.0, 0.0), (10.0, 0.0), (0.0, 10.0)):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        training.train_step(model, opt, batch, dc=dc, dc_step=dc_step)
        after.append(torch.cat([q.detach().flatten() for q in model.parameters()]))
    assert torch.equal(after[0], after[1])
    for changed in after[2:]:
        assert float(torch.linalg.norm(changed - after[0])) > 1e-4 * float(torch.linalg.norm(after[0]))


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown \\[train\\] option"):
        training.normalise_config({"model": {"kind": "metaqsm"}, "train": {"stepz": 3}})
    with pytest.raises(ValueError, match="kind"):
        training.normalise_config({"model": {}})
    with pytest.raises(ValueError, match="does not exist"):
        training.load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("name", ["metaqsm", "mesaqsm_0.5x0.5x2.0", "mesaqsm_0.7639x0.7639x3.0",
                                  "qsminvnet"])
def test_shipped_configs_parse(name):
    from pathlib import Path

    d = Path(inference.__file__).parent / "configs"
    full = training.load_config(d / f"{name}.toml")
    cpu = training.load_config(d / f"{name}_cpu.toml")
    assert full["model"]["kind"] == cpu["model"]["kind"]
    assert full["data"]["crop"] == [128, 128, 64]  # the paper's crop
    models.build_model(**cpu["model"])


def test_realistic_config_and_its_control_differ_only_in_the_realistic_options():
    from pathlib import Path

    d = Path(inference.__file__).parent / "configs"
    real = training.load_config(d / "metaqsm_cpu_realistic.toml")
    ctrl = training.load_config(d / "metaqsm_cpu_realistic_control.toml")
    assert real["train"] == ctrl["train"] and real["model"] == ctrl["model"]
    diff = {k for k in real["data"] if real["data"][k] != ctrl["data"].get(k)}
    assert diff == {"n_veins", "bg_residual_ppm", "erode_mm"}
    on, off = synthesis.SynthConfig.from_dict(real["data"]), synthesis.SynthConfig.from_dict(ctrl["data"])
    assert on.n_veins[1] > 0 and on.bg_residual_ppm[1] > 0 and on.erode_mm[1] > 0
    assert off.n_veins[1] == 0 and off.bg_residual_ppm[1] == 0 and off.erode_mm[1] == 0

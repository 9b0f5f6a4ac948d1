"""Field mapping benchmark: unwrapping, multi-echo fit, masking, background removal.

Accuracy against the head phantom's truth (1 mm isotropic; ``--quick``: 2 mm) and figures on
the real in-vivo data (real-gre-small). Speed and memory: ``bench_fieldmap_speed.py``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from _util import md_table
from qsmflow import bgremoval, masking, metrics, physics
from qsmflow import phase as ph

TWO_PI = 2 * np.pi
SHARED = Path(os.environ.get("QSMFLOW_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def _exact_fraction(u, truth, mask):
    n = np.round((u - truth) / TWO_PI)[mask]
    vals, cnt = np.unique(n, return_counts=True)
    return float(cnt.max() / n.size)


def _unresolvable(total_hz, dte, mask):
    """Fraction of mask voxels whose true echo-difference phase jumps by > π to a neighbour."""
    psi = TWO_PI * total_hz * dte
    bad = np.zeros(psi.shape, bool)
    for ax in range(3):
        d = np.abs(np.diff(psi, axis=ax)) > np.pi
        lo = [(0, 0)] * 3
        hi = [(0, 0)] * 3
        lo[ax], hi[ax] = (0, 1), (1, 0)
        bad |= np.pad(d, lo) | np.pad(d, hi)
    return float(bad[mask].mean())


def _accuracy(figdir, quick):
    from qsmflow.sims.phantom import make_head_phantom
    from qsmflow.sims.megre import simulate_megre

    shape, vs = ((96, 112, 96), (2.0, 2.0, 2.0)) if quick else ((160, 192, 160), (1.0, 1.0, 1.0))
    p = make_head_phantom(shape, vs, seed=0)
    m = p.brain_mask
    b0dir = (0.0, 0.0, 1.0)
    rows_u, rows_m = [], []
    keep = {}
    for b0 in (3.0, 7.0):
        s = simulate_megre(p, b0_tesla=b0, snr=100, b0_dir=b0dir, seed=1)
        dte = s.te_s[1] - s.te_s[0]
        t0 = time.perf_counter()
        u = ph.unwrap_echoes(s.phase, s.magnitude, s.te_s, vs, mask=m)
        t_u = time.perf_counter() - t0
        truth = s.phase_offset_rad[..., None] + TWO_PI * s.total_field_hz[..., None] * s.te_s
        exact = min(_exact_fraction(u[..., k], truth[..., k], m) for k in range(s.te_s.size))
        fit = ph.fit_multi_echo(u, s.magnitude, s.te_s, m)
        off = np.median(fit.field_hz[m] - s.total_field_hz[m])
        off = np.round(off * dte) / dte  # the global 1/ΔTE ambiguity (0 when it is right)
        fhz = fit.field_hz - off
        good = m & np.all(np.round((u - truth) / TWO_PI) == np.round(off * dte * 0), axis=-1)
        nr_all = metrics.rmse_percent(fhz, s.total_field_hz, m)
        nr_good = metrics.rmse_percent(fhz, s.total_field_hz, good)
        ul = ph.unwrap_echoes(s.phase, s.magnitude, s.te_s, vs, mask=m, method="laplacian")
        fl = ph.fit_multi_echo(ul, s.magnitude, s.te_s, m).field_hz
        nr_lap = metrics.nrmse(fl, s.total_field_hz, m)
        noise_ratio = float(np.std((fhz - s.total_field_hz)[good]) / np.median(fit.noise_hz[good]))
        rows_u.append([f"{b0:g} T", f"{100 * exact:.3f}",
                       f"{100 * _unresolvable(s.total_field_hz, dte, m):.3f}", f"{nr_all:.2f}",
                       f"{nr_good:.2f}", f"{nr_lap:.1f}", f"{noise_ratio:.2f}", f"{t_u:.1f}"])
        if b0 == 3.0:
            keep = dict(s=s, u=u, truth=truth, fit=fhz)
        for snr in (50, 100):
            s2 = s if snr == 100 else simulate_megre(p, b0_tesla=b0, snr=snr, seed=2)
            mk = masking.magnitude_mask(s2.magnitude, vs, te_s=s2.te_s)
            d = 2 * (mk & m).sum() / (mk.sum() + m.sum())
            rows_m.append([f"{b0:g} T", snr, f"{d:.4f}"])
    # background removal on the true total field (ppm) and on the fitted one
    total = p.total_field_ppm(b0dir)
    local = p.local_field_ppm(b0dir)
    res, times = {}, {}
    for name in bgremoval.METHODS:
        t0 = time.perf_counter()
        res[name] = bgremoval.remove_background(name, total, m, vs, b0dir)
        times[name] = time.perf_counter() - t0
    common = np.logical_and.reduce([e for _, e in res.values()])
    rows_b = []
    for name, (loc, em) in res.items():
        rows_b.append([name, f"{metrics.nrmse(loc, local, common):.1f}",
                       f"{metrics.nrmse(loc, local, em):.1f}", f"{100 * em.sum() / m.sum():.0f}",
                       f"{metrics.correlation(loc, local, common):.3f}", f"{times[name]:.1f}"])
    leak = float((np.abs(p.chi - p.chi_in)[m] > 0.01).mean())
    # figures
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = shape[2] // 2
    fig, ax = plt.subplots(1, 5, figsize=(17, 3.6))
    lim = np.percentile(np.abs(local[common]), 99)
    ax[0].imshow(np.where(m, local, 0)[:, :, z].T, origin="lower", cmap="gray", vmin=-lim,
                 vmax=lim)
    ax[0].set_title("true local field (ppm)")
    for i, (name, (loc, _)) in enumerate(res.items(), 1):
        ax[i].imshow(loc[:, :, z].T, origin="lower", cmap="gray", vmin=-lim, vmax=lim)
        ax[i].set_title(f"{name}: {metrics.nrmse(loc, local, common):.0f} %")
    s, u, truth = keep["s"], keep["u"], keep["truth"]
    err = np.round((u[..., 0] - truth[..., 0]) / TWO_PI)
    err -= np.median(err[m])
    ax[4].imshow(np.where(m, err, np.nan)[:, :, z].T, origin="lower", cmap="coolwarm", vmin=-2,
                 vmax=2)
    ax[4].set_title("3 T unwrap error (2π multiples)")
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(figdir / "fieldmap_phantom.png", dpi=80)
    plt.close(fig)
    txt = [f"Phantom: `make_head_phantom({shape}, {vs})`, B0 along array axis 2, "
           f"TE {', '.join(f'{1e3 * t:g}' for t in keep['s'].te_s)} ms, SNR 100.\n",
           "**Unwrapping and multi-echo fit** (quality-guided `unwrap_echoes(method='region-growing')`; "
           "exact = fraction of brain voxels whose every echo equals the true phase up to one "
           "global 2π multiple; unresolvable = brain voxels whose true echo-difference phase "
           "jumps by > π to a neighbour, i.e. that no unwrapper can get right; field NRMSE = "
           "RMSE% of the fitted field vs the true total field; Laplacian: demeaned NRMSE; noise "
           "ratio = actual error SD / median predicted `noise_hz`)\n",
           md_table(["B0", "exact %", "unresolvable %", "field NRMSE % (brain)",
                     "field NRMSE % (exact voxels)", "Laplacian field NRMSE %", "noise ratio",
                     "unwrap s"], rows_u),
           "\n**Brain mask** (`magnitude_mask` with R2* criterion) Dice vs the phantom's brain mask\n",
           md_table(["B0", "SNR", "Dice"], rows_m),
           "\n**Background removal** on the true total field (ppm), NRMSE (demeaned, %) vs the "
           "true local field inside the common eroded mask (and each method's own mask)\n",
           md_table(["method", "NRMSE % common", "NRMSE % own mask", "own mask % of brain",
                     "r (common)", "s"], rows_b),
           f"\nNote: {100 * leak:.1f} % of the phantom's brain-mask voxels carry > 0.01 ppm of "
           "non-brain χ (air/bone partial volume); their field counts as background, which is "
           "then not harmonic in those voxels.\n",
           "\n![phantom](figures/fieldmap_phantom.png)\n"]
    return "\n".join(txt)


def _real(figdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    d = SHARED / "data" / "real-gre-small"
    if not d.is_dir():
        return "_real-gre-small not found: set QSMFLOW_SHARED._\n"
    phase, aff = ph.load_phase_rad(d / "Phase.nii", {"Units": "arbitrary"})
    mag = np.asarray(nib.load(str(d / "Mag.nii")).dataobj, np.float32)
    te = np.array([0.004, 0.008, 0.012])
    vs = physics.voxel_size_from_affine(aff)
    t0 = time.perf_counter()
    mk = masking.magnitude_mask(mag, vs, te_s=te, r2star_max=None, open_mm=0)
    u = ph.unwrap_echoes(phase, mag, te, vs, mask=mk)
    fit = ph.fit_multi_echo(u, mag, te, mk)
    q = masking.phase_quality_mask(fit.residual, mask=mk)
    # the crop lies inside the brain: treat the field of view minus a 2 mm rim as the "brain"
    roi = masking.erode_ball(np.ones(mk.shape, bool), vs, 2.0)
    loc, em = bgremoval.resharp(fit.field_hz, roi, vs, radius_mm=2.0)
    dt = time.perf_counter() - t0
    wraps = int(np.ptp(np.round((u - phase) / TWO_PI)[mk]))
    k = np.round((u[..., 2] - phase[..., 2]) / TWO_PI)
    z = int(np.argmax([(np.ptp(k[:, :, i]) * 1000 + np.abs(k[:, :, i]).sum()) * em[:, :, i].any()
                       for i in range(k.shape[2])]))
    fig, ax = plt.subplots(1, 5, figsize=(17, 3.6))
    panels = [(phase[:, :, z, 2], "wrapped phase, echo 3 (rad)", "gray"),
              (u[:, :, z, 2], "unwrapped, echo 3 (rad)", "gray"),
              (fit.field_hz[:, :, z], "field (Hz)", "gray"),
              (fit.residual[:, :, z], "fit residual (rad)", "magma"),
              (np.where(em, loc, np.nan)[:, :, z], "RESHARP 2 mm local field (Hz)", "gray")]
    for a, (img, title, cmap) in zip(ax, panels):
        a.imshow(img.T, origin="lower", cmap=cmap)
        a.set_title(title)
        a.axis("off")
    fig.tight_layout()
    fig.savefig(figdir / "fieldmap_real.png", dpi=80)
    plt.close(fig)
    return (f"Real in-vivo data (`real-gre-small`, 51×51×41×3, {vs[0]:.3g}×{vs[1]:.3g}×{vs[2]:.3g}"
            f" mm, TE 4/8/12 ms, phase stored as ±π behind a NIfTI scale factor): scaling, "
            f"mask, unwrapping (2π multiples span {wraps} wraps), fit (median residual "
            f"{np.median(fit.residual[mk]):.3f} rad; the quality mask drops "
            f"{100 * (1 - q.sum() / mk.sum()):.1f} % of voxels) and RESHARP in {dt:.1f} s. "
            "`phase_with_nan.nii` is refused with a message naming the NaN voxels.\n\n"
            "![real](figures/fieldmap_real.png)\n")


def run(figdir: Path, quick: bool) -> str:
    figdir = Path(figdir)
    out = ["## Field mapping (phase → total field → local field)\n",
           _accuracy(figdir, quick),
           "\nSpeed and memory of these steps: section *Field mapping: speed* "
           "(`python benchmarks/run.py --only fieldmap_speed`).\n",
           "\n### Real data\n",
           _real(figdir)]
    return "\n".join(out)

"""Conventional dipole inversions: accuracy on the head phantom and on the 2016 challenge data,
speed and memory at 164×205×205.

- Phantom: noise-free true local field of ``make_head_phantom`` (B0 along axis 2) at 1 mm
  isotropic and at 0.75×0.75×3 mm; metrics against the phantom's χ inside the brain mask.
- qsm2016: the challenge's local field (ppm, 1.06 mm, B0 along axis 2) against χ33 and COSMOS
  (no magnitude is distributed, so MEDI runs without its edge mask and W = 1).
- Speed: one run per method on a 164×205×205 field (the challenge brain centred in it), with the
  cost as a multiple of one complex FFT pair of that size; peak memory beyond the inputs.
Every method runs with its documented defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from _util import fft_pair_seconds, md_table
from qsmflow import metrics
from qsmflow.inversion import CONVENTIONAL, invert, method_parameters
from qsmflow.workflows.qsm import display_name

SHARED = Path(os.environ.get("QSMFLOW_SHARED", Path(__file__).resolve().parents[2] / "shared"))
QSM2016 = SHARED / "data" / "qsm2016"
LABELS = {m: display_name(m) for m in CONVENTIONAL}
METRIC_KEYS = [("rmse", "RMSE %"), ("nrmse", "NRMSE %"), ("hfen", "HFEN %"), ("ssim", "SSIM"),
               ("xsim", "XSIM")]
PUBLIC = {"tv": 26.5, "fansi": 29.1, "tkd": 37.0, "ilsqr": 40.8, "medi": 52.0}


def _phantom_case(shape, vs):
    from qsmflow.sims.phantom import make_head_phantom

    p = make_head_phantom(shape, vs, seed=0)
    m = p.brain_mask
    truth = np.where(m, p.chi_brain - p.chi_brain[m].mean(), 0.0)
    return p.local_field_ppm((0.0, 0.0, 1.0)) * m, m, p.m0, truth


def _run_all(field, mask, vs, magnitude=None):
    return {name: invert(name, field, mask, vs, (0.0, 0.0, 1.0), magnitude=magnitude)
            for name in CONVENTIONAL}


def _metric_rows(results, truth, mask, public=False):
    rows = []
    for name, chi in results.items():
        mt = metrics.all_metrics(chi, truth, mask)
        row = [LABELS[name]] + [mt[k] for k, _ in METRIC_KEYS]
        if public:
            row.append(PUBLIC.get(name, "–"))
        rows.append(row)
    return rows


def _load_qsm2016(quick):
    import nibabel as nib

    load = lambda n: np.asarray(nib.load(QSM2016 / n).dataobj, dtype=np.float32)  # noqa: E731
    f, m = load("phs_tissue.nii.gz"), load("msk.nii.gz") > 0
    c33, cos = load("chi_33.nii.gz"), load("chi_cosmos.nii.gz")
    if quick:  # a central slab keeps the smoke test fast
        sl = (slice(30, 130), slice(30, 130), slice(50, 110))
        f, m, c33, cos = f[sl], m[sl], c33[sl], cos[sl]
    f = f * m
    demean = lambda c: np.where(m, c - c[m].mean(), 0.0)  # noqa: E731
    return f, m, demean(c33), demean(cos)


def _montage(path, panels, title):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.8))
    for a, (img, lab) in zip(ax, panels):
        a.imshow(np.rot90(img), cmap="gray", vmin=-0.12, vmax=0.2)
        a.set_title(lab, fontsize=9)
        a.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _time_and_peak(fn, *args, **kwargs):
    """Wall time (s) and peak traced allocation (MiB; numpy arrays are traced) of one call."""
    import time
    import tracemalloc

    tracemalloc.start()
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return dt, peak


def _speed(shape, quick):
    from qsmflow.inversion import _ops

    f, m, _, _ = _load_qsm2016(quick=False)
    field = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    off = [(s - n) // 2 for s, n in zip(shape, f.shape)]
    sl = tuple(slice(o, o + n) for o, n in zip(off, f.shape)) if all(o >= 0 for o in off) else None
    if sl is None:  # quick: crop instead
        crop = tuple(slice(0, s) for s in shape)
        field, mask = f[crop], m[crop]
    else:
        field[sl], mask[sl] = f, m
    mag = mask.astype(np.float32)
    pair = fft_pair_seconds(shape, workers=2, repeat=3)
    pshape = _ops.DipoleOp(shape, (1.0, 1.0, 1.0), pad=_ops.DEFAULT_PAD).pshape
    rows = []
    for name in CONVENTIONAL:
        dt, peak = _time_and_peak(invert, name, field, mask, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0),
                                  magnitude=mag)
        rows.append([LABELS[name], dt, dt / pair, peak])
    return rows, pair, pshape


def run(figdir: Path, quick: bool) -> str:
    out = ["## Dipole inversions (TKD, Tikhonov, iLSQR, MEDI, FANSI, TV-ADMM)\n",
           "Defaults: " + "; ".join(
               f"{LABELS[n]} " + ", ".join(f"{k}={v['default']}" for k, v in
                                           method_parameters(n).items()
                                           if k in ("threshold", "lam", "alpha", "alpha1", "mu1",
                                                    "tol", "max_iter"))
               for n in CONVENTIONAL) + ".\n"]

    # ---- phantom -----------------------------------------------------------------------
    cases = ([("2.5 mm isotropic (quick)", (64, 64, 48), (2.5, 2.5, 2.5)),
              ("1.875×1.875×7.5 mm (quick)", (84, 84, 16), (1.875, 1.875, 7.5))] if quick else
             [("1 mm isotropic", (150, 184, 140), (1.0, 1.0, 1.0)),
              ("0.75×0.75×3 mm", (200, 245, 46), (0.75, 0.75, 3.0))])
    header = ["method"] + [h for _, h in METRIC_KEYS]
    for i, (label, shape, vs) in enumerate(cases):
        field, mask, mag, truth = _phantom_case(shape, vs)
        res = _run_all(field, mask, vs, mag)
        out.append(f"\n### Head phantom, {label} ({'×'.join(map(str, shape))}), true local "
                   "field, no noise\n")
        out.append(md_table(header + (["public NRMSE % (challenge 2.0 phantom)"] if i == 0
                                      else []),
                            _metric_rows(res, truth, mask, public=(i == 0))))
        z = int(np.argmax(mask.sum(axis=(0, 1)))) if vs[2] > vs[0] else int(
            np.nonzero(mask.any(axis=(0, 1)))[0].mean())
        fig = f"inversion_phantom_{i}.png"
        _montage(figdir / fig, [(truth[:, :, z], "truth")] +
                 [(res[n][:, :, z], LABELS[n]) for n in CONVENTIONAL], f"phantom, {label}")
        out.append(f"\n![phantom {label}](figures/{fig})\n")
    out.append("\nPublic numbers: best submissions to the QSM challenge 2.0 head phantom (a "
               "different phantom, given for context only).\n")

    # ---- qsm2016 -----------------------------------------------------------------------
    if QSM2016.is_dir():
        f, m, c33, cos = _load_qsm2016(quick)
        vs = (1.06, 1.06, 1.06)
        res = _run_all(f, m, vs)
        for ref, lab in ((c33, "χ33 (STI)"), (cos, "COSMOS")):
            out.append(f"\n### 2016 challenge in vivo ({'central slab, ' if quick else ''}"
                       f"{'×'.join(map(str, f.shape))}, 1.06 mm), against {lab}\n")
            out.append(md_table(header, _metric_rows(res, ref, m)))
        z = f.shape[2] // 2
        _montage(figdir / "inversion_qsm2016.png",
                 [(c33[:, :, z], "χ33"), (cos[:, :, z], "COSMOS")] +
                 [(res[n][:, :, z], LABELS[n]) for n in CONVENTIONAL], "qsm2016, axial")
        out.append("\n![qsm2016](figures/inversion_qsm2016.png)\n")
    else:
        out.append(f"\n(qsm2016 data not found at {QSM2016}: section skipped)\n")

    # ---- speed -------------------------------------------------------------------------
    shape = (64, 80, 80) if quick else (164, 205, 205)
    rows, pair, pshape = _speed(shape, quick)
    threads = os.environ.get("QSMFLOW_NUM_THREADS", "all")
    out.append(f"\n### Speed and memory, {'×'.join(map(str, shape))} (padded to "
               f"{'×'.join(map(str, pshape))}), QSMFLOW_NUM_THREADS={threads}\n")
    out.append(f"One complex FFT pair of {'×'.join(map(str, shape))}: {pair:.3f} s "
               "(2 workers).\n\n")
    out.append(md_table(["method", "time (s)", "× FFT pair", "peak MiB (numpy, traced)"], rows))
    out.append("\nTargets on 2 cores: TKD ≤ 1 s, Tikhonov ≤ 1 s, iLSQR ≤ 30 s, TV-ADMM ≤ 30 s, "
               "FANSI ≤ 40 s, MEDI ≤ 60 s, ≤ 4 GB. The development machine's 2 cores were "
               "shared with other jobs, so absolute times are upper bounds; the FFT-pair "
               "multiple is the portable number.\n")
    return "\n".join(out)

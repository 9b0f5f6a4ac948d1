"""Meta-QSM on realistic heads it never saw (issue 13, item 5 and the realistic-head target).

Each set of weights (the shipped ``metaqsm`` and every ``label=path.pt`` in
``$QSMFLOW_BENCH_NN_WEIGHTS``, a training run's ``model.pt`` with its ``model.json`` beside it)
runs alone and with the pipeline's data-consistency step (``consistency="auto"``), next to TKD
and FANSI with their defaults, on:

- **phantom 1 mm**: ``make_head_phantom((150, 184, 140), 1 mm, seed=0)``, its true local field
  and true brain mask (the issue's protocol: only the inversion is judged);
- **whole head 3 T 1 mm**: :func:`qsmflow.sims.megre.simulate_case` ``"3T-1mm"`` (neck, skull
  base, face), its true total field through the pipeline's default RESHARP: the local field
  and eroded mask the pipeline hands the inversion (residuals and erosion included);
- **synthetic crops**: the 12 held-out 64×64×32 validation crops of ``nn_curve`` (the training
  distribution: does a fine-tune lose what the shipped weights had?).

Heads: challenge 2.0 NRMSE (detrended, %) and XSIM inside the inversion's mask; crops: RMSE % and
SSIM inside the mask. The networks were trained on COSMOS only: both heads are new anatomy.

    QSMFLOW_BENCH_NN_WEIGHTS="realistic=runs/metaqsm_real/model.pt" \\
        python benchmarks/run.py --only nn_realistic          # ≈ 10 min on 2 cores
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from _util import md_table

PHANTOM = ((150, 184, 140), (1.0, 1.0, 1.0))
QUICK_PHANTOM = ((64, 64, 48), (2.5, 2.5, 2.5))


def _weights() -> dict:
    out = {"shipped": "metaqsm"}
    for item in os.environ.get("QSMFLOW_BENCH_NN_WEIGHTS", "").split():
        label, _, path = item.partition("=")
        if not path:
            raise ValueError(f"QSMFLOW_BENCH_NN_WEIGHTS item {item!r}: write label=path/to/model.pt")
        out[label] = path
    return out


def _cases(quick):
    from qsmflow import bgremoval, physics
    from qsmflow.sims import megre
    from qsmflow.sims.phantom import make_head_phantom

    shape, vs = QUICK_PHANTOM if quick else PHANTOM
    p = make_head_phantom(shape, vs, seed=0)
    m = p.brain_mask
    truth = np.where(m, p.chi_brain - p.chi_brain[m].mean(), 0.0)
    yield (f"phantom {'×'.join(map(str, shape))} at {vs[0]:g} mm, true local field and mask",
           p.local_field_ppm((0.0, 0.0, 1.0)) * m, m, vs, (0.0, 0.0, 1.0), p.m0, truth)
    ph, sim = megre.simulate_case("3T-1mm", coarsen=2.5 if quick else 1.0)
    total = physics.hz_to_ppm(sim.total_field_hz, sim.b0_tesla)
    local, em = bgremoval.remove_background("resharp", total, ph.brain_mask, sim.voxel_size,
                                            sim.b0_dir)
    em = em & ph.brain_mask
    mag = np.sqrt(np.sum(sim.magnitude.astype(np.float64) ** 2, axis=-1))
    yield (f"whole head 3 T at {sim.voxel_size[0]:g} mm, true total field → RESHARP (default), "
           f"its mask ({100.0 * em.sum() / ph.brain_mask.sum():.0f} % of the brain)",
           local * em, em, sim.voxel_size, sim.b0_dir, mag, np.where(em, ph.chi_brain, 0.0))


def _head_rows(weights, field, mask, vs, b0, mag, truth):
    from qsmflow import metrics
    from qsmflow.inversion import invert
    from qsmflow.nn import inference

    def score(chi):  # NRMSE %, XSIM, slope of χ against the truth (1 = no shrinkage)
        return [round(metrics.nrmse_detrended(chi, truth, mask), 1),
                round(metrics.xsim(chi, truth, mask), 3),
                round(float(np.polyfit(truth[mask], chi[mask], 1)[0]), 2)]

    rows, maps = [], {}
    for meth in ("tkd", "fansi"):
        maps[meth.upper()] = invert(meth, field, mask, vs, b0, magnitude=mag)
        rows.append([meth.upper(), *score(maps[meth.upper()]), "", "", ""])
    for label, w in weights.items():
        kw = {"weights": w} if w.endswith(".pt") else {"model": w}
        alone = inference.metaqsm(field, mask, vs, b0, device="cpu", **kw)
        dc = inference.metaqsm(field, mask, vs, b0, device="cpu", consistency="auto", **kw)
        maps[f"{label}"], maps[f"{label} + dc"] = alone, dc
        rows.append([f"Meta-QSM {label}", *score(alone), *score(dc)])
    return rows, maps


def _crop_rows(weights, quick):
    import torch

    from bench_nn_curve import _crops, shipped_setup
    from bench_nn_dc import _score
    from qsmflow.nn import inference
    from qsmflow.nn.models import run_model

    tr, _, synth, _, val_idx = shipped_setup()
    crops = _crops(synth, val_idx[-(2 if quick else 12):], tr["data_seed"])
    rows = []
    for label, w in weights.items():
        model, _ = inference.load_model(w)  # cached: _score leaves it in train mode
        rows.append([f"Meta-QSM {label}", *_score(model, crops)])
        model.eval()
        slopes = []  # of the network's χ against the truth, per crop
        with torch.no_grad():
            for c in crops:
                m = c["mask"][0, 0].numpy() > 0
                chi = run_model(model, c["field"], c["mask"], c["voxel_size"])[0, 0].numpy()
                slopes.append(np.polyfit(c["chi"][0, 0].numpy()[m], chi[m], 1)[0])
        rows[-1].insert(3, round(float(np.mean(slopes)), 2))
    return rows, len(crops)


def _montage(path, maps, truth, mask, title):
    from bench_inversion import _montage as montage

    z = int(np.argmax(mask.sum(axis=(0, 1))))
    montage(path, [(np.where(mask[:, :, z], img[:, :, z], 0.0), lab)
                   for lab, img in [("truth", truth), *maps.items()]], title)


def run(figdir: Path, quick: bool) -> str:
    weights = _weights()
    text = ["## Meta-QSM on realistic heads it never saw\n\n",
            "Weights: " + ", ".join(f"`{k}` = `{v}`" for k, v in weights.items()) + ". Network "
            "alone and + the data-consistency step (λ auto) against TKD and FANSI (defaults); "
            "challenge 2.0 NRMSE (detrended, %), XSIM and the slope of χ regressed on the "
            "true χ (1 = right contrast, < 1 = shrunk) inside the mask the inversion gets.\n"]
    for i, (title, field, mask, vs, b0, mag, truth) in enumerate(_cases(quick)):
        rows, maps = _head_rows(weights, field, mask, vs, b0, mag, truth)
        text.append(f"\n### {title}\n\n")
        text.append(md_table(["method", "NRMSE % alone", "XSIM alone", "slope alone",
                              "NRMSE % + dc", "XSIM + dc", "slope + dc"], rows))
        fig = f"nn_realistic_{i}.png"
        _montage(figdir / fig, maps, truth, mask, title.split(",")[0])
        text.append(f"\n![{title.split(',')[0]}](figures/{fig})\n")
    rows, n = _crop_rows(weights, quick)
    text.append(f"\n### {n} held-out synthetic crops (64×64×32, the training distribution)\n\n")
    text.append(md_table(["weights", "RMSE % alone", "SSIM alone", "slope alone", "RMSE % + dc",
                          "SSIM + dc"], rows))
    return "".join(text) + "\n"

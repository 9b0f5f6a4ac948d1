"""Physics in the loss (issue 13, item 3): fine-tune the shipped Meta-QSM with and without
physics in the loss: the dipole misfit of its χ (``[train] dc_loss``,
:func:`qsmflow.nn.training.dipole_misfit`) or the error of its χ after the pipeline's
data-consistency blend (``[train] dc_step``, :func:`qsmflow.nn.training.consistency_blend`).

From the shipped weights (`qsmflow/nn/weights/metaqsm.pt`, its configuration
`metaqsm_cpu.toml`), the same fresh batches, the same number of steps (RMSprop lr 1e-4, 1 torch
thread, synthesis in a background thread), once per variant; each result is scored on
the same held-out validation crops, the network alone and followed by the pipeline's
data-consistency step (:func:`qsmflow.inversion.consistency.data_consistency`, λ auto). A crop's
field carries the field of the χ outside the crop, as a local field carries background-removal
residuals, so neither the loss term nor the consistency step can be exact here.

    python benchmarks/run.py --only nn_dc        # ≈ 30 min on 2 cores
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from bench_nn_curve import _crops, shipped_setup

N_EVAL = 12          # held-out crops
STEPS = 1000         # fine-tuning steps per run
VARIANTS = ((0.0, 0.0), (1.0, 0.0), (4.0, 0.0), (0.0, 1.0), (0.0, 4.0))  # (dc_loss, dc_step)
LR = 1e-4


def _score(model, crops) -> list:
    import torch

    from qsmflow import metrics
    from qsmflow.inversion.consistency import data_consistency
    from qsmflow.nn.models import run_model

    model.eval()
    alone, dc = [], []
    with torch.no_grad():
        for s in crops:
            p = run_model(model, s["field"], s["mask"], s["voxel_size"])[0, 0].float().numpy()
            y, m = s["chi"][0, 0].numpy(), s["mask"][0, 0].numpy() > 0
            f = s["field"][0, 0].numpy()
            alone.append((metrics.rmse_percent(p, y, m), metrics.ssim(p, y, m)))
            q = data_consistency(p, f, m, s["voxel_size"])[0]
            dc.append((metrics.rmse_percent(q, y, m), metrics.ssim(q, y, m)))
    model.train()
    a, d = np.mean(alone, axis=0), np.mean(dc, axis=0)
    return [round(float(a[0]), 1), round(float(a[1]), 3), round(float(d[0]), 1),
            round(float(d[1]), 3)]


def run(figdir: Path, quick: bool) -> str:
    import torch

    from _util import md_table
    from qsmflow.nn.models import run_model
    from qsmflow.nn.training import _batches, _prefetch, dipole_misfit, train_step

    n_eval, steps = (2, 4) if quick else (N_EVAL, STEPS)
    tr, shipped, synth, train_idx, val_idx = shipped_setup()
    crops = _crops(synth, val_idx[-n_eval:], tr["data_seed"])
    rows = [["shipped weights", "—", "—", "—", *_score(shipped, crops)]]
    tr["seed"] = 202  # batches the shipped runs and nn_curve did not draw
    for w, w_step in VARIANTS:
        model = copy.deepcopy(shipped)
        opt = torch.optim.RMSprop(model.parameters(), lr=LR)
        fit, mis, t0 = [], [], time.perf_counter()
        model.train()
        for b in _prefetch(_batches(synth, tr, train_idx, 0, steps), 2):
            fit.append(train_step(model, opt, b, l2=float(tr["l2"]), dc=w, dc_step=w_step))
            if len(fit) > steps - 100:  # the misfit the run ends at, for every weight
                with torch.no_grad():
                    p = run_model(model, b["field"], b["mask"], b["voxel_size"]).float()
                    mis.append(float(dipole_misfit(p, b["field"], b["mask"], b["voxel_size"])))
        rows.append([f"+{steps} steps, dc_loss {w:g}, dc_step {w_step:g}",
                     round(time.perf_counter() - t0),
                     round(float(np.mean(fit[-100:])), 4), round(float(np.mean(mis)), 5),
                     *_score(model, crops)])
    text = ("## Meta-QSM fine-tuned with physics in the loss\n\n"
            f"The shipped weights fine-tuned {steps} steps on the same fresh batches (batch "
            f"{tr['batch_size']}, RMSprop lr {LR:g}, L2 {tr['l2']}) with loss = L1(χ) + dc_loss × "
            "mean|M(D∗χ − f)| + dc_step × L1(blend(χ)), blend = the pipeline's closed-form "
            "consistency step with λ from the sample's noise; scored on "
            f"{n_eval} held-out 64×64×32 validation crops (mean RMSE % inside the mask / SSIM), "
            "the network alone and + the data-consistency step (λ auto). The L1 and misfit "
            "columns are the means over the run's last 100 training batches (ppm):\n\n")
    text += md_table(["weights", "wall s", "train L1 χ", "train misfit", "RMSE % alone",
                      "SSIM alone", "RMSE % + dc", "SSIM + dc"], rows)
    return text + "\n"

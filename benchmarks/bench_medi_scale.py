"""MEDI / FANSI nonlinear data term: the fixed scale against the acquisition's own (issue 17,
item 4).

``rad_per_ppm`` (s) turns the field into phase inside e^{i·s·Dχ}. qsmflow's default is fixed,
2π·γ̄·3 T·20 ms ≈ 16.05 rad/ppm; the acquisition's own is s = 2π·γ̄·B0·ΔTE (its echo spacing, as the
MEDI toolbox uses). For every whole-head case (coarsened, true brain mask, qsmflow's own fitted
field → RESHARP default), χ NRMSE (challenge 2.0 detrended, %, in RESHARP's mask) with both.

    python benchmarks/run.py --only medi_scale            # 2 mm voxels, ≈ 4 min
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def run(figdir: Path, quick: bool) -> str:
    from _util import md_table
    from qsmflow import bgremoval, inversion, metrics, physics
    from qsmflow import phase as qphase
    from qsmflow.inversion._ops import DEFAULT_RAD_PER_PPM
    from qsmflow.sims import megre

    coarsen = 3.0 if quick else float(os.environ.get("QSMFLOW_BENCH_MEDI_SCALE_COARSEN", 2.0))
    cases = list(megre.WHOLE_HEAD_CASES)[:2] if quick else list(megre.WHOLE_HEAD_CASES)
    rows = []
    for case in cases:
        ph, sim = megre.simulate_case(case, seed=0, coarsen=coarsen)
        brain = ph.brain_mask
        unwrapped = qphase.unwrap_echoes(sim.phase, sim.magnitude, sim.te_s, sim.voxel_size,
                                         mask=brain)
        fit = qphase.fit_multi_echo(unwrapped, sim.magnitude, sim.te_s, brain)
        field = physics.hz_to_ppm(fit.field_hz, sim.b0_tesla)
        noise = physics.hz_to_ppm(fit.noise_hz, sim.b0_tesla)
        local, kept = bgremoval.remove_background("resharp", field, brain, sim.voxel_size,
                                                  sim.b0_dir)
        mag = np.sqrt(np.sum(np.square(sim.magnitude), axis=-1))
        s_acq = 2 * np.pi * physics.GAMMA_BAR_MHZ_PER_T * sim.b0_tesla * (sim.te_s[1] - sim.te_s[0])
        s_mean = 2 * np.pi * physics.GAMMA_BAR_MHZ_PER_T * sim.b0_tesla * float(np.mean(sim.te_s))
        row = [case, "×".join(f"{v:g}" for v in sim.voxel_size), round(float(s_acq), 2),
               round(s_mean, 2)]
        for meth in ("medi", "fansi"):
            for s in (DEFAULT_RAD_PER_PPM, s_acq, s_mean):
                chi = inversion.invert(meth, local, kept, sim.voxel_size, sim.b0_dir,
                                       magnitude=mag, noise=noise, rad_per_ppm=float(s))
                row.append(round(metrics.nrmse_detrended(chi, ph.chi_brain, kept & brain), 1))
        rows.append(row)
    text = ("## MEDI / FANSI: fixed nonlinear scale or the acquisition's\n\n"
            f"Whole-head cases with voxels ×{coarsen:g} (true brain mask, qsmflow's fitted field → "
            f"RESHARP default), χ NRMSE % (detrended) in RESHARP's mask; fixed s = "
            f"{DEFAULT_RAD_PER_PPM:.2f} rad/ppm (qsmflow's default) against the acquisition's "
            "s = 2π·γ̄·B0·ΔTE:\n\n")
    text += md_table(["case", "voxel mm", "s ΔTE rad/ppm", "s mean TE", "MEDI fixed", "MEDI ΔTE",
                      "MEDI mean TE", "FANSI fixed", "FANSI ΔTE", "FANSI mean TE"], rows)
    return text + "\n"

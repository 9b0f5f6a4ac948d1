"""Whole-head background removal (issue 12, "keep the cortex"): brain coverage and accuracy.

For each :data:`qsmflow.sims.megre.WHOLE_HEAD_CASES` case, given the *true* brain mask, every
background-removal configuration runs on two total fields: the true one and qsmflow's own
(``phase.unwrap_echoes`` → ``phase.fit_multi_echo`` → ppm). Reported per configuration:

- coverage: % of the true brain kept by the method's eroded mask;
- local-field NRMSE (challenge, demeaned, %) vs the true local field inside the kept region,
  inside the whole brain (dropped voxels count as 0: their local field is unknown) and in the
  0–5 mm shell inside the brain edge (also zero-filled);
- χ NRMSE (challenge 2.0 detrended, :func:`qsmflow.metrics.nrmse_detrended`, %) after TKD and
  FANSI, inside the whole true brain (zero-filled) and inside the kept region;
- run time of the background removal (s, this machine, not a quiet one).

Total fields: ``true``; ``fitted`` (qsmflow's fit inside the true mask); ``fitted+QM`` (the
same, background removal inside the true mask ∩ the fit's phase-quality mask, as the pipeline
does: it drops the few edge voxels whose unwrapping failed; ``--quality-mask``).

    python benchmarks/bench_wholehead_bg.py --cases 3T-1mm 7T-1mm          # 1 mm, minutes each
    python benchmarks/bench_wholehead_bg.py --coarsen 2 --no-fansi         # 2 mm smoke run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from _util import md_table
from qsmflow import bgremoval, inversion, masking, metrics, physics
from qsmflow.sims import megre
from qsmflow import phase as qphase

#: (label, method, parameters)
CONFIGS = [
    ("resharp (default)", "resharp", {}),
    ("resharp default, edge 2 mm", "resharp", {"edge_mm": 2.0}),
    ("resharp r2 edge 1 mm", "resharp", {"radius_mm": 2.0, "edge_mm": 1.0}),
    ("resharp r2 λ1e-4", "resharp", {"radius_mm": 2.0, "lam": 1e-4}),
    ("resharp r3", "resharp", {"radius_mm": 3.0}),
    ("resharp r6 λ1e-4 (old)", "resharp", {"radius_mm": 6.0, "lam": 1e-4}),
    ("vsharp 12→1 vox", "vsharp", {}),
    ("pdf", "pdf", {}),
    ("lbv", "lbv", {}),
]
#: configurations whose χ is also computed with FANSI on the fitted field (slow: ~75 s each
#: at 1 mm on 2 cores)
FANSI_FOR = ("truth", "resharp (default)", "resharp r6 λ1e-4 (old)")
EDGE_MM = 5.0


def _chain_field(sim, mask):
    """qsmflow's own total field (ppm), noise (ppm) and fit residual (rad) from the echoes."""
    unwrapped = qphase.unwrap_echoes(sim.phase, sim.magnitude, sim.te_s, sim.voxel_size,
                                     mask=mask)
    fit = qphase.fit_multi_echo(unwrapped, sim.magnitude, sim.te_s, mask)
    return (physics.hz_to_ppm(fit.field_hz, sim.b0_tesla),
            physics.hz_to_ppm(fit.noise_hz, sim.b0_tesla), fit.residual)


def _chi_rows(local, em, brain, chi_true, sim, magnitude, noise, fansi):
    out = {}
    for meth in ("tkd", "fansi") if fansi else ("tkd",):
        t0 = time.perf_counter()
        chi = inversion.invert(meth, local, em, sim.voxel_size, sim.b0_dir, magnitude=magnitude,
                               noise=noise)
        out[f"{meth}_brain"] = metrics.nrmse_detrended(np.where(em, chi, 0.0), chi_true, brain)
        out[f"{meth}_kept"] = metrics.nrmse_detrended(chi, chi_true, em & brain)
        out[f"{meth}_s"] = time.perf_counter() - t0
    return out


def evaluate_case(case, coarsen=1.0, fansi=True, seed=0, configs=CONFIGS, quality_mask=False):
    """Rows (dicts) of one case: every configuration on the true and on the fitted field
    (``quality_mask``: also on the fitted field inside the true mask ∩ the phase-quality mask
    of the fit, :func:`qsmflow.masking.phase_quality_mask`, as the pipeline does)."""
    ph, sim = megre.simulate_case(case, seed=seed, coarsen=coarsen)
    brain = ph.brain_mask
    vs = sim.voxel_size
    loc = sim.local_field_ppm
    chi_true = ph.chi_brain
    mag = np.sqrt(np.sum(sim.magnitude.astype(np.float64) ** 2, axis=-1))
    shell = brain & (ndimage.distance_transform_edt(brain, sampling=vs) <= EDGE_MM)
    t0 = time.perf_counter()
    fitted, noise, residual = _chain_field(sim, brain)
    chain_s = time.perf_counter() - t0
    fields = {"true": (physics.hz_to_ppm(sim.total_field_hz, sim.b0_tesla), None, brain),
              "fitted": (fitted, noise, brain)}
    if quality_mask:
        fields["fitted+QM"] = (fitted, noise,
                               brain & masking.phase_quality_mask(residual, mask=brain))
    rows = [{"case": case, "field": "true local", "config": "truth", "coverage": 100.0,
             "kept": 0.0, "brain": 0.0, "edge": 0.0, "s": 0.0,
             **_chi_rows(loc, brain, brain, chi_true, sim, mag, None, fansi)}]
    for fname, (total, noise, bgmask) in fields.items():
        for label, method, params in configs:
            t0 = time.perf_counter()
            local, em = bgremoval.remove_background(method, total, bgmask, vs, sim.b0_dir,
                                                    **params)
            dt = time.perf_counter() - t0
            em = em & brain
            filled = np.where(em, local, 0.0)
            row = {"case": case, "field": fname, "config": label,
                   "coverage": 100.0 * em.sum() / brain.sum(),
                   "kept": metrics.nrmse(local, loc, em),
                   "brain": metrics.nrmse(filled, loc, brain),
                   "edge": metrics.nrmse(filled, loc, shell), "s": dt}
            row.update(_chi_rows(local, em, brain, chi_true, sim, mag, noise,
                                 fansi and fname != "true" and label in FANSI_FOR))
            rows.append(row)
            print(_fmt_row(row), flush=True)
    for r in rows:
        r["chain_s"] = chain_s
    return rows


def _fmt_row(r):
    def g(k):
        return f"{r[k]:.1f}" if k in r else "–"

    return [r["field"], r["config"], g("coverage"), g("kept"), g("brain"), g("edge"),
            g("tkd_brain"), g("tkd_kept"), g("fansi_brain"), g("fansi_kept"), f"{r['s']:.1f}"]


HEADER = ["total field", "method", "coverage %", "local NRMSE % kept", "local NRMSE % brain",
          f"local NRMSE % 0–{EDGE_MM:g} mm edge", "χ TKD % brain", "χ TKD % kept",
          "χ FANSI % brain", "χ FANSI % kept", "bg s"]


def tables(rows) -> str:
    out = []
    for case in dict.fromkeys(r["case"] for r in rows):
        rs = [r for r in rows if r["case"] == case]
        out.append(f"\n**{case}** (true brain mask; field fit {rs[0]['chain_s']:.0f} s)\n")
        out.append(md_table(HEADER, [_fmt_row(r) for r in rs]))
    return "\n".join(out) + "\n"


def run(figdir: Path, quick: bool) -> str:
    """Section for ``benchmarks/run.py`` (``quick``: 2 mm voxels, TKD only)."""
    rows = []
    for case in megre.WHOLE_HEAD_CASES:
        rows += evaluate_case(case, coarsen=2.0 if quick else 1.0, fansi=not quick,
                              quality_mask=True)
    return ("## Whole head: background removal (coverage, local field, χ)\n\n"
            + (__doc__.split("\n\n")[1]) + "\n" + tables(rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="*", default=list(megre.WHOLE_HEAD_CASES))
    ap.add_argument("--coarsen", type=float, default=1.0, help="voxel size × this (2: fast)")
    ap.add_argument("--no-fansi", action="store_true", help="TKD only")
    ap.add_argument("--quality-mask", action="store_true",
                    help="also the fitted field inside the true mask ∩ the phase-quality mask")
    ap.add_argument("--only", nargs="*", help="configuration labels to run (default: all)")
    ap.add_argument("--out", type=Path, help="also write the Markdown tables here")
    args = ap.parse_args(argv)
    rows = []
    for case in args.cases:
        configs = [c for c in CONFIGS if not args.only or c[0] in args.only]
        rows += evaluate_case(case, coarsen=args.coarsen, fansi=not args.no_fansi,
                              configs=configs, quality_mask=args.quality_mask)
        text = tables(rows)
        if args.out:
            args.out.write_text(text)
    print(tables(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Field mapping speed and peak memory at three volume sizes (the targets are for
164×205×205 on 2 CPU cores), and brain extraction on 1 mm whole heads (target ≤ 10 s). Run it
on a quiet machine: ``python benchmarks/run.py --only fieldmap_speed``."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from _util import md_table, measure
from qsmflow import bgremoval, masking, physics
from qsmflow import phase as ph


def _speed(quick):
    from qsmflow.sims.phantom import make_head_phantom
    from qsmflow.sims.megre import simulate_megre

    sizes = [((96, 96, 48), (2.0, 2.0, 3.0))]
    if not quick:
        sizes += [((164, 205, 205), (1.0, 1.0, 1.0)), ((256, 256, 128), (0.9, 0.9, 1.4))]
    rows = []
    for shape, vs in sizes:
        p = make_head_phantom(shape, vs, seed=0)
        s = simulate_megre(p, b0_tesla=3.0, snr=100, b0_dir=(0, 0, 1), seed=1)
        m = p.brain_mask
        total = s.total_field_hz
        u = ph.unwrap_echoes(s.phase, s.magnitude, s.te_s, vs, mask=m)
        steps = [
            ("Laplacian unwrap (1 echo)", ph.laplacian_unwrap, (s.phase[..., 0], vs), {}, 3),
            ("quality-guided unwrap (4 echoes)", ph.unwrap_echoes,
             (s.phase, s.magnitude, s.te_s, vs), {"mask": m}, 30),
            ("multi-echo fit", ph.fit_multi_echo, (u, s.magnitude, s.te_s, m), {}, 5),
            ("magnitude mask", masking.magnitude_mask, (s.magnitude, vs), {"te_s": s.te_s}, None),
            ("RESHARP", bgremoval.resharp, (total, m, vs), {}, 10),
            ("V-SHARP", bgremoval.vsharp, (total, m, vs), {}, 10),
            ("PDF", bgremoval.pdf, (total, m, vs, (0, 0, 1)), {}, 60),
        ]
        for name, fn, args, kw, target in steps:
            r = measure(fn, *args, repeat=1, **kw)
            rows.append(["×".join(map(str, shape)), name, r["median_s"], r["peak_mb"],
                         "" if target is None else f"≤ {target} s"])
        del p, s, u
    return md_table(["volume", "step", "s", "peak MB", "target (164×205×205)"], rows)


def _dice(a, b) -> float:
    return round(float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))),
                 4)


def _wholehead_masks(quick):
    """The default whole-head extractor (deepbet + magnitude/R2* trim) at 1 mm, 3 and 7 T."""
    from qsmflow.sims.phantom import make_whole_head_phantom
    from qsmflow.sims.megre import WHOLE_HEAD_CASES, realistic_settings, simulate_megre

    threads = physics.fft_workers()
    rows = []
    for case in ("3T-1mm",) if quick else ("3T-1mm", "7T-1mm"):
        c = WHOLE_HEAD_CASES[case]
        vs = tuple((2.0 if quick else 1.0) * v for v in c["voxel_size"])
        p = make_whole_head_phantom(vs, seed=7)
        s = simulate_megre(p, c["te_s"], c["b0_tesla"], (0, 0, 1), snr=80, seed=1,
                           **realistic_settings(c["b0_tesla"]))
        if not masking.deepbet_available():
            rows.append([case, "deepbet not installed", "", "", ""])
            continue
        # in this process (torch's thread pool does not survive a fork): the first call loads
        # the network, as every App run does once
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            mask = masking.deepbet_mask(s.magnitude, p.affine, te_s=s.te_s, threads=threads)
            times.append(time.perf_counter() - t0)
        rows.append([case, "×".join(map(str, p.shape)), times[0], statistics.median(times[1:]),
                     _dice(mask, p.brain_mask)])
    return md_table(["case", "matrix", "first call s (incl. loading)", "s (median of 3 more)",
                     "Dice vs true brain"], rows)


def run(figdir: Path, quick: bool) -> str:
    return "\n".join(["## Field mapping: speed and peak memory\n",
                      f"QSMFLOW_NUM_THREADS={physics.fft_workers()}; each step once in a forked "
                      "process (peak = resident-memory increase).\n",
                      _speed(quick),
                      "\nBrain extraction on whole heads (the default `--masking auto` on a "
                      "whole-head FOV: deepbet, trimmed to the magnitude/R2* foreground; torch "
                      "threads = QSMFLOW_NUM_THREADS). Target: "
                      "≤ 10 s for a 1 mm head on 2 cores.\n",
                      _wholehead_masks(quick)])

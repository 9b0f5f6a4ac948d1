"""Field mapping speed and peak memory at three volume sizes (the targets are for
164×205×205 on 2 CPU cores). Run it on a quiet machine: ``python benchmarks/run.py --only
fieldmap_speed``."""

from __future__ import annotations

from pathlib import Path

from _util import md_table, measure
from qsmflow import bgremoval, masking, physics
from qsmflow import phase as ph


def _speed(quick):
    from qsmflow.phantom import make_head_phantom
    from qsmflow.simulate import simulate_megre

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


def run(figdir: Path, quick: bool) -> str:
    return "\n".join(["## Field mapping: speed and peak memory\n",
                      f"QSMFLOW_NUM_THREADS={physics.fft_workers()}; each step once in a forked "
                      "process (peak = resident-memory increase).\n",
                      _speed(quick)])

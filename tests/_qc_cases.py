"""The QC calibration set: good and deliberately broken QSM results of simulated heads.

Each case runs qsmflow's core pipeline (region-growing unwrapping, multi-echo fit, magnitude
mask or a given mask, RESHARP, an inversion) on a simulated head, breaks one thing the way real
data or users do, and returns :func:`qsmflow.qc.qc_report`'s verdict. ``python
tests/_qc_cases.py`` prints the calibration table.
"""

from __future__ import annotations

import functools

import numpy as np

from qsmflow import bgremoval, inversion, masking, phase, qc
from qsmflow.physics import b0_direction_from_affine, hz_to_ppm
from qsmflow.sims.megre import BRAIN_LIKE_CONTRAST, simulate_case, simulate_megre

DEMO_SHAPE, DEMO_VOXEL = (68, 84, 64), (3.0, 3.0, 3.0)   # the demo's geometry


@functools.lru_cache(maxsize=None)
def head(kind: str):
    """``(phantom, MEGRE)``: ``demo`` (3 mm head), ``wholehead`` (2 mm, vertex to neck) or
    ``brainlike`` (the same with non-brain tissue that looks like brain on magnitude),
    ``oblique`` (18° oblique) or ``7T`` (the whole head at 7 T)."""
    if kind == "demo":
        from qsmflow.sims.phantom import make_head_phantom

        ph = make_head_phantom(DEMO_SHAPE, DEMO_VOXEL, seed=3)
        return ph, simulate_megre(ph, (0.004, 0.008, 0.012, 0.016), 3.0, snr=100, seed=3)
    contrast = BRAIN_LIKE_CONTRAST if kind == "brainlike" else None
    case = {"oblique": "3T-1mm-oblique18", "7T": "7T-1mm"}.get(kind, "3T-1mm")
    return simulate_case(case, seed=1, coarsen=2, contrast=contrast)


@functools.lru_cache(maxsize=None)
def field(kind: str, mask_kind: str = "computed"):
    """Total-field fit of ``head(kind)`` inside a mask: ``computed`` (qsmflow's magnitude
    mask), ``truth`` (the phantom's brain) or ``dilated`` (the true brain dilated by 12 mm
    inside the head). Returns (mask, fit, sim)."""
    ph, sim = head(kind)
    vs = sim.voxel_size
    if mask_kind == "computed":
        mask = masking.magnitude_mask(sim.magnitude, vs, te_s=sim.te_s)
    elif mask_kind == "truth":
        mask = ph.brain_mask.copy()
    else:
        mask = masking.dilate_ball(ph.brain_mask, vs, 12.0) & ph.head_mask
    u = phase.unwrap_echoes(sim.phase, sim.magnitude, sim.te_s, vs, mask=mask)
    return mask, phase.fit_multi_echo(u, sim.magnitude, sim.te_s, mask), sim


#: case → (head, mask kind, what is broken, expected: good or bad)
CASES = {
    "demo": ("demo", "computed", None, "good"),
    "wholehead": ("wholehead", "computed", None, "good"),
    "brainlike-truthmask": ("brainlike", "truth", None, "good"),
    "wholehead-oblique18": ("oblique", "computed", None, "good"),
    "wholehead-7T": ("7T", "computed", None, "good"),
    "demo-tikhonov": ("demo", "computed", "tikhonov", "good"),
    "brainlike-neckmask": ("brainlike", "computed", None, "bad"),
    "wholehead-dilatedmask": ("wholehead", "dilated", None, "bad"),
    "demo-wrong-b0": ("demo", "computed", "b0", "bad"),
    "wholehead-wrong-b0": ("wholehead", "computed", "b0", "bad"),
    "demo-hz-as-ppm": ("demo", "computed", "hz", "bad"),
    "demo-te-ms-as-s": ("demo", "computed", "te", "bad"),
    "demo-sign-flip": ("demo", "computed", "sign", "bad"),
    "wholehead-sign-flip": ("wholehead", "computed", "sign", "bad"),
}


def run_case(name: str, method: str = "tkd") -> dict:
    """The QC report (:func:`qsmflow.qc.qc_report`) of one :data:`CASES` entry."""
    kind, mask_kind, broken, _ = CASES[name]
    mask, fit, sim = field(kind, mask_kind)
    vs, b0 = sim.voxel_size, sim.b0_tesla
    b0_dir = b0_direction_from_affine(sim.affine)
    local_hz, eroded = bgremoval.remove_background("resharp", fit.field_hz, mask, vs, b0_dir)
    f = hz_to_ppm(local_hz, b0)
    if broken == "hz":          # the field in Hz passed on as if it were ppm
        f = local_hz
    elif broken == "te":        # echo times in ms read as seconds: the field 1000× too small
        f = f / 1000.0
    elif broken == "sign":      # phase sign convention flipped (e.g. GE data not corrected)
        f = -f
    elif broken == "b0":        # B0 along the first voxel axis instead of the third
        b0_dir = np.array([1.0, 0.0, 0.0])
    if broken == "tikhonov":
        method = "tikhonov"
    chi = inversion.invert(method, f, eroded, vs, b0_dir)
    return qc.qc_report(chi, f, eroded, vs, b0_dir, brain_mask=mask, affine=sim.affine,
                        fit_residual_rad=fit.residual)


if __name__ == "__main__":
    import time

    for case in CASES:
        t = time.time()
        r = run_case(case)
        print(case, CASES[case][3], r["Verdict"], r["Metrics"], f"{time.time() - t:.0f}s",
              flush=True)
        for why in r["Reasons"]:
            print("    ", why)

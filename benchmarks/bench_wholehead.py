"""Whole-head acquisitions (issue 12): the BIDS App with its defaults on simulated whole heads
(vertex to neck, skull base, face, sinuses; realistic R2* per field strength, fat chemical
shift, receive bias) at 3 T and 7 T, 1 mm, 0.75×0.75×2 mm, 0.76×0.76×3 mm and oblique B0,
plus the hard contrast variant (non-brain tissue that looks like brain on magnitude and R2*).

Per case: brain-mask Dice against the true brain (the extraction step, before background
removal), brain coverage of the mask χ is valid in (after background removal; for the
single-step sstv, which reads the total field, the support of its own χ map), local-field and
χ NRMSE (challenge 2.0: detrended, inside the true brain ∩ each map's mask), per-step
time; one figure per case. ``QSMFLOW_BENCH_WH_COARSEN`` (default 1) multiplies every voxel
size (2 = a quick run at half the resolution); ``QSMFLOW_BENCH_WH_CASES`` picks cases
(comma-separated names of ``qsmflow.sims.megre.WHOLE_HEAD_CASES``, ``+brainlike`` suffix for the
hard contrast, ``@F`` suffix for a per-case voxel-size factor, e.g. ``3T-1mm@1.5``).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _util import md_table
from bench_pipeline import run_app

from qsmflow.inversion import TOTAL_FIELD_METHODS

INVERSIONS = ("tkd", "medi", "fansi", "metaqsm", "sstv")
TARGET_DICE, TARGET_NRMSE, TARGET_COVER = 0.95, 45.0, 0.90
DEFAULT_CASES = ("3T-1mm", "7T-1mm", "1.5T-1mm", "3T-0.75x0.75x2mm", "3T-0.76x0.76x3mm",
                 "3T-1mm-oblique18", "3T-1mm+brainlike", "7T-1mm+brainlike")


def _qc(log: str) -> str:
    """The App's QC verdict of the participant (PASS / WARN / FAIL) from its log."""
    for verdict in ("FAIL", "WARN", "PASS"):
        if f"QC {verdict}" in log:
            return verdict
    return "?"


def _find(root: Path, pattern: str) -> Path:
    hits = sorted(root.rglob(pattern))
    if not hits:
        raise FileNotFoundError(f"no {pattern} under {root}")
    return hits[0]


def evaluate(bids: Path, out: Path, work: Path, b0_tesla: float) -> dict:
    """Dice, coverage, local-field and χ NRMSE of one finished run against the truth."""
    from qsmflow import physics
    from qsmflow.io import load_nifti
    from qsmflow.metrics import nrmse_demeaned, nrmse_detrended

    t = bids / "derivatives" / "qsmflow-truth" / "sub-01"
    truth = load_nifti(_find(t, "*desc-brain_mask.nii.gz"))[0] > 0
    chi_true = load_nifti(_find(t, "*desc-truth_Chimap.nii.gz"))[0]
    local_true = load_nifti(_find(t, "*desc-local_fieldmap.nii.gz"))[0]
    extracted = load_nifti(_find(work, "brain_mask.nii*"))[0] > 0
    d = out / "sub-01"
    valid = load_nifti(_find(d, "*desc-brain_mask.nii.gz"))[0] > 0
    local = physics.hz_to_ppm(load_nifti(_find(d, "*desc-local_fieldmap.nii.gz"))[0], b0_tesla)
    m = valid & truth
    res = {"dice": float(2 * (extracted & truth).sum() / (extracted.sum() + truth.sum())),
           "coverage": float(m.sum() / truth.sum()),
           "local": nrmse_demeaned(local, local_true, m), "chi": {}, "maps": {}}
    res["cover"] = {}
    for meth in INVERSIONS:
        chi = load_nifti(_find(d, f"*desc-{meth}_Chimap.nii.gz"))[0]
        mm = truth & (chi != 0) if meth in TOTAL_FIELD_METHODS else m
        res["chi"][meth] = nrmse_detrended(chi, chi_true, mm)
        res["cover"][meth] = float(mm.sum() / truth.sum())
        res["maps"][meth] = chi
    res["maps"].update(truth=chi_true, truth_mask=truth, extracted=extracted, valid=valid)
    return res


def _figure(path: Path, name: str, res: dict, bids: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qsmflow.io import load_nifti

    mag = load_nifti(_find(bids / "sub-01", "*echo-1_part-mag_MEGRE.nii.gz"))[0]
    mp = res["maps"]
    best = min(INVERSIONS, key=lambda k: res["chi"][k])
    x = mag.shape[0] // 2
    z = int(np.argmax(mp["truth_mask"].sum(axis=(0, 1))))
    fig, ax = plt.subplots(2, 3, figsize=(12, 8))
    for row, (sl, asp) in enumerate(((np.s_[x, :, :], "sag"), (np.s_[:, :, z], "ax"))):
        ax[row, 0].imshow(mag[sl].T, origin="lower", cmap="gray")
        ax[row, 0].contour(mp["truth_mask"][sl].T, [0.5], colors="lime", linewidths=0.8)
        ax[row, 0].contour(mp["extracted"][sl].T, [0.5], colors="red", linewidths=0.8)
        ax[row, 0].contour(mp["valid"][sl].T, [0.5], colors="yellow", linewidths=0.6)
        ax[row, 0].set_title(f"{asp}: true brain (green), mask (red), χ valid (yellow)",
                             fontsize=8)
        for col, key in ((1, "truth"), (2, best)):
            ax[row, col].imshow(mp[key][sl].T, origin="lower", cmap="gray", vmin=-0.15,
                                vmax=0.15)
            ax[row, col].set_title(f"χ {key}" + (f" ({res['chi'][key]:.0f} %)"
                                                 if key != "truth" else " (ppm ±0.15)"),
                                   fontsize=8)
    for a in ax.ravel():
        a.axis("off")
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def run(figdir: Path, quick: bool) -> str:
    from qsmflow.sims.phantom import WHOLE_HEAD_FOV_MM
    from qsmflow.report import collect_timings
    from qsmflow.sims.megre import BRAIN_LIKE_CONTRAST, WHOLE_HEAD_CASES, write_bids_dataset

    coarsen = float(os.environ.get("QSMFLOW_BENCH_WH_COARSEN", "2" if quick else "1"))
    names = os.environ.get("QSMFLOW_BENCH_WH_CASES")
    names = names.split(",") if names else (DEFAULT_CASES[:2] if quick else DEFAULT_CASES)
    rows, step_rows, figs = [], {}, []
    load0 = os.getloadavg()[0]
    for name in names:
        spec, _, factor = name.partition("@")
        case, _, variant = spec.partition("+")
        c = WHOLE_HEAD_CASES[case]
        vs = tuple((float(factor) if factor else coarsen) * v for v in c["voxel_size"])
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            t0 = time.perf_counter()
            write_bids_dataset(tmp / "bids", subjects=("01",), voxel_size=vs, te_s=c["te_s"],
                               b0_tesla=c["b0_tesla"], oblique_deg=c["oblique_deg"], snr=80,
                               seed=7, whole_head=True, realistic=True,
                               contrast=BRAIN_LIKE_CONTRAST if variant == "brainlike" else None)
            t_sim = time.perf_counter() - t0
            app = run_app(tmp / "bids", tmp / "out", tmp / "work", inversions=INVERSIONS)
            if app["rc"] != 0:
                rows.append([name, "failed", app["log"][-300:].replace("\n", " ")] + [""] * 10)
                continue
            res = evaluate(tmp / "bids", tmp / "out", tmp / "work", c["b0_tesla"])
            fig = figdir / f"wholehead_{name.replace('+', '_').replace('@', '_at')}.png"
            _figure(fig, name, res, tmp / "bids")
            figs.append(fig)
            for s in collect_timings(tmp / "work" / "qsmflow_wf"):
                if s["seconds"] >= 0.5:
                    step_rows.setdefault(s["node"], {})[name] = s["seconds"]
        ok = [k for k in INVERSIONS if res["cover"][k] >= TARGET_COVER] or list(INVERSIONS)
        best = min(ok, key=res["chi"].get)
        met = (res["chi"][best] <= TARGET_NRMSE and res["dice"] >= TARGET_DICE
               and res["cover"][best] >= TARGET_COVER)
        shape = "×".join(str(round(f / v)) for f, v in zip(WHOLE_HEAD_FOV_MM, vs))
        rows.append([name, "×".join(f"{v:g}" for v in vs) + f" mm, {shape}", res["dice"], res["coverage"]]
                    + [res["cover"][m] for m in TOTAL_FIELD_METHODS if m in INVERSIONS]
                    + [res["local"]] + [res["chi"][m] for m in INVERSIONS]
                    + [f"{best} {'yes' if met else '**no**'}", _qc(app["log"]), app["wall_s"]])
        print(f"[wholehead] {name}: sim {t_sim:.0f} s, app {app['wall_s']:.0f} s, "
              f"Dice {res['dice']:.3f}, cover {res['coverage']:.2f}, χ {res['chi']}", flush=True)
    load1 = os.getloadavg()[0]
    text = ("## Whole-head acquisitions\n\n"
            "`qsmflow bids out participant --inversion " + " ".join(INVERSIONS) + "` with the "
            "default mask, unwrapping and background removal on one simulated whole head per "
            "case (`qsmflow.sims.megre.WHOLE_HEAD_CASES`, FOV "
            + "×".join(f"{f:g}" for f in WHOLE_HEAD_FOV_MM) + " mm from the vertex into the neck, "
            "SNR 80, seed 7; `+brainlike`: non-brain soft tissue, muscle, cord and fat with "
            "brain-like M0 and R2*). Dice: the extracted brain mask vs the true brain; coverage: "
            "fraction of the true brain inside the mask χ is valid in (after "
            "background removal; sstv coverage: inside the support of the sstv map, which "
            "inverts the total field in the whole brain mask); local field NRMSE (demeaned) and "
            "χ NRMSE (challenge 2.0, detrended) inside true brain ∩ each map's mask, %. "
            "Targets: Dice ≥ 0.95, coverage ≥ 0.90, best χ NRMSE ≤ 45 % (best: among the maps "
            "with coverage ≥ 0.90). "
            "`@F` in a case name: its voxel size × F (to fit the 2-core budget). Load average "
            f"{load0:.1f} before, {load1:.1f} after (2 cores).\n\n")
    text += md_table(["case", "voxel, matrix", "Dice", "coverage"]
                     + [f"{m} coverage" for m in TOTAL_FIELD_METHODS if m in INVERSIONS]
                     + ["local %"]
                     + [f"χ {m} %" for m in INVERSIONS] + ["best, targets met", "QC", "app wall (s)"],
                     rows)
    if step_rows:
        text += "\nTime per step (s):\n\n"
        text += md_table(["step"] + list(names),
                         [[k] + [v.get(n, "") for n in names] for k, v in sorted(step_rows.items())])
    text += "\n" + "\n".join(f"![{f.stem}](figures/{f.name})" for f in figs) + "\n"
    return text

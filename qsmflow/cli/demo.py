"""``qsmflow demo OUTDIR``: simulate a small BIDS dataset and run the whole pipeline on it.

    OUTDIR/bids/                     the simulated raw dataset (+ ground truth in derivatives/)
    OUTDIR/derivatives/qsmflow/      the BIDS App's output: χ maps, masks, fields, reports
    OUTDIR/work/                     Nipype's working folder (rerun = nothing recomputed)

Then prints where the χ maps and the reports are, and how close each χ map is to the
phantom's true susceptibility (NRMSE inside the brain mask).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import DEFAULT_INVERSIONS


def get_parser() -> argparse.ArgumentParser:
    class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    p = argparse.ArgumentParser(prog="qsmflow demo", description=__doc__, formatter_class=_Help,
                                allow_abbrev=False)
    p.add_argument("outdir", type=Path, help="folder for the demo (created)")
    p.add_argument("--n-subjects", type=int, default=2, help="simulated participants")
    p.add_argument("--inversion", nargs="+", default=list(DEFAULT_INVERSIONS),
                   help="dipole inversions to run")
    p.add_argument("--nprocs", type=int, default=2, help="parallel processes (MultiProc)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulation")
    return p


def truth_errors(bids_dir: Path, out_dir: Path, subjects, inversions) -> list[tuple]:
    """``[(subject, method, NRMSE %)]`` of every χ map against the phantom's truth, inside the
    intersection of the pipeline's and the true brain mask (for a single-step method, which
    reads the total field, of its χ map's support and the true brain mask)."""
    from ..inversion import TOTAL_FIELD_METHODS
    from ..io import load_nifti
    from ..metrics import nrmse_demeaned

    from ..sims.megre import truth_file

    rows = []
    for sub in subjects:
        chi_true = load_nifti(truth_file(bids_dir, sub, "truth", "Chimap"))[0]
        mask_true = load_nifti(truth_file(bids_dir, sub, "brain", "mask"))[0] > 0
        d = out_dir / f"sub-{sub}" / "anat"
        mask = load_nifti(d / f"sub-{sub}_desc-brain_mask.nii.gz")[0] > 0
        m = mask & mask_true
        for meth in inversions:
            chi = load_nifti(d / f"sub-{sub}_desc-{meth}_Chimap.nii.gz")[0]
            mm = mask_true & (chi != 0) if meth in TOTAL_FIELD_METHODS else m
            rows.append((sub, meth, nrmse_demeaned(chi, chi_true, mm)))
    return rows


def main(argv=None) -> int:
    opts = get_parser().parse_args(argv)
    from ..sims.megre import make_demo_dataset
    from . import run

    out = opts.outdir.expanduser().resolve()
    bids_dir, deriv, work = out / "bids", out / "derivatives" / "qsmflow", out / "work"
    if opts.n_subjects < 1:
        print("qsmflow demo: error: --n-subjects must be >= 1", file=sys.stderr)
        return run.EXIT_BAD_INPUT
    if not (bids_dir / "dataset_description.json").exists():
        print(f"qsmflow demo: simulating {opts.n_subjects} participant(s) into {bids_dir} ...",
              flush=True)
        make_demo_dataset(bids_dir, n_subjects=opts.n_subjects, seed=opts.seed)
    subjects = [f"{i + 1:02d}" for i in range(opts.n_subjects)]
    rc = run.main([str(bids_dir), str(deriv), "participant", "-w", str(work),
                   "--nprocs", str(opts.nprocs), "--participant-label", *subjects,
                   "--inversion", *opts.inversion])
    if rc != run.EXIT_OK:
        return rc
    print("\nχ maps (ppm):")
    for sub in subjects:
        for p in sorted((deriv / f"sub-{sub}" / "anat").glob("*_Chimap.nii.gz")):
            print(f"  {p}")
    print("reports:")
    for sub in subjects:
        print(f"  {deriv / f'sub-{sub}.html'}")
    print("accuracy against the phantom's true χ (NRMSE % inside the brain mask, means removed):")
    for sub, meth, err in truth_errors(bids_dir, deriv, subjects, opts.inversion):
        print(f"  sub-{sub} {meth:>10s}: {err:5.1f} %")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())

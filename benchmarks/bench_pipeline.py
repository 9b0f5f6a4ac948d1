"""Whole BIDS App on one subject of a clinical protocol: 256×256×64, 0.76×0.76×3 mm, 4 echoes,
3 T, the default inversions (TKD, MEDI, single-step TV), MultiProc with 2 processes. Target:
≤ 90 s wall, ≤ 4 GB peak memory.

The app runs as a separate process (``python -m qsmflow.cli.main``); peak memory is the
largest sum of resident memory over that process and all its children (Nipype's workers),
sampled every 0.1 s from /proc. Step times come from Nipype's result files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _util import md_table

from qsmflow.config import DEFAULT_INVERSIONS

SHAPE, VOXEL = (256, 256, 64), (0.76, 0.76, 3.0)
QUICK_SHAPE = (128, 128, 32)
TARGET_S, TARGET_GB = 90.0, 4.0


def _tree_rss_kb(root_pid: int) -> int:
    """Sum of VmRSS (kB) of ``root_pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kb = next((int(line.split()[1]) for line in (d / "status").read_text().splitlines()
                       if line.startswith("VmRSS:")), 0)
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
        rss[int(d.name)] = kb
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def run_app(bids: Path, out: Path, work: Path, nprocs: int = 2,
            inversions=DEFAULT_INVERSIONS) -> dict:
    """Run the app once in a subprocess → wall seconds, peak memory (GB), exit code, log."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "QSMFLOW_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "qsmflow.cli.main", str(bids), str(out), "participant",
           "-w", str(work), "--nprocs", str(nprocs), "--inversion", *inversions,
           "--skip-bids-validation"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kb(proc.pid))
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_gb": peak / 1024**2, "rc": proc.returncode,
            "log": proc.stdout.read()}


def _coverage(bids: Path, out: Path, methods) -> dict:
    """Fraction of the true brain where each χ map is valid (non-zero)."""
    from qsmflow.io import load_nifti
    from qsmflow.sims.megre import truth_file

    brain = load_nifti(truth_file(bids, "01", "brain", "mask"))[0] > 0
    d = out / "sub-01" / "anat"
    return {m: round(float(np.mean(load_nifti(d / f"sub-01_desc-{m}_Chimap.nii.gz")[0][brain]
                                   != 0)), 3) for m in methods}


def run(figdir: Path, quick: bool) -> str:
    from qsmflow.report import collect_timings
    from qsmflow.sims.megre import write_bids_dataset

    shape = QUICK_SHAPE if quick else SHAPE
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_bids_dataset(tmp / "bids", subjects=("01",), shape=shape, voxel_size=VOXEL,
                           te_s=(0.004, 0.008, 0.012, 0.016), oblique_deg=0.0, seed=1)
        t_sim = time.perf_counter() - t0
        load0 = os.getloadavg()[0]
        res = run_app(tmp / "bids", tmp / "out", tmp / "work")
        load1 = os.getloadavg()[0]
        if res["rc"] != 0:
            return (f"## Whole pipeline (BIDS App)\n\nThe run failed (exit {res['rc']}):\n\n"
                    f"```\n{res['log'][-3000:]}\n```\n")
        steps = collect_timings(tmp / "work" / "qsmflow_wf")
        from qsmflow.cli.demo import truth_errors

        errs = truth_errors(tmp / "bids", tmp / "out", ["01"], DEFAULT_INVERSIONS)
        cover = _coverage(tmp / "bids", tmp / "out", DEFAULT_INVERSIONS)
    ok_t = "yes" if res["wall_s"] <= TARGET_S else "**no**"
    ok_m = "yes" if res["peak_gb"] <= TARGET_GB else "**no**"
    rows = [[f"{shape[0]}×{shape[1]}×{shape[2]}", "×".join(f"{v:g}" for v in VOXEL), 4,
             res["wall_s"], f"{ok_t} (≤ {TARGET_S:g} s)", res["peak_gb"],
             f"{ok_m} (≤ {TARGET_GB:g} GB)"]]
    text = ("## Whole pipeline (BIDS App)\n\n"
            "One simulated subject through `qsmflow bids_dir out participant --nprocs 2` "
            f"(default inversions {' '.join(DEFAULT_INVERSIONS)}; MultiProc, 2 processes, 1 FFT "
            "thread each), from raw BIDS to validated derivatives and the HTML report. Wall time of the whole command "
            "(incl. start-up, pybids indexing, report); peak memory = the largest summed RSS of "
            "the app and its worker processes. "
            f"{'(quick: smaller matrix) ' if quick else ''}Simulating the dataset took "
            f"{t_sim:.0f} s (not counted). Machine load average {load0:.1f} before and "
            f"{load1:.1f} after the run (on {os.cpu_count()} cores: above the core count the "
            "times are inflated by other work).\n\n")
    text += md_table(["matrix", "voxel (mm)", "echoes", "wall (s)", "target met", "peak (GB)",
                      "target met"], rows)
    text += "\nTime per step (node run time from Nipype's result files, s):\n\n"
    text += md_table(["step", "s"], [[s["node"], s["seconds"]] for s in steps
                                     if s["seconds"] >= 0.05])
    text += ("\nAccuracy against the phantom's truth (NRMSE %, means removed, where the map "
             "is valid inside the true brain; coverage: the fraction of the true brain it is "
             "valid in):\n\n")
    text += md_table(["method", "NRMSE %", "coverage"],
                     [[m, e, cover[m]] for _, m, e in errs])
    return text

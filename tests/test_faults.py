"""Faults: a run killed mid-way (SIGTERM as a scheduler's time limit sends it, SIGKILL as the OOM
killer does) and rerun with the same work folder recomputes nothing that had finished and gives
the same derivatives as an uninterrupted run; the input stays byte-identical; two subjects under
MultiProc give the same derivatives as under Linear."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _robustness import (app_cmd, app_env, assert_same_derivatives, run_app,
                         tree_fingerprint)

ARGS = ("participant", "--participant-label", "01", "02", "--inversion", "tkd",
        "--skip-bids-validation")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from qsmflow.sims.megre import write_bids_dataset

    root = tmp_path_factory.mktemp("faults") / "bids"
    write_bids_dataset(root, subjects=("01", "02"), shape=(32, 40, 32), voxel_size=(6.0, 6.0, 6.0),
                       te_s=(0.004, 0.008, 0.012), seed=5)
    return root, tree_fingerprint(root)


@pytest.fixture(scope="module")
def linear_run(dataset, tmp_path_factory):
    """The reference: both subjects, Nipype's Linear plugin, never interrupted."""
    bids, _ = dataset
    d = tmp_path_factory.mktemp("linear")
    r = run_app(bids, d / "out", *ARGS, "-w", d / "work", "--linear", timeout=900)
    assert r.returncode == 0, f"Linear run failed\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return d / "out"


def _results(work: Path) -> dict[str, int]:
    """Finished nodes: result file -> mtime (ns)."""
    return {str(p): p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}


def _assert_no_broken_images(out: Path):
    """Whatever a killed run left in the output is whole: every visible image reads fully."""
    for p in out.rglob("*.nii*"):
        if p.name.startswith("."):
            continue  # a temporary file of an atomic write, never a derivative name
        data = np.asanyarray(nib.load(p).dataobj)
        assert data.size > 0, p


def test_multiproc_equals_linear(dataset, linear_run, tmp_path):
    bids, fingerprint = dataset
    r = run_app(bids, tmp_path / "out", *ARGS, "-w", tmp_path / "work", "--nprocs", "2",
                timeout=900)
    assert r.returncode == 0, f"MultiProc run failed\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert_same_derivatives(tmp_path / "out", linear_run)
    for sub in ("01", "02"):
        assert list((tmp_path / "out" / f"sub-{sub}").rglob("*_Chimap.nii.gz")), sub
    # nothing was written outside the output and work folders, nothing inside points out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "work"]
    out = (tmp_path / "out").resolve()
    for p in out.rglob("*"):
        assert out in p.resolve().parents, f"{p} resolves outside the output folder"
    assert tree_fingerprint(bids) == fingerprint, "the input dataset was modified"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_run_resumes_without_recomputing(sig, dataset, linear_run, tmp_path):
    bids, fingerprint = dataset
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = app_cmd(bids, out, *ARGS, "-w", work, "--nprocs", "2")
    # its own session: the signal goes to the whole process group, workers included, as a
    # scheduler's or the OOM killer's would
    proc = subprocess.Popen(cmd, env=app_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and len(_results(work)) < 3:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert len(_results(work)) >= 3, "no node finished in time"
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    time.sleep(0.5)  # let orphaned pool workers, if any, finish dying
    assert proc.returncode != 0
    done = _results(work)
    _assert_no_broken_images(out)

    r = run_app(bids, out, *ARGS, "-w", work, "--nprocs", "2", timeout=900)
    assert r.returncode == 0, f"rerun failed\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    after = _results(work)
    recomputed = [p for p, t in done.items() if after.get(p) != t]
    assert not recomputed, f"finished nodes were recomputed: {recomputed[:5]}"
    assert len(after) > len(done), "the rerun ran nothing new: the kill came too late"
    assert_same_derivatives(out, linear_run)
    assert tree_fingerprint(bids) == fingerprint, "the input dataset was modified"

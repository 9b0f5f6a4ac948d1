"""Helpers shared by the robustness tests (SLURM, bad input, faults, security).

Runs the BIDS App as a user would (a subprocess of this interpreter), fingerprints folders, and
compares two derivative trees numerically.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _nipype_config_dir() -> str:
    """A Nipype config folder whose ``nipype.cfg`` polls finished jobs every 0.2 s instead of 2 s
    (Nipype's default; it only paces the scheduler loop, results are the same). Tiny test runs
    are dominated by that sleep otherwise."""
    import tempfile

    d = Path(tempfile.gettempdir()) / f"qsmflow-tests-nipype-{os.getuid()}"
    d.mkdir(exist_ok=True)
    (d / "nipype.cfg").write_text("[execution]\npoll_sleep_duration = 0.2\n")
    return str(d)


def app_env(**extra) -> dict:
    """Environment for the App: one BLAS thread, writable matplotlib cache, LOGNAME for Nipype,
    a faster Nipype scheduler loop (see :func:`_nipype_config_dir`)."""
    env = dict(os.environ)
    env.setdefault("NIPYPE_CONFIG_DIR", _nipype_config_dir())
    env.setdefault("LOGNAME", "qsmflow")
    env["OMP_NUM_THREADS"] = "1"
    env["OPENBLAS_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    env.setdefault("MPLCONFIGDIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "qsmflow-mpl"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update({k: str(v) for k, v in extra.items()})
    return env


def app_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "qsmflow.cli.main", *[str(a) for a in args]]


def run_app(*args, timeout=600, env=None, **popen) -> subprocess.CompletedProcess:
    """``qsmflow ARGS`` in a subprocess; stdout/stderr captured as text."""
    return subprocess.run(app_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env=env or app_env(), stdin=subprocess.DEVNULL, **popen)


def tree_fingerprint(root) -> dict[str, tuple]:
    """relative path -> (sha256, mode) of every file and (None, mode) of every folder under root."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        st = p.lstat()
        if p.is_dir():
            out[rel] = (None, st.st_mode)
        else:
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mode)
    return out


def derivative_images(out_dir) -> dict[str, np.ndarray]:
    """relative path -> data of every NIfTI of a derivatives tree (work files excluded)."""
    out_dir = Path(out_dir)
    imgs = {}
    for p in sorted(out_dir.rglob("*.nii*")):
        rel = p.relative_to(out_dir)
        if rel.parts[0] in ("logs", "work") or p.name.startswith("."):
            continue
        imgs[str(rel)] = np.asanyarray(nib.load(p).dataobj)
    return imgs


def assert_same_derivatives(a, b, rtol=1e-5, atol=1e-6):
    """Both trees hold the same NIfTI files with numerically equal data."""
    ia, ib = derivative_images(a), derivative_images(b)
    assert ia, f"no derivative images under {a}"
    assert sorted(ia) == sorted(ib), (sorted(set(ia) ^ set(ib)))
    for k in ia:
        assert ia[k].shape == ib[k].shape, k
        assert np.allclose(ia[k], ib[k], rtol=rtol, atol=atol, equal_nan=True), (
            f"{k}: max |diff| {np.nanmax(np.abs(ia[k].astype(float) - ib[k].astype(float)))}")


def node_results(work_dir):
    """Every Nipype node result (``result_*.pklz``) under a work folder: [(path, result)]."""
    from nipype.utils.filemanip import loadpkl

    out = []
    for p in sorted(Path(work_dir).rglob("result_*.pklz")):
        out.append((p, loadpkl(p)))
    return out


def run_app_inprocess(*args) -> subprocess.CompletedProcess:
    """``qsmflow ARGS`` called in this process (no interpreter start-up: ~0.2 s instead of ~2 s
    for runs that stop at the up-front checks). Exit code, stdout and stderr as from a
    subprocess; an exception escaping ``main`` is reported as a traceback on stderr, exit 1."""
    import contextlib
    import io
    import logging
    import traceback

    from qsmflow.cli.main import main

    root = logging.getLogger()
    guard = logging.NullHandler()  # keeps the App's logging.basicConfig from binding our streams
    root.addHandler(guard)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([str(a) for a in args])
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:  # reported like an interpreter would
                traceback.print_exc(file=err)
                rc = 1
    finally:
        root.removeHandler(guard)
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())

"""End to end: ``qsmflow demo`` (simulated dataset + the BIDS App, MultiProc with 2 processes),
its outputs against the BIDS validator and the phantom's truth, the report, and a rerun on the
same work folder that recomputes nothing. One demo run is shared by all tests of this module."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import tomllib
from pathlib import Path

import pytest

from qsmflow.cli import demo, run
from qsmflow.io import run_bids_validator

#: accuracy the demo must reach: NRMSE (%) of χ against the phantom's truth inside the brain
#: mask (3 mm voxels, SNR 100, the pipeline's own mask/field, not the true local field)
MAX_NRMSE = {"tkd": 95.0, "medi": 85.0}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = demo.main([str(out), "--nprocs", "2"])
    return {"root": out, "rc": rc, "stdout": buf.getvalue(), "bids": out / "bids",
            "deriv": out / "derivatives" / "qsmflow", "work": out / "work"}


def test_demo_finishes_and_says_where_the_results_are(demo_run):
    assert demo_run["rc"] == 0, demo_run["stdout"][-3000:]
    text = demo_run["stdout"]
    for sub in ("01", "02"):
        for m in MAX_NRMSE:
            assert f"sub-{sub}_desc-{m}_Chimap.nii.gz" in text
        assert str(demo_run["deriv"] / f"sub-{sub}.html") in text
    assert "2/2 participant(s) succeeded" in text


def test_outputs_pass_the_bids_validator(demo_run):
    errors, _ = run_bids_validator(demo_run["deriv"])
    assert errors == []


def test_derivatives_and_sidecars(demo_run):
    d = demo_run["deriv"]
    desc = json.loads((d / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "qsmflow"
    anat, fmap = d / "sub-01" / "anat", d / "sub-01" / "fmap"
    chi = json.loads((anat / "sub-01_desc-medi_Chimap.json").read_text())
    assert chi["Units"] == "ppm" and chi["Method"] == "medi" and "Parameters" in chi
    assert "mean" in chi["Reference"] and chi["SkullStripped"] is True
    assert chi["Sources"] == ["bids::sub-01/fmap/sub-01_desc-local_fieldmap.nii.gz",
                              "bids::sub-01/anat/sub-01_desc-brain_mask.nii.gz"]
    for kind in ("total", "local"):
        side = json.loads((fmap / f"sub-01_desc-{kind}_fieldmap.json").read_text())
        assert side["Units"] == "Hz"
    total = json.loads((fmap / "sub-01_desc-total_fieldmap.json").read_text())
    assert total["Sources"][0].startswith("bids:raw:sub-01/anat/sub-01_echo-1_part-phase")
    assert json.loads((fmap / "sub-01_desc-local_fieldmap.json").read_text())[
        "BackgroundRemoval"] == "resharp"
    assert (anat / "sub-01_desc-brain_mask.nii.gz").exists()
    assert not list(d.rglob(".*.tmp*")), "temporary files left behind"
    cfg = list((d / "logs").glob("config-*.toml"))
    assert cfg and tomllib.loads(cfg[0].read_text())["inversion"] == ["tkd", "medi"]


def test_chi_close_to_the_phantom_truth(demo_run):
    rows = demo.truth_errors(demo_run["bids"], demo_run["deriv"], ["01", "02"], list(MAX_NRMSE))
    for sub, method, err in rows:
        assert err < MAX_NRMSE[method], f"sub-{sub} {method}: NRMSE {err:.1f} %"
    # the iterative method beats TKD on every subject
    errs = {(s, m): e for s, m, e in rows}
    assert all(errs[(s, "medi")] < errs[(s, "tkd")] for s in ("01", "02"))


def test_report_has_its_figures(demo_run):
    d = demo_run["deriv"]
    page = (d / "sub-01.html").read_text()
    imgs = re.findall(r"<img src='([^']+)'", page)
    assert len(imgs) == 3
    for rel in imgs:
        assert (d / rel).stat().st_size > 5000
    for text in ("Methods", "Run time per step", "invert_medi", "RESHARP", "Parameters"):
        assert text in page


def test_rerun_recomputes_nothing_and_leaves_the_input_alone(demo_run):
    work = demo_run["work"]
    results = {p: p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}
    assert len(results) > 20
    raw = _digest(demo_run["bids"])
    outputs = {p: p.stat().st_mtime_ns for p in demo_run["deriv"].rglob("*.nii.gz")}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run.main([str(demo_run["bids"]), str(demo_run["deriv"]), "participant",
                       "-w", str(work), "--nprocs", "2", "--skip-bids-validation"])
    assert rc == 0, buf.getvalue()[-2000:]
    after = {p: p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}
    assert after == results, "a node was recomputed"
    assert " done (" not in buf.getvalue()  # no step ran
    assert {p: p.stat().st_mtime_ns for p in demo_run["deriv"].rglob("*.nii.gz")} == outputs
    assert _digest(demo_run["bids"]) == raw

"""End to end: ``qsmflow demo`` (simulated dataset + the BIDS App, MultiProc with 2 processes),
its outputs against the BIDS validator and the phantom's truth, the report, and a rerun on the
same work folder that recomputes nothing. One demo run is shared by all tests of this module."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from qsmflow.cli import demo, run
from qsmflow.config import DEFAULT_INVERSIONS
from qsmflow.io import run_bids_validator
from qsmflow._compat import tomllib

#: accuracy the demo must reach: NRMSE (%) of χ against the phantom's truth inside the brain
#: mask (3 mm voxels, SNR 100, the pipeline's own mask and fields). For scale: TKD of the TRUE
#: local field reaches ~50 % on this phantom at 3 mm; zero everywhere scores 100 %.
MAX_NRMSE = {"tkd": 75.0, "medi": 60.0,  # measured 59-65 / 39-44 %; a sign flip gives ~200 %
             "sstv": 70.0}  # measured 61.9 / 44.2 % (in its wider support: 88 % of the brain)
#: TKD is a direct inverse outside the cone: forward-modelling its χ must give back the local
#: field. Measured ~45 %; a sign flip gives ~180 %, a Hz/ppm or B0 mix-up ≥ 100 %.
MAX_TKD_RESIDUAL = 60.0


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
    assert cfg and tomllib.loads(cfg[0].read_text())["inversion"] == list(DEFAULT_INVERSIONS)


def test_clinical_maps_are_derivatives_with_sidecars(demo_run):
    """R2* (1/s), T2* (ms), SWI and its minIP beside χ, with units, method and sources; the
    pipeline's R2* close to the phantom's in white matter, and the SWI darker in veins."""
    from qsmflow.io import load_nifti

    d = demo_run["deriv"] / "sub-01" / "anat"
    side = {k: json.loads((d / f"sub-01_{k}.json").read_text()) for k in (
        "R2starmap", "T2starmap", "desc-swi_T2starw", "desc-swiMinIP_T2starw")}
    assert side["R2starmap"]["Units"] == "1/s" and side["T2starmap"]["Units"] == "ms"
    assert side["R2starmap"]["Sources"][0].startswith("bids:raw:sub-01/anat/sub-01_echo-1_part-mag")
    assert side["T2starmap"]["Sources"] == ["bids::sub-01/anat/sub-01_R2starmap.nii.gz"]
    assert side["desc-swi_T2starw"]["Method"] == "CLEAR-SWI-like"
    assert "bids::sub-01/fmap/sub-01_desc-local_fieldmap.nii.gz" in side["desc-swi_T2starw"][
        "Sources"]
    assert side["desc-swi_T2starw"]["Parameters"]["n"] == 4
    assert side["desc-swiMinIP_T2starw"]["MinIPSlabThickness_mm"] == 15.0  # 5 slices of 3 mm
    assert all(s["SkullStripped"] is False for s in side.values())
    r2 = load_nifti(d / "sub-01_R2starmap.nii.gz")[0]
    t2 = load_nifti(d / "sub-01_T2starmap.nii.gz")[0]
    swi = load_nifti(d / "sub-01_desc-swi_T2starw.nii.gz")[0]
    minip = load_nifti(d / "sub-01_desc-swiMinIP_T2starw.nii.gz")[0]
    truth = demo_run["bids"] / "derivatives" / "qsmflow-truth" / "sub-01" / "anat"
    dseg = load_nifti(next(truth.glob("*_dseg.nii.gz")))[0].astype(int)
    wm, vein = dseg == 3, dseg == 12
    # SNR 100: measured R2* 20.4 vs the true 20.3 1/s (3 T, white matter)
    assert 18.0 < np.median(r2[wm]) < 23.0 and np.allclose(t2[r2 > 1], 1000 / r2[r2 > 1],
                                                           rtol=1e-4)
    ratio = np.median(swi[vein]) / np.median(swi[wm])
    assert ratio < 0.85, f"SWI vein / white matter {ratio:.2f}"  # measured 0.75
    assert np.all(minip <= swi + 1e-6)


def test_chi_is_consistent_with_the_local_field(demo_run):
    """χ (ppm) → dipole field must give back the local field (Hz → ppm at 3 T) in the mask:
    checks units, sign, B0 direction and voxel size through the whole app."""
    from qsmflow import physics
    from qsmflow.io import load_nifti

    for sub in ("01", "02"):
        d = demo_run["deriv"] / f"sub-{sub}"
        local, affine, _ = load_nifti(d / "fmap" / f"sub-{sub}_desc-local_fieldmap.nii.gz")
        mask = load_nifti(d / "anat" / f"sub-{sub}_desc-brain_mask.nii.gz")[0] > 0
        chi = load_nifti(d / "anat" / f"sub-{sub}_desc-tkd_Chimap.nii.gz")[0]
        fwd = physics.forward_field(chi, physics.voxel_size_from_affine(affine),
                                    physics.b0_direction_from_affine(affine))
        f = physics.hz_to_ppm(local, 3.0)[mask]
        q = fwd[mask]
        res = 100 * np.linalg.norm((q - q.mean()) - (f - f.mean())) / np.linalg.norm(f - f.mean())
        assert res < MAX_TKD_RESIDUAL, f"sub-{sub}: TKD χ reproduces the local field to {res:.0f} %"


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
    assert len(imgs) == 4  # mask, fields, χ, R2*/SWI/minIP
    for rel in imgs:
        assert (d / rel).stat().st_size > 5000
    for text in ("Methods", "Run time per step", "invert_medi", "RESHARP", "Parameters",
                 "<td>this run</td>", "compute_swi", "map_relaxation", "CLEAR-SWI-like",
                 "median R2* in the brain mask", "minIP over 15 mm (5 slices)"):
        assert text in page
    # the methods text and its references, also as logs/CITATION.md and .bib
    md = (d / "logs" / "CITATION.md").read_text()
    bib = (d / "logs" / "CITATION.bib").read_text()
    assert "R2* (1/s) was fitted" in md and "Eckstein K et al. CLEAR-SWI." in md
    for key in ("gorgolewski2011nipype", "sun2014resharp", "shmueli2009tkd", "liu2012medi",
                "eckstein2021clearswi"):
        assert f"{{{key}," in bib
    assert "liu2011pdf" not in bib  # only what was used


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
    page = (demo_run["deriv"] / "sub-01.html").read_text()  # the report says so
    assert "reused from an earlier run" in page and "<td>this run</td>" not in page
    assert {p: p.stat().st_mtime_ns for p in demo_run["deriv"].rglob("*.nii.gz")} == outputs
    assert _digest(demo_run["bids"]) == raw


def test_rerun_writes_again_the_derivatives_deleted_since(demo_run):
    """Delete a participant's anat/ folder, rerun with the same -w: its derivatives are back,
    bit for bit, and only the sinks ran (no processing step was recomputed)."""
    import shutil

    anat = demo_run["deriv"] / "sub-01" / "anat"
    before = _digest(anat)
    assert any(k.endswith("_Chimap.nii.gz") for k in before)
    steps = {p: p.stat().st_mtime_ns for p in demo_run["work"].rglob("result_*.pklz")
             if "/ds_" not in str(p)}
    shutil.rmtree(anat)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run.main([str(demo_run["bids"]), str(demo_run["deriv"]), "participant",
                       "-w", str(demo_run["work"]), "--nprocs", "2", "--skip-bids-validation"])
    assert rc == 0, buf.getvalue()[-2000:]
    assert "write again the outputs deleted since the last run" in buf.getvalue()
    assert _digest(anat) == before
    assert {p: p.stat().st_mtime_ns for p in steps} == steps, "a processing step was recomputed"


def test_real_scanner_dicoms_through_the_app_and_back(tmp_path, shared_data):
    """Siemens DICOMs → dicom2bids → the app (input validated) → χ as a DICOM series."""
    import pydicom

    from qsmflow.cli.main import main as qsmflow_main

    src = shared_data / "siemens-gre-dicom" / "dicom_unsorted"
    bids, out, dcm = tmp_path / "bids", tmp_path / "out", tmp_path / "dicom"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert qsmflow_main(["dicom2bids", str(src), str(bids), "--subject", "01"]) == 0
        rc = run.main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
                       "--inversion", "tkd", "--nprocs", "2", "--dicom-out", str(dcm),
                       "--source-dicom", str(src)])  # the BIDS tree holds no patient data
    assert rc == 0
    from qsmflow.io import load_nifti

    chi, _, _ = load_nifti(out / "sub-01" / "anat" / "sub-01_desc-tkd_Chimap.nii.gz")
    mask = load_nifti(out / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz")[0] > 0
    assert chi.shape == (128, 76, 10) and mask.sum() > 1000 and np.isfinite(chi).all()
    assert abs(chi[mask].mean()) < 1e-4 and 0 < chi[mask].std() < 1.0  # referenced, in ppm
    files = sorted((dcm / "sub-01_desc-tkd_Chimap").iterdir())
    assert len(files) == 10  # one DICOM per slice
    for series, kind in (("sub-01_R2starmap", "R2STAR"), ("sub-01_T2starmap", "T2STAR"),
                         ("sub-01_desc-swi_T2starw", "SWI"),
                         ("sub-01_desc-swiMinIP_T2starw", "MINIP")):
        dsm = pydicom.dcmread(sorted((dcm / series).iterdir())[0])
        assert list(dsm.ImageType)[2] == kind and len(list((dcm / series).iterdir())) == 10
    ds = pydicom.dcmread(files[0])
    assert "tkd" in ds.SeriesDescription.lower()
    ref = pydicom.dcmread(next(src.iterdir()), stop_before_pixels=True)
    assert (ds.StudyInstanceUID, ds.PatientID == ref.PatientID) == (ref.StudyInstanceUID, True)
    # the export is a step of the graph (its own folder, cached): no patient data in the work
    # folder, and a deleted series is written again by a rerun, nothing else recomputed
    node = next((tmp_path / "work").rglob("export_dicom"))
    assert (node / "_report" / "report.rst").exists()
    work_text = b"".join(p.read_bytes() for p in (tmp_path / "work").rglob("*")
                         if p.is_file() and p.suffix in (".rst", ".json", ".txt"))
    for phi in (str(ref.PatientName), str(ref.PatientID), str(ref.PatientBirthDate)):
        assert phi and phi.encode() not in work_text, phi
    steps = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("result_*.pklz")
             if "export_dicom" not in str(p) and "/ds_" not in str(p)}
    import shutil

    shutil.rmtree(dcm / "sub-01_desc-tkd_Chimap")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = run.main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
                       "--inversion", "tkd", "--nprocs", "2", "--dicom-out", str(dcm),
                       "--source-dicom", str(src)])
    assert rc == 0 and len(list((dcm / "sub-01_desc-tkd_Chimap").iterdir())) == 10
    assert {p: p.stat().st_mtime_ns for p in steps} == steps

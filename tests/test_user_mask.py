"""User-supplied brain masks (``--derivatives``): found per acquisition, checked up front, used by
the whole chain instead of the computed mask, named in the sidecars and the report, cached on a
rerun; bad masks refused with one line and exit code 2 before anything is written.

The end-to-end runs use the 3 mm demo geometry (one participant, TKD only, ~10 s each)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from _robustness import run_app_inprocess
from qsmflow.bids import AFFINE_TOL_MM
from qsmflow.user_mask import binary_mask

ANAT = "sub-01/anat"
MASK = "sub-01_desc-brain_mask.nii.gz"
TRUTH_URI = f"bids:qsmflow-truth:{ANAT}/{MASK}"


@pytest.fixture(scope="module")
def demo_bids(tmp_path_factory) -> Path:
    from qsmflow.sims.megre import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("um") / "bids", n_subjects=1, seed=3)


@pytest.fixture(scope="module")
def truth_dir(demo_bids) -> Path:
    return demo_bids / "derivatives" / "qsmflow-truth"


def _truth(truth_dir) -> nib.Nifti1Image:
    return nib.load(truth_dir / ANAT / MASK)


def _mask_dataset(root: Path, data, affine, name=MASK, sub="01") -> Path:
    """A derivatives dataset holding one mask image ``name`` under ``sub-<sub>/anat/``."""
    (root / f"sub-{sub}" / "anat").mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "masks", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "test"}]}))
    nib.save(nib.Nifti1Image(np.asarray(data), affine), root / f"sub-{sub}" / "anat" / name)
    return root


def _app(bids, out, work, *extra):
    return run_app_inprocess(bids, out, "participant", "-w", work, "--participant-label", "01",
                             "--inversion", "tkd", "--nprocs", "2", "--skip-bids-validation",
                             *extra)


def _read(path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def runs(demo_bids, truth_dir, tmp_path_factory):
    """Run 1: the true brain mask; run 2: that mask eroded by 2 voxels; run 3: run 1 again on
    its work folder (everything cached)."""
    tmp = tmp_path_factory.mktemp("runs")
    img = _truth(truth_dir)
    eroded = ndimage.binary_erosion(np.asarray(img.dataobj) > 0, iterations=2)
    eroded_dir = _mask_dataset(tmp / "eroded", eroded.astype(np.uint8), img.affine)
    r = {"tmp": tmp, "eroded": eroded, "truth": np.asarray(img.dataobj) > 0}
    r["1"] = _app(demo_bids, tmp / "out1", tmp / "work1", "--derivatives", truth_dir)
    r["2"] = _app(demo_bids, tmp / "out2", tmp / "work2", "--derivatives", eroded_dir)
    r["3"] = _app(demo_bids, tmp / "out1", tmp / "work1", "--derivatives", truth_dir)
    return r


def test_the_given_mask_is_the_output_mask(runs):
    for k in ("1", "2"):
        assert runs[k].returncode == 0, runs[k].stdout[-2000:] + runs[k].stderr[-2000:]
    out1, out2 = runs["tmp"] / "out1" / ANAT, runs["tmp"] / "out2" / ANAT
    m1, m2 = _read(out1 / MASK) > 0, _read(out2 / MASK) > 0
    assert np.array_equal(m1, runs["truth"])
    assert np.array_equal(m2, runs["eroded"])
    # the erosion removes a real share of the brain: the two outputs must differ by it
    assert (m1 & ~m2).sum() > 0.15 * m1.sum()
    assert "brain mask supplied by the user" in runs["1"].stdout


def test_the_whole_chain_uses_the_given_mask(runs):
    """χ and the local field are non-zero only inside the user's mask, and the eroded mask
    shrinks their support: the mask reached unwrapping, fit, background removal, inversion."""
    support = {}
    for k, user in (("1", runs["truth"]), ("2", runs["eroded"])):
        d = runs["tmp"] / f"out{k}" / "sub-01"
        chi = _read(d / "anat" / "sub-01_desc-tkd_Chimap.nii.gz")
        local = _read(d / "fmap" / "sub-01_desc-local_fieldmap.nii.gz")
        assert not (chi[~user] != 0).any() and not (local[~user] != 0).any()
        support[k] = chi != 0
        assert support[k].sum() > 0.3 * user.sum()
    assert support["2"].sum() < 0.8 * support["1"].sum()


def test_sidecars_and_report_name_the_mask(runs, truth_dir):
    from qsmflow.io import run_bids_validator

    out = runs["tmp"] / "out1"
    chi = json.loads((out / ANAT / "sub-01_desc-tkd_Chimap.json").read_text())
    assert chi["BrainMaskMethod"] == "user" and chi["BrainMaskSource"] == TRUTH_URI
    side = json.loads((out / ANAT / "sub-01_desc-brain_mask.json").read_text())
    assert side["Sources"] == [TRUTH_URI] and side["BrainMaskSource"] == TRUTH_URI
    links = json.loads((out / "dataset_description.json").read_text())["DatasetLinks"]
    assert links["qsmflow-truth"] == truth_dir.resolve().as_uri()
    html = (out / "sub-01.html").read_text()
    assert f"user-supplied ({MASK})" in html
    assert f"a brain mask supplied by the user ({MASK}" in html
    eroded = json.loads((runs["tmp"] / "out2" / ANAT / "sub-01_desc-tkd_Chimap.json").read_text())
    assert eroded["BrainMaskSource"] == f"bids:eroded:{ANAT}/{MASK}"
    assert run_bids_validator(out)[0] == []


def test_rerun_recomputes_nothing(runs):
    assert runs["3"].returncode == 0, runs["3"].stderr[-2000:]
    assert "(0 step(s) run" in runs["3"].stdout, runs["3"].stdout[-1500:]


# --- bad masks: each refused up front, one line naming the file, exit 2, nothing written ---
def _shape(m, a):
    return m[:-2], a, ["shape", "resample"]


def _affine(m, a):
    a = a.copy()
    a[0, 3] += 0.5  # half a voxel (3 mm): a real misregistration
    return m, a, ["affine", "resample"]


def _empty(m, a):
    return np.zeros_like(m), a, ["empty"]


def _probabilistic(m, a):
    p = np.where(m > 0, 0.7, 0.0).astype(np.float32)
    p[: m.shape[0] // 2][m[: m.shape[0] // 2] > 0] = 0.3
    return p, a, ["not binary", "threshold"]


BAD = {"wrong_shape": _shape, "wrong_affine": _affine, "empty": _empty,
       "non_binary": _probabilistic}


@pytest.mark.parametrize("case", [*BAD, "other_subject"])
def test_bad_mask_is_refused(case, demo_bids, truth_dir, tmp_path):
    img = _truth(truth_dir)
    m = np.asarray(img.dataobj)
    if case == "other_subject":  # sub-02's mask filed under sub-01/
        data, affine, expect, name = m, img.affine, ["sub-02", "another participant"], \
            "sub-02_desc-brain_mask.nii.gz"
    else:
        data, affine, expect = BAD[case](m, img.affine)
        name = MASK
    deriv = _mask_dataset(tmp_path / "masks", data, affine, name=name)
    out = tmp_path / "out"
    r = _app(demo_bids, out, tmp_path / "work", "--derivatives", deriv)
    assert r.returncode == 2, r.stdout[-1500:] + r.stderr[-1500:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(deriv / ANAT / name) in lines[0] and all(e in lines[0] for e in expect), lines[0]
    assert not out.exists() and not (tmp_path / "work").exists()


def test_missing_derivatives_folder_is_refused(demo_bids, tmp_path):
    r = _app(demo_bids, tmp_path / "out", tmp_path / "work", "--derivatives", tmp_path / "none")
    assert r.returncode == 2 and "none: --derivatives folder does not exist" in r.stderr
    assert not (tmp_path / "out").exists()


# --- the lookup and the checks, without running the pipeline ---
def _plan(bids, tmp, *dirs):
    from qsmflow.config import build_config
    from qsmflow.cli.validation import plan_run

    cfg = build_config({"participant_label": ["01"], "skip_bids_validation": True,
                        "inversion": ["tkd"], "derivatives": [str(d) for d in dirs]})
    return plan_run(bids, tmp / "out", tmp / "work", cfg).subjects["01"][0]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_no_matching_mask_warns_and_computes(demo_bids, truth_dir, tmp_path):
    """Masks of another participant (in its own folder) and of a template space are never used
    for sub-01: the plan keeps the computed mask and the log says so."""
    img = _truth(truth_dir)
    deriv = _mask_dataset(tmp_path / "masks", np.asarray(img.dataobj), img.affine, sub="02",
                          name="sub-02_desc-brain_mask.nii.gz")
    _mask_dataset(deriv, np.asarray(img.dataobj), img.affine,
                  name="sub-01_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz")
    rec = _Records()
    log = logging.getLogger("qsmflow")
    log.addHandler(rec)
    try:
        acq = _plan(demo_bids, tmp_path, deriv)
    finally:
        log.removeHandler(rec)
    assert acq.user_mask is None
    assert any("sub-01: no brain mask" in ln and "computing the mask" in ln for ln in rec.lines)


def test_native_space_and_tolerance_are_accepted(demo_bids, truth_dir, tmp_path):
    """``space-orig`` is the acquisition's grid; an affine off by a tenth of the tolerance and
    a 0/255 uint8 image are fine; the first --derivatives folder with a mask wins."""
    img = _truth(truth_dir)
    a = img.affine.copy()
    a[:3, 3] += AFFINE_TOL_MM / 10
    name = "sub-01_space-orig_desc-brain_mask.nii.gz"
    deriv = _mask_dataset(tmp_path / "fs", (np.asarray(img.dataobj) > 0).astype(np.uint8) * 255,
                          a, name=name)
    acq = _plan(demo_bids, tmp_path, deriv, truth_dir)
    assert acq.user_mask.path == str(deriv / ANAT / name)
    assert acq.user_mask.uri == f"bids:fs:{ANAT}/{name}"


def test_binary_mask_rules():
    m = np.zeros((4, 4, 4), np.float32)
    m[1:3, 1:3, 1:3] = 1
    assert binary_mask(m).sum() == 8
    assert binary_mask((m * 255).astype(np.uint8)).sum() == 8
    assert binary_mask(m[..., None] > 0).sum() == 8        # 4D with one volume, bool
    for bad, why in ((m * 0.5, "not binary"), (m * 255, "not binary"), (-m.astype(int), "not"),
                     (np.where(m > 0, np.nan, 0), "NaN"), (m * 0, "empty")):
        with pytest.raises(ValueError, match=why):
            binary_mask(bad)
    three = m.astype(np.uint8)
    three[0, 0, 0] = 2
    with pytest.raises(ValueError, match="not binary"):
        binary_mask(three)


def test_workflow_loads_the_mask_instead_of_computing_it(tmp_path):
    """Phase-only data would get a phase-quality mask judged after the fit; a user mask is
    loaded instead and comes before the fit, the background removal and the methods text."""
    from qsmflow.workflows import init_qsm_wf

    path = tmp_path / MASK
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), path)
    wf = init_qsm_wf(inversions=["tkd"], has_magnitude=False, precomputed_mask=str(path))
    edges = {(u.name, v.name) for u, v in wf._create_flat_graph().edges()}
    assert {("load_brain_mask", "fit_field"), ("load_brain_mask", "remove_background"),
            ("inputnode", "load_brain_mask")} <= edges
    assert "brain_mask" not in {n.name for n in wf._get_all_nodes()}
    assert f"supplied by the user ({MASK}" in wf.__desc__ and "phase-quality" not in wf.__desc__

"""The report: mosaics at native resolution, CITATION.md/.bib with exactly the cited references,
and a page for a participant whose run failed (with its error line)."""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np
import pytest

from qsmflow.report import citations
from qsmflow.report.figures import (N_SLICES, acquisition_figures, mosaic, mosaic_slices,
                                    pixel_scale)
from qsmflow.workflows.qsm import CITATIONS, methods_text


def test_mosaic_slices_and_native_resolution(tmp_path):
    import matplotlib.image as mpimg

    shape, vs = (68, 84, 64), (3.0, 3.0, 3.0)
    mask = np.zeros(shape, bool)
    mask[10:58, 10:74, 8:56] = True
    sl = mosaic_slices(mask)
    assert len(sl) == N_SLICES == 12 and 8 < sl[0] and sl[-1] < 55
    assert sl == sorted(sl) and len(set(np.diff(sl))) <= 2  # evenly spread
    sh, sv = pixel_scale(vs, shape[0])
    assert (sh, sv) == (2, 2)  # 2 screen pixels per 3 mm voxel
    # one voxel-wide stripe survives: every pixel of the mosaic is one voxel's value
    vol = np.zeros(shape)
    vol[30] = 1.0
    m = mosaic(vol, sl, vs)
    assert m.shape == (2 * (84 * sv + 2) - 2, 6 * (68 * sh + 2) - 2)
    assert np.nansum(m) == 12 * 84 * sv * sh
    figs = acquisition_figures(tmp_path, "sub-01", magnitude=mask * 100.0, mask=mask,
                               total_field=vol, local_field=vol, chi={"tkd": vol, "medi": vol},
                               voxel_size=vs, maps={"r2star": vol * 20, "swi": mask * 1.0,
                                                    "swi_minip": mask * 1.0})
    assert set(figs) == {"mask", "field", "chi", "maps"}
    for key, rows in (("mask", 1), ("field", 2), ("chi", 2), ("maps", 3)):
        h, w = mpimg.imread(figs[key]).shape[:2]
        assert w >= m.shape[1] and h >= rows * m.shape[0], (key, h, w)
    # 1 mm voxels of a 200-voxel FOV: one pixel per voxel, never fewer
    assert pixel_scale((1.0, 1.0, 1.0), 200) == (1, 1)
    assert pixel_scale((0.5, 0.5, 2.0), 400, axis=2) == (1, 1)
    assert pixel_scale((1.0, 2.0, 1.0), 80) == (2, 4)


def test_citation_files_cite_exactly_the_methods_used(tmp_path):
    text = methods_text(inversions=["tkd", "medi"], bgremoval="resharp",
                        unwrapping="region-growing", masking="magnitude", n_echoes=4,
                        clinical_maps=("r2star", "t2star", "swi", "swi_minip"))
    keys = citations.cited_keys(text, CITATIONS)
    assert keys == ["nipype", "romeo", "mcpc3ds", "resharp", "tkd", "medi", "clearswi"]
    md, bib = citations.write_citation_files(tmp_path / "logs", {"01": text, "02": text},
                                             CITATIONS)
    md_text, bib_text = md.read_text(), bib.read_text()
    assert "CLEAR-SWI-like" in md_text and "\n7. Eckstein K et al. CLEAR-SWI." in md_text
    assert "## Participants" not in md_text  # one text for both participants
    ids = re.findall(r"@\w+\{(\w+),", bib_text)
    assert ids == ["gorgolewski2011nipype", "dymerska2021romeo", "eckstein2018aspire",
                   "sun2014resharp", "shmueli2009tkd", "wharton2010tkd", "liu2012medi",
                   "liu2011medi", "eckstein2021clearswi"]
    assert "pdf" not in ids and "{2021}" in bib_text and "118175" in bib_text
    # every citable method has a BibTeX entry whose year is in its methods-text reference
    for key, ref in CITATIONS.items():
        entries = citations.BIBTEX[key]
        years = {re.search(r"year = \{(\d{4})\}", e).group(1) for e in entries}
        assert all(y in ref for y in years), (key, years, ref)
    # a second text (another participant without magnitude) gets its own section
    other = methods_text(inversions=["tkd"], bgremoval="pdf", unwrapping="laplacian",
                         masking="phase-quality", n_echoes=3)
    md, bib = citations.write_citation_files(tmp_path / "logs", {"01": text, "02": other},
                                             CITATIONS)
    assert "## Participants sub-02" in md.read_text() and "liu2011pdf" in bib.read_text()


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    """Two small participants; sub-02's magnitude is zero but for one voxel (valid input, but
    no brain can be found): sub-01 succeeds, sub-02's brain_mask step fails at run time."""
    import nibabel as nib

    from qsmflow.cli import run
    from qsmflow.sims.megre import write_bids_dataset

    d = tmp_path_factory.mktemp("failed")
    bids = write_bids_dataset(d / "bids", subjects=("01", "02"), shape=(32, 40, 32),
                              voxel_size=(6.0, 6.0, 6.0), te_s=(0.004, 0.008, 0.012), seed=5)
    for f in (bids / "sub-02" / "anat").glob("*part-mag*.nii*"):
        img = nib.load(f)
        one = np.zeros(img.shape, np.float32)
        one[16, 20, 16] = 100.0
        nib.save(nib.Nifti1Image(one, img.affine), f)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run.main([str(bids), str(d / "out"), "participant", "-w", str(d / "work"),
                       "--inversion", "tkd", "--nprocs", "2", "--skip-bids-validation"])
    return {"rc": rc, "out": d / "out", "stdout": out.getvalue(), "stderr": err.getvalue()}


def test_a_failed_participant_gets_a_page_with_its_error(failed_run):
    assert failed_run["rc"] == 1, failed_run["stdout"][-2000:] + failed_run["stderr"][-2000:]
    out = failed_run["out"]
    page = (out / "sub-02.html").read_text()
    assert "this participant failed" in page
    line = re.search(r"<li>(brain_mask failed: [^<]*)</li>", page)
    assert line and "empty" in line.group(1), page[:3000]
    assert "crash file: logs/sub-02/" in line.group(1)
    assert not list((out / "sub-02").rglob("*.nii.gz"))  # nothing half-written
    assert "sub-02.html" in failed_run["stderr"]  # the summary points to the page
    ok = (out / "sub-01.html").read_text()
    assert "this participant failed" not in ok and ok.count("<img src=") == 4
    assert (out / "logs" / "CITATION.md").exists() and (out / "logs" / "CITATION.bib").exists()

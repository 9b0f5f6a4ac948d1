"""DICOM in (dicom2bids) and out (χ map export): vendors, enhanced (multi-frame) DICOM, geometry
vs dcm2niix, bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy.spatial.transform import Rotation

from qsmflow.cli.dicom2bids import main as dicom2bids_main
from qsmflow.dicom.convert import dicom_to_bids, read_series_volume
from qsmflow.dicom.export import export_chimap
from qsmflow.dicom.scan import scan_folder
from qsmflow.sims.dicom import write_gre_dicoms
from qsmflow.io import load_json, run_bids_validator

DCM2NIIX = shutil.which("dcm2niix")
needs_dcm2niix = pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix not installed")

R, C, S = 12, 10, 6              # rows, columns, slices (all different: catches axis mix-ups)
TE_MS = [3.0, 6.5, 10.0]
# an oblique plane: rotated 25° about x, -30° about y, 40° about z
_OBL = Rotation.from_euler("xyz", [25, -30, 40], degrees=True).as_matrix()
OBLIQUE = tuple(_OBL[:, 0]) + tuple(_OBL[:, 1])


def _truth(seed=0):
    rng = np.random.default_rng(seed)
    mag = rng.uniform(300, 1500, (R, C, S, len(TE_MS)))
    field_hz = rng.uniform(-40, 40, (R, C, S, 1))
    phase = np.angle(np.exp(1j * (0.4 + 2 * np.pi * field_hz * np.array(TE_MS) * 1e-3)))
    return mag, phase


def _to_nifti(a):
    """DICOM layout (rows, cols, slices) → dcm2niix 2D layout (cols, reversed rows, slices)."""
    return np.swapaxes(a, 0, 1)[:, ::-1]


def _dcm2niix(folder, out):
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([DCM2NIIX, "-z", "n", "-b", "n", "-o", str(out), "-f", "%s_%e", str(folder)],
                   check=True, capture_output=True)
    return sorted(out.glob("*.nii"))


def _load(bids, echo, part):
    p = bids / "sub-01" / "anat" / f"sub-01_echo-{echo}_part-{part}_MEGRE.nii.gz"
    img = nib.load(p)
    return img.get_fdata(), img.affine, load_json(p.with_name(p.name.replace(".nii.gz", ".json")))


# ------------------------------------------------------------------------------------------
# vendors: converted values against the simulated truth, geometry against dcm2niix
# ------------------------------------------------------------------------------------------
@needs_dcm2niix
@pytest.mark.parametrize("vendor,acq", [("siemens", "2D"), ("philips", "3D"), ("ge", "2D")])
def test_vendor_conversion_matches_truth_and_dcm2niix(tmp_path, vendor, acq):
    mag, phase = _truth()
    t = write_gre_dicoms(tmp_path / "dcm", vendor, mag, phase, TE_MS, orientation=OBLIQUE,
                         pixel_spacing=(0.9, 1.3), slice_spacing=2.2, acquisition=acq)
    res = dicom_to_bids(tmp_path / "dcm", tmp_path / "bids", "01", progress=False, log=lambda m: None)
    assert len(res["files"]) == 2 * len(TE_MS)
    d2n = _dcm2niix(tmp_path / "dcm", tmp_path / "d2n")
    ref = nib.load(d2n[0])
    quant = {"siemens": np.pi / 4095, "philips": np.pi / 4095, "ge": 2e-3}[vendor]
    for e in range(len(TE_MS)):
        ph, aff, sc = _load(tmp_path / "bids", e + 1, "phase")
        mg, aff_m, sc_m = _load(tmp_path / "bids", e + 1, "mag")
        np.testing.assert_allclose(aff, ref.affine, atol=1e-4)       # geometry == dcm2niix
        np.testing.assert_allclose(aff_m, aff, atol=0)
        exp_ph, exp_mag = _to_nifti(t["phase_rad"][..., e]), _to_nifti(t["magnitude"][..., e])
        truth_ph = _to_nifti(phase[..., e])
        if acq == "3D":  # dcm2niix (and we) rotate 3D acquisitions to the closest RAS order
            exp_ph, exp_mag, truth_ph = (nib.orientations.apply_orientation(
                x, nib.io_orientation(_affine_2d(t, aff))) for x in (exp_ph, exp_mag, truth_ph))
        dwrap = np.angle(np.exp(1j * (ph - exp_ph)))
        assert np.max(np.abs(dwrap)) < 1e-5                            # stored values → rad exactly
        assert np.max(np.abs(np.angle(np.exp(1j * (ph - truth_ph))))) <= quant + 1e-6  # truth, sign
        np.testing.assert_allclose(mg, exp_mag, rtol=1e-5)
        assert sc["EchoTime"] == pytest.approx(TE_MS[e] / 1000)
        assert sc["Units"] == "rad" and sc["MagneticFieldStrength"] == 3.0
        assert sc["PhaseSignFlipped"] is (vendor == "ge")
        assert sc["DicomSource"]["StudyInstanceUID"] and sc["ImagingFrequency"] > 100
    if vendor == "philips":
        assert sc["PhaseScaling"]["RescaleSlope"] == pytest.approx(2 * np.pi / 4095, rel=1e-8)
        assert sc["PhaseScaling"]["PhilipsScaleSlope"] == pytest.approx(0.0123, rel=1e-6)
        assert sc_m["MagnitudeScaling"]["RescaleSlope"] == 1.5
    if vendor == "siemens":
        assert sc["PhaseScaling"]["StoredRange"] == [0, 4095]


def _affine_2d(t, aff_after):
    """The pre-rotation (2D-layout) affine is not needed for the orientation: io_orientation of
    the 2D affine = the transform dcm2niix applied; rebuild it from the DICOM header."""
    from qsmflow.dicom.geometry import affine_from_dicom, order_slices
    ds = [pydicom.dcmread(f, stop_before_pixels=True) for f in t["files"]]
    ori = np.array(ds[0].ImageOrientationPatient, float)
    pos = np.array(sorted({tuple(map(float, d.ImagePositionPatient)) for d in ds}))
    pos = pos[order_slices(pos, ori)[0]]
    return affine_from_dicom(ori, pos[0], [float(v) for v in ds[0].PixelSpacing],
                             (pos[-1] - pos[0]) / (len(pos) - 1), int(ds[0].Rows))


def test_ge_repeated_echo_tags(tmp_path):
    """GE research exports: every echo says EchoNumbers 1 / first EchoTime; the order comes from
    the raw data run number; TEs must then be given, and the echoes come out in the right order."""
    mag, phase = _truth(seed=3)
    t = write_gre_dicoms(tmp_path / "dcm", "ge", mag, phase, TE_MS, repeat_echo_tags=True,
                         acquisition="2D")
    with pytest.raises(ValueError, match=r"series 5 .*EchoTime 3 ms.*--echo-times"):
        dicom_to_bids(tmp_path / "dcm", tmp_path / "bids", "01", progress=False, log=lambda m: None)
    assert not (tmp_path / "bids").exists()
    dicom_to_bids(tmp_path / "dcm", tmp_path / "bids", "01", echo_times_ms=TE_MS, progress=False,
                  log=lambda m: None)
    for e in range(len(TE_MS)):
        ph, _, sc = _load(tmp_path / "bids", e + 1, "phase")
        assert np.max(np.abs(np.angle(np.exp(1j * (ph - _to_nifti(t["phase_rad"][..., e])))))) < 1e-5
        assert sc["EchoTime"] == pytest.approx(TE_MS[e] / 1000)
        assert "acquisition order" in sc["PhaseScaling"]["EchoOrderFrom"]


# ------------------------------------------------------------------------------------------
# Enhanced (multi-frame) MR DICOM: the same result as classic images of the same data
# ------------------------------------------------------------------------------------------
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
GEOMETRY = dict(orientation=OBLIQUE, pixel_spacing=(0.9, 1.3), slice_spacing=2.2)


@pytest.mark.parametrize("vendor,layout,acq", [("siemens", "series", "3D"), ("philips", "series", "2D"),
                                               ("philips", "image", "3D")])
def test_enhanced_matches_classic_and_truth(tmp_path, vendor, layout, acq):
    """Siemens XA style (a magnitude and a phase file, every echo and slice a frame, phase slope 2 /
    intercept -4096), Philips style (one file of magnitude and phase frames, rescale per frame) and
    one single-frame enhanced file per image give what the classic images of the same data give."""
    mag, phase = _truth(seed=6)
    t_cls = write_gre_dicoms(tmp_path / "cls", vendor, mag, phase, TE_MS, acquisition=acq, **GEOMETRY)
    t = write_gre_dicoms(tmp_path / "enh", vendor, mag, phase, TE_MS, acquisition=acq, enhanced=layout,
                         **GEOMETRY)
    assert len(t["files"]) == {"series": 2 if vendor == "siemens" else 1, "image": 2 * S * len(TE_MS)}[layout]
    ds = pydicom.dcmread(t["files"][0], stop_before_pixels=True)
    n_parts = 1 if vendor == "siemens" else 2  # Philips: magnitude and phase frames in one file
    assert ds.SOPClassUID == ENHANCED_MR
    assert ds.NumberOfFrames == (1 if layout == "image" else len(TE_MS) * S * n_parts)
    assert "EchoTime" not in ds and "ImagePositionPatient" not in ds and "ScanningSequence" not in ds
    for k in ("cls", "enh"):
        dicom_to_bids(tmp_path / k, tmp_path / f"bids_{k}", "01", progress=False, log=lambda m: None)
    for e in range(len(TE_MS)):
        ph, aff, sc = _load(tmp_path / "bids_enh", e + 1, "phase")
        mg, aff_m, sc_m = _load(tmp_path / "bids_enh", e + 1, "mag")
        ph_c, aff_c, sc_c = _load(tmp_path / "bids_cls", e + 1, "phase")
        mg_c, _, _ = _load(tmp_path / "bids_cls", e + 1, "mag")
        np.testing.assert_allclose(aff, aff_c, atol=1e-4)             # geometry == classic conversion
        np.testing.assert_allclose(aff_m, aff, atol=0)
        exp_ph, exp_mag = _to_nifti(t["phase_rad"][..., e]), _to_nifti(t["magnitude"][..., e])
        if acq == "3D":
            exp_ph, exp_mag = (nib.orientations.apply_orientation(x, nib.io_orientation(_affine_2d(t_cls, aff)))
                               for x in (exp_ph, exp_mag))
        assert np.max(np.abs(np.angle(np.exp(1j * (ph - exp_ph))))) < 1e-5  # stored values → rad exactly
        assert np.max(np.abs(np.angle(np.exp(1j * (ph - ph_c))))) < 1e-5
        np.testing.assert_allclose(mg, exp_mag, rtol=1e-6)
        np.testing.assert_allclose(mg, mg_c, rtol=1e-6)
        assert sc["EchoTime"] == pytest.approx(TE_MS[e] / 1000)
        for key in ("MagneticFieldStrength", "ImagingFrequency", "RepetitionTime", "FlipAngle", "SliceThickness",
                    "MRAcquisitionType", "Manufacturer", "SeriesNumber"):
            assert sc[key] == sc_c[key], key
        assert "PatientID" not in sc["DicomSource"] and "PatientID" not in sc_c["DicomSource"]
        assert set(sc["DicomSource"]) == set(sc_c["DicomSource"]) - {"SequenceVariant"}
    if vendor == "siemens":
        assert sc["PhaseScaling"]["StoredRange"] == [-4096, 4094] and sc["PhaseScaling"]["RescaleSlope"] == 2
    else:
        assert sc["PhaseScaling"]["RescaleSlope"] == pytest.approx(2 * np.pi / 4095, rel=1e-8)
        assert sc_m["MagnitudeScaling"]["RescaleSlope"] == 1.5


@needs_dcm2niix
@pytest.mark.parametrize("vendor,acq,n_echo", [("siemens", "3D", 1), ("philips", "2D", 3)])
def test_enhanced_geometry_matches_dcm2niix(tmp_path, vendor, acq, n_echo):
    """dcm2niix's affine of the same enhanced files (it splits the synthetic Siemens-style files
    into slices but not echoes, so those are written single-echo)."""
    mag, phase = _truth(seed=7)
    write_gre_dicoms(tmp_path / "enh", vendor, mag[..., :n_echo], phase[..., :n_echo], TE_MS[:n_echo],
                     acquisition=acq, enhanced="series", **GEOMETRY)
    dicom_to_bids(tmp_path / "enh", tmp_path / "bids", "01", progress=False, log=lambda m: None)
    ph, aff, _ = _load(tmp_path / "bids", 1, "phase")
    d2n = _dcm2niix(tmp_path / "enh", tmp_path / "d2n")
    assert len(d2n) == 2 * n_echo
    for f in d2n:
        ref = nib.load(f)
        assert ref.shape[:3] == ph.shape
        np.testing.assert_allclose(ref.affine, aff, atol=1e-4)


# ------------------------------------------------------------------------------------------
# real Siemens data
# ------------------------------------------------------------------------------------------
@needs_dcm2niix
def test_real_siemens_to_valid_bids(shared_data, tmp_path):
    src = shared_data / "siemens-gre-dicom" / "dicom_unsorted"
    before = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in src.iterdir()}
    bids = tmp_path / "bids"
    assert dicom2bids_main([str(src), str(bids), "--subject", "01", "--quiet"]) == 0
    assert dicom2bids_main([str(src), str(bids), "--subject", "02", "--quiet"]) == 0  # add a subject
    assert {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in src.iterdir()} == before
    anat = bids / "sub-01" / "anat"
    assert len(list(anat.glob("*_MEGRE.nii.gz"))) == 12
    tes = [_load(bids, e, "phase")[2]["EchoTime"] for e in range(1, 7)]
    np.testing.assert_allclose(tes, [0.0025, 0.0055, 0.0085, 0.0115, 0.0145, 0.0175])
    ph, aff, sc = _load(bids, 3, "phase")
    mg, _, _ = _load(bids, 3, "mag")
    assert ph.shape == (128, 76, 10)
    assert nib.load(anat / "sub-01_echo-3_part-phase_MEGRE.nii.gz").header.get_zooms() == (2.1875, 2.1875, 3.0)
    d2n = {p.name: p for p in _dcm2niix(src, tmp_path / "d2n")}
    ref_ph = nib.load(d2n["7_3_ph.nii"])
    np.testing.assert_allclose(aff, ref_ph.affine, atol=1e-4)
    np.testing.assert_allclose(ph, ref_ph.get_fdata() * 2 * np.pi / 4095 - np.pi, atol=1e-6)
    np.testing.assert_allclose(mg, nib.load(d2n["6_3.nii"]).get_fdata(), atol=1e-3)
    assert ph.min() >= -np.pi - 1e-6 and ph.max() <= np.pi + 1e-6 and ph.max() - ph.min() > 6.2
    assert sc["Manufacturer"] == "SIEMENS" and sc["ImagingFrequency"] == pytest.approx(123.259)
    assert sc["PhaseSignFlipped"] is False and sc["Units"] == "rad"
    assert (bids / "participants.tsv").read_text().split() == ["participant_id", "sub-01", "sub-02"]
    errors, _ = run_bids_validator(bids)
    assert errors == [], errors
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------
@needs_dcm2niix
@pytest.mark.parametrize("acq", ["2D", "3D"])
def test_oblique_import_export_roundtrip(tmp_path, acq):
    mag, phase = _truth(seed=1)
    write_gre_dicoms(tmp_path / "dcm", "siemens", mag, phase, TE_MS, orientation=OBLIQUE,
                     pixel_spacing=(0.9, 1.3), slice_spacing=2.2, acquisition=acq)
    bids = tmp_path / "bids"
    res = dicom_to_bids(tmp_path / "dcm", bids, "01", keep_patient_info=True, progress=False,
                        log=lambda m: None)
    assert res["private"] == bids / "sourcedata" / "qsmflow-private" / "sub-01_dicomsource.json"
    assert res["private"].stat().st_mode & 0o007 == 0                # not readable by others
    assert "sourcedata/qsmflow-private/" in (bids / ".bidsignore").read_text().split()
    ph, aff, sc = _load(bids, 1, "phase")
    assert "PatientID" not in sc["DicomSource"]                      # only in the private file
    x = np.arange(ph.shape[0])[:, None, None]
    chi = (0.1 * np.sin(x / 2.0) + 0.02 * ph).astype(np.float32)   # non-symmetric test map (ppm)
    chi_path = tmp_path / "chi.nii.gz"
    nib.save(nib.Nifti1Image(chi, aff), chi_path)
    sidecar = bids / "sub-01" / "anat" / "sub-01_echo-1_part-phase_MEGRE.json"
    files = export_chimap(chi_path, tmp_path / "out", source=sidecar, method="medi")
    assert len(files) == chi.shape[2]
    # pydicom: tags
    src = pydicom.dcmread(next((tmp_path / "dcm").iterdir()), stop_before_pixels=True)
    ds = pydicom.dcmread(files[0])
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "QSM"] and "medi" in ds.SeriesDescription
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.PatientID == src.PatientID and ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.pixel_array.dtype == np.int16 and float(ds.WindowWidth) > 0
    slope = float(ds.RescaleSlope)
    # our reader (pydicom pixels) and dcm2niix: same geometry and values to the stored precision
    data, aff2 = read_series_volume(scan_folder(tmp_path / "out", progress=False)[0])
    np.testing.assert_allclose(aff2, aff, atol=1e-4)
    assert np.max(np.abs(data - chi)) <= slope / 2 + 1e-7
    ref = nib.load(_dcm2niix(tmp_path / "out", tmp_path / "d2n")[0])
    np.testing.assert_allclose(ref.affine, aff, atol=1e-4)
    assert np.max(np.abs(ref.get_fdata() - chi)) <= slope / 2 + 1e-6
    # orientation kept: the oblique slice normal survives import and export (up to sign)
    n_in = np.cross(OBLIQUE[:3], OBLIQUE[3:])
    n_out = np.cross(np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float))
    assert abs(abs(n_in @ n_out) - 1) < 1e-5 or acq == "3D"
    # a non-empty target is refused, nothing written
    with pytest.raises(ValueError, match="not empty"):
        export_chimap(chi_path, tmp_path / "out", source=sidecar, method="medi")


def test_export_interface_from_dicom_folder(tmp_path):
    from qsmflow.interfaces.dicom import DicomExport

    mag, phase = _truth(seed=2)
    write_gre_dicoms(tmp_path / "dcm", "siemens", mag[..., :1], phase[..., :1], TE_MS[:1])
    chi = np.linspace(-0.2, 0.3, C * R * S, dtype=np.float32).reshape(C, R, S)
    chi_path = tmp_path / "chi.nii.gz"
    nib.save(nib.Nifti1Image(chi, np.diag([1.3, 0.9, 2.0, 1.0])), chi_path)
    chi_path = chi_path.rename(tmp_path / "sub-01_desc-tkd_Chimap.nii.gz")
    for _ in range(2):  # a rerun replaces the previous export of the same map
        res = DicomExport(in_file=str(chi_path), source=str(tmp_path / "dcm"),
                          out_dir=str(tmp_path / "out")).run()
    assert res.outputs.out_dir == str(tmp_path / "out" / "sub-01_desc-tkd_Chimap")
    assert len(res.outputs.out_files) == S and len(list(Path(res.outputs.out_dir).iterdir())) == S
    ds = pydicom.dcmread(res.outputs.out_files[0])
    assert ds.PatientName == "Synth^Test" and ds.SeriesNumber == 1005 and "tkd" in ds.SeriesDescription
    assert np.isclose(float(ds.PixelSpacing[0]), 0.9) and np.isclose(float(ds.PixelSpacing[1]), 1.3)


def test_export_refuses_source_without_ids(tmp_path):
    chi_path = tmp_path / "chi.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.float32), np.eye(4)), chi_path)
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        export_chimap(chi_path, tmp_path / "out2", source={"EchoTime": 0.01}, method="tkd")
    with pytest.raises(ValueError, match="PatientID"):
        export_chimap(chi_path, tmp_path / "out2", source={"StudyInstanceUID": "1.2", "FrameOfReferenceUID": "1.3"},
                      method="tkd")
    assert not (tmp_path / "out2").exists()


# ------------------------------------------------------------------------------------------
# privacy: no patient data in the BIDS tree by default; an export reads it back from the DICOMs
# ------------------------------------------------------------------------------------------
#: header fields whose values must never appear in the BIDS tree
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "ReferringPhysicianName",
               "InstitutionName", "InstitutionAddress", "OperatorsName", "AccessionNumber")
#: sidecar keys that would carry patient data (dcm2niix's BIDS anonymisation drops these)
PATIENT_KEYS = {"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight",
                "PatientSize", "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "AcquisitionDateTime",
                "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "OperatorsName"}


def _digest(value) -> str:
    """Patient strings are compared as digests so that no failure message shows them."""
    return hashlib.sha256(str(value).encode()).hexdigest()[:12]


def _identifying_strings(folder) -> set[bytes]:
    """Values of :data:`IDENTIFYING` in the DICOMs below ``folder``, whole and split at ^ and spaces."""
    out = set()
    for im in scan_folder(folder, progress=False)[0]:
        for key in IDENTIFYING:
            v = str(im.ds.get(key, "") or "").strip()
            out |= {w.encode() for w in [v, *re.split(r"[\^ ]+", v)] if len(w) >= 3}
    return out


def _readable_bytes(path: Path) -> bytes:
    """A file's bytes; for NIfTI its header and extensions (descrip, aux_file, ...), not the voxels."""
    if path.name.endswith((".nii", ".nii.gz")):
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return raw[:int(nib.load(path).header["vox_offset"])]
    return path.read_bytes()


def _assert_no_patient_data(root: Path, secrets: set[bytes]) -> None:
    files = [f for f in root.rglob("*") if f.is_file()]
    leaks = [str(f.relative_to(root)) for f in files for sec in secrets
             if sec in _readable_bytes(f) or sec.decode() in str(f.relative_to(root))]
    assert leaks == [], f"patient strings found in {sorted(set(leaks))}"

    def keys(x):
        return (set(x) | {k for v in x.values() for k in keys(v)} if isinstance(x, dict)
                else {k for v in x for k in keys(v)} if isinstance(x, list) else set())
    found = {f.name: keys(json.loads(f.read_text())) & PATIENT_KEYS for f in files if f.suffix == ".json"}
    assert {k: v for k, v in found.items() if v} == {}
    assert len(found) > 2


def _assert_same_study_and_patient(exported: Path, source_folder: Path) -> pydicom.Dataset:
    ds = pydicom.dcmread(exported)
    src = {(d.ds.StudyInstanceUID, d.ds.FrameOfReferenceUID): d.ds
           for d in scan_folder(source_folder, progress=False)[0]}
    assert len(src) == 1
    ref = next(iter(src.values()))
    assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (ref.StudyInstanceUID, ref.FrameOfReferenceUID)
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyID"):
        assert _digest(ds.get(key, "")) == _digest(ref.get(key, "")), key
    assert str(ds.PatientID)
    return ds


@pytest.mark.parametrize("case", ["real-siemens", "siemens", "philips-enhanced", "ge"])
def test_default_bids_has_no_patient_data_and_export_reads_it_back(shared_data, tmp_path, case):
    from qsmflow.dicom.source import SourceIndex, export_source

    if case == "real-siemens":
        src = shared_data / "siemens-gre-dicom" / "dicom_unsorted"
    else:
        mag, phase = _truth(seed=8)
        src = tmp_path / "dcm"
        write_gre_dicoms(src, case.split("-")[0], mag, phase, TE_MS, enhanced="series" if "enh" in case else None)
    secrets = _identifying_strings(src)
    assert len(secrets) >= (5 if case == "real-siemens" else 4)   # name parts, ID, birth date, ...
    bids = tmp_path / "bids"
    assert dicom2bids_main([str(src), str(bids), "--subject", "01", "--quiet"]) == 0
    assert (bids / "README").exists() and (bids / "participants.tsv").exists()
    _assert_no_patient_data(bids, secrets)
    assert not (bids / "sourcedata").exists()
    # the round trip: the export finds the source series in the DICOM folder by its UID
    sidecar = bids / "sub-01" / "anat" / "sub-01_echo-1_part-phase_MEGRE.json"
    with pytest.raises(ValueError, match=r"sub-01_echo-1_part-phase_MEGRE.json: --dicom-out needs .*"
                                         r"--source-dicom DIR.*--keep-patient-info"):
        export_source(sidecar)
    rec = export_source(sidecar, index=SourceIndex(src))
    assert rec["MatchedBy"] == "SeriesInstanceUID"
    img = sidecar.with_name(sidecar.name.replace(".json", ".nii.gz"))
    files = export_chimap(img, tmp_path / "out", source=rec, method="tkd")
    ds = _assert_same_study_and_patient(files[0], src)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == load_json(sidecar)["DicomSource"]["SeriesInstanceUID"]


def test_keep_patient_info_option_and_deprecated_flag(tmp_path, capsys):
    mag, phase = _truth(seed=9)
    write_gre_dicoms(tmp_path / "dcm", "siemens", mag, phase, TE_MS)
    assert dicom2bids_main([str(tmp_path / "dcm"), str(tmp_path / "a"), "--subject", "01", "--quiet",
                            "--no-patient-info"]) == 0
    assert "--no-patient-info is deprecated and does nothing" in capsys.readouterr().err
    assert not (tmp_path / "a" / "sourcedata").exists()
    bids = tmp_path / "b"
    for sub in ("01", "02"):  # a new dataset, then a subject added to it
        assert dicom2bids_main([str(tmp_path / "dcm"), str(bids), "--subject", sub, "--session", "1",
                                "--quiet", "--keep-patient-info"]) == 0
    private = sorted((bids / "sourcedata" / "qsmflow-private").iterdir())
    assert [f.name for f in private] == ["sub-01_ses-1_dicomsource.json", "sub-02_ses-1_dicomsource.json"]
    rec = json.loads(private[1].read_text())
    assert len(rec) == 2 and {r["SeriesNumber"] for r in rec.values()} == {5, 6}
    assert {r["PatientID"] for r in rec.values()} == {"SYN001"} and rec[next(iter(rec))]["StudyDate"] == "20240101"
    assert (bids / ".bidsignore").read_text().split() == ["sourcedata/qsmflow-private/"]
    _assert_no_patient_data(bids / "sub-01", {b"SYN001", b"Synth", b"19800101"})
    errors, _ = run_bids_validator(bids)
    assert errors == [], errors


def _dcm2niix_bids(src: Path, bids: Path) -> Path:
    """dcm2niix's default (anonymised) conversion of a magnitude + phase series, renamed to BIDS."""
    anat = bids / "sub-01" / "anat"
    anat.mkdir(parents=True)
    subprocess.run([DCM2NIIX, "-z", "y", "-ba", "y", "-o", str(anat), "-f", "sub-01_echo-%e_MEGRE", str(src)],
                   check=True, capture_output=True)
    for f in sorted(anat.iterdir()):
        f.rename(anat / re.sub(r"_MEGRE(_ph)?\.", lambda m: f"_part-{'phase' if m[1] else 'mag'}_MEGRE.", f.name))
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "dcm2niix", "BIDSVersion": "1.10.0"}))
    return anat


@needs_dcm2niix
def test_dicom_out_of_a_dcm2niix_dataset_with_source_dicom(shared_data, tmp_path, capsys):
    """A dataset converted by dcm2niix (no UIDs, no patient data in its sidecars): --dicom-out
    without --source-dicom stops up front (exit 2, nothing written); with it, the χ map lands in
    the source study under the source patient, referencing the phase series."""
    import contextlib
    import io

    from qsmflow.cli import run
    from qsmflow.dicom.source import SourceIndex, export_source

    src = shared_data / "siemens-gre-dicom" / "dicom_unsorted"
    anat = _dcm2niix_bids(src, tmp_path / "bids")
    assert len(list(anat.glob("*_part-phase_MEGRE.nii.gz"))) == 6
    out, dcm, work = tmp_path / "out", tmp_path / "dcm", tmp_path / "work"
    args = [str(tmp_path / "bids"), str(out), "participant", "-w", str(work), "--inversion", "tkd",
            "--nprocs", "2", "--skip-bids-validation", "--dicom-out", str(dcm)]
    assert run.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"sub-01_echo-1_part-phase_MEGRE.json: --dicom-out needs .*"
                                       r"--source-dicom DIR", err[0]), err
    assert not out.exists() and not dcm.exists() and not work.exists()
    # matching: dcm2niix's SeriesNumber/SeriesDescription, or the voxel grid alone
    phase = anat / "sub-01_echo-3_part-phase_MEGRE.nii.gz"
    index, img = SourceIndex(src), nib.load(phase)
    meta = load_json(phase.with_name(phase.name.replace(".nii.gz", ".json")))
    assert "SeriesInstanceUID" not in meta and "PatientID" not in meta
    rec = export_source(phase, meta, index=index, affine=img.affine, shape=img.shape)
    assert (rec["SeriesNumber"], rec["MatchedBy"]) == (7, "SeriesNumber/SeriesDescription")
    rec = export_source(phase, {}, index=index, affine=img.affine, shape=img.shape)
    assert (rec["SeriesNumber"], rec["MatchedBy"]) == (6, "geometry")   # magnitude and phase: same grid
    shifted = img.affine.copy()
    shifted[2, 3] += 0.5
    with pytest.raises(ValueError, match=r"no series in .* matches it \(SeriesNumber None, same voxel grid\)"):
        export_source(phase, {}, index=index, affine=shifted, shape=img.shape)
    # the App with --source-dicom
    with contextlib.redirect_stdout(io.StringIO()):
        rc = run.main(args + ["--source-dicom", str(src)])
    assert rc == 0, capsys.readouterr().err
    files = sorted((dcm / "sub-01_desc-tkd_Chimap").iterdir())
    assert len(files) == 10
    ds = _assert_same_study_and_patient(files[0], src)
    phase_uid = {im.series_number: im.series_uid for im in scan_folder(src, progress=False)[0]}[7]
    assert ds.SeriesNumber == 1007 and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == phase_uid
    # the χ series (R2*, T2* and SWI series are exported beside it)
    data, aff = read_series_volume(scan_folder(dcm / "sub-01_desc-tkd_Chimap", progress=False)[0])
    chi = nib.load(out / "sub-01" / "anat" / "sub-01_desc-tkd_Chimap.nii.gz")
    np.testing.assert_allclose(aff, chi.affine, atol=1e-4)
    assert np.max(np.abs(data - chi.get_fdata())) <= float(ds.RescaleSlope) / 2 + 1e-6


# ------------------------------------------------------------------------------------------
# dcm2niix as the conversion engine? (issue 14, item 11): what it reproduces, case by case
# ------------------------------------------------------------------------------------------
_OBL_GEOM = dict(orientation=OBLIQUE, pixel_spacing=(0.9, 1.3), slice_spacing=2.2)
#: the DICOM cases of this file → (write_gre_dicoms arguments, what dcm2niix gives; see docs/dicom.md)
ENGINE_CASES = {
    "siemens-2D-oblique": (dict(vendor="siemens", acquisition="2D", **_OBL_GEOM), "match"),
    "siemens-3D-oblique": (dict(vendor="siemens", acquisition="3D", **_OBL_GEOM), "match"),
    "philips-3D-oblique": (dict(vendor="philips", acquisition="3D", **_OBL_GEOM), "match"),
    "ge-2D-oblique-real-imag": (dict(vendor="ge", acquisition="2D", **_OBL_GEOM), "match"),
    "ge-repeated-echo-tags": (dict(vendor="ge", acquisition="2D", repeat_echo_tags=True), "one TE"),
    "siemens-XA-enhanced-3D": (dict(vendor="siemens", acquisition="3D", enhanced="series", **GEOMETRY),
                               "echoes as slices"),
    "philips-enhanced-2D": (dict(vendor="philips", acquisition="2D", enhanced="series", **GEOMETRY), "match"),
    "philips-enhanced-per-image-3D": (dict(vendor="philips", acquisition="3D", enhanced="image", **GEOMETRY),
                                      "match"),
}


def _dcm2niix_volumes(folder, out) -> dict:
    """dcm2niix (display values: ``-p n``; anonymised) → {(part, TE ms): (data, affine)}; a 4D file
    (echoes dcm2niix could not tell apart) is keyed by its one TE with ``#<volume>`` appended."""
    out.mkdir(parents=True)
    subprocess.run([DCM2NIIX, "-z", "n", "-p", "n", "-ba", "y", "-o", str(out), "-f", "%s_%e", str(folder)],
                   check=True, capture_output=True)
    vols = {}
    for f in sorted(out.glob("*.nii")):
        img, sc = nib.load(f), load_json(f.with_suffix(".json"))
        types = set(sc.get("ImageType", []))
        part = next((p for p, t in (("phase", "PHASE"), ("real", "REAL"), ("imag", "IMAGINARY")) if t in types), "mag")
        data = img.get_fdata()
        for v in range(data.shape[3] if data.ndim == 4 else 1):
            key = (part, round(sc["EchoTime"] * 1e3, 3)) + ((f"#{v}",) if data.ndim == 4 else ())
            vols[key] = (data[..., v] if data.ndim == 4 else data, img.affine)
    return vols


def engine_comparison(folder, out, echo_times_ms=None) -> dict:
    """qsmflow's conversion of ``folder`` against dcm2niix's with qsmflow's pairing and vendor
    phase scaling on top → {"echoes": same (part, TE) volumes, "affine_mm", "mag_rel", "phase_rad"}
    (largest affine difference, relative magnitude difference, wrapped phase difference)."""
    from qsmflow.dicom import vendor
    from qsmflow.dicom.convert import find_acquisitions, load_acquisition

    acq = find_acquisitions(scan_folder(folder, progress=False)[0])[0][0]
    ours = load_acquisition(acq, echo_times_ms=echo_times_ms)
    theirs = _dcm2niix_volumes(folder, out)
    tes = [round(t * 1e3, 3) for t in ours.te_s]
    parts = ("real", "imag") if acq.kind == "complex" else ("mag", "phase")
    res = {"echoes": sorted(theirs) == sorted((p, t) for p in parts for t in tes),
           "n_dcm2niix": len(theirs), "affine_mm": np.nan, "mag_rel": np.nan, "phase_rad": np.nan}
    if not res["echoes"]:
        return res
    hdr = next(im for im in acq.images if im.part == parts[1]).ds
    a, b = (np.stack([theirs[(p, t)][0] for t in tes], -1) for p in parts)
    mag, ph = ((vendor.complex_to_mag_phase(a, b, acq.vendor)[:2]) if acq.kind == "complex"
               else (a, vendor.phase_to_rad(b, hdr, acq.vendor)[0]))
    res["affine_mm"] = max(float(np.abs(aff - ours.affine).max()) for _, aff in theirs.values())
    res["mag_rel"] = float(np.abs(mag - ours.magnitude).max() / np.abs(ours.magnitude).max())
    res["phase_rad"] = float(np.abs(np.angle(np.exp(1j * (ph - ours.phase_rad)))).max())
    return res


def _assert_engine_matches(res):
    assert res["echoes"], res
    assert res["affine_mm"] < 1e-3 and res["mag_rel"] < 1e-6 and res["phase_rad"] < 1e-5, res


@needs_dcm2niix
@pytest.mark.parametrize("case", list(ENGINE_CASES))
def test_dcm2niix_engine_comparison(tmp_path, case):
    """Records where dcm2niix (-p n) + qsmflow's pairing and phase scaling reproduces qsmflow's
    own reader (same echoes, affine within 1e-3 mm, voxels, phase in rad) and where it does not."""
    kwargs, expected = ENGINE_CASES[case]
    kwargs = dict(kwargs)
    mag, phase = _truth(seed=6)
    t = write_gre_dicoms(tmp_path / "dcm", kwargs.pop("vendor"), mag, phase, TE_MS, **kwargs)
    res = engine_comparison(tmp_path / "dcm", tmp_path / "d2n",
                            echo_times_ms=TE_MS if kwargs.get("repeat_echo_tags") else None)
    print(case, res)
    if expected == "match":
        _assert_engine_matches(res)
    elif expected == "one TE":      # one 4D file per part, every echo labelled with the first TE ...
        assert not res["echoes"] and res["n_dcm2niix"] == 2 * len(TE_MS)
        vols = _dcm2niix_volumes(tmp_path / "dcm", tmp_path / "d2n_again")
        from qsmflow.dicom.vendor import complex_to_mag_phase
        four_d = nib.load(tmp_path / "d2n" / "5_1_real.nii")  # ... but the volumes in echo order
        for e in range(len(TE_MS)):
            ph = complex_to_mag_phase(vols[("real", TE_MS[0], f"#{e}")][0], vols[("imag", TE_MS[0], f"#{e}")][0],
                                      "ge")[1]
            assert np.max(np.abs(np.angle(np.exp(1j * (ph - _to_nifti(t["phase_rad"][..., e])))))) < 1e-5
        assert four_d.shape == (C, R, S, len(TE_MS))
    else:                           # "echoes as slices": one 3D file per part, echoes x slices deep
        assert not res["echoes"] and res["n_dcm2niix"] == 2


@needs_dcm2niix
def test_dcm2niix_engine_comparison_real_siemens(shared_data, tmp_path):
    res = engine_comparison(shared_data / "siemens-gre-dicom" / "dicom_unsorted", tmp_path / "d2n")
    print("real-siemens", res)
    _assert_engine_matches(res)
    assert res["n_dcm2niix"] == 12


# ------------------------------------------------------------------------------------------
# bad input: clear message naming the series, non-zero exit, nothing half-written
# ------------------------------------------------------------------------------------------
def _drop_slice(ds, part, e, s):
    return None if (part == "phase" and e == 1 and s == 3) else ds


def _mixed_matrix(ds, part, e, s):
    if part == "mag" and e == 0 and s == 0:
        ds.Rows, ds.Columns = 8, 8
        ds.PixelData = np.zeros((8, 8), "<u2").tobytes()
    return ds


def _no_phase_echo3(ds, part, e, s):
    return None if (part == "phase" and e == 2) else ds


def _spin_echo(ds, part, e, s):
    ds.ScanningSequence = "SE"
    return ds


def _enhanced_no_te(ds, part, e, s):
    """Enhanced: frame 9 of the phase file (echo 2, slice 3) without MREchoSequence."""
    if part == "phase" and e == 1 and s == 2:
        del ds.EchoTime
    return ds


def _enhanced_tilted_frame(ds, part, e, s):
    """Enhanced: frame 17 of the magnitude file (echo 3, slice 5) in another plane."""
    if part == "mag" and e == 2 and s == 4:
        ds.ImageOrientationPatient = [f"{v:.8g}" for v in OBLIQUE]
    return ds


@pytest.mark.parametrize("mutate,enhanced,pattern", [
    (_drop_slice, None, r"series 6 'gre_qsm'.*slice.*missing"),
    (_mixed_matrix, None, r"series 5 'gre_qsm'.*mixed matrix sizes.*12x10 in \d+ file\(s\), 8x8 in 1"),
    (_no_phase_echo3, None, r"series 5 'gre_qsm' \+ series 6 'gre_qsm': echo 3 \(TE 10 ms\) has magnitude "
                            r"images but no phase"),
    (_spin_echo, None, r"no multi-echo gradient-echo series.*series 5 'gre_qsm' \(not a gradient-echo"),
    (_drop_slice, "series", r"series 6 'gre_qsm'.*slice.*missing"),
    (_enhanced_no_te, "series", r"series 6 'gre_qsm': IM\d{5} frame 9 has no echo time \(MREchoSequence"),
    (_enhanced_tilted_frame, "series", r"series 5 'gre_qsm': mixed slice orientations.*\(IM\d{5} frame 17\)"),
    (_spin_echo, "series", r"no multi-echo gradient-echo series.*series 5 'gre_qsm' \(not a gradient-echo"),
])
def test_bad_input_clear_error_nothing_written(tmp_path, capsys, mutate, enhanced, pattern):
    mag, phase = _truth(seed=4)
    write_gre_dicoms(tmp_path / "in" / "dcm", "siemens", mag, phase, TE_MS, mutate=mutate, enhanced=enhanced)
    rc = dicom2bids_main([str(tmp_path / "in" / "dcm"), str(tmp_path / "out" / "bids"),
                          "--subject", "01", "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(pattern, err), err
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == []


def test_non_gre_series_listed_and_skipped(tmp_path):
    mag, phase = _truth(seed=5)
    write_gre_dicoms(tmp_path / "dcm", "siemens", mag, phase, TE_MS)
    write_gre_dicoms(tmp_path / "dcm" / "t2", "siemens", mag[..., :1], phase[..., :1], [80.0],
                     series_number=9, mutate=_spin_echo)
    logs = []
    res = dicom_to_bids(tmp_path / "dcm", tmp_path / "bids", "01", session="1", progress=False,
                        log=logs.append)
    assert [lab for lab, _ in res["skipped"]] == ["series 9 'gre_qsm'", "series 10 'gre_qsm'"]
    assert any("series 9" in m and "not a gradient-echo" in m for m in logs)
    assert len(res["files"]) == 6 and all("ses-1" in str(f) for f in res["files"])
    assert (tmp_path / "bids" / "sub-01" / "ses-1" / "anat" /
            "sub-01_ses-1_echo-2_part-mag_MEGRE.nii.gz").exists()
    with pytest.raises(ValueError, match="already exists"):
        dicom_to_bids(tmp_path / "dcm", tmp_path / "bids", "01", session="1", progress=False)
    assert json.loads((tmp_path / "bids" / "dataset_description.json").read_text())["DatasetType"] == "raw"


@pytest.mark.parametrize("unit,scale", [("rad", 1.0), ("degrees", 180 / np.pi), ("mrad", 1000.0)])
def test_philips_phase_units_recognised(unit, scale):
    """Philips display values (after slope/intercept) in rad, degrees or mrad all come out in
    rad, and the sidecar record says which unit was found."""
    from qsmflow.dicom.vendor import phase_to_rad

    ds = pydicom.Dataset()
    ds.BitsStored, ds.PixelRepresentation = 12, 0
    truth = np.linspace(-np.pi, np.pi, 4095, endpoint=False)
    ds.RescaleSlope, ds.RescaleIntercept = f"{2 * np.pi * scale / 4095:.12g}", f"{-np.pi * scale:.12g}"
    out, rec = phase_to_rad(truth * scale, ds, "philips")
    np.testing.assert_allclose(out, truth, atol=1e-9)
    assert unit in rec["Method"]

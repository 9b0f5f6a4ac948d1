"""χ map (NIfTI, ppm) — or an R2*, T2* or SWI map — → a new classic MR DICOM series derived
from its source series.

Same patient, study and frame of reference as the source; new series and instance UIDs;
``ImageType DERIVED\\SECONDARY\\<QSM|R2STAR|T2STAR|SWI|MINIP>``; int16 pixels with
``RescaleSlope`` so that value (ppm, 1/s, ms, a.u.) = stored value × slope (precision: slope /
2); a window of ±the 99th percentile of |χ| (χ) or 0 to the 99th percentile (the others).
The source is the ``DicomSource`` block that ``dicom2bids`` writes into the raw sidecars (or
the sidecar/dict itself, or a folder of the source DICOM files).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, PYDICOM_IMPLEMENTATION_UID, generate_uid

from .. import __version__
from ..io import load_nifti
from . import geometry

INT16_MAX = 32000  # headroom below 32767

#: exportable maps: kind -> (ImageType value 3, unit, RescaleType, symmetric window,
#: SeriesDescription template, what the map is); kinds are those of qsmflow.bids.OUTPUTS
MAP_KINDS = {
    "chimap": ("QSM", "ppm", "PPM", True, "QSM {method} (ppm)",
               "Quantitative susceptibility map (ppm)"),
    "r2star": ("R2STAR", "1/s", "1/S", False, "R2* map (1/s)", "R2* relaxation rate map (1/s)"),
    "t2star": ("T2STAR", "ms", "MS", False, "T2* map (ms)", "T2* relaxation time map (ms)"),
    "swi": ("SWI", "a.u.", "US", False, "SWI CLEAR-SWI-like",
            "CLEAR-SWI-like susceptibility-weighted image (arbitrary units)"),
    "swi_minip": ("MINIP", "a.u.", "US", False, "SWI minIP CLEAR-SWI-like",
                  "minimum-intensity projection of a CLEAR-SWI-like SWI (arbitrary units)"),
}


def _format_ds(x: float) -> str:
    """Decimal string (VR DS, at most 16 characters) for ``x``."""
    x = float(x) + 0.0  # no "-0"
    for digits in (8, 7, 6, 5):
        s = f"{x:.{digits}g}"
        if len(s) <= 16:
            return s
    raise ValueError(f"cannot write {x!r} as a DICOM decimal string")


def quantize_ppm(chi) -> tuple[np.ndarray, float]:
    """χ (ppm, float; or any map in its unit) → ``(int16 values, RescaleSlope)`` with
    ppm = value × slope.

    Parameters
    ----------
    chi : array_like
        The map, any shape; NaN and ±Inf become 0.

    Returns
    -------
    values : numpy.ndarray
        int16 stored values, same shape.
    slope : float
        RescaleSlope (map unit per stored step): max |χ| / 32000, rounded to a DICOM decimal string
        (1e-5 for an all-zero map).
    """
    chi = np.nan_to_num(np.asarray(chi, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    m = float(np.max(np.abs(chi))) if chi.size else 0.0
    slope = float(_format_ds(m / INT16_MAX if m > 0 else 1e-5))
    q = np.clip(np.rint(chi / slope), -32768, 32767).astype(np.int16)
    return q, slope


def resolve_source(source) -> dict:
    """The DICOM source record: a dict (a sidecar or its ``DicomSource`` block), a raw sidecar path
    (its ``DicomSource``, completed by the ``dicom2bids --keep-patient-info`` private file), or a
    DICOM folder/file (its first series; patient identification read from the headers).

    Parameters
    ----------
    source : dict, str or path-like
        One of the above; a path ending in ``.json`` is a sidecar.

    Returns
    -------
    dict
        The record (a dict's ``DicomSource`` block when it has one), with ``StudyInstanceUID``,
        ``FrameOfReferenceUID`` and ``PatientID``.

    Raises
    ------
    ValueError
        The path does not exist or is not DICOM, a folder has no images or series of several studies,
        no record with patient identification is found, or the record lacks ``StudyInstanceUID``,
        ``FrameOfReferenceUID`` or ``PatientID``.
    """
    from .source import SourceIndex, export_source

    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.suffix == ".json":
            if not p.is_file():
                raise ValueError(f"{p}: sidecar not found; pass the raw echo sidecar written by dicom2bids")
            source = export_source(p)
        elif p.is_dir():
            source = SourceIndex(p).match({}, label=p.name)
        elif p.exists():
            from .convert import dicom_source
            from .scan import read_header

            im = read_header(p)
            if im is None:
                raise ValueError(f"{p}: not a DICOM image; pass the source DICOM folder or a raw sidecar")
            source = dicom_source(im.ds, patient=True)
        else:
            raise ValueError(f"{p}: source not found; pass the source DICOM folder or a raw sidecar (.json)")
    if not isinstance(source, dict):
        raise ValueError("source must be a sidecar dict/.json path or a DICOM folder")
    rec = source.get("DicomSource", source)
    missing = [k for k in ("StudyInstanceUID", "FrameOfReferenceUID") if not rec.get(k)]
    if missing:
        raise ValueError(f"source has no {', '.join(missing)}: convert with qsmflow dicom2bids (it records "
                         "DicomSource in the sidecars) or pass the source DICOM folder")
    if "PatientID" not in rec:
        raise ValueError("source has no PatientID (the BIDS data hold no patient identification): the "
                         "series would not file under its patient; pass the source DICOM folder as source")
    return rec


def export_chimap(chimap_nifti, out_dir, *, source, method: str, series_number: int | None = None,
                  series_description: str | None = None, overwrite: bool = False) -> list[Path]:
    """Write the χ map ``chimap_nifti`` (ppm) as a new DICOM series into ``out_dir``.

    ``out_dir`` must not exist or be empty (``overwrite=True``: a previous series there is
    replaced); the series is built in a temporary folder next to it and moved into place, so a
    failure leaves nothing behind.

    Parameters
    ----------
    chimap_nifti : str or path-like
        The χ map (ppm), a 3D NIfTI (trailing axes of length 1 allowed).
    out_dir : str or path-like
        Folder for the new series, one file per slice.
    source : dict, str or path-like
        The source series' record, raw sidecar or DICOM folder (:func:`resolve_source`).
    method : str
        Dipole inversion method, named in SeriesDescription and DerivationDescription.
    series_number : int, optional
        SeriesNumber; default 1000 + the source's SeriesNumber.
    series_description : str, optional
        SeriesDescription (first 64 characters); default ``"QSM <method> (ppm)"``.
    overwrite : bool, optional
        Replace a non-empty ``out_dir``.

    Returns
    -------
    list of pathlib.Path
        The written files, in slice order.

    Raises
    ------
    ValueError
        The source is incomplete (:func:`resolve_source`), the map cannot be read or is not 3D,
        ``out_dir`` is not empty (without ``overwrite``), or the affine is sheared or degenerate.
    """
    return export_map(chimap_nifti, out_dir, source=source, kind="chimap", method=method,
                      series_number=series_number, series_description=series_description,
                      overwrite=overwrite)


def export_map(map_nifti, out_dir, *, source, kind: str = "chimap", method: str = "",
               series_number: int | None = None, series_description: str | None = None,
               overwrite: bool = False) -> list[Path]:
    """Write a map of :data:`MAP_KINDS` (χ in ppm, R2* in 1/s, T2* in ms, SWI or its minIP in
    a.u.) as a new DICOM series into ``out_dir``, as :func:`export_chimap` does for χ.

    Parameters
    ----------
    map_nifti : str or path-like
        The map in its kind's unit, a 3D NIfTI (trailing axes of length 1 allowed).
    out_dir, source, series_number, overwrite
        As in :func:`export_chimap`.
    kind : str, optional
        A key of :data:`MAP_KINDS`: ``"chimap"``, ``"r2star"``, ``"t2star"``, ``"swi"``, ``"swi_minip"``.
    method : str, optional
        Method named in DerivationDescription (and in the default SeriesDescription of χ).
    series_description : str, optional
        SeriesDescription (first 64 characters); default from the kind's template.

    Returns
    -------
    list of pathlib.Path
        The written files (``out_dir/<ImageType token>_<series number>_<slice>.dcm``), in slice order.

    Raises
    ------
    ValueError
        ``kind`` is unknown, or as in :func:`export_chimap`.
    """
    if kind not in MAP_KINDS:
        raise ValueError(f"unknown map kind {kind!r}; one of {', '.join(MAP_KINDS)}")
    token, unit, rescale_type, symmetric, desc_tpl, what = MAP_KINDS[kind]
    src = resolve_source(source)
    data, affine, _ = load_nifti(map_nifti)
    data = np.squeeze(data) if data.ndim > 3 else data
    if data.ndim != 3:
        raise ValueError(f"{map_nifti}: the map must be 3D, got shape {data.shape}")
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"{out_dir}: folder is not empty; choose a new folder for the DICOM series")
    orientation, positions, spacing = geometry.dicom_slices_from_affine(affine, data.shape)
    q, slope = quantize_ppm(data)
    nz = np.abs(data[np.isfinite(data) & (data != 0)])
    p99 = float(np.percentile(nz, 99)) if nz.size else 0.1
    width = float(_format_ds(max((2 if symmetric else 1) * p99, 0.01)))
    centre = "0" if symmetric else _format_ds(width / 2)
    normal = geometry.slice_normal(orientation)
    zooms = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    src_number = int(src.get("SeriesNumber", 0) or 0)
    number = int(series_number if series_number is not None else 1000 + src_number)
    desc = series_description or desc_tpl.format(method=method)
    derivation = (f"{what} computed by qsmflow {__version__}"
                  + (f" with method {method}" if method else "")
                  + f"; {unit} = stored value x RescaleSlope")
    series_uid = generate_uid()
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    written = []
    try:
        for k in range(data.shape[2]):
            ds = _slice_dataset(src, series_uid, number, desc, derivation, date, time, token)
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [_format_ds(float(v)) for v in positions[k]]
            ds.ImageOrientationPatient = [_format_ds(float(v)) for v in orientation]
            ds.PixelSpacing = [_format_ds(spacing[0]), _format_ds(spacing[1])]
            ds.SliceThickness = _format_ds(float(zooms[2]))
            ds.SpacingBetweenSlices = _format_ds(float(zooms[2]))
            ds.SliceLocation = _format_ds(float(positions[k] @ normal))
            pix = geometry.nifti_to_pixels(q[:, :, k])
            ds.Rows, ds.Columns = pix.shape
            ds.RescaleSlope = _format_ds(slope)
            ds.RescaleIntercept = "0"
            ds.RescaleType = rescale_type
            ds.WindowCenter = centre
            ds.WindowWidth = _format_ds(width)
            ds.PixelData = pix.astype("<i2").tobytes()
            f = tmp / f"{token}_{number:04d}_{k + 1:04d}.dcm"
            ds.save_as(str(f), enforce_file_format=True)
            written.append(out_dir / f.name)
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir) if overwrite else out_dir.rmdir()
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def new_mr_dataset() -> Dataset:
    """An empty classic MR Image Storage dataset with its file meta and a new SOP instance UID
    (explicit VR little endian).

    Returns
    -------
    pydicom.Dataset
        ``SOPClassUID`` and ``SOPInstanceUID`` set, plus the file meta; nothing else.
    """
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
    return ds


def _slice_dataset(src, series_uid, number, desc, derivation, date, time, token) -> Dataset:
    ds = new_mr_dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", token]
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    ds.Modality = "MR"
    ds.Manufacturer = "qsmflow"
    ds.SoftwareVersions = f"qsmflow {__version__}"
    ds.PatientName = src.get("PatientName", "")
    ds.PatientID = src.get("PatientID", "")
    ds.PatientBirthDate = src.get("PatientBirthDate", "")
    ds.PatientSex = src.get("PatientSex", "")
    ds.StudyInstanceUID = src["StudyInstanceUID"]
    ds.StudyDate = src.get("StudyDate", "")
    ds.StudyTime = src.get("StudyTime", "")
    ds.StudyID = src.get("StudyID", "")
    ds.AccessionNumber = src.get("AccessionNumber", "")
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = desc[:64]
    ds.DerivationDescription = derivation[:1024]
    ds.FrameOfReferenceUID = src["FrameOfReferenceUID"]
    ds.PositionReferenceIndicator = ""
    if src.get("PatientPosition"):
        ds.PatientPosition = src["PatientPosition"]
    ds.ScanningSequence = src.get("ScanningSequence", "GR").split("\\")
    ds.SequenceVariant = src.get("SequenceVariant", "NONE").split("\\")
    ds.ScanOptions = ""
    ds.MRAcquisitionType = src.get("MRAcquisitionType", "")
    ds.EchoTime = ""
    ds.RepetitionTime = ""
    ds.EchoTrainLength = ""
    if src.get("SeriesInstanceUID"):
        ref = Dataset()
        ref.SeriesInstanceUID = src["SeriesInstanceUID"]
        ds.ReferencedSeriesSequence = Sequence([ref])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds

"""Walk a folder of DICOM files, read headers and classify each image.

Pure header logic, no pixel data: :func:`scan_folder` returns one :class:`DicomImage` per
classic (single-frame) image file and per frame of an enhanced (multi-frame) file (see
:mod:`.enhanced`), and a list of skipped files; :func:`group_series` groups them by
``SeriesInstanceUID``. Classification of the image *part* (magnitude, phase, real,
imaginary) follows, in order of precedence: ``ComplexImageComponent`` (0008,9208), GE's private
image type (0043,102F: 0 mag, 1 phase, 2 real, 3 imaginary), Philips' private image type
(2005,1011: M/P/R/I), then the ``ImageType`` tokens (Siemens ``M``/``P``/``R``/``I``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from . import enhanced

PARTS = ("mag", "phase", "real", "imag")

_TOKENS = {
    "phase": {"P", "PHASE", "PHASE MAP", "P_FFE", "P_SE", "P_IR"},
    "real": {"R", "REAL", "R_FFE", "R_SE"},
    "imag": {"I", "IMAGINARY", "I_FFE", "I_SE"},
    "mag": {"M", "MAGNITUDE", "M_FFE", "M_SE"},
}
_CIC = {"MAGNITUDE": "mag", "PHASE": "phase", "REAL": "real", "IMAGINARY": "imag"}
_GE_TYPE = {0: "mag", 1: "phase", 2: "real", 3: "imag"}
_PHILIPS_TYPE = {"M": "mag", "P": "phase", "R": "real", "I": "imag"}

GE_IMAGE_TYPE_TAG = (0x0043, 0x102F)
GE_NUMBER_OF_ECHOES_TAG = (0x0019, 0x10A9)
GE_RAW_RUN_NUMBER_TAG = (0x0019, 0x10A2)
PHILIPS_IMAGE_TYPE_TAG = (0x2005, 0x1011)
PHILIPS_SCALE_SLOPE_TAG = (0x2005, 0x100E)


@dataclass
class DicomImage:
    """Header of one classic DICOM image or of one frame of an enhanced file (geometry in DICOM
    LPS mm, times in ms as stored)."""

    path: Path
    series_uid: str
    series_number: int
    series_description: str
    protocol_name: str
    vendor: str                 # "siemens" | "ge" | "philips" | "other"
    manufacturer: str           # as stored
    part: str                   # one of PARTS
    part_source: str            # which tag decided the part
    echo_number: int | None
    echo_time_ms: float | None
    position: np.ndarray        # ImagePositionPatient (LPS mm)
    orientation: np.ndarray     # ImageOrientationPatient (6,)
    rows: int
    columns: int
    pixel_spacing: tuple        # (row spacing, column spacing) mm
    instance_number: int
    order_key: tuple            # tie-breaker for echoes that share EchoNumbers/EchoTime
    is_gre: bool
    is_derived: bool
    n_frames: int
    ds: pydicom.Dataset = field(repr=False)   # header only (no pixel data); per frame if enhanced
    frame: int | None = None    # frame index (0-based) in an enhanced file, None for classic

    @property
    def label(self) -> str:
        return f"series {self.series_number} '{self.series_description}'"

    @property
    def source(self) -> str:
        """File name, plus the frame number (1-based) for an enhanced file."""
        return self.path.name if self.frame is None else f"{self.path.name} frame {self.frame + 1}"


def _private(ds, tag):
    """Value of a private tag, decoding raw bytes of implicit-VR files."""
    el = ds.get(tag)
    if el is None:
        return None
    v = el.value
    if isinstance(v, bytes):
        if len(v) in (2, 4) and tag == GE_IMAGE_TYPE_TAG:
            return int.from_bytes(v[:len(v)], "little", signed=True)
        try:
            return v.decode("ascii", "ignore").strip("\x00 ")
        except Exception:  # pragma: no cover - undecodable private bytes
            return None
    return v


def vendor_of(manufacturer: str) -> str:
    """Vendor key of a Manufacturer value: ``"siemens"``, ``"ge"``, ``"philips"`` or ``"other"``.

    Parameters
    ----------
    manufacturer : str
        The header's Manufacturer, matched case-insensitively; None or empty gives ``"other"``.

    Returns
    -------
    str
        The vendor key.
    """
    m = (manufacturer or "").lower()
    if "siemens" in m:
        return "siemens"
    if m.startswith("ge") or "general electric" in m:
        return "ge"
    if "philips" in m:
        return "philips"
    return "other"


def classify_part(ds) -> tuple[str, str]:
    """→ ``(part, source)``: part in :data:`PARTS`, source names the tag that decided it.

    Precedence: ComplexImageComponent, GE (0043,102F), Philips (2005,1011), then the ImageType tokens;
    an image none of them marks as phase, real or imaginary is magnitude.

    Parameters
    ----------
    ds : pydicom.Dataset
        Header of an image (or of one frame).

    Returns
    -------
    part : str
        ``"mag"``, ``"phase"``, ``"real"`` or ``"imag"``.
    source : str
        The deciding tag: ``"ComplexImageComponent"``, ``"GE (0043,102F)"``, ``"Philips (2005,1011)"``
        or ``"ImageType"``.
    """
    cic = str(ds.get("ComplexImageComponent", "") or "").upper()
    if cic in _CIC:
        return _CIC[cic], "ComplexImageComponent"
    ge = _private(ds, GE_IMAGE_TYPE_TAG)
    if ge is not None:
        try:
            return _GE_TYPE[int(str(ge).split("\\")[0])], "GE (0043,102F)"
        except (KeyError, ValueError):
            pass
    ph = _private(ds, PHILIPS_IMAGE_TYPE_TAG)
    if ph is not None and str(ph).strip().upper() in _PHILIPS_TYPE:
        return _PHILIPS_TYPE[str(ph).strip().upper()], "Philips (2005,1011)"
    tokens = [str(t).strip().upper() for t in (ds.get("ImageType") or [])]
    for part in ("phase", "real", "imag"):
        if any(t in _TOKENS[part] for t in tokens[2:] or tokens):
            return part, "ImageType"
    return "mag", "ImageType"


def _is_gre(ds) -> bool:
    seq = ds.get("ScanningSequence") or ""
    seq = [str(s).upper() for s in (seq if isinstance(seq, (list, pydicom.multival.MultiValue)) else [seq])]
    seq = {t for s in seq for t in str(s).split("\\")}
    return "GR" in seq and "EP" not in seq and "IR" not in seq


def _float_or_none(v):
    try:
        return None if v in (None, "") else float(v)
    except (TypeError, ValueError):
        return None


def _order_key(ds) -> tuple:
    """Acquisition order for images that share EchoNumbers/EchoTime (GE research exports):
    GE raw data run number, then the SOPInstanceUID's numeric components, then InstanceNumber."""
    run = _private(ds, GE_RAW_RUN_NUMBER_TAG)
    try:
        run = float(run) if run is not None else 0.0
    except (TypeError, ValueError):
        run = 0.0
    uid = str(ds.get("SOPInstanceUID", ""))
    uid_key = tuple(int(p) for p in uid.split(".") if p.isdigit())
    return (run, uid_key, int(ds.get("InstanceNumber", 0) or 0))


def read_images(path) -> list[DicomImage]:
    """Header of one file → one :class:`DicomImage` (one per frame for an enhanced file); empty for a
    non-image or non-DICOM file.

    Parameters
    ----------
    path : str or path-like
        The file; only its header is read.

    Returns
    -------
    list of DicomImage
        Empty when the file cannot be read as DICOM or has no SeriesInstanceUID or Rows.

    Raises
    ------
    ValueError
        An enhanced file whose per-frame functional groups do not match ``NumberOfFrames``
        (:func:`.enhanced.frame_datasets`).
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError):
        return []
    if "SeriesInstanceUID" not in ds or "Rows" not in ds:
        return []  # DICOMDIR, structured reports, presentation states ...
    if enhanced.is_enhanced(ds):
        return [_image(path, fds, i) for i, fds in enumerate(enhanced.frame_datasets(ds, path))]
    return [_image(path, ds)]


def read_header(path) -> DicomImage | None:
    """Header of one file (its first frame if enhanced) → :class:`DicomImage`; ``None`` for a
    non-image or non-DICOM file.

    Parameters
    ----------
    path : str or path-like
        The file; only its header is read.

    Returns
    -------
    DicomImage or None
        The (first) image, or None.

    Raises
    ------
    ValueError
        As in :func:`read_images` (a damaged enhanced file).
    """
    images = read_images(path)
    return images[0] if images else None


def _image(path: Path, ds, frame: int | None = None) -> DicomImage:
    part, source = classify_part(ds)
    manufacturer = str(ds.get("Manufacturer", "") or "")
    en = ds.get("EchoNumbers")
    if isinstance(en, (list, pydicom.multival.MultiValue)):
        en = en[0] if len(en) else None
    pos = ds.get("ImagePositionPatient")
    ori = ds.get("ImageOrientationPatient")
    ps = ds.get("PixelSpacing")
    image_type = [str(t).upper() for t in (ds.get("ImageType") or [])]
    return DicomImage(
        path=path,
        series_uid=str(ds.SeriesInstanceUID),
        series_number=int(ds.get("SeriesNumber", 0) or 0),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        protocol_name=str(ds.get("ProtocolName", "") or ""),
        vendor=vendor_of(manufacturer),
        manufacturer=manufacturer,
        part=part,
        part_source=source,
        echo_number=int(en) if en not in (None, "") else None,
        echo_time_ms=_float_or_none(ds.get("EchoTime")),
        position=np.array([float(v) for v in pos]) if pos else np.full(3, np.nan),
        orientation=np.array([float(v) for v in ori]) if ori else np.full(6, np.nan),
        rows=int(ds.Rows),
        columns=int(ds.get("Columns", 0)),
        pixel_spacing=tuple(float(v) for v in ps) if ps else (np.nan, np.nan),
        instance_number=int(ds.get("InstanceNumber", 0) or 0),
        order_key=_order_key(ds) + (frame or 0,),
        is_gre=_is_gre(ds),
        is_derived=bool(image_type) and image_type[0] == "DERIVED",
        n_frames=int(ds.get("NumberOfFrames", 1) or 1),
        ds=ds,
        frame=frame,
    )


def list_files(folder) -> list[Path]:
    """All regular files below ``folder`` (recursively, sorted, hidden files skipped).

    Parameters
    ----------
    folder : str or path-like
        Folder to walk; hidden sub-folders are skipped as well.

    Returns
    -------
    list of pathlib.Path
        Each folder's files sorted by name, folders top-down in sorted order.

    Raises
    ------
    ValueError
        ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder; pass the folder that holds the DICOM files")
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(Path(root) / f for f in sorted(files) if not f.startswith("."))
    return out


def scan_folder(folder, progress: bool = True) -> tuple[list[DicomImage], list[Path]]:
    """Read every file's header below ``folder`` → ``(images, skipped_files)`` (read-only).

    Parameters
    ----------
    folder : str or path-like
        Folder of DICOM files, searched recursively (hidden files skipped; :func:`list_files`).
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    images : list of DicomImage
        One per classic image and per frame of an enhanced file.
    skipped_files : list of pathlib.Path
        Files that are not DICOM images.

    Raises
    ------
    ValueError
        ``folder`` is not a folder, or an enhanced file is damaged (:func:`read_images`).
    """
    from tqdm.auto import tqdm

    files = list_files(folder)
    images, skipped = [], []
    for f in tqdm(files, desc="reading DICOM headers", unit="file", disable=not progress):
        imgs = read_images(f)
        (images.extend(imgs) if imgs else skipped.append(f))
    return images, skipped


def group_series(images) -> dict[str, list[DicomImage]]:
    """Images grouped by SeriesInstanceUID, groups ordered by series number.

    Parameters
    ----------
    images : iterable of DicomImage
        Images from :func:`scan_folder`.

    Returns
    -------
    dict of str to list of DicomImage
        ``{SeriesInstanceUID: images in input order}``, ordered by (SeriesNumber of the first image, UID).
    """
    groups: dict[str, list[DicomImage]] = {}
    for im in images:
        groups.setdefault(im.series_uid, []).append(im)
    return dict(sorted(groups.items(), key=lambda kv: (kv[1][0].series_number, kv[0])))

"""Where a χ map's DICOM export takes its patient, study and frame of reference from.

The BIDS tree written by ``dicom2bids`` holds no patient identification (and dcm2niix/heudiconv
sidecars hold no UIDs at all), so an export completes the raw sidecar's record from, in order:

1. the source DICOM folder (``--source-dicom``, :class:`SourceIndex`): the series the image came
   from, found by ``SeriesInstanceUID`` (dicom2bids ``DicomSource``, or dcm2niix ``-ba n``), else
   ``SeriesNumber`` + ``SeriesDescription``/``ProtocolName`` (dcm2niix's default sidecar), else by
   geometry (the same voxel grid, corners within :data:`GRID_TOL_MM`);
2. the private patient file of ``dicom2bids --keep-patient-info``
   (``sourcedata/qsmflow-private/sub-<l>[_ses-<s>]_dicomsource.json``);
3. a sidecar ``DicomSource`` that already has ``PatientID`` (datasets converted before 0.2).

Records are plain dicts of DICOM keywords (:data:`.convert.DICOM_SOURCE_FIELDS` and
:data:`.convert.PATIENT_FIELDS`), as :func:`.export.export_chimap` takes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bids import entity_string, parse_filename
from ..io import load_json, sidecar_path
from .convert import dicom_source, private_path
from .geometry import LPS_TO_RAS
from .scan import group_series, scan_folder

#: largest distance (mm) between the corner voxel centres of a NIfTI image and a DICOM series
#: for the series to count as the image's source
GRID_TOL_MM = 0.05

_NEEDS = ("--dicom-out needs the patient and study of the source DICOM series: pass --source-dicom "
          "DIR (the scanner's DICOM folder of this session), or convert with "
          "'qsmflow dicom2bids --keep-patient-info'")


def nifti_corners(affine, shape) -> np.ndarray:
    """World (RAS+ mm) coordinates of the 8 corner voxel centres of a grid → (8, 3).

    Parameters
    ----------
    affine : array_like, shape (4, 4)
        NIfTI affine (RAS+ mm).
    shape : sequence of int
        Array shape; the first three axes are used.

    Returns
    -------
    numpy.ndarray, shape (8, 3)
        The corner voxel centres (RAS+ mm).
    """
    n = np.asarray(shape[:3], float) - 1
    ijk = np.array([[i, j, k, 1.0] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])])
    return (np.asarray(affine, float) @ ijk.T).T[:, :3]


def series_corners(images) -> np.ndarray:
    """RAS+ mm corner voxel centres of a DICOM series' slice stack (any echo count) → (8, 3).

    Parameters
    ----------
    images : sequence of DicomImage
        The images of one series; orientation, matrix size and pixel spacing come from the first.

    Returns
    -------
    numpy.ndarray, shape (8, 3)
        Corner pixel centres of the first and last slice along the normal (RAS+ mm).
    """
    im = images[0]
    x, y = im.orientation[:3], im.orientation[3:]
    d = np.array([p.position @ np.cross(x, y) for p in images])
    first, last = images[int(np.argmin(d))].position, images[int(np.argmax(d))].position
    dr, dc = im.pixel_spacing
    pts = [p + i * (im.columns - 1) * dc * x + j * (im.rows - 1) * dr * y
           for p in (first, last) for i in (0, 1) for j in (0, 1)]
    return (LPS_TO_RAS[:3, :3] @ np.array(pts).T).T


def same_grid(a, b, tol: float = GRID_TOL_MM) -> bool:
    """True when the corner sets ``a`` and ``b`` (8×3 mm) coincide in any order.

    Parameters
    ----------
    a, b : array_like, shape (8, 3)
        Corner voxel centres in mm (:func:`nifti_corners`, :func:`series_corners`).
    tol : float, optional
        Largest distance (mm) from a corner to the nearest corner of the other set.

    Returns
    -------
    bool
        True when every corner of each set lies within ``tol`` of a corner of the other.
    """
    dist = np.linalg.norm(np.asarray(a)[:, None] - np.asarray(b)[None], axis=-1)
    return bool(dist.min(axis=1).max() <= tol and dist.min(axis=0).max() <= tol)


class SourceIndex:
    """The series of a source DICOM folder (headers read once, read-only)."""

    def __init__(self, folder, progress: bool = False):
        self.folder = Path(folder)
        images, _ = scan_folder(self.folder, progress=progress)
        if not images:
            raise ValueError(f"{self.folder}: no DICOM images found; pass the folder of the scanner's "
                             "DICOM export to --source-dicom")
        self.series = group_series(images)

    def match(self, sidecar: dict, affine=None, shape=None, label: str = "image") -> dict:
        """Source record (with patient identification) of the series that ``sidecar`` (a raw
        image's metadata; ``affine``/``shape`` its grid) came from; ``ValueError`` if none or
        several studies match."""
        rec = sidecar.get("DicomSource") or {}
        uid = rec.get("SeriesInstanceUID") or sidecar.get("SeriesInstanceUID")
        if uid:
            if uid not in self.series:
                raise ValueError(f"{label}: its source series (SeriesInstanceUID {uid}) is not in "
                                 f"{self.folder}; pass the DICOM folder of this session to --source-dicom")
            return {**dicom_source(self.series[uid][0].ds, patient=True), "MatchedBy": "SeriesInstanceUID"}
        cands = list(self.series.values())
        number = rec.get("SeriesNumber", sidecar.get("SeriesNumber"))
        by_tags = [s for s in cands if number is not None and s[0].series_number == int(number)
                   and sidecar.get("SeriesDescription", s[0].series_description) == s[0].series_description
                   and sidecar.get("ProtocolName", s[0].protocol_name) == s[0].protocol_name]
        cands = by_tags or cands
        how = "SeriesNumber/SeriesDescription" if by_tags else "geometry"
        if affine is not None and shape is not None:
            corners = nifti_corners(affine, shape)
            cands = [s for s in cands if same_grid(series_corners(s), corners)]
        elif not by_tags and number is not None:
            cands = []
        if not cands:
            raise ValueError(f"{label}: no series in {self.folder} matches it (SeriesNumber {number}, "
                             f"same voxel grid); pass the DICOM folder of this session to --source-dicom")
        studies = {(s[0].ds.get("StudyInstanceUID"), s[0].ds.get("FrameOfReferenceUID")) for s in cands}
        if len(studies) > 1:
            names = ", ".join(s[0].label for s in cands)
            raise ValueError(f"{label}: {len(cands)} series of different studies in {self.folder} match "
                             f"it by {how} ({names}); pass the DICOM folder of this session only")
        out = dicom_source(cands[0][0].ds, patient=True)  # lowest series number (group_series order)
        out["MatchedBy"] = how
        return out


def _bids_root(path: Path) -> Path | None:
    for parent in path.absolute().parents:
        if (parent / "dataset_description.json").is_file():
            return parent
    return None


def private_record(sidecar_file, source: dict) -> dict | None:
    """The ``dicom2bids --keep-patient-info`` record of the series in ``source`` (a DicomSource
    block) for the raw image whose sidecar is ``sidecar_file``; ``None`` if there is none.

    Parameters
    ----------
    sidecar_file : str or path-like
        The raw image's JSON sidecar: its BIDS name gives ``sub``/``ses``, the nearest folder above it
        with a ``dataset_description.json`` the dataset root.
    source : dict
        The sidecar's ``DicomSource`` block; its ``SeriesInstanceUID`` selects the record.

    Returns
    -------
    dict or None
        The record (source and patient fields); None when the name is not a BIDS name, there is no
        dataset root, UID, private file or record for the series.

    Raises
    ------
    ValueError
        The private file is not valid JSON.
    """
    sidecar_file = Path(sidecar_file)
    try:
        ents = parse_filename(sidecar_file.name)[0]
        prefix = entity_string({"sub": ents.get("sub"), "ses": ents.get("ses")})
    except ValueError:  # not a BIDS name
        return None
    root = _bids_root(sidecar_file)
    if not ents.get("sub") or root is None or not source.get("SeriesInstanceUID"):
        return None
    records = load_json(private_path(root, prefix)) or {}
    return records.get(source["SeriesInstanceUID"])


def export_source(sidecar_file, metadata: dict | None = None, *, index: SourceIndex | None = None,
                  affine=None, shape=None) -> dict:
    """The export source record of one raw image (see the module docstring for the order).

    Parameters
    ----------
    sidecar_file : str or path-like
        The image's JSON sidecar (names it in errors and locates the private file).
    metadata : dict, optional
        Its (inherited) sidecar fields; read from ``sidecar_file`` when ``None``.
    index : SourceIndex, optional
        The ``--source-dicom`` folder; when given, only it is searched (:meth:`SourceIndex.match`).
    affine, shape : optional
        The image's grid (4×4 RAS+ mm affine, array shape), for matching by geometry.

    Returns
    -------
    dict
        DICOM keywords (:data:`.convert.DICOM_SOURCE_FIELDS`, :data:`.convert.PATIENT_FIELDS`) with
        ``PatientID``; plus ``MatchedBy`` when found in ``index``.

    Raises
    ------
    ValueError
        No record with patient identification is found (one line, what to pass), or the sidecar or
        the private file is not valid JSON.
    """
    sidecar_file = Path(sidecar_file)
    meta = load_json(sidecar_file) if metadata is None else metadata
    meta = meta or {}
    if index is not None:
        return index.match(meta, affine, shape, label=sidecar_file.name)
    rec = dict(meta.get("DicomSource") or {})
    if rec.get("PatientID") is not None:
        return rec
    private = private_record(sidecar_file, rec)
    if private is not None:
        return {**rec, **private}
    raise ValueError(f"{sidecar_file.name}: {_NEEDS}")


def image_source(image_file, metadata: dict | None = None, *,
                 index: SourceIndex | None = None) -> dict:
    """:func:`export_source` of a raw NIfTI image, matched by its sidecar and its grid.

    Parameters
    ----------
    image_file : str or path-like
        The raw NIfTI image; its sidecar is the ``.json`` file of the same stem beside it.
    metadata : dict, optional
        Its (inherited) sidecar fields; read from the sidecar when None.
    index : SourceIndex, optional
        The ``--source-dicom`` folder (:func:`export_source`).

    Returns
    -------
    dict
        The source record (:func:`export_source`).

    Raises
    ------
    ValueError
        As in :func:`export_source`.
    """
    import nibabel as nib

    img = nib.load(str(image_file))
    return export_source(sidecar_path(image_file), metadata, index=index, affine=img.affine,
                         shape=img.shape)

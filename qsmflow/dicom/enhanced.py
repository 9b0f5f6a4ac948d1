"""Enhanced (multi-frame) MR DICOM → one classic-looking header per frame.

Enhanced MR Image Storage files (SOP class 1.2.840.10008.5.1.4.1.1.4.1; the default export of
Siemens XA and Philips scanners) hold many frames; the attributes a classic image has at its
top level live in functional group macros. :func:`frame_datasets` builds one header per frame
with exactly the classic attributes the converter reads, each taken from the frame's item of the
Per-Frame Functional Groups Sequence (5200,9230), else the Shared Functional Groups Sequence
(5200,9229), else the top level (:data:`FRAME_ATTRIBUTES` lists the mapping: geometry in LPS mm,
``EffectiveEchoTime`` ms → ``EchoTime``, ``FrameType`` → ``ImageType``, rescale slope/intercept,
``TransmitterFrequency`` MHz → ``ImagingFrequency``). ``ScanningSequence``, which enhanced files
do not have, is derived from ``EchoPulseSequence``/``EchoPlanarPulseSequence``/``InversionRecovery``.
:func:`frame_pixels` reads frame *i* of the file's pixel data. Files with ``NumberOfFrames`` 1 are
handled the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import DSfloat

ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
PER_FRAME_TAG, SHARED_TAG = (0x5200, 0x9230), (0x5200, 0x9229)

#: functional group macro → ((attribute in its item, classic attribute it becomes), ...)
FRAME_ATTRIBUTES = {
    "PlanePositionSequence": (("ImagePositionPatient", "ImagePositionPatient"),),
    "PlaneOrientationSequence": (("ImageOrientationPatient", "ImageOrientationPatient"),),
    "PixelMeasuresSequence": (("PixelSpacing", "PixelSpacing"), ("SliceThickness", "SliceThickness"),
                              ("SpacingBetweenSlices", "SpacingBetweenSlices")),
    "MREchoSequence": (("EffectiveEchoTime", "EchoTime"),),
    "MRImageFrameTypeSequence": (("FrameType", "ImageType"), ("ComplexImageComponent", "ComplexImageComponent")),
    "PixelValueTransformationSequence": (("RescaleSlope", "RescaleSlope"),
                                         ("RescaleIntercept", "RescaleIntercept")),
    "MRTimingAndRelatedParametersSequence": (("RepetitionTime", "RepetitionTime"), ("FlipAngle", "FlipAngle")),
    "MRImagingModifierSequence": (("TransmitterFrequency", "ImagingFrequency"),),
    "MRModifierSequence": (("InversionRecovery", "InversionRecovery"),),
}


def is_enhanced(ds) -> bool:
    """True for a file with functional groups (Enhanced MR and other enhanced image IODs).

    Parameters
    ----------
    ds : pydicom.Dataset
        A file's header.

    Returns
    -------
    bool
        True when it has a Per-Frame (5200,9230) or Shared (5200,9229) Functional Groups Sequence.
    """
    return PER_FRAME_TAG in ds or SHARED_TAG in ds


def convert_value(value, vr: str):
    """``value`` in the form an attribute of VR ``vr`` takes (FD ↔ DS: float ↔ decimal string).

    Parameters
    ----------
    value : object
        A value taken from another attribute (e.g. a functional group macro's).
    vr : str
        Value representation of the target attribute (``"FD"``, ``"FL"``, ``"DS"``, ...).

    Returns
    -------
    object
        ``float(value)`` for FD/FL, a ``DSfloat`` for a plain float and DS, else ``value`` unchanged.
    """
    if vr in ("FD", "FL"):
        return float(value)
    if vr == "DS" and isinstance(value, float) and not isinstance(value, DSfloat):
        return DSfloat(value, auto_format=True)
    return value


def _set(ds: Dataset, keyword: str, value) -> None:
    """Set ``keyword`` with a new element (never changing one shared with other frames)."""
    vr = dictionary_VR(keyword)
    ds[tag_for_keyword(keyword)] = DataElement(tag_for_keyword(keyword), vr, convert_value(value, vr))


def _macro_items(group_seq, index: int) -> dict:
    """Item ``index`` of a functional groups sequence → {macro keyword: its first item}."""
    if group_seq is None or index >= len(group_seq):
        return {}
    return {el.keyword: el.value[0] for el in group_seq[index]
            if el.VR == "SQ" and el.keyword in FRAME_ATTRIBUTES and len(el.value)}


def _scanning_sequence(ds) -> list[str] | None:
    """Classic ScanningSequence from the enhanced pulse-sequence attributes (None if unknown)."""
    echo = str(ds.get("EchoPulseSequence", "") or "").upper()
    seq = {"GRADIENT": ["GR"], "SPIN": ["SE"], "BOTH": ["SE", "GR"]}.get(echo)
    if seq is None:
        return None
    if str(ds.get("EchoPlanarPulseSequence", "")).upper() == "YES":
        seq.append("EP")
    if str(ds.get("InversionRecovery", "")).upper() == "YES":
        seq.append("IR")
    return seq


def frame_datasets(ds, path) -> list[Dataset]:
    """Header of an enhanced file (pixel data not needed) → one classic-style header per frame.

    Top-level elements are shared (not copied) between the frame headers. Raises ``ValueError``
    naming the file when the per-frame functional groups do not match ``NumberOfFrames``.

    Parameters
    ----------
    ds : pydicom.Dataset
        Header of the enhanced file.
    path : str or path-like
        The file; its name is used in the error message.

    Returns
    -------
    list of pydicom.Dataset
        One header per frame (``NumberOfFrames``, 1 when absent), in frame order, without pixel data.

    Raises
    ------
    ValueError
        The number of per-frame functional group items differs from ``NumberOfFrames``.
    """
    n = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) != n:
        raise ValueError(f"{Path(path).name}: enhanced DICOM with NumberOfFrames {n} but {len(per_frame)} "
                         "per-frame functional groups; the file is damaged, export the series again")
    shared = _macro_items(ds.get("SharedFunctionalGroupsSequence"), 0)
    top = [el for el in ds if el.tag not in (PER_FRAME_TAG, SHARED_TAG) and el.keyword != "PixelData"]
    frames = []
    for i in range(n):
        macros = {**shared, **_macro_items(per_frame, i)}
        fds = Dataset()
        for el in top:
            fds.add(el)
        for macro, pairs in FRAME_ATTRIBUTES.items():
            item = macros.get(macro)
            for src, dst in pairs:
                if item is not None and item.get(src) not in (None, ""):
                    _set(fds, dst, item.get(src))
        scanning = _scanning_sequence(fds)
        if "ScanningSequence" not in fds and scanning:
            _set(fds, "ScanningSequence", scanning)
        frames.append(fds)
    return frames


def frame_pixels(path, index: int, cache: dict) -> np.ndarray:
    """Stored values of frame ``index`` (rows, columns) of an enhanced file.

    ``cache`` keeps the last file's decoded frames (one file at a time: bounded memory).

    Parameters
    ----------
    path : str or path-like
        The enhanced DICOM file.
    index : int
        0-based frame index.
    cache : dict
        Reused between calls; cleared and refilled (``{path: frames}``) when ``path`` is a new file.

    Returns
    -------
    numpy.ndarray, shape (rows, columns)
        Stored values (no rescale) of the frame.
    """
    path = Path(path)
    if path not in cache:
        cache.clear()
        ds = pydicom.dcmread(str(path))
        n = int(ds.get("NumberOfFrames", 1) or 1)
        cache[path] = ds.pixel_array.reshape(n, int(ds.Rows), int(ds.Columns))
    return cache[path][index]

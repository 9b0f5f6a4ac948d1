"""Synthetic multi-echo GRE DICOM series that mimic each vendor's tags (for tests and demos).

:func:`write_gre_dicoms` writes classic MR images of a known magnitude and phase (DICOM layout:
rows × columns × slices × echoes) the way Siemens (separate magnitude / phase series, phase
0..4095 without rescale tags), Philips (one series, private image type, rescale slope/intercept,
private scale slope) or GE (one series of real / imaginary images with GE's private image type,
GE's opposite phase sign, optionally the first echo's EchoNumbers/EchoTime repeated) store them.
Files get shuffled names in one folder, like an unsorted export. With ``enhanced`` the same
images are written as Enhanced MR (multi-frame) files instead (:func:`enhanced_dataset`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.datadict import dictionary_VR
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ..dicom.enhanced import ENHANCED_MR_IMAGE_STORAGE, FRAME_ATTRIBUTES, convert_value
from ..dicom.export import new_mr_dataset

PHILIPS_MAG_SLOPE, PHILIPS_SCALE_SLOPE = 1.5, 0.0123
PHILIPS_PHASE_SLOPE, PHILIPS_PHASE_INTERCEPT = 2 * np.pi / 4095, -np.pi


def _base(common: dict, series_uid, number, description, image_type) -> Dataset:
    ds = new_mr_dataset()
    ds.Modality = "MR"
    ds.ImageType = image_type
    for k, v in common.items():
        setattr(ds, k, v)
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, number, description
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = 16
    return ds


def _pixels(ds, arr, bits=16, signed=False):
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = np.ascontiguousarray(arr.astype("<i2" if signed else "<u2")).tobytes()


def write_gre_dicoms(out_dir, vendor: str, magnitude, phase_rad, te_ms, *, orientation=(1, 0, 0, 0, 1, 0),
                     first_position=(-60.0, -70.0, -10.0), pixel_spacing=(1.0, 1.25), slice_spacing=2.0,
                     series_number=5, repeat_echo_tags=False, scanning_sequence="GR", b0=3.0, acquisition="3D",
                     mutate=None, seed=0, enhanced: str | None = None) -> dict:
    """Write one multi-echo GRE acquisition → dict with the expected values after conversion.

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created); files ``IMnnnnn`` with shuffled numbers.
    vendor : {"siemens", "philips", "ge"}
        Whose storage conventions to mimic (module docstring).
    magnitude : array_like, shape (rows, columns, slices, echoes)
        Magnitude (a.u.), stored as integers: Siemens rounded (12 bit), Philips divided by 1.5, GE as
        rounded real / imaginary parts (int16).
    phase_rad : array_like, shape (rows, columns, slices, echoes)
        Phase (rad) in the convention of qsmflow (positive frequency = positive phase).
    te_ms : sequence of float
        Echo times (ms), one per echo.
    orientation : sequence of 6 float, default (1, 0, 0, 0, 1, 0)
        ImageOrientationPatient (row and column direction cosines).
    first_position : sequence of 3 float, default (-60, -70, -10)
        ImagePositionPatient (mm) of the first slice.
    pixel_spacing : sequence of 2 float, default (1.0, 1.25)
        PixelSpacing (mm), as written to the tag.
    slice_spacing : float, default 2.0
        Slice spacing along the slice normal and SliceThickness (mm).
    series_number : int, default 5
        SeriesNumber (Siemens phase: + 1).
    repeat_echo_tags : bool, default False
        Every image gets echo 1's EchoNumbers / EchoTime and InstanceNumber = slice (GE research).
    scanning_sequence : str, default "GR"
        ScanningSequence.
    b0 : float, default 3.0
        MagneticFieldStrength (T); ImagingFrequency = 42.5775·b0 (MHz).
    acquisition : str, default "3D"
        MRAcquisitionType.
    mutate : callable, optional
        ``mutate(ds, part, echo, slice)`` may edit a header or return ``None`` to drop that file
        (bad-input tests); ``part`` is "mag" / "phase" ("real" / "imag" for GE), echo and slice
        0-based. With ``enhanced`` it edits the classic image that becomes a frame.
    seed : int, default 0
        Seed of the shuffled file names.
    enhanced : {None, "series", "image"}, optional
        ``None`` writes classic images; ``"series"`` one Enhanced MR file per series with all its
        echoes and slices as frames (Siemens XA: a magnitude and a phase file, phase stored with
        slope 2 / intercept -4096; Philips: one file with magnitude and phase frames, rescale per
        frame); ``"image"`` one single-frame Enhanced MR file per image.

    Returns
    -------
    dict
        ``"magnitude"`` and ``"phase_rad"`` (rad) as representable in the stored integers, shape
        (rows, columns, slices, echoes); ``"te_s"`` (s); ``"files"`` (list of Path).

    Raises
    ------
    ValueError
        An unknown ``vendor`` or ``enhanced``; frames of one enhanced file that differ in size or
        pixel format.
    """
    if vendor not in ("siemens", "philips", "ge"):
        raise ValueError(f"vendor {vendor!r}: use siemens, philips or ge")
    if enhanced not in (None, "series", "image"):
        raise ValueError(f"enhanced={enhanced!r}: use None, 'series' or 'image'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mag = np.asarray(magnitude, float)
    phs = np.asarray(phase_rad, float)
    rows, cols, nsl, ne = mag.shape
    o = np.asarray(orientation, float)
    normal = np.cross(o[:3], o[3:])
    study, frame = generate_uid(), generate_uid()
    manufacturer = {"siemens": "SIEMENS", "philips": "Philips Medical Systems", "ge": "GE MEDICAL SYSTEMS"}[vendor]
    common = dict(Manufacturer=manufacturer, ManufacturerModelName="synthetic", PatientName="Synth^Test",
                  PatientID="SYN001", PatientBirthDate="19800101", PatientSex="O", StudyInstanceUID=study,
                  StudyDate="20240101", StudyTime="120000", StudyID="1", AccessionNumber="A1",
                  FrameOfReferenceUID=frame, ScanningSequence=scanning_sequence, SequenceVariant="SP",
                  MRAcquisitionType=acquisition, MagneticFieldStrength=b0, ImagingFrequency=round(b0 * 42.5775, 4),
                  RepetitionTime=40, FlipAngle=15, ProtocolName="qsm_gre", PatientPosition="HFS",
                  PixelSpacing=[f"{v:g}" for v in pixel_spacing], SliceThickness=slice_spacing,
                  ImageOrientationPatient=[f"{v:.8g}" for v in o])
    rng = np.random.default_rng(seed)
    expected_mag, expected_phase = mag.copy(), phs.copy()
    jobs = []  # (part, echo, slice, ds)
    uids = {}

    def series(key, number, desc, image_type):
        uids.setdefault(key, generate_uid())
        return lambda: _base(common, uids[key], number, desc, list(image_type))

    if vendor == "siemens":
        mk = {"mag": series("m", series_number, "gre_qsm", ["ORIGINAL", "PRIMARY", "M", "ND"]),
              "phase": series("p", series_number + 1, "gre_qsm", ["ORIGINAL", "PRIMARY", "P", "ND"])}
        stored_p = np.rint((phs + np.pi) / (2 * np.pi) * 4095).astype(int) % 4096
        expected_phase = stored_p * (2 * np.pi / 4095) - np.pi
        stored_m = np.rint(mag).astype(int)
        expected_mag = stored_m.astype(float)
        data = {"mag": (stored_m, 12, False), "phase": (stored_p, 12, False)}
    elif vendor == "philips":
        mk = {"mag": series("s", series_number, "FFE_qsm", ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"]),
              "phase": series("s", series_number, "FFE_qsm", ["ORIGINAL", "PRIMARY", "PHASE MAP", "P", "FFE"])}
        stored_p = np.rint((phs - PHILIPS_PHASE_INTERCEPT) / PHILIPS_PHASE_SLOPE).astype(int)
        expected_phase = stored_p * float(f"{PHILIPS_PHASE_SLOPE:.10g}") + float(f"{PHILIPS_PHASE_INTERCEPT:.10g}")
        stored_m = np.rint(mag / PHILIPS_MAG_SLOPE).astype(int)
        expected_mag = stored_m * PHILIPS_MAG_SLOPE
        data = {"mag": (stored_m, 12, False), "phase": (stored_p, 12, False)}
    else:  # ge
        mk = {"real": series("s", series_number, "QSM research", ["ORIGINAL", "PRIMARY", "OTHER"]),
              "imag": series("s", series_number, "QSM research", ["ORIGINAL", "PRIMARY", "OTHER"])}
        z = mag * np.exp(-1j * phs)  # GE: opposite phase sign
        re, im = np.rint(z.real).astype(int), np.rint(z.imag).astype(int)
        zq = re + 1j * im
        expected_mag, expected_phase = np.abs(zq), -np.angle(zq)
        data = {"real": (re, 16, True), "imag": (im, 16, True)}

    inst = 0
    for part, make in mk.items():
        arr, bits, signed = data[part]
        for e in range(ne):
            for s in range(nsl):
                ds = make()
                pos = np.asarray(first_position, float) + s * slice_spacing * normal
                ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
                ds.SliceLocation = f"{pos @ normal:.6f}"
                inst += 1
                ds.InstanceNumber = s + 1 if repeat_echo_tags else inst  # GE research: not unique
                ds.EchoNumbers = 1 if repeat_echo_tags else e + 1
                ds.EchoTime = f"{te_ms[0] if repeat_echo_tags else te_ms[e]:g}"
                _pixels(ds, arr[:, :, s, e], bits, signed)
                if vendor == "philips":
                    blk = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
                    blk.add_new(0x11, "CS", "M" if part == "mag" else "P")
                    blk.add_new(0x0E, "FL", PHILIPS_SCALE_SLOPE)
                    slope, icpt = ((PHILIPS_MAG_SLOPE, 0.0) if part == "mag"
                                   else (PHILIPS_PHASE_SLOPE, PHILIPS_PHASE_INTERCEPT))
                    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{icpt:.10g}"
                if vendor == "ge":
                    ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(
                        0x2F, "SS", 2 if part == "real" else 3)
                    acq = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
                    acq.add_new(0xA2, "SL", e + 1)   # raw data run number: echo order
                    acq.add_new(0xA9, "DS", str(ne))
                if enhanced:
                    ds.ComplexImageComponent = _CIC[part]
                    if vendor == "siemens":  # Siemens XA: phase display values -4096..4094
                        ds.RescaleSlope, ds.RescaleIntercept = ("2", "-4096") if part == "phase" else ("1", "0")
                if mutate is not None:
                    ds = mutate(ds, part, e, s)
                    if ds is None:
                        continue
                jobs.append((part, e, s, ds))
    if enhanced == "series":
        by_series = {}
        for job in jobs:
            by_series.setdefault(job[3].SeriesInstanceUID, []).append(job)
        jobs = [enhanced_dataset(frames) for frames in by_series.values()]
    elif enhanced == "image":
        jobs = [enhanced_dataset([job]) for job in jobs]
    else:
        jobs = [job[3] for job in jobs]
    names = rng.permutation(len(jobs))
    files = []
    for ds, n in zip(jobs, names):
        f = out / f"IM{n:05d}"
        ds.save_as(str(f), enforce_file_format=True)
        files.append(f)
    return {"magnitude": expected_mag, "phase_rad": expected_phase, "te_s": np.asarray(te_ms, float) / 1e3,
            "files": files}


_CIC = {"mag": "MAGNITUDE", "phase": "PHASE", "real": "REAL", "imag": "IMAGINARY"}
#: frame attributes of the classic images that enhanced files do not have at the top level
_NOT_TOP_LEVEL = {"SOPClassUID", "SOPInstanceUID", "InstanceNumber", "PixelData", "SliceLocation", "EchoNumbers",
                  "ScanningSequence", "SequenceVariant"} | {cl for p in FRAME_ATTRIBUTES.values() for _, cl in p}
#: (functional group macro, attribute) that index each frame: part, echo, slice
_DIMENSIONS = (("MRImageFrameTypeSequence", "ComplexImageComponent"), ("MREchoSequence", "EffectiveEchoTime"),
               ("FrameContentSequence", "InStackPositionNumber"))


def enhanced_dataset(frames) -> Dataset:
    """Classic images of one series, ``[(part, echo, slice, ds), ...]`` → one Enhanced MR Image
    Storage dataset with these frames in this order. Frame attributes go into the functional group
    macros of :data:`FRAME_ATTRIBUTES`: shared when equal for all frames, else per frame. Private
    tags are dropped; ``ScanningSequence`` becomes ``EchoPulseSequence``/``EchoPlanarPulseSequence``.

    Parameters
    ----------
    frames : sequence of tuple
        ``(part, echo, slice, ds)``: part name ("mag", "phase", "real", "imag"), 0-based echo and
        slice, and the classic image (pydicom Dataset); all of one series.

    Returns
    -------
    pydicom.dataset.Dataset
        The Enhanced MR Image Storage dataset.

    Raises
    ------
    ValueError
        Frames that differ in matrix size or pixel format.
    """
    first = frames[0][3]
    for *_, f in frames:
        if (f.Rows, f.Columns, f.BitsStored, f.PixelRepresentation) != \
                (first.Rows, first.Columns, first.BitsStored, first.PixelRepresentation):
            raise ValueError("frames of one enhanced file need the same matrix size and pixel format")
    ds = new_mr_dataset()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR_IMAGE_STORAGE
    for el in first:
        if not el.tag.is_private and el.keyword not in _NOT_TOP_LEVEL:
            ds.add(el)
    ds.InstanceNumber = 1
    types = {tuple(f.ImageType) for *_, f in frames}
    ds.ImageType = list(types.pop()) if len(types) == 1 else list(first.ImageType[:2]) + ["MIXED"]
    cics = {str(f.get("ComplexImageComponent", "")) for *_, f in frames}
    ds.ComplexImageComponent = cics.pop() if len(cics) == 1 else "MIXED"
    sq = first.get("ScanningSequence", "")
    seq = {str(v) for v in (sq if isinstance(sq, MultiValue) else [sq])}
    ds.EchoPulseSequence = "BOTH" if {"GR", "SE"} <= seq else "GRADIENT" if "GR" in seq else "SPIN"
    ds.EchoPlanarPulseSequence = "YES" if "EP" in seq else "NO"
    org = generate_uid()
    ds.DimensionOrganizationSequence = [Dataset()]
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = org
    ds.DimensionIndexSequence = []
    for macro, attr in _DIMENSIONS:
        d = Dataset()
        d.DimensionOrganizationUID, d.DimensionIndexPointer, d.FunctionalGroupPointer = org, Tag(attr), Tag(macro)
        ds.DimensionIndexSequence.append(d)
    parts = list(dict.fromkeys(p for p, *_ in frames))
    items = []  # per frame: {macro keyword: item}
    for part, e, s, f in frames:
        macros = {}
        for macro, pairs in FRAME_ATTRIBUTES.items():
            item = Dataset()
            for src, cl in pairs:
                if cl in f:
                    setattr(item, src, convert_value(f[cl].value, dictionary_VR(src)))
            if len(item):
                macros[macro] = item
        content = Dataset()
        content.StackID, content.InStackPositionNumber = "1", s + 1
        content.DimensionIndexValues = [parts.index(part) + 1, e + 1, s + 1]
        macros["FrameContentSequence"] = content
        items.append(macros)
    shared, per_frame = Dataset(), [Dataset() for _ in frames]
    for macro in dict.fromkeys(k for m in items for k in m):
        values = [m.get(macro) for m in items]
        if macro != "FrameContentSequence" and all(v is not None and v == values[0] for v in values):
            setattr(shared, macro, [values[0]])
        else:
            for pf, v in zip(per_frame, values):
                if v is not None:
                    setattr(pf, macro, [v])
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.NumberOfFrames = len(frames)
    ds.PixelData = b"".join(f.PixelData for *_, f in frames)
    return ds

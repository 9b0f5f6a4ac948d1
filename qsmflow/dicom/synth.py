"""Synthetic multi-echo GRE DICOM series that mimic each vendor's tags (for tests and demos).

:func:`write_gre_dicoms` writes classic MR images of a known magnitude and phase (DICOM layout:
rows × columns × slices × echoes) the way Siemens (separate magnitude / phase series, phase
0..4095 without rescale tags), Philips (one series, private image type, rescale slope/intercept,
private scale slope) or GE (one series of real / imaginary images with GE's private image type,
GE's opposite phase sign, optionally the first echo's EchoNumbers/EchoTime repeated) store them.
Files get shuffled names in one folder, like an unsorted export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from .export import new_mr_dataset

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
                     mutate=None, seed=0) -> dict:
    """Write one multi-echo GRE acquisition → dict with the expected values after conversion.

    ``magnitude``, ``phase_rad``: (rows, columns, slices, echoes), phase in the convention of
    qsmflow (positive frequency = positive phase). ``mutate(ds, part, echo, slice)`` may edit a
    header or return ``None`` to drop that file (bad-input tests). Returned: ``phase_rad`` and
    ``magnitude`` as representable in the stored integers, ``te_s``, ``files``.
    """
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
    jobs = []  # (series key, part, echo, slice, ds)
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
    elif vendor == "ge":
        mk = {"real": series("s", series_number, "QSM research", ["ORIGINAL", "PRIMARY", "OTHER"]),
              "imag": series("s", series_number, "QSM research", ["ORIGINAL", "PRIMARY", "OTHER"])}
        z = mag * np.exp(-1j * phs)  # GE: opposite phase sign
        re, im = np.rint(z.real).astype(int), np.rint(z.imag).astype(int)
        zq = re + 1j * im
        expected_mag, expected_phase = np.abs(zq), -np.angle(zq)
        data = {"real": (re, 16, True), "imag": (im, 16, True)}
    else:
        raise ValueError(f"vendor {vendor!r}: use siemens, philips or ge")

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
                if mutate is not None:
                    ds = mutate(ds, part, e, s)
                    if ds is None:
                        continue
                jobs.append(ds)
    names = rng.permutation(len(jobs))
    files = []
    for ds, n in zip(jobs, names):
        f = out / f"IM{n:05d}"
        ds.save_as(str(f), enforce_file_format=True)
        files.append(f)
    return {"magnitude": expected_mag, "phase_rad": expected_phase, "te_s": np.asarray(te_ms, float) / 1e3,
            "files": files}

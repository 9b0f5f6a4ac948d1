"""Vendor-specific pixel value handling: rescaling, phase → rad, GE complex data and sign.

Every function returns the corrected values *and* a dict describing what was done; the
converter writes that dict into the BIDS sidecar, so no correction is ever silent.

- Siemens: phase stored as integers over the full ``BitsStored`` range (0..4095 without rescale
  tags, -4096..4094 with slope 2 / intercept -4096): that nominal range maps linearly to -π..π.
- Philips: stored values × RescaleSlope + RescaleIntercept (the "display value") are in rad
  (range ±π), degrees (±180, some software versions) or mrad (±1000π); the private scale slope
  (2005,100E) is recorded, not applied (it converts to the "floating point value", which is not a phase in rad).
- GE: real and imaginary images → complex → magnitude and phase; GE's phase has the opposite
  sign to the convention here (positive frequency offset = positive phase), so the phase is
  negated and ``PhaseSignFlipped: true`` recorded. GE phase images (±π or ±1000π) likewise.
"""

from __future__ import annotations

import numpy as np

from .scan import PHILIPS_SCALE_SLOPE_TAG, _private

#: vendors whose phase sign is opposite to the convention (positive frequency = positive phase)
SIGN_FLIPPED_VENDORS = ("ge",)


def rescale_params(ds) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of a header, (1, 0) when absent.

    Parameters
    ----------
    ds : pydicom.Dataset
        An image header; a missing or empty tag gives its default.

    Returns
    -------
    tuple of float
        ``(slope, intercept)``.
    """
    s = ds.get("RescaleSlope")
    i = ds.get("RescaleIntercept")
    return (float(s) if s not in (None, "") else 1.0, float(i) if i not in (None, "") else 0.0)


def rescale(pixels, ds) -> np.ndarray:
    """Stored values → display values (``value × RescaleSlope + RescaleIntercept``), float64.

    Parameters
    ----------
    pixels : array_like
        Stored pixel values, any shape.
    ds : pydicom.Dataset
        The header with the rescale tags (:func:`rescale_params`).

    Returns
    -------
    numpy.ndarray
        Display values, float64, same shape.
    """
    s, i = rescale_params(ds)
    return np.asarray(pixels, dtype=np.float64) * s + i


def nominal_range(ds) -> tuple[float, float]:
    """Range of display values the stored bits can hold (``BitsStored``, sign, rescale).

    Parameters
    ----------
    ds : pydicom.Dataset
        An image header; ``BitsStored`` defaults to 12, ``PixelRepresentation`` 1 means signed.

    Returns
    -------
    tuple of float
        ``(lowest, highest)`` display value (rescale applied).
    """
    bits = int(ds.get("BitsStored", 12) or 12)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2 ** bits - 1
    s, i = rescale_params(ds)
    a, b = lo * s + i, hi * s + i
    return (min(a, b), max(a, b))


def phase_to_rad(values, ds, vendor: str) -> tuple[np.ndarray, dict]:
    """Display values of a phase image stack (any shape) → phase in rad, plus the record.

    Siemens and other vendors: the nominal range (:func:`nominal_range`) maps linearly to -π..π.
    Philips and GE: the largest |value| decides the unit (≤ π: rad; 90..180: degrees; else up to
    1000π: mrad); beyond that the nominal range is used. GE phase is then negated
    (:data:`SIGN_FLIPPED_VENDORS`).

    Parameters
    ----------
    values : array_like
        Display values (rescale applied), any shape.
    ds : pydicom.Dataset
        One header of the series (rescale and bit depth are per series).
    vendor : str
        ``"siemens"``, ``"ge"``, ``"philips"`` or ``"other"`` (:func:`.scan.vendor_of`).

    Returns
    -------
    phase : numpy.ndarray
        Phase in rad, float64, same shape.
    record : dict
        How it was scaled, for the sidecar: ``RescaleSlope``, ``RescaleIntercept``, ``Method``, and
        ``StoredRange`` / ``PhilipsScaleSlope`` where they apply.

    Raises
    ------
    ValueError
        Values mapped by the nominal range lie outside it (not a known vendor phase format).
    """
    v = np.asarray(values, dtype=np.float64)
    s, i = rescale_params(ds)
    rec = {"RescaleSlope": s, "RescaleIntercept": i}
    if vendor in ("philips", "ge"):
        ss = _private(ds, PHILIPS_SCALE_SLOPE_TAG) if vendor == "philips" else None
        if ss is not None:
            rec["PhilipsScaleSlope"] = float(ss)
        m = float(np.max(np.abs(v))) if v.size else 0.0
        if m <= np.pi * (1 + 1e-3):
            rec["Method"] = "display value (slope/intercept applied) is in rad"
            out = v
        elif 90.0 < m <= 180.0 * (1 + 1e-3):  # a full-range phase image in degrees
            rec["Method"] = "display value (slope/intercept applied) is in degrees; times pi/180"
            out = v * (np.pi / 180.0)
        elif m <= 1000 * np.pi * (1 + 1e-3):
            rec["Method"] = "display value (slope/intercept applied) is in mrad; divided by 1000"
            out = v / 1000.0
        else:
            out, r = _nominal_to_rad(v, ds)
            rec.update(r)
    else:
        out, r = _nominal_to_rad(v, ds)
        rec.update(r)
    if vendor in SIGN_FLIPPED_VENDORS:
        out = -out
    return out, rec


def _nominal_to_rad(v, ds) -> tuple[np.ndarray, dict]:
    lo, hi = nominal_range(ds)
    if np.any(v < lo - 1e-6) or np.any(v > hi + 1e-6):
        raise ValueError(f"phase values {v.min():g}..{v.max():g} exceed the stored range {lo:g}..{hi:g} "
                         "of BitsStored; the phase series is not in a known vendor format")
    out = (v - lo) * (2 * np.pi / (hi - lo)) - np.pi
    return out, {"Method": f"stored range {lo:g}..{hi:g} mapped linearly to -pi..pi",
                 "StoredRange": [lo, hi]}


def complex_to_mag_phase(real, imag, vendor: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Real and imaginary display values → (magnitude, phase rad, record); GE sign corrected.

    Parameters
    ----------
    real, imag : array_like
        Real and imaginary display values, same shape.
    vendor : str
        Vendor key (:func:`.scan.vendor_of`); the phase of :data:`SIGN_FLIPPED_VENDORS` is negated.

    Returns
    -------
    magnitude : numpy.ndarray
        ``|real + i imag|``, float64.
    phase : numpy.ndarray
        Phase in rad (-π..π), float64.
    record : dict
        ``{"Method": ...}`` for the sidecar.
    """
    z = np.asarray(real, np.float64) + 1j * np.asarray(imag, np.float64)
    phase = np.angle(z)
    if vendor in SIGN_FLIPPED_VENDORS:
        phase = -phase
    return np.abs(z), phase, {"Method": "phase = angle(real + i*imag), magnitude = |real + i*imag|"}

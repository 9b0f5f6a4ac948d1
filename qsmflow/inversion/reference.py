"""Susceptibility referencing: the dipole inversion fixes χ only up to a constant (D(0) = 0), so
every map is referenced once, after the inversion, and the sidecar records how.

Modes: ``"mean"`` (default) — mean χ inside the brain mask is 0; ``"csf"`` — mean χ inside a
CSF mask (e.g. the lateral ventricles) is 0; ``"none"`` — left as the method returned it.
"""

from __future__ import annotations

import numpy as np

MODES = ("mean", "csf", "none")


def reference(chi, mask, mode="mean", csf_mask=None):
    """Return ``chi`` (ppm) shifted so its mean in the reference region is 0, zero outside ``mask``.

    Parameters
    ----------
    chi : array_like, shape (X, Y, Z)
        Susceptibility χ (ppm).
    mask : array_like of bool, shape (X, Y, Z)
        Brain mask: the region kept, and the reference region of ``mode="mean"``.
    mode : {"mean", "csf", "none"}, default "mean"
        Mean χ in ``mask`` = 0, mean χ in ``csf_mask`` ∩ ``mask`` = 0, or no shift.
    csf_mask : array_like of bool, shape (X, Y, Z), optional
        CSF mask (e.g. the lateral ventricles) overlapping ``mask``; needed for ``mode="csf"``.

    Returns
    -------
    ndarray, shape (X, Y, Z)
        Referenced χ (ppm), 0 outside ``mask``; dtype of ``chi`` if floating, else float32.

    Raises
    ------
    ValueError
        Unknown ``mode``; a mask of another shape; ``mode="csf"`` without ``csf_mask`` or with one
        that does not overlap ``mask``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown reference mode {mode!r}: use one of {', '.join(MODES)}")
    chi = np.asarray(chi)
    m = np.asarray(mask, bool)
    if m.shape != chi.shape:
        raise ValueError(f"mask shape {m.shape} differs from chi shape {chi.shape}")
    out = np.where(m, chi, 0).astype(chi.dtype if chi.dtype.kind == "f" else np.float32)
    if mode == "none":
        return out
    if mode == "mean":
        region = m
    else:
        if csf_mask is None:
            raise ValueError("reference mode 'csf' needs csf_mask: pass a CSF (ventricle) mask or "
                             "use reference='mean'")
        region = np.asarray(csf_mask, bool)
        if region.shape != chi.shape:
            raise ValueError(f"csf_mask shape {region.shape} differs from chi shape {chi.shape}")
        region = region & m
        if not region.any():
            raise ValueError("csf_mask does not overlap the brain mask: pass a CSF mask inside it")
    out[m] -= out[region].mean(dtype=np.float64)
    return out


def describe(mode="mean") -> str:
    """One sentence for sidecars / methods text describing the reference.

    Parameters
    ----------
    mode : {"mean", "csf", "none"}, default "mean"
        Reference mode (:data:`MODES`).

    Returns
    -------
    str
        The description.

    Raises
    ------
    KeyError
        Unknown ``mode``.
    """
    return {
        "mean": "mean susceptibility inside the brain mask set to 0 ppm",
        "csf": "mean susceptibility inside the CSF mask set to 0 ppm",
        "none": "no referencing (as returned by the inversion)",
    }[mode]

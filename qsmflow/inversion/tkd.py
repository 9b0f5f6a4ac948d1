"""Thresholded k-space division (TKD; Shmueli et al. 2009, Wharton et al. 2010).

χ = F⁻¹[F(f) / D_t] with D_t = D where |D| > t and t·sign(D) inside the cone |D| ≤ t; D(0) = 0
leaves the mean undetermined (set by the reference step). Truncation underestimates χ by the
solid-angle mean of D/D_t (0.82 at t = 0.2: the gain is a function of the k direction only);
``correct=True`` divides by that factor (Schweser et al. 2013).
Cost: one FFT pair on the padded grid.
"""

from __future__ import annotations

import numpy as np

from qsmflow.inversion import _ops

UNITS = {"threshold": "1 (|D| cut-off, D in [-2/3, 1/3])",
         "correct": "bool (divide by the truncation's mean gain)",
         "pad": "voxels per axis (zero padding)"}


def tkd_gain(threshold):
    """Solid-angle mean of D/D_t: the factor by which TKD scales an isotropic-spectrum χ.

    Parameters
    ----------
    threshold : float
        |D| cut-off t (unitless, > 0).

    Returns
    -------
    float
        Mean of min(|D|/t, 1) over directions, in (0, 1] (0.82 at t = 0.2).
    """
    u = (np.arange(200_000) + 0.5) / 200_000  # cos θ, uniform over the sphere
    d = np.abs(1.0 / 3.0 - u**2)
    return float(np.minimum(d / threshold, 1.0).mean())


def tkd_inverse_kernel(op, threshold):
    """Half-spectrum of 1/D_t on ``op``'s grid (0 at k = 0).

    Parameters
    ----------
    op : qsmflow.inversion._ops.DipoleOp
        Padded grid and dipole kernel ``op.D``.
    threshold : float
        |D| cut-off t (unitless): 1/D where |D| > t, sign(D)/t inside the cone.

    Returns
    -------
    ndarray, shape ``op.D.shape``
        1/D_t (float32, unitless) on the ``rfftn`` half grid.
    """
    d = op.D
    with np.errstate(divide="ignore"):
        inv = np.where(np.abs(d) > threshold, 1.0 / d, np.where(d < 0, -1.0, 1.0) / threshold)
    inv[0, 0, 0] = 0.0
    return inv.astype(np.float32)


def tkd(field_ppm, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), *, magnitude=None, noise=None,
        threshold=0.2, correct=False, pad=_ops.DEFAULT_PAD):
    """TKD inversion of a local field (ppm) → χ (ppm, unreferenced, 0 outside ``mask``).

    Parameters
    ----------
    field_ppm, mask, voxel_size, b0_dir, pad
        The common arguments of every method (:mod:`qsmflow.inversion`): local field (ppm), its
        mask, voxel size (mm), B0 direction in voxel axes, zero padding (voxels).
    magnitude, noise : optional
        Unused.
    threshold : float, default 0.2
        |D| cut-off (unitless; 0.2 as in the Meta-QSM / QSMInvNet papers).
    correct : bool, default False
        Compensate the known underestimation by dividing by :func:`tkd_gain`.

    Returns
    -------
    ndarray
        χ (ppm) as for every method; ValueError on invalid inputs or non-positive parameters.
    """
    f, m, vs, b, _, _ = _ops.check_inputs(field_ppm, mask, voxel_size, b0_dir, magnitude, noise)
    _ops.check_positive(threshold=threshold)
    op = _ops.DipoleOp(f.shape, vs, b, pad)
    inv = tkd_inverse_kernel(op, threshold)
    chi = op.conv(op.pad(f), inv)
    if correct:
        chi /= np.float32(tkd_gain(threshold))
    return _ops.finish(chi, op, m)

"""Single-step TV QSM from the *total* field (SS-TV, after Chatnuntawech et al. 2017):
background removal and dipole inversion in one problem::

    χ = argmin α‖G·∇χ‖₁ + ½‖W·M_e·(C·D·χ − C·f)‖²,   C = δ − SMV(radius_mm)

with f the total field (ppm) in the brain mask M, M_e the voxels whose SMV ball lies inside M
(where the background field, harmonic in M, satisfies C·f_bg = 0), W the data weight (1/noise,
else magnitude, else 1; mean 1 in M) and G MEDI's morphology weight (0 on the
``edge_fraction`` strongest magnitude gradients, 1 elsewhere; 1 everywhere without magnitude
or with ``edge_fraction=0``). Unlike SHARP-type removal followed by an inversion, the
high-passed field is never deconvolved: the TV prior and the dipole model resolve χ together,
and χ in the rim of M (outside M_e) is still constrained, since ``C·D·χ`` on M_e depends on it.
Solved by the ADMM of :func:`qsmflow.inversion._ops.admm_tv` with ``C·D`` as the forward
kernel (weighted linear data term; two FFT pairs per iteration).

χ is returned in the mask minus its outer ``edge_mm`` (mm; default one smallest voxel side,
at least 1 mm),
where the rim is least determined; :func:`valid_mask` gives that region. The defaults α = 2e-4
and µ1 = 50·α = 1e-2 are FANSI's (:mod:`qsmflow.inversion.fansi`): at high spatial frequencies,
where C ≈ 1, the two data terms weigh the same.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from qsmflow import bgremoval
from qsmflow.inversion import _ops
from qsmflow.inversion.medi import edge_mask

UNITS = {"radius_mm": "mm (SMV kernel radius; default max(4 mm, 2 × largest voxel side))",
         "alpha": "ppm·mm (TV weight)",
         "edge_fraction": "1 (fraction of magnitude gradients left unpenalised, as MEDI)",
         "mu1": "1 (ADMM penalty of z1 = ∇χ; default 50·alpha)",
         "mu2": "1 (ADMM penalty of z2 = C·D·χ)",
         "edge_mm": "mm (χ is returned deeper than this in the mask; default max(1 mm, voxel))",
         "tol": "1 (relative change of χ per iteration)",
         "max_iter": "iterations",
         "pad": "voxels per axis (zero padding)"}


def default_radius_mm(voxel_size) -> float:
    """Default SMV radius (mm): 4 mm, and at least two of the largest voxel sides, so that the
    ball holds two voxels on each side of its centre along thick slices (measurements in
    docs/inversion.md).

    Parameters
    ----------
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.

    Returns
    -------
    float
        max(4, 2 × largest voxel side) (mm).
    """
    return max(4.0, 2.0 * float(max(voxel_size)))


def default_edge_mm(voxel_size) -> float:
    """Default depth (mm) of the rim left out of χ: the smallest voxel side, at least 1 mm.

    Parameters
    ----------
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.

    Returns
    -------
    float
        max(1, smallest voxel side) (mm).
    """
    return max(1.0, float(min(voxel_size)))


def valid_mask(mask, voxel_size, edge_mm=None) -> np.ndarray:
    """The voxels of ``mask`` more than ``edge_mm`` (mm; default :func:`default_edge_mm`)
    from its outside: where :func:`sstv` returns χ.

    Parameters
    ----------
    mask : array_like of bool, shape (X, Y, Z)
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis (distances are in mm).
    edge_mm : float, optional
        Rim depth (mm, ≥ 0; 0 keeps the whole mask); default :func:`default_edge_mm`.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
        The inner mask.

    Raises
    ------
    ValueError
        ``edge_mm`` negative (or NaN), or no voxel of the mask lies deeper than it.
    """
    m = np.asarray(mask, bool)
    edge = default_edge_mm(voxel_size) if edge_mm is None else float(edge_mm)
    if not edge >= 0:
        raise ValueError(f"sstv edge_mm must be >= 0 mm, got {edge_mm!r}")
    if edge == 0:
        return m.copy()
    inner = m & (ndimage.distance_transform_edt(m, sampling=voxel_size) > edge)
    if not inner.any():
        raise ValueError(f"the brain mask vanishes inside an edge of {edge} mm: use a smaller "
                         "edge_mm")
    return inner


def sstv(field_ppm, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), *, magnitude=None, noise=None,
         radius_mm=None, alpha=2e-4, edge_fraction=0.3, mu1=None, mu2=1.0,
         edge_mm=None, tol=1e-2, max_iter=100, pad=_ops.DEFAULT_PAD):
    """SS-TV: χ (ppm, unreferenced) from the total field ``field_ppm`` (ppm) in the brain
    ``mask``; 0 outside :func:`valid_mask`. See the module docstring for the model.

    Parameters
    ----------
    field_ppm : array_like, shape (X, Y, Z)
        Total field (ppm), background included; finite inside ``mask``.
    mask : array_like of bool, shape (X, Y, Z)
        Brain mask M (not eroded by a background removal).
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    b0_dir : sequence of 3 float, default (0, 0, 1)
        B0 direction in voxel axes (normalised here).
    magnitude : array_like, shape (X, Y, Z), optional
        Magnitude (a.u.): the TV edge weight G, and the data weight W when ``noise`` is not given.
    noise : array_like, shape (X, Y, Z), optional
        Per-voxel noise s.d. of the field (any units, positive in the mask): W = 1/noise.
    radius_mm : float, optional
        SMV kernel radius (mm) of C; default :func:`default_radius_mm`.
    alpha : float, default 2e-4
        TV weight (ppm·mm).
    edge_fraction : float, default 0.3
        Fraction in [0, 1) of magnitude gradients left unpenalised, as MEDI (0: no edge weight).
    mu1 : float, optional
        ADMM penalty of z1 = ∇χ (unitless; default 50·alpha).
    mu2 : float, default 1.0
        ADMM penalty of z2 = C·D·χ (unitless).
    edge_mm : float, optional
        Depth (mm) of the rim of ``mask`` left out of χ; default :func:`default_edge_mm`.
    tol : float, default 1e-2
        Relative change of χ per iteration to stop.
    max_iter : int, default 100
        Maximum number of ADMM iterations.
    pad : int, default 8
        Zero padding (voxels per axis) before the FFT.

    Returns
    -------
    ndarray, shape (X, Y, Z)
        Susceptibility χ (ppm, float32, unreferenced), 0 outside :func:`valid_mask`.

    Raises
    ------
    ValueError
        Invalid inputs (:func:`qsmflow.inversion._ops.check_inputs`) or non-positive parameters;
        ``edge_fraction`` outside [0, 1); a negative ``edge_mm``; a mask that vanishes inside the
        rim or when eroded by the SMV kernel.
    """
    f, m, vs, b, mag, noi = _ops.check_inputs(field_ppm, mask, voxel_size, b0_dir, magnitude,
                                              noise)
    radius_mm = default_radius_mm(vs) if radius_mm is None else radius_mm
    mu1 = 50.0 * alpha if mu1 is None else mu1
    _ops.check_positive(radius_mm=radius_mm, alpha=alpha, mu1=mu1, mu2=mu2, tol=tol,
                        max_iter=max_iter)
    if not 0 <= edge_fraction < 1:
        raise ValueError(f"sstv edge_fraction must be in [0, 1), got {edge_fraction!r}")
    inner = valid_mask(m, vs, edge_mm)
    op = _ops.DipoleOp(f.shape, vs, b, pad)
    grid, c_half, me = bgremoval.smv_highpass(op.pshape, op.pad(m), vs, float(radius_mm),
                                              op.workers)
    if not me.any():
        raise ValueError(f"the brain mask vanishes when eroded by the {radius_mm} mm kernel: "
                         "use a smaller radius_mm")
    cf = grid.conv(op.pad(f), c_half)
    op.D = (op.D * c_half).astype(np.float32)
    w2 = (op.pad(_ops.data_weight(m, noi, mag)) * me) ** 2
    tv_weight = None
    if mag is not None and edge_fraction:
        tv_weight = np.stack([op.pad(g) for g in edge_mask(mag, m, vs, edge_fraction)])
    chi = _ops.admm_tv(op, cf, w2, alpha=alpha, mu1=mu1, mu2=mu2, nonlinear=False, tol=tol,
                       max_iter=max_iter, tv_weight=tv_weight)
    return _ops.finish(chi, op, inner)

"""Masked image-quality metrics for susceptibility maps (all in percent where named so).

Formulas (x = reconstruction, y = reference, both restricted to the mask M):

- ``rmse_percent``: 100 · ‖x − y‖₂ / ‖y‖₂ — the "RMSE" of the Meta-QSM and QSMInvNet papers.
- ``nrmse_demeaned``: the QSM challenge 2.0 NRMSE: x and y demeaned inside M, then RMSE%.
- ``nrmse_detrended``: challenge 2.0 "detrended" NRMSE: x is replaced by its least-squares
  linear fit to y (x' = (x − b)/a from y ≈ … ; here x' = a·x + b fitted to y), then RMSE%; it
  removes global scaling and offset errors.
- ``hfen``: 100 · ‖LoG(x) − LoG(y)‖ / ‖LoG(y)‖ over M, LoG with σ = 1.5 voxels.
- ``ssim``: 3D SSIM, Gaussian window σ = 1.5 voxels, K1 = 0.01, K2 = 0.03, dynamic range L
  = max − min of y inside M; averaged over M.
- ``xsim``: the challenge 2.0 XSIM: SSIM without rescaling, L = 1 ppm, K1 = 0.01, K2 = 0.001.
- ``correlation``: Pearson r over M.

Every metric raises ``ValueError`` if x, y and the mask differ in shape or the mask is empty.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _masked(x, y, mask):
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: reconstruction {x.shape} vs reference {y.shape}")
    m = np.ones(x.shape, bool) if mask is None else np.asarray(mask, bool)
    if m.shape != x.shape:
        raise ValueError(f"mask shape {m.shape} differs from image shape {x.shape}")
    if not m.any():
        raise ValueError("mask is empty: metrics need at least one voxel")
    return x, y, m


def rmse_percent(x, y, mask=None) -> float:
    """100·‖x−y‖/‖y‖ inside ``mask`` (%).

    Parameters
    ----------
    x, y : array_like
        Reconstruction and reference of the same shape (any common unit, e.g. χ in ppm).
    mask : array_like of bool, optional
        Region of the metric, shape of ``x``; default all voxels.

    Returns
    -------
    float
        Relative RMSE (%).

    Raises
    ------
    ValueError
        If ``x``, ``y`` and ``mask`` differ in shape or ``mask`` is empty.
    """
    x, y, m = _masked(x, y, mask)
    return float(100.0 * np.linalg.norm(x[m] - y[m]) / np.linalg.norm(y[m]))


def nrmse_demeaned(x, y, mask=None) -> float:
    """Challenge 2.0 NRMSE (%): both maps demeaned inside ``mask``.

    Parameters
    ----------
    x, y, mask
        As for :func:`rmse_percent`.

    Returns
    -------
    float
        NRMSE (%) after subtracting each map's mean inside ``mask``.
    """
    x, y, m = _masked(x, y, mask)
    xm = x[m] - x[m].mean()
    ym = y[m] - y[m].mean()
    return float(100.0 * np.linalg.norm(xm - ym) / np.linalg.norm(ym))


#: the challenge's headline NRMSE
nrmse = nrmse_demeaned


def nrmse_detrended(x, y, mask=None) -> float:
    """Challenge 2.0 detrended NRMSE (%): x linearly fitted to y (a·x + b) before RMSE%.

    Parameters
    ----------
    x, y, mask
        As for :func:`rmse_percent`.

    Returns
    -------
    float
        100·‖(a·x + b) − y‖/‖y‖ (%) with a, b the least-squares fit inside ``mask``.
    """
    x, y, m = _masked(x, y, mask)
    a = np.vstack([x[m], np.ones(m.sum())]).T
    coef, *_ = np.linalg.lstsq(a, y[m], rcond=None)
    fit = a @ coef
    return float(100.0 * np.linalg.norm(fit - y[m]) / np.linalg.norm(y[m]))


def hfen(x, y, mask=None, sigma=1.5) -> float:
    """High-frequency error norm (%): RMSE% of Laplacian-of-Gaussian (σ voxels) images.

    Both maps are set to 0 outside ``mask`` before filtering; the norms are taken inside it.

    Parameters
    ----------
    x, y, mask
        As for :func:`rmse_percent`.
    sigma : float, optional
        Standard deviation of the LoG filter (voxels); default 1.5.

    Returns
    -------
    float
        HFEN (%).
    """
    x, y, m = _masked(x, y, mask)
    lx = ndimage.gaussian_laplace(np.where(m, x, 0.0), sigma)
    ly = ndimage.gaussian_laplace(np.where(m, y, 0.0), sigma)
    return float(100.0 * np.linalg.norm(lx[m] - ly[m]) / np.linalg.norm(ly[m]))


def _ssim_map(x, y, data_range, k1, k2, sigma):
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    f = lambda a: ndimage.gaussian_filter(a, sigma, truncate=3.5)  # noqa: E731
    mx, my = f(x), f(y)
    sxx = f(x * x) - mx * mx
    syy = f(y * y) - my * my
    sxy = f(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))


def ssim(x, y, mask=None, sigma=1.5, k1=0.01, k2=0.03, data_range=None) -> float:
    """3D SSIM averaged over ``mask``; L = range of y in the mask unless given.

    Both maps are set to 0 outside ``mask``; Gaussian window truncated at 3.5 σ.

    Parameters
    ----------
    x, y, mask
        As for :func:`rmse_percent`.
    sigma : float, optional
        Standard deviation of the Gaussian window (voxels); default 1.5.
    k1, k2 : float, optional
        SSIM stabilising constants, C1 = (K1·L)², C2 = (K2·L)²; defaults 0.01 and 0.03.
    data_range : float, optional
        Dynamic range L (unit of ``y``); default max − min of ``y`` in ``mask`` (1 if that is 0).

    Returns
    -------
    float
        Mean SSIM over ``mask`` (dimensionless, at most 1).
    """
    x, y, m = _masked(x, y, mask)
    if data_range is None:
        data_range = float(y[m].max() - y[m].min()) or 1.0
    s = _ssim_map(np.where(m, x, 0.0), np.where(m, y, 0.0), data_range, k1, k2, sigma)
    return float(s[m].mean())


def xsim(x, y, mask=None) -> float:
    """Challenge 2.0 XSIM: SSIM on ppm values with L = 1, K1 = 0.01, K2 = 0.001.

    Parameters
    ----------
    x, y : array_like
        Reconstruction and reference χ (ppm) of the same shape (L = 1 assumes ppm).
    mask : array_like of bool, optional
        Region of the metric, shape of ``x``; default all voxels.

    Returns
    -------
    float
        XSIM (dimensionless, at most 1).
    """
    return ssim(x, y, mask, k1=0.01, k2=0.001, data_range=1.0)


def correlation(x, y, mask=None) -> float:
    """Pearson correlation coefficient inside ``mask``.

    Parameters
    ----------
    x, y, mask
        As for :func:`rmse_percent`.

    Returns
    -------
    float
        Pearson r in [−1, 1] (NaN when one map is constant in ``mask``).
    """
    x, y, m = _masked(x, y, mask)
    return float(np.corrcoef(x[m], y[m])[0, 1])


def all_metrics(x, y, mask=None) -> dict[str, float]:
    """Every metric above in one dict (keys: rmse, nrmse, nrmse_detrended, hfen, ssim, xsim, r).

    All with their default parameters; XSIM assumes χ in ppm.

    Parameters
    ----------
    x, y, mask
        As for :func:`rmse_percent`.

    Returns
    -------
    dict of str to float
        ``rmse``, ``nrmse``, ``nrmse_detrended``, ``hfen`` (%); ``ssim``, ``xsim``, ``r``
        (dimensionless).
    """
    return {
        "rmse": rmse_percent(x, y, mask),
        "nrmse": nrmse_demeaned(x, y, mask),
        "nrmse_detrended": nrmse_detrended(x, y, mask),
        "hfen": hfen(x, y, mask),
        "ssim": ssim(x, y, mask),
        "xsim": xsim(x, y, mask),
        "r": correlation(x, y, mask),
    }

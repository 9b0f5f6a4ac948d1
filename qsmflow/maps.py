"""The clinical maps besides χ: R2*/T2* relaxation maps and a CLEAR-SWI-like SWI with minIP.

- :func:`relaxation_maps`: R2* (1/s) by :func:`qsmflow.masking.r2star_map` (log-linear fit
  of the magnitude over echoes, with the dephasing term for ≥ 4 echoes), clipped to
  ``[0, R2STAR_MAX]``; T2* (ms) = 1000 / R2*, capped at ``T2STAR_MAX_MS`` (also where R2* ≤ 0).
- :func:`clear_swi`: a CLEAR-SWI-like combination (after Eckstein et al., NeuroImage 2021;237:
  118175, not their CLEARSWI.jl): SNR/TE-weighted magnitude combination over echoes,
  multiplied ``n`` times by a negative phase mask built from the local (background-removed)
  field. Convention of qsmflow: positive frequency = paramagnetic, so the mask darkens voxels
  whose local field is *positive* (veins, haemorrhage), as the classic right-handed SWI
  "negative phase" mask does.
- :func:`minimum_intensity_projection`: sliding minIP over a slab along one array axis.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from . import physics
from .masking import r2star_map

#: clipping range of R2* (1/s): above ~500 1/s the signal is gone before the first echoes of
#: any clinical protocol
R2STAR_MAX = 500.0
#: T2* (ms) written where R2* is ≤ 1000/T2STAR_MAX_MS (incl. R2* ≤ 0: no measurable decay)
T2STAR_MAX_MS = 1000.0
#: default SWI parameters: number of phase-mask multiplications, minIP slab (mm)
SWI_N_MASK = 4
MINIP_SLAB_MM = 12.0


def relaxation_maps(mag4d, te_s, *, r2star_max=R2STAR_MAX, t2star_max_ms=T2STAR_MAX_MS,
                    dephasing=True) -> tuple[np.ndarray, np.ndarray]:
    """R2* (1/s) and T2* (ms) of a multi-echo magnitude (X, Y, Z, E) at echo times ``te_s`` (s).

    R2* (:func:`qsmflow.masking.r2star_map`, NaN set to 0) is clipped to ``[0, r2star_max]``;
    T2* = 1000 / R2* is capped at ``t2star_max_ms``, which is also its value where R2* ≤ 0 (no
    decay measurable over the echoes).

    Parameters
    ----------
    mag4d : array_like, shape (X, Y, Z, E)
        Magnitude (a.u.), echoes last, at least 2 echoes.
    te_s : sequence of float
        Echo times (s), one per echo, increasing.
    r2star_max : float, optional
        Upper clip of R2* (1/s); default :data:`R2STAR_MAX`.
    t2star_max_ms : float, optional
        Upper cap of T2* (ms); default :data:`T2STAR_MAX_MS`.
    dephasing : bool, optional
        Fit the quadratic dephasing term for >= 4 echoes (see ``r2star_map``); default True.

    Returns
    -------
    r2star : ndarray, shape (X, Y, Z)
        R2* (1/s) in ``[0, r2star_max]``.
    t2star : ndarray, shape (X, Y, Z)
        T2* (ms) in ``[1000 / r2star_max, t2star_max_ms]``.

    Raises
    ------
    ValueError
        If the echo times are invalid (:func:`qsmflow.physics.check_echo_times`) or ``mag4d`` is
        not 4D with one echo per echo time.
    """
    r2 = np.clip(np.nan_to_num(r2star_map(mag4d, te_s, dephasing=dephasing)), 0.0,
                 float(r2star_max))
    t2 = np.full(r2.shape, float(t2star_max_ms))
    pos = r2 > 1000.0 / float(t2star_max_ms)
    t2[pos] = 1000.0 / r2[pos]
    return r2, t2


def combine_magnitude_snr(mag4d, te_s) -> np.ndarray:
    """SNR-weighted echo combination of CLEAR-SWI.

    Weights w_n = m_n·TE_n (the susceptibility contrast grows with TE, the signal decays), result
    ``Σ w_n m_n / sqrt(Σ w_n²)``; equal to the magnitude for one echo.

    Parameters
    ----------
    mag4d : array_like, shape (X, Y, Z, E) or (X, Y, Z)
        Magnitude (a.u.), echoes last; a 3D array is one echo.
    te_s : sequence of float
        Echo times (s), one per echo, increasing (checked even for one echo).

    Returns
    -------
    ndarray, shape (X, Y, Z)
        Combined magnitude (a.u. of the magnitude); 0 where all weights are 0.

    Raises
    ------
    ValueError
        If the echo times are invalid, or ``mag4d`` is neither 3D nor 4D with one echo per TE.
    """
    m = np.asarray(mag4d, float)
    te = physics.check_echo_times(te_s)
    if m.ndim == 3:
        return m.copy()
    if m.ndim != 4 or m.shape[-1] != te.size:
        raise ValueError(f"magnitude must be (X, Y, Z, E) with one echo per TE, got {m.shape} "
                         f"and {te.size} TEs")
    w = m * te
    den = np.sqrt(np.sum(w * w, axis=-1))
    num = np.sum(w * m, axis=-1)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def swi_phase_mask(local_field_hz, te_s: float, n: int = SWI_N_MASK) -> np.ndarray:
    """The phase mask (0..1) to the power ``n``.

    Phase φ = 2π·f·TE (rad, f = local field in Hz, positive = paramagnetic); the mask is 1 for
    φ ≤ 0, 1 − φ/π for 0 < φ < π, 0 for φ ≥ π.

    Parameters
    ----------
    local_field_hz : array_like, shape (X, Y, Z)
        Local (background-removed) field (Hz).
    te_s : float
        Echo time of the phase (s); not validated.
    n : int, optional
        Number of multiplications (exponent); default :data:`SWI_N_MASK`.

    Returns
    -------
    ndarray, shape (X, Y, Z)
        Phase mask to the power ``n``, in [0, 1].
    """
    phi = 2.0 * np.pi * np.asarray(local_field_hz, float) * float(te_s)
    mask = np.clip(1.0 - phi / np.pi, 0.0, 1.0)
    return mask ** int(n)


def minimum_intensity_projection(vol, voxel_size, slab_mm=MINIP_SLAB_MM, axis=2) -> np.ndarray:
    """Sliding minIP over a slab of ``slab_mm`` (mm) along one array axis.

    Every voxel becomes the minimum over a slab of ``slab_mm`` centred on it along array ``axis``
    (an odd number of slices, at least 1, see :func:`minip_slices`; clipped at the volume's ends).

    Parameters
    ----------
    vol : array_like, shape (X, Y, Z)
        Image (any unit), e.g. the SWI.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    slab_mm : float, optional
        Slab thickness (mm); default :data:`MINIP_SLAB_MM`.
    axis : int, optional
        Array axis of the projection; default 2.

    Returns
    -------
    ndarray, shape (X, Y, Z)
        The minIP (float64, unit of ``vol``).

    Raises
    ------
    ValueError
        If ``voxel_size`` is invalid.
    """
    vs = physics.check_voxel_size(voxel_size)
    n = minip_slices(vs[axis], slab_mm)
    return ndimage.minimum_filter1d(np.asarray(vol, float), size=n, axis=axis, mode="nearest")


def minip_slices(slice_mm: float, slab_mm: float = MINIP_SLAB_MM) -> int:
    """Odd number of slices of ``slice_mm`` (mm) closest to a slab of ``slab_mm`` (mm).

    Parameters
    ----------
    slice_mm : float
        Slice thickness (mm), positive.
    slab_mm : float, optional
        Slab thickness (mm); default :data:`MINIP_SLAB_MM`.

    Returns
    -------
    int
        Odd number of slices, at least 1.
    """
    k = max(1.0, float(slab_mm) / float(slice_mm))
    return int(2 * np.floor((k - 1) / 2 + 0.5) + 1)


def clear_swi(mag4d, te_s, local_field_hz, *, n=SWI_N_MASK, te_swi_s=None) -> tuple[np.ndarray,
                                                                                       float]:
    """CLEAR-SWI-like image (a.u.): :func:`combine_magnitude_snr` × :func:`swi_phase_mask`.

    The phase is that of the local field at ``te_swi_s`` (s; default: the SNR-weighted mean
    echo time Σ m_n·TE_n² / Σ m_n·TE_n over the brain, i.e. the combination's effective TE).

    Parameters
    ----------
    mag4d : array_like, shape (X, Y, Z, E) or (X, Y, Z)
        Magnitude (a.u.), echoes last.
    te_s : sequence of float
        Echo times (s), one per echo, increasing.
    local_field_hz : array_like, shape (X, Y, Z)
        Local (background-removed) field (Hz), finite; its non-zero voxels are the brain of the
        default ``te_swi_s`` (all voxels if it is 0 everywhere).
    n : int, optional
        Number of phase-mask multiplications; default :data:`SWI_N_MASK`.
    te_swi_s : float, optional
        Echo time of the phase mask (s); default the effective TE above.

    Returns
    -------
    swi : ndarray, shape (X, Y, Z)
        The SWI (a.u. of the magnitude).
    te_swi_s : float
        Echo time of the phase mask used (s).

    Raises
    ------
    ValueError
        If the echo times are invalid, the field and magnitude grids differ, the field has NaN/Inf,
        or ``mag4d`` does not have one echo per TE.
    """
    m = np.asarray(mag4d, float)
    te = physics.check_echo_times(te_s)
    f = np.asarray(local_field_hz, float)
    if f.shape != m.shape[:3]:
        raise ValueError(f"local field {f.shape} and magnitude {m.shape} differ in grid")
    if not np.isfinite(f).all():
        raise ValueError("local field contains NaN/Inf")
    if te_swi_s is None:
        mm = m if m.ndim == 4 else m[..., None]
        sel = f != 0 if np.any(f != 0) else np.ones(f.shape, bool)
        w = mm[sel].sum(0) * te[: mm.shape[-1]]
        te_swi_s = float(np.sum(w * te[: mm.shape[-1]]) / max(np.sum(w), 1e-30))
    swi = combine_magnitude_snr(m, te) * swi_phase_mask(f, te_swi_s, n)
    return swi, float(te_swi_s)

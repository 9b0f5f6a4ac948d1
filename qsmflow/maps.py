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

    R2* is clipped to ``[0, r2star_max]``; T2* = 1000 / R2* is capped at ``t2star_max_ms``,
    which is also its value where R2* ≤ 0 (no decay measurable over the echoes).
    """
    r2 = np.clip(np.nan_to_num(r2star_map(mag4d, te_s, dephasing=dephasing)), 0.0,
                 float(r2star_max))
    t2 = np.full(r2.shape, float(t2star_max_ms))
    pos = r2 > 1000.0 / float(t2star_max_ms)
    t2[pos] = 1000.0 / r2[pos]
    return r2, t2


def combine_magnitude_snr(mag4d, te_s) -> np.ndarray:
    """SNR-weighted echo combination of CLEAR-SWI: weights w_n = m_n·TE_n (the susceptibility
    contrast grows with TE, the signal decays), ``Σ w_n m_n / sqrt(Σ w_n²)`` (a.u. of the
    magnitude); equal to the magnitude for one echo."""
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
    """The phase mask (0..1) to the power ``n``: phase φ = 2π·f·TE (rad, f = local field in Hz,
    positive = paramagnetic); 1 for φ ≤ 0, 1 − φ/π for 0 < φ < π, 0 for φ ≥ π."""
    phi = 2.0 * np.pi * np.asarray(local_field_hz, float) * float(te_s)
    mask = np.clip(1.0 - phi / np.pi, 0.0, 1.0)
    return mask ** int(n)


def minimum_intensity_projection(vol, voxel_size, slab_mm=MINIP_SLAB_MM, axis=2) -> np.ndarray:
    """Sliding minIP: every voxel becomes the minimum over a slab of ``slab_mm`` (mm) centred on
    it along array ``axis`` (an odd number of slices, at least 1; clipped at the volume's ends)."""
    vs = physics.check_voxel_size(voxel_size)
    n = minip_slices(vs[axis], slab_mm)
    return ndimage.minimum_filter1d(np.asarray(vol, float), size=n, axis=axis, mode="nearest")


def minip_slices(slice_mm: float, slab_mm: float = MINIP_SLAB_MM) -> int:
    """Odd number of slices of ``slice_mm`` (mm) closest to a slab of ``slab_mm`` (mm)."""
    k = max(1.0, float(slab_mm) / float(slice_mm))
    return int(2 * np.floor((k - 1) / 2 + 0.5) + 1)


def clear_swi(mag4d, te_s, local_field_hz, *, n=SWI_N_MASK, te_swi_s=None) -> tuple[np.ndarray,
                                                                                       float]:
    """CLEAR-SWI-like image (a.u.): :func:`combine_magnitude_snr` × :func:`swi_phase_mask`.

    The phase is that of the local field at ``te_swi_s`` (s; default: the SNR-weighted mean
    echo time Σ m_n·TE_n² / Σ m_n·TE_n over the brain, i.e. the combination's effective TE).
    Returns ``(swi, te_swi_s)``.
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

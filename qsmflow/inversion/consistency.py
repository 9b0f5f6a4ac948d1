"""Data consistency for a prior χ map (a network's output).

    χ = argmin ‖M·(D∗χ − f)‖² + λ‖χ − χ₀‖²      (M: brain mask, D: dipole kernel)

Where D² ≫ λ the measured field decides, inside the magic-angle cone (D ≈ 0) the prior χ₀ does:
the network fills the cone that makes the inversion ill-posed, the field restores the detail a
network smooths away. Solved from the closed-form k-space blend without the mask,
χ = F⁻¹[(D·F(f) + λ·F(χ₀)) / (D² + λ)] (field taken as 0 outside the mask, as in TKD), then
``iterations`` conjugate-gradient steps on the masked normal equations (D·M·D + λ)χ = D·M·f + λ·χ₀,
which drop that wrong zero field outside the brain. On 3 + 3 volumes of the tuning stream (below),
noise-free RMSE went 35.4 / 27.6 / 21.9 % (blend) → 22.5 / 19.8 / 19.1 % (10 steps) → 19.3 / 19.0 /
20.4 % (30 steps), with noise 40.6 / 48.8 / 46.7 → 36.8 / 48.4 / 46.5 %: 10 steps is the default.
λ is the Wiener weight of two estimates, λ = (σ / e)²:

- σ (ppm): noise of the field, from the median absolute deviation of the Laplacian of the
  residual f − M·(D∗χ₀) in the eroded mask (white noise σ gives a 7-point Laplacian of s.d.
  σ·√42); the residual removes most of the anatomy, so what remains is mostly noise;
- e (ppm): expected error of the prior per voxel, ``prior_error`` × the RMS of χ₀ in the mask
  (the shipped networks' RMSE is about 50 % on held-out volumes).

Cost: 2·iterations + 3 FFT pairs on the padded grid (≈ 4 s for 256×256×64 on one core). An
addition of this project, not part of the Meta-QSM or QSMInvNet papers: ``consistency="off"``
gives the network alone.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from qsmflow.inversion import _ops

#: expected error of the prior as a fraction of its RMS. Tuned once, on 8 + 8 held-out volumes of
#: an evaluation stream the benchmark tables do not use (stream 11; noise-free and σ up to
#: 0.01 ppm), Meta-QSM weights of 2026-11-28, 10 CG steps: 0.35, 0.5, 0.75 gave mean RMSE 22.0,
#: 20.9, 20.7 % noise-free and 46.3, 45.5, 46.5 % noisy (TKD 36.4 and 72.7 %, the network 48.9, 50.5 %)
PRIOR_ERROR = 0.5
#: smallest λ: the noise estimate has a floor (~0.0006 ppm) from voxel-scale anatomy left in the
#: residual, and noise-free volumes were best at λ ≈ 0.003 on that stream
LAM_MIN = 3e-3
#: CG steps on the masked problem after the closed-form blend (see the module docstring)
ITERATIONS = 10
UNITS = {"consistency": "off | auto | λ (1, weight of the prior against the field)"}


def field_noise(field_ppm, mask) -> float:
    """Robust s.d. (ppm) of white noise in ``field_ppm`` inside ``mask`` (Laplacian MAD / √42).

    The Laplacian is sampled in the mask eroded by 2 voxels (the whole mask when that leaves
    fewer than 100 voxels).

    Parameters
    ----------
    field_ppm : ndarray, shape (X, Y, Z)
        Field (ppm); zeroed outside ``mask``.
    mask : ndarray of bool, shape (X, Y, Z)
        Region of the field.

    Returns
    -------
    float
        Noise s.d. σ (ppm).
    """
    inner = ndi.binary_erosion(mask, iterations=2)
    if inner.sum() < 100:
        inner = np.asarray(mask, bool)
    r = ndi.laplace(np.where(mask, field_ppm, 0.0).astype(np.float64))[inner]
    return float(1.4826 * np.median(np.abs(r - np.median(r))) / np.sqrt(42.0))


def check_weight(consistency):
    """``"off"``, ``"auto"`` or a positive λ, unchanged; a one-line ``ValueError`` otherwise.

    Parameters
    ----------
    consistency : {"off", "auto"} or float
        Data-consistency setting: off, λ from the field noise, or λ itself (unitless, > 0).

    Returns
    -------
    str or float
        ``consistency`` unchanged.

    Raises
    ------
    ValueError
        Another string, or a number that is not positive and finite.
    """
    if isinstance(consistency, str):
        if consistency not in ("off", "auto"):
            raise ValueError(f"consistency must be 'off', 'auto' or a positive number, got {consistency!r}")
    else:
        _ops.check_positive(consistency=consistency)
    return consistency


def consistency_weight(field_ppm, mask, chi_prior, prior_field, prior_error=PRIOR_ERROR) -> float:
    """λ = (σ / e)² (see module docstring), at least :data:`LAM_MIN`; ``prior_field`` (ppm) is
    the dipole field of ``chi_prior`` on the field's grid.

    Parameters
    ----------
    field_ppm : ndarray, shape (X, Y, Z)
        Local field (ppm).
    mask : ndarray of bool, shape (X, Y, Z)
        Mask of the field.
    chi_prior : ndarray, shape (X, Y, Z)
        Prior χ (ppm).
    prior_field : ndarray, shape (X, Y, Z)
        Dipole field (ppm) of ``chi_prior``.
    prior_error : float, default :data:`PRIOR_ERROR` (0.5)
        Expected error of the prior as a fraction of its RMS in the mask (unitless).

    Returns
    -------
    float
        λ (unitless, ≥ :data:`LAM_MIN`); ``inf`` when ``chi_prior`` is 0 in the whole mask.
    """
    sigma = field_noise(np.where(mask, field_ppm - prior_field, 0.0), mask)
    e = prior_error * float(np.sqrt(np.mean(np.square(chi_prior[mask], dtype=np.float64))))
    if e <= 0.0:
        return float("inf")  # an all-zero prior has no error scale: it is returned unchanged
    return max((sigma / e) ** 2, LAM_MIN)


def data_consistency(chi_prior, field_ppm, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), *,
                     lam="auto", iterations=ITERATIONS, pad=_ops.DEFAULT_PAD) -> tuple[np.ndarray, float]:
    """Blend a prior χ (ppm) with the field (ppm): returns ``(χ masked float32, λ used)``.

    Parameters
    ----------
    chi_prior : array_like, shape (X, Y, Z)
        Prior χ (ppm), e.g. a network's output.
    field_ppm : array_like, shape (X, Y, Z)
        Local field (ppm).
    mask : array_like of bool, shape (X, Y, Z)
        Mask of the local field.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    b0_dir : sequence of 3 float, default (0, 0, 1)
        B0 direction in voxel axes (normalised here).
    lam : "auto" or float, default "auto"
        λ: from the field noise (:func:`consistency_weight`) or a positive number (unitless).
    iterations : int, default :data:`ITERATIONS` (10)
        CG steps on the masked problem after the closed-form blend (0: blend only).
    pad : int, default 8
        Zero padding (voxels per axis) before the FFT.

    Returns
    -------
    chi : ndarray, shape (X, Y, Z)
        χ (ppm, float32), 0 outside ``mask``; the masked prior itself when λ is ``inf``.
    lam : float
        λ used.

    Raises
    ------
    ValueError
        Invalid inputs (:func:`qsmflow.inversion._ops.check_inputs`), a prior of another shape, or
        ``lam`` not "auto" or a positive number ("off" included).
    """
    f, m, vs, b, _, _ = _ops.check_inputs(field_ppm, mask, voxel_size, b0_dir)
    chi0 = np.asarray(chi_prior, dtype=np.float32)
    if chi0.shape != f.shape:
        raise ValueError(f"prior χ shape {chi0.shape} differs from field shape {f.shape}")
    if check_weight(lam) == "off":
        raise ValueError("consistency='off' means no data-consistency step: do not call it")
    op = _ops.DipoleOp(f.shape, vs, b, pad)
    f_pad, chi0_pad = op.pad(f), op.pad(chi0)
    chi0_k = op.fft(chi0_pad)  # used by the noise estimate and by the blend
    if lam == "auto":
        lam = consistency_weight(f, m, chi0, op.crop(op.ifft(chi0_k * op.D)))
    if not np.isfinite(lam):
        return np.where(m, chi0, 0.0).astype(np.float32), float(lam)
    lam32 = np.float32(lam)
    num = op.fft(f_pad) * op.D + lam32 * chi0_k
    num /= op.D * op.D + lam32
    chi = op.ifft(num)
    if iterations > 0:
        m_pad = op.pad(m)
        chi, _ = _ops.cg(lambda x: op.conv(m_pad * op.conv(x)) + lam32 * x,
                         op.conv(m_pad * f_pad) + lam32 * chi0_pad, x0=chi, tol=1e-6,
                         max_iter=int(iterations))
    return _ops.finish(chi, op, m), float(lam)

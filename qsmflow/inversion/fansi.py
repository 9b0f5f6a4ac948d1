"""FANSI: fast nonlinear susceptibility inversion by ADMM (Milovic et al. 2018), TV variant.

Nonlinear (default)::

    χ = argmin α1‖∇χ‖₁ + 1/(2s²)·‖W(e^{i s Dχ} − e^{i s f})‖²

with s = ``rad_per_ppm`` (the field as phase, so the data term is insensitive to phase wraps and
robust to the noise of low-signal voxels), W the data weight (1/noise, else magnitude, else 1;
mean 1 in the mask, 0 outside). ``nonlinear=False`` gives the weighted linear problem
α1‖∇χ‖₁ + ½‖W(Dχ − f)‖². Splits z1 = ∇χ (penalty µ1) and z2 = Dχ (µ2); χ is closed form in
k-space, z1 a soft threshold, z2 per-voxel Newton steps (nonlinear) or closed form (linear).
α1 and µ1 refer to χ and f in ppm and ∇ in 1/mm; the 1/s² factor keeps them independent of s.
Cost: two FFT pairs per iteration. Stops when ‖Δχ‖/‖χ‖ < ``tol``.
"""

from __future__ import annotations

from qsmflow.inversion import _ops

UNITS = {"alpha1": "ppm·mm (TV weight)",
         "mu1": "1 (ADMM penalty of z1 = ∇χ)",
         "mu2": "1 (ADMM penalty of z2 = Dχ)",
         "nonlinear": "bool (complex-exponential data term)",
         "rad_per_ppm": "rad/ppm (phase per ppm of field in the nonlinear term)",
         "tol": "1 (relative change of χ per iteration)",
         "max_iter": "iterations",
         "newton_iter": "Newton steps per z2 update",
         "pad": "voxels per axis (zero padding)"}


def fansi(field_ppm, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), *, magnitude=None, noise=None,
          alpha1=2e-4, mu1=1e-2, mu2=1.0, nonlinear=True,
          rad_per_ppm=_ops.DEFAULT_RAD_PER_PPM, tol=1e-2, max_iter=100, newton_iter=2,
          pad=_ops.DEFAULT_PAD):
    """FANSI TV inversion (ppm in, χ in ppm out, unreferenced, 0 outside mask).

    Defaults from the QSMInvNet paper: α1 = 2e-4, µ1 = 1e-2 (µ2 = 1); ``nonlinear`` selects
    the nonlinear (default) or the weighted linear data term; ``tol`` 1e-2 on the relative χ
    update, at most ``max_iter`` (100) iterations. Larger α1 → smoother χ.

    Parameters
    ----------
    field_ppm, mask, voxel_size, b0_dir, pad
        The common arguments of every method (:mod:`qsmflow.inversion`): local field (ppm), its
        mask, voxel size (mm), B0 direction in voxel axes, zero padding (voxels).
    magnitude : array_like, shape (X, Y, Z), optional
        Magnitude (a.u.): the data weight W when ``noise`` is not given.
    noise : array_like, shape (X, Y, Z), optional
        Per-voxel noise s.d. of the field (any units, positive in the mask): W = 1/noise (preferred).
    alpha1 : float, default 2e-4
        TV weight (ppm·mm).
    mu1, mu2 : float, default 1e-2, 1.0
        ADMM penalties of z1 = ∇χ and z2 = Dχ (unitless).
    nonlinear : bool, default True
        Complex-exponential (True) or weighted linear (False) data term.
    rad_per_ppm : float, default ≈ 16.0
        Phase per ppm of field (rad/ppm) in the nonlinear term
        (:data:`qsmflow.inversion._ops.DEFAULT_RAD_PER_PPM`: TE = 20 ms at 3 T, for a field
        without its acquisition); the pipeline passes the acquisition's own, 2π·γ̄·B0·mean(TE)
        (:func:`qsmflow.inversion.acquisition_parameters`).
    tol : float, default 1e-2
        Relative change of χ per iteration to stop.
    max_iter : int, default 100
        Maximum number of ADMM iterations.
    newton_iter : int, default 2
        Newton steps per z2 update (nonlinear term).

    Returns
    -------
    ndarray
        χ (ppm) as for every method; ValueError on invalid inputs or non-positive parameters.
    """
    f, m, vs, b, mag, noi = _ops.check_inputs(field_ppm, mask, voxel_size, b0_dir, magnitude,
                                              noise)
    _ops.check_positive(alpha1=alpha1, mu1=mu1, mu2=mu2, rad_per_ppm=rad_per_ppm, tol=tol,
                        max_iter=max_iter, newton_iter=newton_iter)
    op = _ops.DipoleOp(f.shape, vs, b, pad)
    w2 = op.pad(_ops.data_weight(m, noi, mag)) ** 2
    chi = _ops.admm_tv(op, op.pad(f), w2, alpha=alpha1, mu1=mu1, mu2=mu2, nonlinear=nonlinear,
                       rad_per_ppm=rad_per_ppm, tol=tol, max_iter=max_iter,
                       newton_iter=newton_iter)
    return _ops.finish(chi, op, m)

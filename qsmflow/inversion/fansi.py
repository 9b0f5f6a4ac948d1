"""FANSI: fast nonlinear susceptibility inversion by ADMM (Milovic et al. 2018), TV variant.

Nonlinear (default)::

    χ = argmin α1‖∇χ‖₁ + 1/(2s²)·‖W(e^{i s Dχ} − e^{i s f})‖²

with s = ``rad_per_ppm`` (the field as phase, so the data term is insensitive to phase wraps and
to the noise of low-signal voxels), W the data weight (1/noise, else magnitude, else 1; mean 1 in
the mask, 0 outside). ``nonlinear=False`` gives the weighted linear problem
α1‖∇χ‖₁ + ½‖W(Dχ − f)‖². Splits z1 = ∇χ (penalty µ1) and z2 = Dχ (µ2); χ is closed form in
k-space, z1 a soft threshold, z2 a per-voxel Newton solve (nonlinear) or closed form (linear).
α1 and µ1 refer to χ and f in ppm and ∇ in 1/mm, so the 1/s² factor keeps them independent of s.
Cost: two FFT pairs per iteration. Stops when ‖Δχ‖/‖χ‖ < ``tol``.
"""

from __future__ import annotations

import numpy as np

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
          rad_per_ppm=_ops.DEFAULT_RAD_PER_PPM, tol=1e-2, max_iter=100, newton_iter=4,
          pad=_ops.DEFAULT_PAD):
    """FANSI TV inversion (ppm in, χ in ppm out, unreferenced, 0 outside mask).

    Defaults from the QSMInvNet paper: α1 = 2e-4, µ1 = 1e-2 (µ2 = 1); ``nonlinear`` selects
    the nonlinear (default) or the weighted linear data term; ``tol`` 1e-2 on the relative χ
    update, at most ``max_iter`` (100) iterations. Larger α1 → smoother χ.
    """
    f, m, vs, b, mag, noi = _ops.check_inputs(field_ppm, mask, voxel_size, b0_dir, magnitude,
                                              noise)
    _ops.check_positive(alpha1=alpha1, mu1=mu1, mu2=mu2, rad_per_ppm=rad_per_ppm, tol=tol,
                        max_iter=max_iter, newton_iter=newton_iter)
    op = _ops.DipoleOp(f.shape, vs, b, pad)
    w2 = op.pad(_ops.data_weight(m, noi, mag)) ** 2
    fp = op.pad(f)
    s = np.float32(rad_per_ppm)
    mu1_, mu2_ = np.float32(mu1), np.float32(mu2)
    denom = mu1_ * op.E2 + mu2_ * op.D**2
    denom[0, 0, 0] = 1.0
    inv_denom = (1.0 / denom).astype(np.float32)
    inv_denom[0, 0, 0] = 0.0  # k = 0 undetermined: left to the reference step

    chi = np.zeros(op.pshape, np.float32)
    z1 = np.zeros((3,) + op.pshape, np.float32)
    u1 = np.zeros_like(z1)
    g = np.empty_like(z1)
    z2 = fp.copy()
    u2 = np.zeros(op.pshape, np.float32)
    thr = np.float32(alpha1 / mu1)
    for _ in range(int(max_iter)):
        # χ-update (closed form in k-space)
        z1 -= u1
        rhs = op.fft(_ops.grad_adj(z1, vs))
        rhs *= mu1_
        t = op.fft(z2 - u2)
        t *= op.D
        t *= mu2_
        rhs += t
        rhs *= inv_denom
        new = op.ifft(rhs).astype(np.float32, copy=False)
        rhs *= op.D
        dchi = op.ifft(rhs).astype(np.float32, copy=False)
        delta = float(np.linalg.norm(new - chi)) / (float(np.linalg.norm(new)) or 1.0)
        chi = new
        # z1-update (soft threshold) and its dual
        _ops.grad(chi, vs, out=g)
        u1 += g
        z1 = _ops.shrink(u1.copy(), thr)
        u1 -= z1
        # z2-update (data consistency) and its dual
        y = dchi + u2
        if nonlinear:
            for _ in range(int(newton_iter)):
                arg = s * (z2 - fp)
                h = w2 / s * np.sin(arg) + mu2_ * (z2 - y)
                hp = w2 * np.cos(arg) + mu2_
                z2 -= h / np.maximum(hp, 0.5 * mu2_)
        else:
            z2 = (w2 * fp + mu2_ * y) / (w2 + mu2_)
        u2 = y - z2
        if delta < tol:
            break
    return _ops.finish(chi, op, m)

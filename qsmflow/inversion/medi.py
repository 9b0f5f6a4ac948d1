"""MEDI: morphology-enabled dipole inversion (Liu et al. 2011/2012), nonlinear data term,
with optional MEDI+0 CSF regularisation (Liu et al. 2018)::

    χ = argmin ‖M_G ∇χ‖₁ + λ/s²·‖W(e^{i s Dχ} − e^{i s f})‖² + λ_CSF‖M_CSF(χ − mean_CSF χ)‖²

χ and f in ppm, ∇ in 1/mm, s = ``rad_per_ppm``; W = 1/noise (else magnitude, else 1), mean 1 in
the mask, 0 outside; M_G = 0 on the ``edge_fraction`` strongest magnitude-gradient components
inside the mask (anatomical edges, not penalised), 1 elsewhere (1 everywhere without magnitude).

Normalisation of λ: with the 1/s² factor the data term equals λ‖W(Dχ − f)‖² (ppm²) to first
order, so λ is independent of field strength and echo time, and λ = 1000 (the papers' default)
is equivalent to a TV weight α = 1/(2λ) = 5e-4 ppm·mm in ½‖Dχ − f‖² + α‖∇χ‖₁.

Solver: Gauss–Newton on the nonlinear term with the L1 norm linearised by lagged diffusivity
(weights 1/√(|M_G∇χ|² + eps)); each outer step solves the normal equations by conjugate
gradients (one FFT pair per CG iteration). Stops when ‖Δχ‖/‖χ‖ < ``tol`` or after ``max_iter``.
"""

from __future__ import annotations

import numpy as np

from qsmflow.inversion import _ops

UNITS = {"lam": "1 (data weight on ‖W(Dχ−f)‖² in ppm² vs ‖M∇χ‖₁ in ppm/mm)",
         "edge_fraction": "1 (fraction of in-mask gradient components treated as edges)",
         "eps": "(ppm/mm)² (smoothing of |∇χ| in the L1 weights)",
         "rad_per_ppm": "rad/ppm (phase per ppm of field in the nonlinear term)",
         "tol": "1 (relative Gauss-Newton update ‖Δχ‖/‖χ‖ to stop)",
         "max_iter": "Gauss-Newton iterations",
         "cg_tol": "1 (relative CG residual)",
         "cg_max_iter": "CG iterations per Gauss-Newton step",
         "csf_mask": "bool array (MEDI+0 CSF region) or None",
         "lambda_csf": "1 (MEDI+0 weight on ‖M_CSF(χ − mean)‖², ppm²)",
         "pad": "voxels per axis (zero padding)"}


def edge_mask(magnitude, mask, voxel_size, edge_fraction=0.3):
    """MEDI's gradient mask (3, ...) float32: 0 on the ``edge_fraction`` largest components of
    |∇(magnitude·mask)| inside ``mask``, 1 elsewhere.

    Parameters
    ----------
    magnitude : array_like, shape (X, Y, Z)
        Magnitude (a.u.).
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask; the magnitude is zeroed outside it.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    edge_fraction : float, default 0.3
        Fraction in [0, 1) of the in-mask gradient components treated as edges.

    Returns
    -------
    ndarray, shape (3, X, Y, Z)
        M_G (float32) per forward-difference component: 0 where it exceeds the 1 − ``edge_fraction``
        quantile of the in-mask components, 1 elsewhere.
    """
    g = np.abs(_ops.grad(np.where(mask, magnitude, 0).astype(np.float32), voxel_size))
    inside = np.broadcast_to(mask, g.shape)
    level = np.quantile(g[inside], 1.0 - edge_fraction)
    return (g <= level).astype(np.float32)


def medi(field_ppm, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), *, magnitude=None, noise=None,
         lam=1000.0, edge_fraction=0.3, eps=1e-6, rad_per_ppm=_ops.DEFAULT_RAD_PER_PPM,
         tol=0.1, max_iter=10, cg_tol=1e-2, cg_max_iter=25, csf_mask=None, lambda_csf=100.0,
         pad=_ops.DEFAULT_PAD):
    """MEDI / MEDI+0 inversion (ppm in, χ in ppm out, unreferenced, 0 outside mask).

    Outer ``tol`` 0.1 and ``max_iter`` 10, CG ``cg_tol`` 1e-2 (MEDI toolbox defaults) and
    ``cg_max_iter`` 25 (toolbox: 100; lowered for speed, costs ~1 % NRMSE on the head phantom).

    Parameters
    ----------
    field_ppm, mask, voxel_size, b0_dir, pad
        The common arguments of every method (:mod:`qsmflow.inversion`): local field (ppm), its
        mask, voxel size (mm), B0 direction in voxel axes, zero padding (voxels).
    magnitude : array_like, shape (X, Y, Z), optional
        Magnitude (a.u.): the edge mask M_G, and the data weight W when ``noise`` is not given.
    noise : array_like, shape (X, Y, Z), optional
        Per-voxel noise s.d. of the field (any units, positive in the mask): W = 1/noise.
    lam : float, default 1000
        Data weight on ‖W(Dχ − f)‖² (ppm²) against ‖M_G∇χ‖₁ (ppm/mm), unitless; larger → closer
        data fit, less smoothing.
    edge_fraction : float, default 0.3
        Fraction in [0, 1) of in-mask magnitude-gradient components treated as edges.
    eps : float, default 1e-6
        Smoothing of |∇χ| in the L1 weights ((ppm/mm)²).
    rad_per_ppm : float, default ≈ 16.0
        Phase per ppm of field (rad/ppm) in the nonlinear term
        (:data:`qsmflow.inversion._ops.DEFAULT_RAD_PER_PPM`: TE = 20 ms at 3 T, for a field
        without its acquisition); the pipeline passes the acquisition's own, 2π·γ̄·B0·mean(TE)
        (:func:`qsmflow.inversion.acquisition_parameters`).
    tol : float, default 0.1
        Relative Gauss–Newton update ‖Δχ‖/‖χ‖ to stop.
    max_iter : int, default 10
        Maximum number of Gauss–Newton iterations.
    cg_tol : float, default 1e-2
        Relative CG residual per Gauss–Newton step.
    cg_max_iter : int, default 25
        CG iterations per Gauss–Newton step.
    csf_mask : array_like of bool, shape (X, Y, Z), optional
        CSF region: switches on MEDI+0 (its overlap with ``mask`` is used).
    lambda_csf : float, default 100
        MEDI+0 weight on ‖M_CSF(χ − mean_CSF χ)‖² (unitless, χ in ppm).

    Returns
    -------
    ndarray
        χ (ppm) as for every method; ValueError on invalid inputs or non-positive parameters;
        ``edge_fraction`` outside [0, 1); a ``csf_mask`` of another shape or not overlapping ``mask``.
    """
    f, m, vs, b, mag, noi = _ops.check_inputs(field_ppm, mask, voxel_size, b0_dir, magnitude,
                                              noise)
    _ops.check_positive(lam=lam, eps=eps, rad_per_ppm=rad_per_ppm, tol=tol, max_iter=max_iter,
                        cg_tol=cg_tol, cg_max_iter=cg_max_iter)
    if not 0 <= edge_fraction < 1:
        raise ValueError(f"edge_fraction must be in [0, 1), got {edge_fraction!r}")
    op = _ops.DipoleOp(f.shape, vs, b, pad)
    w2 = op.pad(_ops.data_weight(m, noi, mag)) ** 2
    fp = op.pad(f)
    s = np.float32(rad_per_ppm)
    if mag is not None and edge_fraction > 0:
        mg = np.stack([op.pad(c) for c in edge_mask(mag, m, vs, edge_fraction)])
        mg[:, ~op.pad(m).astype(bool)] = 1.0
    else:
        mg = np.float32(1.0)
    csf = None
    if csf_mask is not None:
        csf = np.asarray(csf_mask, bool)
        if csf.shape != m.shape:
            raise ValueError(f"csf_mask shape {csf.shape} differs from field shape {m.shape}")
        csf = op.pad(csf & m).astype(bool)
        if not csf.any():
            raise ValueError("csf_mask does not overlap the brain mask: pass a CSF mask inside it")
        _ops.check_positive(lambda_csf=lambda_csf)
    two_lam = np.float32(2.0 * lam)
    two_lcsf = np.float32(2.0 * lambda_csf)

    def proj_csf(x):
        out = np.zeros_like(x)
        out[csf] = x[csf] - x[csf].mean()
        return out

    x = np.zeros(op.pshape, np.float32)
    for _ in range(int(max_iter)):
        gx = _ops.grad(x, vs)
        gx *= mg
        vr = np.float32(1.0) / np.sqrt(np.sum(gx * gx, axis=0) + np.float32(eps))
        vr_w = mg * mg * vr  # M_G·Vr·M_G per component

        def reg(dx):  # used within this iteration only
            gd = _ops.grad(dx, vs)
            gd *= vr_w  # noqa: B023
            return _ops.grad_adj(gd, vs)

        def apply_a(dx):
            out = reg(dx)
            out += two_lam * op.conv(w2 * op.conv(dx))
            if csf is not None:
                out += two_lcsf * proj_csf(dx)
            return out

        dxf = op.conv(x)
        grad_e = reg(x)
        grad_e -= two_lam / s * op.conv(w2 * np.sin(s * (fp - dxf)))
        if csf is not None:
            grad_e += two_lcsf * proj_csf(x)
        dx, _ = _ops.cg(apply_a, -grad_e, tol=cg_tol, max_iter=int(cg_max_iter))
        x += dx
        if float(np.linalg.norm(dx)) < tol * (float(np.linalg.norm(x)) or 1.0):
            break
    return _ops.finish(x, op, m)

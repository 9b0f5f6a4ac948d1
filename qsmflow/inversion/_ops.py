"""Shared operators of the dipole inversions (private): input checks, the padded dipole operator
on a real-FFT grid, finite-difference gradients and the small solvers every method reuses.

Conventions: every array is float32 (complex64 in k-space); the volume is zero-padded at the end
of each axis by ``pad`` voxels to a fast FFT size (:func:`qsmflow.physics.padded_shape`), all
operators are periodic on that padded grid (so the k-space and image-space forms agree exactly),
and gradients are forward differences in 1/mm (divided by each axis' voxel size).
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from qsmflow import physics

#: default zero padding (voxels per axis) before the FFT: the dipole field decays as 1/r³, so a
#: few voxels of air around the mask remove nearly all wrap-around at a fraction of 2× padding
DEFAULT_PAD = 8

#: rad per ppm at which the nonlinear (complex exponential) data terms of MEDI and FANSI wrap the
#: field: the phase at TE = 20 ms and 3 T, 2π·γ̄·B0·TE·1e-6 ≈ 16.0 rad/ppm. It sets only where
#: the model's nonlinearity acts; the regularisation weights are defined on the field in ppm.
DEFAULT_RAD_PER_PPM = 2.0 * np.pi * physics.GAMMA_BAR_HZ_PER_T * 3.0 * 0.020 * 1e-6


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def check_inputs(field_ppm, mask, voxel_size, b0_dir, magnitude=None, noise=None):
    """Validate the common inversion inputs; return ``(field32, mask_bool, vs, b0, mag, noise)``.

    Parameters
    ----------
    field_ppm : array_like, shape (X, Y, Z)
        Field (ppm); finite inside ``mask``.
    mask : array_like, shape (X, Y, Z)
        Mask (cast to bool); at least one voxel.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis, positive.
    b0_dir : sequence of 3 float
        B0 direction in voxel axes, nonzero (normalised here).
    magnitude : array_like, shape (X, Y, Z), optional
        Magnitude (a.u.); finite inside ``mask``.
    noise : array_like, shape (X, Y, Z), optional
        Per-voxel noise s.d. of the field (any units); positive and finite inside ``mask``.

    Returns
    -------
    tuple
        ``(f, m, vs, b, mag, noise)``: ``f`` float32 field (ppm), 0 outside the mask; ``m`` bool
        mask; ``vs`` tuple of 3 float (mm); ``b`` unit ndarray, shape (3,); ``mag`` and ``noise``
        float32 arrays or ``None``.

    Raises
    ------
    ValueError
        One line naming the problem and the fix: field not 3D, a shape mismatch, an empty mask,
        NaN/Inf inside the mask, non-positive noise, an invalid voxel size or B0 direction.
    """
    f = np.asarray(field_ppm)
    if f.ndim != 3:
        raise ValueError(f"field_ppm must be a 3D array, got shape {f.shape}: pass one local field "
                         "volume (combine echoes first)")
    m = np.asarray(mask)
    if m.shape != f.shape:
        raise ValueError(f"mask shape {m.shape} differs from field shape {f.shape}: resample the "
                         "mask onto the field grid")
    m = m.astype(bool)
    if not m.any():
        raise ValueError("mask is empty: pass a brain mask with at least one voxel")
    if not np.all(np.isfinite(f[m])):
        raise ValueError("field_ppm contains NaN/Inf inside the mask: remove them from the mask or "
                         "replace them (np.nan_to_num)")
    vs = physics.check_voxel_size(voxel_size)
    b = physics.check_b0_dir(b0_dir)
    f = np.where(m, f, 0.0).astype(np.float32)
    out = [f, m, vs, b]
    for name, a in (("magnitude", magnitude), ("noise", noise)):
        if a is None:
            out.append(None)
            continue
        a = np.asarray(a, dtype=float)
        if a.shape != f.shape:
            raise ValueError(f"{name} shape {a.shape} differs from field shape {f.shape}: pass a "
                             f"3D {name} on the field grid")
        if not np.all(np.isfinite(a[m])):
            raise ValueError(f"{name} contains NaN/Inf inside the mask: clean it (np.nan_to_num)")
        if name == "noise" and np.any(a[m] <= 0):
            raise ValueError("noise must be a positive per-voxel std inside the mask: clip it, "
                             "e.g. np.maximum(noise, 1e-6)")
        out.append(a.astype(np.float32))
    return tuple(out)


def check_positive(**params):
    """Raise a ``ValueError`` unless every given parameter is a positive finite number.

    Parameters
    ----------
    **params
        ``name=value`` pairs to check (the name appears in the error).

    Returns
    -------
    None

    Raises
    ------
    ValueError
        For the first value that is not a positive finite scalar.
    """
    for k, v in params.items():
        if not (np.isscalar(v) and np.isfinite(v) and v > 0):
            raise ValueError(f"parameter {k} must be a positive number, got {v!r}")


def data_weight(mask, noise=None, magnitude=None):
    """Data-term weight inside ``mask``: 1/noise (else magnitude, else 1), mean 1 in the mask.

    Parameters
    ----------
    mask : ndarray of bool, shape (X, Y, Z)
        Mask; the weight is 0 outside.
    noise : ndarray, shape (X, Y, Z), optional
        Per-voxel noise s.d. of the field (any units; positive in the mask). Preferred.
    magnitude : ndarray, shape (X, Y, Z), optional
        Magnitude (a.u.; its absolute value is used) when ``noise`` is not given.

    Returns
    -------
    ndarray, shape (X, Y, Z)
        Weight W (float32, unitless), mean 1 in the mask, 0 outside.

    Raises
    ------
    ValueError
        The weight is zero in the whole mask.
    """
    if noise is not None:
        w = np.where(mask, 1.0 / noise, 0.0)
    elif magnitude is not None:
        w = np.where(mask, np.abs(magnitude), 0.0)
    else:
        return mask.astype(np.float32)
    mean = w[mask].mean()
    if not mean > 0:
        raise ValueError("data weight is zero in the whole mask: check magnitude / noise")
    return (w / mean).astype(np.float32)


# --------------------------------------------------------------------------------------------
# padded dipole operator on the real-FFT grid
# --------------------------------------------------------------------------------------------
class DipoleOp:
    """Dipole convolution and FFTs on a zero-padded grid (float32 / complex64, ``rfftn``).

    ``D`` holds the half-spectrum of the dipole kernel, ``E2`` the half-spectrum of the
    forward-difference Laplacian symbol Σ_j |e^{2πi k_j/N_j} − 1|²/d_j² (1/mm²).
    """

    def __init__(self, shape, voxel_size, b0_dir=(0.0, 0.0, 1.0), pad=DEFAULT_PAD):
        if not (np.isscalar(pad) and pad >= 0):
            raise ValueError(f"pad must be a non-negative number of voxels, got {pad!r}")
        self.shape = tuple(int(s) for s in shape)
        self.vs = physics.check_voxel_size(voxel_size)
        self.pshape = physics.padded_shape(self.shape, int(pad))
        self.workers = physics.fft_workers()
        self.nh = self.pshape[2] // 2 + 1
        self.D = physics.dipole_kernel(self.pshape, self.vs, b0_dir, dtype=np.float32, half=True)
        self._e2 = None

    @property
    def E2(self):
        if self._e2 is None:
            parts = []
            for ax, (n, d) in enumerate(zip(self.pshape, self.vs)):
                k = sfft.rfftfreq(n) if ax == 2 else sfft.fftfreq(n)
                shp = [1, 1, 1]
                shp[ax] = k.size
                parts.append(((2.0 - 2.0 * np.cos(2 * np.pi * k)) / d**2).reshape(shp))
            self._e2 = (parts[0] + parts[1] + parts[2]).astype(np.float32)
        return self._e2

    def pad(self, x):
        return physics.pad_array(np.asarray(x, dtype=np.float32), self.pshape)

    def crop(self, x):
        return np.ascontiguousarray(physics.crop_array(x, self.shape))

    def fft(self, x):
        return sfft.rfftn(x, workers=self.workers)

    def ifft(self, xk):
        return sfft.irfftn(xk, s=self.pshape, workers=self.workers)

    def conv(self, x, kernel=None):
        """Circular convolution of a padded image with a half-spectrum kernel (default D).

        Parameters
        ----------
        x : ndarray, shape ``pshape``
            Padded image.
        kernel : ndarray, shape ``D.shape``, optional
            Half-spectrum (``rfftn`` grid) kernel; default the dipole kernel ``D``.

        Returns
        -------
        ndarray, shape ``pshape``
            The convolved image.
        """
        xk = self.fft(x)
        xk *= self.D if kernel is None else kernel
        return self.ifft(xk)


# --------------------------------------------------------------------------------------------
# finite differences (periodic, 1/mm)
# --------------------------------------------------------------------------------------------
def _axis_slices(ax: int) -> tuple:
    """Index tuples ``(lo, hi, first, last)`` along axis ``ax`` of a 3D array: ``x[hi] − x[lo]``
    are the interior forward differences, ``x[first] − x[last]`` the periodic wrap-around one."""
    def along(s):
        idx = [slice(None)] * 3
        idx[ax] = s
        return tuple(idx)
    return along(slice(0, -1)), along(slice(1, None)), along(slice(0, 1)), along(slice(-1, None))


def grad(x, voxel_size, out=None):
    """Forward differences of a 3D array along each axis (per mm), periodic; shape (3,)+x.shape.

    Parameters
    ----------
    x : ndarray, shape (X, Y, Z)
        Image.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    out : ndarray, shape (3, X, Y, Z), optional
        Output array, written in place.

    Returns
    -------
    ndarray, shape (3, X, Y, Z)
        ∇x in units of x per mm (float32 unless ``out`` is given).
    """
    if out is None:
        out = np.empty((3,) + x.shape, dtype=np.float32)
    for ax, d in enumerate(voxel_size):
        g = out[ax]
        lo, hi, first, last = _axis_slices(ax)
        np.subtract(x[hi], x[lo], out=g[lo])
        np.subtract(x[first], x[last], out=g[last])
        g *= 1.0 / d
    return out


def grad_adj(g, voxel_size):
    """Adjoint of :func:`grad` (= minus the backward-difference divergence), per mm.

    (∇ᵀg)_i = Σ_axes (g_{i−1} − g_i)/d, periodic.

    Parameters
    ----------
    g : ndarray, shape (3, X, Y, Z)
        Gradient field, one component per axis.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.

    Returns
    -------
    ndarray, shape (X, Y, Z)
        ∇ᵀg (float32) in units of g per mm.
    """
    out = np.zeros(g.shape[1:], dtype=np.float32)
    tmp = np.empty_like(out)
    for ax, d in enumerate(voxel_size):
        gi = g[ax]
        lo, hi, first, last = _axis_slices(ax)
        np.subtract(gi[lo], gi[hi], out=tmp[hi])
        np.subtract(gi[last], gi[first], out=tmp[first])
        if d != 1.0:
            tmp *= np.float32(1.0 / d)
        out += tmp
    return out


def shrink(x, t):
    """Soft thresholding (the proximal map of t·‖·‖₁): x − clip(x, −t, t).

    Parameters
    ----------
    x : ndarray
        Input.
    t : float or ndarray
        Threshold (≥ 0, units of x), broadcastable to x.

    Returns
    -------
    ndarray
        sign(x)·max(|x| − t, 0), shape of x.
    """
    return x - np.clip(x, -t, t)


def cg(apply_a, b, x0=None, tol=1e-2, max_iter=100):
    """Conjugate gradients for a symmetric positive (semi)definite operator on float32 arrays.

    Stops when ‖r‖ ≤ tol·‖b‖ or after ``max_iter`` iterations.

    Parameters
    ----------
    apply_a : callable
        ``apply_a(x) -> A·x``, an array of the shape of ``b``.
    b : ndarray
        Right-hand side (float32).
    x0 : ndarray, optional
        Initial guess (copied; default zeros).
    tol : float, default 1e-2
        Relative residual ‖r‖/‖b‖ to stop.
    max_iter : int, default 100
        Maximum number of iterations.

    Returns
    -------
    x : ndarray
        Solution, shape of ``b``.
    n_iter : int
        Iterations done (0 when the initial residual already meets ``tol``).
    """
    x = np.zeros_like(b) if x0 is None else x0.copy()
    r = b - apply_a(x) if x0 is not None else b.copy()
    p = r.copy()
    rs = float(np.vdot(r, r))
    bnorm = float(np.linalg.norm(b)) or 1.0
    it = 0
    for it in range(1, max_iter + 1):
        if np.sqrt(rs) <= tol * bnorm:
            it -= 1
            break
        ap = apply_a(p)
        alpha = rs / float(np.vdot(p, ap))
        x += np.float32(alpha) * p
        r -= np.float32(alpha) * ap
        rs_new = float(np.vdot(r, r))
        p *= np.float32(rs_new / rs)
        p += r
        rs = rs_new
    return x, it


def admm_tv(op, f_pad, w2=None, *, alpha, mu1, mu2=1.0, nonlinear=False,
            rad_per_ppm=DEFAULT_RAD_PER_PPM, tol=1e-2, max_iter=100, newton_iter=2,
            tv_weight=None):
    """ADMM for α‖∇χ‖₁ + data term on the padded grid of ``op``; returns padded χ (ppm).

    ``w2 is None``: unweighted ½‖Dχ − f‖², closed form per iteration with penalty ``mu1`` on
    z1 = ∇χ (Bilgic et al. 2014; one FFT pair per iteration). Otherwise the weighted data term
    ½‖W(Dχ − f)‖² (``w2`` = W², padded) or, with ``nonlinear``, 1/s²·½‖W(e^{isDχ} − e^{isf})‖²,
    through a second split z2 = Dχ with penalty ``mu2`` (Milovic et al. 2018; two FFT pairs per
    iteration; z2 by ``newton_iter`` Newton steps, only where W > 0). Stops when the relative
    change of χ is below ``tol``. Uses the identities z1 = v − clip(v), u1 = clip(v) for
    v = ∇χ + u1 (soft threshold at α/µ1), so only z1 − u1 is stored.

    Parameters
    ----------
    op : DipoleOp
        Padded grid, voxel size and forward kernel ``op.D`` (the dipole kernel, or another real
        half-spectrum kernel such as SS-TV's C·D).
    f_pad : ndarray, shape ``op.pshape``
        Field (ppm), zero-padded (float32).
    w2 : ndarray, shape ``op.pshape``, optional
        Squared data weight W² (0: no data); ``None`` for the unweighted data term.
    alpha : float
        TV weight (ppm·mm).
    mu1 : float
        ADMM penalty of z1 = ∇χ (unitless).
    mu2 : float, default 1.0
        ADMM penalty of z2 = Dχ (weighted data term only).
    nonlinear : bool, default False
        Complex-exponential data term (weighted data term only).
    rad_per_ppm : float, default :data:`DEFAULT_RAD_PER_PPM`
        s (rad/ppm) of the nonlinear data term.
    tol : float, default 1e-2
        Relative change ‖Δχ‖/‖χ‖ to stop.
    max_iter : int, default 100
        Maximum number of iterations.
    newton_iter : int, default 2
        Newton steps per z2 update (nonlinear only).
    tv_weight : ndarray, shape (3,) + ``op.pshape``, optional
        Per-gradient weight of the TV term (MEDI's edge mask: 0 on anatomical edges).

    Returns
    -------
    ndarray, shape ``op.pshape``
        Padded χ (ppm, float32, unreferenced: k = 0 is left 0); crop it with :func:`finish`.
    """
    vs = op.vs
    mu1_ = np.float32(mu1)
    mu2_ = np.float32(mu2)
    weighted = w2 is not None
    if weighted:
        denom = mu1_ * op.E2 + mu2_ * op.D**2
        idx = np.flatnonzero(w2 > 0)
        w2c = w2.ravel()[idx]
        fc = f_pad.ravel()[idx]
        z2c = fc.copy()
        u2c = np.zeros_like(fc)
        dchi = np.zeros(op.pshape, np.float32)
        s = np.float32(rad_per_ppm)
    else:
        denom = op.D**2 + mu1_ * op.E2
        dfk = op.fft(f_pad)
        dfk *= op.D
    denom[0, 0, 0] = 1.0
    inv_denom = (1.0 / denom).astype(np.float32)
    inv_denom[0, 0, 0] = 0.0  # k = 0 undetermined: left to the reference step
    del denom
    chi = np.zeros(op.pshape, np.float32)
    q = np.zeros((3,) + op.pshape, np.float32)  # z1 − u1
    u1 = np.zeros_like(q)
    g = np.empty_like(q)
    thr = np.float32(alpha / mu1)
    if tv_weight is not None:
        thr = (thr * tv_weight).astype(np.float32)
    for _ in range(int(max_iter)):
        rhs = op.fft(grad_adj(q, vs))
        rhs *= mu1_
        if weighted:
            t = dchi  # z2 − u2: Dχ where there is no data, z2c − u2c where there is
            t.ravel()[idx] = z2c - u2c
            t = op.fft(t)
            t *= op.D
            t *= mu2_
            rhs += t
            del t
        else:
            rhs += dfk
        rhs *= inv_denom
        new = op.ifft(rhs).astype(np.float32, copy=False)
        delta = float(np.linalg.norm(new - chi)) / (float(np.linalg.norm(new)) or 1.0)
        chi = new
        grad(chi, vs, out=g)
        g += u1                       # v = ∇χ + u1
        np.clip(g, -thr, thr, out=u1)  # u1 ← clip(v)
        g -= u1                       # z1 = v − clip(v)
        g -= u1                       # z1 − u1
        q, g = g, q
        if weighted:
            rhs *= op.D
            dchi = op.ifft(rhs).astype(np.float32, copy=False)
            yc = dchi.ravel()[idx]
            yc += u2c
            if nonlinear:
                for _ in range(int(newton_iter)):
                    arg = z2c - fc
                    arg *= s
                    h = np.sin(arg)
                    h *= w2c / s
                    h += mu2_ * (z2c - yc)
                    hp = np.cos(arg, out=arg)
                    hp *= w2c
                    hp += mu2_
                    np.maximum(hp, 0.5 * mu2_, out=hp)
                    h /= hp
                    z2c -= h
            else:
                z2c = (w2c * fc + mu2_ * yc) / (w2c + mu2_)
            u2c = yc - z2c
        if delta < tol:
            break
    return chi


def finish(chi_padded, op, mask):
    """Crop a padded solution back to the input grid and zero it outside the mask (float32).

    Parameters
    ----------
    chi_padded : ndarray, shape ``op.pshape``
        Padded χ (ppm).
    op : DipoleOp
        The operator whose grid ``chi_padded`` is on.
    mask : ndarray of bool, shape ``op.shape``
        Voxels to keep.

    Returns
    -------
    ndarray, shape ``op.shape``
        χ (ppm, float32), 0 outside ``mask``.
    """
    chi = op.crop(chi_padded)
    chi[~mask] = 0.0
    return chi.astype(np.float32, copy=False)

"""Background field removal: RESHARP, V-SHARP, PDF and LBV.

Every method takes the total field (any unit: Hz, ppm, rad — all operations are linear, the
output has the input's unit), the brain mask, the voxel size in mm per array axis (anisotropic
voxels are handled by the kernels of :mod:`qsmflow.physics`) and, where the physics needs it,
the B0 direction in voxel axes. Each returns ``(local_field, eroded_mask)``: the local field is
valid (and non-zero) only inside ``eroded_mask``. Values outside ``mask`` are ignored.

Work is done on float32 real FFTs of the mask's bounding box plus a margin of one kernel
radius (SHARP family) or of ``pad_mm`` (PDF), so a 164×205×205 volume needs well under 1 GB.
"""

from __future__ import annotations


import numpy as np
import scipy.fft as sfft
import scipy.linalg as sla
import scipy.sparse as sp
from scipy import ndimage

from . import physics

#: the background-removal registry: name → function (filled in at the end of the module); the
#: CLI's choices, the config check and the interface all read it
METHODS: dict = {}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _check_inputs(field, mask):
    f = np.asarray(field)
    if f.ndim != 3:
        raise ValueError(f"field must be a 3D volume, got shape {f.shape}")
    m = np.asarray(mask)
    if m.shape != f.shape:
        raise ValueError(f"mask shape {m.shape} differs from field shape {f.shape}")
    m = m.astype(bool)
    if not m.any():
        raise ValueError("mask is empty: compute a brain mask first (qsmflow.masking)")
    if m.all():
        raise ValueError("mask covers the whole field of view: background removal needs the "
                         "brain boundary; pass a brain mask (qsmflow.masking.magnitude_mask)")
    if not np.isfinite(f[m]).all():
        raise ValueError("field contains NaN/Inf inside the mask: fix the field map or exclude "
                         "those voxels from the mask")
    f = np.where(m, f, 0.0).astype(np.float32)
    return f, m


def _fast_shape(shape, extra):
    return tuple(sfft.next_fast_len(int(n) + int(e), real=True) for n, e in zip(shape, extra))


class _Grid:
    """Real-FFT helper on a zero-padded grid (float32 in, complex64 spectra)."""

    def __init__(self, shape, workers=None):
        self.shape = tuple(int(s) for s in shape)
        self.workers = workers or physics.fft_workers()

    def pad(self, x):
        return physics.pad_array(np.asarray(x, np.float32), self.shape)

    def half(self, kernel_full):
        return np.ascontiguousarray(kernel_full[..., : self.shape[2] // 2 + 1]).astype(np.float32)

    def fft(self, x):
        return sfft.rfftn(x, workers=self.workers)

    def ifft(self, xk):
        return sfft.irfftn(xk, s=self.shape, workers=self.workers).astype(np.float32, copy=False)

    def conv(self, x, k_half):
        return self.ifft(self.fft(x) * k_half)


def _ball(voxel_size, radius_mm):
    """The SMV kernel's support: ``(half-widths in voxels, boolean array, offset grids mm)``.

    The ball of ``radius_mm``; along an axis whose voxel is longer than the radius (thick
    slices) it reaches one voxel, i.e. the ellipsoid with semi-axes max(radius, voxel side). A
    ball flat in that axis would have no second moment there, and its moment correction would
    make RESHARP's deconvolution blow up (600 % local-field NRMSE with 2 mm on 3 mm slices)."""
    semi = [max(float(radius_mm), d) for d in voxel_size]
    r = [int(np.floor(a / d + 1e-9)) for a, d in zip(semi, voxel_size)]
    g = np.meshgrid(*[np.arange(-k, k + 1) * d for k, d in zip(r, voxel_size)], indexing="ij",
                    sparse=True)
    inside = sum((x / a) ** 2 for x, a in zip(g, semi)) <= 1.0 + 1e-9
    return r, inside, g


def _ball_count(voxel_size, radius_mm):
    return int(_ball(voxel_size, radius_mm)[1].sum())


def _smv_half(grid, voxel_size, radius_mm):
    """Half-spectrum SMV kernel of the binary ball (:func:`_ball`) plus a second-difference
    correction per axis that makes its second moments isotropic (equal to their mean; no change
    on isotropic voxels).

    The mean-value property of harmonic fields holds for a discrete kernel up to
    ``½·Σ_a M_aa ∂²_a f``; it vanishes for ∇²f = 0 only if all M_aa are equal. A binary ball on
    anisotropic voxels (e.g. 1.5 × 1.5 × 3 mm) has unequal moments, which leaves a first-order
    background residual that RESHARP's deconvolution amplifies. Returns ``(smv, ball)`` half
    spectra (the plain ball is used for erosion)."""
    if not radius_mm > 0:
        raise ValueError(f"SMV radius must be positive mm, got {radius_mm!r}")
    r, inside, g = _ball(voxel_size, radius_mm)
    if any(2 * k + 1 > n for k, n in zip(r, grid.shape)):
        raise ValueError(f"the mask vanishes when eroded by the {radius_mm} mm kernel (larger "
                         "than the mask): use a smaller radius")
    n = int(inside.sum())
    # the normalised ball centred at index 0 (wrap-around), real half spectrum: the same
    # kernel as physics.smv_kernel without its full complex FFT
    big = np.zeros(grid.shape, np.float32)
    big[tuple(slice(0, 2 * k + 1) for k in r)] = inside / np.float32(n)
    big = np.roll(big, [-k for k in r], axis=(0, 1, 2))
    ball = grid.fft(big).real.astype(np.float32)
    moments = [float((np.broadcast_to(g[ax] ** 2, inside.shape) * inside).sum() / n)
               for ax in range(3)]
    target = float(np.mean(moments))
    k = sfft.fftfreq(grid.shape[0]), sfft.fftfreq(grid.shape[1]), sfft.rfftfreq(grid.shape[2])
    smv = ball.astype(np.float64)
    for ax in range(3):
        beta = (target - moments[ax]) / voxel_size[ax] ** 2
        shp = [1, 1, 1]
        shp[ax] = -1
        smv = smv + beta * (np.cos(2 * np.pi * k[ax]) - 1.0).reshape(shp)
    return smv.astype(np.float32), ball


def _erode_smv(grid, mask_pad, s_half, n_ball):
    """Voxels whose whole SMV ball lies inside the mask."""
    return grid.conv(mask_pad, s_half) > 1.0 - 0.5 / n_ball


def smv_highpass(shape, mask_padded, voxel_size, radius_mm, workers=None):
    """The SHARP high-pass ``C = δ − SMV(radius_mm)`` on a zero-padded grid of ``shape``.

    ``c_half`` is its real half spectrum (moment-corrected SMV, as RESHARP uses) and ``eroded``
    the voxels of ``mask_padded`` whose whole ball lies inside it (where ``C·f`` of a field
    harmonic in the mask is 0).

    Parameters
    ----------
    shape : sequence of 3 int
        The zero-padded FFT grid.
    mask_padded : array_like, shape ``shape``
        Brain mask zero-padded to ``shape``.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    radius_mm : float
        SMV kernel radius (mm), > 0.
    workers : int, optional
        FFT threads (default :func:`qsmflow.physics.fft_workers`).

    Returns
    -------
    grid : _Grid
        The real-FFT helper on ``shape``.
    c_half : ndarray of float32, shape (shape[0], shape[1], shape[2] // 2 + 1)
        Half spectrum of ``C``.
    eroded : ndarray of bool, shape ``shape``
        The mask eroded by the kernel.

    Raises
    ------
    ValueError
        If ``radius_mm`` is not positive or the kernel is larger than the grid.
    """
    grid = _Grid(shape, workers)
    smv, ball = _smv_half(grid, voxel_size, radius_mm)
    mp = np.asarray(mask_padded, np.float32)
    eroded = _erode_smv(grid, mp, ball, _ball_count(voxel_size, radius_mm)) & (mp > 0)
    return grid, np.float32(1.0) - smv, eroded


def _vdot(a, b):
    return float(np.vdot(a, b).real)


def _cg(apply_a, b, tol, max_iter, x0=None, dot=_vdot, precond=None):
    """(Preconditioned) conjugate gradients for a symmetric positive (semi)definite operator
    (float32 or float64 vectors, float64 scalars; ``dot`` the inner product; ``precond`` applies an
    approximate inverse of the operator, symmetric positive definite). Stops when
    ‖r‖ ≤ tol·‖b‖. Returns ``(x, iterations)``."""
    x = np.zeros_like(b) if x0 is None else x0.copy()
    r = b - apply_a(x) if x0 is not None else b.copy()
    z = r if precond is None else precond(r)
    p = z.copy()
    rz = dot(r, z)
    bn = float(np.sqrt(dot(b, b)))
    if bn == 0:
        return x, 0
    real = x.real.dtype.type  # scalars in the vectors' precision (float32 or float64)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 -- the count is returned
        ap = apply_a(p)
        pap = dot(p, ap)
        if pap <= 0:
            break
        alpha = real(rz / pap)
        x += alpha * p
        r -= alpha * ap
        if np.sqrt(dot(r, r)) <= tol * bn:
            break
        z = r if precond is None else precond(r)
        rz_new = dot(r, z)
        p *= real(rz_new / rz)
        p += z
        rz = rz_new
    return x, it


def _paste(shape, box, sub, sub_shape, dtype):
    out = np.zeros(shape, dtype)
    out[box] = physics.crop_array(sub, sub_shape)
    return out


# --------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------
def default_resharp_radius(voxel_size) -> float:
    """Default RESHARP kernel radius (mm): 2 mm, and at least two of the smallest voxel side
    (4 mm at 2 mm, 6 mm at 3 mm).

    The outermost ~2 voxels of a brain mask hold field that is not harmonic (partial volume
    with bone and air), so a kernel of fewer voxels feeds it to the deconvolution (3 mm demo:
    MEDI 46 → 71 % with a 1-voxel kernel).

    Parameters
    ----------
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.

    Returns
    -------
    radius_mm : float
        Kernel radius (mm).

    Raises
    ------
    ValueError
        If ``voxel_size`` is not three positive finite values.
    """
    return max(2.0, 2.0 * min(physics.check_voxel_size(voxel_size)))


def default_resharp_lam(radius_mm) -> float:
    """Default RESHARP Tikhonov weight for a kernel of ``radius_mm`` (mm): 1e-4·(r / 6 mm)².

    ``1 − SMV_r`` is ∝ r² at low frequencies, so a smaller kernel needs a smaller λ to keep
    the same low-frequency content (1e-4 tuned at 6 mm, 1.1e-5 at 2 mm: whole head at 1 mm,
    local-field NRMSE 42 % vs 49 % with 1e-4).

    Parameters
    ----------
    radius_mm : float
        SMV kernel radius (mm).

    Returns
    -------
    lam : float
        Tikhonov weight (dimensionless, relative to the unit-gain kernel).
    """
    return 1e-4 * (float(radius_mm) / 6.0) ** 2


def _resharp_edge(voxel_size, radius_mm, edge_mm):
    """RESHARP's output depth (mm) or None (``M_e``) for ``edge_mm`` (a number, None, "auto")."""
    if isinstance(edge_mm, str):
        if edge_mm != "auto":
            raise ValueError(f"RESHARP edge_mm must be mm, None or 'auto', got {edge_mm!r}")
        return float(radius_mm) if max(voxel_size) > radius_mm else None
    if edge_mm is not None and not edge_mm >= 0:
        raise ValueError(f"RESHARP edge_mm must be >= 0 mm, got {edge_mm!r}")
    return edge_mm


def resharp(field, mask, voxel_size, b0_dir=None, *, radius_mm=None, lam=None, tol=1e-4,
            max_iter=300, edge_mm="auto", workers=None):
    """RESHARP (Sun & Wilman 2014): Tikhonov-regularised SHARP deconvolution.

    Solves ``min_x ‖M_e·C(x − f)‖² + λ‖x‖²`` with ``C = δ − SMV(radius_mm)`` and ``M_e`` the
    mask eroded by the kernel radius, by conjugate gradients on the normal equations
    ``(C M_e C + λ)x = C M_e C f`` (stopping at relative residual ``tol``), preconditioned by
    ``1/(C² + max(λ, 1e-3))``. CG runs on the half spectrum of x (two real FFTs per iteration).

    Parameters
    ----------
    field : array_like, shape (X, Y, Z)
        Total field (Hz, ppm or rad; the output has the same unit); values outside ``mask`` are
        ignored.
    mask : array_like of bool, shape (X, Y, Z)
        Brain mask (not empty, not the whole field of view).
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    b0_dir : sequence of 3 float, optional
        Unused (the SMV is isotropic).
    radius_mm : float, optional
        SMV kernel radius (mm); default :func:`default_resharp_radius` (2 mm on 1 mm voxels).
        The kernel reaches at least one voxel along each axis (see :func:`_ball`).
    lam : float, optional
        Tikhonov weight (> 0) relative to the unit-gain kernel; default
        :func:`default_resharp_lam` (1.1e-5 at 2 mm, 1e-4 at 6 mm).
    tol : float, default 1e-4
        Relative residual at which CG stops.
    max_iter : int, default 300
        Most CG iterations.
    edge_mm : float, None or "auto", default "auto"
        Return the local field where the mask is more than ``edge_mm`` (mm) deep (distance to
        the nearest voxel outside) instead of on ``M_e`` (``None``, the published method).
        ``"auto"``: ``M_e``, or ``radius_mm`` when a voxel side is longer than the radius (thick
        slices). See Notes.
    workers : int, optional
        FFT threads (default :func:`qsmflow.physics.fft_workers`).

    Returns
    -------
    local : ndarray of float64, shape (X, Y, Z)
        Local field (unit of ``field``), 0 outside ``eroded_mask``.
    eroded_mask : ndarray of bool, shape (X, Y, Z)
        Where ``local`` is valid.

    Raises
    ------
    ValueError
        If ``field`` is not 3D or contains NaN/Inf inside the mask; ``mask`` has another
        shape, is empty or covers the whole field of view; ``voxel_size`` is invalid;
        ``edge_mm`` is negative or another string than "auto"; ``radius_mm`` or ``lam`` is not
        positive; or the mask vanishes when eroded by the kernel.

    Notes
    -----
    The defaults were chosen on the whole-head simulations (docs/fieldmap.md): at 1 mm the mask
    loses 2 mm (91 % of the brain kept; 6 mm kept 72 %) at the best whole-brain local-field NRMSE
    of RESHARP, V-SHARP, PDF and LBV. ``edge_mm`` e.g. 2 keeps 93 % of a brain on 1.5 mm voxels
    with a 3 mm kernel at a better whole-brain NRMSE. ``"auto"`` uses ``radius_mm`` on thick
    slices (the kernel was stretched to one voxel there), so that 3 mm slices do not lose a
    whole slice at the top and the bottom of the brain (0.76×0.76×3 mm whole head: 93.6 % kept
    instead of 89.6 %). x is solved on the whole grid and the data term constrains it wherever a
    kernel centred in ``M_e`` reaches, i.e. in all of the mask, so a smaller ``edge_mm`` keeps
    cortex that ``M_e`` drops, at a larger error there.
    """
    f, m = _check_inputs(field, mask)
    vs = physics.check_voxel_size(voxel_size)
    radius_mm = default_resharp_radius(vs) if radius_mm is None else float(radius_mm)
    edge_mm = _resharp_edge(vs, radius_mm, edge_mm)
    lam = default_resharp_lam(radius_mm) if lam is None else lam
    if not lam > 0:
        raise ValueError(f"RESHARP lam must be > 0, got {lam!r}")
    rv = [int(np.ceil(radius_mm / d)) + 1 for d in vs]
    box = physics.bounding_box(m, rv)
    sub_shape = tuple(s.stop - s.start for s in box)
    shape = _fast_shape(sub_shape, rv)
    grid, c_half, me = smv_highpass(shape, physics.pad_array(m[box], shape), vs, radius_mm,
                                    workers)
    if not me.any():
        raise ValueError(f"the mask vanishes when eroded by the {radius_mm} mm kernel: use a "
                         "smaller radius_mm")
    mef = me.astype(np.float32)
    # weights of the half spectrum in Parseval's sum (the k_z = 0 and Nyquist planes count once)
    nz = grid.shape[2]
    wz = np.full(nz // 2 + 1, 2.0, np.float32)
    wz[0] = 1.0
    if nz % 2 == 0:
        wz[-1] = 1.0

    def dot(a, b):
        return float(np.sum(wz * (a.real * b.real + a.imag * b.imag), dtype=np.float64))

    def apply_a(y):
        return c_half * grid.fft(mef * grid.ifft(c_half * y)) + np.float32(lam) * y

    # preconditioner: the inverse of the operator for a mask covering the whole grid, with a
    # floor above λ (27 instead of ~100 iterations at 1 mm, same result at tol 1e-4)
    p_inv = (1.0 / (c_half * c_half + np.float32(max(lam, 1e-3)))).astype(np.float32)
    b = c_half * grid.fft(mef * grid.conv(grid.pad(f[box]), c_half))
    y, _ = _cg(apply_a, b, tol, max_iter, dot=dot, precond=lambda r: p_inv * r)
    x = grid.ifft(y)
    emask = _paste(f.shape, box, me, sub_shape, bool)
    if edge_mm is not None:
        emask = m & (ndimage.distance_transform_edt(m, sampling=vs) > edge_mm)
    local = np.where(emask, _paste(f.shape, box, x, sub_shape, np.float64), 0.0)
    return local, emask


def default_vsharp_radii(voxel_size, max_radius_mm=12.0):
    """V-SHARP radii (mm), largest first: from ``max_radius_mm`` down to one (largest) voxel,
    in steps of max(1 mm, largest voxel side).

    Parameters
    ----------
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    max_radius_mm : float, default 12.0
        Largest radius (mm).

    Returns
    -------
    radii_mm : list of float
        Kernel radii (mm), decreasing.

    Raises
    ------
    ValueError
        If ``voxel_size`` is invalid or ``max_radius_mm`` is below the largest voxel side.
    """
    vs = physics.check_voxel_size(voxel_size)
    step = max(1.0, max(vs))
    rmin = max(vs)
    radii = np.arange(max_radius_mm, rmin - 1e-6, -step)
    if radii.size == 0:
        raise ValueError(f"max_radius_mm {max_radius_mm} is below the voxel size {vs}")
    return [float(r) for r in radii]


def vsharp(field, mask, voxel_size, b0_dir=None, *, radii_mm=None, max_radius_mm=12.0,
           threshold=0.05, workers=None):
    """V-SHARP (Li et al. 2011; Wu et al. 2012): SHARP with a radius that shrinks toward the
    mask boundary, then truncated deconvolution with the largest kernel.

    For each radius r (largest first) the high-passed field ``(δ − SMV_r)·f`` is kept where the
    ball of radius r first fits inside the mask; the result is divided by ``1 − SMV_rmax`` in
    k-space where its magnitude exceeds ``threshold`` (TSVD).

    Parameters
    ----------
    field, mask, voxel_size
        Total field (any unit, kept), brain mask, voxel size (mm), as for :func:`resharp`.
    b0_dir : sequence of 3 float, optional
        Unused (the SMV is isotropic).
    radii_mm : sequence of float, optional
        Kernel radii (mm), any order; default :func:`default_vsharp_radii` (12 mm → 1 voxel).
    max_radius_mm : float, default 12.0
        Largest default radius (mm), when ``radii_mm`` is not given.
    threshold : float, default 0.05
        TSVD threshold on ``|1 − SMV_rmax|``.
    workers : int, optional
        FFT threads (default :func:`qsmflow.physics.fft_workers`).

    Returns
    -------
    local : ndarray of float64, shape (X, Y, Z)
        Local field (unit of ``field``), 0 outside ``eroded_mask``.
    eroded_mask : ndarray of bool, shape (X, Y, Z)
        The mask eroded by the smallest radius.

    Raises
    ------
    ValueError
        If ``field`` is not 3D or contains NaN/Inf inside the mask; ``mask`` has another
        shape, is empty or covers the whole field of view; ``voxel_size`` is invalid;
        a radius is not positive; ``max_radius_mm`` is below the voxel size; or the mask
        vanishes for every radius.
    """
    f, m = _check_inputs(field, mask)
    vs = physics.check_voxel_size(voxel_size)
    radii = sorted((float(r) for r in (radii_mm or default_vsharp_radii(vs, max_radius_mm))),
                   reverse=True)
    if radii[-1] <= 0:
        raise ValueError(f"V-SHARP radii must be positive mm, got {radii}")
    rv = [int(np.ceil(radii[0] / d)) + 1 for d in vs]
    box = physics.bounding_box(m, rv)
    sub_shape = tuple(s.stop - s.start for s in box)
    grid = _Grid(_fast_shape(sub_shape, rv), workers)
    mp = grid.pad(m[box])
    fk = grid.fft(grid.pad(f[box]))
    mk = grid.fft(mp)
    filt = np.zeros(grid.shape, np.float32)
    assigned = np.zeros(grid.shape, bool)
    c_max = None
    for r in radii:
        smv, ball = _smv_half(grid, vs, r)
        er = (grid.ifft(mk * ball) > 1.0 - 0.5 / _ball_count(vs, r)) & (mp > 0)
        new = er & ~assigned
        if new.any():
            hp = grid.ifft(fk * (np.float32(1.0) - smv))
            filt[new] = hp[new]
            assigned |= new
        if c_max is None:
            c_max = np.float32(1.0) - smv
    if not assigned.any():
        raise ValueError(f"the mask vanishes for every V-SHARP radius {radii}: give smaller radii")
    inv = np.where(np.abs(c_max) > threshold, 1.0 / np.where(c_max == 0, 1, c_max), 0.0)
    local = grid.ifft(grid.fft(filt) * inv.astype(np.float32)) * assigned
    return (_paste(f.shape, box, local, sub_shape, np.float64),
            _paste(f.shape, box, assigned, sub_shape, bool))


def pdf(field, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), *, weight=None, pad_mm=10.0,
        tol=None, max_iter=300, workers=None):
    """Projection onto dipole fields (Liu et al. 2011).

    Fits the field inside the mask with the dipole field (oblique kernel
    :func:`physics.dipole_kernel` with ``b0_dir``) of sources outside it,
    ``min_χ ‖W·M(f − D*(M̄χ))‖²``, by conjugate gradients; the local field is
    ``M·(f − D*(M̄χ))``. Sources live outside the mask in the field of view extended by
    ``pad_mm`` of zero padding on each side.

    Parameters
    ----------
    field, mask, voxel_size
        Total field (any unit, kept), brain mask, voxel size (mm), as for :func:`resharp`.
    b0_dir : sequence of 3 float, default (0, 0, 1)
        B0 direction, a unit vector in voxel axes.
    weight : array_like, shape (X, Y, Z), optional
        Reliability W, finite and non-negative in the mask (e.g. 1/noise from
        :func:`qsmflow.phase.fit_multi_echo`), normalised to mean 1 in the mask; default uniform.
    pad_mm : float, default 10.0
        Zero padding (mm) on each side of the field of view.
    tol : float, optional
        Relative residual at which CG stops; default 3e-3, or 1e-3 when B0 is more than 5° off
        an array axis (oblique kernels converge more slowly, and on the head phantom more
        iterations than that fit inconsistencies).
    max_iter : int, default 300
        Most CG iterations.
    workers : int, optional
        FFT threads (default :func:`qsmflow.physics.fft_workers`).

    Returns
    -------
    local : ndarray of float64, shape (X, Y, Z)
        Local field (unit of ``field``), 0 outside ``mask``.
    mask : ndarray of bool, shape (X, Y, Z)
        A copy of ``mask`` (PDF does not erode).

    Raises
    ------
    ValueError
        If ``field`` is not 3D or contains NaN/Inf inside the mask; ``mask`` has another
        shape, is empty or covers the whole field of view; ``voxel_size`` is invalid;
        ``b0_dir`` is not a non-zero finite 3-vector; or ``weight`` is not finite, non-negative
        and of the field's shape.
    """
    f, m = _check_inputs(field, mask)
    vs = physics.check_voxel_size(voxel_size)
    b = physics.check_b0_dir(b0_dir)
    if tol is None:
        tol = 3e-3 if np.max(np.abs(b)) > np.cos(np.radians(5.0)) else 1e-3
    padv = [int(np.ceil(pad_mm / d)) for d in vs]
    grid = _Grid(_fast_shape(f.shape, [2 * p for p in padv]), workers)
    off = tuple(slice(p, p + n) for p, n in zip(padv, f.shape))
    d_half = grid.half(physics.dipole_kernel(grid.shape, vs, b))
    m_in = np.zeros(grid.shape, np.float32)
    m_in[off] = m
    w2 = m_in.copy()
    if weight is not None:
        wt = np.asarray(weight, np.float64)
        if wt.shape != f.shape or not np.isfinite(wt[m]).all() or (wt[m] < 0).any():
            raise ValueError("PDF weight must be finite, non-negative and of the field's shape")
        wt = wt / max(float(np.mean(wt[m])), 1e-30)
        w2[off] = np.where(m, wt**2, 0.0)
    m_out = np.float32(1.0) - m_in
    fp = np.zeros(grid.shape, np.float32)
    fp[off] = f

    def apply_a(x):
        return m_out * grid.conv(w2 * grid.conv(m_out * x, d_half), d_half)

    rhs = m_out * grid.conv(w2 * fp, d_half)
    chi, _ = _cg(apply_a, rhs, tol, max_iter)
    bg = grid.conv(m_out * chi, d_half)
    local = ((fp - bg) * m_in)[off].astype(np.float64)
    return local, m.copy()


def _laplace_system(mask, voxel_size):
    """The 7-point Dirichlet Laplace problem on the interior of ``mask``.

    Interior = mask voxels whose six neighbours are in the mask; the other mask voxels are the
    boundary, where the value is given. Returns ``(interior, coords, a, boundary_weights)``:
    ``a`` the SPD matrix of −∇² on the interior unknowns (weights 1/d² per axis, mm⁻²) and
    ``boundary_weights(values)`` the right-hand side that boundary values contribute."""
    m = np.pad(mask, 1)
    inner = m.copy()
    for ax in range(3):
        inner &= np.roll(m, 1, ax) & np.roll(m, -1, ax)
    idx = np.full(m.shape, -1, np.int64)
    coords = np.nonzero(inner)
    n = coords[0].size
    idx[coords] = np.arange(n)
    rows, cols, vals, known = [], [], [], []
    diag = 2.0 * sum(1.0 / d**2 for d in voxel_size)
    for ax, d in enumerate(voxel_size):
        for step in (-1, 1):
            nb = list(coords)
            nb[ax] = nb[ax] + step
            j = idx[tuple(nb)]
            unk = j >= 0
            rows.append(np.nonzero(unk)[0])
            cols.append(j[unk])
            vals.append(np.full(int(unk.sum()), -1.0 / d**2))
            known.append((np.nonzero(~unk)[0], tuple(c[~unk] for c in nb), 1.0 / d**2))
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(np.full(n, diag))
    a = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n, n))

    def boundary_weights(values):
        v = np.pad(values.astype(np.float64), 1)
        rhs = np.zeros(n)
        for i, nb, w in known:
            rhs += np.bincount(i, w * v[nb], minlength=n)
        return rhs

    return inner[1:-1, 1:-1, 1:-1], np.stack(coords, 1), a, boundary_weights


class _AggregationMultigrid:
    """Aggregation multigrid V-cycle for an SPD grid matrix (a symmetric CG preconditioner).

    Aggregates are 2×2×2 blocks of the unknowns' voxel coordinates (an axis is coarsened only
    while its spacing is ≤ 1.5× the smallest, so thick slices are semi-coarsened);
    piecewise-constant prolongation P, coarse matrices PᵀAP, damped-Jacobi smoothing (2 + 2
    sweeps), a dense Cholesky solve below ``coarse_n`` unknowns. (Smoothed aggregation needs
    3× fewer CG iterations on the 1 mm head but its setup costs more than it saves.)"""

    def __init__(self, a, coords, spacing, coarse_n=2000, max_levels=12):
        self.levels = []
        h = np.asarray(spacing, float)
        while a.shape[0] > coarse_n and len(self.levels) < max_levels:
            factor = np.where(h <= 1.5 * h.min(), 2, 1)
            cc = coords // factor
            dims = cc.max(axis=0) + 1
            keys, inv = np.unique(np.ravel_multi_index(cc.T, dims), return_inverse=True)
            agg = np.stack(np.unravel_index(keys, dims), 1)
            inv = inv.ravel()
            dinv = 1.0 / a.diagonal()
            omega = 4.0 / (3.0 * self._rho(a, dinv))
            p = sp.csr_matrix((np.ones(a.shape[0]), (np.arange(a.shape[0]), inv)),
                              shape=(a.shape[0], agg.shape[0]))
            self.levels.append((a, p, omega * dinv))
            a = (p.T @ a @ p).tocsr()
            coords, h = agg, h * factor
        self.coarse = sla.cho_factor(a.toarray())

    @staticmethod
    def _rho(a, dinv, n_iter=15):
        """Largest eigenvalue of D⁻¹A (power iteration)."""
        x = np.random.default_rng(0).standard_normal(a.shape[0])
        lam = 2.0
        for _ in range(n_iter):
            y = dinv * (a @ x)
            lam = float(np.linalg.norm(y) / np.linalg.norm(x))
            x = y
        return lam

    def __call__(self, b, level=0):
        if level == len(self.levels):
            return sla.cho_solve(self.coarse, b)
        a, p, wd = self.levels[level]
        x = wd * b
        x += wd * (b - a @ x)
        x += p @ self(p.T @ (b - a @ x), level + 1)
        for _ in range(2):
            x += wd * (b - a @ x)
        return x


def lbv(field, mask, voxel_size, b0_dir=None, *, tol=1e-5, max_iter=200, peel_mm=0.0):
    """LBV (Zhou, Liu, Spincemaille & Wang 2014): Laplacian boundary value background removal.

    The background field inside the mask is harmonic; LBV takes it as the solution of
    ``∇²b = 0`` in the mask's interior with ``b = field`` on its boundary (mask voxels with a
    6-neighbour outside), and returns ``local = field − b`` on the interior. The 7-point
    Laplacian (anisotropic voxels weighted by 1/d²) is solved by conjugate gradients
    preconditioned with an aggregation multigrid V-cycle, to relative residual ``tol``.

    Parameters
    ----------
    field, mask, voxel_size
        Total field (any unit, kept), brain mask, voxel size (mm), as for :func:`resharp`.
    b0_dir : sequence of 3 float, optional
        Unused.
    tol : float, default 1e-5
        Relative CG residual (1e-5: ~18 iterations, 11 s for a 1 mm whole head on 2 cores;
        1e-4 gives the same local field to 0.1 %).
    max_iter : int, default 200
        Most CG iterations.
    peel_mm : float, default 0.0
        Erode the output mask by a further ``peel_mm`` (mm): the local field is assumed 0 on the
        boundary, so the outermost layers are the least accurate.

    Returns
    -------
    local : ndarray of float64, shape (X, Y, Z)
        Local field (unit of ``field``), 0 outside ``eroded_mask``.
    eroded_mask : ndarray of bool, shape (X, Y, Z)
        The mask's interior: one voxel layer less (+ ``peel_mm``).

    Raises
    ------
    ValueError
        If ``field`` is not 3D or contains NaN/Inf inside the mask; ``mask`` has another
        shape, is empty or covers the whole field of view; ``voxel_size`` is invalid;
        or the mask has no interior voxels.
    """
    f, m = _check_inputs(field, mask)
    vs = physics.check_voxel_size(voxel_size)
    box = physics.bounding_box(m, [1, 1, 1])
    inner, coords, a, boundary_weights = _laplace_system(m[box], vs)
    if not inner.any():
        raise ValueError("the mask has no interior voxels (every voxel touches its boundary): "
                         "LBV needs a thicker mask")
    fb = f[box].astype(np.float64)
    rhs = boundary_weights(np.where(m[box] & ~inner, fb, 0.0))
    mg = _AggregationMultigrid(a, coords, vs)
    x, _ = _cg(lambda y: a @ y, rhs, tol, max_iter, precond=mg)
    local = np.zeros(m.shape)
    local[box][inner] = fb[inner] - x
    emask = np.zeros(m.shape, bool)
    emask[box] = inner
    if peel_mm > 0:  # the interior is 1 voxel deep; keep what lies deeper than that + peel
        emask &= ndimage.distance_transform_edt(m, sampling=vs) > min(vs) + peel_mm
        local *= emask
    return local, emask


def coverage(mask, eroded_mask, voxel_size) -> dict:
    """How much of ``mask`` a method's ``eroded_mask`` keeps, for sidecars and reports.

    Parameters
    ----------
    mask, eroded_mask : array_like, shape (X, Y, Z)
        Brain mask and the background-removal output mask (non-zero = inside).
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.

    Returns
    -------
    coverage : dict
        ``{"BrainCoverage": fraction of the mask's voxels kept (0–1, 4 decimals),
        "BrainVolumeKept_ml": kept volume (ml), "BrainVolume_ml": the mask's volume (ml)}``
        (volumes to 0.1 ml).

    Raises
    ------
    ValueError
        If ``voxel_size`` is not three positive finite values.
    """
    m = np.asarray(mask) > 0
    kept = m & (np.asarray(eroded_mask) > 0)
    ml = float(np.prod(physics.check_voxel_size(voxel_size))) / 1000.0
    return {"BrainCoverage": round(float(kept.sum()) / max(int(m.sum()), 1), 4),
            "BrainVolumeKept_ml": round(float(kept.sum()) * ml, 1),
            "BrainVolume_ml": round(float(m.sum()) * ml, 1)}


def resolved_parameters(method, voxel_size, **params) -> dict:
    """``params`` with the voxel-size-dependent defaults filled in, for sidecars: what a run
    actually used.

    Parameters
    ----------
    method : str
        Background removal method (a key of :data:`METHODS`, any case).
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    **params
        The method's keyword parameters (see its function).

    Returns
    -------
    params : dict
        A copy of ``params``; for RESHARP with ``radius_mm`` (mm) and ``lam`` filled in when
        missing or None, and ``edge_mm`` resolved (mm, None = ``M_e``).

    Raises
    ------
    ValueError
        For RESHARP: if ``voxel_size`` is invalid or ``edge_mm`` is negative or another string
        than "auto".
    """
    out = dict(params)
    if str(method).lower() == "resharp":
        if out.get("radius_mm") is None:
            out["radius_mm"] = default_resharp_radius(voxel_size)
        if out.get("lam") is None:
            out["lam"] = default_resharp_lam(out["radius_mm"])
        out["edge_mm"] = _resharp_edge(physics.check_voxel_size(voxel_size), out["radius_mm"],
                                       out.get("edge_mm", "auto"))
    return out


def remove_background(method, field, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), *,
                      workers=None, **params):
    """Dispatch to :func:`resharp`, :func:`vsharp`, :func:`pdf` or :func:`lbv` by name
    (:data:`METHODS`; units in = out) → ``(local_field, eroded_mask)``.

    Parameters
    ----------
    method : {"resharp", "vsharp", "pdf", "lbv"}
        Method name (any case).
    field, mask, voxel_size
        Total field (any unit, kept), brain mask, voxel size (mm), as for :func:`resharp`.
    b0_dir : sequence of 3 float, default (0, 0, 1)
        B0 direction, a unit vector in voxel axes.
    workers : int, optional
        FFT threads (default: the enclosing :func:`qsmflow.physics.use_workers`, else the
        environment).
    **params
        The method's keyword parameters (see its function).

    Returns
    -------
    local_field : ndarray of float64, shape (X, Y, Z)
        Local field (unit of ``field``), 0 outside ``eroded_mask``.
    eroded_mask : ndarray of bool, shape (X, Y, Z)
        Where ``local_field`` is valid.

    Raises
    ------
    ValueError
        If ``method`` is unknown, or as raised by the method on bad input.
    """
    fn = METHODS.get(str(method).lower())
    if fn is None:
        raise ValueError(f"unknown background removal method {method!r}: use one of "
                         f"{', '.join(METHODS)}")
    with physics.use_workers(workers):
        return fn(field, mask, voxel_size, b0_dir, **params)


METHODS.update(resharp=resharp, vsharp=vsharp, pdf=pdf, lbv=lbv)

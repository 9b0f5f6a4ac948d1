"""Bring a field into the networks' frame (B0 along array axis 2) and χ back.

The networks were trained with B0 along array axis 2. :class:`B0Frame` maps a volume with any
B0 direction (unit vector in voxel axes) to that frame in two steps:

1. **permutation** (exact): the array axis closest to B0 is moved to axis 2 (``np.moveaxis``,
   the voxel size with it). No flip is needed: the dipole kernel 1/3 − (k·b̂)²/|k|² is even in
   b̂, so B0 along −axis 2 is the same problem as along +axis 2;
2. **rotation** (optional, approximate): the residual tilt (at most 54.7°, the angle of a cube
   diagonal) is removed by rotating the volume, in mm, about the axis perpendicular to b̂ and
   axis 2 (:func:`scipy.ndimage.affine_transform` onto a padded grid of the same voxel size).
   A field f = d_b̂ ∗ χ becomes f∘Rᵀ = d_ẑ ∗ (χ∘Rᵀ) exactly in the continuum; the grid adds the
   interpolation error of one resampling there and one back.

Values outside the mask are extrapolated over a few voxels before each resampling, so
interpolation at the brain edge does not mix with the zeros outside; the resampled grids are
cropped to the mask and to the rotated mask.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from .. import physics

#: residual tilt (degrees, after the permutation) below which the volume is not resampled
ROTATE_MIN_DEG = 1.0
#: voxel shells outside the mask extrapolated before a resampling
EXTEND_VOXELS = 3


def nearest_axis(b0_dir) -> int:
    """Array axis (0, 1, 2) with the largest |component| of ``b0_dir``.

    Parameters
    ----------
    b0_dir : sequence of 3 float
        B0 direction in voxel axes (normalised here).

    Returns
    -------
    int
        The array axis closest to B0 (sign ignored).

    Raises
    ------
    ValueError
        If ``b0_dir`` is not a finite, non-zero 3-vector.
    """
    return int(np.argmax(np.abs(physics.check_b0_dir(b0_dir))))


def tilt_deg(b0_dir, axis=2) -> float:
    """Angle (degrees) between ``b0_dir`` and array axis ``axis``, sign ignored.

    Parameters
    ----------
    b0_dir : sequence of 3 float
        B0 direction in voxel axes (normalised here).
    axis : int, default 2
        Array axis.

    Returns
    -------
    float
        Angle (degrees), in [0, 90].

    Raises
    ------
    ValueError
        If ``b0_dir`` is not a finite, non-zero 3-vector.
    """
    b = physics.check_b0_dir(b0_dir)
    return math.degrees(math.acos(min(1.0, abs(float(b[axis])))))


def rotation_to_axis2(b0_dir) -> np.ndarray:
    """Rotation matrix R (3×3) with R·b̂ = ±(0, 0, 1), about the axis b̂ × ẑ (Rodrigues).

    Parameters
    ----------
    b0_dir : sequence of 3 float
        B0 direction in voxel axes (normalised here).

    Returns
    -------
    ndarray, shape (3, 3)
        R, with R·b̂ = +ẑ if b̂ has a non-negative axis-2 component, else −ẑ; the identity when b̂
        is already along ±ẑ.

    Raises
    ------
    ValueError
        If ``b0_dir`` is not a finite, non-zero 3-vector.
    """
    b = physics.check_b0_dir(b0_dir)
    b = b if b[2] >= 0 else -b
    u = np.cross(b, (0.0, 0.0, 1.0))
    s, c = float(np.linalg.norm(u)), float(b[2])
    if s < 1e-12:
        return np.eye(3)
    k = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]]) / s
    return np.eye(3) + s * k + (1.0 - c) * (k @ k)


def extend_outside(x, mask, width=EXTEND_VOXELS) -> np.ndarray:
    """``x`` in ``mask``; outside, ``width`` shells filled in turn with the mean of their
    already filled 3×3×3 neighbours; 0 beyond (float32).

    Parameters
    ----------
    x : array_like, shape (X, Y, Z)
        Values to extend (any unit; kept in ``mask``).
    mask : array_like of bool, shape (X, Y, Z)
        Where ``x`` is valid.
    width : int, default :data:`EXTEND_VOXELS`
        Number of one-voxel shells (face-neighbour dilations) filled outside ``mask``.

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        ``x`` extended over ``width`` shells, 0 beyond.
    """
    m = np.asarray(mask, bool).copy()
    out = np.where(m, x, 0.0).astype(np.float32)
    for _ in range(int(width)):
        shell = ndi.binary_dilation(m) & ~m
        num = ndi.uniform_filter(out, 3)[shell]
        out[shell] = num / ndi.uniform_filter(m.astype(np.float32), 3)[shell]
        m |= shell
    return out


class B0Frame:
    """Geometry that maps a volume (``mask`` of its brain, ``voxel_size`` in mm, ``b0_dir`` in
    voxel axes) to the networks' frame and back.

    ``rotate``: also remove the residual tilt by resampling (``order``: spline order, 1 linear,
    3 cubic) onto a grid of the same voxel size around the rotated mask; otherwise only the
    exact permutation is applied and the network sees B0 up to 54.7° off its axis (an
    approximation). Attributes: ``axis`` (moved to axis 2), ``tilt_deg`` (residual tilt after
    the permutation), ``rotated``, ``voxel_size`` (network frame, mm), ``mask_net``.
    """

    def __init__(self, mask, voxel_size, b0_dir, *, rotate=True, order=3):
        vs = np.asarray(physics.check_voxel_size(voxel_size), float)
        b = physics.check_b0_dir(b0_dir)
        self.mask = np.asarray(mask) > 0
        self.axis = nearest_axis(b)
        perm = [a for a in range(3) if a != self.axis] + [self.axis]  # the order np.moveaxis gives
        self.b0_perm, self.vs_perm = b[perm], vs[perm]
        self.tilt_deg = tilt_deg(self.b0_perm)
        self.rotated = bool(rotate) and self.tilt_deg > ROTATE_MIN_DEG and self.mask.any()
        self.order = int(order)
        self.voxel_size = tuple(float(v) for v in self.vs_perm)
        m = self._permute(self.mask)
        if self.rotated:
            self._setup_rotation(m)
            m = self._resample(m[self._crop].astype(np.float32), self._fwd, self._fwd_off,
                               self.net_shape, 1) > 0.5
        self.mask_net = m

    def _permute(self, x):
        return np.ascontiguousarray(np.moveaxis(x, self.axis, 2))

    def _setup_rotation(self, m):
        """Crop around the mask, and a grid (same voxel size) around the rotated mask; index
        maps between the crop (i) and the network grid (o): o = B·i + b, i = A·o + a, with
        B = diag(1/vs)·R·diag(vs) and A = B⁻¹."""
        vs, rot = self.vs_perm, rotation_to_axis2(self.b0_perm)
        margin = EXTEND_VOXELS + 2  # the filled shell plus the cubic spline's reach
        idx = np.argwhere(m)
        lo_in = np.maximum(idx.min(0) - margin, 0)
        self._crop = tuple(slice(int(a), int(z)) for a, z in
                           zip(lo_in, np.minimum(idx.max(0) + 1 + margin, m.shape)))
        self._back = np.diag(1 / vs) @ rot @ np.diag(vs)
        self._fwd = np.diag(1 / vs) @ rot.T @ np.diag(vs)
        o = (idx - lo_in) @ self._back.T
        lo = np.floor(o.min(0)) - margin
        self.net_shape = tuple(int(n) for n in np.ceil(o.max(0)) + margin - lo + 1)
        self._back_off, self._fwd_off = -lo, self._fwd @ lo

    def net_index(self, index) -> np.ndarray:
        """Network-frame voxel coordinates (float) of voxel ``index`` of the input array.

        Parameters
        ----------
        index : sequence of 3 float
            Voxel coordinates in the input array.

        Returns
        -------
        ndarray, shape (3,)
            The coordinates in the network frame (permuted, and rotated when :attr:`rotated`).
        """
        i = np.asarray(index, float)[[a for a in range(3) if a != self.axis] + [self.axis]]
        if not self.rotated:
            return i
        return self._back @ (i - [s.start for s in self._crop]) + self._back_off

    def to_network(self, field) -> tuple[np.ndarray, np.ndarray]:
        """``(field, mask)`` in the network frame (field float32 in the field's unit, mask bool).

        Parameters
        ----------
        field : array_like, shape (X, Y, Z)
            Field on the input grid (e.g. ppm); values outside the mask are ignored.

        Returns
        -------
        field : ndarray, float32
            The field in the network frame, shape of :attr:`mask_net`.
        mask : ndarray of bool
            :attr:`mask_net`.
        """
        f = self._permute(np.where(self.mask, np.asarray(field, np.float32), 0.0))
        if self.rotated:
            m = self._permute(self.mask)[self._crop]
            f = self._resample(extend_outside(f[self._crop], m), self._fwd, self._fwd_off,
                               self.net_shape, self.order)
        return f, self.mask_net

    def from_network(self, chi_net) -> np.ndarray:
        """χ (valid in :attr:`mask_net`) from the network frame on the input grid (float32, 0
        outside the mask).

        Parameters
        ----------
        chi_net : array_like
            χ (e.g. ppm) in the network frame, shape of :attr:`mask_net`.

        Returns
        -------
        ndarray, shape (X, Y, Z), float32
            χ on the input grid, 0 outside the input mask.
        """
        x = np.asarray(chi_net, np.float32)
        if self.rotated:
            full = np.zeros(self._permute(self.mask).shape, np.float32)
            shape = tuple(s.stop - s.start for s in self._crop)
            full[self._crop] = self._resample(extend_outside(x, self.mask_net), self._back,
                                              self._back_off, shape, self.order)
            x = full
        return np.where(self.mask, np.moveaxis(x, 2, self.axis), 0.0).astype(np.float32)

    @staticmethod
    def _resample(x, matrix, offset, shape, order):
        return ndi.affine_transform(x, matrix, offset, output_shape=shape, order=order,
                                    mode="constant", cval=0.0, prefilter=order > 1).astype(np.float32)

    def describe(self) -> str:
        """One line for logs and sidecars: what was done to bring B0 along the network's axis.

        Returns
        -------
        str
            The permutation and, if the tilt exceeds :data:`ROTATE_MIN_DEG`, whether it was rotated
            away or ignored.
        """
        what = f"array axis {self.axis} moved to axis 2" if self.axis != 2 else "no permutation"
        if self.rotated:
            return (f"{what}; residual {self.tilt_deg:.1f}° tilt removed by rotating the field "
                    f"(spline order {self.order}) and χ back")
        if self.tilt_deg > ROTATE_MIN_DEG:
            return f"{what}; residual {self.tilt_deg:.1f}° tilt ignored (approximation)"
        return what

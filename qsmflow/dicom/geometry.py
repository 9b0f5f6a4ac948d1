"""DICOM slice geometry ↔ NIfTI affine, in dcm2niix's array layout.

Layout (what ``dcm2niix`` writes for a classic 2D slice stack): array axis 0 = DICOM column
index, axis 1 = DICOM row index *reversed* (dcm2niix flips rows so images are not upside down),
axis 2 = slices in increasing order along the slice normal (row direction × column direction).
3D acquisitions (``MRAcquisitionType`` 3D) are then, as dcm2niix does by default, rotated to
the closest canonical RAS+ voxel order (axis permutation/flips only, no resampling).
World coordinates are NIfTI RAS+ mm (DICOM LPS with x and y negated); the affine maps voxel
centres, like DICOM's ImagePositionPatient.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_TOL_MM = 1e-3


def slice_normal(orientation) -> np.ndarray:
    """Unit slice normal (LPS) of an ImageOrientationPatient (row dir, column dir).

    Parameters
    ----------
    orientation : array_like, shape (6,)
        ImageOrientationPatient: row then column direction cosines (LPS).

    Returns
    -------
    numpy.ndarray, shape (3,)
        Row direction × column direction, normalised (LPS).
    """
    o = np.asarray(orientation, float)
    n = np.cross(o[:3], o[3:])
    return n / np.linalg.norm(n)


def order_slices(positions, orientation) -> tuple[np.ndarray, np.ndarray]:
    """→ ``(order, distances)``: indices sorting ``positions`` (N×3 LPS mm) along the normal, and the
    sorted distances along it (mm).

    Parameters
    ----------
    positions : array_like, shape (N, 3)
        ImagePositionPatient of each image (LPS mm).
    orientation : array_like, shape (6,)
        ImageOrientationPatient of the images (:func:`slice_normal`).

    Returns
    -------
    order : numpy.ndarray, shape (N,)
        Indices into ``positions`` by increasing distance (stable for ties).
    distances : numpy.ndarray, shape (N,)
        The sorted distances along the normal (mm).
    """
    d = np.asarray(positions, float) @ slice_normal(orientation)
    order = np.argsort(d, kind="stable")
    return order, d[order]


def check_slice_spacing(distances, label: str, slice_thickness=None) -> float:
    """Uniform spacing (mm) of sorted slice distances, or a ``ValueError`` naming the gap.

    Parameters
    ----------
    distances : array_like, shape (N,)
        Slice distances along the normal, sorted increasing (mm; :func:`order_slices`).
    label : str
        Names the series in error messages.
    slice_thickness : float, optional
        Spacing (mm) to return when there is a single slice.

    Returns
    -------
    float
        The median slice step (mm); ``slice_thickness`` for a single slice.

    Raises
    ------
    ValueError
        A single slice without a positive ``slice_thickness``; two slices at the same position (less
        than 0.001 mm apart); or a step that differs from the median by more than max(0.001 mm, 1 %)
        (missing slices or irregular spacing).
    """
    d = np.asarray(distances, float)
    if d.size < 2:
        if slice_thickness is None or not slice_thickness > 0:
            raise ValueError(f"{label}: one slice and no SliceThickness; cannot build the geometry, "
                             "export the whole series")
        return float(slice_thickness)
    steps = np.diff(d)
    if np.any(steps < _TOL_MM):
        i = int(np.argmin(steps))
        raise ValueError(f"{label}: two images at the same slice position ({d[i]:.3f} mm along the "
                         "normal); remove duplicate files or split the series")
    step = float(np.median(steps))
    bad = np.abs(steps - step) > max(_TOL_MM, 0.01 * step)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        n_missing = int(round(steps[i] / step)) - 1
        what = (f"{n_missing} slice(s) missing between {d[i]:.3f} and {d[i + 1]:.3f} mm"
                if n_missing >= 1 else f"irregular slice spacing ({steps[i]:.3f} mm vs {step:.3f} mm)")
        raise ValueError(f"{label}: {what} along the slice normal; re-export the complete series")
    return step


def affine_from_dicom(orientation, first_position, pixel_spacing, slice_step, rows) -> np.ndarray:
    """NIfTI RAS+ affine (dcm2niix layout) of a slice stack.

    Parameters
    ----------
    orientation : array_like, shape (6,)
        ImageOrientationPatient (row, column direction cosines; LPS).
    first_position : array_like, shape (3,)
        ImagePositionPatient of the first slice along the normal (LPS mm).
    pixel_spacing : sequence of float
        PixelSpacing: (row spacing, column spacing) in mm.
    slice_step : array_like, shape (3,)
        LPS vector (mm) from one slice to the next.
    rows : int
        Number of rows of a slice.

    Returns
    -------
    numpy.ndarray, shape (4, 4)
        Voxel index (column, reversed row, slice) → RAS+ mm of the voxel centre.
    """
    o = np.asarray(orientation, float)
    x, y = o[:3] / np.linalg.norm(o[:3]), o[3:] / np.linalg.norm(o[3:])
    dr, dc = float(pixel_spacing[0]), float(pixel_spacing[1])
    lps = np.eye(4)
    lps[:3, 0] = x * dc
    lps[:3, 1] = -y * dr                     # rows reversed
    lps[:3, 2] = np.asarray(slice_step, float)
    lps[:3, 3] = np.asarray(first_position, float) + (rows - 1) * dr * y
    return LPS_TO_RAS @ lps


def pixels_to_nifti(pixel_array) -> np.ndarray:
    """One DICOM slice (rows, columns) → NIfTI in-plane layout (columns, reversed rows).

    Parameters
    ----------
    pixel_array : array_like, shape (rows, columns)
        One slice in DICOM pixel order.

    Returns
    -------
    numpy.ndarray, shape (columns, rows)
        A view: axis 0 = column index, axis 1 = row index reversed.
    """
    return np.asarray(pixel_array).T[:, ::-1]


def nifti_to_pixels(plane) -> np.ndarray:
    """Inverse of :func:`pixels_to_nifti`: (columns, reversed rows) → (rows, columns).

    Parameters
    ----------
    plane : array_like, shape (columns, rows)
        One slice in NIfTI in-plane layout.

    Returns
    -------
    numpy.ndarray, shape (rows, columns)
        The slice in DICOM pixel order, C-contiguous.
    """
    return np.ascontiguousarray(np.asarray(plane)[:, ::-1].T)


def dicom_slices_from_affine(affine, shape) -> tuple[np.ndarray, list[np.ndarray], tuple]:
    """Inverse of :func:`affine_from_dicom` for export.

    Refuses an affine with sheared axes (not representable in classic DICOM).

    Parameters
    ----------
    affine : array_like, shape (4, 4)
        NIfTI RAS+ affine (mm), dcm2niix layout.
    shape : sequence of int
        Array shape; axis 1 is the (reversed) rows, axis 2 the slices.

    Returns
    -------
    orientation : numpy.ndarray, shape (6,)
        ImageOrientationPatient (row, column direction cosines; LPS).
    positions : list of numpy.ndarray
        ImagePositionPatient (LPS mm, shape (3,)) of each array slice k.
    pixel_spacing : tuple of float
        (row spacing, column spacing) in mm.

    Raises
    ------
    ValueError
        An axis of the affine has zero length, or the axes are not orthogonal (sheared).
    """
    a = LPS_TO_RAS @ np.asarray(affine, float)  # RAS -> LPS (the diag matrix is its own inverse)
    m = a[:3, :3]
    zooms = np.linalg.norm(m, axis=0)
    if np.any(zooms <= 0):
        raise ValueError("affine has a zero-length axis; fix the NIfTI header before export")
    u = m / zooms
    if abs(u[:, 0] @ u[:, 1]) > 1e-4 or abs(u[:, 0] @ u[:, 2]) > 1e-4 or abs(u[:, 1] @ u[:, 2]) > 1e-4:
        raise ValueError("affine axes are not orthogonal (sheared); resample the map to an "
                         "orthogonal grid before DICOM export")
    x, y = u[:, 0], -u[:, 1]
    rows = int(shape[1])
    positions = [a[:3, 3] + (rows - 1) * a[:3, 1] + k * a[:3, 2] for k in range(int(shape[2]))]
    return np.concatenate([x, y]), positions, (float(zooms[1]), float(zooms[0]))


def to_closest_canonical(data, affine) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip the first three axes of ``data`` to the closest RAS+ order (as dcm2niix does for
    3D acquisitions) → ``(data, affine)``. No resampling; trailing axes (echoes) kept.

    Parameters
    ----------
    data : numpy.ndarray
        Array of three or more dimensions; the first three are spatial.
    affine : numpy.ndarray, shape (4, 4)
        Its NIfTI RAS+ affine (mm).

    Returns
    -------
    data : numpy.ndarray
        The reoriented array.
    affine : numpy.ndarray, shape (4, 4)
        Its affine (the same voxel centres at the same RAS+ positions).
    """
    ornt = nib.io_orientation(affine)
    out = nib.orientations.apply_orientation(data, ornt)
    return out, affine @ nib.orientations.inv_ornt_aff(ornt, data.shape[:3])

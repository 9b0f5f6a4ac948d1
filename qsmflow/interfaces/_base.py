"""Shared helpers of the interfaces: output names, geometry, threads, memory estimates."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from nipype.interfaces.base import isdefined

from ..bids import AFFINE_TOL_MM, affine_difference_mm
from ..io import load_nifti
from ..physics import b0_direction_from_affine, voxel_size_from_affine

#: bytes of one float64 voxel
_F8 = 8


def estimate_mem_gb(n_voxels: int, n_arrays: float, floor_gb: float = 0.25) -> float:
    """Memory (GB) of a step that holds ``n_arrays`` float64 copies of an ``n_voxels`` volume
    (padded FFT grids count as ~8 copies), plus a Python/NumPy floor."""
    return round(floor_gb + n_voxels * _F8 * float(n_arrays) / 1024**3, 2)


def out_file(name: str) -> str:
    """Absolute path of an output in the node's working directory (the cwd while it runs)."""
    return str(Path(os.getcwd()) / name)


def geometry(affine, b0_dir=None):
    """(voxel size mm, B0 direction in voxel axes) of an image; a sidecar ``B0_dir`` wins."""
    b = b0_dir if (b0_dir is not None and isdefined(b0_dir) and len(b0_dir)) else None
    return voxel_size_from_affine(affine), b0_direction_from_affine(affine, b)


def load_on_grid(path, ref_path, shape, affine, dtype=np.float64):
    """The data of ``path``, refused (``ValueError`` naming both files and the fix) unless it is
    on the grid of ``ref_path``: the same 3D shape and an affine within ``AFFINE_TOL_MM`` mm."""
    data, aff, _ = load_nifti(path, dtype=dtype)
    diff = affine_difference_mm(aff, affine)
    if tuple(data.shape[:3]) != tuple(shape[:3]) or diff > AFFINE_TOL_MM:
        raise ValueError(f"{path}: not on the grid of {ref_path} (shape {tuple(data.shape[:3])} "
                         f"vs {tuple(shape[:3])}, affines differ by up to {diff:.3g} mm); "
                         "resample it onto that grid")
    return data


def opt(value):
    """Nipype's Undefined → None."""
    return value if isdefined(value) else None


def jsonable(d: dict) -> dict:
    """Parameters for a sidecar: numpy scalars → Python, arrays → their shape."""
    out = {}
    for k, v in d.items():
        if isinstance(v, np.ndarray):
            v = f"array{list(v.shape)}"
        elif isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out

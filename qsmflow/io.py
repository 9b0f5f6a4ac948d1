"""File I/O shared by every layer: atomic NIfTI/JSON writing, safe loading, BIDS validation.

Outputs appear whole or not at all: each writer writes to a hidden temporary file in the target
folder and renames it into place (``os.replace`` is atomic on one file system).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_target(path: Path, suffix: str):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual permissions
    return path, Path(tmp)


def write_json(path, data: dict) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically.

    Missing parent folders are created; numpy scalars and arrays and ``Path`` objects are
    converted to JSON types.

    Parameters
    ----------
    path : str or Path
        Target file.
    data : dict
        JSON-serialisable content.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TypeError
        If a value is not JSON serialisable.
    """
    path, tmp = _atomic_target(path, ".json")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_nifti(path, data, affine, header=None, sidecar: dict | None = None, dtype=None) -> Path:
    """Save ``data`` with ``affine`` to ``path`` (``.nii`` or ``.nii.gz``) atomically.

    ``sidecar`` (a dict) is written next to it as ``<stem>.json``. ``dtype`` defaults to
    float32 for floating data, uint8 for booleans, and the array's own type otherwise. The
    qform and sform are both set to ``affine`` (code 1), the units to mm and s.

    Parameters
    ----------
    path : str or Path
        Target file; a name ending in ``.nii.gz`` is gzip-compressed, any other is plain NIfTI-1.
    data : array_like
        Image, e.g. (X, Y, Z) or (X, Y, Z, E), in its own unit (stored unscaled).
    affine : array_like, shape (4, 4)
        Voxel → RAS+ world (mm) affine.
    header : nibabel.Nifti1Header, optional
        Header to copy the other fields from (its scaling is reset to slope 1, intercept 0).
    sidecar : dict, optional
        JSON sidecar content, written to :func:`sidecar_path` of ``path``.
    dtype : dtype, optional
        On-disk data type; default as above.

    Returns
    -------
    Path
        ``path``.
    """
    arr = np.asarray(data)
    if dtype is None:
        dtype = np.uint8 if arr.dtype == bool else (np.float32 if arr.dtype.kind == "f" else arr.dtype)
    arr = arr.astype(dtype, copy=False)
    img = nib.Nifti1Image(arr, np.asarray(affine, float), header=header)
    img.set_data_dtype(dtype)
    if header is not None:  # keep the source geometry codes, drop scaling of the source
        img.header.set_slope_inter(1.0, 0.0)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(np.asarray(affine, float), code=1)
    img.set_sform(np.asarray(affine, float), code=1)
    path = Path(path)
    ext = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    path, tmp = _atomic_target(path, ext)
    try:
        nib.save(img, tmp)
        if sidecar is not None:
            write_json(sidecar_path(path), sidecar)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def sidecar_path(nifti_path) -> Path:
    """``x.nii.gz`` / ``x.nii`` → ``x.json``.

    Parameters
    ----------
    nifti_path : str or Path
        Path of a NIfTI file (any other suffix is replaced by ``.json``).

    Returns
    -------
    Path
        Path of the JSON sidecar in the same folder.
    """
    p = Path(nifti_path)
    name = p.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return p.with_name(name[: -len(ext)] + ".json")
    return p.with_suffix(".json")


def load_nifti(path, dtype=np.float64):
    """Load a NIfTI → ``(data, affine, header)``; a clear ``ValueError`` names a broken file.

    Parameters
    ----------
    path : str or Path
        NIfTI file (``.nii`` or ``.nii.gz``).
    dtype : dtype or None, optional
        Type of the returned data (after the header's scaling); default float64; ``None`` keeps
        the type nibabel gives.

    Returns
    -------
    data : ndarray
        Image array, e.g. (X, Y, Z) or (X, Y, Z, E).
    affine : ndarray, shape (4, 4)
        Voxel → world (mm) affine of the image.
    header : nibabel.Nifti1Header
        The file's header.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be read (truncated, corrupt, not NIfTI).
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=dtype) if dtype is not None else np.asanyarray(img.dataobj)
    except FileNotFoundError:
        raise
    except Exception as exc:  # nibabel raises many types for truncated / corrupt files
        raise ValueError(f"{path}: cannot read this NIfTI file ({exc}); re-export or replace it") from exc
    return data, img.affine, img.header


def load_json(path) -> dict:
    """Load a JSON sidecar; a clear ``ValueError`` names a broken file. Missing file → {}.

    Parameters
    ----------
    path : str or Path
        JSON file.

    Returns
    -------
    dict
        The parsed content, or ``{}`` when the file does not exist.

    Raises
    ------
    ValueError
        If the file is not valid JSON.
    """
    path = Path(path)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc}); fix the sidecar") from exc


def run_bids_validator(dataset_dir, timeout: float = 600) -> tuple[list[dict], list[dict]]:
    """Run the official BIDS validator (``bids-validator-deno``) → ``(errors, warnings)``.

    Each issue is the validator's JSON dict (code, location, ...).

    Parameters
    ----------
    dataset_dir : str or Path
        Root folder of the BIDS dataset.
    timeout : float, optional
        Time limit of the validator run (s); default 600.

    Returns
    -------
    errors : list of dict
        Issues of severity ``error``.
    warnings : list of dict
        Issues of severity ``warning``.

    Raises
    ------
    RuntimeError
        If the validator is not installed (``pip install bids-validator-deno``) or gives no JSON.
    subprocess.TimeoutExpired
        If the validator runs longer than ``timeout``.
    """
    exe = shutil.which("bids-validator-deno")
    if exe is None:
        raise RuntimeError("bids-validator-deno not found: pip install bids-validator-deno, "
                           "or pass --skip-bids-validation")
    proc = subprocess.run([exe, str(dataset_dir), "--json"], capture_output=True, text=True,
                          timeout=timeout, check=False)
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"BIDS validator gave no JSON (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[:500]}") from exc
    issues = out.get("issues", {}).get("issues", [])
    errors = [i for i in issues if i.get("severity") == "error"]
    warnings = [i for i in issues if i.get("severity") == "warning"]
    return errors, warnings

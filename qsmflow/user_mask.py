"""User-supplied brain masks (``--derivatives DIR ...``), as in fMRIPrep's precomputed derivatives.

A BIDS derivatives dataset (e.g. from SynthStrip or FreeSurfer) may hold, per acquisition,
``sub-<l>[/ses-<s>]/anat/<source entities>[_space-orig]_desc-brain_mask.nii[.gz]`` (source
entities: ``sub-<l>[_ses-<s>][_acq-<a>][_rec-<r>][_run-<n>]``, as the echoes have them) on the
grid of the GRE echoes. Such a mask is used instead of computing one.

Two layers: array checks (:func:`binary_mask`, :func:`grid_mismatch_mm`; ``ValueError``) that
the workflow's ``UserBrainMask`` node also uses, and the up-front lookup of every acquisition's
mask (:func:`attach_user_masks`; :class:`~qsmflow.bids.InputError` with one line naming
the file and the fix) that runs before anything is written.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from .bids import AFFINE_TOL_MM, Acquisition, InputError, affine_difference_mm, parse_filename

LOG = logging.getLogger("qsmflow")

#: largest difference (mm) between any entry of the mask's and the echoes' affine
#: ``space-`` labels that name the acquisition's own grid (anything else is ignored)
NATIVE_SPACES = ("orig", "native")
#: entities of a mask's name that do not take part in matching it to an acquisition (every
#: other one, e.g. acq, rec, run, ce, must equal the acquisition's; absent = absent)
_NOT_MATCHED = frozenset({"sub", "ses", "space", "desc", "echo", "part"})
_PATTERN = "*_desc-brain_mask.nii*"
_FIX_GRID = ("resample it to the GRE echoes with nearest-neighbour interpolation (e.g. "
             "antsApplyTransforms -n NearestNeighbor), or drop it from --derivatives")


@dataclass(frozen=True)
class UserMask:
    """A user-supplied brain mask found for one acquisition."""

    path: str        # absolute path of the mask file
    dataset: str     # DatasetLinks key of its derivatives dataset
    relpath: str     # path inside that dataset (POSIX)

    @property
    def uri(self) -> str:
        """BIDS URI ``bids:<dataset>:<relpath>`` (the dataset is in ``DatasetLinks``)."""
        return f"bids:{self.dataset}:{self.relpath}"

    @property
    def name(self) -> str:
        return Path(self.path).name


def binary_mask(data) -> np.ndarray:
    """A mask image's values → bool array (brain = True); ``ValueError`` when not binary.

    Accepted: values 0 and 1 only (any dtype), or an integer/boolean image with exactly two
    values, 0 and one positive label (e.g. 0/255). Refused: intermediate values (a probabilistic
    mask), negative or non-finite values, more than two values, no brain voxel.

    Parameters
    ----------
    data : array_like, shape (X, Y, Z) or (X, Y, Z, 1)
        Mask image values.

    Returns
    -------
    mask : ndarray of bool, shape (X, Y, Z)
        True where ``data`` is non-zero.

    Raises
    ------
    ValueError
        If ``data`` is not a 3D volume, holds NaN/Inf, has no non-zero voxel, or is not binary.
    """
    arr = np.asanyarray(data)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"the mask has shape {arr.shape}, not a 3D volume")
    values = np.unique(arr)
    if arr.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError("the mask holds NaN or Inf values")
    brain = values[values != 0]
    integer = arr.dtype.kind in "biu"
    if brain.size == 0:
        raise ValueError("the mask is empty (no voxel > 0)")
    if brain.size > 1 or brain[0] < 0 or not (integer or brain[0] == 1):
        shown = ", ".join(f"{v:g}" for v in values[:4]) + (", ..." if values.size > 4 else "")
        raise ValueError(f"the mask is not binary (values {shown}; a probabilistic or label "
                         "image is not a brain mask)")
    return arr != 0


def grid_mismatch_mm(shape, affine, ref_shape, ref_affine) -> float | None:
    """How far a mask's grid is from the echoes': ``inf`` when ``shape`` differs from
    ``ref_shape`` (3D; a 4D ``shape`` must hold one volume); with equal shapes, the largest
    affine difference (mm) when it exceeds :data:`AFFINE_TOL_MM`, else None.

    Parameters
    ----------
    shape : sequence of int
        Shape of the mask image.
    affine : array_like, shape (4, 4)
        Voxel-to-world affine (mm) of the mask image.
    ref_shape : sequence of int
        Shape of the echoes (the first three entries are compared).
    ref_affine : array_like, shape (4, 4)
        Voxel-to-world affine (mm) of the echoes.

    Returns
    -------
    mismatch : float or None
        None when the grids match; ``inf`` for other shapes; else the largest absolute
        difference (mm) between the affines' entries.
    """
    if tuple(shape[:3]) != tuple(ref_shape[:3]) or (len(shape) == 4 and shape[3] != 1):
        return float("inf")
    diff = affine_difference_mm(affine, ref_affine)
    return diff if diff > AFFINE_TOL_MM else None


def load_user_mask(path, ref_shape, ref_affine) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a mask file against the echoes' grid → ``(bool mask, its affine)``.

    Parameters
    ----------
    path : str or Path
        Mask NIfTI file.
    ref_shape : sequence of int
        Shape of the echoes (first three entries used).
    ref_affine : array_like, shape (4, 4)
        Voxel-to-world affine (mm) of the echoes.

    Returns
    -------
    mask : ndarray of bool, shape (X, Y, Z)
        The brain mask (see :func:`binary_mask`).
    affine : ndarray, shape (4, 4)
        The mask file's affine (mm).

    Raises
    ------
    ValueError
        (message without the file name) If the file cannot be read (also when it is missing),
        its shape or affine differs from the echoes' (tolerance :data:`AFFINE_TOL_MM`), or it
        is not a binary mask.
    """
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for broken files
        raise ValueError(f"cannot read this NIfTI file ({exc.__class__.__name__}); re-export "
                         "or replace it") from None
    off = grid_mismatch_mm(img.shape, img.affine, ref_shape, ref_affine)
    if off == float("inf"):
        raise ValueError(f"the mask's shape {tuple(img.shape)} differs from the echoes' "
                         f"{tuple(ref_shape[:3])}; {_FIX_GRID}")
    if off is not None:
        raise ValueError(f"the mask's affine differs from the echoes' by up to {off:.3g} mm "
                         f"(tolerance {AFFINE_TOL_MM:g} mm); {_FIX_GRID}")
    try:
        return binary_mask(data), img.affine
    except ValueError as exc:
        raise ValueError(f"{exc}; threshold it to a binary mask (brain = 1, e.g. fslmaths "
                         "mask -thr 0.5 -bin mask), or drop it from --derivatives") from None


def dataset_keys(dirs, taken=("raw",)) -> dict[str, Path]:
    """``{DatasetLinks key: folder}`` for the derivatives folders (in order): the folder name
    reduced to letters, digits, ``-`` and ``_``, made unique.

    Parameters
    ----------
    dirs : iterable of str or Path
        Derivatives folders.
    taken : iterable of str, default ("raw",)
        Keys already in use (``bids`` is never used either); a clash gets a number appended
        (``name2``, ``name3``, ...).

    Returns
    -------
    keys : dict of str to Path
        DatasetLinks key → folder, in the order of ``dirs`` (a name reduced to nothing becomes
        ``derivatives``).
    """
    keys: dict[str, Path] = {}
    for d in dirs:
        base = re.sub(r"[^A-Za-z0-9_-]", "", Path(d).name) or "derivatives"
        key, i = base, 2
        while key in keys or key in taken or key == "bids":
            key, i = f"{base}{i}", i + 1
        keys[key] = Path(d)
    return keys


def _same_run(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return int(a) == int(b) if str(a).isdigit() and str(b).isdigit() else str(a) == str(b)


def _matches(ents: dict, acq: Acquisition) -> bool:
    """The mask file's source entities (acq, rec, run, ...) equal the acquisition's and its
    space (if any) is the native one."""
    space = ents.get("space")
    if space is not None and space.lower() not in NATIVE_SPACES:
        return False
    keys = (set(ents) | {k for k, v in acq.entities.items() if v is not None}) - _NOT_MATCHED
    return all(_same_run(ents.get(k), acq.entities.get(k)) if k == "run"
               else ents.get(k) == acq.entities.get(k) for k in keys)


def _candidates(root: Path, acq: Acquisition) -> list[Path]:
    """Mask files of ``acq`` in one derivatives dataset; refuses a file in this participant's
    (session's) folder that is named for another participant (session)."""
    folder = root / f"sub-{acq.subject}"
    if acq.session:
        folder /= f"ses-{acq.session}"
    hits = []
    for f in sorted((folder / "anat").glob(_PATTERN)):
        try:
            ents, suffix, ext = parse_filename(f.name)
        except ValueError:
            continue
        if suffix != "mask" or ext not in (".nii", ".nii.gz"):
            continue
        if ents.get("sub") != acq.subject or ents.get("ses") != acq.session:
            named = "_".join(f"{k}-{ents[k]}" for k in ("sub", "ses") if ents.get(k))
            raise InputError(f"{f}: brain mask named for {named or 'no participant'} but stored "
                             f"under {folder.relative_to(root)}/; a mask of another participant "
                             "or session is never used: rename or move it")
        if _matches(ents, acq):
            hits.append(f)
    return hits


def find_user_mask(acq: Acquisition, datasets: dict[str, Path]) -> UserMask | None:
    """The checked mask of ``acq`` from the first derivatives dataset that has one, or None.

    Parameters
    ----------
    acq : Acquisition
        The GRE acquisition.
    datasets : dict of str to Path
        DatasetLinks key → derivatives folder, searched in order.

    Returns
    -------
    user_mask : UserMask or None
        The mask found, or None when no dataset has one.

    Raises
    ------
    InputError
        (a ``ValueError``) If a dataset has several masks matching ``acq``, the mask fails the
        checks of :func:`load_user_mask`, or a mask in this participant's (session's) folder is
        named for another participant (session).
    """
    for key, root in datasets.items():
        hits = _candidates(root, acq)
        if len(hits) > 1:
            raise InputError(f"{hits[0]}: {len(hits)} brain masks match {acq.name} in {root} "
                             f"({', '.join(h.name for h in hits)}); keep one")
        if hits:
            ref = nib.load(acq.phase[0])
            try:
                load_user_mask(hits[0], acq.shape, ref.affine)
            except ValueError as exc:
                raise InputError(f"{hits[0]}: {exc}") from None
            return UserMask(path=str(hits[0]), dataset=key,
                            relpath=hits[0].relative_to(root).as_posix())
    return None


def check_derivatives_dirs(dirs, output_dir: Path) -> dict[str, Path]:
    """Resolve and check the ``--derivatives`` folders → ``{DatasetLinks key: folder}``.

    Parameters
    ----------
    dirs : str, Path, sequence of them, or None
        The ``--derivatives`` folders (None: none).
    output_dir : Path
        This run's output folder, resolved (compared as given); it and folders inside it are refused.

    Returns
    -------
    datasets : dict of str to Path
        DatasetLinks key → resolved folder (:func:`dataset_keys`).

    Raises
    ------
    InputError
        (a ``ValueError``) If a folder does not exist, is or lies in ``output_dir``, or holds no
        ``sub-<label>/[ses-<label>/]anat/*_desc-brain_mask.nii[.gz]``.
    """
    out = []
    for d in [dirs] if isinstance(dirs, (str, Path)) else dirs or ():
        p = Path(d).expanduser().resolve()
        if not p.is_dir():
            raise InputError(f"{p}: --derivatives folder does not exist; pass the root of a "
                             "BIDS derivatives dataset with *_desc-brain_mask images")
        if p == output_dir or output_dir in p.parents:
            raise InputError(f"{p}: --derivatives points into this run's output folder; pass "
                             "the derivatives dataset that holds your own brain masks")
        if not next(p.glob(f"sub-*/anat/{_PATTERN}"), None) and \
                not next(p.glob(f"sub-*/ses-*/anat/{_PATTERN}"), None):
            raise InputError(f"{p}: no sub-<label>/[ses-<label>/]anat/*_desc-brain_mask.nii[.gz] "
                             "in this --derivatives folder; pass the root of a derivatives "
                             "dataset with brain masks")
        out.append(p)
    return dataset_keys(out)


def attach_user_masks(subjects: dict[str, list[Acquisition]],
                      datasets: dict[str, Path], masking: str = "magnitude") -> int:
    """Set ``user_mask`` of every acquisition that has one in ``datasets``; warn (and keep the
    computed mask) for the others.

    Parameters
    ----------
    subjects : dict of str to list of Acquisition
        The acquisitions per participant; their ``user_mask`` is set (UserMask or None).
    datasets : dict of str to Path
        DatasetLinks key → derivatives folder (:func:`check_derivatives_dirs`); empty: nothing
        is done.
    masking : str, default "magnitude"
        The ``--masking`` method named in the warning for acquisitions without a mask.

    Returns
    -------
    n : int
        The number of acquisitions with a user mask.

    Raises
    ------
    InputError
        (a ``ValueError``) As raised by :func:`find_user_mask`.
    """
    if not datasets:
        return 0
    n = 0
    for acqs in subjects.values():
        for acq in acqs:
            acq.user_mask = find_user_mask(acq, datasets)
            if acq.user_mask is None:
                LOG.warning("%s: no brain mask for this acquisition in --derivatives %s (looked "
                            "for sub-%s/%sanat/%s_desc-brain_mask.nii[.gz]); computing the mask "
                            "instead (--masking %s)", acq.name,
                            " ".join(str(p) for p in datasets.values()), acq.subject,
                            f"ses-{acq.session}/" if acq.session else "", acq.name, masking)
            else:
                LOG.info("%s: brain mask supplied by the user: %s", acq.name, acq.user_mask.path)
                n += 1
    return n

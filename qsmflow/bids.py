"""BIDS in and out, in one place: names, the input query, derivatives and dataset descriptions.

- **Names**: one entity order (:data:`ENTITY_ORDER`, the specification's), one label check
  (:func:`check_label`), file names and folders (:func:`bids_filename`, :func:`bids_path`).
- **Dataset descriptions**: one builder (:func:`dataset_description`) for the raw datasets qsmflow
  writes (simulator, ``dicom2bids``) and for its derivatives (:func:`derivative_description`).
- **Input**: find multi-echo GRE acquisitions with pybids (:func:`collect_acquisitions`). One
  :class:`Acquisition` per set of source entities (``sub``/``ses``/``acq``/``rec``/``run`` and any
  other, e.g. ``ce``, ``chunk``) and suffix of ``MEGRE`` or ``T2starw`` phase images (optionally
  narrowed by a ``--bids-filter-file`` and an echo selection), with its phase and magnitude files
  ordered by ``EchoTime`` (never by file name), echo times in seconds and the field strength in
  tesla. Echoes may be one file each (``echo-<n>``) or one 4D file with a list ``EchoTime``. Every
  problem found raises :class:`InputError` with one line that names the file and the fix; this runs
  before any workflow is built, so a bad dataset writes nothing.
- **Derivatives**: output names (:func:`derivative_relpath`) and JSON sidecars
  (:func:`make_sidecar`). Layout of a qsmflow derivatives dataset (checked with
  ``bids-validator-deno``)::

      <out>/dataset_description.json                  DatasetType derivative, GeneratedBy
      <out>/sub-X[/ses-Y]/anat/<src>_desc-<method>_Chimap.nii.gz   χ (ppm), one per inversion
      <out>/sub-X[/ses-Y]/anat/<src>_desc-brain_mask.nii.gz        brain mask the χ maps are valid in
      <out>/sub-X[/ses-Y]/fmap/<src>_desc-total_fieldmap.nii.gz    total field (Hz)
      <out>/sub-X[/ses-Y]/fmap/<src>_desc-local_fieldmap.nii.gz    local (tissue) field (Hz)
      <out>/sub-X[/ses-Y]/fmap/<src>_magnitude.nii.gz              echo-combined magnitude
      <out>/sub-X[/ses-Y]/anat/<src>_R2starmap.nii.gz, _T2starmap  R2* (1/s), T2* (ms)
      <out>/sub-X[/ses-Y]/anat/<src>_desc-swi_T2starw.nii.gz       CLEAR-SWI-like SWI (+ desc-swiMinIP)
      <out>/sub-X.html + <out>/sub-X/figures/*.png                 the visual report
      <out>/logs/                                                  effective config, crash files

  ``<src>`` is the source's entities (``sub``/``ses``/``acq``/``rec``/``run``, ``ce``, ``chunk``, ...;
  echo and part dropped). Entities BIDS does not allow in a folder (``rec``, ``ce`` in ``fmap/``;
  ``inv``, ``flip``, ... anywhere) are folded into ``acq`` (``acq-<acq><Rec>``,
  ``acq-<acq>CeGad``). Every image has a sidecar with ``Units``, ``Description``, ``Sources`` (BIDS
  URIs) and ``SkullStripped``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from . import __version__
from .io import write_json
from .physics import check_echo_times, check_field_strength

LOG = logging.getLogger("qsmflow")

# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------

#: BIDS entities in the specification's order (sub, ses, ..., acq, ce, rec, dir, run, mod, echo,
#: flip, inv, mt, part, ..., space, ..., desc), so names built here validate
ENTITY_ORDER = (
    "sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain", "rec",
    "dir", "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space", "split",
    "recording", "chunk", "seg", "res", "den", "label", "desc",
)
#: current BIDS version written into dataset_description.json
BIDS_VERSION = "1.10.0"

_LABEL_RE = re.compile(r"[A-Za-z0-9]+")


def is_label(value) -> bool:
    """True when ``value`` is a BIDS label: letters and digits only.

    Nothing else is allowed, not even a trailing newline, so a label can never carry a path into a
    file name.

    Parameters
    ----------
    value : object
        The candidate label, compared as ``str(value)``.

    Returns
    -------
    bool
        True for a non-empty string of ASCII letters and digits.
    """
    return _LABEL_RE.fullmatch(str(value)) is not None


def check_label(value, what: str = "label", *, key: str | None = None) -> str:
    """The BIDS label of ``value`` (letters and digits), or a ``ValueError`` naming the fix.

    A leading ``sub-``/``ses-`` (and ``<key>-`` for an entity ``key``) is dropped, so ``"sub-01"``
    gives ``"01"``. Path characters (``../x``, ``a/b``) are refused, so a label can never escape a
    folder.

    Parameters
    ----------
    value : object
        The label, with or without its prefix; compared as ``str(value)``.
    what : str, optional
        Names the label in the error message (an option such as ``"--subject"``, or an entity).
    key : str, optional
        Short entity key (``"acq"``, ``"run"``, ...) whose ``<key>-`` prefix is dropped as well.

    Returns
    -------
    str
        The label without its prefix.

    Raises
    ------
    ValueError
        The label (prefix dropped) is empty or has characters other than letters and digits.
    """
    label = str(value)
    for prefix in ("sub-", "ses-", f"{key}-" if key else None):
        if prefix and label.startswith(prefix):
            label = label[len(prefix):]
    if not is_label(label):
        raise ValueError(f"{what} {value!r} is not a BIDS label: use letters and digits only "
                         "(alphanumeric, e.g. 01; no '_', '-', spaces, slashes or dots)")
    return label


def entity_string(entities: dict) -> str:
    """``sub-01_ses-1_echo-2_part-phase``: the entities (any order) in BIDS order, labels checked.

    Parameters
    ----------
    entities : dict
        BIDS entities with short keys (``{"sub": "01", "echo": 2, ...}``), any order; empty / None
        values are skipped.

    Returns
    -------
    str
        ``<key>-<label>`` pairs joined by ``_`` in :data:`ENTITY_ORDER`; ``""`` when no value is set.

    Raises
    ------
    ValueError
        A key is not in :data:`ENTITY_ORDER`, or a label is not letters and digits (:func:`check_label`).
    """
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}: use the short keys "
                         f"{', '.join(ENTITY_ORDER)}")
    return "_".join(f"{k}-{check_label(entities[k], f'BIDS {k}', key=k)}" for k in ENTITY_ORDER
                    if entities.get(k) not in (None, ""))


def bids_filename(entities: dict, suffix: str, ext: str = ".nii.gz") -> str:
    """``sub-01_ses-1_echo-2_part-phase_MEGRE.nii.gz`` from entities, a suffix and an extension.

    Parameters
    ----------
    entities : dict
        BIDS entities with short keys, any order; ``sub`` is required. Empty / None values are skipped.
    suffix : str
        BIDS suffix, letters and digits (``"MEGRE"``, ``"Chimap"``).
    ext : str, optional
        File extension, with or without the leading dot; ``""`` for none.

    Returns
    -------
    str
        The file name (no folder).

    Raises
    ------
    ValueError
        ``sub`` is missing or empty, ``suffix`` is not alphanumeric, or an entity is unknown or its
        label is not a BIDS label (:func:`entity_string`).
    """
    if not entities.get("sub"):
        raise ValueError("a BIDS file name needs the 'sub' entity: pass {'sub': '01', ...}")
    if not suffix or not is_label(suffix):
        raise ValueError(f"BIDS suffix {suffix!r} must be alphanumeric, e.g. 'MEGRE', 'Chimap'")
    ext = ext if not ext or ext.startswith(".") else "." + ext
    return f"{entity_string(entities)}_{suffix}{ext}"


def entity_dir(entities: dict, datatype: str | None = "anat") -> Path:
    """``sub-01[/ses-1][/anat]`` for the given entities.

    Parameters
    ----------
    entities : dict
        BIDS entities with short keys; ``sub`` is required, ``ses`` is used when set, others ignored.
    datatype : str or None, optional
        Datatype folder to append (``"anat"``, ``"fmap"``); None for the subject/session folder only.

    Returns
    -------
    pathlib.Path
        The folder, relative to the dataset root.

    Raises
    ------
    KeyError
        ``entities`` has no ``sub``.
    ValueError
        ``sub`` or ``ses`` is not a BIDS label.
    """
    p = Path(f"sub-{check_label(entities['sub'], 'BIDS sub')}")
    if entities.get("ses") not in (None, ""):
        p = p / f"ses-{check_label(entities['ses'], 'BIDS ses')}"
    return p / datatype if datatype else p


def bids_path(root, entities: dict, suffix: str, ext: str = ".nii.gz",
              datatype: str | None = "anat") -> Path:
    """``root/sub-01[/ses-1]/anat/<bids_filename>``.

    Parameters
    ----------
    root : str or path-like
        Dataset root folder.
    entities, suffix, ext
        As in :func:`bids_filename`.
    datatype : str or None, optional
        Datatype folder (:func:`entity_dir`); None puts the file in the subject/session folder.

    Returns
    -------
    pathlib.Path
        ``root`` / folder / file name (nothing is created).

    Raises
    ------
    KeyError
        ``entities`` has no ``sub``.
    ValueError
        As in :func:`entity_dir` and :func:`bids_filename`.
    """
    return Path(root) / entity_dir(entities, datatype) / bids_filename(entities, suffix, ext)


def parse_filename(name: str) -> tuple[dict, str, str]:
    """Inverse of :func:`bids_filename`: ``(entities, suffix, extension)``.

    Parameters
    ----------
    name : str or path-like
        A BIDS file name; a folder part is ignored.

    Returns
    -------
    entities : dict
        ``{key: label}`` as strings, in file-name order (labels are not checked).
    suffix : str
        The part after the last ``_`` (before the first dot).
    extension : str
        Everything from the first dot (``".nii.gz"``), or ``""`` when there is none.

    Raises
    ------
    ValueError
        A part before the suffix is not ``key-label``.
    """
    base = Path(name).name
    stem, dot, ext = base.partition(".")
    *kvs, suffix = stem.split("_")
    ents = {}
    for kv in kvs:
        k, sep, v = kv.partition("-")
        if not sep:
            raise ValueError(f"{base}: '{kv}' is not a key-value entity; expected e.g. 'sub-01'")
        ents[k] = v
    return ents, suffix, (dot + ext) if dot else ""


# --------------------------------------------------------------------------------------------
# dataset descriptions
# --------------------------------------------------------------------------------------------


def dataset_description(name: str, dataset_type: str = "raw", *, generated_by=None,
                        source=None, links: dict | None = None, **extra) -> dict:
    """The content of ``dataset_description.json`` (BIDSVersion, DatasetType, GeneratedBy, ...).

    Parameters
    ----------
    name : str
        The dataset's ``Name``.
    dataset_type : {"raw", "derivative"}, optional
        The ``DatasetType``.
    generated_by : dict or list of dict, optional
        ``GeneratedBy`` entries; a derivative without one is credited to qsmflow with this version.
    source : str or path-like, optional
        Folder of the raw dataset a derivative was made from (``DatasetLinks`` ``raw`` and
        ``SourceDatasets``, as the ``file://`` URI of the resolved folder).
    links : dict, optional
        ``{key: folder}`` of further input datasets (``--derivatives``, for ``bids:<key>:`` URIs),
        added to ``DatasetLinks`` and ``SourceDatasets`` the same way.
    **extra
        More fields, added last (they override the ones above).

    Returns
    -------
    dict
        The description.

    Raises
    ------
    ValueError
        ``dataset_type`` is neither ``"raw"`` nor ``"derivative"``.
    """
    if dataset_type not in ("raw", "derivative"):
        raise ValueError(f"dataset_type must be 'raw' or 'derivative', got {dataset_type!r}")
    desc = {"Name": name, "BIDSVersion": BIDS_VERSION, "DatasetType": dataset_type}
    if generated_by is None and dataset_type == "derivative":
        generated_by = [{"Name": "qsmflow", "Version": __version__}]
    if generated_by is not None:
        gb = generated_by
        desc["GeneratedBy"] = [gb] if isinstance(gb, dict) else list(gb)
    folders = dict(links or {})
    if source is not None:
        folders = {"raw": source, **folders}
    for key, folder in folders.items():
        uri = Path(folder).resolve().as_uri()
        desc.setdefault("DatasetLinks", {})[key] = uri
        desc.setdefault("SourceDatasets", []).append({"URL": uri})
    desc.update(extra)
    return desc


def write_dataset_description(root, name: str, dataset_type: str = "raw", **kw) -> Path:
    """Write ``root/dataset_description.json`` (atomically) from :func:`dataset_description`.

    Parameters
    ----------
    root : str or path-like
        Dataset root folder (created if missing).
    name, dataset_type, **kw
        As in :func:`dataset_description`.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ValueError
        ``dataset_type`` is neither ``"raw"`` nor ``"derivative"``.
    """
    return write_json(Path(root) / "dataset_description.json",
                      dataset_description(name, dataset_type, **kw))


def write_participants(root, subjects, extra_columns: dict | None = None) -> Path:
    """Write ``participants.tsv`` (participant_id [+ columns]) and a ``participants.json``.

    Parameters
    ----------
    root : str or path-like
        Dataset root folder (created if missing); existing files are replaced.
    subjects : iterable of str
        Subject labels, with or without ``sub-``; one row each, in this order.
    extra_columns : dict, optional
        ``{column name: values}``, one value per subject in the same order (written with ``str``).

    Returns
    -------
    pathlib.Path
        The written ``participants.tsv``.

    Raises
    ------
    ValueError
        A subject is not a BIDS label.
    """
    root = Path(root)
    subjects = [check_label(s, "BIDS sub", key="sub") for s in subjects]
    cols = extra_columns or {}
    lines = ["\t".join(["participant_id", *cols])]
    for i, s in enumerate(subjects):
        lines.append("\t".join([f"sub-{s}", *(str(v[i]) for v in cols.values())]))
    root.mkdir(parents=True, exist_ok=True)
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    write_json(root / "participants.json",
               {"participant_id": {"Description": "participant label"},
                **{c: {"Description": c} for c in cols}})
    return root / "participants.tsv"


# --------------------------------------------------------------------------------------------
# input: the GRE acquisitions of a BIDS dataset
# --------------------------------------------------------------------------------------------

#: BIDS suffixes of multi-echo / single-echo GRE that qsmflow reads
SUFFIXES = ("MEGRE", "T2starw")
_EXT = [".nii", ".nii.gz"]


class InputError(ValueError):
    """Bad input: the message is one line that names the file and the fix."""


@dataclass
class Acquisition:
    """One GRE acquisition: echoes of phase (and magnitude) of one run."""

    entities: dict                      # sub, ses, acq, rec, run (None when absent), + any
                                        # other source entity (ce, chunk, task, ...)
    suffix: str                         # MEGRE | T2starw
    phase: list[str]                    # files, ordered by echo time
    magnitude: list[str] | None         # same order, or None (no magnitude)
    echo_times: list[float]             # seconds, increasing
    b0_tesla: float                     # tesla
    shape: tuple[int, ...]              # 3D shape of one echo
    voxel_size: tuple[float, float, float]
    metadata: dict = field(default_factory=dict)  # sidecar of the first phase echo
    phase_metadata: list = field(default_factory=list)  # sidecar (inherited) of each phase file
    user_mask: object = None            # qsmflow.user_mask.UserMask from --derivatives, or None

    @property
    def subject(self) -> str:
        return self.entities["sub"]

    @property
    def session(self) -> str | None:
        return self.entities.get("ses")

    @property
    def name(self) -> str:
        """``sub-01_ses-1_run-1``: the acquisition's name prefix in outputs and workflows."""
        return entity_prefix(self.entities)

    @property
    def n_echoes(self) -> int:
        return len(self.echo_times)

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape))


def make_layout(bids_dir):
    """A pybids layout of the raw dataset (derivatives not indexed, no pybids validation: qsmflow runs
    the official validator itself).

    Parameters
    ----------
    bids_dir : str or path-like
        Root folder of the BIDS dataset.

    Returns
    -------
    bids.BIDSLayout
        The indexed layout.
    """
    from bids import BIDSLayout

    return BIDSLayout(str(bids_dir), validate=False, derivatives=False)


#: pybids entities that do not name an acquisition (its echoes and parts are its files)
_NOT_IDENTITY = frozenset({"subject", "echo", "part", "suffix", "extension", "datatype"})

#: query keys of ``--bids-filter-file`` and the default query each one updates (fMRIPrep's
#: format: ``{"megre": {"acquisition": "fast", "run": 1}}``; null = entity absent, "*" = any)
FILTER_QUERIES = {"megre": {"datatype": "anat", "suffix": list(SUFFIXES)}}
#: entities a filter may not set: selected by other options or fixed by qsmflow
_FILTER_FIXED = {"subject": "--participant-label", "part": "qsmflow (phase + magnitude)",
                 "echo": "--echo-idx / --max-echoes", "extension": "qsmflow (.nii, .nii.gz)"}


@functools.lru_cache(maxsize=None)
def _short_keys() -> dict[str, str]:
    """pybids entity name → BIDS file-name key (``acquisition`` → ``acq``, ``ceagent`` → ``ce``)."""
    from bids.layout.models import Config

    keys = {}
    for name, ent in Config.load("bids").entities.items():
        m = re.search(r"([a-z]+)-\(", ent.pattern or "")
        if m:
            keys[name] = m.group(1)
    return keys


def source_entities(f) -> dict[str, str]:
    """The entities of a pybids file that name its acquisition, with BIDS keys and labels as in the
    file name (``{"ses": "1", "acq": "fast", "ce": "gad", "run": "01", "chunk": "2"}``).

    Subject, echo, part, suffix, extension and datatype are left out.

    Parameters
    ----------
    f : bids.layout.BIDSFile
        A file of a pybids layout.

    Returns
    -------
    dict
        ``{short key: label}``, labels as strings.
    """
    keys = _short_keys()
    return {keys[k]: str(v) for k, v in f.get_entities().items()
            if k in keys and k not in _NOT_IDENTITY}


def _group_key(f) -> tuple:
    return (tuple(sorted(source_entities(f).items())), f.get_entities().get("suffix"))


def megre_query(bids_filters: dict | None) -> dict:
    """The pybids query of the GRE phase images: :data:`FILTER_QUERIES` updated by a filter file.

    The ``"megre"`` entry of a ``--bids-filter-file`` maps pybids entity names to values (null →
    entity absent, ``"*"`` → any value).

    Parameters
    ----------
    bids_filters : dict or None
        The ``--bids-filter-file`` content (``{"megre": {"acquisition": "fast"}}``); None or empty
        for the default query.

    Returns
    -------
    dict
        Keyword arguments for ``BIDSLayout.get`` (``datatype``, ``suffix`` and the filter's entities).

    Raises
    ------
    InputError
        An unknown query key (not ``"megre"``), a ``"megre"`` entry that is not a dict, an unknown
        entity, or an entity other options select (``subject``, ``part``, ``echo``, ``extension``).
    """
    from bids.layout import Query

    q = dict(FILTER_QUERIES["megre"])
    filters = dict(bids_filters or {})
    unknown = set(filters) - set(FILTER_QUERIES)
    if unknown:
        raise InputError(f"--bids-filter-file: unknown query {sorted(unknown)}; qsmflow reads "
                         f"one query, {', '.join(map(repr, FILTER_QUERIES))} (its MEGRE and "
                         "T2starw images), e.g. {\"megre\": {\"acquisition\": \"fast\"}}")
    entry = filters.get("megre") or {}
    if not isinstance(entry, dict):
        raise InputError("--bids-filter-file: \"megre\" must map entity names to values, e.g. "
                         "{\"megre\": {\"run\": 1}}")
    long_names = {v: k for k, v in _short_keys().items()}
    for k, v in entry.items():
        if k in _FILTER_FIXED:
            raise InputError(f"--bids-filter-file: {k!r} cannot be filtered here; it is set by "
                             f"{_FILTER_FIXED[k]}")
        if k not in _short_keys() and k not in ("suffix", "datatype"):
            hint = f" (pybids name {long_names[k]!r})" if k in long_names else ""
            raise InputError(f"--bids-filter-file: unknown entity {k!r}{hint}; use pybids "
                             "entity names such as acquisition, reconstruction, run, ceagent, "
                             "chunk, session, suffix")
        q[k] = Query.NONE if v is None else Query.ANY if v == "*" else v
    return q


def select_echoes(n_echoes: int, echo_idx=None, max_echoes=None, where="") -> list[int]:
    """0-based indices of the echoes to use, in echo-time order.

    ``echo_idx`` are 1-based echo numbers (1 = shortest TE), then at most ``max_echoes`` of them are
    kept; default all. A number beyond the acquisition's echoes raises :class:`InputError` naming
    ``where``.

    Parameters
    ----------
    n_echoes : int
        Number of echoes of the acquisition.
    echo_idx : iterable of int, optional
        1-based echo numbers to keep (``--echo-idx``); order and duplicates do not matter.
    max_echoes : int, optional
        Keep at most this many, the shortest-TE ones of the selection (``--max-echoes``).
    where : str, optional
        Names the acquisition (a file) in the error message.

    Returns
    -------
    list of int
        Sorted 0-based echo indices.

    Raises
    ------
    InputError
        A number of ``echo_idx`` is outside 1..``n_echoes``.
    """
    idx = list(range(n_echoes))
    if echo_idx:
        bad = [e for e in echo_idx if not 1 <= int(e) <= n_echoes]
        if bad:
            raise InputError(f"{where}: --echo-idx {' '.join(map(str, bad))} is beyond its "
                             f"{n_echoes} echo(es); echoes are numbered 1..{n_echoes} in "
                             "echo-time order")
        idx = sorted({int(e) - 1 for e in echo_idx})
    if max_echoes:
        idx = idx[:int(max_echoes)]
    return idx


def _echo_times(path: str, meta: dict, n_vols: int) -> list[float]:
    te = meta.get("EchoTime")
    if te is None:
        raise InputError(f"{path}: no EchoTime in its JSON sidecar; add \"EchoTime\" in seconds "
                         "(e.g. 0.004) to the sidecar")
    te = list(np.atleast_1d(np.asarray(te, dtype=float)))
    if len(te) != n_vols:
        raise InputError(f"{path}: {n_vols} echoes in the image but {len(te)} EchoTime values in "
                         "the sidecar; give one EchoTime (seconds) per echo")
    try:
        check_echo_times(sorted(te))
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    return te


def _header(path: str):
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(f"{path}: cannot read this NIfTI file ({exc.__class__.__name__}); "
                         "re-export or replace it") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) not in (3, 4) or min(shape[:3]) < 2:
        raise InputError(f"{path}: image of shape {shape} is not a 3D volume (or 4D echoes); "
                         "QSM needs 3D data")
    return img, shape


#: largest difference (mm) between the affines of one acquisition's echoes and parts
AFFINE_TOL_MM = 1e-3


def affine_difference_mm(affine, ref_affine) -> float:
    """Largest difference (mm) between two voxel-to-world affines.

    Parameters
    ----------
    affine, ref_affine : array_like, shape (4, 4)
        NIfTI affines (mm).

    Returns
    -------
    float
        max |affine − ref_affine| over the first three rows (the last row is (0, 0, 0, 1)).
    """
    return float(np.abs(np.asarray(affine, float)[:3] - np.asarray(ref_affine, float)[:3]).max())


def check_image_data(path: str, img=None, *, finite: bool = True, signal: bool = False) -> None:
    """Read the whole data of ``path`` (catches truncated or corrupt files: a header alone does not).

    Parameters
    ----------
    path : str
        The NIfTI file; named in the error message.
    img : nibabel image, optional
        ``path`` already loaded; loaded from ``path`` when None.
    finite : bool, optional
        Refuse NaN/Inf voxels (floating-point data only).
    signal : bool, optional
        Refuse an all-zero image.

    Returns
    -------
    None

    Raises
    ------
    InputError
        The data cannot be read, has NaN/Inf voxels (``finite``) or is all zero (``signal``); the
        message names the fix.
    """
    img = img if img is not None else nib.load(path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError from short files
        raise InputError(f"{path}: NIfTI data is truncated or corrupt ({exc.__class__.__name__}: "
                         f"{str(exc).strip()[:120]}); the file is incomplete (interrupted copy or "
                         "conversion?): copy or re-export it") from None
    if finite and data.dtype.kind == "f":
        n_nan, n_inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
        if n_nan or n_inf:
            raise InputError(f"{path}: {n_nan + n_inf} NaN/Inf voxel(s) ({n_nan} NaN, {n_inf} "
                             "Inf) in the image; replace them (e.g. by 0 outside the head) or "
                             "re-export the series from the scanner data")
    if signal and not np.any(data):
        raise InputError(f"{path}: the image is all zero (no signal to make a brain mask from "
                         "or to weight the fit); re-export it, or remove the part-mag files to "
                         "use the phase alone (--masking phase-quality)")


def _check_phase_scaling(path: str, meta: dict) -> None:
    """The phase maps to radians as its sidecar says (``Units``, ``PhaseValueRange``;
    :func:`qsmflow.phase.load_phase_rad`), else :class:`InputError` with its fix."""
    from .phase import load_phase_rad

    try:
        load_phase_rad(path, sidecar=meta)
    except ValueError as exc:
        raise InputError(f"{path}: {str(exc).split(': ', 1)[-1]}") from None


def _check_same_grid(path: str, affine, ref_path: str, ref_affine) -> None:
    """``path``'s affine equals the reference echo's within :data:`AFFINE_TOL_MM`."""
    diff = affine_difference_mm(affine, ref_affine)
    if diff > AFFINE_TOL_MM:
        raise InputError(f"{path}: its affine (voxel-to-world geometry) differs from {ref_path} "
                         f"by up to {diff:.3g} mm; every echo and part of one run must share one "
                         "grid: reconvert the series (e.g. with dcm2niix) or resample it")


def _check_echo_spacing(path: str, tes) -> None:
    """Warn when one TE gap is ≥ 1.6 × the median gap: an echo is probably missing."""
    gaps = np.diff(np.asarray(tes, float))
    if gaps.size >= 2 and gaps.max() >= 1.6 * np.median(gaps):
        i = int(np.argmax(gaps))
        LOG.warning("qsmflow: warning: %s: echo times %s ms have a gap of %.2f ms between echo "
                    "%d and %d (the others %.2f ms): an echo is probably missing (conversion "
                    "error?); using the %d echoes found", path,
                    [round(1000 * t, 3) for t in tes], 1000 * gaps[i], i + 1, i + 2,
                    1000 * float(np.median(gaps)), len(tes))


def _unpaired_magnitudes(layout, group, subject, mags) -> list[str]:
    """Magnitude files of ``group``'s acquisition that no phase echo uses."""
    identity = source_entities(group[0])
    allmag = layout.get(subject=subject, suffix=group[0].get_entities()["suffix"], part="mag",
                        extension=_EXT)
    used = set(mags)
    return sorted(h.path for h in allmag if source_entities(h) == identity and h.path not in used)


def _collect_files(layout, group, subject, session) -> tuple[list, list, list, dict]:
    """Ordered (phase files, mag files or [], echo times, first sidecar) of one group."""
    from bids.layout import Query

    entries = []  # (echo times s, phase path, sidecar, shape3d, zooms mm, echo entity)
    ref_path = ref_affine = None  # the first echo's: the others must share its grid
    for f in group:
        path = f.path
        meta = layout.get_metadata(path)
        img, shape = _header(path)
        n_vols = shape[3] if len(shape) == 4 else 1
        tes = _echo_times(path, meta, n_vols)
        check_image_data(path, img)
        _check_phase_scaling(path, meta)
        if entries:
            _check_same_grid(path, img.affine, ref_path, ref_affine)
        else:
            ref_path, ref_affine = path, img.affine
        entries.append((tes, path, meta, shape[:3], tuple(float(z) for z in img.header.get_zooms()[:3]),
                        f.get_entities().get("echo")))
    entries.sort(key=lambda e: e[0][0])
    shapes = {e[3] for e in entries}
    if len(shapes) > 1:
        odd = next(e for e in entries if e[3] != entries[0][3])
        raise InputError(f"{odd[1]}: echo of shape {odd[3]} differs from {entries[0][1]} "
                         f"{entries[0][3]}; all echoes of one run must have the same matrix")
    if len(entries) > 1 and any(len(e[0]) > 1 for e in entries):
        raise InputError(f"{entries[0][1]}: mixes 4D multi-echo files with single-echo files; "
                         "give one 4D file or one file per echo")
    phase = [e[1] for e in entries]
    tes = [t for e in entries for t in e[0]]
    try:
        check_echo_times(tes)
    except ValueError as exc:
        raise InputError(f"{phase[0]}: {exc}; check the EchoTime of each echo's sidecar") from None
    # magnitude: same entities with part-mag
    mags = []
    identity = source_entities(group[0])
    for e in entries:
        q = dict(subject=subject, suffix=group[0].get_entities()["suffix"], part="mag",
                 extension=_EXT, echo=e[5] if e[5] is not None else Query.NONE)
        hits = [h.path for h in layout.get(**q) if source_entities(h) == identity]
        if len(hits) > 1:
            raise InputError(f"{e[1]}: {len(hits)} matching magnitude files {hits}; "
                             "keep one part-mag file per echo")
        mags.append(hits[0] if hits else None)
    if all(m is None for m in mags):
        mags = []
    elif any(m is None for m in mags):
        missing = entries[mags.index(None)][1]
        raise InputError(f"{missing}: has no matching part-mag file while other echoes do; "
                         "add the magnitude of every echo or none")
    extra = _unpaired_magnitudes(layout, group, subject, mags)
    if extra:  # a phase echo is missing: almost always a conversion error
        LOG.warning("qsmflow: warning: %s: no part-phase file for %s; using the %d echo(es) "
                    "that have phase (%s)", phase[0], ", ".join(extra), len(tes),
                    ", ".join(f"{1000 * t:g} ms" for t in tes))
    _check_echo_spacing(phase[0], tes)
    for m, e in zip(mags, entries):
        mimg, mshape = _header(m)
        _check_same_grid(m, mimg.affine, ref_path, ref_affine)
        check_image_data(m, mimg, signal=True)
        mte = layout.get_metadata(m).get("EchoTime")
        if mte is not None and not np.allclose(np.atleast_1d(np.asarray(mte, float)), e[0],
                                               rtol=1e-2, atol=1e-5):
            raise InputError(f"{m}: EchoTime {mte} differs from its phase {e[1]} ({e[0]}); "
                             "pair each magnitude with the phase of the same echo (check the "
                             "echo-<n> labels and sidecars)")
        want = e[3] + ((len(e[0]),) if len(e[0]) > 1 else ())
        if tuple(mshape) != tuple(want):
            raise InputError(f"{m}: magnitude of shape {tuple(mshape)} does not match its phase "
                             f"{e[1]} {want}; magnitude and phase must have the same matrix "
                             "and echo count")
    return phase, mags, tes, [e[2] for e in entries], entries[0][3], entries[0][4]


def _label(label, option) -> str:
    try:
        return check_label(label, option)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def collect_acquisitions(bids_dir, participant_label=None, session_label=None,
                         layout=None, *, bids_filters=None, echo_idx=None,
                         max_echoes=None) -> dict[str, list[Acquisition]]:
    """All usable acquisitions per subject label, checked; raises :class:`InputError`.

    Labels that are not in the dataset are refused. A subject without MEGRE/T2starw phase images is
    skipped with a warning; where one entity set has both suffixes, MEGRE is used.

    Parameters
    ----------
    bids_dir : str or path-like
        Root folder of the raw BIDS dataset.
    participant_label, session_label : list of str, optional
        Labels to use (with or without ``sub-``/``ses-``); None for all.
    layout : bids.BIDSLayout, optional
        A layout of ``bids_dir`` to reuse; made with :func:`make_layout` when None.
    bids_filters : dict, optional
        The ``--bids-filter-file`` content (:func:`megre_query`).
    echo_idx, max_echoes : optional
        The echoes to keep: 1-based echo numbers, a maximum count (:func:`select_echoes`).

    Returns
    -------
    dict of str to list of Acquisition
        ``{subject label (no "sub-"): acquisitions}``; files ordered by ``EchoTime`` (s), B0 in
        tesla, voxel size in mm.

    Raises
    ------
    InputError
        A label is not a BIDS label or not in the dataset; no subject or no phase image is found; an
        echo selection needs a 4D file split; or a file, its sidecar (``EchoTime``,
        ``MagneticFieldStrength``, phase units) or the echo/magnitude pairing is bad. The message
        names the file and the fix.
    """
    base_query = megre_query(bids_filters)
    bids_dir = Path(bids_dir)
    layout = layout or make_layout(bids_dir)
    all_subjects = sorted(layout.get_subjects())
    if participant_label:
        subjects = [_label(p, "--participant-label") for p in participant_label]
        unknown = [s for s in subjects if s not in all_subjects]
        if unknown:
            raise InputError(f"{bids_dir}: no participant {', '.join('sub-' + u for u in unknown)} "
                             f"in this dataset; choose from {', '.join(all_subjects) or 'none'}")
    else:
        subjects = all_subjects
    if not subjects:
        raise InputError(f"{bids_dir}: no sub-* folders found; is this the BIDS root folder?")
    sessions = None
    if session_label:
        sessions = [_label(s, "--session-label") for s in session_label]
        have = set(layout.get_sessions(subject=subjects))
        unknown = [s for s in sessions if s not in have]
        if unknown:
            raise InputError(f"{bids_dir}: no session {', '.join('ses-' + u for u in unknown)} for "
                             f"participant(s) {', '.join(subjects)}; choose from "
                             f"{', '.join(sorted(have)) or 'none (dataset has no sessions)'}")
    out: dict[str, list[Acquisition]] = {}
    for sub in subjects:
        q = dict(base_query, subject=sub, part="phase", extension=_EXT)
        if sessions:
            q["session"] = sessions
        files = layout.get(**q)
        groups: dict[tuple, list] = {}
        for f in files:
            groups.setdefault(_group_key(f), []).append(f)
        acqs = []
        for key, group in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
            source, suffix = dict(key[0]), key[1]
            phase, mags, tes, metas, shape, zooms = _collect_files(layout, group, sub,
                                                                   source.get("ses"))
            keep = select_echoes(len(tes), echo_idx, max_echoes, where=phase[0])
            if len(keep) < len(tes):
                if len(phase) != len(tes):
                    raise InputError(f"{phase[0]}: --echo-idx/--max-echoes need one file per "
                                     "echo (echo-<n>); split this 4D file into echoes")
                phase, tes, metas = ([x[i] for i in keep] for x in (phase, tes, metas))
                mags = [mags[i] for i in keep] if mags else mags
            meta = metas[0]
            b0 = meta.get("MagneticFieldStrength")
            if b0 is None:
                raise InputError(f"{phase[0]}: no MagneticFieldStrength in its sidecar (or in a "
                                 "top-level one); add \"MagneticFieldStrength\" in tesla, e.g. 3")
            try:
                b0 = check_field_strength(b0)
            except (ValueError, TypeError):
                raise InputError(f"{phase[0]}: MagneticFieldStrength {b0!r} is not a number in "
                                 "tesla; write e.g. 3 (not \"3T\") in the sidecar") from None
            ents = {"sub": sub, "ses": None, "acq": None, "rec": None, "run": None, **source}
            acqs.append(Acquisition(entities=ents, suffix=suffix, phase=phase,
                                    magnitude=mags or None, echo_times=[float(t) for t in tes],
                                    b0_tesla=b0, shape=tuple(shape), voxel_size=tuple(zooms),
                                    metadata=dict(meta),
                                    phase_metadata=[dict(m) for m in metas]))
        seen: dict[str, Acquisition] = {}
        for a in acqs:  # one output name per entity set: MEGRE wins over T2starw
            if a.name in seen:
                LOG.warning("%s: both MEGRE and T2starw phase; using MEGRE", a.name)
                if a.suffix != "MEGRE":
                    continue
            seen[a.name] = a
        acqs = list(seen.values())
        if not acqs:
            LOG.warning("sub-%s: no part-phase MEGRE/T2starw images found; skipping", sub)
            continue
        out[sub] = acqs
    if not out:
        raise InputError(f"{bids_dir}: no *_part-phase_MEGRE / *_part-phase_T2starw images for "
                         f"participant(s) {', '.join(subjects)}; QSM needs GRE phase images")
    return out


# --------------------------------------------------------------------------------------------
# derivatives: names and sidecars
# --------------------------------------------------------------------------------------------

#: source entities kept in output names, in BIDS order (echo and part are dropped; space and
#: desc are qsmflow's own)
SOURCE_ENTITIES = tuple(k for k in ENTITY_ORDER if k not in ("echo", "part", "space", "desc"))
#: entities BIDS allows in each output folder; any other source entity is folded into ``acq``
ALLOWED_ENTITIES = {"anat": ("sub", "ses", "task", "acq", "ce", "rec", "run", "chunk"),
                    "fmap": ("sub", "ses", "acq", "run", "chunk")}

#: output kind -> (datatype, desc, suffix, Units, description)
OUTPUTS = {
    "magnitude": ("fmap", None, "magnitude", "arbitrary",
                  "Echo-combined (root-sum-of-squares) magnitude of the multi-echo GRE."),
    "total_field": ("fmap", "total", "fieldmap", "Hz",
                    "Total field offset from the multi-echo phase fit (background + tissue)."),
    "local_field": ("fmap", "local", "fieldmap", "Hz",
                    "Local (tissue) field after background field removal."),
    "mask": ("anat", "brain", "mask", None,
             "Brain mask in which the local field and the susceptibility maps are valid."),
    "chimap": ("anat", None, "Chimap", "ppm",
               "Magnetic susceptibility (chi) map from dipole inversion of the local field."),
    "r2star": ("anat", None, "R2starmap", "1/s",
               "Apparent transverse relaxation rate R2* from the multi-echo magnitude decay."),
    "t2star": ("anat", None, "T2starmap", "ms",
               "Apparent transverse relaxation time T2* = 1000 / R2* (ms)."),
    "swi": ("anat", "swi", "T2starw", "arbitrary",
            "CLEAR-SWI-like susceptibility-weighted image: echo-combined magnitude times a "
            "negative phase mask of the local field (paramagnetic structures dark)."),
    "swi_minip": ("anat", "swiMinIP", "T2starw", "arbitrary",
                  "Sliding minimum-intensity projection (minIP) of the SWI over a slab of slices."),
}

#: the clinical maps besides χ (written when magnitude images exist; ``--no-clinical-maps``)
CLINICAL_MAPS = ("r2star", "t2star", "swi", "swi_minip")


def entity_prefix(entities: dict, datatype: str = "anat") -> str:
    """``sub-01_ses-1_acq-x_ce-gad_run-1_chunk-2`` from an entity dict (keys that are not BIDS
    entities ignored).

    Entities BIDS does not allow in ``datatype`` (:data:`ALLOWED_ENTITIES`) are folded into ``acq``
    so that no source is lost and names stay valid: ``rec`` as its label (``acq-<acq><Rec>``, e.g.
    in ``fmap/``), any other as key and label (``inv-2`` → ``acq-<acq>Inv2``). ``echo``, ``part``,
    ``space`` and ``desc`` are dropped.

    Parameters
    ----------
    entities : dict
        Source entities with short keys; None / empty values are skipped.
    datatype : str, optional
        Output folder (``"anat"``, ``"fmap"``); for another datatype every source entity is kept.

    Returns
    -------
    str
        The name prefix, labels and indices verbatim (``run-02`` stays ``run-02``).

    Raises
    ------
    ValueError
        A label is not letters and digits.
    """
    ent = {k: entities.get(k) for k in SOURCE_ENTITIES if entities.get(k) not in (None, "")}
    for k, v in ent.items():  # a label with path characters must never become a path
        check_label(str(v), f"{k} entity")
    allowed = ALLOWED_ENTITIES.get(datatype, SOURCE_ENTITIES)
    folded = "".join(_cap(str(v)) if k == "rec" else _cap(k) + _cap(str(v))
                     for k, v in ent.items() if k not in allowed)
    ent = {k: v for k, v in ent.items() if k in allowed}
    if folded:
        ent["acq"] = f"{ent.get('acq', '')}{folded}"
    return entity_string(ent)  # labels/indices verbatim (run-02 stays run-02)


def _cap(label: str) -> str:
    return label[:1].upper() + label[1:]


def derivative_relpath(entities: dict, kind: str, desc: str | None = None,
                       ext: str = ".nii.gz") -> Path:
    """Relative path of one derivative, e.g. ``sub-01/anat/sub-01_run-1_desc-tkd_Chimap.nii.gz``.

    Parameters
    ----------
    entities : dict
        Source entities with short keys (:func:`entity_prefix`); ``sub`` is required.
    kind : str
        A key of :data:`OUTPUTS` (``"chimap"``, ``"mask"``, ...): gives datatype, ``desc`` and suffix.
    desc : str, optional
        Overrides the kind's ``desc`` (the χ maps use the inversion method's name).
    ext : str, optional
        Extension, with its leading dot.

    Returns
    -------
    pathlib.Path
        The path relative to the derivatives root.

    Raises
    ------
    ValueError
        ``kind`` is unknown, or a label or ``desc`` is not letters and digits.
    KeyError
        ``entities`` has no ``sub``.
    """
    if kind not in OUTPUTS:
        raise ValueError(f"unknown derivative kind {kind!r}; one of {sorted(OUTPUTS)}")
    datatype, default_desc, suffix, _, _ = OUTPUTS[kind]
    desc = desc if desc is not None else default_desc
    name = entity_prefix(entities, datatype)
    if desc:
        name += f"_desc-{check_label(desc, 'desc')}"
    return entity_dir(entities, datatype) / f"{name}_{suffix}{ext}"


def raw_uri(bids_root, path) -> str:
    """BIDS URI of a raw input file: ``bids:raw:sub-01/anat/...``.

    Parameters
    ----------
    bids_root : str or path-like
        Root folder of the raw dataset.
    path : str or path-like
        A file inside ``bids_root``.

    Returns
    -------
    str
        ``bids:raw:`` + the resolved path relative to the resolved root (POSIX separators).

    Raises
    ------
    ValueError
        ``path`` is not inside ``bids_root``.
    """
    return "bids:raw:" + Path(path).resolve().relative_to(Path(bids_root).resolve()).as_posix()


def self_uri(relpath) -> str:
    """BIDS URI of another file of this derivatives dataset: ``bids::sub-01/...``.

    Parameters
    ----------
    relpath : str or path-like
        Path relative to the derivatives root (e.g. from :func:`derivative_relpath`).

    Returns
    -------
    str
        ``bids::`` + ``relpath`` with POSIX separators.
    """
    return "bids::" + Path(relpath).as_posix()


def make_sidecar(kind: str, *, sources: list[str], skull_stripped: bool | None = None,
                 **extra) -> dict:
    """JSON sidecar for one derivative: ``Description``, ``Units``, ``Sources``, ``SkullStripped`` plus
    ``extra`` (method, parameters, reference, ...).

    Parameters
    ----------
    kind : str
        A key of :data:`OUTPUTS`; gives ``Description`` and ``Units`` (none for ``"mask"``, which gets
        ``"Type": "Brain"``).
    sources : list of str
        BIDS URIs of the inputs (:func:`raw_uri`, :func:`self_uri`).
    skull_stripped : bool, optional
        ``SkullStripped``; default True for every kind but ``"magnitude"``.
    **extra
        More fields; None values are left out.

    Returns
    -------
    dict
        The sidecar.

    Raises
    ------
    KeyError
        ``kind`` is not a key of :data:`OUTPUTS`.
    """
    _, _, _, units, description = OUTPUTS[kind]
    side = {"Description": description}
    if units is not None:
        side["Units"] = units
    if kind == "mask":
        side["Type"] = "Brain"
    side["Sources"] = list(sources)
    if skull_stripped is None:
        skull_stripped = kind != "magnitude"
    side["SkullStripped"] = bool(skull_stripped)
    side.update({k: v for k, v in extra.items() if v is not None})
    return side


def container_tag() -> str | None:
    """Container image recorded in ``GeneratedBy`` (``QSMFLOW_CONTAINER`` env var, set in the
    Dockerfile / Apptainer definition), or None when not running in a container.

    Returns
    -------
    str or None
        The variable's value, stripped; None when it is unset or blank.
    """
    tag = os.environ.get("QSMFLOW_CONTAINER", "").strip()
    return tag or None


def derivative_description(bids_root=None, source_name: str | None = None,
                           links: dict | None = None) -> dict:
    """``dataset_description.json`` of a qsmflow derivatives dataset made from ``bids_root``
    (:func:`dataset_description`), with the container image when in one.

    Parameters
    ----------
    bids_root : str or path-like, optional
        Folder of the raw dataset (``DatasetLinks`` ``raw``, ``SourceDatasets``); None for no link.
    source_name : str, optional
        Name of the raw dataset, in ``Name`` ("qsmflow derivatives of <source_name>").
    links : dict, optional
        ``{key: folder}`` of further input datasets, as in :func:`dataset_description`.

    Returns
    -------
    dict
        The description: ``DatasetType`` derivative, ``GeneratedBy`` qsmflow (with ``Container`` from
        ``QSMFLOW_CONTAINER`` / ``QSMFLOW_CONTAINER_TYPE`` when set), ``HowToAcknowledge``.
    """
    gen = {"Name": "qsmflow", "Version": __version__,
           "Description": "Quantitative susceptibility mapping from multi-echo GRE",
           "CodeURL": "https://github.com/qsmflow/qsmflow"}
    tag = container_tag()
    if tag:
        gen["Container"] = {"Type": os.environ.get("QSMFLOW_CONTAINER_TYPE", "docker"),
                            "Tag": tag}
    return dataset_description(
        f"qsmflow derivatives{f' of {source_name}' if source_name else ''}", "derivative",
        generated_by=[gen], source=bids_root, links=links,
        HowToAcknowledge="Cite qsmflow and the methods listed in each subject's report.")

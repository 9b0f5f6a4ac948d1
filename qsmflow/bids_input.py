"""The input side: find multi-echo GRE acquisitions in a BIDS dataset with pybids.

One :class:`Acquisition` per set of source entities (``sub``/``ses``/``acq``/``rec``/``run`` and any
other, e.g. ``ce``, ``chunk``) and suffix of ``MEGRE`` or ``T2starw`` phase images (optionally
narrowed by a ``--bids-filter-file`` and an echo selection), with its phase and magnitude
files ordered by ``EchoTime`` (never by file name), echo times in seconds and the field
strength in tesla. Echoes may be one file each (``echo-<n>``) or one 4D file with a list
``EchoTime``.

Every problem found here raises :class:`InputError` with one line that names the file and the
fix; this runs before any workflow is built, so a bad dataset writes nothing.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from .derivatives import check_label, entity_prefix
from .physics import check_echo_times, check_field_strength

LOG = logging.getLogger("qsmflow")

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
    """A pybids layout of the raw dataset (derivatives not indexed, no pybids validation:
    qsmflow runs the official validator itself)."""
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
    """The entities of a pybids file that name its acquisition, with BIDS keys and labels as in
    the file name (``{"ses": "1", "acq": "fast", "ce": "gad", "run": "01", "chunk": "2"}``)."""
    keys = _short_keys()
    return {keys[k]: str(v) for k, v in f.get_entities().items()
            if k in keys and k not in _NOT_IDENTITY}


def _group_key(f) -> tuple:
    return (tuple(sorted(source_entities(f).items())), f.get_entities().get("suffix"))


def megre_query(bids_filters: dict | None) -> dict:
    """The pybids query of the GRE phase images: :data:`FILTER_QUERIES` updated by the
    ``"megre"`` entry of a ``--bids-filter-file`` (null → absent, ``"*"`` → any). Unknown query
    keys, unknown entities and entities other options select raise :class:`InputError`."""
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
    """0-based indices of the echoes to use, in echo-time order: ``echo_idx`` are 1-based echo
    numbers (1 = shortest TE), then at most ``max_echoes`` of them; default all. A number beyond
    the acquisition's echoes raises :class:`InputError` naming ``where``."""
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


def check_image_data(path: str, img=None, *, finite: bool = True, signal: bool = False) -> None:
    """Read the whole data of ``path`` (catches truncated or corrupt files: a header alone
    does not); with ``finite`` refuse NaN/Inf voxels, with ``signal`` an all-zero image;
    :class:`InputError` names the fix."""
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
    diff = float(np.abs(np.asarray(affine)[:3] - np.asarray(ref_affine)[:3]).max())
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
        return check_label(label, f"{option}")
    except ValueError as exc:
        raise InputError(str(exc)) from None


def collect_acquisitions(bids_dir, participant_label=None, session_label=None,
                         layout=None, *, bids_filters=None, echo_idx=None,
                         max_echoes=None) -> dict[str, list[Acquisition]]:
    """All usable acquisitions per subject label, checked; raises :class:`InputError`.

    ``participant_label``/``session_label``: lists of labels (with or without ``sub-``/``ses-``)
    or None for all. Labels that are not in the dataset are refused. ``bids_filters``: the
    ``--bids-filter-file`` dict (:func:`megre_query`); ``echo_idx``/``max_echoes``: the echoes
    to keep (:func:`select_echoes`).
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

"""BIDS naming helpers: entity order, file names, folders, dataset_description, participants.

Entity order follows the BIDS specification's entity table (sub, ses, ..., acq, ce, rec, dir,
run, mod, echo, flip, inv, mt, part, ..., space, ..., desc), so names built here validate.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import __version__
from .io import write_json

#: BIDS entities in the specification's order
ENTITY_ORDER = (
    "sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain", "rec",
    "dir", "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space", "split",
    "recording", "chunk", "seg", "res", "den", "label", "desc",
)
#: current BIDS version written into dataset_description.json
BIDS_VERSION = "1.10.0"

_LABEL_RE = re.compile(r"[A-Za-z0-9]+")


def is_label(value) -> bool:
    """True when ``value`` is a BIDS label: letters and digits only (nothing else, not even a
    trailing newline — so a label can never carry a path into a file name)."""
    return _LABEL_RE.fullmatch(str(value)) is not None


def _clean_value(key: str, value) -> str:
    v = str(value)
    if v.startswith(f"{key}-"):
        v = v[len(key) + 1:]
    if not is_label(v):
        raise ValueError(f"BIDS {key} label {value!r} must be alphanumeric (no '_', '-' or "
                         "spaces): e.g. sub='01', desc='brain'")
    return v


def entity_string(entities: dict) -> str:
    """``sub-01_ses-1_echo-2_part-phase``: the entities (any order) in BIDS order, labels
    checked; empty / None values are skipped."""
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}: use the short keys "
                         f"{', '.join(ENTITY_ORDER)}")
    return "_".join(f"{k}-{_clean_value(k, entities[k])}" for k in ENTITY_ORDER
                    if entities.get(k) not in (None, ""))


def bids_filename(entities: dict, suffix: str, ext: str = ".nii.gz") -> str:
    """``sub-01_ses-1_echo-2_part-phase_MEGRE.nii.gz`` from entities (any order), a suffix and
    an extension (with or without the dot). Empty / None entity values are skipped."""
    if not entities.get("sub"):
        raise ValueError("a BIDS file name needs the 'sub' entity: pass {'sub': '01', ...}")
    if not suffix or not is_label(suffix):
        raise ValueError(f"BIDS suffix {suffix!r} must be alphanumeric, e.g. 'MEGRE', 'Chimap'")
    ext = ext if not ext or ext.startswith(".") else "." + ext
    return f"{entity_string(entities)}_{suffix}{ext}"


def entity_dir(entities: dict, datatype: str | None = "anat") -> Path:
    """``sub-01[/ses-1][/anat]`` for the given entities."""
    p = Path(f"sub-{_clean_value('sub', entities['sub'])}")
    if entities.get("ses") not in (None, ""):
        p = p / f"ses-{_clean_value('ses', entities['ses'])}"
    return p / datatype if datatype else p


def bids_path(root, entities: dict, suffix: str, ext: str = ".nii.gz",
              datatype: str | None = "anat") -> Path:
    """``root/sub-01[/ses-1]/anat/<bids_filename>``."""
    return Path(root) / entity_dir(entities, datatype) / bids_filename(entities, suffix, ext)


def parse_filename(name: str) -> tuple[dict, str, str]:
    """Inverse of :func:`bids_filename`: ``(entities, suffix, extension)``."""
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


def write_dataset_description(root, name: str, dataset_type: str = "raw",
                              generated_by: list | dict | None = None, **extra) -> Path:
    """Write ``root/dataset_description.json`` (BIDSVersion, DatasetType, GeneratedBy).

    A derivative without ``generated_by`` is credited to qsmflow with this version.
    """
    if dataset_type not in ("raw", "derivative"):
        raise ValueError(f"dataset_type must be 'raw' or 'derivative', got {dataset_type!r}")
    desc = {"Name": name, "BIDSVersion": BIDS_VERSION, "DatasetType": dataset_type}
    if generated_by is None and dataset_type == "derivative":
        generated_by = [{"Name": "qsmflow", "Version": __version__}]
    if generated_by is not None:
        gb = generated_by
        desc["GeneratedBy"] = [gb] if isinstance(gb, dict) else list(gb)
    desc.update(extra)
    return write_json(Path(root) / "dataset_description.json", desc)


def write_participants(root, subjects, extra_columns: dict | None = None) -> Path:
    """Write ``participants.tsv`` (participant_id [+ columns]) and a ``participants.json``."""
    root = Path(root)
    subjects = [_clean_value("sub", s) for s in subjects]
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

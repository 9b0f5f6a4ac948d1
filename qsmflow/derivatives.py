"""The output side: BIDS derivative names, ``dataset_description.json`` and JSON sidecars.

Layout of a qsmflow derivatives dataset (checked with ``bids-validator-deno``)::

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

import os
from pathlib import Path

from . import __version__
from .bids import ENTITY_ORDER as _BIDS_ORDER
from .bids import entity_string, is_label

#: source entities kept in output names, in BIDS order (echo and part are dropped; space and
#: desc are qsmflow's own)
ENTITY_ORDER = tuple(k for k in _BIDS_ORDER if k not in ("echo", "part", "space", "desc"))
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


def check_label(label: str, what: str = "label") -> str:
    """Return a BIDS label (alphanumeric) or raise a ``ValueError`` naming the fix.

    Refuses path characters (``../x``, ``a/b``), so a label can never escape a folder.
    """
    label = str(label)
    for prefix in ("sub-", "ses-"):
        if label.startswith(prefix):
            label = label[len(prefix):]
    if not is_label(label):
        raise ValueError(f"{what} {label!r} is not a BIDS label: use letters and digits only "
                         "(e.g. 01), without 'sub-'/'ses-' prefixes, slashes or dots")
    return label


def entity_prefix(entities: dict, datatype: str = "anat") -> str:
    """``sub-01_ses-1_acq-x_ce-gad_run-1_chunk-2`` from an entity dict (keys that are not BIDS
    entities ignored).

    Entities BIDS does not allow in ``datatype`` (:data:`ALLOWED_ENTITIES`) are folded into
    ``acq`` so that no source is lost and names stay valid: ``rec`` as its label (``acq-<acq><Rec>``,
    e.g. in ``fmap/``), any other as key and label (``inv-2`` → ``acq-<acq>Inv2``).
    """
    ent = {k: entities.get(k) for k in ENTITY_ORDER if entities.get(k) not in (None, "")}
    for k, v in ent.items():  # a label with path characters must never become a path
        check_label(str(v), f"{k} entity")
    allowed = ALLOWED_ENTITIES.get(datatype, ENTITY_ORDER)
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

    ``kind`` is a key of :data:`OUTPUTS`; ``desc`` overrides its ``desc`` (the χ maps use the
    inversion method's name).
    """
    if kind not in OUTPUTS:
        raise ValueError(f"unknown derivative kind {kind!r}; one of {sorted(OUTPUTS)}")
    datatype, default_desc, suffix, _, _ = OUTPUTS[kind]
    desc = desc if desc is not None else default_desc
    name = entity_prefix(entities, datatype)
    if desc:
        name += f"_desc-{check_label(desc, 'desc')}"
    folder = Path(f"sub-{entities['sub']}")
    if entities.get("ses"):
        folder /= f"ses-{entities['ses']}"
    return folder / datatype / f"{name}_{suffix}{ext}"


def raw_uri(bids_root, path) -> str:
    """BIDS URI of a raw input file: ``bids:raw:sub-01/anat/...``."""
    return "bids:raw:" + Path(path).resolve().relative_to(Path(bids_root).resolve()).as_posix()


def self_uri(relpath) -> str:
    """BIDS URI of another file of this derivatives dataset: ``bids::sub-01/...``."""
    return "bids::" + Path(relpath).as_posix()


def make_sidecar(kind: str, *, sources: list[str], skull_stripped: bool | None = None,
                 **extra) -> dict:
    """JSON sidecar for one derivative: ``Description``, ``Units``, ``Sources``,
    ``SkullStripped`` plus ``extra`` (method, parameters, reference, ...), JSON-ready."""
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
    Dockerfile / Apptainer definition), or None when not running in a container."""
    tag = os.environ.get("QSMFLOW_CONTAINER", "").strip()
    return tag or None


def dataset_description(bids_root=None, source_name: str | None = None,
                        links: dict | None = None) -> dict:
    """``dataset_description.json`` of the derivatives dataset; ``links``: ``{key: folder}`` of
    further input datasets (``--derivatives``), added to ``DatasetLinks`` for ``bids:<key>:``
    URIs and to ``SourceDatasets``."""
    gen = {"Name": "qsmflow", "Version": __version__,
           "Description": "Quantitative susceptibility mapping from multi-echo GRE",
           "CodeURL": "https://github.com/qsmflow/qsmflow"}
    tag = container_tag()
    if tag:
        gen["Container"] = {"Type": os.environ.get("QSMFLOW_CONTAINER_TYPE", "docker"),
                            "Tag": tag}
    desc = {
        "Name": f"qsmflow derivatives{f' of {source_name}' if source_name else ''}",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [gen],
        "HowToAcknowledge": "Cite qsmflow and the methods listed in each subject's report.",
    }
    if bids_root is not None:
        desc["DatasetLinks"] = {"raw": Path(bids_root).resolve().as_uri()}
        desc["SourceDatasets"] = [{"URL": Path(bids_root).resolve().as_uri()}]
    for key, folder in (links or {}).items():
        uri = Path(folder).resolve().as_uri()
        desc.setdefault("DatasetLinks", {})[key] = uri
        desc.setdefault("SourceDatasets", []).append({"URL": uri})
    return desc

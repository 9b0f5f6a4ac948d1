"""The run's folders before it starts: old results in the output folder, ``--clean-workdir``.

``old_results_warning`` reads the output folder's ``dataset_description.json`` (``GeneratedBy``)
and says when it holds another version's (or another pipeline's) derivatives, as fMRIPrep does.
``clean_work_dir`` deletes qsmflow's Nipype folder inside the work folder, and only when it looks
like one: a folder named ``qsmflow_wf`` (not a link) that holds Nipype's node files
(``_node.pklz``/``result_*.pklz``) and nothing that Nipype does not write.
``forget_missing_derivatives`` makes a rerun write again the derivatives deleted since the
last run (a cached sink would otherwise be reused and report files that are gone).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import __version__

#: name of the top-level Nipype workflow, i.e. qsmflow's folder inside the work folder
WORKFLOW_NAME = "qsmflow_wf"
#: files Nipype writes in its folders (anything else makes --clean-workdir refuse)
_NIPYPE_FILES = ("*.pklz", "*.json", "*.txt", "*.rst", "*.nii", "*.nii.gz", "*.png", "*.svg",
                 "*.dot", "*.js", "*.html", "*.npy", "*.npz", "*.pt", "*.lock", "*.log")


def generated_by(output_dir) -> list[dict]:
    """``GeneratedBy`` of ``<output_dir>/dataset_description.json`` ([] when absent/unreadable)."""
    try:
        desc = json.loads((Path(output_dir) / "dataset_description.json").read_text())
    except (OSError, ValueError):
        return []
    gen = desc.get("GeneratedBy") if isinstance(desc, dict) else None
    return [g for g in gen if isinstance(g, dict)] if isinstance(gen, list) else []


def old_results_warning(output_dir, version: str = __version__) -> str | None:
    """A one-line warning when ``output_dir`` holds derivatives of another qsmflow version or
    of another pipeline (outputs of both would be mixed); None for a new folder or this version."""
    gen = generated_by(output_dir)
    if not gen:
        return None
    first = gen[0]
    name, ver = str(first.get("Name", "?")), str(first.get("Version", "?"))
    if name == "qsmflow" and ver == version:
        return None
    what = f"qsmflow {ver}" if name == "qsmflow" else f"{name} {ver}"
    return (f"{output_dir} holds derivatives of {what}, not of qsmflow {version}: results of "
            "both would be mixed; use a new output folder for this version")


def _flat(x):
    if isinstance(x, (list, tuple)):
        return [y for v in x for y in _flat(v)]
    return [x]


def forget_missing_derivatives(work_dir) -> list[Path]:
    """Delete the cached results of every step in ``<work_dir>/qsmflow_wf`` that writes outside
    it (derivatives sinks, the DICOM export) whose written files or folders are not all there
    any more, so that the next run writes them again (the steps before stay cached). Returns
    the step folders forgotten."""
    from nipype.utils.filemanip import loadpkl

    from ..interfaces.bids import DerivativesSink
    from ..interfaces.dicom import DicomExportMaps

    writers = {DerivativesSink: "out_file", DicomExportMaps: "out_dirs"}
    root = Path(work_dir) / WORKFLOW_NAME
    forgotten = []
    for res in sorted(root.rglob("result_*.pklz")) if root.is_dir() else []:
        node_dir = res.parent
        if node_dir.parent.name == "mapflow":  # the MapNode's own folder decides
            continue
        try:
            result = loadpkl(res)
            kinds = set(_flat(getattr(result, "interface", None)))
            field = writers.get(next(iter(kinds))) if len(kinds) == 1 else None
            files = (_flat(getattr(result.outputs, field)) if field and result.outputs is not None
                     else [])
        except Exception:  # unreadable: Nipype decides as usual
            continue
        if field is None:  # not a step that writes outside the work folder
            continue
        if any(not isinstance(f, str) or not Path(f).exists() for f in files):
            shutil.rmtree(node_dir)
            forgotten.append(node_dir)
    return forgotten


def clean_work_dir(work_dir) -> Path | None:
    """Delete ``<work_dir>/qsmflow_wf`` (qsmflow's previous Nipype results) and return it, or
    None when there is none. ``ValueError`` (nothing deleted) when it does not look like a
    Nipype work folder: a link, no node files, or files Nipype does not write."""
    target = Path(work_dir) / WORKFLOW_NAME
    if not target.exists() and not target.is_symlink():
        return None
    if target.is_symlink() or not target.is_dir():
        raise ValueError(f"{target}: --clean-workdir refuses to delete a link or a file; remove "
                         "it yourself or choose another -w")
    files = [f for f in target.rglob("*") if f.is_file() or f.is_symlink()]
    nipype = [f for f in files if f.name == "_node.pklz" or f.name.startswith("result_")]
    foreign = [f for f in files if not any(f.match(p) for p in _NIPYPE_FILES)]
    if not nipype or foreign:
        why = f"{foreign[0]} is not a Nipype file" if foreign else "no Nipype node files in it"
        raise ValueError(f"{target}: does not look like a qsmflow work folder ({why}); "
                         "--clean-workdir deletes nothing; remove it yourself or choose another -w")
    shutil.rmtree(target)
    return target

"""``DerivativesSink``: copy one result into the derivatives dataset under its BIDS name."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject,
                                    OutputMultiObject, SimpleInterface, TraitedSpec, traits)

from ..io import sidecar_path, write_json


def copy_atomic(src, dst) -> Path:
    """Copy ``src`` to ``dst`` through a hidden temporary file and a rename: whole or nothing.

    A NIfTI is re-saved when the compression differs (work files are ``.nii`` for speed,
    derivatives ``.nii.gz``)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    recode = str(dst).endswith(".nii.gz") and not str(src).endswith(".nii.gz")
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp.nii.gz" if recode else ".tmp",
                               dir=dst.parent)
    os.close(fd)
    try:
        if recode:
            import nibabel as nib

            nib.save(nib.load(str(src)), tmp)
        else:
            shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dst


class _DerivativesSinkInputSpec(BaseInterfaceInputSpec):
    in_file = InputMultiObject(File(exists=True), mandatory=True, desc="result(s) to store")
    base_directory = traits.Str(mandatory=True, desc="root of the derivatives dataset")
    relpath = InputMultiObject(traits.Str, mandatory=True,
                               desc="path(s) relative to base_directory, one per in_file")
    sidecar = traits.Dict(desc="JSON sidecar written next to each image")
    meta = traits.Dict(desc="sidecar entries computed by the pipeline (merged over sidecar)")
    depends_on = traits.Any(desc="not used: connect the acquisition's last results here so "
                                 "nothing is written before the whole acquisition succeeded")


class _DerivativesSinkOutputSpec(TraitedSpec):
    out_file = OutputMultiObject(File, desc="the stored file(s)")


class DerivativesSink(SimpleInterface):
    """Write each ``in_file`` to ``base_directory/relpath`` (atomic), NIfTIs with their JSON
    sidecar (``sidecar`` updated with ``meta``)."""

    input_spec = _DerivativesSinkInputSpec
    output_spec = _DerivativesSinkOutputSpec

    def _run_interface(self, runtime):
        base = Path(self.inputs.base_directory).resolve()
        files, rels = list(self.inputs.in_file), list(self.inputs.relpath)
        if len(files) != len(rels):
            raise ValueError(f"{len(files)} files but {len(rels)} target names")
        side = {**(self.inputs.sidecar or {}), **(self.inputs.meta or {})}
        out = []
        for src, rel in zip(files, rels):
            dst = (base / rel).resolve()
            if base not in dst.parents:
                raise ValueError(f"{rel}: derivative path escapes {base}")
            if side and rel.endswith((".nii", ".nii.gz")):
                write_json(sidecar_path(dst), side)
            out.append(str(copy_atomic(src, dst)))
        self._results["out_file"] = out
        return runtime

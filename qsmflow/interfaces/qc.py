"""``QualityControl``: the QC verdict of every χ map of one acquisition (:mod:`qsmflow.qc`),
added to each χ map's sidecar entries as ``QC``."""

from __future__ import annotations

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject,
                                    SimpleInterface, TraitedSpec, traits)

from .. import qc
from ..io import load_nifti
from ..physics import hz_to_ppm
from ._base import geometry, opt


class _QualityControlInputSpec(BaseInterfaceInputSpec):
    chi_maps = InputMultiObject(File(exists=True), mandatory=True, desc="χ maps (ppm)")
    in_meta = InputMultiObject(traits.Dict, mandatory=True,
                               desc="sidecar entries of each χ map (same order)")
    local_field = File(exists=True, mandatory=True, desc="local field (Hz)")
    mask = File(exists=True, mandatory=True, desc="mask the χ maps are valid in")
    brain_mask = File(exists=True, desc="brain mask before background removal (volume, shape)")
    residual = File(exists=True, desc="multi-echo fit residual (rad)")
    b0_tesla = traits.Float(mandatory=True, desc="field strength (T)")
    b0_dir = traits.List(traits.Float, desc="B0 direction in voxel axes (sidecar B0_dir)")


class _QualityControlOutputSpec(TraitedSpec):
    out_meta = traits.List(traits.Dict, desc="in_meta with a QC entry each")
    out_chi = traits.List(File, desc="chi_maps, passed on once QC is done (a list, as Merge)")
    verdict = traits.Str(desc="worst verdict over the χ maps: pass, warn or fail")


class QualityControl(SimpleInterface):
    """:func:`qsmflow.qc.qc_report` of each χ map → ``QC`` in its sidecar entries."""

    input_spec = _QualityControlInputSpec
    output_spec = _QualityControlOutputSpec

    def _run_interface(self, runtime):
        field_hz, affine, _ = load_nifti(self.inputs.local_field)
        mask = load_nifti(self.inputs.mask)[0] > 0
        vs, b0_dir = geometry(affine, opt(self.inputs.b0_dir))
        brain = load_nifti(self.inputs.brain_mask)[0] > 0 if opt(self.inputs.brain_mask) else None
        res = load_nifti(self.inputs.residual)[0] if opt(self.inputs.residual) else None
        f = hz_to_ppm(field_hz, self.inputs.b0_tesla)
        metas, rank = [], {"pass": 0, "warn": 1, "fail": 2}
        worst = "pass"
        for chi_file, meta in zip(self.inputs.chi_maps, self.inputs.in_meta):
            report = qc.qc_report(load_nifti(chi_file)[0], f, mask, vs, b0_dir, brain_mask=brain,
                                  affine=affine, fit_residual_rad=res)
            worst = max(worst, report["Verdict"], key=rank.get)
            metas.append({**meta, "QC": report})
        self._results["out_meta"] = metas
        self._results["verdict"] = worst
        self._results["out_chi"] = list(self.inputs.chi_maps)
        return runtime

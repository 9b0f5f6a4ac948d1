"""``QualityControl``: the QC verdict of every χ map of one acquisition (:mod:`qsmflow.qc`),
added to each χ map's sidecar entries as ``QC``."""

from __future__ import annotations

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject,
                                    SimpleInterface, TraitedSpec, traits)

from .. import inversion, qc
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
    total_field = File(exists=True, desc="total field (Hz), for the maps of "
                       "inversion.TOTAL_FIELD_METHODS (needs brain_mask)")
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
        single_step = any(m.get("Method") in inversion.TOTAL_FIELD_METHODS
                          for m in self.inputs.in_meta)
        total = (hz_to_ppm(load_nifti(self.inputs.total_field)[0], self.inputs.b0_tesla)
                 if single_step and opt(self.inputs.total_field) and brain is not None else None)
        metas, rank = [], {"pass": 0, "warn": 1, "fail": 2}
        worst = "pass"
        for chi_file, meta in zip(self.inputs.chi_maps, self.inputs.in_meta):
            method, params = meta.get("Method"), meta.get("Parameters") or {}
            radius = inversion.total_field_radius_mm(method, vs, **params)
            if radius is not None and total is not None:  # judged on its own data term
                args = (total, inversion.valid_mask(method, brain, vs, **params))
            else:
                args, radius = (f, mask), None
            report = qc.qc_report(load_nifti(chi_file)[0], *args, vs, b0_dir, brain_mask=brain,
                                  affine=affine, fit_residual_rad=res,
                                  total_field_radius_mm=radius)
            worst = max(worst, report["Verdict"], key=rank.get)
            metas.append({**meta, "QC": report})
        self._results["out_meta"] = metas
        self._results["verdict"] = worst
        self._results["out_chi"] = list(self.inputs.chi_maps)
        return runtime

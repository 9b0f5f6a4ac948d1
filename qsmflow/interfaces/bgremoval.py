"""``BackgroundRemoval``: total field (Hz) → local field (Hz) + the eroded mask it is valid in."""

from __future__ import annotations

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec,
                                    traits)

from .. import bgremoval
from ..io import load_nifti, save_nifti
from ._base import geometry, jsonable, load_on_grid, opt, out_file


class _BackgroundRemovalInputSpec(BaseInterfaceInputSpec):
    in_field = File(exists=True, mandatory=True, desc="total field (Hz)")
    mask = File(exists=True, mandatory=True, desc="brain mask")
    method = traits.Enum(*bgremoval.METHODS, usedefault=True, desc="background-removal method")
    params = traits.Dict(desc="method parameters (radius_mm, ...)")
    b0_dir = traits.List(traits.Float, desc="B0 direction in voxel axes (sidecar B0_dir)")
    num_threads = traits.Int(1, usedefault=True, nohash=True,
                             desc="FFT threads (not hashed: a cached result is reused)")


class _BackgroundRemovalOutputSpec(TraitedSpec):
    out_field = File(desc="local field (Hz)")
    out_mask = File(desc="eroded brain mask the local field is valid in")
    out_meta = traits.Dict(desc="method, parameters and brain coverage (BrainCoverage 0–1, "
                                "BrainVolumeKept_ml) for the local field's sidecar")


class BackgroundRemoval(SimpleInterface):
    """Remove the background field with RESHARP, V-SHARP, PDF or LBV (units in = units out); the
    sidecar metadata says how much of the brain mask the local field covers."""

    input_spec = _BackgroundRemovalInputSpec
    output_spec = _BackgroundRemovalOutputSpec

    def _run_interface(self, runtime):
        field, affine, _ = load_nifti(self.inputs.in_field)
        mask = load_on_grid(self.inputs.mask, self.inputs.in_field, field.shape, affine) > 0
        vs, b0_dir = geometry(affine, opt(self.inputs.b0_dir))
        params = dict(self.inputs.params or {})
        local, eroded = bgremoval.remove_background(self.inputs.method, field, mask, vs, b0_dir,
                                                    workers=self.inputs.num_threads, **params)
        self._results["out_field"] = str(save_nifti(out_file("local_field_hz.nii"), local,
                                                    affine))
        self._results["out_mask"] = str(save_nifti(out_file("mask_eroded.nii"), eroded > 0,
                                                   affine))
        self._results["out_meta"] = {"BackgroundRemoval": self.inputs.method,
                                     "BackgroundRemovalParameters": jsonable(
                                         bgremoval.resolved_parameters(self.inputs.method, vs,
                                                                       **params)),
                                     **bgremoval.coverage(mask, eroded, vs)}
        return runtime

"""``BrainMask``: brain mask from the magnitude and/or the phase quality."""

from __future__ import annotations

import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec,
                                    traits)

# qsmflow.masking imported in _run_interface (TEMP until it lands)
from ..io import load_nifti, save_nifti
from ._base import geometry, jsonable, opt, out_file

#: masking choices of the app
MASK_METHODS = ("magnitude", "phase-quality", "combined")


class _BrainMaskInputSpec(BaseInterfaceInputSpec):
    method = traits.Enum(*MASK_METHODS, usedefault=True, desc="mask source")
    magnitude = File(exists=True, desc="echo-combined magnitude (3D)")
    residual = File(exists=True, desc="field-fit residual (rad), for the phase-quality mask")
    field = File(exists=True, desc="total field (Hz), for the phase-quality mask")
    params = traits.Dict(desc="masking parameters (erode_mm, ...)")


class _BrainMaskOutputSpec(TraitedSpec):
    out_mask = File(desc="brain mask (uint8)")
    out_meta = traits.Dict(desc="method and parameters for the sidecar")


class BrainMask(SimpleInterface):
    """Magnitude threshold + largest component + hole filling + erosion, or a phase-quality
    mask from the field fit, or both intersected."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        from .. import masking

        method = self.inputs.method
        params = dict(self.inputs.params or {})
        ref = opt(self.inputs.magnitude) or opt(self.inputs.residual) or opt(self.inputs.field)
        if ref is None:
            raise ValueError("BrainMask needs a magnitude or a field fit")
        _, affine, _ = load_nifti(ref, dtype=None)
        vs, _ = geometry(affine)
        mask = None
        if method in ("magnitude", "combined"):
            if not opt(self.inputs.magnitude):
                raise ValueError(f"masking {method!r} needs a magnitude image: use "
                                 "--masking phase-quality for phase-only data")
            mag = load_nifti(self.inputs.magnitude)[0]
            mask = masking.magnitude_mask(mag, vs, **params)
        if method in ("phase-quality", "combined"):
            pq = masking.phase_quality_mask(**self._phase_quality_inputs(vs))
            mask = pq if mask is None else (mask & pq)
        mask = np.asarray(mask, bool)
        if not mask.any():
            raise ValueError(f"the {method} brain mask is empty: check the magnitude/phase images "
                             "or choose another --masking")
        self._results["out_mask"] = str(save_nifti(out_file("brain_mask.nii.gz"), mask, affine))
        self._results["out_meta"] = {"Masking": method, "MaskingParameters": jsonable(params)}
        return runtime

    def _phase_quality_inputs(self, vs) -> dict:
        kw = {"voxel_size": vs}
        if opt(self.inputs.residual):
            kw["residual"] = load_nifti(self.inputs.residual)[0]
        if opt(self.inputs.field):
            kw["field_hz"] = load_nifti(self.inputs.field)[0]
        if opt(self.inputs.magnitude):
            kw["magnitude"] = load_nifti(self.inputs.magnitude)[0]
        return kw

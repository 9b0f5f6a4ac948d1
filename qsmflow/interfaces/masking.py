"""``BrainMask``: brain mask from the magnitude and/or the phase quality; ``UserBrainMask``: a
user-supplied one (``--derivatives``)."""

from __future__ import annotations

import nibabel as nib
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject,
                                    SimpleInterface, TraitedSpec, traits)

from .. import masking
from ..user_mask import load_user_mask
from ..io import save_nifti
from ._base import jsonable, load_on_grid, opt, out_file

MASK_METHODS = tuple(masking.MASK_METHODS)


class _BrainMaskInputSpec(BaseInterfaceInputSpec):
    method = traits.Enum(*MASK_METHODS, usedefault=True, desc="mask source")
    magnitude = File(exists=True, desc="magnitude: 4D (echoes last) or echo-combined 3D")
    echo_times = traits.List(traits.Float, desc="echo times (s) of a 4D magnitude: enables the "
                             "R2* criterion that separates brain from scalp and face")
    phase = File(exists=True, desc="phase (rad, 4D echoes): coherence of the first echo")
    residual = File(exists=True, desc="multi-echo fit residual (rad)")
    params = traits.Dict(desc="parameters of masking.magnitude_mask / phase_quality_mask")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="CPU threads (deepbet)")


class _BrainMaskOutputSpec(TraitedSpec):
    out_mask = File(desc="brain mask (uint8)")
    out_meta = traits.Dict(desc="method and parameters for the sidecar")


class BrainMask(SimpleInterface):
    """``deepbet``: the deepbet network trimmed to the magnitude foreground
    (:func:`qsmflow.masking.deepbet_mask`); ``magnitude``: threshold, opening, largest
    component, hole filling, erosion (:func:`qsmflow.masking.magnitude_mask`); ``auto``:
    deepbet for a whole-head field of view, else magnitude
    (:func:`qsmflow.masking.auto_mask_method`); ``phase-quality``: fit residual and phase
    coherence (:func:`qsmflow.masking.phase_quality_mask`); ``combined``: ``auto``'s mask
    intersected with the phase-quality mask."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        params = dict(self.inputs.params or {})
        ref = opt(self.inputs.magnitude) or opt(self.inputs.phase) or opt(self.inputs.residual)
        if ref is None:
            raise ValueError("BrainMask needs a magnitude, a phase or a fit residual")
        header = nib.load(ref)
        affine, shape = header.affine, header.shape
        arrays = {}
        for name in ("magnitude", "phase", "residual"):
            if opt(getattr(self.inputs, name)):
                arrays[name] = load_on_grid(getattr(self.inputs, name), ref, shape, affine)
        if arrays.get("phase") is not None and arrays["phase"].ndim == 4:
            arrays["phase"] = arrays["phase"][..., 0]
        mask, used = masking.brain_mask(self.inputs.method, affine,
                                        te_s=opt(self.inputs.echo_times) or None,
                                        workers=self.inputs.num_threads, **arrays, **params)
        self._results["out_mask"] = str(save_nifti(out_file("brain_mask.nii"), mask, affine))
        self._results["out_meta"] = {"Masking": used, "MaskingRequested": self.inputs.method,
                                     "MaskingParameters": jsonable(params)}
        return runtime


class _UserBrainMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="user-supplied brain mask (--derivatives)")
    reference = InputMultiObject(File(exists=True), mandatory=True,
                                 desc="echo images; the mask must be on the first one's grid")


class UserBrainMask(SimpleInterface):
    """A user-supplied mask, checked (grid, binary, not empty; :mod:`qsmflow.user_mask`) and
    stored as a 0/1 uint8 image on its own affine: the ``BrainMask`` of ``--derivatives``."""

    input_spec = _UserBrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        ref = nib.load(self.inputs.reference[0])
        try:
            mask, affine = load_user_mask(self.inputs.in_file, ref.shape, ref.affine)
        except ValueError as exc:
            raise ValueError(f"{self.inputs.in_file}: {exc}") from None
        self._results["out_mask"] = str(save_nifti(out_file("brain_mask.nii"), mask, affine))
        self._results["out_meta"] = {"Masking": "user"}
        return runtime

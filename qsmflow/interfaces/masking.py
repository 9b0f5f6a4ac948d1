"""``BrainMask``: brain mask from the magnitude and/or the phase quality; ``UserBrainMask``: a
user-supplied one (``--derivatives``)."""

from __future__ import annotations

import inspect

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject,
                                    SimpleInterface, TraitedSpec, traits)

from .. import masking
from ..user_mask import load_user_mask
from ..io import load_nifti, save_nifti
from ._base import geometry, jsonable, opt, out_file

MASK_METHODS = tuple(masking.MASK_METHODS)


def _accepted(fn, params: dict) -> dict:
    """The entries of ``params`` that ``fn`` takes as keyword arguments."""
    names = inspect.signature(fn).parameters
    return {k: v for k, v in params.items() if k in names}


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
        method = self.inputs.method
        params = dict(self.inputs.params or {})
        ref = opt(self.inputs.magnitude) or opt(self.inputs.phase) or opt(self.inputs.residual)
        if ref is None:
            raise ValueError("BrainMask needs a magnitude, a phase or a fit residual")
        _, affine, _ = load_nifti(ref, dtype=None)
        vs, _ = geometry(affine)
        mag = load_nifti(self.inputs.magnitude)[0] if opt(self.inputs.magnitude) else None
        mask = None
        extractor = method
        te_s = (list(self.inputs.echo_times) if mag is not None and mag.ndim == 4
                and self.inputs.echo_times and mag.shape[-1] >= 2 else None)
        if method in ("auto", "deepbet", "magnitude", "combined"):
            if mag is None:
                raise ValueError(f"--masking {method} needs magnitude images: use "
                                 "--masking phase-quality for phase-only data")
            if method in ("auto", "combined"):
                extractor = masking.auto_mask_method(mag.shape, vs)
        if extractor == "deepbet":
            if not masking.deepbet_available():
                raise ValueError("--masking deepbet needs the deepbet package: pip install "
                                 "deepbet, or use --masking magnitude")
            kw = _accepted(masking.deepbet_mask, params)
            kw.setdefault("te_s", te_s)
            mask = masking.deepbet_mask(mag, affine, threads=self.inputs.num_threads, **kw)
        elif extractor == "magnitude":
            kw = _accepted(masking.magnitude_mask, params)
            kw.setdefault("te_s", te_s)
            mask = masking.magnitude_mask(mag, vs, **kw)
        if method in ("phase-quality", "combined"):
            kw = _accepted(masking.phase_quality_mask, params)
            if method == "phase-quality":  # no magnitude mask: separate brain from scalp here
                kw = {"voxel_size": vs, "open_mm": 15.0, "coherence_min": 0.9, **kw}
            if opt(self.inputs.residual):
                kw["residual"] = load_nifti(self.inputs.residual)[0]
            if opt(self.inputs.phase):
                ph = load_nifti(self.inputs.phase)[0]
                kw["phase"] = ph[..., 0] if ph.ndim == 4 else ph
                kw["magnitude"] = mag
            pq = masking.phase_quality_mask(**kw)
            mask = pq if mask is None else masking.combine_masks(mask, pq)
        mask = np.asarray(mask, bool)
        if not mask.any():
            raise ValueError(f"the {method} brain mask is empty: check the magnitude/phase "
                             "images or choose another --masking")
        self._results["out_mask"] = str(save_nifti(out_file("brain_mask.nii"), mask, affine))
        used = extractor + (" + phase-quality" if method == "combined" else "")
        self._results["out_meta"] = {"Masking": used, "MaskingRequested": method,
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

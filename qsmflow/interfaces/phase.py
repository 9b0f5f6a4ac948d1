"""Phase interfaces: scale and stack the echoes (``ScalePhase``), unwrap + fit the field
(``MultiEchoFit``)."""

from __future__ import annotations

import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject,
                                    SimpleInterface, TraitedSpec, traits)

from .. import phase
from ..io import load_nifti, save_nifti
from ._base import geometry, load_on_grid, opt, out_file


class _ScalePhaseInputSpec(BaseInterfaceInputSpec):
    phase_files = InputMultiObject(File(exists=True), mandatory=True,
                                   desc="phase echoes (3D each, or one 4D file)")
    magnitude_files = InputMultiObject(File(exists=True), desc="magnitude echoes, same order")
    sidecars = traits.List(traits.Dict, mandatory=True,
                           desc="JSON metadata of each phase file (EchoTime s, Units)")


class _ScalePhaseOutputSpec(TraitedSpec):
    out_phase = File(desc="phase (rad), echoes in the 4th dimension, ordered by echo time")
    out_magnitude = File(desc="magnitude, echoes in the 4th dimension (if given)")
    out_magnitude_rss = File(desc="root-sum-of-squares magnitude over echoes (if given)")
    echo_times = traits.List(traits.Float, desc="echo times (s), increasing")


class ScalePhase(SimpleInterface):
    """Phase → radians (sidecar ``Units`` + NIfTI scaling), echoes stacked in TE order."""

    input_spec = _ScalePhaseInputSpec
    output_spec = _ScalePhaseOutputSpec

    def _run_interface(self, runtime):
        mags = opt(self.inputs.magnitude_files) or None
        ph, mag, te, affine = phase.load_echoes(list(self.inputs.phase_files), mags,
                                                [dict(s) for s in self.inputs.sidecars])
        self._results["out_phase"] = str(save_nifti(out_file("phase_rad.nii"), ph, affine))
        self._results["echo_times"] = [float(t) for t in te]
        if mag is not None:
            self._results["out_magnitude"] = str(save_nifti(out_file("magnitude.nii"), mag,
                                                            affine))
            rss = np.sqrt(np.sum(np.square(mag, dtype=np.float64), axis=-1))
            self._results["out_magnitude_rss"] = str(save_nifti(out_file("magnitude_rss.nii"),
                                                                rss, affine))
        return runtime


class _MultiEchoFitInputSpec(BaseInterfaceInputSpec):
    in_phase = File(exists=True, mandatory=True, desc="wrapped phase (rad), 4D echoes")
    in_magnitude = File(exists=True, desc="magnitude, 4D echoes (weights, unwrapping quality)")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    mask = File(exists=True, desc="region to unwrap and fit (default: whole volume)")
    unwrapping = traits.Str(phase.DEFAULT_UNWRAPPING, usedefault=True,
                            desc="spatial unwrapping method (phase.UNWRAPPING_METHODS)")
    params = traits.Dict(desc="extra keyword arguments of phase.unwrap_echoes")
    num_threads = traits.Int(1, usedefault=True, nohash=True,
                             desc="FFT threads (not hashed: a cached result is reused)")


class _MultiEchoFitOutputSpec(TraitedSpec):
    out_field = File(desc="total field (Hz)")
    out_noise = File(desc="per-voxel standard deviation of the field estimate (Hz)")
    out_phase_offset = File(desc="phase offset at TE = 0 (rad)")
    out_residual = File(desc="fit residual (rad)")
    out_meta = traits.Dict(desc="method and parameters for the sidecar")


class MultiEchoFit(SimpleInterface):
    """Unwrap every echo (spatially and across echoes), then magnitude-weighted least-squares
    fit of phase against TE → total field (Hz), phase offset and a noise map."""

    input_spec = _MultiEchoFitInputSpec
    output_spec = _MultiEchoFitOutputSpec

    def _run_interface(self, runtime):
        ph, affine, _ = load_nifti(self.inputs.in_phase)
        mag = load_nifti(self.inputs.in_magnitude)[0] if opt(self.inputs.in_magnitude) else None
        mask = (load_on_grid(self.inputs.mask, self.inputs.in_phase, ph.shape, affine) > 0
                if opt(self.inputs.mask) else None)
        if ph.ndim == 3:
            ph = ph[..., None]
            mag = None if mag is None else mag.reshape(ph.shape)
        te = np.asarray(self.inputs.echo_times, float)
        vs, _ = geometry(affine)
        params = dict(self.inputs.params or {})
        unwrapped = phase.unwrap_echoes(ph, mag, te, vs, method=self.inputs.unwrapping, mask=mask,
                                        workers=self.inputs.num_threads, **params)
        fit = phase.fit_multi_echo(unwrapped, mag, te, mask=mask)
        del unwrapped
        self._results["out_field"] = str(save_nifti(out_file("field_hz.nii"), fit.field_hz,
                                                    affine))
        for key, name in (("out_noise", "noise_hz"), ("out_phase_offset", "phase_offset_rad"),
                          ("out_residual", "residual")):
            arr = getattr(fit, name, None)
            if arr is not None:
                self._results[key] = str(save_nifti(out_file(f"{name}.nii"), arr, affine))
        self._results["out_meta"] = {
            "Unwrapping": self.inputs.unwrapping,
            "FieldFit": "magnitude-weighted least squares of unwrapped phase against echo time",
            "EchoTime": [float(t) for t in te],
        }
        return runtime

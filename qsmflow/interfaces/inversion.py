"""``DipoleInversion``: local field (Hz) → χ (ppm) with one method of
:mod:`qsmflow.inversion`, referenced once (mean χ in the mask = 0 by default)."""

from __future__ import annotations

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec,
                                    traits)

from .. import inversion
from ..inversion.reference import describe as describe_reference
from ..io import load_nifti, save_nifti
from ..physics import hz_to_ppm
from ._base import geometry, jsonable, load_on_grid, opt, out_file


class _DipoleInversionInputSpec(BaseInterfaceInputSpec):
    local_field = File(exists=True, mandatory=True,
                       desc="local field (Hz); the total field for inversion.TOTAL_FIELD_METHODS")
    mask = File(exists=True, mandatory=True, desc="mask the field is valid in (the brain mask "
                "for inversion.TOTAL_FIELD_METHODS)")
    b0_tesla = traits.Float(mandatory=True, desc="field strength (T)")
    echo_times = traits.List(traits.Float, desc="echo times (s): the phase scale of the "
                             "nonlinear data terms (inversion.acquisition_parameters)")
    method = traits.Enum(*inversion.METHODS, mandatory=True, desc="inversion method")
    params = traits.Dict(desc="method parameters (see qsmflow.inversion.method_parameters)")
    reference = traits.Enum("mean", "csf", "none", usedefault=True, desc="χ reference")
    magnitude = File(exists=True, desc="echo-combined magnitude (MEDI edge weights)")
    noise = File(exists=True, desc="field noise map (Hz), MEDI data weight = 1/noise")
    b0_dir = traits.List(traits.Float, desc="B0 direction in voxel axes (sidecar B0_dir)")
    num_threads = traits.Int(1, usedefault=True, nohash=True,
                             desc="FFT threads (not hashed: a cached result is reused)")


class _DipoleInversionOutputSpec(TraitedSpec):
    out_file = File(desc="susceptibility χ (ppm)")
    out_meta = traits.Dict(desc="method, parameters and reference for the sidecar")


class DipoleInversion(SimpleInterface):
    """Dipole inversion of the local field; the field (Hz) and noise (Hz) are converted to ppm."""

    input_spec = _DipoleInversionInputSpec
    output_spec = _DipoleInversionOutputSpec

    def _run_interface(self, runtime):
        field_hz, affine, _ = load_nifti(self.inputs.local_field)
        mask = load_on_grid(self.inputs.mask, self.inputs.local_field, field_hz.shape, affine)
        vs, b0_dir = geometry(affine, opt(self.inputs.b0_dir))
        b0 = self.inputs.b0_tesla
        mag = noise = None
        if opt(self.inputs.magnitude):
            mag, _, _ = load_nifti(self.inputs.magnitude)
        if opt(self.inputs.noise):
            noise = hz_to_ppm(load_nifti(self.inputs.noise)[0], b0)
        method = self.inputs.method
        params = dict(self.inputs.params or {})
        if opt(self.inputs.echo_times):
            params = {**inversion.acquisition_parameters(method, b0, self.inputs.echo_times),
                      **params}
        chi = inversion.invert(method, hz_to_ppm(field_hz, b0), mask > 0, vs, b0_dir,
                               magnitude=mag, noise=noise, reference_mode=self.inputs.reference,
                               workers=self.inputs.num_threads, **params)
        path = out_file(f"chi_{method}.nii")
        save_nifti(path, chi, affine)
        self._results["out_file"] = path
        self._results["out_meta"] = {
            "Method": method,
            "Parameters": jsonable(inversion.resolved_parameters(method, **params)),
            "Reference": describe_reference(self.inputs.reference),
            "MagneticFieldStrength": b0,
            "B0Direction": [round(float(x), 6) for x in b0_dir],
        }
        if method in inversion.TOTAL_FIELD_METHODS:
            self._results["out_meta"]["Input"] = (
                "total field in the brain mask (background removal inside the data term); χ "
                "is valid in the brain mask less its outer edge_mm")
        return runtime

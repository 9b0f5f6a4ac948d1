"""``RelaxationMaps`` (R2* in 1/s, T2* in ms) and ``SWIMaps`` (CLEAR-SWI-like SWI + minIP):
the clinical maps besides χ, from :mod:`qsmflow.maps`."""

from __future__ import annotations

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec,
                                    traits)

from .. import maps
from ..io import load_nifti, save_nifti
from ._base import geometry, out_file


def _params(params, allowed: dict, step: str) -> dict:
    """``allowed`` (defaults) updated with ``params``; unknown names refused, naming the fix."""
    unknown = sorted(set(params or {}) - set(allowed))
    if unknown:
        raise ValueError(f"[params.{step}]: unknown parameter(s) {', '.join(unknown)}; known: "
                         f"{', '.join(allowed)}")
    return {**allowed, **dict(params or {})}


#: parameters of each step and their defaults (``[params.r2star]``, ``[params.swi]``)
R2STAR_PARAMS = {"r2star_max": maps.R2STAR_MAX, "t2star_max_ms": maps.T2STAR_MAX_MS}
SWI_PARAMS = {"n": maps.SWI_N_MASK, "slab_mm": maps.MINIP_SLAB_MM, "te_s": None}


class _RelaxationMapsInputSpec(BaseInterfaceInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="magnitude, 4D (echoes last)")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    params = traits.Dict(desc="r2star_max (1/s), t2star_max_ms (ms)")


class _RelaxationMapsOutputSpec(TraitedSpec):
    out_r2star = File(desc="R2* (1/s)")
    out_t2star = File(desc="T2* (ms)")
    out_meta = traits.Dict(desc="method and parameters for the sidecars")


class RelaxationMaps(SimpleInterface):
    """R2* and T2* maps from the multi-echo magnitude (:func:`qsmflow.maps.relaxation_maps`)."""

    input_spec = _RelaxationMapsInputSpec
    output_spec = _RelaxationMapsOutputSpec

    def _run_interface(self, runtime):
        p = _params(self.inputs.params, R2STAR_PARAMS, "r2star")
        mag, affine, _ = load_nifti(self.inputs.magnitude)
        r2, t2 = maps.relaxation_maps(mag, list(self.inputs.echo_times), **p)
        self._results["out_r2star"] = str(save_nifti(out_file("r2star.nii"), r2, affine))
        self._results["out_t2star"] = str(save_nifti(out_file("t2star.nii"), t2, affine))
        self._results["out_meta"] = {
            "Method": "multi-echo magnitude fit",
            "MethodDescription": "magnitude²-weighted fit of ln(magnitude) against echo time "
                                 "(with a quadratic intravoxel-dephasing term for >= 4 echoes)",
            "Parameters": p, "EchoTime": [float(t) for t in self.inputs.echo_times]}
        return runtime


class _SWIMapsInputSpec(BaseInterfaceInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="magnitude, 4D (echoes last) or 3D")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    local_field = File(exists=True, mandatory=True, desc="local field (Hz), 0 outside its mask")
    params = traits.Dict(desc="n (phase-mask multiplications), slab_mm (minIP slab, mm), te_s "
                              "(echo time of the phase mask, s; default: effective TE)")


class _SWIMapsOutputSpec(TraitedSpec):
    out_swi = File(desc="CLEAR-SWI-like SWI (a.u.)")
    out_minip = File(desc="sliding minimum-intensity projection of the SWI (a.u.)")
    out_meta = traits.Dict(desc="method and parameters for the SWI's sidecar")
    out_meta_minip = traits.Dict(desc="the same for the minIP's sidecar")


class SWIMaps(SimpleInterface):
    """CLEAR-SWI-like SWI (:func:`qsmflow.maps.clear_swi`) and its sliding minIP along the
    third array axis (:func:`qsmflow.maps.minimum_intensity_projection`)."""

    input_spec = _SWIMapsInputSpec
    output_spec = _SWIMapsOutputSpec

    def _run_interface(self, runtime):
        p = _params(self.inputs.params, SWI_PARAMS, "swi")
        mag, affine, _ = load_nifti(self.inputs.magnitude)
        field = load_nifti(self.inputs.local_field)[0]
        vs, _ = geometry(affine)
        swi, te = maps.clear_swi(mag, list(self.inputs.echo_times), field, n=int(p["n"]),
                                 te_swi_s=p["te_s"])
        minip = maps.minimum_intensity_projection(swi, vs, p["slab_mm"], axis=2)
        n_sl = maps.minip_slices(vs[2], p["slab_mm"])
        self._results["out_swi"] = str(save_nifti(out_file("swi.nii"), swi, affine))
        self._results["out_minip"] = str(save_nifti(out_file("swi_minip.nii"), minip, affine))
        meta = {
            "Method": "CLEAR-SWI-like",
            "MethodDescription": "after Eckstein et al. 2021 (qsmflow's implementation, not "
                                 "CLEARSWI.jl): SNR-weighted echo combination of the magnitude "
                                 "(weights magnitude x TE) times a negative phase mask of the "
                                 "local field (positive frequency = paramagnetic is darkened) "
                                 "applied n times",
            "Parameters": {"n": int(p["n"]), "PhaseMaskEchoTime": te,
                           "PhaseSource": "local field after background removal"}}
        self._results["out_meta"] = meta
        self._results["out_meta_minip"] = {
            **meta, "Projection": "sliding minimum-intensity projection along the third voxel "
                                  "axis (slices)",
            "MinIPSlabThickness_mm": round(n_sl * float(vs[2]), 3), "MinIPSlices": n_sl}
        return runtime

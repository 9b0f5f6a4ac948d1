"""``ReportFigures``: the mosaic PNGs of one acquisition for the subject's report."""

from __future__ import annotations

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject,
                                    OutputMultiObject, SimpleInterface, TraitedSpec, traits)

from ..io import load_nifti
from ..report.figures import acquisition_figures
from ._base import geometry, opt


class _ReportFiguresInputSpec(BaseInterfaceInputSpec):
    magnitude = File(exists=True, desc="echo-combined magnitude")
    mask = File(exists=True, mandatory=True, desc="brain mask")
    total_field = File(exists=True, mandatory=True, desc="total field (Hz)")
    local_field = File(exists=True, mandatory=True, desc="local field (Hz)")
    chi_maps = InputMultiObject(File(exists=True), mandatory=True, desc="χ maps (ppm)")
    chi_names = traits.List(traits.Str, mandatory=True, desc="method of each χ map")
    prefix = traits.Str(mandatory=True, desc="file-name prefix (the acquisition's name)")
    r2star = File(exists=True, desc="R2* (1/s)")
    swi = File(exists=True, desc="SWI (a.u.)")
    swi_minip = File(exists=True, desc="minIP of the SWI (a.u.)")


class _ReportFiguresOutputSpec(TraitedSpec):
    out_figures = OutputMultiObject(File, desc="mask.png, field.png, chi.png (+ maps.png with "
                                               "any of r2star, swi, swi_minip)")


class ReportFigures(SimpleInterface):
    """Mosaics: magnitude + mask contour, total/local field, all χ maps on one colour scale,
    the clinical maps (R2*, SWI, minIP) when given."""

    input_spec = _ReportFiguresInputSpec
    output_spec = _ReportFiguresOutputSpec

    def _run_interface(self, runtime):
        mask, affine, _ = load_nifti(self.inputs.mask)
        vs, _ = geometry(affine)
        names = list(self.inputs.chi_names)
        if len(names) != len(self.inputs.chi_maps):
            raise ValueError(f"{len(self.inputs.chi_maps)} χ maps but {len(names)} names")
        chi = {n: load_nifti(f)[0] for n, f in zip(names, self.inputs.chi_maps)}
        mag = load_nifti(self.inputs.magnitude)[0] if opt(self.inputs.magnitude) else None
        figs = acquisition_figures(runtime.cwd, self.inputs.prefix, magnitude=mag, mask=mask,
                                   total_field=load_nifti(self.inputs.total_field)[0],
                                   local_field=load_nifti(self.inputs.local_field)[0], chi=chi,
                                   voxel_size=vs, maps={
                                       k: load_nifti(getattr(self.inputs, k))[0]
                                       for k in ("r2star", "swi", "swi_minip")
                                       if opt(getattr(self.inputs, k))})
        self._results["out_figures"] = [figs[k] for k in ("mask", "field", "chi", "maps")
                                        if k in figs]
        return runtime

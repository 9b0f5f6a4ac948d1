"""Nipype interface around :func:`qsmflow.dicom.export.export_chimap` (χ map → DICOM series)."""

from __future__ import annotations

import os
import shutil

from nipype.interfaces.base import (BaseInterfaceInputSpec, Directory, File, SimpleInterface, TraitedSpec,
                                    isdefined, traits)


class _DicomExportInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="χ map (NIfTI, ppm)")
    source = traits.Either(File(exists=True), Directory(exists=True), traits.Dict(), mandatory=True,
                           desc="raw echo sidecar (.json with DicomSource), its dict, or the source DICOM folder")
    method = traits.Str(mandatory=True, desc="inversion method, named in the SeriesDescription")
    out_dir = Directory(desc="new folder for the series (default: ./dicom in the node's folder)")
    series_number = traits.Int(desc="SeriesNumber (default 1000 + source series number)")


class _DicomExportOutputSpec(TraitedSpec):
    out_dir = Directory(desc="folder holding the new DICOM series")
    out_files = traits.List(File(exists=True), desc="one DICOM file per slice")


class DicomExport(SimpleInterface):
    """Write a χ map as a new MR DICOM series derived from its source series."""

    input_spec = _DicomExportInputSpec
    output_spec = _DicomExportOutputSpec

    def _run_interface(self, runtime):
        from qsmflow.dicom.export import export_chimap

        if isdefined(self.inputs.out_dir):
            out_dir = self.inputs.out_dir
        else:  # the node's own folder: a rerun replaces its previous series
            out_dir = os.path.join(runtime.cwd, "dicom")
            shutil.rmtree(out_dir, ignore_errors=True)
        files = export_chimap(self.inputs.in_file, out_dir, source=self.inputs.source, method=self.inputs.method,
                              series_number=self.inputs.series_number if isdefined(self.inputs.series_number)
                              else None)
        self._results["out_dir"] = str(out_dir)
        self._results["out_files"] = [str(f) for f in files]
        return runtime

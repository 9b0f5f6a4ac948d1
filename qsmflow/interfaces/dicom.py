"""Nipype interface around :func:`qsmflow.dicom.export.export_map` (χ, R2*, T2* or SWI map →
DICOM series)."""

from __future__ import annotations

import os
import re

from nipype.interfaces.base import (BaseInterfaceInputSpec, Directory, File, SimpleInterface, TraitedSpec,
                                    isdefined, traits)


class _DicomExportInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="χ map (NIfTI, ppm) or another map of kind")
    kind = traits.Enum("chimap", "r2star", "t2star", "swi", "swi_minip", usedefault=True,
                       desc="what in_file is (qsmflow.dicom.export.MAP_KINDS)")
    source = traits.Either(File(exists=True), Directory(exists=True), traits.Dict(), mandatory=True,
                           desc="source record with patient identification (a dict, e.g. from "
                                "qsmflow.dicom.source.export_source), the source DICOM folder, or a raw "
                                "sidecar of 'dicom2bids --keep-patient-info'")
    method = traits.Str(desc="inversion method named in the SeriesDescription (default: the file's desc-)")
    series_description = traits.Str(desc="SeriesDescription (default 'QSM <method> (ppm)')")
    out_dir = Directory(desc="parent folder; the series goes into <out_dir>/<in_file name>/ "
                             "(default: the node's folder)")
    series_number = traits.Int(desc="SeriesNumber (default 1000 + source series number)")


class _DicomExportOutputSpec(TraitedSpec):
    out_dir = Directory(desc="folder holding the new DICOM series")
    out_files = traits.List(File(exists=True), desc="one DICOM file per slice")


class DicomExport(SimpleInterface):
    """Write a χ map as a new MR DICOM series derived from its source series.

    The series folder is named after the χ map (``sub-01_desc-medi_Chimap``); a rerun replaces
    the previous export of the same map.
    """

    input_spec = _DicomExportInputSpec
    output_spec = _DicomExportOutputSpec

    def _run_interface(self, runtime):
        from qsmflow.dicom.export import export_map

        name = os.path.basename(self.inputs.in_file)
        stem = re.sub(r"\.nii(\.gz)?$", "", name)
        parent = self.inputs.out_dir if isdefined(self.inputs.out_dir) else runtime.cwd
        method = self.inputs.method if isdefined(self.inputs.method) else None
        if method is None and self.inputs.kind == "chimap":
            m = re.search(r"_desc-([A-Za-z0-9]+)", name)
            method = m.group(1) if m else "unknown"
        out_dir = os.path.join(parent, stem)
        files = export_map(
            self.inputs.in_file, out_dir, source=self.inputs.source, kind=self.inputs.kind,
            method=method or "",
            series_number=self.inputs.series_number if isdefined(self.inputs.series_number) else None,
            series_description=(self.inputs.series_description if isdefined(self.inputs.series_description)
                                 else None),
            overwrite=True)
        self._results["out_dir"] = out_dir
        self._results["out_files"] = [str(f) for f in files]
        return runtime

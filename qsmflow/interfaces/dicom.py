"""Nipype interfaces around :func:`qsmflow.dicom.export.export_map`: one map (``DicomExport``)
or every map of one acquisition (``DicomExportMaps``, the ``--dicom-out`` node of the graph)
→ DICOM series."""

from __future__ import annotations

import os
import re

from nipype.interfaces.base import (BaseInterfaceInputSpec, Directory, File, InputMultiObject,
                                    SimpleInterface, TraitedSpec, isdefined, traits)

from ..bids import parse_filename
from ._base import opt

#: the kinds of map a DICOM series can be made of (qsmflow.dicom.export.MAP_KINDS)
KINDS = ("chimap", "r2star", "t2star", "swi", "swi_minip")


def export_one(in_file, parent, source, kind="chimap", method=None, series_number=None,
               series_description=None) -> tuple[str, list[str]]:
    """Export ``in_file`` as a series in ``<parent>/<its name without .nii[.gz]>/``; a χ map's
    method defaults to its ``desc-``. Returns ``(series folder, files)``."""
    from qsmflow.dicom.export import export_map

    name = os.path.basename(in_file)
    if not method and kind == "chimap":
        method = parse_filename(name)[0].get("desc") or "unknown"
    out_dir = os.path.join(parent, re.sub(r"\.nii(\.gz)?$", "", name))
    files = export_map(in_file, out_dir, source=source, kind=kind, method=method or "",
                       series_number=series_number, series_description=series_description,
                       overwrite=True)
    return out_dir, [str(f) for f in files]


class _DicomExportInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="χ map (NIfTI, ppm) or another map of kind")
    kind = traits.Enum(*KINDS, usedefault=True, desc="what in_file is")
    source = traits.Either(File(exists=True), Directory(exists=True), traits.Dict(),
                           mandatory=True,
                           desc="source record with patient identification (a dict, e.g. from "
                                "qsmflow.dicom.source.export_source), the source DICOM folder, "
                                "or a raw sidecar of 'dicom2bids --keep-patient-info'")
    method = traits.Str(desc="inversion method named in the SeriesDescription (default: the "
                             "file's desc-)")
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
        parent = self.inputs.out_dir if isdefined(self.inputs.out_dir) else runtime.cwd
        out_dir, files = export_one(self.inputs.in_file, parent, self.inputs.source,
                                    self.inputs.kind, opt(self.inputs.method),
                                    opt(self.inputs.series_number),
                                    opt(self.inputs.series_description))
        self._results["out_dir"] = out_dir
        self._results["out_files"] = files
        return runtime


class _DicomExportMapsInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True,
                                desc="the acquisition's χ and clinical maps (derivatives)")
    kinds = traits.List(traits.Enum(*KINDS), mandatory=True, desc="kind of each in_file")
    methods = traits.List(traits.Str, mandatory=True,
                          desc="inversion method of each χ map ('' for the other maps)")
    phase_file = File(exists=True, mandatory=True,
                      desc="the acquisition's first raw phase image (its sidecar and grid find "
                           "the source series)")
    metadata = traits.Dict(desc="the phase image's (inherited) sidecar fields")
    source_dicom = Directory(exists=True, desc="--source-dicom: folder of the source DICOMs")
    out_dir = Directory(mandatory=True, desc="--dicom-out: parent folder of the series")


class _DicomExportMapsOutputSpec(TraitedSpec):
    out_dirs = traits.List(Directory, desc="one series folder per in_file")


class DicomExportMaps(SimpleInterface):
    """``--dicom-out`` for one acquisition: every map as a DICOM series in ``out_dir``, under
    the patient and study of its source series, found when the node runs (from
    ``source_dicom`` or the dicom2bids provenance of ``phase_file``), so that no patient data
    is stored in the work folder. All maps are tried; any failure fails the node (nothing is
    cached) with one line per map."""

    input_spec = _DicomExportMapsInputSpec
    output_spec = _DicomExportMapsOutputSpec

    def _run_interface(self, runtime):
        from qsmflow.dicom.source import SourceIndex, image_source

        files, kinds, methods = (list(self.inputs.in_files), list(self.inputs.kinds),
                                 list(self.inputs.methods))
        if not len(files) == len(kinds) == len(methods):
            raise ValueError(f"{len(files)} maps but {len(kinds)} kinds, {len(methods)} methods")
        index = SourceIndex(self.inputs.source_dicom) if opt(self.inputs.source_dicom) else None
        source = image_source(self.inputs.phase_file, dict(self.inputs.metadata or {}) or None,
                              index=index)
        out_dir = os.path.abspath(self.inputs.out_dir)
        os.makedirs(out_dir, exist_ok=True)
        done, errors = [], []
        for f, kind, method in zip(files, kinds, methods):
            try:
                done.append(export_one(f, out_dir, source, kind, method or None)[0])
            except Exception as exc:  # try the other maps, then fail with every reason
                msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
                errors.append(f"{os.path.basename(f)}: DICOM export failed ({msg})")
        if errors:
            raise RuntimeError("; ".join(errors))
        self._results["out_dirs"] = done
        return runtime

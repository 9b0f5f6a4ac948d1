"""Top-level workflows: all subjects (``init_qsmflow_wf``) and one subject
(``init_single_subject_wf``: every GRE acquisition of the subject, each with its derivatives)."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..config import all_nodes
from ..bids import CLINICAL_MAPS, derivative_relpath, make_sidecar, raw_uri, self_uri
from ..interfaces import DerivativesSink, ReportFigures
from ..interfaces._base import estimate_mem_gb
from .qsm import clinical_maps_made, init_qsm_wf


def _wf_name(text: str) -> str:
    """A Nipype-safe name from BIDS entities (``sub-01_run-1`` → ``sub_01_run_1``)."""
    return "".join(c if c.isalnum() else "_" for c in text)


def init_qsmflow_wf(*, subjects: dict, bids_dir, output_dir, work_dir, log_dir, run_uuid,
                    inversions, bgremoval="resharp", unwrapping="region-growing",
                    masking="magnitude", params=None, omp_nthreads=1, clinical_maps=True,
                    dicom_out=None, source_dicom=None, name="qsmflow_wf"):
    """All subjects, one ``single_subject_<label>_wf`` each (independent: they run in parallel
    and one subject's failure does not stop the others). ``dicom_out``: export every map as
    DICOM there (``source_dicom``: the source DICOM folder, else dicom2bids provenance).

    ``subjects``: ``{label: [qsmflow.bids.Acquisition, ...]}``; crash files of each
    subject go to ``<log_dir>/sub-<label>/<run_uuid>/``.
    """
    workflow = pe.Workflow(name=name, base_dir=str(work_dir))
    for label, acquisitions in subjects.items():
        ssw = init_single_subject_wf(
            subject=label, acquisitions=acquisitions, bids_dir=bids_dir, output_dir=output_dir,
            inversions=inversions, bgremoval=bgremoval, unwrapping=unwrapping, masking=masking,
            params=params, omp_nthreads=omp_nthreads, clinical_maps=clinical_maps,
            dicom_out=dicom_out, source_dicom=source_dicom, name=f"single_subject_{label}_wf")
        crash_dir = str(Path(log_dir) / f"sub-{label}" / run_uuid)
        ssw.config["execution"]["crashdump_dir"] = crash_dir
        for node in all_nodes(ssw):  # Nipype merges only the top workflow's config
            cfg = dict(node.config or {})
            cfg["execution"] = {**cfg.get("execution", {}), "crashdump_dir": crash_dir}
            node.config = cfg
        workflow.add_nodes([ssw])
    return workflow


def combine_methods(descs) -> str:
    """One methods text for a participant from ``[(acquisition name, text), ...]``: the text
    once when every acquisition was processed alike, else one paragraph per acquisition."""
    texts = list(dict.fromkeys(t for _, t in descs))
    if len(texts) <= 1:
        return texts[0] if texts else ""
    return "\n\n".join(f"{name}: {text}" for name, text in descs)


def init_single_subject_wf(*, subject, acquisitions, bids_dir, output_dir, inversions,
                           bgremoval="resharp", unwrapping="region-growing",
                           masking="magnitude", params=None, omp_nthreads=1,
                           clinical_maps=True, dicom_out=None, source_dicom=None,
                           name="single_subject_wf"):
    """Every acquisition of one subject: ``qsm_<acq>_wf`` + report figures + derivatives.

    Nothing of an acquisition is written before all its χ maps exist (the sinks wait on
    ``gather``), so a failed acquisition leaves no partial derivatives.

    Parameters
    ----------
    subject : str
        Participant label (without ``sub-``).
    acquisitions : list of :class:`qsmflow.bids.Acquisition`
    bids_dir, output_dir : path
        Raw BIDS root (read only) and derivatives root.
    inversions, bgremoval, unwrapping, masking, params, omp_nthreads, clinical_maps
        As in :func:`qsmflow.workflows.qsm.init_qsm_wf`.
    dicom_out, source_dicom : path or None
        As in :func:`init_ds_wf`.
    """
    workflow = pe.Workflow(name=name)
    descs = []
    for acq in acquisitions:
        tag = _wf_name(acq.name[len(f"sub-{subject}"):].strip("_") or "main")
        qsm_wf = init_qsm_wf(inversions=inversions, bgremoval=bgremoval, unwrapping=unwrapping,
                             masking=masking, params=params,
                             has_magnitude=bool(acq.magnitude), n_voxels=acq.n_voxels,
                             n_echoes=acq.n_echoes, omp_nthreads=omp_nthreads,
                             precomputed_mask=acq.user_mask.path if acq.user_mask else None,
                             clinical_maps=clinical_maps, name=f"qsm_{tag}_wf")
        made = clinical_maps_made(clinical_maps, bool(acq.magnitude), acq.n_echoes)
        descs.append((acq.name, qsm_wf.__desc__))
        qsm_wf.inputs.inputnode.phase_files = list(acq.phase)
        if acq.magnitude:
            qsm_wf.inputs.inputnode.magnitude_files = list(acq.magnitude)
        qsm_wf.inputs.inputnode.sidecars = [_json_safe(m) for m in acq.phase_metadata]
        qsm_wf.inputs.inputnode.b0_tesla = float(acq.b0_tesla)
        qsm_wf.inputs.inputnode.b0_dir = [float(x) for x in acq.metadata.get("B0_dir", [])]
        ds_wf = init_ds_wf(acquisition=acq, bids_dir=bids_dir, output_dir=output_dir,
                           inversions=inversions, maps=made, dicom_out=dicom_out,
                           source_dicom=source_dicom, name=f"ds_{tag}_wf")
        figures = pe.Node(ReportFigures(prefix=acq.name, chi_names=list(inversions)),
                          name=f"report_figures_{tag}",
                          mem_gb=estimate_mem_gb(acq.n_voxels, 4 + len(inversions)))
        # a user mask is written as given; a computed one as eroded by the background removal
        mask_out = "outputnode.brain_mask" if acq.user_mask else "outputnode.mask"
        workflow.connect([
            (qsm_wf, ds_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in (
                "total_field", "local_field", "chi_maps", "meta_fit", "meta_mask",
                "meta_bg", "meta_chi")]),
            (qsm_wf, ds_wf, [(mask_out, "inputnode.mask")]),
            (qsm_wf, figures, [("outputnode.mask", "mask"),
                               ("outputnode.total_field", "total_field"),
                               ("outputnode.local_field", "local_field"),
                               ("outputnode.chi_maps", "chi_maps")]),
            (figures, ds_wf, [("out_figures", "inputnode.figures")]),
        ])
        if acq.magnitude:
            workflow.connect([
                (qsm_wf, ds_wf, [("outputnode.magnitude", "inputnode.magnitude")]),
                (qsm_wf, figures, [("outputnode.magnitude", "magnitude")]),
            ])
        if made:  # the clinical maps: to their sinks and the report
            meta = {"r2star": "meta_r2star", "swi": "meta_swi", "swi_minip": "meta_swi_minip"}
            keys = made + tuple(meta[m] for m in made if m in meta)
            workflow.connect([
                (qsm_wf, ds_wf, [(f"outputnode.{k}", f"inputnode.{k}") for k in keys]),
                (qsm_wf, figures, [(f"outputnode.{k}", k) for k in made
                                   if k in ("r2star", "swi", "swi_minip")]),
            ])
    workflow.__desc__ = combine_methods(descs)
    return workflow


def init_ds_wf(*, acquisition, bids_dir, output_dir, inversions, maps=(), dicom_out=None,
               source_dicom=None, name="ds_wf"):
    """Derivatives of one acquisition (χ maps, mask, total/local field, magnitude, figures,
    and the clinical ``maps``: keys of :data:`qsmflow.bids.CLINICAL_MAPS`); with
    ``dicom_out``, an ``export_dicom`` step (a job like the others, cached) writes the χ and
    clinical maps as DICOM series there once they are stored (source series from
    ``source_dicom``, else the dicom2bids provenance of the first phase image).

    Every sink waits on ``gather`` (all χ maps and figures done) so that an acquisition's
    derivatives appear together or not at all. Sidecars: static parts (Units, Description,
    Sources, SkullStripped) from :func:`qsmflow.bids.make_sidecar`, the method and
    parameters from the computing node (``meta_*``). A user-supplied mask
    (``acquisition.user_mask``) is named in the mask's ``Sources`` and, as ``BrainMaskSource``,
    in the mask's and every χ map's sidecar.
    """
    ent = acquisition.entities
    rel = {k: derivative_relpath(ent, k) for k in ("magnitude", "total_field", "local_field",
                                                     "mask") + tuple(maps)}
    rel_chi = [derivative_relpath(ent, "chimap", desc=m) for m in inversions]
    raw_sources = [raw_uri(bids_dir, p) for p in acquisition.phase + (acquisition.magnitude or [])]
    src_chi = [self_uri(rel["local_field"]), self_uri(rel["mask"])]
    common = {"MagneticFieldStrength": acquisition.b0_tesla,
              "EchoTime": list(acquisition.echo_times)}
    user = acquisition.user_mask
    mask_side = make_sidecar("mask", sources=raw_sources)
    mask_info = {}
    if user:
        mask_info = {"BrainMaskMethod": "user", "BrainMaskSource": user.uri}
        mask_side = make_sidecar("mask", sources=[user.uri], **mask_info, Description=(
            f"Brain mask supplied by the user ({user.name}), used for unwrapping, the field fit "
            "and background removal; the local field and the susceptibility maps are valid in "
            "it as eroded by the background removal."))

    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "magnitude", "total_field", "local_field", "mask", "chi_maps", "meta_fit", "meta_mask",
        "meta_bg", "meta_chi", "figures", *CLINICAL_MAPS, "meta_r2star", "meta_swi",
        "meta_swi_minip"]), name="inputnode")
    gather = pe.Node(niu.Merge(2), name="gather", run_without_submitting=True)

    def sink(kind, name, sidecar):
        return pe.Node(DerivativesSink(base_directory=str(output_dir), relpath=str(rel[kind]),
                                       sidecar=sidecar),
                       name=name, run_without_submitting=True)

    ds_total = sink("total_field", "ds_total_field",
                    make_sidecar("total_field", sources=raw_sources, skull_stripped=False,
                                 **common))
    ds_local = sink("local_field", "ds_local_field",
                    make_sidecar("local_field", sources=[self_uri(rel["total_field"]),
                                                         self_uri(rel["mask"])], **common))
    ds_mask = sink("mask", "ds_mask", mask_side)
    ds_chi = pe.MapNode(
        DerivativesSink(base_directory=str(output_dir),
                        sidecar=make_sidecar("chimap", sources=src_chi, **mask_info)),
        iterfield=["in_file", "relpath", "meta"], name="ds_chimap", run_without_submitting=True)
    ds_chi.inputs.relpath = [str(r) for r in rel_chi]
    fig_dir = Path(f"sub-{ent['sub']}") / "figures"
    ds_figures = pe.Node(DerivativesSink(
        base_directory=str(output_dir),
        relpath=[str(fig_dir / f"{acquisition.name}_{k}.png")
                 for k in figure_keys(bool(maps))]),
        name="ds_figures", run_without_submitting=True)

    connections = [
        (inputnode, gather, [("chi_maps", "in1"), ("figures", "in2")]),
        (inputnode, ds_total, [("total_field", "in_file"), ("meta_fit", "meta")]),
        (inputnode, ds_local, [("local_field", "in_file"), ("meta_bg", "meta")]),
        (inputnode, ds_mask, [("mask", "in_file"), ("meta_mask", "meta")]),
        (inputnode, ds_chi, [("chi_maps", "in_file"), ("meta_chi", "meta")]),
        (inputnode, ds_figures, [("figures", "in_file")]),
    ]
    sinks = [ds_total, ds_local, ds_mask, ds_chi, ds_figures]
    map_sinks = []
    mag_src = [raw_uri(bids_dir, p) for p in (acquisition.magnitude or [])]
    map_sources = {"r2star": mag_src, "t2star": [self_uri(rel.get("r2star", ""))],
                   "swi": mag_src + [self_uri(rel["local_field"])],
                   "swi_minip": [self_uri(rel.get("swi", ""))]}
    map_meta = {"r2star": "meta_r2star", "t2star": "meta_r2star", "swi": "meta_swi",
                "swi_minip": "meta_swi_minip"}
    for kind in maps:
        ds = sink(kind, f"ds_{kind}", make_sidecar(kind, sources=map_sources[kind],
                                                   skull_stripped=False, **common))
        connections.append((inputnode, ds, [(kind, "in_file"), (map_meta[kind], "meta")]))
        sinks.append(ds)
        map_sinks.append(ds)
    if acquisition.magnitude:
        ds_mag = sink("magnitude", "ds_magnitude",
                      make_sidecar("magnitude", sources=raw_sources, skull_stripped=False))
        connections.append((inputnode, ds_mag, [("magnitude", "in_file")]))
    else:  # BIDS wants a magnitude beside every fieldmap: the mask stands in, and says so
        ds_mag = sink("magnitude", "ds_magnitude", make_sidecar(
            "magnitude", sources=[self_uri(rel["mask"])], skull_stripped=True,
            Description="No magnitude images were acquired: this is the brain mask (1 inside), "
                        "stored because BIDS requires a magnitude image beside each fieldmap."))
        connections.append((inputnode, ds_mag, [("mask", "in_file")]))
    sinks.append(ds_mag)
    connections += [(gather, s, [("out", "depends_on")]) for s in sinks]
    if dicom_out:
        connections += _dicom_export(acquisition, inversions, maps, ds_chi, map_sinks,
                                     dicom_out, source_dicom)
    workflow.connect(connections)
    return workflow


def _dicom_export(acquisition, inversions, maps, ds_chi, map_sinks, dicom_out, source_dicom):
    """Connections of the ``export_dicom`` node: the stored χ maps, then the clinical maps."""
    from ..interfaces.dicom import DicomExportMaps

    merge = pe.Node(niu.Merge(1 + len(map_sinks), ravel_inputs=True), name="dicom_maps",
                    run_without_submitting=True)
    export = pe.Node(DicomExportMaps(
        kinds=["chimap"] * len(inversions) + list(maps),
        methods=list(inversions) + [""] * len(maps), phase_file=str(acquisition.phase[0]),
        metadata=_json_safe(acquisition.metadata), out_dir=str(dicom_out)),
        name="export_dicom", mem_gb=estimate_mem_gb(acquisition.n_voxels, 3))
    if source_dicom:
        export.inputs.source_dicom = str(source_dicom)
    return ([(ds_chi, merge, [("out_file", "in1")])]
            + [(s, merge, [("out_file", f"in{i}")]) for i, s in enumerate(map_sinks, 2)]
            + [(merge, export, [("out", "in_files")])])


def figure_keys(maps: bool) -> tuple:
    """The report figures of an acquisition, in the order ``ReportFigures`` writes them."""
    return ("mask", "field", "chi") + (("maps",) if maps else ())


def _json_safe(meta: dict) -> dict:
    """Sidecar values Nipype can hash and pickle (pybids may hand back numpy types)."""
    import json

    from ..io import _json_default

    return json.loads(json.dumps(dict(meta), default=_json_default))

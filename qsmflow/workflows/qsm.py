"""One acquisition: multi-echo GRE echoes → local field → one χ map per requested inversion."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces import (BackgroundRemoval, BrainMask, DipoleInversion, MultiEchoFit,
                          RelaxationMaps, ScalePhase, SWIMaps, UserBrainMask)
from ..interfaces._base import estimate_mem_gb
from ..interfaces.qc import QualityControl
from ..inversion import TOTAL_FIELD_METHODS
from ..maps import SWI_N_MASK

#: citations of each method (methods text of the report)
CITATIONS = {
    "nipype": "Gorgolewski K et al. Nipype. Front Neuroinform 2011;5:13",
    "romeo": "Dymerska B, Eckstein K et al. ROMEO. Magn Reson Med 2021;85:2294-2308",
    "mcpc3ds": "Eckstein K et al. MCPC-3D-S. Magn Reson Med 2018;79:2996-3006",
    "laplacian": "Schofield MA, Zhu Y. Opt Lett 2003;28:1194-1196",
    "resharp": "Sun H, Wilman AH. RESHARP. Magn Reson Med 2014;71:1151-1157",
    "vsharp": "Li W, Wu B, Liu C. V-SHARP. NeuroImage 2011;55:1645-1656",
    "pdf": "Liu T et al. Projection onto dipole fields. NMR Biomed 2011;24:1129-1136",
    "lbv": "Zhou D, Liu T, Spincemaille P, Wang Y. Background field removal by solving the "
           "Laplacian boundary value problem. NMR Biomed 2014;27:312-319",
    "tkd": "Shmueli K et al. Magn Reson Med 2009;62:1510-1522; Wharton S et al. Magn Reson Med "
           "2010;63:1292-1304",
    "tikhonov": "Bilgic B et al. Fast quantitative susceptibility mapping with L1-regularization "
                "and automatic parameter selection (closed-form L2 solution). Magn Reson Med "
                "2014;72:1444-1459",
    "ilsqr": "Li W et al. iLSQR. NeuroImage 2015;108:111-122",
    "medi": "Liu J et al. MEDI. NeuroImage 2012;59:2560-2568; Liu T et al. Magn Reson Med "
            "2011;66:777-783",
    "fansi": "Milovic C et al. FANSI. Magn Reson Med 2018;80:814-821",
    "tv": "Bilgic B et al. Magn Reson Med 2014;72:1444-1459 (TV by ADMM)",
    "sstv": "Chatnuntawech I et al. Single-step quantitative susceptibility mapping with "
            "variational penalties. NMR Biomed 2017;30:e3570",
    "metaqsm": "Liu J, Koch KM. Meta-QSM: an image-resolution-arbitrary network for QSM "
               "reconstruction. arXiv:1908.00206, 2019 (qsmflow implementation)",
    "mesaqsm": "Mesa-QSM, the fixed-resolution baseline of Liu J, Koch KM. Meta-QSM. "
               "arXiv:1908.00206, 2019 (qsmflow implementation)",
    "qsminvnet": "Liu J, Koch KM. Non-locally encoder-decoder convolutional network for whole "
                 "brain QSM inversion (QSMInvNet). arXiv:1904.05493, 2019 (qsmflow "
                 "implementation)",
    "clearswi": "Eckstein K et al. CLEAR-SWI. NeuroImage 2021;237:118175",
    "deepbet": "Fisch L et al. deepbet: fast brain extraction of T1-weighted MRI using "
               "convolutional neural networks. Comput Biol Med 2024;179:108845 (the deepbet "
               "package and its weights)",
}

#: how each method is spelled in the methods text
DISPLAY_NAMES = {"tkd": "TKD", "tikhonov": "Tikhonov", "ilsqr": "iLSQR", "medi": "MEDI",
                 "fansi": "FANSI", "tv": "TV-ADMM", "sstv": "SS-TV", "metaqsm": "Meta-QSM",
                 "mesaqsm": "Mesa-QSM", "qsminvnet": "QSMInvNet", "resharp": "RESHARP",
                 "vsharp": "V-SHARP", "pdf": "PDF", "lbv": "LBV"}


def display_name(method: str) -> str:
    """The published spelling of a method (``"ilsqr"`` → ``"iLSQR"``)."""
    return DISPLAY_NAMES.get(method, method)


#: citations of each unwrapping method (region-growing: its inspiration and its offset removal)
UNWRAP_CITES = {"region-growing": ["romeo", "mcpc3ds"], "romeo": ["romeo"],
                "laplacian": ["laplacian"]}

#: rough number of float64 volume copies each step holds (padded FFT grids ≈ 8 copies)
_ARRAYS = {"scale": 3.0, "fit": 8.0, "mask": 6.0, "bg": {"resharp": 30.0, "vsharp": 40.0,
                                                        "pdf": 40.0, "lbv": 40.0},
           "invert": {"tkd": 20.0, "tikhonov": 20.0}, "invert_default": 48.0,
           "r2star": 12.0, "swi": 6.0}


def init_qsm_wf(*, inversions, bgremoval="resharp", unwrapping="region-growing",
                masking="magnitude",
                params=None, has_magnitude=True, n_voxels=128 * 128 * 80, n_echoes=4,
                omp_nthreads=1, precomputed_mask=None, clinical_maps=True, name="qsm_wf"):
    """Build the QSM workflow of one acquisition.

    Steps: phase → rad and echoes stacked in TE order (``scale_phase``); brain mask
    (``brain_mask``, or ``load_brain_mask`` for a ``precomputed_mask``); spatial + temporal
    unwrapping and magnitude-weighted field fit (``fit_field``); background removal
    (``remove_background``); one dipole inversion per method in parallel branches from the same
    local field (``invert_<method>``), each referenced once; a QC verdict of every χ map from
    the data (``quality_control``, :mod:`qsmflow.qc`) in its sidecar entries (``meta_chi``: ``QC``).

    Parameters
    ----------
    inversions : list of str
        Inversion methods (keys of ``qsmflow.inversion.METHODS``).
    bgremoval : {"resharp", "vsharp", "pdf", "lbv"}
    unwrapping : {"region-growing", "laplacian", "romeo"}
        ``romeo`` is the ROMEO program (on PATH); ``region-growing`` qsmflow's ROMEO-like one.
    masking : {"magnitude", "phase-quality", "combined"}
        Without magnitude images the phase-quality mask is used whatever is asked.
    params : dict
        ``{method name: {parameter: value}}`` for any step (e.g. ``{"medi": {"lam": 500}}``).
    has_magnitude : bool
        Whether magnitude echoes exist.
    n_voxels, n_echoes : int
        Size of one echo and number of echoes (for the nodes' ``mem_gb``).
    omp_nthreads : int
        Threads (``n_procs``) of the FFT-heavy nodes.
    precomputed_mask : path or None
        A user-supplied brain mask on the echoes' grid (``--derivatives``): used instead of
        computing one (``masking`` is then ignored), before unwrapping and the field fit.
    clinical_maps : bool
        Also compute R2*/T2* (``map_relaxation``, ≥ 2 echoes) and the CLEAR-SWI-like SWI with
        its minIP (``compute_swi``, from the magnitude and the local field); needs magnitude.

    Inputs (``inputnode``)
    ----------------------
    phase_files, magnitude_files, sidecars (JSON of each phase file), b0_tesla (T),
    b0_dir (voxel axes, [] = from the affine)

    Outputs (``outputnode``)
    ------------------------
    magnitude (echo-combined), total_field (Hz), noise (Hz), brain_mask (before background
    removal), mask (the mask χ is valid in: brain_mask eroded by the background removal),
    local_field (Hz), chi_maps (ppm, one per inversion, in order), meta_fit, meta_mask,
    meta_bg, meta_chi (sidecar entries); with ``clinical_maps``: r2star (1/s), t2star (ms),
    swi, swi_minip (a.u.), meta_r2star, meta_swi, meta_swi_minip
    """
    params = params or {}
    inversions = list(inversions)
    if not inversions:
        raise ValueError("init_qsm_wf needs at least one inversion method")
    if precomputed_mask:
        masking = "user"
    elif not has_magnitude:
        masking = "phase-quality"
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = methods_text(
        inversions=inversions, bgremoval=bgremoval, unwrapping=unwrapping, masking=masking,
        n_echoes=n_echoes, user_mask=Path(precomputed_mask).name if precomputed_mask else None,
        clinical_maps=clinical_maps_made(clinical_maps, has_magnitude, n_echoes),
        swi_n=int(params.get("swi", {}).get("n", SWI_N_MASK)))

    inputnode = pe.Node(niu.IdentityInterface(fields=["phase_files", "magnitude_files",
                                                      "sidecars", "b0_tesla", "b0_dir"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["magnitude", "total_field", "noise",
                                                       "brain_mask", "mask", "local_field",
                                                       "chi_maps", "meta_fit", "meta_mask",
                                                       "meta_bg", "meta_chi", "r2star",
                                                       "t2star", "swi", "swi_minip",
                                                       "meta_r2star", "meta_swi",
                                                       "meta_swi_minip"]),
                         name="outputnode")

    def mem(n_arrays, echoes=1):
        return estimate_mem_gb(n_voxels * echoes, n_arrays)

    scale_phase = pe.Node(ScalePhase(), name="scale_phase", mem_gb=mem(_ARRAYS["scale"], n_echoes))
    fit_field = pe.Node(MultiEchoFit(unwrapping=unwrapping, params=params.get(unwrapping, {}),
                                     num_threads=omp_nthreads),
                        name="fit_field", mem_gb=mem(_ARRAYS["fit"], n_echoes),
                        n_procs=omp_nthreads)
    if masking == "user":
        brain_mask = pe.Node(UserBrainMask(in_file=str(precomputed_mask)),
                             name="load_brain_mask", mem_gb=mem(1.0))
    else:
        brain_mask = pe.Node(BrainMask(method=masking, params=params.get(masking, {}),
                                       num_threads=omp_nthreads),
                             name="brain_mask", mem_gb=mem(_ARRAYS["mask"]), n_procs=omp_nthreads)
    remove_background = pe.Node(
        BackgroundRemoval(method=bgremoval, params=params.get(bgremoval, {}),
                          num_threads=omp_nthreads),
        name="remove_background", n_procs=omp_nthreads,
        mem_gb=mem(_ARRAYS["bg"].get(bgremoval, 40.0)))
    gather_chi = pe.Node(niu.Merge(len(inversions)), name="gather_chi", run_without_submitting=True)
    quality_control = pe.Node(QualityControl(), name="quality_control",
                              mem_gb=mem(16.0 + len(inversions)))  # padded FFTs + χ maps
    gather_meta = pe.Node(niu.Merge(len(inversions)), name="gather_meta",
                          run_without_submitting=True)

    connections = [
        (inputnode, scale_phase, [("phase_files", "phase_files"),
                                  ("magnitude_files", "magnitude_files"),
                                  ("sidecars", "sidecars")]),
        (scale_phase, fit_field, [("out_phase", "in_phase"), ("echo_times", "echo_times")]),
        (fit_field, remove_background, [("out_field", "in_field")]),
        (inputnode, remove_background, [("b0_dir", "b0_dir")]),
        (brain_mask, remove_background, [("out_mask", "mask")]),
        (scale_phase, outputnode, [("out_magnitude_rss", "magnitude")]),
        (fit_field, outputnode, [("out_field", "total_field"), ("out_noise", "noise"),
                                 ("out_meta", "meta_fit")]),
        (brain_mask, outputnode, [("out_mask", "brain_mask"), ("out_meta", "meta_mask")]),
        (remove_background, outputnode, [("out_field", "local_field"), ("out_mask", "mask"),
                                         ("out_meta", "meta_bg")]),
        # QC verdict of every χ map from the data (qsmflow.qc), into each χ sidecar
        (gather_chi, quality_control, [("out", "chi_maps")]),
        (gather_meta, quality_control, [("out", "in_meta")]),
        (remove_background, quality_control, [("out_field", "local_field"),
                                              ("out_mask", "mask")]),
        (brain_mask, quality_control, [("out_mask", "brain_mask")]),
        (fit_field, quality_control, [("out_residual", "residual"),
                                      ("out_field", "total_field")]),
        (inputnode, quality_control, [("b0_tesla", "b0_tesla"), ("b0_dir", "b0_dir")]),
        # the χ maps pass through QC so that no derivative is written before it is done
        (quality_control, outputnode, [("out_meta", "meta_chi"), ("out_chi", "chi_maps")]),
    ]
    if has_magnitude:
        connections += [(scale_phase, fit_field, [("out_magnitude", "in_magnitude")])]
    if has_magnitude and masking != "user":
        connections += [(scale_phase, brain_mask, [("out_magnitude", "magnitude"),
                                                   ("echo_times", "echo_times")])]
    if masking == "user":  # checked against the echoes' grid, then like a magnitude mask
        connections += [(inputnode, brain_mask, [("phase_files", "reference")]),
                        (brain_mask, fit_field, [("out_mask", "mask")])]
    elif masking in ("auto", "deepbet", "magnitude"):  # mask first: unwrap and fit inside it
        connections += [(brain_mask, fit_field, [("out_mask", "mask")])]
    else:  # fit the whole volume, then judge the phase quality
        connections += [(fit_field, brain_mask, [("out_residual", "residual")]),
                        (scale_phase, brain_mask, [("out_phase", "phase")])]

    made = clinical_maps_made(clinical_maps, has_magnitude, n_echoes)
    if "swi" in made:
        compute_swi = pe.Node(SWIMaps(params=params.get("swi", {})), name="compute_swi",
                              mem_gb=mem(_ARRAYS["swi"], n_echoes))
        connections += [
            (scale_phase, compute_swi, [("out_magnitude", "magnitude"),
                                        ("echo_times", "echo_times")]),
            (remove_background, compute_swi, [("out_field", "local_field")]),
            (compute_swi, outputnode, [("out_swi", "swi"), ("out_minip", "swi_minip"),
                                       ("out_meta", "meta_swi"),
                                       ("out_meta_minip", "meta_swi_minip")]),
        ]
    if "r2star" in made:
        map_relaxation = pe.Node(RelaxationMaps(params=params.get("r2star", {})),
                                 name="map_relaxation", mem_gb=mem(_ARRAYS["r2star"], n_echoes))
        connections += [
            (scale_phase, map_relaxation, [("out_magnitude", "magnitude"),
                                           ("echo_times", "echo_times")]),
            (map_relaxation, outputnode, [("out_r2star", "r2star"), ("out_t2star", "t2star"),
                                          ("out_meta", "meta_r2star")]),
        ]

    for i, method in enumerate(inversions, start=1):
        n_arrays = _ARRAYS["invert"].get(method, _ARRAYS["invert_default"])
        invert = pe.Node(DipoleInversion(method=method, params=params.get(method, {}),
                                         num_threads=omp_nthreads),
                         name=f"invert_{method}", n_procs=omp_nthreads, mem_gb=mem(n_arrays))
        # single-step methods read the total field in the whole brain mask instead
        field_src, mask_src = (
            (fit_field, brain_mask) if method in TOTAL_FIELD_METHODS else
            (remove_background, remove_background))
        connections += [
            (inputnode, invert, [("b0_tesla", "b0_tesla"), ("b0_dir", "b0_dir")]),
            (field_src, invert, [("out_field", "local_field")]),
            (mask_src, invert, [("out_mask", "mask")]),
            (fit_field, invert, [("out_noise", "noise")]),
            (scale_phase, invert, [("echo_times", "echo_times")]),
            (invert, gather_chi, [("out_file", f"in{i}")]),
            (invert, gather_meta, [("out_meta", f"in{i}")]),
        ]
        if has_magnitude:
            connections += [(scale_phase, invert, [("out_magnitude_rss", "magnitude")])]
    workflow.connect(connections)
    return workflow


def clinical_maps_made(clinical_maps: bool, has_magnitude: bool, n_echoes: int) -> tuple:
    """The clinical maps an acquisition gets: ``("r2star", "t2star", "swi", "swi_minip")``
    with magnitude and ≥ 2 echoes, only the SWI pair for one echo, none without magnitude."""
    if not clinical_maps or not has_magnitude:
        return ()
    return (("r2star", "t2star") if n_echoes >= 2 else ()) + ("swi", "swi_minip")


def methods_text(*, inversions, bgremoval, unwrapping, masking, n_echoes,
                 user_mask=None, clinical_maps=(), swi_n=SWI_N_MASK) -> str:
    """The methods paragraph (with citations) for the methods actually used (``masking="user"``:
    the brain mask ``user_mask``, a file name, was supplied by the user)."""
    unwrap = {"region-growing": "qsmflow's ROMEO-like quality-guided region growing (inspired "
                                "by ROMEO, not the ROMEO program) with phase-offset removal "
                                "(MCPC-3D-S) and temporal unwrapping across echoes",
              "romeo": "ROMEO (the romeo program of ROMEO.jl)",
              "laplacian": "Laplacian unwrapping"}.get(unwrapping, unwrapping)
    mask = {"deepbet": "a brain mask from the deepbet network on the echo-combined magnitude, "
                       "trimmed to the magnitude foreground",
            "auto": "a brain mask from the deepbet network on the echo-combined magnitude "
                    "(trimmed to the magnitude foreground) when the field of view holds the "
                    "whole head, else a magnitude-based mask",
            "magnitude": "a magnitude-based brain mask (threshold, largest component, hole "
                         "filling, erosion)",
            "phase-quality": "a phase-quality mask from the field-fit residual",
            "combined": "the intersection of a deepbet (whole-head field of view) or "
                        "magnitude-based mask and a phase-quality mask",
            "user": f"a brain mask supplied by the user ({user_mask}, from a BIDS derivatives "
                    "dataset) instead of a computed one"}.get(masking, masking)
    cites = ["nipype"] + UNWRAP_CITES.get(unwrapping, [unwrapping])
    cites += ["deepbet"] if masking in ("auto", "deepbet", "combined") else []
    cites += [bgremoval] + list(inversions)
    if "swi" in clinical_maps:
        cites.append("clearswi")
    refs = "; ".join(f"[{i}] {CITATIONS.get(c, c)}" for i, c in enumerate(dict.fromkeys(cites), 1))
    local = [m for m in inversions if m not in TOTAL_FIELD_METHODS]
    inv = ", ".join(display_name(m) for m in local)
    inv_text = (f"The background field was removed with {display_name(bgremoval)}, and the "
                f"local field (converted to ppm) was inverted with {inv}; " if local else "")
    if len(local) < len(inversions):
        inv_text += ("single-step TV (SS-TV, qsmflow's implementation) inverted the total field "
                     "(ppm) in the whole brain mask directly, with the SMV high-pass of the "
                     "background removal inside its data term; ")
    return (
        f"Quantitative susceptibility maps were computed with qsmflow, built on Nipype. The "
        f"phase of the {n_echoes}-echo gradient-echo acquisition was scaled to radians and "
        f"unwrapped with {unwrap}; the total field (Hz) was fitted by magnitude-weighted least "
        f"squares of the unwrapped phase against echo time, which also gave a per-voxel noise "
        f"map. The brain was delineated with {mask}. {inv_text}"
        f"each susceptibility map was referenced to a mean of 0 ppm inside the brain mask. "
        f"Every step is qsmflow's own implementation of the cited method (not the authors' "
        f"software{_authors_software(unwrapping, cites)}), the networks with "
        f"qsmflow's trained weights.{_maps_text(clinical_maps, swi_n)}"
        f"\n\nReferences: {refs}."
    )


def _authors_software(unwrapping, cites) -> str:
    """The steps that do run the authors' own software (ROMEO's program, deepbet's package)."""
    own = (["ROMEO"] if unwrapping == "romeo" else []) + (
        ["the deepbet network (its authors' package and weights)"] if "deepbet" in cites else [])
    return f", except {' and '.join(own)}" if own else ""


def _maps_text(made, swi_n) -> str:
    """The methods sentences of the clinical maps (``made``: :func:`clinical_maps_made`)."""
    text = ""
    if "r2star" in made:
        text += (" R2* (1/s) was fitted to the logarithm of the multi-echo magnitude "
                 "(magnitude²-weighted, with a quadratic term for intravoxel dephasing), and "
                 "T2* = 1000/R2* (ms).")
    if "swi" in made:
        text += (" A susceptibility-weighted image was computed in the manner of CLEAR-SWI "
                 "(qsmflow's CLEAR-SWI-like implementation, not CLEARSWI.jl): the magnitude "
                 "combined over echoes with SNR weights (magnitude × echo time), multiplied "
                 f"{swi_n} times by a phase mask of the local field that darkens "
                 "paramagnetic structures, and a sliding minimum-intensity projection of it "
                 "over a slab of slices.")
    return text

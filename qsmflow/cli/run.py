"""The BIDS App: ``qsmflow bids_dir output_dir participant [options]``.

Finds the multi-echo GRE acquisitions of the requested participants, checks everything up
front (one clear line and exit code 2 on bad input, nothing written), runs the Nipype graph
(MultiProc by default, Linear, or a cluster plugin from ``--use-plugin``), writes a BIDS
derivatives dataset with one HTML report per subject, and prints what failed (exit code 1).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import uuid
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no version check over the network

from .. import __version__  # noqa: E402
from ..bids import InputError  # noqa: E402
from ..bgremoval import METHODS as BG_METHODS  # noqa: E402
from ..masking import HEAD_FOV_MIN_MM, MASK_METHODS  # noqa: E402
from ..config import (DEFAULT_BGREMOVAL, DEFAULT_INVERSIONS, DEFAULT_MASKING,  # noqa: E402
                      DEFAULT_UNWRAPPING, ConfigError, RunConfig, build_config,
                      load_bids_filters, parse_memory)
from ..phase import UNWRAPPING_METHODS  # noqa: E402

LOG = logging.getLogger("qsmflow")

#: exit codes
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _Help(argparse.HelpFormatter):
    """Show ``(default: X)`` only where the help text does not state the default itself."""

    def _get_help_string(self, action):
        h = action.help or ""
        if ("default" not in h and action.option_strings
                and action.default not in (None, False, argparse.SUPPRESS)):
            h += " (default: %(default)s)"
        return h


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qsmflow",
        description="qsmflow: quantitative susceptibility mapping (QSM) from multi-echo GRE, "
                    "as a BIDS App. Sub-commands: 'qsmflow demo OUTDIR', 'qsmflow dicom2bids', "
                    "'qsmflow train', 'qsmflow bench-nn'.",
        formatter_class=_Help, allow_abbrev=False)
    p.add_argument("bids_dir", type=Path, help="root of the input BIDS dataset (read only)")
    p.add_argument("output_dir", type=Path,
                   help="derivatives folder to write (must not be inside bids_dir)")
    p.add_argument("analysis_level", choices=["participant"],
                   help="processing level (only 'participant')")
    g = p.add_argument_group("selection")
    g.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                   help="participants to process (label without 'sub-'); default: all")
    g.add_argument("--session-label", "--session_label", nargs="+", metavar="LABEL",
                   help="sessions to process (label without 'ses-'); default: all")
    g.add_argument("--bids-filter-file", "--bids_filter_file", type=Path, metavar="FILE",
                   help="JSON file (fMRIPrep's format) narrowing the input query with pybids "
                        "entity names; qsmflow's query is \"megre\" (its MEGRE and T2starw "
                        "phase and magnitude images), e.g. {\"megre\": {\"acquisition\": "
                        "\"fast\", \"run\": 1}}; null = entity absent, \"*\" = any "
                        "(default: all acquisitions)")
    g.add_argument("--echo-idx", type=int, nargs="+", metavar="N",
                   help="echoes to use, numbered 1.. in echo-time order (1 = shortest TE), "
                        "e.g. --echo-idx 1 2 3 (default: all echoes)")
    g.add_argument("--max-echoes", type=int, metavar="N",
                   help="use at most the first N echoes (after --echo-idx), e.g. to drop noisy "
                        "late echoes (default: all echoes)")
    g = p.add_argument_group("methods")
    g.add_argument("--inversion", nargs="+", metavar="METHOD",
                   help="dipole inversions, one χ map (ppm) each: tkd tikhonov ilsqr medi fansi "
                        "tv metaqsm mesaqsm qsminvnet, or sstv (single-step TV: inverts the "
                        "total field in the whole brain mask, background removal built in, so "
                        "it keeps the cortex that --bgremoval erodes): qsmflow's "
                        "implementations of the published "
                        "algorithms (not the authors' toolboxes), the networks with qsmflow's "
                        f"shipped weights (default: {' '.join(DEFAULT_INVERSIONS)})")
    g.add_argument("--bgremoval", choices=list(BG_METHODS),
                   help="background field removal: resharp (default kernel radius 2 mm, at "
                        "least 2 voxels: keeps ~90 %% of a whole-head brain), vsharp, pdf (no "
                        "erosion) or lbv (Laplacian boundary value) (default: "
                        f"{DEFAULT_BGREMOVAL}; radius in mm via [params.resharp] radius_mm in "
                        "--config)")
    g.add_argument("--unwrapping", choices=list(UNWRAPPING_METHODS),
                   help="spatial phase unwrapping: region-growing (qsmflow's ROMEO-like "
                        "quality-guided region growing, exact up to 2π per echo), laplacian "
                        "(fast, approximate) or romeo (the real ROMEO program, 'romeo' from "
                        f"ROMEO.jl, when it is on PATH) (default: {DEFAULT_UNWRAPPING})")
    g.add_argument("--masking", choices=list(MASK_METHODS),
                   help="brain mask: deepbet (pretrained brain-extraction network on the "
                        "echo-combined magnitude, trimmed to the magnitude foreground; needs a "
                        f"field of view of >= {HEAD_FOV_MIN_MM:g} mm along every axis), "
                        "magnitude (threshold + R2* + morphology; for slabs and cropped "
                        "volumes), auto (deepbet when the field of view holds a whole head, "
                        "else magnitude), phase-quality (fit residual + phase coherence), "
                        "combined (auto's mask AND phase-quality) "
                        f"(default: {DEFAULT_MASKING}; phase-quality when there is no "
                        "magnitude)")
    g.add_argument("--derivatives", nargs="+", type=Path, metavar="DIR",
                   help="BIDS derivatives datasets (e.g. SynthStrip, FreeSurfer) searched in "
                        "order for each acquisition's brain mask, sub-<l>[/ses-<s>]/anat/"
                        "<source entities>[_space-orig]_desc-brain_mask.nii[.gz]: binary, on "
                        "the echoes' grid (affine within 0.001 mm); used instead of --masking "
                        "(default: none, the mask is computed)")
    g.add_argument("--no-clinical-maps", action="store_false", dest="clinical_maps",
                   default=None,
                   help="do not compute the maps besides χ: R2* (1/s) and T2* (ms) maps, a "
                        "CLEAR-SWI-like SWI and its minimum-intensity projection (minIP slab "
                        "12 mm; [params.swi] n, slab_mm, te_s in --config); they need magnitude "
                        "images and take a few seconds (default: computed)")
    g.add_argument("--config", type=Path, metavar="RUN.TOML",
                   help="TOML file with any of these settings and per-method parameters "
                        "([params.medi] lam = 1000); command-line options win (default: none)")
    g = p.add_argument_group("execution")
    g.add_argument("-w", "--work-dir", type=Path, metavar="WORK_DIR",
                   help="Nipype working folder; rerunning with the same one recomputes nothing "
                        "that finished (default: ./work)")
    g.add_argument("--nprocs", "--nthreads", "--n-cpus", "--n_cpus", type=int, metavar="N",
                   dest="nprocs",
                   help="processes for MultiProc; --nthreads and --n-cpus are the same option "
                        "(default: 0 = all cores)")
    g.add_argument("--omp-nthreads", type=int, metavar="N", default=1,
                   help="FFT threads per node (n_procs of the FFT-heavy nodes; default: 1)")
    mem = g.add_mutually_exclusive_group()
    mem.add_argument("--mem-gb", "--mem_gb", type=float, metavar="GB",
                     help="memory limit in GB for MultiProc scheduling (default: 90%% of RAM)")
    mem.add_argument("--mem", "--mem-mb", "--mem_mb", type=_memory, metavar="MEM",
                     dest="mem_gb",
                     help="the same limit with a unit: 16G, 16GB, 16000MB; a plain number is MB "
                          "as in fMRIPrep (default: 90%% of RAM)")
    g.add_argument("--use-plugin", type=Path, metavar="PLUGIN.YML",
                   help="Nipype plugin YAML ('plugin: SLURM' + 'plugin_args: {...}'); node "
                        "mem_gb/n_procs become --mem/--cpus-per-task (SLURM), h_vmem/-pe (SGE), "
                        "mem/ppn (PBS) (default: MultiProc on this machine)")
    g.add_argument("--linear", action="store_true",
                   help="run serially with Nipype's Linear plugin (debugging; default: off)")
    g.add_argument("--clean-workdir", action="store_true",
                   help="delete qsmflow's previous results in the work folder before running "
                        "(recompute everything); refused for a folder that is not a qsmflow "
                        "work folder (default: off, finished steps are reused)")
    g.add_argument("--stop-on-first-crash", action="store_true", default=None,
                   help="stop at the first failed step instead of finishing other subjects "
                        "(default: off)")
    g.add_argument("--skip-bids-validation", action="store_true", default=None,
                   help="do not run the BIDS validator on the input (default: validate)")
    g.add_argument("--dicom-out", type=Path, metavar="DIR",
                   help="also export every χ map and the R2*, T2*, SWI and minIP maps as DICOM "
                        "series (for PACS) into DIR, filed under "
                        "the source series' patient, study and frame of reference; needs "
                        "--source-dicom, or input converted by 'qsmflow dicom2bids "
                        "--keep-patient-info' (default: no DICOM export)")
    g.add_argument("--source-dicom", type=Path, metavar="DIR",
                   help="the scanner's DICOM folder the input was converted from (by dcm2niix, "
                        "heudiconv or qsmflow dicom2bids; read only): --dicom-out finds each "
                        "image's source series there by SeriesInstanceUID, else SeriesNumber + "
                        "SeriesDescription, else voxel grid (default: none)")
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="more log output (-v: Nipype errors, -vv: Nipype debug; default: "
                        "progress and summary only)")
    p.add_argument("--version", action="version", version=f"qsmflow {__version__}")
    return p


def _memory(text: str) -> float:
    """argparse type of ``--mem``: the amount in GB (:func:`qsmflow.config.parse_memory`)."""
    try:
        return parse_memory(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cli_settings(opts) -> dict:
    d = {
        "inversion": [m.lower() for m in opts.inversion] if opts.inversion else None,
        "bgremoval": opts.bgremoval, "unwrapping": opts.unwrapping, "masking": opts.masking,
        "nprocs": opts.nprocs, "mem_gb": opts.mem_gb,
        "work_dir": str(opts.work_dir) if opts.work_dir else None,
        "stop_on_first_crash": opts.stop_on_first_crash,
        "skip_bids_validation": opts.skip_bids_validation,
        "participant_label": opts.participant_label, "session_label": opts.session_label,
        "dicom_out": str(opts.dicom_out) if opts.dicom_out else None,
        "source_dicom": str(opts.source_dicom) if opts.source_dicom else None,
        "derivatives": ([str(d.expanduser().resolve()) for d in opts.derivatives]
                        if opts.derivatives else None),
        "use_plugin": str(opts.use_plugin) if opts.use_plugin else None,
        "bids_filters": load_bids_filters(opts.bids_filter_file) if opts.bids_filter_file
        else None,
        "echo_idx": opts.echo_idx, "max_echoes": opts.max_echoes,
        "clinical_maps": opts.clinical_maps,
    }
    if opts.linear:
        d["plugin"] = "Linear"
    return d


class _StdoutHandler(logging.StreamHandler):
    """Writes to ``sys.stdout`` as it is at each message (not as it was when the handler was
    made), so an in-process rerun never logs into a closed stream. Other handlers that test
    runners attach to the logger are left alone."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


def _setup_logging(verbose: int) -> None:
    """Quiet by default: qsmflow prints progress and a summary of failures itself (with the
    crash files); ``-v`` adds Nipype's errors and tracebacks, ``-vv`` everything."""
    from nipype import config as ncfg
    from nipype import logging as nlog

    wf_level = ("CRITICAL", "ERROR", "INFO")[min(verbose, 2)]
    if_level = ("WARNING", "WARNING", "DEBUG")[min(verbose, 2)]
    ncfg.update_config({"logging": {"workflow_level": wf_level, "interface_level": if_level,
                                    "utils_level": "WARNING", "log_to_file": False},
                        "monitoring": {"enabled": False}})
    nlog.update_logging(ncfg)
    if not any(isinstance(h, _StdoutHandler) for h in LOG.handlers):
        h = _StdoutHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        LOG.addHandler(h)
        LOG.propagate = False
    LOG.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)


class Progress:
    """Nipype ``status_callback``: one line per finished or failed step."""

    def __init__(self, total: int, quiet: bool = False):
        self.total, self.done, self.failed, self.cached, self.quiet = total, 0, 0, 0, quiet
        self.t0 = time.time()
        self.start: dict[str, float] = {}

    def __call__(self, node, status):
        if getattr(node, "run_without_submitting", False):
            return  # bookkeeping nodes (merges, sinks): not steps
        key = node.fullname
        if status == "start":
            self.start[key] = time.time()
            return
        if status not in ("end", "exception"):
            return
        if status == "end" and key not in self.start:  # Nipype: a cached node is just "end"
            self.cached += 1
            return
        self.done += 1
        self.failed += status == "exception"
        dt = time.time() - self.start.pop(key, time.time())
        if not self.quiet:
            sub = re.search(r"single_subject_([A-Za-z0-9]+)_wf", key)
            who = f"sub-{sub.group(1)} " if sub else ""
            mark = "FAILED" if status == "exception" else "done"
            print(f"[{self.done:3d}/{self.total}] {who}{node.name} {mark} ({dt:.1f} s; "
                  f"{time.time() - self.t0:.0f} s elapsed)", flush=True)


_EXC_LINE = re.compile(r"^\s*([\w.]*(?:Error|Exception|Exit|Interrupt)): (.+)$", re.M)


def crash_message(text: str) -> str:
    """The message of the innermost exception in a Nipype crash file's text."""
    hits = [(cls, msg) for cls, msg in _EXC_LINE.findall(text)
            if not cls.endswith(("NodeExecutionError", "RuntimeError")) or "Node" not in msg]
    return hits[-1][1].strip() if hits else "see the crash file"


def _crash_summary(crash_dir: Path) -> list[tuple[str, str, Path]]:
    """(step, error message, crash file) for every crash file of one subject."""
    out = []
    for f in sorted(crash_dir.glob("crash-*")):
        text = f.read_text(errors="replace") if f.suffix == ".txt" else ""
        node = re.search(r"^Node: (\S+)", text, re.M)
        out.append((node.group(1).split(".")[-1] if node else f.name, crash_message(text), f))
    return out


def _plugin_args(cfg: RunConfig, progress: Progress) -> tuple[str, dict]:
    args = dict(cfg.plugin_args)
    if cfg.plugin in ("MultiProc", "LegacyMultiProc"):
        args.setdefault("n_procs", cfg.resolved_nprocs())
        args.setdefault("memory_gb", cfg.resolved_mem_gb())
        args.setdefault("raise_insufficient", False)
    if cfg.plugin in ("MultiProc", "LegacyMultiProc", "Linear", "SLURM", "SGE", "PBS"):
        args["status_callback"] = progress
    return cfg.plugin, args


def prepare_output(plan, run_uuid: str) -> Path:
    """dataset_description.json, .bidsignore and the effective config; returns the log dir."""
    from ..bids import derivative_description
    from ..io import write_json

    out = plan.output_dir
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "dataset_description.json",
               derivative_description(plan.bids_dir, plan.bids_dir.name, links=plan.derivatives))
    ignore = out / ".bidsignore"
    if not ignore.exists():
        ignore.write_text("logs/\n*.html\n**/figures\n")
    log_dir = out / "logs"
    log_dir.mkdir(exist_ok=True)
    (log_dir / f"config-{run_uuid}.toml").write_text(
        f"# qsmflow {__version__} effective configuration of run {run_uuid}\n"
        f"# input: {plan.bids_dir}\n" + plan.config.to_toml())
    return log_dir


def write_reports(plan, workflow, failed: set[str], work_root: Path,
                  since: float | None = None, errors: dict | None = None) -> dict[str, Path]:
    """One HTML page per subject (steps finished before ``since``, a Unix time, are marked as
    reused); a failed subject's page starts with its errors (``errors``: ``{subject: [(step,
    message, crash file)]}``) and shows what it has. Also ``logs/CITATION.md`` and ``.bib``."""
    from ..bids import CLINICAL_MAPS, derivative_relpath
    from ..report import collect_timings, write_subject_report
    from ..report.citations import write_citation_files
    from ..workflows.base import figure_keys
    from ..workflows.qsm import CITATIONS

    cfg = plan.config
    settings = {"inversion": ", ".join(cfg.inversion), "bgremoval": cfg.bgremoval,
                "unwrapping": cfg.unwrapping, "masking": cfg.masking,
                "clinical maps": ("R2*, T2*, SWI (CLEAR-SWI-like), SWI minIP"
                                  if cfg.clinical_maps else "off (--no-clinical-maps)"),
                **{f"params.{k}": v for k, v in cfg.params.items()},
                "plugin": cfg.plugin, "nprocs": cfg.resolved_nprocs()}
    reports, methods = {}, {}
    for sub, acqs in plan.subjects.items():
        sub_settings = dict(settings)
        if any(a.user_mask for a in acqs):
            masks = [f"user-supplied ({a.user_mask.name})" if a.user_mask else cfg.masking
                     for a in acqs]
            sub_settings["masking"] = masks[0] if len(acqs) == 1 else "; ".join(
                f"{a.name}: {m}" for a, m in zip(acqs, masks))
        items = []
        for acq in acqs:
            fig = Path(f"sub-{sub}") / "figures"
            outputs = [derivative_relpath(acq.entities, "chimap", desc=m) for m in cfg.inversion]
            outputs += [derivative_relpath(acq.entities, k) for k in ("mask", "total_field",
                                                                    "local_field")
                        + CLINICAL_MAPS]
            figs = {k: str(fig / f"{acq.name}_{k}.png") for k in figure_keys(True)}
            items.append({"name": acq.name,
                          "figures": {k: f for k, f in figs.items()
                                      if (plan.output_dir / f).exists()},
                          "outputs": [str(o) for o in outputs if (plan.output_dir / o).exists()]})
        ssw = workflow.get_node(f"single_subject_{sub}_wf")
        timings = collect_timings(work_root / f"single_subject_{sub}_wf", since=since)
        methods[sub] = ssw.__desc__ or ""
        sub_errors = [f"{step} failed: {msg} (crash file: {_relative(crash, plan.output_dir)})"
                      for step, msg, crash in (errors or {}).get(sub, [])]
        if sub in failed and not sub_errors:
            sub_errors = ["a step failed; see the crash files in "
                          f"{_relative(plan.output_dir / 'logs' / f'sub-{sub}', plan.output_dir)}"]
        reports[sub] = write_subject_report(plan.output_dir, sub, items, settings=sub_settings,
                                            timings=timings, methods=methods[sub],
                                            errors=sub_errors)
    write_citation_files(plan.output_dir / "logs", methods, CITATIONS)
    return reports


def _relative(path, root) -> str:
    """``path`` relative to ``root`` when inside it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def qc_summary(plan, sub: str) -> list[str]:
    """Run-summary lines of a subject's QC (:mod:`qsmflow.qc`, read from its χ sidecars): one
    verdict line per acquisition, then one line per χ map that did not pass."""
    from ..bids import derivative_relpath
    from ..report.qc import read_qc, summary_lines, worst

    lines = []
    for acq in plan.subjects[sub]:
        found = read_qc(plan.output_dir, [derivative_relpath(acq.entities, "chimap", desc=m)
                                          for m in plan.config.inversion])
        if found:
            verdict = worst(found)
            lines.append(f"    {acq.name}: QC {verdict.upper()}"
                         + (" (do not trust these χ maps)" if verdict == "fail" else ""))
            lines += summary_lines(acq.name, found)
    return lines


def check_dicom_sources(plan) -> None:
    """``--dicom-out``: every acquisition's source record (patient, study, frame of reference)
    can be found (from ``--source-dicom``, else dicom2bids provenance), checked before anything
    runs; ``InputError`` says what to pass. The export step finds it again when it runs, so no
    patient data is kept."""
    from ..dicom.source import SourceIndex, image_source

    try:
        index = SourceIndex(plan.config.source_dicom) if plan.config.source_dicom else None
        for acqs in plan.subjects.values():
            for acq in acqs:
                image_source(acq.phase[0], dict(acq.metadata), index=index)
    except ValueError as exc:  # names the file or folder and what to pass
        raise InputError(str(exc)) from None


def main(argv=None) -> int:
    # Nipype's batch plugins name jobs after $LOGNAME, which containers and cron jobs lack
    os.environ.setdefault("LOGNAME", os.environ.get("USER", "qsmflow"))
    parser = get_parser()
    opts = parser.parse_args(argv)
    _setup_logging(opts.verbose)
    from ..config import memory_warning
    from .lock import acquire_all, release_all
    from .validation import plan_run
    from .workdir import clean_work_dir, old_results_warning

    held = []  # lock files of the output and work folders
    try:
        cfg = build_config(_cli_settings(opts), opts.config)
        work_dir = Path(cfg.work_dir) if cfg.work_dir else Path.cwd() / "work"
        plan = plan_run(opts.bids_dir, opts.output_dir, work_dir, cfg)
        held = acquire_all(plan.output_dir, plan.work_dir)  # before anything is cleaned/written
        for warning in (memory_warning(cfg), old_results_warning(plan.output_dir)):
            if warning:
                LOG.warning("qsmflow: warning: %s", warning)
        if opts.clean_workdir:
            try:
                cleaned = clean_work_dir(plan.work_dir)
            except ValueError as exc:
                raise InputError(str(exc)) from None
            if cleaned:
                LOG.info("--clean-workdir: removed %s", cleaned)
        if cfg.dicom_out:  # every source series found before anything runs
            check_dicom_sources(plan)
    except (InputError, ConfigError) as exc:
        print(f"qsmflow: error: {exc}", file=sys.stderr)
        release_all(held)
        return EXIT_BAD_INPUT
    try:
        return execute(plan, omp_nthreads=opts.omp_nthreads, verbose=opts.verbose)
    except OSError as exc:  # a full disk or a folder made unwritable while running
        where = exc.filename or plan.output_dir
        print(f"qsmflow: error: {where}: {exc.strerror or exc}; free space or fix the "
              "permissions (derivatives are written whole or not at all), then rerun with the "
              "same -w to reuse the finished steps", file=sys.stderr)
        return EXIT_FAILED
    finally:
        release_all(held)


def execute(plan, *, omp_nthreads: int = 1, verbose: int = 0) -> int:
    """Build and run the workflow of a checked :class:`~qsmflow.cli.validation.RunPlan`."""
    from ..config import all_nodes, apply_resources
    from ..workflows import init_qsmflow_wf

    cfg = plan.config
    run_uuid = time.strftime("%Y%m%d-%H%M%S") + "_" + uuid.uuid4().hex[:8]
    t0 = time.time()
    nsub = len(plan.subjects)
    print(f"qsmflow {__version__}: {nsub} participant(s), {plan.n_acquisitions} acquisition(s); "
          f"inversions {', '.join(cfg.inversion)}; background removal {cfg.bgremoval}; "
          f"plugin {cfg.plugin}", flush=True)
    log_dir = prepare_output(plan, run_uuid)
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    from .workdir import forget_missing_derivatives

    gone = forget_missing_derivatives(plan.work_dir)
    if gone:
        print(f"{len(gone)} step(s) write again the outputs deleted since the last run "
              "(derivatives, DICOM series)", flush=True)
    wf = init_qsmflow_wf(subjects=plan.subjects, bids_dir=plan.bids_dir,
                         output_dir=plan.output_dir, work_dir=plan.work_dir, log_dir=log_dir,
                         run_uuid=run_uuid, inversions=cfg.inversion, bgremoval=cfg.bgremoval,
                         unwrapping=cfg.unwrapping, masking=cfg.masking, params=cfg.params,
                         omp_nthreads=max(1, int(omp_nthreads)),
                         clinical_maps=bool(cfg.clinical_maps),
                         dicom_out=(Path(cfg.dicom_out).expanduser().resolve()
                                    if cfg.dicom_out else None),
                         source_dicom=cfg.source_dicom or None)
    wf.config["execution"].update({"crashfile_format": "txt",
                                   "stop_on_first_crash": bool(cfg.stop_on_first_crash),
                                   "remove_unnecessary_outputs": False,
                                   "hash_method": "timestamp",
                                   "check_version": False})
    if cfg.plugin in ("MultiProc", "LegacyMultiProc", "Linear"):
        wf.config["execution"]["poll_sleep_duration"] = 0.1  # Nipype's 2 s adds up per level
    apply_resources(wf, cfg.plugin, cfg.resolved_mem_gb(), cfg.resolved_nprocs())
    from nipype.interfaces.utility import IdentityInterface

    steps = [n for n in all_nodes(wf) if not n.run_without_submitting
             and not isinstance(n.interface, IdentityInterface)]
    progress = Progress(total=len(steps), quiet=False)
    plugin, plugin_args = _plugin_args(cfg, progress)
    crashed = None
    try:
        wf.run(plugin=plugin, plugin_args=plugin_args)
    except Exception as exc:  # Nipype raises after the other subjects finished
        crashed = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        LOG.debug("workflow error: %s", exc)
    if cfg.plugin.endswith("Graph") and not crashed:  # the jobs are queued, not done
        print(f"\nqsmflow submitted {len(steps)} step(s) of {nsub} participant(s) to "
              f"{cfg.plugin.replace('Graph', '')} as one dependency graph; nothing is finished "
              f"yet. When the jobs are done, rerun this same command (same --work-dir "
              f"{plan.work_dir}) to check them and write the reports.")
        return EXIT_OK
    failed_lines: dict[str, list[tuple]] = {}
    dicom_errors = []  # the export comes after the derivatives: they are there all the same
    for sub in plan.subjects:
        lines = _crash_summary(log_dir / f"sub-{sub}" / run_uuid)
        dicom_errors += [(sub, *line) for line in lines if line[0] == "export_dicom"]
        lines = [line for line in lines if line[0] != "export_dicom"]
        if lines:
            failed_lines[sub] = lines
    if crashed and not failed_lines and not dicom_errors:  # e.g. the plugin failed: no crash file
        for sub in plan.subjects:
            failed_lines[sub] = [("workflow", f"{crashed}; rerun with -v", log_dir)]
    reports = write_reports(plan, wf, set(failed_lines), plan.work_dir / wf.name, since=t0,
                            errors=failed_lines)
    dt = time.time() - t0
    ok = [s for s in plan.subjects if s not in failed_lines]
    print(f"\nqsmflow finished in {dt:.0f} s: {len(ok)}/{nsub} participant(s) succeeded "
          f"({progress.done} step(s) run, {progress.cached} reused from {plan.work_dir}).")
    for sub in ok:
        print(f"  sub-{sub}: derivatives in {plan.output_dir / f'sub-{sub}'}, "
              f"report {reports.get(sub)}")
        for line in qc_summary(plan, sub):
            print(line)
    for sub, lines in failed_lines.items():
        print(f"  sub-{sub}: FAILED, no derivatives written for the failed acquisition(s); "
              f"report with the error: {reports.get(sub)}", file=sys.stderr)
        for step, msg, crash in lines:  # the human line last, after its crash file
            print(f"    crash file: {crash}", file=sys.stderr)
            print(f"qsmflow: error: sub-{sub} {step}: {msg}", file=sys.stderr)
    for sub, _, msg, crash in dicom_errors:
        print(f"    crash file: {crash}", file=sys.stderr)
        print(f"qsmflow: error: sub-{sub} --dicom-out: {msg}", file=sys.stderr)
    return EXIT_FAILED if failed_lines or dicom_errors else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

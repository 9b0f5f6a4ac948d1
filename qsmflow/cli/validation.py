"""Up-front checks of a BIDS App run, before any workflow is built or anything is written.

Every failure raises :class:`qsmflow.bids.InputError` (bad data / paths) or
:class:`qsmflow.config.ConfigError` (bad options) with one line that names the file or option
and the fix; ``qsmflow.cli.run`` prints it and exits non-zero. Keep all such checks here so
that the CLI, the demo and the tests share them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..bids import Acquisition, InputError, collect_acquisitions, make_layout
from ..config import BATCH_PLUGINS, LOCAL_PLUGINS, ConfigError, RunConfig
from ..phase import ROMEO_MISSING, UNWRAPPING_METHODS, romeo_available
from ..user_mask import attach_user_masks, check_derivatives_dirs

UNWRAPPING = UNWRAPPING_METHODS


@dataclass
class RunPlan:
    """What a checked run will do."""

    bids_dir: Path
    output_dir: Path
    work_dir: Path
    subjects: dict[str, list[Acquisition]]
    config: RunConfig
    derivatives: dict[str, Path] = field(default_factory=dict)  # --derivatives, by link key

    @property
    def n_acquisitions(self) -> int:
        return sum(len(v) for v in self.subjects.values())


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_paths(bids_dir, output_dir, work_dir) -> tuple[Path, Path, Path]:
    """Input is a BIDS dataset; output and work dir are neither it nor inside it; writable."""
    bids_dir = Path(bids_dir).expanduser().resolve()
    output_dir = Path(output_dir).expanduser().resolve()
    work_dir = Path(work_dir).expanduser().resolve()
    if not bids_dir.is_dir():
        raise InputError(f"{bids_dir}: input folder does not exist; pass the root of a BIDS "
                         "dataset as the first argument")
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json); pass "
                         "the dataset's root folder, or convert DICOMs first with "
                         "'qsmflow dicom2bids'")
    for what, path, opt in (("output", output_dir, "the output_dir argument"),
                            ("work", work_dir, "-w WORK_DIR")):
        if _inside(path, bids_dir):
            raise InputError(f"{path}: the {what} folder is inside the input dataset {bids_dir}, "
                             f"which qsmflow never writes to; choose another folder for {opt} "
                             "(e.g. <bids_dir>/../derivatives/qsmflow)")
        probe = path
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise InputError(f"{path}: the {what} folder cannot be written ({probe} is not a "
                             f"writable folder); fix its permissions or choose another {opt}")
    return bids_dir, output_dir, work_dir


#: arguments the pipeline fills in itself (data, geometry, threads): not ``[params.*]`` entries
_PIPELINE_ARGS = frozenset({"field", "field_ppm", "mask", "voxel_size", "b0_dir", "magnitude",
                            "noise", "mag", "affine", "te_s", "threads", "workers", "residual",
                            "phase", "phase4d", "mag4d", "method", "csf_mask"})
#: parameters without a default value (None = "derived from the data") that take a number
_NUMERIC_SUFFIXES = ("_mm", "_rad", "_s", "_ms")
_NUMERIC_NAMES = frozenset({"lam", "mu", "mu1", "tol", "threshold"})


def _tunable(fn) -> dict:
    """``{name: default}`` of the keyword parameters of ``fn`` a user may set."""
    import inspect

    return {n: p.default for n, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty and n not in _PIPELINE_ARGS}


def _is_number(v) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_value(section: str, name: str, value, default) -> None:
    """A ``[params.section]`` value of the type its default has (ConfigError naming it)."""
    numeric = name.endswith(_NUMERIC_SUFFIXES) or name in _NUMERIC_NAMES
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif _is_number(default) or (default is None and numeric):
        ok = _is_number(value) or (isinstance(value, list) and len(value) > 0
                                   and all(_is_number(v) for v in value))
        want = "a finite number"
    elif isinstance(default, str):
        ok, want = isinstance(value, str) or _is_number(value), f'a number or a word like "{default}"'
    else:
        ok, want = True, ""
    if not ok:
        raise ConfigError(f"[params.{section}] {name} = {value!r} in the config: {name} must be "
                          f"{want} (default: {default!r})")


def _param_sections() -> dict:
    """``{section: {name: default}}``: every ``[params.*]`` section qsmflow reads."""
    from .. import bgremoval, masking, phase
    from ..interfaces.maps import R2STAR_PARAMS, SWI_PARAMS

    sections = {name: _tunable(fn) for name, fn in bgremoval.METHODS.items()}
    for name, fns in masking.MASK_METHODS.items():
        sections[name] = {k: v for fn in fns for k, v in _tunable(fn).items()}
    sections.update({u: _tunable(phase.unwrap_echoes) for u in UNWRAPPING})
    sections.update(r2star=dict(R2STAR_PARAMS), swi=dict(SWI_PARAMS))
    return sections


def check_params(cfg: RunConfig) -> None:
    """Every ``[params.*]`` section, name and value type of the configuration is one qsmflow
    uses (inversions: :func:`qsmflow.inversion.resolved_parameters`); ConfigError otherwise."""
    from .. import inversion

    sections = _param_sections()
    known = sorted(set(sections) | set(inversion.METHODS))
    for section, values in (cfg.params or {}).items():
        if section not in known:
            raise ConfigError(f"[params.{section}] in the config: no step or method is called "
                              f"{section!r}; use one of {', '.join(known)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[params.{section}] in the config must be a table of name = value")
        if section in inversion.METHODS:
            try:
                inversion.resolved_parameters(section, **values)
            except ValueError as exc:
                raise ConfigError(f"[params.{section}] in the config: {exc}") from None
            defaults = inversion.method_parameters(section)
            allowed = {k: v["default"] for k, v in defaults.items()}
        else:
            allowed = sections[section]
            unknown = sorted(set(values) - set(allowed))
            if unknown:
                raise ConfigError(f"[params.{section}] in the config: unknown parameter(s) "
                                  f"{', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
        for name, value in values.items():
            if name in allowed:
                _check_value(section, name, value, allowed[name])


def check_methods(cfg: RunConfig) -> None:
    """Every method and parameter name of the configuration exists."""
    from .. import inversion
    from ..bgremoval import METHODS as BG_METHODS
    from ..masking import MASK_METHODS

    if not cfg.inversion:
        raise ConfigError("--inversion: give at least one method, e.g. --inversion tkd medi")
    for m in cfg.inversion:
        if m not in inversion.METHODS:
            raise ConfigError(f"--inversion: unknown method {m!r}; choose from "
                              f"{', '.join(inversion.METHODS)}")
    check_params(cfg)
    for opt, value, choices in (("--bgremoval", cfg.bgremoval, BG_METHODS),
                                ("--unwrapping", cfg.unwrapping, UNWRAPPING),
                                ("--masking", cfg.masking, MASK_METHODS)):
        if value not in choices:
            raise ConfigError(f"{opt}: unknown method {value!r}; choose from {', '.join(choices)}")
    if cfg.unwrapping == "romeo" and not romeo_available():
        raise ConfigError(f"--unwrapping romeo: {ROMEO_MISSING}")
    for opt, value in (("--max-echoes", cfg.max_echoes), *(("--echo-idx", e) for e in
                                                            cfg.echo_idx or ())):
        if value is not None and int(value) < 1:
            raise ConfigError(f"{opt} {value}: echoes are numbered from 1 (the shortest TE)")
    if cfg.plugin not in BATCH_PLUGINS + LOCAL_PLUGINS:
        raise ConfigError(f"plugin {cfg.plugin!r} (from --use-plugin or the config) is not "
                          f"supported; use one of {', '.join(LOCAL_PLUGINS + BATCH_PLUGINS)}")
    if cfg.nprocs is not None and int(cfg.nprocs) < 0:
        raise ConfigError(f"--nprocs {cfg.nprocs}: must be >= 1 (0 = all cores)")
    if cfg.mem_gb is not None and float(cfg.mem_gb) < 0:
        raise ConfigError(f"--mem-gb {cfg.mem_gb}: must be > 0 (GB)")


#: validator codes that never concern qsmflow's inputs (as fMRIPrep ignores them): events,
#: stimuli, diffusion gradients, EEG/iEEG channels, participant/phenotype tables
IGNORED_VALIDATOR_CODES = frozenset({
    "EVENTS_TSV_MISSING", "EVENTS_COLUMN_ONSET", "EVENTS_COLUMN_DURATION", "STIMULUS_FILE_MISSING",
    "UNUSED_STIMULUS", "SLICE_TIMING_NOT_DEFINED", "TASK_NAME_MUST_DEFINE", "REPETITION_TIME_MUST_DEFINE",
    "DWI_MISSING_BVAL", "DWI_MISSING_BVEC", "BVAL_MULTIPLE_ROWS", "BVEC_NUMBER_ROWS",
    "BVEC_ROW_LENGTH", "MALFORMED_BVAL", "MALFORMED_BVEC", "VOLUME_COUNT_MISMATCH",
    "PARTICIPANT_ID_MISMATCH", "PARTICIPANT_ID_COLUMN", "PHENOTYPE_SUBJECTS_MISSING",
    "INCONSISTENT_SUBJECTS", "INCONSISTENT_PARAMETERS", "TSV_EQUAL_ROWS", "TSV_EMPTY_CELL",
    "TSV_IMPROPER_NA", "TSV_ADDITIONAL_COLUMNS_UNDEFINED", "CUSTOM_COLUMN_WITHOUT_DESCRIPTION",
    "ACQTIME_FMT", "CHANNELS_COLUMN_SFREQ", "CHANNELS_COLUMN_LOWCUT", "CHANNELS_COLUMN_HIGHCUT",
    "CHANNELS_COLUMN_NOTCH",
})
#: datatype folders qsmflow reads (errors in func/, dwi/, eeg/, ... do not stop a QSM run)
READ_DATATYPES = ("anat",)


def relevant_validator_errors(errors: list[dict], subjects=None) -> list[dict]:
    """The validator errors that concern this run: at the dataset's top level or in a selected
    subject's folder (all subjects when ``subjects`` is None), in a folder qsmflow reads
    (:data:`READ_DATATYPES`), and not of a code in :data:`IGNORED_VALIDATOR_CODES`."""
    keep = []
    for err in errors:
        if err.get("code") in IGNORED_VALIDATOR_CODES:
            continue
        parts = [x for x in str(err.get("location") or "").split("/") if x]
        if parts and parts[0].startswith("sub-"):
            if subjects is not None and parts[0][len("sub-"):] not in subjects:
                continue
            folders = [x for x in parts[1:-1] if not x.startswith("ses-")]
            if folders and folders[0] not in READ_DATATYPES:
                continue
        keep.append(err)
    return keep


def validate_bids(bids_dir: Path, subjects=None) -> None:
    """Run the official BIDS validator; the errors that concern the selected ``subjects``
    (labels; None = all) and qsmflow's inputs (:func:`relevant_validator_errors`) →
    :class:`InputError`. Errors elsewhere (another subject, func/ data) are only logged."""
    import logging

    from ..io import run_bids_validator

    try:
        found, _ = run_bids_validator(bids_dir)
    except RuntimeError as exc:
        raise InputError(f"{bids_dir}: {exc}") from None
    errors = relevant_validator_errors(found, None if subjects is None else set(subjects))
    if len(found) > len(errors):
        logging.getLogger("qsmflow").warning(
            "BIDS validator: %d error(s) outside the selected participants' QSM inputs ignored",
            len(found) - len(errors))
    if errors:
        first = errors[0]
        loc = first.get("location") or ""
        raise InputError(f"{bids_dir}{loc}: the BIDS validator found {len(errors)} error(s), "
                         f"first {first.get('code')}; fix them (run bids-validator-deno "
                         f"{bids_dir}) or pass --skip-bids-validation")


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def check_free_space(output_dir: Path, work_dir: Path, subjects: dict, n_inversions: int) -> None:
    """Refuse a run whose output or work folder's file system has less free space than the run
    needs (a generous estimate from the volumes: float32 derivatives, float64 work files)."""
    import shutil

    acqs = [a for v in subjects.values() for a in v]
    need = {output_dir: sum(a.n_voxels * 4 * (n_inversions + 8) for a in acqs),
            work_dir: sum(a.n_voxels * 8 * (6 * a.n_echoes + 3 * n_inversions + 20)
                          for a in acqs)}
    for folder, nbytes in need.items():
        probe = _existing_parent(folder)
        free = shutil.disk_usage(probe).free
        if free < nbytes:
            raise InputError(f"{folder}: only {free / 1e6:.0f} MB free on its file system "
                             f"({probe}), this run needs about {nbytes / 1e6:.0f} MB; free "
                             "space or choose another folder")


def plan_run(bids_dir, output_dir, work_dir, cfg: RunConfig) -> RunPlan:
    """All up-front checks in order (cheap ones first); returns the :class:`RunPlan`."""
    bids_dir, output_dir, work_dir = check_paths(bids_dir, output_dir, work_dir)
    check_methods(cfg)
    derivatives = check_derivatives_dirs(cfg.derivatives, output_dir)
    if cfg.dicom_out:
        d = Path(cfg.dicom_out).expanduser().resolve()
        if _inside(d, bids_dir):
            raise InputError(f"{d}: --dicom-out is inside the input dataset; choose another folder")
    layout = make_layout(bids_dir)
    subjects = collect_acquisitions(bids_dir, cfg.participant_label, cfg.session_label,
                                    layout=layout, bids_filters=cfg.bids_filters,
                                    echo_idx=cfg.echo_idx, max_echoes=cfg.max_echoes)
    attach_user_masks(subjects, derivatives, cfg.masking)
    check_free_space(output_dir, work_dir, subjects, len(cfg.inversion))
    if not cfg.skip_bids_validation:
        validate_bids(bids_dir, subjects)
    return RunPlan(bids_dir, output_dir, work_dir, subjects, cfg, derivatives)

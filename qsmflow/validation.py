"""Up-front checks of a BIDS App run, before any workflow is built or anything is written.

Every failure raises :class:`qsmflow.bids_input.InputError` (bad data / paths) or
:class:`qsmflow.config.ConfigError` (bad options) with one line that names the file or option
and the fix; ``qsmflow.cli.run`` prints it and exits non-zero. Keep all such checks here so
that the CLI, the demo and the tests share them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .bids_input import Acquisition, InputError, collect_acquisitions, make_layout
from .config import BATCH_PLUGINS, LOCAL_PLUGINS, ConfigError, RunConfig
from .user_mask import attach_user_masks, check_derivatives_dirs

UNWRAPPING = ("romeo", "laplacian")


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


def check_methods(cfg: RunConfig) -> None:
    """Every method and parameter name of the configuration exists."""
    from . import inversion
    from .interfaces.bgremoval import BG_METHODS
    from .interfaces.masking import MASK_METHODS

    if not cfg.inversion:
        raise ConfigError("--inversion: give at least one method, e.g. --inversion tkd medi")
    for m in cfg.inversion:
        if m not in inversion.METHODS:
            raise ConfigError(f"--inversion: unknown method {m!r}; choose from "
                              f"{', '.join(inversion.METHODS)}")
        try:
            inversion.resolved_parameters(m, **cfg.method_params(m))
        except ValueError as exc:
            raise ConfigError(f"[params.{m}] in the config: {exc}") from None
    for opt, value, choices in (("--bgremoval", cfg.bgremoval, BG_METHODS),
                                ("--unwrapping", cfg.unwrapping, UNWRAPPING),
                                ("--masking", cfg.masking, MASK_METHODS)):
        if value not in choices:
            raise ConfigError(f"{opt}: unknown method {value!r}; choose from {', '.join(choices)}")
    if cfg.plugin not in BATCH_PLUGINS + LOCAL_PLUGINS:
        raise ConfigError(f"plugin {cfg.plugin!r} (from --use-plugin or the config) is not "
                          f"supported; use one of {', '.join(LOCAL_PLUGINS + BATCH_PLUGINS)}")
    if cfg.nprocs is not None and int(cfg.nprocs) < 0:
        raise ConfigError(f"--nprocs {cfg.nprocs}: must be >= 1 (0 = all cores)")
    if cfg.mem_gb is not None and float(cfg.mem_gb) < 0:
        raise ConfigError(f"--mem-gb {cfg.mem_gb}: must be > 0 (GB)")


def validate_bids(bids_dir: Path) -> None:
    """Run the official BIDS validator; errors → :class:`InputError`."""
    from .io import run_bids_validator

    try:
        errors, _ = run_bids_validator(bids_dir)
    except RuntimeError as exc:
        raise InputError(f"{bids_dir}: {exc}") from None
    if errors:
        first = errors[0]
        loc = first.get("location") or ""
        raise InputError(f"{bids_dir}{loc}: the BIDS validator found {len(errors)} error(s), "
                         f"first {first.get('code')}; fix them (run bids-validator-deno "
                         f"{bids_dir}) or pass --skip-bids-validation")


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
                                    layout=layout)
    attach_user_masks(subjects, derivatives, cfg.masking)
    if not cfg.skip_bids_validation:
        validate_bids(bids_dir)
    return RunPlan(bids_dir, output_dir, work_dir, subjects, cfg, derivatives)

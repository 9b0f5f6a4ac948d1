"""The run's configuration: defaults < ``--config run.toml`` < command-line options.

Only the top level (``qsmflow.cli.run``) reads it; workflow factories get plain keyword
arguments. The effective configuration is written next to the outputs
(``<out>/logs/config-<run id>.toml``) and can be passed back with ``--config`` to reproduce a run.

``run.toml`` (every key optional)::

    inversion = ["tkd", "medi"]       # dipole inversions, one χ map each
    bgremoval = "resharp"             # resharp | vsharp | pdf | lbv
    unwrapping = "region-growing"     # spatial phase unwrapping (or laplacian, romeo)
    masking = "auto"                  # brain mask: auto | deepbet | magnitude | ...
    bids_filters = {megre = {acquisition = "fast"}}   # --bids-filter-file, inline
    echo_idx = [1, 2, 3]              # echoes to use (1 = shortest TE); max_echoes = 3
    derivatives = ["/data/synthstrip"]  # BIDS derivatives with *_desc-brain_mask (used instead)
    [params.medi]                     # per-method parameters (units in the method's docs)
    lam = 1000
    [params.resharp]                  # default radius_mm = max(2, 2 voxels), lam from it
    radius_mm = 6                     # 6 mm keeps ~70 % of a whole-head brain (docs/fieldmap.md)
    [execution]
    nprocs = 2
    mem_gb = 8
    plugin = "MultiProc"              # or a plugin YAML: use_plugin = "slurm.yml"
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomli_w
import yaml

from ._compat import tomllib

#: defaults of the science settings: TKD (fast, a baseline), MEDI (the two-step reference) and
#: single-step TV from the total field, the one that keeps the cortex the background removal
#: erodes and the most accurate on whole heads and thick slices (benchmarks/RESULTS.md)
DEFAULT_INVERSIONS = ("tkd", "medi", "sstv")
#: RESHARP with a 2 mm kernel (at least 2 voxels) and λ 1e-4·(r/6 mm)² (qsmflow.bgremoval.resharp):
#: keeps ≥ 90 % of a 1 mm whole-head brain mask at the best whole-brain local-field NRMSE
#: measured (docs/fieldmap.md)
DEFAULT_BGREMOVAL = "resharp"
from .phase import DEFAULT_UNWRAPPING  # noqa: E402  (the unwrapping registry lives there)
DEFAULT_MASKING = "auto"

#: plugins qsmflow knows how to hand resources to
BATCH_PLUGINS = ("SLURM", "SLURMGraph", "SGE", "SGEGraph", "PBS", "PBSGraph")
LOCAL_PLUGINS = ("MultiProc", "Linear", "LegacyMultiProc")


class ConfigError(ValueError):
    """Bad configuration: the message names the file/option and the fix."""


@dataclass
class RunConfig:
    """Everything one run needs, after merging defaults, the TOML file and the CLI."""

    inversion: list[str] = field(default_factory=lambda: list(DEFAULT_INVERSIONS))
    bgremoval: str = DEFAULT_BGREMOVAL
    unwrapping: str = DEFAULT_UNWRAPPING
    masking: str = DEFAULT_MASKING
    params: dict = field(default_factory=dict)          # method name -> {param: value}
    nprocs: int = 0                                      # 0: all cores
    mem_gb: float = 0.0                                  # 0: 90 % of the machine's memory
    plugin: str = "MultiProc"
    plugin_args: dict = field(default_factory=dict)
    work_dir: str | None = None
    stop_on_first_crash: bool = False
    skip_bids_validation: bool = False
    participant_label: list[str] | None = None
    session_label: list[str] | None = None
    dicom_out: str | None = None
    source_dicom: str | None = None                      # scanner DICOM folder for --dicom-out
    derivatives: list[str] | None = None                 # folders with user brain masks
    bids_filters: dict | None = None                     # --bids-filter-file {"megre": {...}}
    echo_idx: list[int] | None = None                    # echoes to keep, 1-based in TE order
    max_echoes: int | None = None                        # keep at most the first N echoes
    clinical_maps: bool = True                           # R2*/T2* and SWI + minIP besides χ

    def resolved_nprocs(self) -> int:
        return int(self.nprocs) if self.nprocs and self.nprocs > 0 else (os.cpu_count() or 1)

    def resolved_mem_gb(self) -> float:
        if self.mem_gb and self.mem_gb > 0:
            return float(self.mem_gb)
        return round(0.9 * (machine_mem_gb() or 8.0), 1)

    def method_params(self, method: str) -> dict:
        return dict(self.params.get(method, {}))

    def to_toml(self) -> str:
        d = asdict(self)
        execution = {k: d.pop(k) for k in ("nprocs", "mem_gb", "plugin", "plugin_args", "work_dir",
                                           "stop_on_first_crash", "skip_bids_validation")}
        execution["nprocs"] = self.resolved_nprocs()
        execution["mem_gb"] = self.resolved_mem_gb()
        d["execution"] = execution
        return tomli_w.dumps(_drop_none(d))


_TOP = ("inversion", "bgremoval", "unwrapping", "masking", "params", "participant_label",
        "session_label", "dicom_out", "source_dicom", "derivatives", "bids_filters", "echo_idx",
        "max_echoes", "clinical_maps")
_EXEC = ("nprocs", "mem_gb", "plugin", "plugin_args", "work_dir", "stop_on_first_crash",
         "skip_bids_validation", "use_plugin")


def machine_mem_gb() -> float | None:
    """This machine's physical memory (GB = 1024³ bytes), or None when unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError):
        return None


def memory_warning(cfg: "RunConfig") -> str | None:
    """A warning when a local run asks for more memory (``--mem``/``--mem-gb``) than this machine
    has: MultiProc would then start more steps at once than fit. None when it fits or is unknown
    (batch plugins: the limit is per cluster job, not this machine's)."""
    total = machine_mem_gb()
    if not cfg.mem_gb or total is None or cfg.plugin not in LOCAL_PLUGINS:
        return None
    if float(cfg.mem_gb) > total:
        return (f"--mem-gb/--mem {float(cfg.mem_gb):g} GB is more than this machine's "
                f"{total:.1f} GB; steps scheduled as if it were there may run out of memory")
    return None


def load_bids_filters(path) -> dict:
    """``--bids-filter-file``: the JSON object (fMRIPrep's format) → dict; ConfigError names the
    file and the fix. Its keys are checked by :func:`qsmflow.bids.megre_query`."""
    import json

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: --bids-filter-file not found; pass an existing JSON file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON ({exc}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: --bids-filter-file must hold a JSON object, e.g. "
                          '{"megre": {"acquisition": "fast"}}')
    return data


_MEM_UNITS = {"": 1e-3, "K": 1e-6, "M": 1e-3, "G": 1.0, "T": 1e3}


def parse_memory(text) -> float:
    """``--mem`` value → GB: ``16G``, ``16GB``, ``16000MB``, ``16000M``, ``1.5T``; a plain number
    is MB (as fMRIPrep's ``--mem``); K/M/G/T are powers of 1000 (``16000MB`` = 16 GB)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)B?\s*", str(text), re.I)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--mem {text!r}: give a positive amount with an optional unit, e.g. "
                         "16G, 16GB or 16000MB (a plain number is MB)")
    return float(m.group(1)) * _MEM_UNITS[m.group(2).upper()]


def load_toml(path) -> dict:
    """Read ``run.toml`` into a flat dict of :class:`RunConfig` fields (unknown keys refused)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass an existing run.toml to --config")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc}); fix the syntax") from None
    out = {}
    for k, v in raw.items():
        if k == "execution":
            if not isinstance(v, dict):
                raise ConfigError(f"{path}: [execution] must be a table")
            for ek, ev in v.items():
                if ek not in _EXEC:
                    raise ConfigError(f"{path}: unknown key execution.{ek}; known: {', '.join(_EXEC)}")
                out[ek] = ev
        elif k in _TOP:
            out[k] = v
        else:
            raise ConfigError(f"{path}: unknown key {k!r}; known: {', '.join(_TOP + ('execution',))}")
    if "use_plugin" in out:
        out.update(load_plugin_yaml(path.parent / out.pop("use_plugin")))
    if isinstance(out.get("inversion"), str):
        out["inversion"] = [out["inversion"]]
    return out


def load_plugin_yaml(path) -> dict:
    """``plugin.yml`` with ``plugin:`` and ``plugin_args:`` → ``{"plugin", "plugin_args"}``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: plugin file not found; pass an existing YAML to --use-plugin")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]}); fix the syntax") from None
    if not isinstance(data, dict) or "plugin" not in data:
        raise ConfigError(f"{path}: needs a 'plugin:' key (e.g. plugin: SLURM) and optional "
                          "'plugin_args:' mapping")
    args = data.get("plugin_args") or {}
    if not isinstance(args, dict):
        raise ConfigError(f"{path}: 'plugin_args:' must be a mapping")
    unknown = set(data) - {"plugin", "plugin_args"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; only plugin and plugin_args")
    return {"plugin": str(data["plugin"]), "plugin_args": dict(args)}


def build_config(cli: dict, toml_path=None) -> RunConfig:
    """Merge: defaults < TOML file < CLI values that are not None."""
    merged = load_toml(toml_path) if toml_path else {}
    if cli.get("use_plugin"):
        merged.update(load_plugin_yaml(cli["use_plugin"]))
    for k, v in cli.items():
        if k == "use_plugin" or v is None:
            continue
        if k == "params":
            for m, p in v.items():
                merged.setdefault("params", {}).setdefault(m, {}).update(p)
            continue
        merged[k] = v
    known = set(RunConfig.__dataclass_fields__)
    cfg = RunConfig(**{k: v for k, v in merged.items() if k in known})
    if isinstance(cfg.inversion, str):
        cfg.inversion = [cfg.inversion]
    cfg.inversion = list(dict.fromkeys(m.lower() for m in cfg.inversion))  # keep order, no dupes
    return cfg


# --------------------------------------------------------------------------------------------
# node resources → scheduler arguments
# --------------------------------------------------------------------------------------------
def scheduler_args(plugin: str, mem_gb: float, n_procs: int) -> dict | None:
    """Per-node ``plugin_args`` that hand a node's ``mem_gb``/``n_procs`` to a batch scheduler.

    SLURM: ``sbatch_args="--mem=<G>G --cpus-per-task=<n>"``; SGE: ``qsub_args="-l h_vmem=<G>G
    -pe smp <n>"``; PBS: ``qsub_args="-l mem=<G>gb,nodes=1:ppn=<n>"``. Appended to the global
    arguments of the plugin YAML (``overwrite: False``; the leading space matters: Nipype glues
    them onto the global arguments without one). None for local plugins.
    """
    g = max(1, int(-(-float(mem_gb) // 1)))  # ceil, at least 1 GB
    n = max(1, int(n_procs))
    base = plugin.replace("Graph", "")
    if base == "SLURM":
        return {"sbatch_args": f" --mem={g}G --cpus-per-task={n}", "overwrite": False}
    if base == "SGE":
        return {"qsub_args": f" -l h_vmem={g}G -pe smp {n}", "overwrite": False}
    if base == "PBS":
        return {"qsub_args": f" -l mem={g}gb,nodes=1:ppn={n}", "overwrite": False}
    return None


def all_nodes(workflow) -> list:
    """Every node of ``workflow`` and its sub-workflows (Nipype's public API)."""
    return [workflow.get_node(name) for name in workflow.list_node_names()]


def apply_resources(workflow, plugin: str, max_mem_gb: float, max_procs: int) -> int:
    """Clamp every node's ``mem_gb``/``n_procs`` to what the run may use, and for batch plugins
    turn them into the node's scheduler arguments. Returns the number of nodes touched."""
    n = 0
    for node in all_nodes(workflow):
        mem = min(float(node.mem_gb), float(max_mem_gb))
        procs = min(int(node.n_procs), int(max_procs))
        node._mem_gb = mem
        node._n_procs = procs
        args = scheduler_args(plugin, mem, procs)
        if args is not None:
            node.plugin_args = args
        n += 1
    return n


def _drop_none(d: dict) -> dict:
    """``d`` without None values, recursively (TOML has no null)."""
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

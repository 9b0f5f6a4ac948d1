"""BIDS-App conventions (issue 14): what is validated and selected, options that do not
surprise, Python 3.10, old results and the work folder, honest method names."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qsmflow._compat import tomllib
from qsmflow.config import build_config

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Python 3.10
# --------------------------------------------------------------------------------------------
def test_code_runs_on_python_3_10():
    """Nothing in the package, the tests or the benchmarks needs more than Python 3.10 (e.g. a
    bare ``import tomllib``, 3.11+): vermin reads every file's syntax and imports."""
    exe = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))
    if not Path(exe).exists():
        pytest.skip("vermin not installed (pip install -e '.[test]')")
    proc = subprocess.run([exe, "-t=3.10-", "--no-tips", "--violations", "--eval-annotations",
                           "qsmflow", "tests", "benchmarks"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


def test_pyproject_declares_python_3_10_and_tomli():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["requires-python"] == ">=3.10"
    deps = [d.replace(" ", "") for d in meta["dependencies"]]
    assert "tomli>=2;python_version<'3.11'" in deps and any(d.startswith("tomli-w") for d in deps)


def test_effective_config_toml_round_trips_awkward_values(tmp_path):
    """The effective config (written with tomli-w) reads back identically, whatever the strings
    hold (quotes, backslashes, non-ASCII, nested plugin arguments); None values are left out."""
    plug = tmp_path / "slurm.yml"
    plug.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: '--comment=\"a\\\\b\" χ'\n"
                    "  extra: {nested: [1, 2]}\n")
    cfg = build_config({"use_plugin": str(plug), "work_dir": "/tmp/w \"q\"",
                        "params": {"medi": {"lam": 500.5}}, "dicom_out": None})
    back = tomllib.loads(cfg.to_toml())
    assert back["execution"]["plugin_args"] == cfg.plugin_args
    assert back["execution"]["work_dir"] == '/tmp/w "q"'
    assert back["params"] == {"medi": {"lam": 500.5}} and "dicom_out" not in back
    again = build_config({}, _write(tmp_path / "again.toml", cfg.to_toml()))
    assert again.plugin_args == cfg.plugin_args and again.params == cfg.params


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path

"""The BIDS App's command line: options, configuration, and bad input refused up front
(one clear line naming the file and the fix, exit code 2, nothing written)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bids_skeleton import make_skeleton
from qsmflow.cli import run
from qsmflow.cli.main import main as qsmflow_main
from qsmflow.config import build_config, scheduler_args
from qsmflow._compat import tomllib


def _run_bad(capsys, argv, out):
    argv = [str(a) for a in argv]
    if "--inversion" not in argv:  # bad-input checks must not depend on optional methods
        argv += ["--inversion", "tkd"]
    rc = run.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == run.EXIT_BAD_INPUT
    assert len(err) == 1 and err[0].startswith("qsmflow: error: ")
    assert not out.exists(), "nothing may be written for bad input"
    return err[0]


@pytest.fixture
def ds(tmp_path):
    return make_skeleton(tmp_path / "ds", subjects=("01", "02"))


def test_help_lists_every_option_with_default(capsys):
    with pytest.raises(SystemExit) as exc:
        qsmflow_main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--participant-label", "--session-label", "--inversion", "--bgremoval",
                "--unwrapping", "--masking", "--work-dir", "--nprocs", "--mem-gb", "--use-plugin",
                "--config", "--stop-on-first-crash", "--skip-bids-validation", "--verbose",
                "--dicom-out"):
        assert opt in text, opt
    assert "default: tkd medi sstv" in text and "GB" in text and "default: None" not in text
    for action in run.get_parser()._actions:  # every option states its default
        if action.option_strings and action.dest not in ("help", "version"):
            assert "default" in action.help or action.default not in (None, False), action.dest


def test_not_a_bids_dir(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    msg = _run_bad(capsys, [tmp_path / "raw", tmp_path / "out", "participant"], tmp_path / "out")
    assert "dataset_description.json" in msg and str(tmp_path / "raw") in msg


def test_unknown_participant(ds, tmp_path, capsys):
    msg = _run_bad(capsys, [ds, tmp_path / "out", "participant", "--participant-label", "07",
                            "--skip-bids-validation"], tmp_path / "out")
    assert "sub-07" in msg and "choose from 01, 02" in msg


@pytest.mark.parametrize("label", ["../x", "01/..", "sub-0.1"])
def test_participant_label_with_path_characters(ds, tmp_path, capsys, label):
    msg = _run_bad(capsys, [ds, tmp_path / "out", "participant", "--participant-label", label,
                            "--skip-bids-validation"], tmp_path / "out")
    assert "letters and digits only" in msg


@pytest.mark.parametrize("key, fix", [("EchoTime", '"EchoTime" in seconds'),
                                      ("MagneticFieldStrength", '"MagneticFieldStrength" in tesla')])
def test_missing_sidecar_field(tmp_path, capsys, key, fix):
    root = make_skeleton(tmp_path / "ds", drop=(key,))
    msg = _run_bad(capsys, [root, tmp_path / "out", "participant", "--skip-bids-validation"],
                   tmp_path / "out")
    assert fix in msg and "_part-phase_MEGRE.nii.gz" in msg


def test_echo_time_in_milliseconds(tmp_path, capsys):
    root = make_skeleton(tmp_path / "ds", echoes=(4.0, 8.0))
    msg = _run_bad(capsys, [root, tmp_path / "out", "participant", "--skip-bids-validation"],
                   tmp_path / "out")
    assert "milliseconds" in msg


def test_echoes_with_different_shapes(tmp_path, capsys):
    root = make_skeleton(tmp_path / "ds")
    bad = root / "sub-01" / "anat" / "sub-01_echo-2_part-phase_MEGRE.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((7, 5, 4), np.float32), np.eye(4)), bad)
    msg = _run_bad(capsys, [root, tmp_path / "out", "participant", "--skip-bids-validation"],
                   tmp_path / "out")
    assert bad.name in msg and "same matrix" in msg


def test_magnitude_phase_shape_mismatch(tmp_path, capsys):
    root = make_skeleton(tmp_path / "ds")
    bad = root / "sub-01" / "anat" / "sub-01_echo-1_part-mag_MEGRE.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 3), np.float32), np.eye(4)), bad)
    msg = _run_bad(capsys, [root, tmp_path / "out", "participant", "--skip-bids-validation"],
                   tmp_path / "out")
    assert bad.name in msg and "magnitude" in msg


def test_output_inside_input_refused(ds, capsys):
    out = ds / "derivatives" / "qsmflow"
    msg = _run_bad(capsys, [ds, out, "participant", "--skip-bids-validation"], out)
    assert "inside the input dataset" in msg
    _run_bad(capsys, [ds, ds, "participant", "--skip-bids-validation"], ds / "logs")


def test_invalid_bids_input_refused_unless_skipped(tmp_path, capsys):
    root = make_skeleton(tmp_path / "ds")
    (root / "sub-01" / "anat" / "notbids.nii.gz").write_bytes(b"x")
    msg = _run_bad(capsys, [root, tmp_path / "out", "participant", "-w", tmp_path / "w"],
                   tmp_path / "out")
    assert "BIDS validator found" in msg and "--skip-bids-validation" in msg


def test_unknown_method_and_parameter(ds, tmp_path, capsys):
    msg = _run_bad(capsys, [ds, tmp_path / "out", "participant", "--inversion", "tkd", "magic",
                            "--skip-bids-validation"], tmp_path / "out")
    assert "'magic'" in msg and "medi" in msg
    cfg = tmp_path / "run.toml"
    cfg.write_text('[params.tkd]\nthreshhold = 0.1\n')
    msg = _run_bad(capsys, [ds, tmp_path / "out", "participant", "--config", cfg,
                            "--skip-bids-validation"], tmp_path / "out")
    assert "threshhold" in msg and "threshold" in msg


@pytest.mark.parametrize("toml, names", [
    ('[params.magnitude]\nerode_m = 2\n', ("erode_m", "erode_mm")),          # a typo (was dropped)
    ('[params.resharp]\nradius = 4\n', ("radius", "radius_mm")),            # was a TypeError mid-run
    ('[params.resharp]\nradius_mm = "4"\n', ("radius_mm", "number")),       # a string for mm
    ('[params.region-growing]\nbipolar = 1\n', ("bipolar", "true or false")),
    ('[params.medi]\nlam = "high"\n', ("lam", "number")),
    ('[params.swi]\nslab = 12\n', ("slab", "slab_mm")),
    ('[params.reshrap]\nradius_mm = 4\n', ("reshrap", "resharp")),          # no such step
])
def test_every_step_parameter_is_checked_before_anything_runs(ds, tmp_path, capsys, toml, names):
    """Each ``[params.*]`` section (masking, background removal, unwrapping, inversions, maps):
    unknown names and values of the wrong type are refused in one line, exit 2, nothing written."""
    cfg = tmp_path / "run.toml"
    cfg.write_text(toml)
    msg = _run_bad(capsys, [ds, tmp_path / "out", "participant", "--config", cfg,
                            "--skip-bids-validation"], tmp_path / "out")
    assert all(n in msg for n in names), msg


def test_good_step_parameters_pass_the_check(tmp_path):
    from qsmflow.cli.validation import check_methods

    toml = tmp_path / "run.toml"
    toml.write_text('[params.magnitude]\nerode_mm = 2\nr2star_max = "auto"\n'
                    '[params.resharp]\nradius_mm = 3\nedge_mm = 1.5\n[params.vsharp]\n'
                    'radii_mm = [8, 6, 4]\n[params.region-growing]\nbipolar = true\n'
                    '[params.medi]\nlam = 500\n[params.swi]\nn = 4\n[params.sstv]\n'
                    'radius_mm = 5\n')
    check_methods(build_config({}, toml))  # raises on any refusal


def test_bad_plugin_yaml(ds, tmp_path, capsys):
    y = tmp_path / "plugin.yml"
    y.write_text("plugin_args: {n_procs: 2}\n")
    msg = _run_bad(capsys, [ds, tmp_path / "out", "participant", "--use-plugin", y,
                            "--skip-bids-validation"], tmp_path / "out")
    assert str(y) in msg and "plugin:" in msg


def test_config_precedence_and_roundtrip(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('inversion = ["tkd"]\nbgremoval = "pdf"\n[params.medi]\nlam = 500\n'
                    '[execution]\nnprocs = 3\n')
    plug = tmp_path / "slurm.yml"
    plug.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: --partition=debug\n")
    cfg = build_config({"bgremoval": "vsharp", "use_plugin": str(plug), "nprocs": None}, toml)
    assert cfg.inversion == ["tkd"] and cfg.bgremoval == "vsharp" and cfg.nprocs == 3
    assert cfg.params == {"medi": {"lam": 500}}
    assert cfg.plugin == "SLURM" and cfg.plugin_args == {"sbatch_args": "--partition=debug"}
    back = tomllib.loads(cfg.to_toml())  # the effective config is valid TOML with every setting
    assert back["bgremoval"] == "vsharp" and back["params"]["medi"]["lam"] == 500
    assert back["execution"]["plugin_args"]["sbatch_args"] == "--partition=debug"
    assert scheduler_args("PBS", 2.2, 2)["qsub_args"] == " -l mem=3gb,nodes=1:ppn=2"
    assert scheduler_args("MultiProc", 2, 2) is None


def test_dataset_description_is_a_valid_derivative(tmp_path):
    from qsmflow.bids import derivative_description

    d = derivative_description(tmp_path, "raw")
    assert d["DatasetType"] == "derivative" and d["GeneratedBy"][0]["Name"] == "qsmflow"
    json.dumps(d)


def test_graph_plugin_reports_submission_not_success(ds, tmp_path, capsys, monkeypatch):
    """SLURMGraph/SGEGraph/PBSGraph return once the jobs are queued: qsmflow must say so and
    write no report (the derivatives do not exist yet)."""
    from nipype.pipeline.engine import Workflow

    calls = []
    monkeypatch.setattr(Workflow, "run", lambda self, plugin=None, plugin_args=None: calls.append(plugin))
    y = tmp_path / "slurmgraph.yml"
    y.write_text("plugin: SLURMGraph\nplugin_args:\n  sbatch_args: '--partition=debug '\n")
    out = tmp_path / "out"
    rc = run.main([str(ds), str(out), "participant", "--use-plugin", str(y), "--inversion", "tkd",
                   "--skip-bids-validation", "-w", str(tmp_path / "work")])
    text = capsys.readouterr().out
    assert rc == run.EXIT_OK and calls == ["SLURMGraph"]
    assert "submitted" in text and "nothing is finished" in text and "succeeded" not in text
    assert not list(out.rglob("*.html"))


def test_one_registry_per_method_family():
    """The CLI's choices, the interfaces' accepted values and the config check of each method
    family all come from its registry (adding a method there adds it everywhere)."""
    from qsmflow import bgremoval, inversion, masking, phase
    from qsmflow.interfaces import BackgroundRemoval, BrainMask, DipoleInversion
    from qsmflow.cli.validation import _param_sections

    parser = run.get_parser()
    choices = {a.dest: set(a.choices) for a in parser._actions if a.choices}
    assert choices["bgremoval"] == set(bgremoval.METHODS)
    assert choices["masking"] == set(masking.MASK_METHODS)
    assert choices["unwrapping"] == set(phase.UNWRAPPING_METHODS)
    assert set(BackgroundRemoval().inputs.trait("method").trait_type.values) == set(bgremoval.METHODS)
    assert set(BrainMask().inputs.trait("method").trait_type.values) == set(masking.MASK_METHODS)
    assert set(DipoleInversion().inputs.trait("method").trait_type.values) == set(inversion.METHODS)
    sections = _param_sections()
    assert set(bgremoval.METHODS) | set(masking.MASK_METHODS) | set(phase.UNWRAPPING_METHODS) \
        <= set(sections)
    assert all(callable(fn) for fn in bgremoval.METHODS.values())


def test_the_layout_says_who_uses_what():
    """BIDS names and descriptions live in qsmflow.bids only; the numeric core reads and writes
    no files (the interfaces do); simulation and CLI-only code are imported by nothing below."""
    import ast
    import re
    from pathlib import Path

    import qsmflow

    pkg = Path(qsmflow.__file__).parent
    sources = {p.relative_to(pkg).as_posix(): p.read_text() for p in pkg.rglob("*.py")}
    for rel, text in sources.items():
        if rel != "bids.py":  # one dataset_description builder, one entity order, one label check
            assert '"BIDSVersion"' not in text and "ENTITY_ORDER = " not in text, rel
            assert not re.search(r"def _?(check_label|is_label|clean_value)\b", text), rel

    def imports(text):
        out = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                out.add("." * node.level + (node.module or ""))
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
        return out

    for core in ("masking.py", "bgremoval.py"):  # arrays in, arrays out
        assert not {"io", ".io"} & {i.split(" ")[0] for i in imports(sources[core])}, core
        assert "save_nifti" not in sources[core] and "load_nifti" not in sources[core], core
    for rel, text in sources.items():
        top = rel.split("/")[0]
        names = imports(text)
        if top not in ("sims", "cli", "nn"):  # nn trains on the phantom
            assert not any("sims" in n for n in names), rel
        if top != "cli":
            assert not any(n.startswith(("qsmflow.cli", "..cli", ".cli")) for n in names), rel

"""BIDS-App conventions (issue 14): what is validated and selected, options that do not
surprise, Python 3.10, old results and the work folder, honest method names."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bids_skeleton import make_skeleton
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


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _tag(root: Path, sub: str, entities: str) -> None:
    """Insert ``entities`` (e.g. ``acq-fast``) after ``sub-<sub>`` in every file name of that
    subject that has none yet (BIDS order: they go before ``echo``)."""
    for f in sorted((root / f"sub-{sub}").rglob(f"sub-{sub}_echo-*")):
        f.rename(f.with_name(f.name.replace(f"sub-{sub}_", f"sub-{sub}_{entities}_", 1)))


def _plan(ds, tmp_path, **settings):
    from qsmflow.cli.validation import plan_run

    settings.setdefault("inversion", ["tkd"])
    return plan_run(ds, tmp_path / "out", tmp_path / "work", build_config(settings))


def _cli(argv, capsys):
    from qsmflow.cli import run

    rc = run.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# --------------------------------------------------------------------------------------------
# item 4: validate what is processed
# --------------------------------------------------------------------------------------------
@pytest.fixture
def broken_sub02(tmp_path):
    root = make_skeleton(tmp_path / "ds", subjects=("01", "02"))
    (root / "sub-02" / "anat" / "sub-02_echo-1_part-phase_MEGRE.nii.gz").write_bytes(b"broken")
    (root / "sub-02" / "anat" / "notbids.txt").write_text("x")
    return root


def test_broken_other_subject_does_not_stop_selected_one(broken_sub02, tmp_path):
    plan = _plan(broken_sub02, tmp_path, participant_label=["01"])
    assert list(plan.subjects) == ["01"]


def test_broken_selected_subject_still_refused(broken_sub02, tmp_path):
    from qsmflow.bids import InputError

    with pytest.raises(InputError, match="sub-02_echo-1_part-phase"):  # unreadable: refused
        _plan(broken_sub02, tmp_path, participant_label=["02"])
    (broken_sub02 / "sub-01" / "anat" / "stray.nii.gz").write_bytes(b"x")  # validator error
    with pytest.raises(InputError, match=r"sub-01/anat/stray\.nii\.gz.*BIDS validator"):
        _plan(broken_sub02, tmp_path, participant_label=["01"])
    with pytest.raises(InputError):  # all subjects: sub-02 is processed, so it counts
        _plan(broken_sub02, tmp_path)


def test_validator_findings_filtered_to_qsm_inputs():
    from qsmflow.cli.validation import relevant_validator_errors

    errs = [{"code": "NIFTI_HEADER_UNREADABLE", "location": "/sub-02/anat/x_MEGRE.nii.gz"},
            {"code": "NIFTI_HEADER_UNREADABLE", "location": "/sub-01/ses-1/anat/x_MEGRE.nii"},
            {"code": "NOT_INCLUDED", "location": "/sub-01/func/sub-01_task-x_bold.nii.gz"},
            {"code": "EVENTS_TSV_MISSING", "location": "/sub-01/anat/x.nii.gz"},
            {"code": "PARTICIPANT_ID_MISMATCH", "location": "/participants.tsv"},
            {"code": "JSON_INVALID", "location": "/dataset_description.json"},
            {"code": "SOMETHING", "location": None}]
    kept = [e["location"] for e in relevant_validator_errors(errs, {"01"})]
    assert kept == ["/sub-01/ses-1/anat/x_MEGRE.nii", "/dataset_description.json", None]
    assert len(relevant_validator_errors(errs, None)) == 4  # all subjects: sub-02's too


# --------------------------------------------------------------------------------------------
# item 5: select what to run; entities kept
# --------------------------------------------------------------------------------------------
@pytest.fixture
def two_acqs(tmp_path):
    root = make_skeleton(tmp_path / "ds", echoes=(0.004, 0.008, 0.012, 0.016))
    _tag(root, "01", "acq-fast_run-1")
    make_skeleton(root, echoes=(0.004, 0.008, 0.012, 0.016))
    _tag(root, "01", "acq-slow")
    return root


def _filter_file(tmp_path, obj) -> Path:
    path = tmp_path / "filter.json"
    path.write_text(json.dumps(obj))
    return path


def test_bids_filter_file_selects_acquisitions(two_acqs, tmp_path):
    from qsmflow.config import load_bids_filters

    plan = _plan(two_acqs, tmp_path, skip_bids_validation=True)
    assert sorted(a.name for a in plan.subjects["01"]) == ["sub-01_acq-fast_run-1",
                                                          "sub-01_acq-slow"]
    for obj, want in (({"megre": {"acquisition": "fast", "run": 1}}, ["sub-01_acq-fast_run-1"]),
                      ({"megre": {"run": None}}, ["sub-01_acq-slow"]),  # null: no run entity
                      ({"megre": {"acquisition": "*"}}, ["sub-01_acq-fast_run-1",
                                                         "sub-01_acq-slow"])):
        filters = load_bids_filters(_filter_file(tmp_path, obj))
        plan = _plan(two_acqs, tmp_path, skip_bids_validation=True, bids_filters=filters)
        assert sorted(a.name for a in plan.subjects["01"]) == want, obj
        assert all(len(a.magnitude) == 4 for a in plan.subjects["01"])  # magnitudes still paired


@pytest.mark.parametrize("obj, msg", [
    ({"bold": {"task": "rest"}}, "unknown query"),
    ({"megre": {"acq": "fast"}}, "pybids name 'acquisition'"),
    ({"megre": {"subject": "01"}}, "--participant-label"),
    ({"megre": {"echo": 1}}, "--echo-idx"),
])
def test_bids_filter_file_mistakes_named(two_acqs, tmp_path, capsys, obj, msg):
    rc, _, err = _cli([two_acqs, tmp_path / "out", "participant", "--skip-bids-validation",
                       "--inversion", "tkd", "--bids-filter-file", _filter_file(tmp_path, obj)],
                      capsys)
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_echo_selection_in_echo_time_order(tmp_path):
    # file order differs from TE order: echo numbers count in TE order
    root = make_skeleton(tmp_path / "ds", echoes=(0.008, 0.004, 0.016, 0.012))
    (acq,) = _plan(root, tmp_path, skip_bids_validation=True, echo_idx=[3, 1]).subjects["01"]
    assert acq.echo_times == [0.004, 0.012]
    assert [Path(p).name for p in acq.phase] == ["sub-01_echo-2_part-phase_MEGRE.nii.gz",
                                                 "sub-01_echo-4_part-phase_MEGRE.nii.gz"]
    assert [Path(p).name.replace("mag", "phase") for p in acq.magnitude] == \
        [Path(p).name for p in acq.phase]
    assert len(acq.phase_metadata) == 2 and acq.phase_metadata[1]["EchoTime"] == 0.012
    (acq,) = _plan(root, tmp_path, skip_bids_validation=True, max_echoes=3).subjects["01"]
    assert acq.echo_times == [0.004, 0.008, 0.012]
    (acq,) = _plan(root, tmp_path, skip_bids_validation=True, echo_idx=[2, 3, 4],
                   max_echoes=2).subjects["01"]
    assert acq.echo_times == [0.008, 0.012]


def test_echo_selection_mistakes_refused(tmp_path, capsys):
    root = make_skeleton(tmp_path / "ds")
    base = [root, tmp_path / "out", "participant", "--skip-bids-validation", "--inversion", "tkd"]
    rc, _, err = _cli(base + ["--echo-idx", "1", "5"], capsys)
    assert rc == 2 and "--echo-idx 5" in err and "2 echo" in err
    rc, _, err = _cli(base + ["--max-echoes", "0"], capsys)
    assert rc == 2 and "--max-echoes 0" in err
    four_d = make_skeleton(tmp_path / "ds4", four_d=True, echoes=(0.004, 0.008, 0.012))
    rc, _, err = _cli([four_d, *base[1:], "--max-echoes", "2"], capsys)
    assert rc == 2 and "split this 4D file" in err
    assert not (tmp_path / "out").exists()


def test_other_entities_kept_in_output_names(tmp_path):
    from qsmflow.bids import derivative_relpath

    root = make_skeleton(tmp_path / "ds")
    _tag(root, "01", "acq-fast_ce-gad_rec-mag_run-2")
    for f in sorted((root / "sub-01").rglob("*_MEGRE.*")):  # chunk comes after part
        f.rename(f.with_name(f.name.replace("_MEGRE", "_chunk-3_MEGRE")))
    (acq,) = _plan(root, tmp_path).subjects["01"]  # and the dataset still validates
    assert acq.entities["ce"] == "gad" and acq.entities["chunk"] == "3"
    assert len(acq.phase) == len(acq.magnitude) == 2
    chi = derivative_relpath(acq.entities, "chimap", desc="tkd").name
    assert chi == "sub-01_acq-fast_ce-gad_rec-mag_run-2_chunk-3_desc-tkd_Chimap.nii.gz"
    field = derivative_relpath(acq.entities, "total_field").name  # fmap: no ce/rec in BIDS
    assert field == "sub-01_acq-fastCeGadMag_run-2_chunk-3_desc-total_fieldmap.nii.gz"
    assert derivative_relpath({"sub": "01", "inv": "2"}, "mask").name == \
        "sub-01_acq-Inv2_desc-brain_mask.nii.gz"


def test_derivative_names_with_other_entities_validate(tmp_path):
    """The folded names pass the official validator as a derivatives dataset."""
    import nibabel as nib
    import numpy as np

    from qsmflow.bids import derivative_description, derivative_relpath, make_sidecar
    from qsmflow.io import run_bids_validator, write_json

    out = tmp_path / "deriv"
    write_json(out / "dataset_description.json", derivative_description(None, "test"))
    ents = {"sub": "01", "acq": "fast", "ce": "gad", "rec": "mag", "run": "2", "chunk": "3"}
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    img.header.set_xyzt_units("mm")
    for kind, desc in (("chimap", "tkd"), ("mask", None), ("total_field", None),
                       ("local_field", None), ("magnitude", None)):
        rel = derivative_relpath(ents, kind, desc=desc)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, out / rel)
        write_json(out / str(rel).replace(".nii.gz", ".json"),
                   make_sidecar(kind, sources=["bids:raw:sub-01/anat/x.nii.gz"]))
    errors, _ = run_bids_validator(out)
    assert errors == [], errors[:3]


# --------------------------------------------------------------------------------------------
# item 6: options that do not surprise
# --------------------------------------------------------------------------------------------
def _all_parsers():
    import argparse
    import importlib

    from qsmflow.cli.main import SUBCOMMANDS

    made = []
    real = argparse.ArgumentParser.parse_args

    def grab(self, *a, **k):
        made.append(self)
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = grab
    try:
        for mod in ["qsmflow.cli.run", *SUBCOMMANDS.values()]:
            try:
                importlib.import_module(mod).main(["--help"])
            except SystemExit:
                pass
    finally:
        argparse.ArgumentParser.parse_args = real
    return made


def test_no_parser_accepts_abbreviations():
    parsers = _all_parsers()
    assert len(parsers) == 5
    assert all(p.allow_abbrev is False for p in parsers), [p.prog for p in parsers
                                                           if p.allow_abbrev]


def test_abbreviated_option_refused_not_guessed(capsys):
    from qsmflow.cli import run

    with pytest.raises(SystemExit) as exc:  # used to become --mem-gb 16000 (16 TB)
        run.get_parser().parse_args(["in", "out", "participant", "--mem-g", "16"])
    assert exc.value.code == 2 and "unrecognized arguments: --mem-g" in capsys.readouterr().err


@pytest.mark.parametrize("argv, gb", [(["--mem", "16G"], 16.0), (["--mem", "16GB"], 16.0),
                                      (["--mem", "16000MB"], 16.0), (["--mem", "16000"], 16.0),
                                      (["--mem-mb", "8000"], 8.0), (["--mem-gb", "2.5"], 2.5)])
def test_memory_with_units(argv, gb):
    from qsmflow.cli import run

    opts = run.get_parser().parse_args(["in", "out", "participant", *argv])
    assert opts.mem_gb == pytest.approx(gb)
    assert build_config(run._cli_settings(opts)).resolved_mem_gb() == pytest.approx(gb)


def test_memory_mistakes_refused(capsys):
    from qsmflow.cli import run

    for argv in (["--mem", "16GiB"], ["--mem", "-1G"], ["--mem", "4G", "--mem-gb", "4"]):
        with pytest.raises(SystemExit) as exc:
            run.get_parser().parse_args(["in", "out", "participant", *argv])
        assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_nthreads_is_nprocs():
    from qsmflow.cli import run

    for opt in ("--nthreads", "--nprocs", "--n-cpus", "--n_cpus"):
        assert run.get_parser().parse_args(["i", "o", "participant", opt, "3"]).nprocs == 3


def test_memory_above_the_machine_warned(monkeypatch):
    from qsmflow import config

    monkeypatch.setattr(config, "machine_mem_gb", lambda: 8.0)
    msg = config.memory_warning(build_config({"mem_gb": 16.0}))
    assert "16 GB" in msg and "8.0 GB" in msg
    assert config.memory_warning(build_config({"mem_gb": 4.0})) is None
    assert config.memory_warning(build_config({})) is None  # default: 90 % of the machine
    assert config.memory_warning(build_config({"mem_gb": 64.0, "plugin": "SLURM"})) is None


# --------------------------------------------------------------------------------------------
# item 8: old results, --clean-workdir
# --------------------------------------------------------------------------------------------
def test_output_of_another_version_warned(tmp_path):
    from qsmflow import __version__
    from qsmflow.cli.workdir import old_results_warning

    out = tmp_path / "out"
    assert old_results_warning(out) is None  # new folder
    out.mkdir()
    desc = {"Name": "x", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "qsmflow", "Version": __version__}]}
    (out / "dataset_description.json").write_text(json.dumps(desc))
    assert old_results_warning(out) is None  # this version
    desc["GeneratedBy"][0]["Version"] = "0.0.9"
    (out / "dataset_description.json").write_text(json.dumps(desc))
    msg = old_results_warning(out)
    assert "qsmflow 0.0.9" in msg and f"not of qsmflow {__version__}" in msg
    desc["GeneratedBy"] = [{"Name": "fmriprep", "Version": "24.1.0"}]
    (out / "dataset_description.json").write_text(json.dumps(desc))
    assert "fmriprep 24.1.0" in old_results_warning(out)


def test_cli_warns_about_old_results(tmp_path, capsys, monkeypatch):
    from nipype.pipeline.engine import Workflow

    monkeypatch.setattr(Workflow, "run", lambda self, plugin=None, plugin_args=None: None)
    root = make_skeleton(tmp_path / "ds")
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps(
        {"GeneratedBy": [{"Name": "qsmflow", "Version": "0.0.1"}]}))
    argv = [root, out, "participant", "--skip-bids-validation", "--inversion", "tkd",
            "-w", tmp_path / "w", "--linear"]
    _, text, _ = _cli(argv, capsys)
    assert "warning:" in text and "holds derivatives of qsmflow 0.0.1" in text
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Version"] != "0.0.1"  # rewritten by this run
    _, text, _ = _cli(argv, capsys)
    assert "holds derivatives" not in text  # same version now


def _nipype_dir(work: Path) -> Path:
    node = work / "qsmflow_wf" / "single_subject_01_wf" / "fit_field"
    node.mkdir(parents=True)
    (node / "_node.pklz").write_bytes(b"x")
    (node / "result_fit_field.pklz").write_bytes(b"x")
    (node / "field_hz.nii").write_bytes(b"x")
    return work / "qsmflow_wf"


def test_clean_workdir_removes_only_qsmflow_results(tmp_path):
    from qsmflow.cli.workdir import clean_work_dir

    work = tmp_path / "work"
    target = _nipype_dir(work)
    (work / "other_tool").mkdir()
    assert clean_work_dir(work) == target
    assert not target.exists() and (work / "other_tool").is_dir()
    assert clean_work_dir(work) is None  # nothing (left) to clean
    assert clean_work_dir(tmp_path / "missing") is None


def test_clean_workdir_refuses_what_is_not_a_work_dir(tmp_path):
    from qsmflow.cli.workdir import clean_work_dir

    work = tmp_path / "work"
    target = _nipype_dir(work)
    (target / "thesis.docx").write_text("precious")
    with pytest.raises(ValueError, match="thesis.docx is not a Nipype file"):
        clean_work_dir(work)
    assert (target / "thesis.docx").exists()
    other = tmp_path / "w2" / "qsmflow_wf"
    (other / "data").mkdir(parents=True)
    with pytest.raises(ValueError, match="no Nipype node files"):
        clean_work_dir(other.parent)
    link = tmp_path / "w3"
    link.mkdir()
    (link / "qsmflow_wf").symlink_to(target)
    with pytest.raises(ValueError, match="link"):
        clean_work_dir(link)
    assert target.exists()


def test_cli_clean_workdir(tmp_path, capsys, monkeypatch):
    from nipype.pipeline.engine import Workflow

    seen = []
    monkeypatch.setattr(Workflow, "run", lambda self, plugin=None, plugin_args=None:
                        seen.append((tmp_path / "w" / "qsmflow_wf" / "x").exists()))
    root = make_skeleton(tmp_path / "ds")
    target = _nipype_dir(tmp_path / "w")
    (target / "x").mkdir()
    (target / "x" / "_node.pklz").write_bytes(b"x")
    base = [root, tmp_path / "out", "participant", "--skip-bids-validation", "--inversion", "tkd",
            "-w", tmp_path / "w", "--linear"]
    _cli(base, capsys)
    assert seen == [True]  # without the option the old results stay
    (target / "notes.docx").write_text("x")
    rc, _, err = _cli(base + ["--clean-workdir"], capsys)
    assert rc == 2 and "deletes nothing" in err and (target / "notes.docx").exists()
    (target / "notes.docx").unlink()
    _cli(base + ["--clean-workdir"], capsys)
    assert seen == [True, False]


# --------------------------------------------------------------------------------------------
# item 10: honest method names
# --------------------------------------------------------------------------------------------
def test_builtin_unwrapper_is_named_for_what_it_is():
    from qsmflow import config, phase
    from qsmflow.workflows.qsm import methods_text

    assert config.DEFAULT_UNWRAPPING == "region-growing"
    assert phase.UNWRAPPING_METHODS == ("region-growing", "laplacian", "romeo")
    text = methods_text(inversions=["tkd"], bgremoval="resharp", unwrapping="region-growing",
                        masking="magnitude", n_echoes=3)
    assert "ROMEO-like" in text and "not the ROMEO program" in text and "Dymerska" in text


def test_romeo_without_the_program_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    root = make_skeleton(tmp_path / "ds")
    rc, _, err = _cli([root, tmp_path / "out", "participant", "--skip-bids-validation",
                       "--inversion", "tkd", "--unwrapping", "romeo"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "ROMEO.jl" in err and "--unwrapping region-growing" in err
    assert not (tmp_path / "out").exists()


FAKE_ROMEO = '''#!{python}
import sys, json, pathlib
import nibabel as nib, numpy as np
a = sys.argv[1:]
opt = dict(zip(a[::2], a[1::2]))
img = nib.load(opt["-p"])
out = pathlib.Path(opt["-o"]); out.mkdir(parents=True, exist_ok=True)
np.save(out.parent / "args.npy", np.array(a))
nib.save(nib.Nifti1Image(np.asarray(img.dataobj) + 2 * np.pi, img.affine), out / "unwrapped.nii")
'''


def test_romeo_runs_the_real_program_when_on_path(tmp_path, monkeypatch):
    """The command line ROMEO gets (TE in ms, magnitude, mask) and its output read back; a
    stand-in ``romeo`` records its arguments."""
    import numpy as np

    from qsmflow import phase

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "romeo"
    exe.write_text(FAKE_ROMEO.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}")
    assert phase.romeo_available()
    rng = np.random.default_rng(0)
    ph = rng.uniform(-np.pi, np.pi, (6, 5, 4, 3))
    mag = np.ones_like(ph)
    mask = np.ones(ph.shape[:3], bool)
    seen = {}
    real_run = subprocess.run

    def spy(cmd, **kw):
        proc = real_run(cmd, **kw)
        seen["args"] = list(np.load(Path(cmd[cmd.index("-o") + 1]).parent / "args.npy"))
        return proc

    monkeypatch.setattr(phase.subprocess, "run", spy)
    out = phase.unwrap_echoes(ph, mag, [0.004, 0.008, 0.012], (1, 1, 2), method="romeo",
                              mask=mask)
    assert out.shape == ph.shape and np.allclose(out, ph + 2 * np.pi, atol=1e-5)
    args = seen["args"]
    assert args[args.index("-t") + 1] == "[4,8,12]"
    assert args[args.index("-k") + 1].endswith("mask.nii") and "-m" in args


def test_method_registries_have_no_stale_romeo_default():
    """'romeo' is only the real program: nothing defaults to it any more."""
    import inspect

    from qsmflow import phase
    from qsmflow.interfaces.phase import MultiEchoFit
    from qsmflow.workflows import base, qsm

    for fn in (phase.unwrap_echoes, qsm.init_qsm_wf,
               base.init_qsmflow_wf, base.init_single_subject_wf):
        assert inspect.signature(fn).parameters[
            "method" if fn.__module__ == "qsmflow.phase" else "unwrapping"
        ].default == "region-growing", fn
    assert MultiEchoFit().inputs.unwrapping == "region-growing"

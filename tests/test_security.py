"""Security properties: weights are tensors only, nothing escapes the output folder, no shell
command is built from user text, the container does not run as root."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "qsmflow"
SOURCES = sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


# --------------------------------------------------------------------------------------------
# model weights: tensors only, never code
# --------------------------------------------------------------------------------------------
class _Evil:
    """Unpickling this runs a shell command (what a malicious .pt file does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_weights_with_pickled_code_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    inference = pytest.importorskip("qsmflow.nn.inference")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"conv.weight": torch.zeros(2), "payload": _Evil(marker)}, evil)
    with pytest.raises(ValueError, match="state dict"):
        inference.load_state_dict(evil)
    assert not marker.exists(), "loading the weights executed pickled code"

    # a whole pickled module (code by reference) is refused too
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), module)
    with pytest.raises(ValueError):
        inference.load_state_dict(module)

    # while a plain state dict loads (the check is not just "refuse everything")
    good = tmp_path / "good.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), good)
    sd = inference.load_state_dict(good)
    assert set(sd) == {"weight", "bias"} and all(torch.is_tensor(v) for v in sd.values())


def test_every_torch_load_is_weights_only():
    bad = []
    for src in SOURCES:
        for node in ast.walk(ast.parse(src.read_text(), str(src))):
            if isinstance(node, ast.Call) and _dotted(node.func) == "torch.load":
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value
                if not ok:
                    bad.append(f"{src.relative_to(REPO)}:{node.lineno}")
    assert not bad, f"torch.load without weights_only=True: {bad}"


# --------------------------------------------------------------------------------------------
# no shell, no unsafe deserialisation of user files
# --------------------------------------------------------------------------------------------
def _dotted(func) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    parts.append(func.id if isinstance(func, ast.Name) else "?")  # "?": a call/subscript base
    return ".".join(reversed(parts))


_SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
                "pty.spawn", "commands.getoutput"}
_SUBPROCESS = {"subprocess.run", "subprocess.call", "subprocess.check_call",
               "subprocess.check_output", "subprocess.Popen"}


def _shell_problems(tree, where_prefix: str) -> list[str]:
    problems = []
    for node in ast.walk(tree):
        where = f"{where_prefix}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in _SHELL_CALLS:
                problems.append(f"{where} {name}")
            if name in _SUBPROCESS or name.split(".")[-1] == "Popen":
                for k in node.keywords:
                    if k.arg == "shell" and not (isinstance(k.value, ast.Constant)
                                                 and k.value.value is False):
                        problems.append(f"{where} {name}(shell=...)")
                if node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr,
                                                            ast.BinOp)):
                    problems.append(f"{where} {name} with a command string, not a list")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(a.name == "CommandLine" for a in node.names):
                problems.append(f"{where} Nipype CommandLine (runs its command through a shell)")
    return problems


def test_no_shell_commands_built_from_text():
    """Every process is started from an argument list without a shell; no os.system/popen;
    no Nipype CommandLine (it runs its command line through a shell)."""
    problems = []
    for src in SOURCES:
        problems += _shell_problems(ast.parse(src.read_text(), str(src)),
                                    str(src.relative_to(REPO)))
    assert not problems, "\n".join(problems)


def test_the_shell_check_is_live():
    """The checker finds each pattern it looks for (a check that cannot fail proves nothing)."""
    bad = ("import os, subprocess\nfrom nipype.interfaces.base import CommandLine\n"
           "os.system(x)\nsubprocess.run(f'ls {x}', shell=True)\nsubprocess.Popen('ls ' + x)\n"
           "subprocess.run(['ls', x])\n")
    found = _shell_problems(ast.parse(bad), "bad.py")
    assert len(found) == 5, found
    assert len(SOURCES) > 10, "package sources not found"


def test_no_unsafe_deserialisation_of_user_files():
    """YAML/TOML/JSON only through safe loaders; no pickle/marshal/eval of file contents."""
    problems = []
    for src in SOURCES:
        for node in ast.walk(ast.parse(src.read_text(), str(src))):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            where = f"{src.relative_to(REPO)}:{node.lineno} {name}"
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "pickle.load",
                        "pickle.loads", "marshal.load", "marshal.loads", "eval", "exec",
                        "numpy.load", "np.load"):
                if name in ("np.load", "numpy.load"):
                    kw = {k.arg: k.value for k in node.keywords}
                    if not (isinstance(kw.get("allow_pickle"), ast.Constant)
                            and kw["allow_pickle"].value):
                        continue  # np.load refuses pickles by default
                problems.append(where)
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------
# nothing escapes the output folder
# --------------------------------------------------------------------------------------------
HOSTILE = ["../x", "..", "a/b", "a\\b", "/etc", "01/../../x", "0 1", "01;rm", "", "sub-../x",
           ".", "x\n"]


@pytest.mark.parametrize("label", HOSTILE)
def test_hostile_labels_are_refused(label):
    from qsmflow.bids import check_label

    with pytest.raises(ValueError):
        check_label(label, "participant label")


@pytest.mark.parametrize("entity", ["sub", "ses", "acq", "rec", "run"])
@pytest.mark.parametrize("value", ["../../../../tmp/evil", "..", "a/b"])
def test_derivative_paths_stay_inside_the_output(entity, value, tmp_path):
    """Whatever entity values reach the derivative namer, the path it returns stays inside the
    output folder, or it refuses them."""
    from qsmflow.bids import derivative_relpath

    entities = {"sub": "01", "ses": "1", "acq": None, "rec": None, "run": None, entity: value}
    out = (tmp_path / "out").resolve()
    for kind in ("chimap", "mask", "total_field", "local_field", "magnitude"):
        try:
            rel = derivative_relpath(entities, kind, desc="tkd" if kind == "chimap" else None)
        except ValueError:
            continue
        target = (out / rel).resolve()
        assert out in target.parents, f"{entity}={value!r}: {kind} -> {target} outside {out}"
        assert ".." not in Path(rel).parts, f"{entity}={value!r}: {rel}"


def test_participant_label_cannot_escape_via_cli(tmp_path):
    from _robustness import run_app

    (tmp_path / "bids").mkdir()
    (tmp_path / "bids" / "dataset_description.json").write_text(
        '{"Name": "x", "BIDSVersion": "1.9.0"}')
    r = run_app(tmp_path / "bids", tmp_path / "out", "participant", "--participant-label",
                "../../escaped", "-w", tmp_path / "work", "--skip-bids-validation",
                "--inversion", "tkd", timeout=120)
    assert r.returncode != 0
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    assert "label" in r.stderr


# --------------------------------------------------------------------------------------------
# the container
# --------------------------------------------------------------------------------------------
def test_container_runs_as_non_root():
    text = (REPO / "containers" / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)
    final = stages[-1]
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert users, "the final stage sets no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    # nothing after the last USER switches back to root
    after = final.split(f"USER {users[-1]}", 1)[1]
    assert not re.search(r"^USER\s+(root|0)\b", after, re.M)
    assert not re.search(r"\b(sudo|gosu|su-exec)\b", text)

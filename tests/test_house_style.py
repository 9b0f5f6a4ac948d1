"""House style that a test can hold: every public function of the numeric core, the BIDS
module, the simulators, DICOM and the networks documents its parameters and result (numpydoc
``Parameters`` / ``Returns`` sections)."""

import ast
import inspect
from pathlib import Path

import qsmflow

PKG = Path(qsmflow.__file__).parent
DOCUMENTED = ["physics.py", "metrics.py", "io.py", "maps.py", "qc.py", "phase.py", "masking.py",
              "bgremoval.py", "user_mask.py", "bids.py", "inversion", "sims", "dicom", "nn"]


def _public_functions():
    for entry in DOCUMENTED:
        path = PKG / entry
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            if "data" in f.relative_to(PKG).parts:  # developer scripts beside shipped data
                continue
            for node in ast.parse(f.read_text()).body:
                if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                    yield f.relative_to(PKG).as_posix(), node


def _missing(rel, node) -> list[str]:
    doc = inspect.cleandoc(ast.get_docstring(node) or "")
    where = f"{rel}:{node.lineno} {node.name}"
    args = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
    out = []
    if args and "Parameters\n----------" not in doc:
        out.append(f"{where}: no Parameters section")
    out += [f"{where}: argument {a!r} not documented" for a in args if a not in doc]
    if "Returns\n-------" not in doc and "Yields\n------" not in doc:
        out.append(f"{where}: no Returns section")
    return out


def test_public_functions_have_numpydoc_sections():
    functions = list(_public_functions())
    assert len(functions) > 200  # the scan found the package
    missing = [m for rel, node in functions for m in _missing(rel, node)]
    assert not missing, "\n".join(missing)

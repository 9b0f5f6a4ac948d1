"""Version shims: the standard library's ``tomllib`` is Python 3.11+; on 3.10 the same API comes
from ``tomli`` (a conditional dependency in pyproject.toml). Import ``tomllib`` from here."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised by the Python 3.10 run
    import tomli as tomllib

__all__ = ["tomllib"]

"""The QC verdicts of written χ maps (their sidecars' ``QC`` entry, :mod:`qsmflow.qc`) for the
report and the run summary."""

from __future__ import annotations

import html
import json
from pathlib import Path

#: verdict → colour of its badge in the report
_COLOURS = {"pass": "#1a7f37", "warn": "#b58100", "fail": "#b00020"}
_RANK = {"pass": 0, "warn": 1, "fail": 2}


def read_qc(out_dir, outputs) -> list[dict]:
    """``[{"file", "method", "Verdict", "Reasons", "Metrics"}]`` of every χ map among
    ``outputs`` (paths relative to ``out_dir``) whose sidecar has a ``QC`` entry."""
    found = []
    for rel in outputs:
        rel = str(rel)
        if not rel.endswith("_Chimap.nii.gz"):
            continue
        try:
            meta = json.loads((Path(out_dir) / rel.replace(".nii.gz", ".json")).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta.get("QC"), dict):
            found.append({"file": rel, "method": meta.get("Method", "?"), **meta["QC"]})
    return found


def worst(verdicts: list[dict]) -> str | None:
    """The worst ``Verdict`` of :func:`read_qc`'s entries (None when there are none)."""
    return max((v["Verdict"] for v in verdicts), key=_RANK.get, default=None)


def summary_lines(name: str, verdicts: list[dict]) -> list[str]:
    """Run-summary lines of one acquisition: one per χ map that did not pass, with its reasons."""
    return [f"    {name} {v['method']}: QC {v['Verdict'].upper()}: {'; '.join(v['Reasons'])}"
            for v in verdicts if v["Verdict"] != "pass"]


def qc_html(name: str, verdicts: list[dict]) -> str:
    """The QC block of one acquisition: a pass/warn/fail badge per χ map and the reasons."""
    if not verdicts:
        return ""
    rows = []
    for v in verdicts:
        colour = _COLOURS.get(v["Verdict"], "#444")
        why = "; ".join(v["Reasons"]) or "all metrics within their limits"
        rows.append(f"<li><b style='color:{colour}'>QC {html.escape(v['Verdict'].upper())}</b> "
                    f"{html.escape(name)} {html.escape(str(v['method']))}: {html.escape(why)}</li>")
    return "<ul class='qc'>" + "".join(rows) + "</ul>"


def qc_summary_html(out_dir, acquisitions: list[dict]) -> str:
    """The QC section at the top of a report: every acquisition's verdicts, read from the
    sidecars of its χ maps (``acquisitions``: the report's items, ``name`` and ``outputs``
    relative to ``out_dir``); empty when no χ map has QC."""
    found = [(a["name"], read_qc(out_dir, a.get("outputs", ()))) for a in acquisitions]
    blocks = [qc_html(name, v) for name, v in found]
    if not any(blocks):
        return ""
    overall = worst([v for _, vs in found for v in vs])
    note = {"pass": "the χ maps look plausible",
            "warn": "check the χ maps before use",
            "fail": "do not trust the χ maps flagged below"}[overall]
    return (f"<h2>Quality control: <span style='color:{_COLOURS[overall]}'>{overall.upper()}"
            f"</span></h2><p>Computed from the data (no ground truth): {note}. The metrics are "
            "in each χ map's sidecar (<code>QC</code>).</p>" + "".join(blocks))

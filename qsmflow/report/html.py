"""One self-contained HTML page per subject (figures are PNGs beside it, no network access)."""

from __future__ import annotations

import html
import os
import tempfile
from pathlib import Path

from .. import __version__
from .qc import qc_summary_html


def collect_timings(work_root, since: float | None = None) -> list[dict]:
    """Run time of every finished node under ``work_root`` (a workflow's work folder), from
    Nipype's result files: ``[{"node", "workflow", "seconds", "finished", "reused"}]`` sorted by
    path. ``finished``: when the node ended (ISO time); ``reused``: it ended before ``since``
    (a Unix time, e.g. this run's start), so this run took its cached result."""
    from datetime import datetime

    from nipype.utils.filemanip import loadpkl

    rows = []
    for res in sorted(Path(work_root).rglob("result_*.pklz")):
        if res.parent.name.startswith("_") or res.parent.parent.name == "mapflow":
            continue  # MapNode iterations: their parent node is listed
        try:
            result = loadpkl(res)
            secs = float(getattr(result.runtime, "duration", float("nan")))
            end = str(getattr(result.runtime, "endTime", "") or "")
        except Exception:  # an unreadable result file is not a reason to lose the report
            continue
        if secs == secs and not res.parent.name.startswith("gather"):  # skip NaN, merges
            try:
                reused = since is not None and datetime.fromisoformat(end).timestamp() < since
            except ValueError:
                reused = False
            rows.append({"node": res.parent.name, "workflow": res.parent.parent.name,
                         "seconds": secs, "finished": end[:19], "reused": bool(reused)})
    return rows


def _table(header, rows) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


_CSS = """body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:.9em}
.fig{overflow-x:auto}.fig img{max-width:none}.methods{background:#f6f6f6;padding:.5em 1em}.failed{color:#b00}"""


def write_subject_report(out_dir, subject: str, acquisitions: list[dict], *, settings: dict,
                         timings: list[dict], methods: str, errors: list[str] = ()) -> Path:
    """Write ``<out_dir>/sub-<subject>.html``.

    ``acquisitions``: ``[{"name", "figures": {key: path relative to out_dir}, "outputs":
    [relative paths]}]``; ``settings``: the parameters used; ``timings``: from
    :func:`collect_timings`; ``methods``: the methods text (boilerplate with citations).
    """
    out_dir = Path(out_dir)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>qsmflow: sub-{subject}"
             f"</title><style>{_CSS}</style></head><body>",
             f"<h1>qsmflow report: sub-{html.escape(subject)}</h1>",
             f"<p>qsmflow {__version__}</p>"]
    if errors:
        parts.append("<h2 class='failed'>Errors: this participant failed</h2><p>No derivatives "
                     "were written for the failed acquisition(s).</p><ul>" + "".join(
                         f"<li>{html.escape(e)}</li>" for e in errors) + "</ul>")
    parts.append(qc_summary_html(out_dir, acquisitions))  # QC verdicts first
    for acq in acquisitions:
        parts.append(f"<h2>{html.escape(acq['name'])}</h2>")
        for key, title in (("mask", "Magnitude and brain mask"),
                           ("field", "Total and local field (Hz)"),
                           ("chi", "Susceptibility maps (ppm, one colour scale)"),
                           ("maps", "R2* (1/s), SWI (CLEAR-SWI-like) and its minIP")):
            if key in acq.get("figures", {}):
                parts.append(f"<h3>{title}</h3><div class='fig'><img "
                             f"src='{html.escape(acq['figures'][key])}' alt='{key}'></div>")
            if key == "field":
                parts.append(_coverage_note(out_dir, acq.get("outputs", ())))
            if key == "maps" and key in acq.get("figures", {}):
                parts.append(_maps_note(out_dir, acq.get("outputs", ())))
        if acq.get("outputs"):
            parts.append("<h3>Outputs</h3><ul>" + "".join(
                f"<li><a href='{html.escape(p)}'>{html.escape(p)}</a></li>" for p in acq["outputs"])
                + "</ul>")
    parts.append("<h2>Parameters</h2>" + _table(["setting", "value"],
                                                 [(k, v) for k, v in settings.items()]))
    if timings:
        fresh = [t for t in timings if not t.get("reused")]
        total = sum(t["seconds"] for t in fresh)
        note = (f"; {len(timings) - len(fresh)} step(s) reused from an earlier run (their time is "
                "that run's)" if len(fresh) < len(timings) else "")
        parts.append(f"<h2>Run time per step</h2><p>total {total:.1f} s of node time in this run"
                     f"{note}</p>" + _table(
                         ["workflow", "step", "seconds", "run"],
                         [(t["workflow"], t["node"], f"{t['seconds']:.2f}",
                           f"reused (ran {t.get('finished', '').replace('T', ' ')})"
                           if t.get("reused") else "this run") for t in timings]))
    parts.append(f"<h2>Methods</h2><div class='methods'>{methods_html(methods)}</div>")
    parts.append("</body></html>")
    path = out_dir / f"sub-{subject}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(parts))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def _coverage_note(out_dir: Path, outputs) -> str:
    """One line on how much of the brain mask the local field covers (from the local field's
    sidecar: ``BrainCoverage``, ``BrainVolumeKept_ml``); empty when not recorded."""
    import json

    for rel in outputs:
        if str(rel).endswith("desc-local_fieldmap.nii.gz"):
            try:
                meta = json.loads((out_dir / str(rel).replace(".nii.gz", ".json")).read_text())
            except (OSError, ValueError):
                return ""
            if "BrainCoverage" not in meta:
                return ""
            cov = 100.0 * float(meta["BrainCoverage"])
            warn = " (below 90 %: the cortex near the edge is missing)" if cov < 90 else ""
            return (f"<p>Local field covers {cov:.1f} % of the brain mask "
                    f"({float(meta.get('BrainVolumeKept_ml', float('nan'))):.0f} ml kept by "
                    f"{html.escape(str(meta.get('BackgroundRemoval', '?')).upper())}){warn}.</p>")
    return ""


def _maps_note(out_dir: Path, outputs) -> str:
    """One line on the clinical maps: median R2* (1/s) and T2* (ms) in the brain mask, the SWI's
    phase-mask echo time and power and the minIP slab (from the maps and their sidecars)."""
    import json

    import numpy as np

    from ..io import load_nifti

    def find(end):
        return next((out_dir / str(r) for r in outputs if str(r).endswith(end)), None)

    bits = []
    r2, mask = find("_R2starmap.nii.gz"), find("desc-brain_mask.nii.gz")
    if r2 is not None and mask is not None:
        try:
            v = load_nifti(r2)[0][load_nifti(mask)[0] > 0]
            med = float(np.median(v)) if v.size else float("nan")
            bits.append(f"median R2* in the brain mask {med:.1f} 1/s (T2* {1000 / med:.1f} ms)"
                        if med > 0 else "R2* not measurable in the brain mask")
        except (OSError, ValueError):
            pass
    for end, fmt in (("desc-swi_T2starw.nii.gz", "SWI phase mask at TE {te:.1f} ms, applied "
                                                 "{n} times"),
                     ("desc-swiMinIP_T2starw.nii.gz", "minIP over {slab:g} mm ({sl} slices)")):
        f = find(end)
        if f is None:
            continue
        try:
            meta = json.loads(f.with_name(f.name.replace(".nii.gz", ".json")).read_text())
            par = meta.get("Parameters", {})
            bits.append(fmt.format(te=1000 * float(par.get("PhaseMaskEchoTime", float("nan"))),
                                   n=par.get("n", "?"), slab=meta.get("MinIPSlabThickness_mm", 0),
                                   sl=meta.get("MinIPSlices", "?")))
        except (OSError, ValueError):
            continue
    return f"<p>{html.escape('; '.join(bits))}.</p>" if bits else ""


def methods_html(text: str) -> str:
    return "".join(f"<p>{html.escape(p.strip())}</p>" for p in text.split("\n\n") if p.strip())

"""Visual reports: orthogonal-slice figures (:mod:`.figures`) and one HTML page per subject
(:mod:`.html`). Matplotlib only (Agg backend), no network access."""

from .figures import acquisition_figures
from .html import collect_timings, write_subject_report

__all__ = ["acquisition_figures", "collect_timings", "write_subject_report"]

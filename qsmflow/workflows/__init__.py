"""Nipype workflow factories (no numerics): ``init_qsmflow_wf`` → ``init_single_subject_wf`` →
``init_qsm_wf`` (one acquisition) + ``init_ds_wf`` (its derivatives)."""

from .base import init_ds_wf, init_qsmflow_wf, init_single_subject_wf
from .qsm import init_qsm_wf, methods_text

__all__ = ["init_ds_wf", "init_qsm_wf", "init_qsmflow_wf", "init_single_subject_wf",
           "methods_text"]

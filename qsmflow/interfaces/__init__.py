"""Thin Nipype interfaces: files in → one core function → files out.

Each interface only loads its inputs, calls a pure function of the core (``qsmflow.phase``,
``qsmflow.masking``, ``qsmflow.bgremoval``, ``qsmflow.inversion``, ``qsmflow.report``) and saves
the result with :func:`qsmflow.io.save_nifti`. Nodes get ``mem_gb``/``n_procs`` from
:func:`qsmflow.interfaces._base.estimate_mem_gb` (the volume size times the arrays a step holds).
"""

from .bgremoval import BackgroundRemoval
from .bids import DerivativesSink
from .inversion import DipoleInversion
from .maps import RelaxationMaps, SWIMaps
from .masking import BrainMask, UserBrainMask
from .phase import MultiEchoFit, ScalePhase
from .reportlets import ReportFigures

__all__ = ["BackgroundRemoval", "BrainMask", "DerivativesSink", "DipoleInversion",
           "MultiEchoFit", "RelaxationMaps", "ReportFigures", "SWIMaps", "ScalePhase",
           "UserBrainMask"]

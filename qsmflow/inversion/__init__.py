"""Dipole inversion: local field (ppm) → susceptibility χ (ppm).

Every method is a pure function with one signature::

    fn(field_ppm, mask, voxel_size, b0_dir=(0, 0, 1), *, magnitude=None, noise=None, **params)
        -> chi (ppm, float32, unreferenced, 0 outside the mask)

The common arguments: ``field_ppm`` (X, Y, Z) the local field (ppm), finite inside ``mask``;
``mask`` (X, Y, Z) bool, the mask of the local field (background-removed), χ is returned inside
it; ``voxel_size`` 3 floats (mm) per array axis; ``b0_dir`` 3 floats, the B0 direction in voxel
axes (normalised); ``magnitude`` (a.u.) and ``noise`` (per-voxel s.d. of the field, any unit)
optional (X, Y, Z) maps, the data weight W = 1/noise (else magnitude) of the methods that weight
their data term, unused by the others; ``pad`` (voxels per axis, default
:data:`qsmflow.inversion._ops.DEFAULT_PAD`) zero padding before the FFT. Every method raises
``ValueError`` on invalid inputs (:func:`qsmflow.inversion._ops.check_inputs`) and on
non-positive parameters.

``METHODS`` maps method names to ``"module:function"`` (imported lazily, so the network methods
pull in torch only when used). :func:`invert` validates the input, runs one method and applies
the reference (:mod:`qsmflow.inversion.reference`) exactly once. :func:`method_parameters`
lists a method's parameters with defaults and units (for sidecars).
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np

from qsmflow import physics
from qsmflow.inversion import _ops
from qsmflow.inversion.reference import MODES as REFERENCE_MODES
from qsmflow.inversion.reference import reference

METHODS: dict[str, str] = {
    "tkd": "qsmflow.inversion.tkd:tkd",
    "tikhonov": "qsmflow.inversion.tikhonov:tikhonov",
    "ilsqr": "qsmflow.inversion.ilsqr:ilsqr",
    "medi": "qsmflow.inversion.medi:medi",
    "fansi": "qsmflow.inversion.fansi:fansi",
    "tv": "qsmflow.inversion.tv:tv_admm",
    "sstv": "qsmflow.inversion.sstv:sstv",
    "metaqsm": "qsmflow.nn.inference:metaqsm",
    "mesaqsm": "qsmflow.nn.inference:mesaqsm",
    "qsminvnet": "qsmflow.nn.inference:qsminvnet",
}

#: the non-learned methods of the local field (no torch, no weights)
CONVENTIONAL = ("tkd", "tikhonov", "ilsqr", "medi", "fansi", "tv")

#: methods that read the *total* field in the whole brain mask (background removal built in)
#: instead of the local field in the background-removed mask
TOTAL_FIELD_METHODS = ("sstv",)

_COMMON = ("field_ppm", "mask", "voxel_size", "b0_dir", "magnitude", "noise")

__all__ = ["METHODS", "CONVENTIONAL", "TOTAL_FIELD_METHODS", "REFERENCE_MODES", "get_method",
           "invert", "method_parameters", "acquisition_parameters", "resolved_parameters", "reference",
           "total_field_radius_mm", "valid_mask"]


def get_method(method: str):
    """The inversion function registered under ``method`` (imported on first use).

    Parameters
    ----------
    method : str
        A key of :data:`METHODS`.

    Returns
    -------
    callable
        ``fn(field_ppm, mask, voxel_size, b0_dir=(0, 0, 1), *, magnitude=None, noise=None, **params)``
        -> χ (ppm, unreferenced).

    Raises
    ------
    ValueError
        Unknown ``method``, its module cannot be imported (missing dependencies), or the module lacks
        the registered function.
    """
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}: choose one of "
                         f"{', '.join(sorted(METHODS))}")
    modname, fname = METHODS[method].split(":")
    try:
        mod = importlib.import_module(modname)
    except ImportError as exc:
        raise ValueError(f"inversion method {method!r} is not available ({exc}): install its "
                         "dependencies or pick a conventional method") from exc
    try:
        return getattr(mod, fname)
    except AttributeError:
        raise ValueError(f"inversion method {method!r} is registered as {METHODS[method]} but "
                         f"{modname} has no {fname}: update qsmflow.inversion.METHODS") from None


def valid_mask(method, mask, voxel_size, **params):
    """Where ``method`` returns χ for a run on ``mask``: ``mask`` itself, or for a
    total-field method the mask less the rim it leaves out (``edge_mm``).

    Parameters
    ----------
    method : str
        A key of :data:`METHODS`.
    mask : array_like of bool, shape (X, Y, Z)
        The mask the method is run on.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    **params
        The method's parameters; only ``edge_mm`` (mm) of a :data:`TOTAL_FIELD_METHODS` method is read.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
        The voxels that carry χ.

    Raises
    ------
    ValueError
        Total-field method only: negative ``edge_mm``, or the mask vanishes inside that rim
        (:func:`qsmflow.inversion.sstv.valid_mask`).
    """
    if method in TOTAL_FIELD_METHODS:
        from qsmflow.inversion import sstv
        return sstv.valid_mask(mask, voxel_size, params.get("edge_mm"))
    return np.asarray(mask, bool)


def total_field_radius_mm(method, voxel_size, **params):
    """SMV radius (mm) with which a total-field method removes the background inside its data
    term (its ``radius_mm``, default for ``voxel_size``); ``None`` for a local-field method.

    Parameters
    ----------
    method : str
        A key of :data:`METHODS`.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis (sets the default radius).
    **params
        The method's parameters; only ``radius_mm`` (mm) is read.

    Returns
    -------
    float or None
        SMV radius (mm), or ``None`` when ``method`` is not in :data:`TOTAL_FIELD_METHODS`.
    """
    if method not in TOTAL_FIELD_METHODS:
        return None
    from qsmflow.inversion import sstv
    r = params.get("radius_mm")
    return float(sstv.default_radius_mm(voxel_size) if r is None else r)


def method_parameters(method: str) -> dict[str, dict]:
    """Tunable parameters of ``method``: ``{name: {"default": value, "units": text}}``.

    The common inputs (field, mask, voxel size, B0 direction, magnitude, noise) and ``*args`` /
    ``**kwargs`` are left out; units come from the method module's ``UNITS``.

    Parameters
    ----------
    method : str
        A key of :data:`METHODS`.

    Returns
    -------
    dict
        ``{name: {"default": value or None, "units": text or ""}}`` in signature order.

    Raises
    ------
    ValueError
        As :func:`get_method`.
    """
    fn = get_method(method)
    units = getattr(inspect.getmodule(fn), "UNITS", {})
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in _COMMON or p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        out[name] = {"default": default, "units": units.get(name, "")}
    return out


def resolved_parameters(method: str, **params) -> dict:
    """The parameter values a run of ``method`` with ``params`` uses (defaults filled in).

    Methods taking ``**params`` check their own extras. JSON-friendly for sidecars.

    Parameters
    ----------
    method : str
        A key of :data:`METHODS`.
    **params
        Parameter values given by the caller (:func:`method_parameters` lists the valid ones).

    Returns
    -------
    dict
        ``{name: value}``: the method's parameters in signature order, then any extras; an ndarray
        value becomes ``"array[shape]"``, a NumPy scalar a Python scalar.

    Raises
    ------
    ValueError
        A parameter the method does not have (for a method without ``**params``), or as
        :func:`get_method`.
    """
    known = method_parameters(method)
    takes_extra = any(p.kind is p.VAR_KEYWORD
                      for p in inspect.signature(get_method(method)).parameters.values())
    unknown = sorted(set(params) - set(known))
    if unknown and not takes_extra:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for inversion method "
                         f"{method!r}: valid are {', '.join(known) or 'none'}")
    out = {}
    for k in list(known) + [k for k in params if k not in known]:
        v = params.get(k, known[k]["default"] if k in known else None)
        if isinstance(v, np.ndarray):
            v = f"array{list(v.shape)}"
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def acquisition_parameters(method: str, b0_tesla, echo_times_s) -> dict:
    """The parameters of ``method`` that come from the acquisition, not from a fixed default.

    A method with a nonlinear data term e^{i·s·Dχ} (a ``rad_per_ppm`` parameter: MEDI, FANSI)
    gets s = 2π·γ̄·B0·mean(TE), the phase per ppm of field at the mean echo time of this
    acquisition, instead of the fixed 3 T / 20 ms default (``benchmarks/results/medi_scale.md``
    compares it with the fixed scale and with the echo spacing ΔTE).

    Parameters
    ----------
    method : str
        A key of :data:`METHODS`.
    b0_tesla : float
        Field strength (T).
    echo_times_s : sequence of float
        Echo times (s) of the acquisition.

    Returns
    -------
    dict
        ``{"rad_per_ppm": s}`` (rad/ppm) for such a method, else empty; a user's own value of a
        parameter goes on top of it.

    Raises
    ------
    ValueError
        Unknown ``method``; implausible ``b0_tesla`` or ``echo_times_s``.
    """
    if "rad_per_ppm" not in method_parameters(method):
        return {}
    te = physics.check_echo_times(echo_times_s)
    return {"rad_per_ppm": float(physics.ppm_to_rad(1.0, float(np.mean(te)), b0_tesla))}


def invert(method, field_ppm, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), *, magnitude=None,
           noise=None, reference_mode="mean", csf_mask=None, workers=None, **params):
    """Run inversion ``method`` on a local field (ppm) and reference the result once.

    A :data:`TOTAL_FIELD_METHODS` method runs on the total field in the brain mask and is
    referenced in its :func:`valid_mask`.

    Parameters
    ----------
    method : str
        A key of :data:`METHODS`.
    field_ppm : array_like, shape (X, Y, Z)
        Local field (ppm); for a total-field method the total field (ppm).
    mask : array_like of bool, shape (X, Y, Z)
        Mask of the field (the background-removed mask; the brain mask for a total-field method).
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    b0_dir : sequence of 3 float, default (0, 0, 1)
        B0 direction in voxel axes (normalised here).
    magnitude : array_like, shape (X, Y, Z), optional
        Magnitude (a.u.), for the methods that use it (data weight, edge mask).
    noise : array_like, shape (X, Y, Z), optional
        Per-voxel noise s.d. of the field (any units, positive in the mask), for the methods that
        weight the data term by 1/noise.
    reference_mode : {"mean", "csf", "none"}, default "mean"
        "mean": mean χ in ``mask`` = 0; "csf": mean χ in ``csf_mask`` = 0; "none": unreferenced.
    csf_mask : array_like of bool, shape (X, Y, Z), optional
        CSF mask for ``reference_mode="csf"``; also passed to a method that takes ``csf_mask``
        (MEDI+0) unless given in ``params``.
    workers : int, optional
        FFT threads (default: the enclosing :func:`qsmflow.physics.use_workers`, else the
        environment).
    **params
        The method's parameters (:func:`method_parameters`, the method's docstring).

    Returns
    -------
    ndarray, shape (X, Y, Z)
        Susceptibility χ (ppm, float32), referenced, 0 outside :func:`valid_mask`.

    Raises
    ------
    ValueError
        Unknown ``method``, ``reference_mode`` or parameter; invalid inputs
        (:func:`qsmflow.inversion._ops.check_inputs`) or parameter values; "csf" reference without
        a usable ``csf_mask``; a method that returns the wrong shape.
    """
    if reference_mode not in REFERENCE_MODES:
        raise ValueError(f"unknown reference_mode {reference_mode!r}: use one of "
                         f"{', '.join(REFERENCE_MODES)}")
    fn = get_method(method)
    resolved_parameters(method, **params)  # unknown-parameter check
    if csf_mask is not None and "csf_mask" in method_parameters(method):
        params.setdefault("csf_mask", csf_mask)  # MEDI+0 uses the CSF mask when one is given
    f, m, vs, b, mag, noi = _ops.check_inputs(field_ppm, mask, voxel_size, b0_dir, magnitude,
                                              noise)
    with physics.use_workers(workers):
        chi = fn(f, m, vs, b, magnitude=mag, noise=noi, **params)
    chi = np.asarray(chi)
    if chi.shape != m.shape:
        raise ValueError(f"method {method!r} returned shape {chi.shape} for input {m.shape}: "
                         "the method is broken")
    return reference(chi, valid_mask(method, m, vs, **params), reference_mode, csf_mask)

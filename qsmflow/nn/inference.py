"""Network inversions with the plug-in signature of :mod:`qsmflow.inversion`:

    metaqsm / mesaqsm / qsminvnet(field_ppm, mask, voxel_size, b0_dir=(0, 0, 1), *,
                                  magnitude=None, noise=None, **params) -> chi (ppm)

χ is masked and unreferenced (:func:`qsmflow.inversion.invert` references it). Any matrix size
(cropped to the mask's bounding box, zero-padded to a multiple of 16, cropped back), any voxel
size (Meta-QSM predicts its kernels for it; Mesa-QSM picks the shipped model whose voxel size is
nearest, or ``model=``; QSMInvNet ignores it), CPU by default or CUDA when present
(``device=``), deterministic.

B0 direction: the networks were trained with B0 along array axis 2; any ``b0_dir`` works
(:mod:`qsmflow.nn.orientation`). The array axis closest to B0 is moved to axis 2 (exact: sagittal
and coronal acquisitions), and with ``b0_align="rotate"`` (default) the residual tilt is removed
by rotating the field and χ back (cubic splines). ``b0_align="permute"`` skips the rotation and
warns (``UserWarning``) beyond :data:`B0_WARN_DEG` of residual tilt. The data-consistency step
always uses the true, oblique dipole kernel.

Weights are loaded with ``torch.load(weights_only=True)`` and must be a plain state dict of
tensors: anything else (a pickle with code, a whole module, a training checkpoint) is refused.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .. import physics
from .models import MULTIPLE, build_model, run_model
from .orientation import B0Frame

LOG = logging.getLogger("qsmflow")

#: folder of the shipped weights (``<name>.pt`` + ``<name>.json`` + ``<name>.md``)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: default shipped model per method
DEFAULT_MODELS = {"metaqsm": "metaqsm", "qsminvnet": "qsminvnet"}
#: residual tilt (degrees) of B0 from the network's axis, after the permutation, above which
#: ``b0_align="permute"`` warns (the network alone then has a bias growing with the angle)
B0_WARN_DEG = 5.0
#: how a B0 off array axis 2 is handled (see the module docstring)
B0_ALIGN = ("rotate", "permute")
#: parameter units for sidecars (read by qsmflow.inversion.method_parameters)
UNITS = {"model": "shipped model name", "weights": "path to a .pt state dict", "device": "cpu|cuda",
         "consistency": "off | auto | λ: blend the network's χ with the measured field "
                        "(qsmflow.inversion.consistency; not in the papers)",
         "b0_align": "rotate | permute: B0 off array axis 2 is brought along it by moving the "
                     "nearest axis there and rotating the residual tilt (rotate) or by the axis "
                     "move only (permute)"}


def load_state_dict(path) -> dict:
    """Load ``path`` safely as a state dict of tensors; ``ValueError`` for anything else.

    Parameters
    ----------
    path : str or Path
        ``.pt`` file saved with ``torch.save(model.state_dict())``; read with
        ``torch.load(weights_only=True)`` onto the CPU.

    Returns
    -------
    dict of str to torch.Tensor
        The state dict.

    Raises
    ------
    ValueError
        If the file does not exist, cannot be loaded with ``weights_only=True`` (a pickle with code,
        a whole module, ...) or is not a non-empty dict of str → tensor (e.g. a training checkpoint).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"weights file {path} not found: reinstall qsmflow or pass weights=PATH")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ...
        raise ValueError(f"{path.name} is not a plain state dict of tensors ({type(exc).__name__}); "
                         "refusing to load it: use weights saved with torch.save(model.state_dict())") from None
    if not isinstance(sd, dict) or not sd or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise ValueError(f"{path.name} is not a plain state dict of tensors: pass a file saved with "
                         "torch.save(model.state_dict()) (a training checkpoint.pt holds it under 'model')")
    return sd


def available_models(weights_dir=None) -> dict[str, dict]:
    """Shipped models: name → summary JSON (config, steps, validation, ...).

    Parameters
    ----------
    weights_dir : str or Path, optional
        Folder to scan (default :data:`WEIGHTS_DIR`); a model is a ``<name>.json`` with a
        ``<name>.pt`` beside it.

    Returns
    -------
    dict of str to dict
        Model name → its parsed JSON summary, in name order.
    """
    d = Path(weights_dir or WEIGHTS_DIR)
    out = {}
    for js in sorted(d.glob("*.json")):
        if js.with_suffix(".pt").exists():
            out[js.stem] = json.loads(js.read_text())
    return out


def load_model(name_or_path, device="cpu", weights_dir=None) -> tuple[torch.nn.Module, dict]:
    """Build and load a model: a shipped name (``metaqsm``, ``mesaqsm_0.5x0.5x2.0`` …) or a
    ``.pt`` path with a ``.json`` summary beside it. Returns ``(model in eval mode, summary)``.

    Results are cached (the last 8 ``(name_or_path, device, weights_dir)``): a repeated call
    returns the same module object.

    Parameters
    ----------
    name_or_path : str or Path
        A shipped model name, looked up as ``<weights_dir>/<name>.pt``, or a path ending in ``.pt``
        whose ``.json`` summary (written by ``qsmflow train``) sits beside it.
    device : str or torch.device, default "cpu"
        Device the model is moved to.
    weights_dir : str or Path, optional
        Folder of the shipped models (default :data:`WEIGHTS_DIR`).

    Returns
    -------
    model : torch.nn.Module
        The model, in eval mode on ``device``.
    summary : dict
        Its JSON summary (``config``, ``steps``, ``validation``, ...).

    Raises
    ------
    ValueError
        If no shipped model has that name, the ``.json`` is missing, its config names an unknown
        model kind, or the weights are not a plain state dict of tensors (:func:`load_state_dict`)
        or do not match the config.
    """
    return _load_model_cached(str(name_or_path), str(device), str(weights_dir or WEIGHTS_DIR))


@lru_cache(maxsize=8)
def _load_model_cached(name_or_path, device, weights_dir):
    p = Path(name_or_path)
    if p.suffix != ".pt":
        p = Path(weights_dir) / f"{name_or_path}.pt"
        if not p.exists():
            names = ", ".join(available_models(weights_dir)) or "none"
            raise ValueError(f"no shipped model {name_or_path!r}: available are {names}")
    js = p.with_suffix(".json")
    if not js.exists():
        raise ValueError(f"{js} missing: the model's config (written by qsmflow train) must sit "
                         "beside its weights")
    summary = json.loads(js.read_text())
    model = build_model(**summary["config"]["model"])
    sd = load_state_dict(p)
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise ValueError(f"{p.name} does not match its config {js.name}: {str(exc).splitlines()[0]}") from None
    model.to(torch.device(device)).eval()
    return model, summary


def b0_frame(mask, voxel_size, b0_dir, b0_align="rotate") -> B0Frame:
    """The :class:`~qsmflow.nn.orientation.B0Frame` a network inversion uses; logs what it does
    and warns when the residual tilt is ignored (``b0_align="permute"``) beyond
    :data:`B0_WARN_DEG`.

    Parameters
    ----------
    mask : array_like, shape (X, Y, Z)
        Brain mask (non-zero inside).
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    b0_dir : sequence of 3 float
        B0 direction in voxel axes (normalised here).
    b0_align : {"rotate", "permute"}, default "rotate"
        "rotate": move the array axis nearest B0 to axis 2 and rotate away the residual tilt;
        "permute": the axis move only.

    Returns
    -------
    B0Frame
        The frame (``rotate=(b0_align == "rotate")``, cubic splines).

    Raises
    ------
    ValueError
        If ``b0_align`` is not one of :data:`B0_ALIGN`, or ``voxel_size`` or ``b0_dir`` is invalid.

    Warns
    -----
    UserWarning
        With ``b0_align="permute"`` and a residual tilt above :data:`B0_WARN_DEG` degrees.
    """
    if b0_align not in B0_ALIGN:
        raise ValueError(f"b0_align must be one of {', '.join(B0_ALIGN)}, got {b0_align!r}")
    frame = B0Frame(mask, voxel_size, b0_dir, rotate=b0_align == "rotate")
    msg = f"network inversion, B0 {tuple(round(float(x), 3) for x in physics.check_b0_dir(b0_dir))}: "
    if not frame.rotated and frame.tilt_deg > B0_WARN_DEG:
        msg += (frame.describe() + "; the network assumes B0 along its axis, expect a bias "
                "(b0_align='rotate' or consistency= reduce it)")
        LOG.warning(msg)
        warnings.warn(msg, UserWarning, stacklevel=3)
    elif frame.axis != 2 or frame.rotated:
        LOG.info(msg + frame.describe())
    return frame


def _check_volume(field_ppm, mask) -> tuple[np.ndarray, np.ndarray]:
    """``(field float32, mask bool)``; a one-line ``ValueError`` for a bad pair."""
    field = np.asarray(field_ppm, dtype=np.float32)
    m = np.asarray(mask) > 0
    if field.ndim != 3:
        raise ValueError(f"field must be a 3D array, got shape {field.shape}")
    if m.shape != field.shape:
        raise ValueError(f"mask shape {m.shape} differs from field shape {field.shape}")
    if not m.any():
        raise ValueError("mask is empty: pass the brain mask of the field")
    if not np.all(np.isfinite(field[m])):
        raise ValueError("field contains NaN/Inf inside the mask: fix the field map first")
    return field, m


def predict(model, field_ppm, mask, voxel_size, device="cpu") -> np.ndarray:
    """Run ``model`` on one volume: crop to the mask, pad to a multiple of 16, predict, paste
    back. ``field_ppm`` and the result in ppm; float32 output, 0 outside ``mask``.

    The crop is the mask's bounding box grown by 2 voxels. B0 is taken to be along array axis 2
    (the training convention; :func:`b0_frame` brings a volume there).

    Parameters
    ----------
    model : torch.nn.Module
        A model of :mod:`qsmflow.nn.models` on ``device`` (called via
        :func:`~qsmflow.nn.models.run_model`).
    field_ppm : array_like, shape (X, Y, Z)
        Local field (ppm); values outside ``mask`` are ignored.
    mask : array_like, shape (X, Y, Z)
        Brain mask (non-zero inside).
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    device : str or torch.device, default "cpu"
        Device the inputs are moved to.

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        Susceptibility chi (ppm), 0 outside ``mask``.

    Raises
    ------
    ValueError
        If ``field_ppm`` is not 3D, ``mask`` has another shape or is empty, the field has NaN/Inf
        inside the mask, or ``voxel_size`` is invalid.
    """
    field, m = _check_volume(field_ppm, mask)
    vs = physics.check_voxel_size(voxel_size)
    sl = physics.bounding_box(m, 2)
    f, mm = np.where(m, field, 0.0)[sl], m[sl].astype(np.float32)
    shp = f.shape
    pshape = [int(math.ceil(s / MULTIPLE) * MULTIPLE) for s in shp]
    pad = [(0, p - s) for s, p in zip(shp, pshape)]
    dev = torch.device(device)
    ft = torch.from_numpy(np.pad(f, pad))[None, None].to(dev)
    mt = torch.from_numpy(np.pad(mm, pad))[None, None].to(dev)
    with torch.inference_mode():
        out = run_model(model, ft, mt, vs)[0, 0].float().cpu().numpy()
    chi = np.zeros(field.shape, np.float32)
    chi[sl] = out[: shp[0], : shp[1], : shp[2]]
    return chi * m


def default_device() -> str:
    """Device the network inversions use when ``device`` is not given.

    Returns
    -------
    str
        "cuda" when ``torch.cuda.is_available()``, else "cpu".
    """
    return "cuda" if torch.cuda.is_available() else "cpu"


def _run(name, field_ppm, mask, voxel_size, b0_dir, device, weights, consistency="off",
         b0_align="rotate"):
    from ..inversion.consistency import check_weight, data_consistency

    check_weight(consistency)  # before the network runs
    field, m = _check_volume(field_ppm, mask)
    frame = b0_frame(m, voxel_size, b0_dir, b0_align)
    device = device or default_device()
    if device.startswith("cuda"):
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    model, _ = load_model(weights or name, device)
    chi = frame.from_network(predict(model, *frame.to_network(field), frame.voxel_size, device))
    if consistency == "off":
        return chi
    return data_consistency(chi, field_ppm, mask, voxel_size, b0_dir, lam=consistency)[0]


def metaqsm(field_ppm, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), *, magnitude=None, noise=None,
            model: str = "metaqsm", weights=None, device=None, consistency="off",
            b0_align="rotate", **params) -> np.ndarray:
    """Meta-QSM (one WP-Conv U-Net for any voxel size): local field (ppm) → χ (ppm), masked.

    Parameters
    ----------
    field_ppm : array_like, shape (X, Y, Z)
        Local field (ppm).
    mask : array_like, shape (X, Y, Z)
        Brain mask (non-zero inside).
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis; the WP-Conv kernels are predicted for it.
    b0_dir : sequence of 3 float, default (0, 0, 1)
        B0 direction in voxel axes (normalised); see ``b0_align``.
    magnitude, noise : ndarray, optional
        Unused (plug-in signature).
    model : str, default "metaqsm"
        Shipped model name (:func:`available_models`).
    weights : str or Path, optional
        A ``.pt`` state dict (with its ``.json`` beside it), used instead of ``model``.
    device : str, optional
        "cpu" or "cuda" (default: :func:`default_device`); on CUDA, cuDNN is set deterministic.
    consistency : "off", "auto" or float > 0, default "off"
        "off": the network alone, as in the paper; "auto" or a weight λ: blend its χ with the
        measured field (:func:`qsmflow.inversion.consistency.data_consistency`; not in the papers).
    b0_align : {"rotate", "permute"}, default "rotate"
        How a B0 off array axis 2 is handled (module docstring, :func:`b0_frame`); "permute" warns
        (``UserWarning``) beyond :data:`B0_WARN_DEG` of residual tilt.
    **params
        Must be empty: any other keyword raises.

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        Susceptibility chi (ppm), 0 outside ``mask``, not referenced.

    Raises
    ------
    ValueError
        On an unknown keyword, a bad ``consistency`` or ``b0_align``, a bad field/mask pair (not 3D,
        shapes differ, empty mask, NaN/Inf inside the mask), an invalid ``voxel_size`` or ``b0_dir``,
        or weights that cannot be loaded (:func:`load_model`).
    """
    _no_params("metaqsm", params)
    return _run(model, field_ppm, mask, voxel_size, b0_dir, device, weights, consistency, b0_align)


def nearest_mesa_model(voxel_size, weights_dir=None) -> str:
    """Name of the shipped Mesa-QSM model whose voxel size is nearest (log-distance).

    Parameters
    ----------
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    weights_dir : str or Path, optional
        Folder of the shipped models (default :data:`WEIGHTS_DIR`).

    Returns
    -------
    str
        Name of the model of kind "mesaqsm" with a ``data.fixed_voxel`` that minimises
        ‖log(fixed_voxel) − log(voxel_size)‖.

    Raises
    ------
    ValueError
        If ``voxel_size`` is invalid or no shipped Mesa-QSM model is found.
    """
    vs = np.log(physics.check_voxel_size(voxel_size))
    best, dist = None, np.inf
    for name, s in available_models(weights_dir).items():
        fixed = s["config"].get("data", {}).get("fixed_voxel")
        if s["config"]["model"]["kind"] != "mesaqsm" or not fixed:
            continue
        d = float(np.linalg.norm(np.log(fixed) - vs))
        if d < dist:
            best, dist = name, d
    if best is None:
        raise ValueError("no shipped Mesa-QSM model found: pass weights=PATH to a trained one")
    return best


def mesaqsm(field_ppm, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), *, magnitude=None, noise=None,
            model: str | None = None, weights=None, device=None, consistency="off",
            b0_align="rotate", **params) -> np.ndarray:
    """Mesa-QSM (plain-conv U-Net trained at one voxel size): the shipped model whose voxel size
    is nearest to ``voxel_size`` unless ``model=`` (name) or ``weights=`` (path) is given.

    Parameters
    ----------
    field_ppm, mask, b0_dir, magnitude, noise, weights, device, consistency, b0_align, **params
        As for :func:`metaqsm`.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis; picks the model (:func:`nearest_mesa_model`) unless
        ``model`` or ``weights`` is given.
    model : str, optional
        Shipped model name, e.g. ``"mesaqsm_0.5x0.5x2.0"``.

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        χ (ppm) as for :func:`metaqsm`; ``ValueError`` likewise, and when no shipped Mesa-QSM
        model is found and neither ``model`` nor ``weights`` is given.
    """
    _no_params("mesaqsm", params)
    if model is None and weights is None:
        model = nearest_mesa_model(voxel_size)
    return _run(model, field_ppm, mask, voxel_size, b0_dir, device, weights, consistency, b0_align)


def qsminvnet(field_ppm, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), *, magnitude=None, noise=None,
              model: str = "qsminvnet", weights=None, device=None, consistency="off",
              b0_align="rotate", **params) -> np.ndarray:
    """QSMInvNet (gated convolutions + non-local block; inputs local field and brain mask);

    Parameters
    ----------
    field_ppm, mask, b0_dir, magnitude, noise, weights, device, consistency, b0_align, **params
        As for :func:`metaqsm`.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis; not a network input (used by the B0 rotation and the
        data-consistency step).
    model : str, default "qsminvnet"
        Shipped model name (:func:`available_models`).

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        χ (ppm), raising ``ValueError``, as for :func:`metaqsm`.
    """
    _no_params("qsminvnet", params)
    return _run(model, field_ppm, mask, voxel_size, b0_dir, device, weights, consistency, b0_align)


def _no_params(name, params):
    if params:
        raise ValueError(f"{name} got unknown parameter(s) {sorted(params)}: it accepts model=, "
                         "weights=, device=, consistency=, b0_align=")

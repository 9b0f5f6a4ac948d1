"""Training loop for the three networks (``qsmflow train --config FILE``).

A config is a TOML file with three tables (see ``qsmflow/nn/configs/*.toml``):

- ``[model]``: ``kind`` ("metaqsm", "mesaqsm", "qsminvnet") plus architecture keywords of
  :func:`qsmflow.nn.models.build_model` (``width``, ``hidden``, ``n_basis``, ...);
- ``[data]``: :class:`qsmflow.nn.synthesis.SynthConfig` options (crop, voxel-size ranges,
  ``fixed_voxel`` for Mesa-QSM, sources, noise, ...);
- ``[train]``: the keys of :data:`TRAIN_DEFAULTS` (paper defaults: L1 loss, L2 0.01 on the
  (WP-)convolution weights, RMSprop lr 1e-4 decayed ×``lr_decay`` every 200 steps, 30,000 samples
  split 9:1 train/validation by ``data_seed``, batch size 4). ``dc_loss`` > 0 adds physics to
  the loss (issue 13 item 3; not in the papers): ``dc_loss`` × the masked L1 misfit (ppm) between
  the dipole field of the predicted χ (:func:`qsmflow.nn.synthesis.forward_field_torch`, the
  batch's voxel size, B0 along axis 2) and the input field.

L2 note: Keras' ``l2(0.01)`` adds 0.01·Σw² per layer; here the penalty is 0.01 × the *mean* w²
over the regularised weights, so its strength does not grow with the channel width.

Outputs in ``--out``: ``checkpoint.pt`` (model + optimiser + step, for ``--resume``),
``model.pt`` (plain state dict of tensors: the shippable weights), ``model.json`` (config, steps,
hardware, validation metrics), ``validation.csv`` and ``validation.png``.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from .. import metrics
from .._compat import tomllib
from .layers import GatedConv3d, PlainConv3d, WPConv3d
from .models import build_model, count_parameters, run_model
from .synthesis import SynthConfig, Synthesizer, draw_voxel_size, sample_seed, split_indices

TRAIN_DEFAULTS = {
    "steps": 100_000,
    "batch_size": 4,
    "lr": 1e-4,
    "lr_decay": 0.98,
    "decay_steps": 200,
    "l2": 0.01,
    "n_samples": 30_000,
    "val_fraction": 0.1,
    "n_val": 8,
    "val_every": 1000,
    "checkpoint_every": 500,
    "data_seed": 0,
    "seed": 0,
    "device": "auto",
    "amp": True,
    "num_threads": 0,
    "max_time_s": 0,
    "init": "",
    "prefetch": 2,
    "cpu_amp": False,
    "dc_loss": 0.0,
    "dc_step": 0.0,
}


def load_config(path) -> dict:
    """Read a TOML training config and fill defaults; ``ValueError`` on unknown keys.

    Parameters
    ----------
    path : str or Path
        TOML file (e.g. ``qsmflow/nn/configs/<name>.toml``).

    Returns
    -------
    dict
        The config, as from :func:`normalise_config`.

    Raises
    ------
    ValueError
        If the file does not exist, is not valid TOML, or fails :func:`normalise_config`.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"config file {path} does not exist: pass --config qsmflow/nn/configs/<name>.toml")
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    return normalise_config(cfg)


def normalise_config(cfg: dict) -> dict:
    """Validate a config dict (tables model/data/train) and fill the training defaults.

    Parameters
    ----------
    cfg : dict
        Tables ``model`` (with ``kind``), ``data``, ``train`` and optional ``name``,
        ``description``; not modified.

    Returns
    -------
    dict
        A deep copy with ``train`` filled from :data:`TRAIN_DEFAULTS` and ``data`` present.

    Raises
    ------
    ValueError
        On an unknown table, a ``[model]`` without ``kind``, an unknown ``[train]`` key or an
        invalid ``[data]`` table (:meth:`~qsmflow.nn.synthesis.SynthConfig.from_dict`).
    """
    cfg = copy.deepcopy(cfg)
    bad = sorted(set(cfg) - {"model", "data", "train", "name", "description"})
    if bad:
        raise ValueError(f"unknown config table(s) {bad}: use [model], [data], [train]")
    if "kind" not in cfg.get("model", {}):
        raise ValueError("config [model] needs kind = 'metaqsm' | 'mesaqsm' | 'qsminvnet'")
    tr = dict(TRAIN_DEFAULTS)
    unknown = sorted(set(cfg.get("train", {})) - set(tr))
    if unknown:
        raise ValueError(f"unknown [train] option(s) {unknown}: valid are {sorted(tr)}")
    tr.update(cfg.get("train", {}))
    cfg["train"] = tr
    SynthConfig.from_dict(cfg.get("data", {}))  # validate
    cfg.setdefault("data", {})
    return cfg


def pick_device(name: str = "auto") -> torch.device:
    """"auto" → CUDA when available, else CPU.

    Parameters
    ----------
    name : str, default "auto"
        "auto" or a torch device string ("cpu", "cuda", "cuda:1", ...).

    Returns
    -------
    torch.device
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _regularised_weights(model):
    for m in model.modules():
        if isinstance(m, WPConv3d):
            yield m.basis
            for lin in m.hyper:
                if isinstance(lin, torch.nn.Linear):
                    yield lin.weight
        elif isinstance(m, PlainConv3d):
            yield m.weight
        elif isinstance(m, GatedConv3d):
            yield m.conv.weight


def l2_penalty(model) -> torch.Tensor:
    """Mean of w² over the (WP-)convolution weights (see module docstring).

    The weights are the WP-Conv basis kernels and hypernetwork ``Linear`` weights, and the
    weights of the plain and gated convolutions; biases, batch norms and the other layers are
    not regularised.

    Parameters
    ----------
    model : torch.nn.Module
        A model of :mod:`qsmflow.nn.models`.

    Returns
    -------
    torch.Tensor
        0-dim float32 tensor (a CPU zero when there are no such weights).
    """
    ws = list(_regularised_weights(model))
    if not ws:
        return torch.zeros(())
    tot = sum((w.float() ** 2).sum() for w in ws)
    return tot / sum(w.numel() for w in ws)


def validation_set(synth: Synthesizer, cfg: dict) -> list[dict]:
    """The fixed validation samples (first ``n_val`` of the validation split, batch size 1).

    Parameters
    ----------
    synth : Synthesizer
        Generator of the samples.
    cfg : dict
        Normalised config (:func:`normalise_config`); uses ``train.n_samples``,
        ``val_fraction``, ``data_seed`` and ``n_val``.

    Returns
    -------
    list of dict
        Samples as from :meth:`Synthesizer.sample`, tensors (1, 1, X, Y, Z).
    """
    tr = cfg["train"]
    _, val_idx = split_indices(int(tr["n_samples"]), float(tr["val_fraction"]), int(tr["data_seed"]))
    out = []
    for i in val_idx[: int(tr["n_val"])]:
        s = synth.sample(sample_seed(tr["data_seed"], int(i)))
        out.append({k: (v[None] if torch.is_tensor(v) else v) for k, v in s.items()})
    return out


@torch.no_grad()
def evaluate(model, val: list[dict], device) -> dict:
    """Mean L1 (ppm), RMSE (%), HFEN (%), SSIM over the validation samples.

    Runs without gradients in eval mode and leaves ``model`` in training mode.

    Parameters
    ----------
    model : torch.nn.Module
        The model, on ``device``.
    val : list of dict
        Samples from :func:`validation_set` (non-empty).
    device : torch.device or str
        Device the inputs are moved to.

    Returns
    -------
    dict
        ``l1`` (ppm, inside the mask), ``rmse`` (%), ``hfen`` (%), ``ssim``: floats, means over ``val``.
    """
    model.eval()
    rows = []
    for s in val:
        pred = run_model(model, s["field"].to(device), s["mask"].to(device), s["voxel_size"])
        p = pred[0, 0].float().cpu().numpy()
        y = s["chi"][0, 0].numpy()
        m = s["mask"][0, 0].numpy() > 0
        rows.append({"l1": float(np.abs(p - y)[m].mean()), "rmse": metrics.rmse_percent(p, y, m),
                     "hfen": metrics.hfen(p, y, m), "ssim": metrics.ssim(p, y, m)})
    model.train()
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def _plot(csv_path: Path, png_path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(csv_path)))
    if not rows:
        return
    step = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(step, [float(r["train_l1"]) for r in rows], label="train L1", marker=".")
    ax[0].plot(step, [float(r["val_l1"]) for r in rows], label="val L1", marker=".")
    ax[0].set_xlabel("step"), ax[0].set_ylabel("L1 (ppm)"), ax[0].legend()
    ax[1].plot(step, [float(r["val_rmse"]) for r in rows], label="val RMSE %", marker=".")
    ax[1].plot(step, [float(r["val_hfen"]) for r in rows], label="val HFEN %", marker=".")
    ax[1].set_xlabel("step"), ax[1].legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)


def _hardware(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} thread(s))"


def train(cfg: dict, out, resume: bool = False, progress: bool = True, max_steps: int | None = None) -> dict:
    """Train per ``cfg`` (a :func:`normalise_config` dict) into folder ``out``; returns the
    summary written to ``out/model.json``. ``max_steps`` stops early (tests).

    Writes ``checkpoint.pt``, ``model.pt``, ``model.json``, ``validation.csv`` and
    ``validation.png`` into ``out`` (module docstring). Training also stops after
    ``train.max_time_s`` seconds when that is > 0.

    Parameters
    ----------
    cfg : dict
        Training config (normalised again here).
    out : str or Path
        Output folder (created).
    resume : bool, default False
        Continue from ``out/checkpoint.pt`` (model, optimiser, scheduler, step).
    progress : bool, default True
        Show a tqdm progress bar.
    max_steps : int, optional
        Run at most this many steps from the current one (capped at ``train.steps``).

    Returns
    -------
    dict
        The summary: ``name``, ``config``, ``steps``, ``samples_seen``, ``parameters``,
        ``hardware``, ``wall_s`` (s), ``torch``, ``data_seed`` and ``validation`` (``n`` and the
        metrics of :func:`evaluate`).

    Raises
    ------
    ValueError
        If the config is invalid, ``resume`` is given without a checkpoint, or ``train.init`` is not
        a file or not a plain state dict of tensors.
    """
    from tqdm import tqdm

    cfg = normalise_config(cfg)
    tr = cfg["train"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if int(tr["num_threads"]) > 0:
        torch.set_num_threads(int(tr["num_threads"]))
    device = pick_device(tr["device"])
    torch.manual_seed(int(tr["seed"]))
    model = build_model(**cfg["model"]).to(device)
    opt = torch.optim.RMSprop(model.parameters(), lr=float(tr["lr"]))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: float(tr["lr_decay"]) ** (s // int(tr["decay_steps"])))
    step, wall0 = 0, 0.0
    ckpt = out / "checkpoint.pt"
    csv_path = out / "validation.csv"
    if resume:
        if not ckpt.exists():
            raise ValueError(f"--resume given but {ckpt} does not exist: drop --resume to start fresh")
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, wall0 = int(state["step"]), float(state["wall_s"])
    else:
        if csv_path.exists():
            csv_path.unlink()
        if tr["init"]:  # fine-tuning: start from a plain state dict (shipped or a run's model.pt)
            from .inference import load_state_dict

            if not Path(tr["init"]).is_file():
                raise ValueError(f"[train] init = {tr['init']!r} does not exist: give a weights "
                                 "file (e.g. qsmflow/nn/weights/metaqsm.pt) or leave init empty")
            model.load_state_dict(load_state_dict(tr["init"]))
    synth = Synthesizer(cfg["data"], device=device, seed=int(tr["data_seed"]))
    train_idx, _ = split_indices(int(tr["n_samples"]), float(tr["val_fraction"]), int(tr["data_seed"]))
    val = validation_set(synth, cfg)
    use_amp = bool(tr["amp"]) and (device.type == "cuda" or bool(tr["cpu_amp"]))
    l2 = float(tr["l2"])
    total = int(tr["steps"]) if max_steps is None else min(int(tr["steps"]), step + int(max_steps))
    t0 = time.time() - wall0
    running, last_val = [], {}
    model.train()

    def save_checkpoint():
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "step": step, "wall_s": time.time() - t0}, tmp)
        os.replace(tmp, ckpt)

    bar = tqdm(total=total, initial=step, disable=not progress, dynamic_ncols=True)
    batches = _prefetch(_batches(synth, tr, train_idx, step, total), int(tr["prefetch"]))
    for b in batches:
        running.append(train_step(model, opt, b, l2=l2, amp=use_amp, dc=float(tr["dc_loss"]),
                                  dc_step=float(tr["dc_step"])))
        sched.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(running[-50:]):.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        out_of_time = float(tr["max_time_s"]) > 0 and time.time() - t0 > float(tr["max_time_s"])
        if out_of_time:
            total = step
            batches.close()
        if step % int(tr["val_every"]) == 0 or step == total:
            last_val = evaluate(model, val, device)
            new = not csv_path.exists()
            with open(csv_path, "a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["step", "lr", "train_l1", "val_l1", "val_rmse", "val_hfen", "val_ssim", "wall_s"])
                w.writerow([step, f"{sched.get_last_lr()[0]:.4g}", f"{np.mean(running[-200:]):.5f}",
                            f"{last_val['l1']:.5f}", f"{last_val['rmse']:.3f}", f"{last_val['hfen']:.3f}",
                            f"{last_val['ssim']:.4f}", f"{time.time() - t0:.0f}"])
            _plot(csv_path, out / "validation.png")
            _write_summary(out, cfg, model, step, device, t0, val, last_val)
        if step % int(tr["checkpoint_every"]) == 0 or step == total:
            save_checkpoint()
            _export_weights(model, out / "model.pt")
        if step >= total:
            break
    batches.close()
    bar.close()
    return _write_summary(out, cfg, model, step, device, t0, val, last_val)


def train_step(model, opt, batch: dict, *, l2: float = 0.0, amp: bool = False,
               dc: float = 0.0, dc_step: float = 0.0) -> float:
    """One optimiser step on ``batch``: L1 loss of the masked χ, plus ``dc`` × the masked L1
    misfit of its dipole field to the input field, plus ``dc_step`` × the L1 loss of χ after
    :func:`consistency_blend`, plus ``l2`` × :func:`l2_penalty`.

    Parameters
    ----------
    model : torch.nn.Module
        A model of :mod:`qsmflow.nn.models`, in training mode.
    opt : torch.optim.Optimizer
        Its optimiser.
    batch : dict
        ``field``, ``chi`` (ppm) and ``mask`` tensors (N, 1, X, Y, Z) on the model's device and
        ``voxel_size`` (mm), as from :meth:`~qsmflow.nn.synthesis.Synthesizer.batch`.
    l2 : float, default 0
        Weight of the L2 penalty (0: none).
    amp : bool, default False
        bfloat16 autocast of the forward pass (on the field's device type).
    dc : float, default 0
        Weight of the data-consistency term (unitless; 0: none), :func:`dipole_misfit`.
    dc_step : float, default 0
        Weight of the L1 loss after the consistency blend (unitless; 0: none); needs the
        batch's ``noise_ppm``.

    Returns
    -------
    float
        The L1 data loss (ppm) of this step, before the update.
    """
    with torch.autocast(batch["field"].device.type, dtype=torch.bfloat16, enabled=amp):
        pred = run_model(model, batch["field"], batch["mask"], batch["voxel_size"])
    pred = pred.float()
    loss_fit = torch.nn.functional.l1_loss(pred, batch["chi"] * batch["mask"])
    loss = loss_fit + l2 * l2_penalty(model) if l2 > 0 else loss_fit
    if dc > 0:
        loss = loss + dc * dipole_misfit(pred, batch["field"], batch["mask"], batch["voxel_size"])
    if dc_step > 0:
        blended = consistency_blend(pred, batch["field"], batch["mask"], batch["voxel_size"],
                                    batch["noise_ppm"])
        loss = loss + dc_step * torch.nn.functional.l1_loss(blended, batch["chi"] * batch["mask"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss_fit.item()


def consistency_blend(chi, field, mask, voxel_size, noise_ppm) -> torch.Tensor:
    """The closed-form data-consistency blend of the pipeline, differentiable, per sample:
    χ = F⁻¹[(D·F(M·f) + λ·F(χ₀)) / (D² + λ)]·M with λ = max((σ / (e·RMS_M χ₀))², λ_min).

    e and λ_min are :data:`qsmflow.inversion.consistency.PRIOR_ERROR` and ``LAM_MIN``; σ is the
    sample's known field noise (the pipeline estimates it); λ is not differentiated. Zero padding
    0.5 × size, B0 along array axis 2. The pipeline's step adds masked CG iterations on top.

    Parameters
    ----------
    chi, field, mask : torch.Tensor, shape (N, 1, X, Y, Z)
        Prior χ₀ (ppm, the network's output), local field (ppm), mask (0/1).
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis, shared by the batch.
    noise_ppm : torch.Tensor, shape (N,)
        Field noise s.d. σ (ppm) of each sample.

    Returns
    -------
    torch.Tensor, shape (N, 1, X, Y, Z)
        Blended χ (ppm), 0 outside ``mask``.
    """
    from ..inversion.consistency import LAM_MIN, PRIOR_ERROR
    from .. import physics
    from .synthesis import dipole_kernel_torch

    shape = chi.shape[-3:]
    pshape = physics.padded_shape(shape, [int(math.ceil(0.5 * s)) for s in shape])
    d = dipole_kernel_torch(pshape, voxel_size, device=chi.device, dtype=chi.dtype, half=True)
    with torch.no_grad():
        n_in = mask.sum(dim=(1, 2, 3, 4)).clamp(min=1)
        rms = torch.sqrt(((chi * mask) ** 2).sum(dim=(1, 2, 3, 4)) / n_in).clamp(min=1e-6)
        lam = torch.clamp((noise_ppm.to(chi.dtype) / (PRIOR_ERROR * rms)) ** 2, min=LAM_MIN)
        lam = lam.view(-1, 1, 1, 1, 1)
    dims = (-3, -2, -1)
    num = d * torch.fft.rfftn(field * mask, s=pshape, dim=dims) + lam * torch.fft.rfftn(
        chi, s=pshape, dim=dims)
    out = torch.fft.irfftn(num / (d * d + lam), s=pshape, dim=dims)
    return out[..., : shape[0], : shape[1], : shape[2]] * mask


def dipole_misfit(chi, field, mask, voxel_size) -> torch.Tensor:
    """Mean |M·(D∗χ − f)| (ppm): how far the dipole field of ``chi`` is from ``field`` in ``mask``.

    The field of ``chi`` (B0 along array axis 2, as the networks see it) is computed with
    :func:`qsmflow.nn.synthesis.forward_field_torch` (zero padding 0.5 × size); differentiable.

    Parameters
    ----------
    chi, field, mask : torch.Tensor, shape (N, 1, X, Y, Z)
        Predicted χ (ppm), input local field (ppm) and mask (0/1).
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis, shared by the batch.

    Returns
    -------
    torch.Tensor
        Scalar misfit (ppm), averaged over every voxel of the batch (as the L1 loss of χ).
    """
    from .synthesis import forward_field_torch

    return torch.mean(torch.abs((forward_field_torch(chi, voxel_size, pad_fraction=0.5) - field)
                                * mask))


def _batches(synth, tr: dict, train_idx, start: int, total: int):
    """The training batches of steps ``start`` … ``total − 1`` in order; each is a function of
    ``train.seed``, ``train.data_seed`` and its step only (so prefetching changes nothing)."""
    for step in range(start, total):
        rng = np.random.default_rng([int(tr["seed"]), step])
        idx = rng.choice(train_idx, size=int(tr["batch_size"]), replace=False)
        seeds = [sample_seed(tr["data_seed"], int(i)) for i in idx]
        vs = draw_voxel_size(torch.Generator().manual_seed(int(seeds[0]) ^ step), synth.cfg)
        yield synth.batch(seeds, voxel_size=vs)


class _prefetch:
    """Iterate over ``items`` with up to ``n`` of them made ahead in a background thread (the
    synthesis of the next batches overlaps the network step: torch releases the GIL). ``n = 0``:
    no thread. :meth:`close` stops the thread; an exception in it is raised in the caller."""

    _END = object()

    def __init__(self, items, n: int):
        import queue
        import threading

        self._items, self._n = iter(items), int(n)
        if self._n > 0:
            self._queue = queue.Queue(maxsize=self._n)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._fill, daemon=True)
            self._thread.start()

    def _put(self, item) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self):
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer
            self._put(exc)

    def __iter__(self):
        return self

    def __next__(self):
        if self._n <= 0:
            return next(self._items)
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        if self._n > 0 and not self._stop.is_set():
            self._stop.set()
            self._thread.join()


def _write_summary(out, cfg, model, step, device, t0, val, last_val) -> dict:
    tr = cfg["train"]
    summary = {
        "name": cfg.get("name", out.name), "config": cfg, "steps": step,
        "samples_seen": step * int(tr["batch_size"]), "parameters": count_parameters(model),
        "hardware": _hardware(device), "wall_s": round(time.time() - t0, 1),
        "torch": torch.__version__, "data_seed": int(tr["data_seed"]),
        "validation": {"n": len(val), **{k: round(v, 5) for k, v in last_val.items()}},
    }
    tmp = out / "model.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "model.json")
    return summary


def _export_weights(model, path: Path):
    """Save the model's state dict (tensors only) atomically."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = Path(path).with_suffix(".tmp")
    torch.save(sd, tmp)
    os.replace(tmp, path)


MODEL_CARD = """# {name}

**{headline}**

| | |
|---|---|
| model | `{kind}` ({arch}), {params:,} parameters, {size_kb:.0f} kB |
| voxel size | {voxel} |
| training | {steps} steps × batch {batch} = {samples} synthetic samples, {wall_h:.2f} h on {hardware} |
| optimiser | RMSprop lr {lr:g}, ×{decay:g} every {decay_steps} steps, L1 loss, L2 {l2:g} |
| data | crop {crop}, sources {sources}, data seed {data_seed}, {n_samples} samples split 9:1 |
| validation ({nval} held-out crops) | L1 {l1:.4f} ppm, RMSE {rmse:.1f} %, HFEN {hfen:.1f} %, SSIM {ssim:.3f} |
| torch | {torch} |

{note}

Retrain: `qsmflow train --config qsmflow/nn/configs/{full_config} --out runs/{name}` (full,
paper-size model; a GPU is recommended) or `--config qsmflow/nn/configs/{config_file}` for this
reduced configuration. Inputs: local field in ppm, B0 along array axis 2, brain mask.
Files: `{name}.pt` (plain state dict of tensors, loaded with `torch.load(weights_only=True)`),
`{name}.json` (the full config and training summary).
"""


def export_model(run_dir, weights_dir, name: str, config_file: str = "", full_config: str = "",
                 note: str = "") -> Path:
    """Copy ``run_dir/model.pt`` + summary to ``weights_dir/<name>.pt|.json`` and write the
    model card ``<name>.md``. Returns the ``.pt`` path.

    Parameters
    ----------
    run_dir : str or Path
        Training output folder (:func:`train`), with ``model.pt`` and ``model.json``.
    weights_dir : str or Path
        Destination folder (created).
    name : str
        Model name, also written into the summary.
    config_file : str, default ""
        Config file (in ``qsmflow/nn/configs``) of this run, named in the card.
    full_config : str, default ""
        Config of the full, paper-size model named in the card (default ``config_file``).
    note : str, default ""
        Card text: its first line is the headline, the rest the body.

    Returns
    -------
    Path
        ``weights_dir/<name>.pt``.
    """
    run_dir, weights_dir = Path(run_dir), Path(weights_dir)
    summary = json.loads((run_dir / "model.json").read_text())
    weights_dir.mkdir(parents=True, exist_ok=True)
    sd = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    pt = weights_dir / f"{name}.pt"
    torch.save(sd, pt)
    summary["name"] = name
    (weights_dir / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    cfg, tr, data = summary["config"], summary["config"]["train"], summary["config"]["data"]
    arch = ", ".join(f"{k}={v}" for k, v in cfg["model"].items() if k != "kind")
    val = summary.get("validation", {})
    fixed = data.get("fixed_voxel")
    voxel = (f"{' × '.join(f'{v:g}' for v in fixed)} mm (fixed)" if fixed else
             "any: trained on (0.5–1.0, 0.5–1.0, 2.0–4.0) mm and near-isotropic 1 mm")
    if cfg["model"]["kind"] == "qsminvnet" and not fixed:
        voxel += " (voxel size is not an input of QSMInvNet)"
    text = MODEL_CARD.format(
        name=name, headline=note.splitlines()[0] if note else "", kind=cfg["model"]["kind"], arch=arch,
        params=summary["parameters"], size_kb=pt.stat().st_size / 1024, voxel=voxel,
        steps=summary["steps"], batch=tr["batch_size"], samples=summary["samples_seen"],
        wall_h=summary["wall_s"] / 3600, hardware=summary["hardware"], lr=tr["lr"],
        decay=tr["lr_decay"], decay_steps=tr["decay_steps"], l2=tr["l2"],
        crop=data.get("crop", SynthConfig.crop), sources=data.get("sources", SynthConfig.sources),
        data_seed=tr["data_seed"], n_samples=tr["n_samples"], nval=val.get("n", 0),
        l1=val.get("l1", math.nan), rmse=val.get("rmse", math.nan), hfen=val.get("hfen", math.nan),
        ssim=val.get("ssim", math.nan), torch=summary["torch"],
        note="\n".join(note.splitlines()[1:]).strip(), full_config=full_config or config_file,
        config_file=config_file)
    (weights_dir / f"{name}.md").write_text(text)
    return pt

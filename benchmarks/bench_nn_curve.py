"""Is the shipped Meta-QSM under-trained, too small, or over-fitted? (issue 13, item 1)

Two measurements on the shipped weights (`qsmflow/nn/weights/metaqsm.pt`, the reduced CPU
training) with their own training configuration (`metaqsm_cpu.toml`), on crops the synthesiser
makes exactly as in training:

1. the error on crops of the *training* split against crops of the *validation* split
   (a large gap = over-fitting; none = the model fits what it saw no better than new data);
2. the learning curve when training simply goes on from the shipped weights (RMSprop, the
   config's loss, synthesis in a background thread, 1 torch thread): if the validation error
   still falls steeply, the model is under-trained, if it is flat, it is too small or the
   data are the limit.

    python benchmarks/run.py --only nn_curve       # ≈ 10 min on 2 cores
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

N_EVAL = 12                 # crops per split
STEPS, EVERY = 1200, 300    # continued training steps, evaluation interval
LR = 1e-4


def _crops(synth, idx, data_seed):
    from qsmflow.nn.synthesis import sample_seed

    out = []
    for i in idx:
        s = synth.sample(sample_seed(data_seed, int(i)))
        out.append({k: (v[None] if hasattr(v, "shape") else v) for k, v in s.items()})
    return out


def shipped_setup():
    """The shipped Meta-QSM and its training data, 1 torch thread: ``(train config, model,
    synthesiser, training indices, validation indices)``."""
    import torch

    from qsmflow.nn.inference import load_state_dict
    from qsmflow.nn.models import build_model
    from qsmflow.nn.synthesis import Synthesizer, split_indices
    from qsmflow.nn.training import load_config

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "qsmflow/nn/configs/metaqsm_cpu.toml")
    tr = dict(cfg["train"])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(**cfg["model"])
    model.load_state_dict(load_state_dict(root / "qsmflow/nn/weights/metaqsm.pt"))
    synth = Synthesizer(cfg["data"], seed=int(tr["data_seed"]))
    train_idx, val_idx = split_indices(int(tr["n_samples"]), float(tr["val_fraction"]),
                                       int(tr["data_seed"]))
    return tr, model, synth, train_idx, val_idx


def run(figdir: Path, quick: bool) -> str:
    import torch

    from _util import md_table
    from qsmflow.nn.training import _batches, _prefetch, evaluate, train_step

    n_eval, steps, every = (3, 20, 10) if quick else (N_EVAL, STEPS, EVERY)
    tr, model, synth, train_idx, val_idx = shipped_setup()
    rng = np.random.default_rng(7)
    on_train = _crops(synth, rng.choice(train_idx, n_eval, replace=False), tr["data_seed"])
    on_val = _crops(synth, val_idx[-n_eval:], tr["data_seed"])  # not the fixed n_val ones
    gap = [["training split", *_fmt(evaluate(model, on_train, "cpu"))],
           ["validation split", *_fmt(evaluate(model, on_val, "cpu"))]]

    opt = torch.optim.RMSprop(model.parameters(), lr=LR)
    tr["seed"] = 101  # steps the shipped runs did not draw
    curve = [[0, 0, *_fmt(evaluate(model, on_val, "cpu"))]]
    t0, step, running = time.perf_counter(), 0, []
    model.train()
    for b in _prefetch(_batches(synth, tr, train_idx, 0, steps), 2):
        running.append(train_step(model, opt, b, l2=float(tr["l2"])))
        step += 1
        if step % every == 0:
            curve.append([step, round(time.perf_counter() - t0), *_fmt(evaluate(model, on_val, "cpu"))])
    first, last = curve[0][3], curve[-1][3]
    per_k = (first - last) / (steps / 1000)
    text = ("## Meta-QSM: under-trained, too small or over-fitted?\n\n"
            f"The shipped weights with their training configuration (`metaqsm_cpu.toml`), "
            f"{n_eval} synthetic 64×64×32 crops per split, mean over crops (RMSE % inside the mask, "
            "the papers' definition):\n\n")
    text += md_table(["crops from", "L1 ppm", "RMSE %", "HFEN %", "SSIM"], gap)
    text += (f"\n\nTraining continued from the shipped weights ({steps} steps, batch "
             f"{tr['batch_size']}, RMSprop lr {LR:g}, fresh batches; validation crops as above):\n\n")
    text += md_table(["step", "wall s", "L1 ppm", "RMSE %", "HFEN %", "SSIM"], curve)
    text += (f"\n\nValidation RMSE {first:.1f} → {last:.1f} % over {steps} steps "
             f"({per_k:.1f} points per 1000 steps); mean training L1 of the last 100 steps "
             f"{np.mean(running[-100:]):.4f} ppm.\n")
    return text


def _fmt(ev: dict) -> list:
    return [round(ev["l1"], 4), round(ev["rmse"], 1), round(ev["hfen"], 1), round(ev["ssim"], 3)]

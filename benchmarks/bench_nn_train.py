"""Cost of one CPU training step of the shipped Meta-QSM configuration (issue 13, item 2).

Profiles ``qsmflow/nn/configs/metaqsm_cpu.toml`` (width 8, batch 2, crop 64×64×32) on this
machine's CPU: the synthesis of a batch against the network's forward + backward + optimiser
step, and what each knob of a CPU step buys — torch threads, the ``channels_last_3d`` memory
format, bfloat16 autocast (time and how far the loss moves), and the crop size (voxels per
second). Medians of ``REPEAT`` steps after ``WARMUP`` steps, one process, no forking (torch).

    python benchmarks/run.py --only nn_train
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

WARMUP, REPEAT = 2, 5
AMP_STEPS = 300
CROPS = ((48, 48, 32), (64, 64, 32), (96, 96, 48), (128, 128, 64))


def _step_fn(model, opt, batch, *, amp=False, channels_last=False):
    """One optimiser step of the training loop (:func:`qsmflow.nn.training.train_step`, L2 0.01
    as in the config), optionally on channels_last_3d inputs; → the L1 data loss."""
    import torch

    from qsmflow.nn.training import train_step

    if channels_last:
        batch = {**batch, **{k: batch[k].contiguous(memory_format=torch.channels_last_3d)
                             for k in ("field", "mask")}}
    return train_step(model, opt, batch, l2=0.01, amp=amp)


def _median_s(fn, n=REPEAT, warmup=WARMUP) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(figdir: Path, quick: bool) -> str:
    import copy

    import torch

    from _util import md_table
    from qsmflow.nn.models import build_model
    from qsmflow.nn.synthesis import Synthesizer
    from qsmflow.nn.training import load_config

    here = Path(__file__).resolve().parent.parent
    cfg = load_config(here / "qsmflow/nn/configs/metaqsm_cpu.toml")
    n, warm = (2, 1) if quick else (REPEAT, WARMUP)
    torch.manual_seed(0)
    synth = Synthesizer(cfg["data"], seed=0)
    bs = int(cfg["train"]["batch_size"])
    crop = tuple(cfg["data"]["crop"])
    seeds = iter(range(10_000))

    def new_batch(c=crop):
        return synth.batch([next(seeds) for _ in range(bs)], crop=c)

    t_synth = _median_s(new_batch, n, warm)
    batch = new_batch()
    base = build_model(**cfg["model"])

    def fresh():
        m = copy.deepcopy(base)
        return m, torch.optim.RMSprop(m.parameters(), lr=5e-4)

    rows, ref = [], None
    threads0 = torch.get_num_threads()
    compile_s = None
    for label, threads, amp, cl, comp in (
            ("fp32, 1 thread (shipped config)", 1, False, False, False),
            ("fp32, 2 threads", 2, False, False, False),
            ("fp32, 2 threads, channels_last_3d", 2, False, True, False),
            ("bf16 autocast, 2 threads", 2, True, False, False),
            ("fp32, 2 threads, torch.compile (inductor)", 2, False, False, True)):
        torch.set_num_threads(threads)
        model, opt = fresh()
        net = torch.compile(model) if comp else model
        t0 = time.perf_counter()
        _step_fn(net, opt, batch, amp=amp, channels_last=cl)  # compiles, for torch.compile
        if comp:
            compile_s = time.perf_counter() - t0
        t = _median_s(lambda m=net, o=opt, a=amp, c=cl: _step_fn(m, o, batch, amp=a, channels_last=c),
                      n, warm)
        # accuracy of the variant: the first-step loss of a fresh model on the same batch
        model, opt = fresh()
        loss = _step_fn(torch.compile(model) if comp else model, opt, batch, amp=amp,
                        channels_last=cl)
        ref = ref if ref is not None else (t, loss)
        rows.append([label, round(t, 3), f"{ref[0] / t:.2f}×", f"{loss:.5f}",
                     f"{100 * (loss - ref[1]) / ref[1]:+.2f} %"])
    torch.set_num_threads(2)
    model, opt = fresh()
    t_net2 = _median_s(lambda: _step_fn(model, opt, batch), n, warm)
    crop_rows = []
    for c in CROPS[:2] if quick else CROPS:
        b = new_batch(c)
        ts = _median_s(lambda c=c: synth.batch([next(seeds) for _ in range(bs)], crop=c), max(1, n // 2), 0)
        model, opt = fresh()
        tn = _median_s(lambda b=b, m=model, o=opt: _step_fn(m, o, b), n, warm)
        vox = bs * int(np.prod(c))
        crop_rows.append(["×".join(map(str, c)), round(ts, 3), round(tn, 3),
                          round(vox / (ts + tn) / 1e3, 1), round(3600 / (ts + tn))])
    # the whole loop of qsmflow.nn.training.train: synthesis then network, or synthesis of the
    # next batches in a background thread ([train] prefetch), 1 torch thread each
    from qsmflow.nn.synthesis import split_indices
    from qsmflow.nn.training import _batches, _prefetch

    tr = dict(cfg["train"])
    train_idx, _ = split_indices(int(tr["n_samples"]), float(tr["val_fraction"]), int(tr["data_seed"]))
    n_loop = 3 if quick else 12
    loop_rows = []
    for threads, prefetch, amp in ((1, 0, False), (2, 0, False), (1, 2, False), (2, 2, False),
                                   (1, 2, True)):
        torch.set_num_threads(threads)
        model, opt = fresh()
        batches = _prefetch(_batches(synth, tr, train_idx, 0, n_loop), prefetch)
        t0 = time.perf_counter()
        for b in batches:
            _step_fn(model, opt, b, amp=amp)
        dt = (time.perf_counter() - t0) / n_loop
        loop_rows.append([f"{threads} torch thread(s), " + ("synthesis in a background thread "
                          f"(prefetch = {prefetch})" if prefetch else "synthesis then network")
                          + (", bf16 autocast (`cpu_amp`)" if amp else ""),
                          round(dt, 3), round(3600 / dt)])
    # does bf16 train as well? the same 300 steps from one fresh model, fp32 and bf16
    from qsmflow.nn.training import evaluate, validation_set

    torch.set_num_threads(1)
    val = validation_set(synth, cfg)
    n_amp = 10 if quick else AMP_STEPS
    amp_rows = []
    for amp in (False, True):
        model, opt = fresh()
        t0 = time.perf_counter()
        losses = [_step_fn(model, opt, b, amp=amp)
                  for b in _prefetch(_batches(synth, tr, train_idx, 0, n_amp), 2)]
        dt = (time.perf_counter() - t0) / n_amp
        ev = evaluate(model, val, "cpu")
        amp_rows.append(["bf16 autocast" if amp else "fp32", round(dt, 3),
                         round(float(np.mean(losses[-50:])), 5), round(ev["rmse"], 1),
                         round(ev["ssim"], 3)])
    base_s = loop_rows[0][1]
    for r in loop_rows:
        r.append(f"{base_s / r[1]:.2f}×")
    torch.set_num_threads(threads0)
    share = t_synth / (t_synth + t_net2)
    text = ("## Meta-QSM training step on the CPU\n\n"
            "The shipped reduced configuration (`metaqsm_cpu.toml`: width 8, batch "
            f"{bs}, crop {'×'.join(map(str, crop))}), one process on this machine. Synthesis of "
            f"a batch (COSMOS base, deformation, shapes, resampling, dipole field): "
            f"**{t_synth:.2f} s**; network step with 2 threads: **{t_net2:.2f} s**, so synthesis is "
            f"{100 * share:.0f} % of a step when the two run one after the other. Medians of {n} "
            f"steps after {warm} warm-up steps.\n\n"
            "Network step only (forward + backward + RMSprop), same batch; *loss* is the first "
            "step's L1 data loss of a fresh model, so the last column is what a variant "
            "changes in the arithmetic:\n\n")
    text += md_table(["variant", "s / step", "speed vs shipped", "loss", "loss vs fp32"], rows)
    text += (f"\n\n`torch.compile`: the first step took {compile_s:.0f} s (compilation); WP-Conv's "
             "kernel cache breaks the graph and each layer shape recompiles (Dynamo's limit of 8 "
             "is reached), so the compiled step is timed as it runs in training.\n")
    text += (f"\n\nThe training loop ({n_loop} steps of `train`'s own batches, synthesis included; "
             "the background thread is `[train] prefetch`, default 2, and gives the same weights "
             "bit for bit, `tests/test_nn.py`):\n\n")
    text += md_table(["loop", "s / step", "steps / h", "speed vs shipped"], loop_rows)
    text += (f"\n\nbf16 against fp32 in training: {n_amp} steps from the same fresh model and "
             "batches (1 torch thread, background synthesis); training loss = mean of the last "
             f"50 steps, validation on the config's {len(val)} fixed validation crops:\n\n")
    text += md_table(["arithmetic", "s / step", "training loss", "val RMSE %", "val SSIM"], amp_rows)
    text += ("\n\nCrop size (2 threads, synthesis and network step one after the other; "
             "k voxels / s = training voxels per second of wall time):\n\n")
    text += md_table(["crop", "synthesis s", "network s", "k voxels / s", "steps / h"], crop_rows)
    return text + "\n"

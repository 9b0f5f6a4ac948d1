"""Capacity at equal CPU time: Meta-QSM of width 8 (the shipped size) against width 16, each
trained from scratch for the same wall-clock budget on this machine (issue 13, item 1).

Both use the shipped reduced configuration (`metaqsm_cpu.toml`: crop 64×64×32, batch 2, the
same batches in the same order, 1 torch thread + background synthesis) and differ only in
`[model] width`. Scored on the same 12 crops of the validation split as `bench_nn_curve`.

    QSMFLOW_BENCH_CAPACITY_S=1200 python benchmarks/run.py --only nn_capacity   # 2 × 20 min
"""

from __future__ import annotations

import copy
import csv
import os
import tempfile
from pathlib import Path

WIDTHS = (8, 16)


def run(figdir: Path, quick: bool) -> str:
    import torch

    from _util import md_table
    from bench_nn_curve import N_EVAL, _crops, _fmt
    from qsmflow.nn.inference import load_state_dict
    from qsmflow.nn.models import build_model, count_parameters
    from qsmflow.nn.synthesis import Synthesizer, split_indices
    from qsmflow.nn.training import evaluate, load_config, train

    root = Path(__file__).resolve().parent.parent
    base = load_config(root / "qsmflow/nn/configs/metaqsm_cpu.toml")
    budget = 20.0 if quick else float(os.environ.get("QSMFLOW_BENCH_CAPACITY_S", 1200))
    tr = base["train"]
    synth = Synthesizer(base["data"], seed=int(tr["data_seed"]))
    _, val_idx = split_indices(int(tr["n_samples"]), float(tr["val_fraction"]), int(tr["data_seed"]))
    crops = _crops(synth, val_idx[-(3 if quick else N_EVAL):], tr["data_seed"])
    rows, curves = [], {}
    for width in WIDTHS:
        cfg = copy.deepcopy(base)
        cfg["model"]["width"] = width
        cfg["train"].update(max_time_s=budget, steps=10**6, val_every=500, checkpoint_every=10**6,
                            num_threads=1, prefetch=2, lr=5e-4, init="")
        with tempfile.TemporaryDirectory() as tmp:
            summary = train(cfg, tmp, progress=False)
            model = build_model(**cfg["model"])
            model.load_state_dict(load_state_dict(Path(tmp) / "model.pt"))
            curves[width] = [(int(r["step"]), float(r["val_rmse"]))
                             for r in csv.DictReader(open(Path(tmp) / "validation.csv"))]
        torch.set_num_threads(1)
        ev = evaluate(model, crops, "cpu")
        rows.append([width, count_parameters(model), summary["steps"], round(summary["wall_s"]),
                     *_fmt(ev)])
    text = ("## Meta-QSM capacity at equal CPU time\n\n"
            f"Width 8 (shipped) and 16, each trained from scratch for {budget:.0f} s of wall time "
            "(`metaqsm_cpu.toml` otherwise, lr 5e-4, 1 torch thread + background synthesis), "
            f"scored on {len(crops)} crops of the validation split:\n\n")
    text += md_table(["width", "parameters", "steps", "wall s", "L1 ppm", "RMSE %", "HFEN %",
                      "SSIM"], rows)
    text += "\n\nValidation RMSE % on the config's 4 fixed crops during training (step: RMSE):\n\n"
    for width, c in curves.items():
        text += f"- width {width}: " + ", ".join(f"{s}: {r:.1f}" for s, r in c) + "\n"
    return text

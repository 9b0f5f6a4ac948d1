"""Networks: the papers' tables (a)–(d) and CPU inference time / memory for 256×256×64.

Volume count per table: ``QSMFLOW_BENCH_NN_N`` (default 20; ``--quick``: 1 volume of 64×64×32,
tables a–c); ``QSMFLOW_BENCH_NN_CONVENTIONAL`` (default "tkd ilsqr medi fansi") picks the
conventional methods. Conventional scores are cached in ``$QSMFLOW_BENCH_NN_CACHE`` (default ``<tmp>/qsmflow_nn_cache``;
they do not change when the networks are retrained; delete it after changing an inversion).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from _util import measure, md_table

HERE = Path(__file__).resolve().parent


def _inference_time(shape=(256, 256, 64)) -> str:
    from qsmflow.nn import inference
    from qsmflow.nn.evaluation import held_out_volume

    vol = held_out_volume(0, (0.75, 0.75, 3.0), shape, stream=9)
    rows = []
    for name, fn in (("metaqsm", inference.metaqsm), ("qsminvnet", inference.qsminvnet),
                     ("mesaqsm", inference.mesaqsm)):
        if name != "mesaqsm" and name not in inference.available_models():
            continue
        try:
            fn(vol["field"][:32, :32, :16], vol["mask"][:32, :32, :16], vol["voxel_size"])  # load once
        except ValueError:
            continue
        r = measure(fn, vol["field"], vol["mask"], vol["voxel_size"], device="cpu", repeat=2)
        rows.append([name, "×".join(map(str, shape)), f"{r['median_s']:.1f}", f"{r['peak_mb']:.0f}"])
    import torch

    return ("### CPU inference (target ≤ 30 s, ≤ 6 GB on 2 cores)\n\n"
            f"torch threads: {torch.get_num_threads()}; brain-mask bounding box is cropped before the "
            "network runs. Timed on the shared 2-core machine while other jobs ran.\n\n"
            + md_table(["model", "matrix", "median time (s)", "peak memory (MB)"], rows))


def run(figdir: Path, quick: bool) -> str:
    from qsmflow.nn.evaluation import bench_report

    n = 1 if quick else int(os.environ.get("QSMFLOW_BENCH_NN_N", "20"))
    shape = (64, 64, 32) if quick else (256, 256, 64)
    tables = ("a", "b", "c") if quick else tuple(os.environ.get("QSMFLOW_BENCH_NN_TABLES", "abcd"))
    cache = os.environ.get("QSMFLOW_BENCH_NN_CACHE", str(Path(tempfile.gettempdir()) / "qsmflow_nn_cache"))
    conv = tuple(os.environ.get("QSMFLOW_BENCH_NN_CONVENTIONAL", "tkd ilsqr medi fansi").split())
    md = bench_report(n, shape, tables, figdir, cache, conventional=conv)
    if not quick:
        md += "\n" + _inference_time()
    return md

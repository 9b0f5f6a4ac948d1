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

from _util import md_table

HERE = Path(__file__).resolve().parent


_CHILD = """
import resource, sys, time, numpy as np
from qsmflow.nn import inference
d = np.load(sys.argv[1]); fn = getattr(inference, sys.argv[2])
f, m, v = d["field"], d["mask"], tuple(d["voxel_size"])
fn(f, m, v, device="cpu")  # load + warm up
ts = []
for _ in range(2):
    t0 = time.perf_counter(); fn(f, m, v, device="cpu")
    ts.append(time.perf_counter() - t0)
print(min(ts), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
"""


def _inference_time(shape=(256, 256, 64)) -> str:
    """Time each network on one 256×256×64 volume in a fresh interpreter (no fork of torch)."""
    import subprocess
    import sys

    import numpy as np
    import torch

    from qsmflow.nn.evaluation import held_out_volume

    vol = held_out_volume(0, (0.75, 0.75, 3.0), shape, stream=9)
    tmp = Path(tempfile.mkdtemp()) / "vol.npz"
    np.savez(tmp, field=vol["field"].astype(np.float32), mask=vol["mask"], voxel_size=vol["voxel_size"])
    rows = []
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    for name in ("metaqsm", "qsminvnet", "mesaqsm"):
        r = subprocess.run([sys.executable, "-c", _CHILD, str(tmp), name], capture_output=True,
                           text=True, env=env, timeout=600)
        if r.returncode != 0:
            continue
        t, mb = (float(v) for v in r.stdout.split()[-2:])
        rows.append([name, "×".join(map(str, shape)), f"{t:.1f}", f"{mb:.0f}"])
    return ("### CPU inference (target ≤ 30 s, ≤ 6 GB on 2 cores)\n\n"
            f"torch threads: {torch.get_num_threads()}; fastest of 2 runs after a warm-up, in a fresh "
            "process; peak memory = the whole process' max RSS (Python + torch + data + model: "
            "an upper bound) (the brain-mask bounding box is cropped before the network runs). "
            "2-core machine, no other job running.\n\n"
            + md_table(["model", "matrix", "time (s)", "process peak RSS (MB)"], rows))


def run(figdir: Path, quick: bool) -> str:
    from qsmflow.nn.evaluation import bench_report

    n = 1 if quick else int(os.environ.get("QSMFLOW_BENCH_NN_N", "20"))
    shape = (64, 64, 32) if quick else (256, 256, 64)
    tables = ("a", "b", "c") if quick else tuple(os.environ.get("QSMFLOW_BENCH_NN_TABLES", "anbcd"))
    cache = os.environ.get("QSMFLOW_BENCH_NN_CACHE", str(Path(tempfile.gettempdir()) / "qsmflow_nn_cache"))
    conv = tuple(os.environ.get("QSMFLOW_BENCH_NN_CONVENTIONAL", "tkd ilsqr medi fansi").split())
    md = bench_report(n, shape, tables, figdir, cache, conventional=conv)
    if not quick:
        md += "\n" + _inference_time()
    return md

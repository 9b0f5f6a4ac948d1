"""``qsmflow bench-nn``: the papers' tables on held-out synthetic volumes.

    qsmflow bench-nn [--n 20] [--tables a n b c d] [--shape 256 256 64] [--out nn.md]
                     [--figdir DIR] [--cache DIR]

(a) TKD / iLSQR / MEDI / FANSI / Meta-QSM / QSMInvNet at random voxel sizes, field noise σ
uniform in 0–0.01 ppm as in training; (n) the same volumes with noise-free fields (the papers'
protocol); (b) Meta-QSM vs each Mesa-QSM model at that model's voxel size; (c) everything at
a voxel size no Mesa model was trained on; (d) the 2016 challenge local field against χ33.
Conventional methods are used when this build has them; scores of conventional methods can be
cached (``--cache``). Rows ``+dc``: the network followed by the data-consistency step
(``consistency="auto"``, not in the papers).
The Markdown ends with the issue's accuracy targets, measured on these tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="qsmflow bench-nn", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--n", type=int, default=20, help="volumes per table (default 20)")
    ap.add_argument("--tables", nargs="+", default=["a", "n", "b", "c", "d"], choices=["a", "n", "b", "c", "d"],
                    help="which tables (default: all): a, n (a without noise), b, c, d")
    ap.add_argument("--shape", nargs=3, type=int, default=[256, 256, 64], help="test matrix")
    ap.add_argument("--out", default=None, help="write the Markdown here (default: stdout)")
    ap.add_argument("--figdir", default=None, help="save example figures here")
    ap.add_argument("--cache", default=None, help="cache folder for conventional scores")
    ap.add_argument("--conventional", nargs="*", default=["tkd", "ilsqr", "medi", "fansi"])
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be >= 1")
    from qsmflow.nn.evaluation import bench_report

    md = bench_report(args.n, tuple(args.shape), tuple(args.tables), args.figdir, args.cache,
                      conventional=tuple(args.conventional))
    if args.out:
        Path(args.out).write_text(md)
        print(f"wrote {args.out}")
    else:
        print(md)
    return 0

"""Re-run the benchmarks and rewrite ``benchmarks/RESULTS.md``.

    python benchmarks/run.py            # every benchmarks/bench_*.py
    python benchmarks/run.py --only forward fieldmap   # just these; other sections kept
    python benchmarks/run.py --quick    # small sizes, for a smoke test

Each ``bench_<name>.py`` defines ``run(figdir: Path, quick: bool) -> str`` that returns a
Markdown section (tables + links to PNGs it saved in ``figdir``). Sections are cached in
``benchmarks/results/<name>.md`` so ``--only`` does not lose the others.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--only", nargs="*", default=None, help="benchmark names (bench_<name>.py)")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    resdir = HERE / "results"
    figdir = HERE / "figures"
    resdir.mkdir(exist_ok=True)
    figdir.mkdir(exist_ok=True)
    names = sorted(p.stem[6:] for p in HERE.glob("bench_*.py"))
    todo = names if not args.only else [n for n in names if n in args.only]
    for name in todo:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"bench_{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        print(f"[bench] {name} ...", flush=True)
        t0 = time.time()
        text = mod.run(figdir, args.quick)
        text += f"\n_{name}: {time.time() - t0:.0f} s to run, {time.strftime('%Y-%m-%d')}._\n"
        (resdir / f"{name}.md").write_text(text)
    head = (
        "# qsmflow benchmarks\n\n"
        f"Re-run with `python benchmarks/run.py` (one section: `--only NAME`). Machine: "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.\n"
        "Times are medians of repeats on this machine unless a section says otherwise.\n\n"
    )
    body = "\n".join((resdir / f"{n}.md").read_text() for n in names if (resdir / f"{n}.md").exists())
    (HERE / "RESULTS.md").write_text(head + body)
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

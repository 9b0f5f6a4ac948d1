"""``qsmflow train --config FILE [--out DIR] [--resume] [--steps N] [--export NAME]``.

Trains Meta-QSM, Mesa-QSM or QSMInvNet on data synthesised on the fly (see
``qsmflow/nn/configs/*.toml``: ``<name>.toml`` are the full paper-size models, ``<name>_cpu.toml``
the reduced ones the shipped weights come from). CUDA is used when present (mixed precision),
otherwise the CPU. ``--export NAME`` copies the result into the package's weights folder with a
model card.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qsmflow train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--config", required=True, help="TOML training config")
    ap.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    ap.add_argument("--steps", type=int, default=None, help="override [train] steps")
    ap.add_argument("--device", default=None, help="cpu | cuda | auto (default: config, auto)")
    ap.add_argument("--export", metavar="NAME", default=None,
                    help="after training, write qsmflow/nn/weights/NAME.pt|.json|.md")
    ap.add_argument("--export-only", action="store_true",
                    help="do not train; export OUT's current model.pt (with --export)")
    ap.add_argument("--note", default="", help="model-card note (first line = headline)")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from qsmflow.nn import training
    from qsmflow.nn.inference import WEIGHTS_DIR

    cfg = training.load_config(args.config)
    if args.steps is not None:
        cfg["train"]["steps"] = int(args.steps)
    if args.device:
        cfg["train"]["device"] = args.device
    out = Path(args.out or Path("runs") / cfg.get("name", Path(args.config).stem))
    if not args.export_only:
        summary = training.train(cfg, out, resume=args.resume, progress=not args.no_progress)
        print(f"trained {summary['steps']} steps in {summary['wall_s']:.0f} s on {summary['hardware']}; "
              f"validation: {summary['validation']}")
    if args.export:
        cfgname = Path(args.config).name
        pt = training.export_model(out, WEIGHTS_DIR, args.export, config_file=cfgname,
                                   full_config=cfgname.replace("_cpu", ""), note=args.note)
        print(f"exported {pt}")
    return 0

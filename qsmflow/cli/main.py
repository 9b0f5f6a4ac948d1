"""``qsmflow`` entry point: the BIDS App plus sub-commands.

    qsmflow BIDS_DIR OUTPUT_DIR participant [options]   # the BIDS App (qsmflow.cli.run)
    qsmflow demo OUTDIR                                  # demo dataset + whole pipeline
    qsmflow dicom2bids DICOM_DIR BIDS_DIR --subject S    # scanner DICOMs -> BIDS raw
    qsmflow train --config FILE                          # train a network
    qsmflow bench-nn ...                                 # evaluate the networks
"""

from __future__ import annotations

import importlib
import sys

#: sub-command -> module with ``main(argv) -> int``
SUBCOMMANDS = {
    "demo": "qsmflow.cli.demo",
    "dicom2bids": "qsmflow.cli.dicom2bids",
    "train": "qsmflow.cli.train",
    "bench-nn": "qsmflow.cli.bench_nn",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # "qsmflow demo out participant" is the BIDS App on a dataset folder named "demo"
    is_app = len(argv) >= 3 and argv[2] == "participant"
    if argv and argv[0] in SUBCOMMANDS and not is_app:
        mod = importlib.import_module(SUBCOMMANDS[argv[0]])
        return int(mod.main(argv[1:]) or 0)
    if argv and argv[0] in ("-h", "--help") and len(argv) == 1:
        print(__doc__)
    mod = importlib.import_module("qsmflow.cli.run")
    return int(mod.main(argv) or 0)


if __name__ == "__main__":
    raise SystemExit(main())

"""Tiny BIDS datasets for tests of the app (headers matter, values do not): ``make_skeleton``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def _img(path: Path, shape, affine=None, dtype=np.float32, value=0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full(shape, value, dtype), np.eye(4) if affine is None else affine),
             path)


def make_skeleton(root, *, subjects=("01",), sessions=(None,), runs=(None,), echoes=(0.004, 0.008),
                  suffix="MEGRE", magnitude=True, shape=(6, 5, 4), four_d=False, meta=None,
                  drop=(), top_level_b0=False) -> Path:
    """Write a minimal BIDS dataset of GRE echoes; returns ``root``.

    ``echoes``: echo times (s) in *file* order (echo-1, echo-2, ...), so a test can make the
    file order differ from the TE order. ``four_d``: one file with all echoes (EchoTime list).
    ``drop``: sidecar keys to leave out (e.g. "EchoTime"). ``meta``: extra sidecar keys.
    ``top_level_b0``: MagneticFieldStrength in a top-level ``<suffix>.json`` (inheritance).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "skeleton", "BIDSVersion": "1.10.0", "Authors": ["test"]}))
    (root / "README").write_text("test dataset\n")
    base = {"MagneticFieldStrength": 3.0, "Manufacturer": "test", **(meta or {})}
    if top_level_b0:
        (root / f"{suffix}.json").write_text(json.dumps({"MagneticFieldStrength": 3.0}))
        base.pop("MagneticFieldStrength")
    (root / "participants.tsv").write_text("participant_id\n" +
                                           "".join(f"sub-{s}\n" for s in subjects))
    for sub in subjects:
        for ses in sessions:
            for run in runs:
                folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
                ents = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + (f"_run-{run}" if run else "")
                groups = ([(None, list(echoes))] if four_d or len(echoes) == 1 and suffix != "MEGRE"
                          else [(i + 1, [te]) for i, te in enumerate(echoes)])
                for echo, tes in groups:
                    parts = ("phase", "mag") if magnitude else ("phase",)
                    for part in parts:
                        name = ents + (f"_echo-{echo}" if echo else "") + f"_part-{part}_{suffix}"
                        shp = tuple(shape) + ((len(tes),) if len(tes) > 1 else ())
                        # magnitude 1 (an all-zero magnitude is refused up front), phase 0
                        _img(folder / f"{name}.nii.gz", shp, value=float(part == "mag"))
                        side = {**base, "EchoTime": tes if len(tes) > 1 else tes[0]}
                        if part == "phase":
                            side["Units"] = "rad"
                        for k in drop:
                            side.pop(k, None)
                        (folder / f"{name}.json").write_text(json.dumps(side))
    return root

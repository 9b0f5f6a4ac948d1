"""Regenerate ``zubal_head_labels.nii.gz`` from the 1 mm Zubal files (developer tool, not shipped
logic). The 1 mm files are a nearest-neighbour 1.5× upsampling of the original 1.5 mm Zubal head,
so sampling voxel floor(1.5·i + 0.75) recovers the original grid exactly. Each stored value is the
Zubal tissue code (0–125) plus 128 where the voxel lies in the Zubal brain mask; the array is
cropped to the head's bounding box (+2 voxels) and stored as uint8 with a RAS+ affine of the
original voxel size 1.1 x 1.1 x 1.4 mm.

    python qsmflow/sims/data/make_zubal_asset.py /path/to/shared/data/zubal-phantom
"""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

#: physical voxel size of the original Zubal head (Zubal et al., Med Phys 1994): 1.1 x 1.1 mm
#: in-plane, 1.4 mm slices (the "1.5 mm" in the 1 mm files' provenance note makes the brain
#: 25 cm long; with 1.1 mm the eyeballs measure 22-25 mm, as they should)
ZUBAL_VOXEL_MM = (1.1, 1.1, 1.4)


def main(src: str) -> None:
    src = Path(src)
    lab = np.asarray(nib.load(src / "zubal_phantom_1iso.nii.gz").dataobj).astype(np.uint8)
    brain = np.asarray(nib.load(src / "zubalPhantom_brainMask_1iso.nii.gz").dataobj) > 0
    idx = [np.floor(1.5 * np.arange(round(n / 1.5)) + 0.75).astype(int) for n in lab.shape]
    lab = lab[np.ix_(*idx)]
    brain = brain[np.ix_(*idx)]
    code = lab | (brain.astype(np.uint8) << 7)
    nz = np.argwhere(lab > 0)
    lo = np.maximum(nz.min(0) - 2, 0)
    hi = np.minimum(nz.max(0) + 3, lab.shape)
    code = code[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    aff = np.diag([*ZUBAL_VOXEL_MM, 1.0])
    aff[:3, 3] = -0.5 * np.array(ZUBAL_VOXEL_MM) * (np.array(code.shape) - 1)
    img = nib.Nifti1Image(code, aff)
    img.set_data_dtype(np.uint8)
    out = Path(__file__).with_name("zubal_head_labels.nii.gz")
    nib.save(img, out)
    print(out, code.shape, out.stat().st_size)


if __name__ == "__main__":
    main(sys.argv[1])

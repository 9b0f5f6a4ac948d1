"""Numerical head phantom for QSM: the Zubal segmented head plus procedural nuclei, veins, lesions.

The anatomy is the freely distributed Zubal head (Zubal et al., Med Phys 21:299, 1994; 1.1 × 1.1
× 1.4 mm, shipped as ``qsmflow/sims/data/zubal_head_labels.nii.gz``). Its 58 tissue classes are mapped
to the classes of :data:`LABEL_NAMES`; what it lacks is drawn procedurally in millimetres, with
partial-volume edges, at landmark positions taken from the anatomy (MNI-like offsets from the
thalami): red nucleus, substantia nigra, dentate nucleus, internal cerebral veins and straight
sinus, cortical and medullary veins, one calcification and one haemorrhage. Everything random
(lesion sites and shapes, vein paths, per-tissue χ, texture, a small global scaling/rotation of the
head) is drawn from ``seed``.

Units and references: χ in ppm relative to CSF (χ_CSF = 0); air is :data:`CHI_AIR` = +9.4 ppm
relative to tissue, bone −2 ppm. M0 in arbitrary units (CSF = 1), R2* in 1/s at 3 T.
The medium beyond the field of view is air: the total field is the field of χ − χ_air, so a FOV
that crops the head treats the cropped part as air (cover the head for a realistic background).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .. import physics

#: susceptibility of air relative to tissue/water (ppm)
CHI_AIR = 9.4
#: dipole kernel of the simulated fields (:func:`qsmflow.physics.dipole_kernel_hybrid`: the
#: point-dipole far field, so the background is harmonic in the brain for any B0 direction, and
#: the data are not made with the very kernel the inversions use)
FORWARD_KERNEL = "hybrid"

#: largest |χ| (ppm) of non-brain tissue a brain-mask voxel may carry by partial volume
NONBRAIN_CHI_MAX = 0.05

#: label value -> tissue name (the ``dseg`` of the phantom)
LABEL_NAMES: dict[int, str] = {
    0: "background_air", 1: "csf", 2: "grey_matter", 3: "white_matter", 4: "caudate",
    5: "putamen", 6: "globus_pallidus", 7: "thalamus", 8: "red_nucleus",
    9: "substantia_nigra", 10: "dentate_nucleus", 11: "brainstem", 12: "vein",
    13: "calcification", 14: "haemorrhage", 15: "bone", 16: "air_sinus", 17: "soft_tissue",
    18: "fat", 19: "extracranial_blood", 20: "muscle", 21: "spinal_cord",
}
_L = {v: k for k, v in LABEL_NAMES.items()}

#: per tissue: χ (ppm, rel. CSF), relative χ jitter between seeds, M0 (a.u.), R2* (1/s, 3 T)
TISSUE_PROPERTIES: dict[str, tuple[float, float, float, float]] = {
    "background_air": (CHI_AIR, 0.0, 0.0, 0.0),
    "csf": (0.0, 0.0, 1.0, 2.0),
    "grey_matter": (0.03, 0.3, 0.85, 16.0),
    "white_matter": (-0.03, 0.2, 0.7, 21.0),
    "caudate": (0.07, 0.15, 0.85, 24.0),
    "putamen": (0.09, 0.15, 0.85, 28.0),
    "globus_pallidus": (0.19, 0.12, 0.8, 45.0),
    "thalamus": (0.04, 0.2, 0.8, 21.0),
    "red_nucleus": (0.13, 0.15, 0.8, 35.0),
    "substantia_nigra": (0.16, 0.15, 0.8, 40.0),
    "dentate_nucleus": (0.12, 0.15, 0.8, 35.0),
    "brainstem": (-0.02, 0.2, 0.7, 22.0),
    "vein": (0.38, 0.1, 0.7, 45.0),
    "calcification": (-0.6, 0.0, 0.2, 120.0),   # χ drawn in [-1, -0.3] per seed
    "haemorrhage": (0.75, 0.0, 0.8, 90.0),      # χ drawn in [0.5, 1.0] per seed
    "bone": (-2.0, 0.05, 0.1, 300.0),
    "air_sinus": (CHI_AIR, 0.0, 0.0, 0.0),
    "soft_tissue": (0.0, 0.0, 0.75, 30.0),
    "fat": (0.6, 0.1, 0.9, 40.0),
    "extracranial_blood": (0.3, 0.0, 0.7, 40.0),
    "muscle": (-0.02, 0.3, 0.6, 35.0),
    "spinal_cord": (-0.03, 0.2, 0.7, 24.0),
}

#: the brain classes (inside the brain mask)
BRAIN_LABELS = tuple(range(1, 15))

# Zubal tissue codes -> our classes, for voxels inside / outside the Zubal brain mask
_Z_BRAIN = {
    "csf": (2, 75, 92, 113, 115, 122, 123),
    "white_matter": (26, 83, 107, 111),
    "grey_matter": (77, 89, 95, 96, 97, 99, 103, 108, 112, 114, 117, 118, 124),
    "caudate": (101,), "putamen": (105,), "globus_pallidus": (120,), "thalamus": (109,),
    "brainstem": (3, 85, 91), "vein": (23, 84, 104),
}
_Z_OUT = {
    "bone": (4, 5, 70, 71, 76, 81, 102, 125), "air_sinus": (15, 104), "fat": (22, 98),
    "extracranial_blood": (23,), "csf": (75, 92, 2), "muscle": (9, 78),
}
_TEX_STEP = 4  # texture grid step (source voxels)
_TEXTURED = ("grey_matter", "white_matter", "caudate", "putamen", "globus_pallidus", "thalamus",
             "brainstem")
_ASSET = Path(__file__).resolve().parent / "data" / "zubal_head_labels.nii.gz"


@dataclass
class HeadPhantom:
    """A head phantom on one grid (arrays indexed like the NIfTI data, RAS+ ``affine``).

    ``chi`` (ppm, rel. CSF) covers the whole FOV incl. air (+9.4) and bone (−2) sources;
    ``chi_in`` is the brain-tissue part only (partial-volume edges towards CSF = 0), used for the
    true local field. ``m0`` (a.u.), ``r2star`` (1/s), ``voxel_size`` (mm per array axis).
    """

    chi: np.ndarray
    labels: np.ndarray
    label_names: dict
    brain_mask: np.ndarray
    head_mask: np.ndarray
    m0: np.ndarray
    r2star: np.ndarray
    voxel_size: tuple
    affine: np.ndarray
    chi_in: np.ndarray | None = field(default=None, repr=False)
    seed: int | None = None
    #: χ on a grid extended to the whole head (same voxels) and where the FOV starts in it:
    #: the total field includes the head outside the FOV, as in a real scan
    chi_ext: np.ndarray | None = field(default=None, repr=False)
    ext_offset: tuple = (0, 0, 0)
    #: fat fraction in [0, 1] (its signal is chemically shifted, see ``simulate``)
    fat_fraction: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple:
        return self.chi.shape

    def __repr__(self) -> str:
        return (f"HeadPhantom(shape={self.shape}, voxel_size={self.voxel_size}, seed={self.seed}, "
                f"brain voxels={int(self.brain_mask.sum())})")

    @property
    def chi_brain(self) -> np.ndarray:
        """χ (ppm, rel. CSF) of brain tissue inside ``brain_mask``, 0 outside."""
        src = self.chi if self.chi_in is None else self.chi_in
        return np.where(self.brain_mask, src, 0.0)

    def _b0(self, b0_dir):
        return physics.b0_direction_from_affine(self.affine) if b0_dir is None else b0_dir

    def local_field_ppm(self, b0_dir=None) -> np.ndarray:
        """True local field (ppm): the field of :attr:`chi_brain`.

        Parameters
        ----------
        b0_dir : sequence of 3 float, optional
            B0 direction in voxel axes; default from ``affine``.

        Returns
        -------
        ndarray, shape (X, Y, Z)
            Local field (ppm).
        """
        return physics.forward_field(self.chi_brain, self.voxel_size, self._b0(b0_dir),
                                     kernel=FORWARD_KERNEL)

    def total_field_ppm(self, b0_dir=None) -> np.ndarray:
        """Total field (ppm) of all of χ in a head surrounded by air (field of χ − χ_air),
        including the parts of the head outside the FOV when :attr:`chi_ext` is set.

        Parameters
        ----------
        b0_dir : sequence of 3 float, optional
            B0 direction in voxel axes; default from ``affine``.

        Returns
        -------
        ndarray, shape (X, Y, Z)
            Total field (ppm) on the FOV grid.
        """
        if self.chi_ext is None:
            return physics.forward_field(self.chi - CHI_AIR, self.voxel_size, self._b0(b0_dir),
                                         kernel=FORWARD_KERNEL)
        f = physics.forward_field(self.chi_ext - CHI_AIR, self.voxel_size, self._b0(b0_dir),
                                  kernel=FORWARD_KERNEL)
        return f[tuple(slice(o, o + n) for o, n in zip(self.ext_offset, self.shape))]

    def background_field_ppm(self, b0_dir=None) -> np.ndarray:
        """Total minus local field (ppm).

        Parameters
        ----------
        b0_dir : sequence of 3 float, optional
            B0 direction in voxel axes; default from ``affine``.

        Returns
        -------
        ndarray, shape (X, Y, Z)
            Background field (ppm).
        """
        return self.total_field_ppm(b0_dir) - self.local_field_ppm(b0_dir)


# --------------------------------------------------------------------------------------------
# source anatomy (Zubal, mapped to our classes), cached
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _zubal_source(neck_mm: float = 0.0):
    """Mapped labels (uint8), Zubal brain mask (bool), source voxel size (mm); with
    ``neck_mm`` > 0 the anatomy is extended below its last slice by a procedural neck
    (:func:`_add_neck`)."""
    import nibabel as nib

    img = nib.load(str(_ASSET))
    code = np.asarray(img.dataobj, dtype=np.uint8)
    vs = tuple(float(v) for v in img.header.get_zooms()[:3])
    lut = np.full(256, _L["soft_tissue"], np.uint8)
    lut[0] = _L["background_air"]
    lut[128:] = _L["csf"]
    for name, codes in _Z_OUT.items():
        lut[list(codes)] = _L[name]
    for name, codes in _Z_BRAIN.items():
        lut[[c + 128 for c in codes]] = _L[name]
    labels = lut[code]
    brain = code >= 128
    if neck_mm > 0:
        labels, brain = _add_neck(labels, brain, vs, float(neck_mm))
    labels.flags.writeable = False
    brain.flags.writeable = False
    return labels, brain, vs


def _add_neck(labels, brain, vs, neck_mm):
    """Extend the head ``neck_mm`` (mm) below its lowest slice (array axis 2 = inferior →
    superior): the lowest complete slice tapers within 30 mm into an elliptic neck (skin,
    subcutaneous fat, muscle) holding the cervical spine (vertebral body and arch: bone), the
    spinal canal (CSF) with the cord (not brain), the airway (air) and the carotid arteries and
    jugular veins. The cord continues the brain's lowest part, which stays the brain mask's
    inferior end (as at the foramen magnum). Returns ``(labels, brain)`` on the taller grid."""
    nz = int(round(neck_mm / vs[2]))
    k0 = 3  # lowest complete slice of the asset
    base = labels[:, :, k0]
    head = ndimage.binary_fill_holes(base > 0)
    x, y = _mm_grid_coords(labels.shape[:2], vs[:2])
    xx, yy = np.meshgrid(x, y, indexing="ij")
    cord = brain[:, :, k0] & (base > 0)
    cx, cy = (float(xx[cord].mean()), float(yy[cord].mean())) if cord.any() else (0.0, 0.0)
    ell = lambda ax, ay, ox=0.0, oy=0.0: (((xx - cx - ox) / ax) ** 2  # noqa: E731
                                          + ((yy - cy - oy) / ay) ** 2) <= 1.0
    neck = ell(58.0, 52.0, 0.0, 22.0) & head
    new = np.zeros(labels.shape[:2] + (nz,), np.uint8)
    taper = 30.0
    depth_in_head = ndimage.distance_transform_edt(np.pad(head, 1), sampling=vs[:2])[1:-1, 1:-1]
    for k in range(nz):
        d = (nz - k) * vs[2]  # depth below the asset's lowest slice (mm)
        sec = neck.copy()
        if d < taper:  # face and jaw fade into the neck
            sec |= depth_in_head > 40.0 * d / taper
        sl = np.where(sec, base, 0).astype(np.uint8)
        dist = ndimage.distance_transform_edt(sec, sampling=vs[:2])
        soft = sec & (dist <= 2.0)
        fat = sec & (dist > 2.0) & (dist <= 7.0)
        inner = sec & (dist > 7.0)
        sl[inner & ~((sl == _L["bone"]) & (d < taper))] = _L["muscle"]
        sl[fat] = _L["fat"]
        sl[soft] = _L["soft_tissue"]
        sl[ell(16.0, 12.0, 0.0, 20.0) & sec] = _L["bone"]   # vertebral body
        sl[ell(13.0, 13.0) & sec] = _L["bone"]              # arch around the canal
        sl[ell(9.0, 8.0) & sec] = _L["csf"]                 # spinal canal
        sl[ell(5.0, 4.0) & sec] = _L["spinal_cord"]
        sl[ell(9.0, 6.0, 0.0, 40.0) & sec] = _L["air_sinus"]  # airway
        for side in (-1.0, 1.0):
            sl[ell(3.5, 3.5, side * 20.0, 38.0) & sec] = _L["extracranial_blood"]  # carotid
            sl[ell(5.0, 4.5, side * 28.0, 30.0) & sec] = _L["extracranial_blood"]  # jugular
        new[:, :, k] = sl
    labels = np.concatenate([new, labels[:, :, k0:]], axis=2)
    brain = np.concatenate([np.zeros_like(new, bool), brain[:, :, k0:]], axis=2)
    return labels, brain


@functools.lru_cache(maxsize=2)
def _landmarks(neck_mm: float = 0.0) -> dict:
    """Voxel lists (mm, source frame) of the structures that procedural objects attach to."""
    labels, brain, vs = _zubal_source(neck_mm)
    sh = labels.shape
    pts = lambda m: _to_mm(np.argwhere(m), sh, vs)  # noqa: E731
    lm = {"thalamus": pts((labels == _L["thalamus"]) & brain),
          "vein": pts(labels == _L["vein"]),
          "globus_pallidus": pts(labels == _L["globus_pallidus"]),
          "csf": pts((labels == _L["csf"]) & brain),
          "white_matter": pts(labels == _L["white_matter"])}
    gmwm = pts(np.isin(labels, [_L["grey_matter"], _L["white_matter"]]) & brain)
    lm["centre"] = 0.5 * (gmwm.min(0) + gmwm.max(0))
    return lm


def _mm_grid_coords(shape, vs):
    """Source voxel index -> mm (centre of the array at 0), per axis."""
    return [(np.arange(n) - (n - 1) / 2.0) * d for n, d in zip(shape, vs)]


def _to_index(p_mm, shape, vs):
    return np.asarray(p_mm, float) / np.asarray(vs) + (np.asarray(shape) - 1) / 2.0


def _to_mm(idx, shape, vs):
    return (np.asarray(idx, float) - (np.asarray(shape) - 1) / 2.0) * np.asarray(vs)


def _rotation(angles_deg):
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


class _Painter:
    """Draws soft (partial-volume) objects in mm into the source maps."""

    def __init__(self, labels, brain, vs, chi, m0, r2s):
        self.labels, self.brain, self.vs = labels, brain, np.asarray(vs)
        self.chi, self.m0, self.r2s = chi, m0, r2s
        self.shape = labels.shape
        self.h = float(np.mean(vs))  # edge width (mm) of the partial-volume ramp

    def _box(self, lo_mm, hi_mm, grid=True):
        lo = np.floor(_to_index(lo_mm, self.shape, self.vs)).astype(int) - 1
        hi = np.ceil(_to_index(hi_mm, self.shape, self.vs)).astype(int) + 2
        lo = np.clip(lo, 0, self.shape)
        hi = np.clip(hi, 0, self.shape)
        if np.any(hi <= lo):
            return None, None
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        if not grid:
            return sl, None
        g = np.meshgrid(*[(np.arange(a, b) - (n - 1) / 2.0) * d
                          for a, b, n, d in zip(lo, hi, self.shape, self.vs)], indexing="ij")
        return sl, np.stack(g, -1)

    def ellipsoid(self, center, radii, rot=None, shell_mm=None):
        """(slices, fraction) of an ellipsoid (mm) with axes ``rot`` columns (default: the
        array axes); with ``shell_mm`` only a shell of that thickness inside its surface."""
        rot = np.eye(3) if rot is None else rot
        r = float(max(radii))
        sl, p = self._box(np.asarray(center) - r, np.asarray(center) + r)
        if sl is None:
            return None, None
        q = (p - center) @ rot / np.asarray(radii)
        rho = np.linalg.norm(q, axis=-1)
        dist = (rho - 1.0) * float(min(radii))  # approximate signed distance (mm)
        if shell_mm is not None:
            dist = np.abs(dist + 0.5 * shell_mm) - 0.5 * shell_mm
        return sl, np.clip(0.5 - dist / self.h, 0.0, 1.0)

    def tube(self, points, radius):
        """(slices, fraction) of a tube of ``radius`` (mm) along a polyline (N, 3) in mm."""
        pts = np.asarray(points, float)
        sl, _ = self._box(pts.min(0) - radius, pts.max(0) + radius, grid=False)
        if sl is None:
            return None, None
        frac = np.zeros(tuple(s.stop - s.start for s in sl), np.float32)
        for a, b in zip(pts[:-1], pts[1:]):  # each segment in its own small box
            ssl, p = self._box(np.minimum(a, b) - radius, np.maximum(a, b) + radius)
            if ssl is None:
                continue
            ab = b - a
            t = np.clip(((p - a) @ ab) / max(ab @ ab, 1e-12), 0.0, 1.0)
            d = np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)
            loc = tuple(slice(q.start - o.start, q.stop - o.start) for q, o in zip(ssl, sl))
            np.maximum(frac[loc], np.clip(0.5 - (d - radius) / self.h, 0.0, 1.0), out=frac[loc])
        return sl, frac

    def paint(self, sl, frac, name, chi_value, allowed=None):
        if sl is None:
            return
        if allowed is not None:
            frac = frac * np.isin(self.labels[sl], allowed)
        _, _, m0, r2 = TISSUE_PROPERTIES[name]
        for arr, v in ((self.chi, chi_value), (self.m0, m0), (self.r2s, r2)):
            arr[sl] = arr[sl] * (1.0 - frac) + v * frac
        self.labels[sl][frac >= 0.5] = _L[name]


def _surface_point(brain, vs, centre, p, inset_mm):
    """Point on the ray centre→p where the brain ends, moved ``inset_mm`` inwards (mm)."""
    u = (p - centre) / np.linalg.norm(p - centre)
    steps = np.arange(0.0, 120.0, 0.5)
    ray = centre + steps[:, None] * u
    idx = np.round(_to_index(ray, brain.shape, vs)).astype(int)
    ok = np.all((idx >= 0) & (idx < brain.shape), axis=1)
    inside = np.zeros(len(steps), bool)
    inside[ok] = brain[tuple(idx[ok].T)]
    last = np.nonzero(inside)[0]
    s = steps[last[-1]] if last.size else np.linalg.norm(p - centre)
    return centre + max(s - inset_mm, 0.0) * u


def _build_source(seed: int, neck_mm: float = 0.0):
    """Source maps on the Zubal grid for ``seed``: labels, brain, chi_in, chi_out, m0, r2*,
    texture, fat fraction."""
    labels0, brain, vs = _zubal_source(neck_mm)
    rng = np.random.default_rng(seed)
    labels = labels0.copy()
    shape = labels.shape
    names = list(TISSUE_PROPERTIES)
    chi_of = {}
    for n in names:
        c, jit, _, _ = TISSUE_PROPERTIES[n]
        chi_of[n] = c * (1.0 + jit * rng.uniform(-1.0, 1.0))
    chi_of["calcification"] = rng.uniform(-1.0, -0.3)
    chi_of["haemorrhage"] = rng.uniform(0.5, 1.0)
    lut = np.zeros((3, 256), np.float32)  # float32 source maps: half the memory and time
    for n in names:
        lut[:, _L[n]] = (chi_of[n], TISSUE_PROPERTIES[n][2], TISSUE_PROPERTIES[n][3])
    chi, m0, r2s = (lut[i][labels] for i in range(3))

    # smooth texture (tissue heterogeneity) on a 4x coarser grid, applied after resampling
    coarse = tuple(n // _TEX_STEP + 2 for n in shape)
    tex = ndimage.gaussian_filter(rng.standard_normal((2,) + coarse), (0, 1.0, 1.0, 1.0))
    tex /= tex.std(axis=(1, 2, 3), keepdims=True)

    p = _Painter(labels, brain, vs, chi, m0, r2s)
    brain_tissue = [_L[n] for n in ("grey_matter", "white_matter", "brainstem", "thalamus", "csf")]
    # landmarks: thalamic centre and midline
    lm = _landmarks(neck_mm)
    thal_mm = lm["thalamus"]
    xmid = float(np.median(thal_mm[:, 0]))
    thal_mid = thal_mm.mean(0)
    thal_mid[0] = xmid
    jit = lambda s: rng.normal(0.0, s, 3)  # noqa: E731

    for side in (-1.0, 1.0):
        sx = np.array([side, 1.0, 1.0])
        # red nucleus (MNI ≈ ±5, −19, −8 ↔ thalamus ≈ 0, −18, 7)
        c = thal_mid + sx * np.array([5.0, -1.0, -15.0]) + jit(0.5)
        sl, f = p.ellipsoid(c, np.array([3.2, 3.8, 4.2]) * rng.uniform(0.9, 1.1))
        p.paint(sl, f, "red_nucleus", chi_of["red_nucleus"], brain_tissue)
        # substantia nigra: elongated, anterolateral to the red nucleus
        c = thal_mid + sx * np.array([10.0, 1.0, -18.0]) + jit(0.5)
        rot = _rotation([0.0, 0.0, side * -50.0])
        sl, f = p.ellipsoid(c, np.array([8.0, 2.3, 3.5]) * rng.uniform(0.9, 1.1), rot)
        p.paint(sl, f, "substantia_nigra", chi_of["substantia_nigra"], brain_tissue)
        # dentate nucleus: a folded shell open medially, in the cerebellar white matter
        c = thal_mid + sx * np.array([15.0, -40.0, -40.0]) + jit(1.0)
        r = np.array([8.0, 7.0, 6.0]) * rng.uniform(0.9, 1.1)
        sl, f = p.ellipsoid(c, r, shell_mm=2.5)
        if sl is not None:
            g = np.meshgrid(*[np.arange(s.start, s.stop) for s in sl], indexing="ij")
            xmm = _to_mm(np.stack(g, -1), shape, vs)[..., 0]
            shell = f * ((xmm - c[0]) * side > -0.4 * r[0])
            p.paint(sl, shell, "dentate_nucleus", chi_of["dentate_nucleus"], brain_tissue)

    # deep veins: thalamostriate -> internal cerebral veins -> vein of Galen -> straight sinus
    sss_mm = lm["vein"]
    back = sss_mm[sss_mm[:, 1] < thal_mid[1] - 50.0]
    torcular = back[np.argmin(back[:, 2])] if len(back) else thal_mid + [0.0, -60.0, -10.0]
    galen = thal_mid + np.array([0.0, -22.0, 3.0])
    vein_ok = [_L[n] for n in ("csf", "grey_matter", "white_matter", "thalamus", "caudate",
                               "brainstem")]
    for side in (-1.0, 1.0):
        icv = [thal_mid + [side * 2.0, 12.0, 12.0], thal_mid + [side * 2.0, -5.0, 13.0],
               thal_mid + [side * 1.0, -18.0, 8.0], galen]
        sl, f = p.tube(icv, 1.1)
        p.paint(sl, f, "vein", chi_of["vein"], vein_ok)
        tsv = [thal_mid + [side * 16.0, 6.0, 14.0], thal_mid + [side * 8.0, 10.0, 14.0],
               thal_mid + [side * 2.0, 12.0, 12.0]]
        sl, f = p.tube(tsv, 0.8)
        p.paint(sl, f, "vein", chi_of["vein"], vein_ok)
    straight = np.linspace(galen, torcular, 12)
    straight[:, 2] += 4.0 * np.sin(np.linspace(0, np.pi, 12))
    sl, f = p.tube(straight, 2.0)
    p.paint(sl, f, "vein", chi_of["vein"], vein_ok)

    # cortical veins on the convexity, draining towards the superior sagittal sinus
    centre = thal_mid + [0.0, -5.0, -5.0]
    for _ in range(rng.integers(7, 11)):
        az = rng.uniform(0, 2 * np.pi)
        el = rng.uniform(np.deg2rad(-5), np.deg2rad(45))
        start = centre + 80.0 * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az),
                                          np.sin(el)])
        end = start.copy()
        end[0] = xmid
        end[2] = centre[2] + 90.0
        wig = rng.normal(0, 6.0, 3)
        pts = [start + t * (end - start) + np.sin(np.pi * t) * wig for t in np.linspace(0, 1, 24)]
        pts = [_surface_point(brain, vs, centre, q, 2.0) for q in pts]
        sl, f = p.tube(pts, rng.uniform(0.8, 1.4))
        p.paint(sl, f, "vein", chi_of["vein"], vein_ok)
    # medullary veins: thin radial lines through the white matter towards the ventricles
    for _ in range(rng.integers(8, 14)):
        d = rng.normal(0, 1, 3)
        d[2] = abs(d[2]) + 0.3
        d /= np.linalg.norm(d)
        a = thal_mid + [0.0, rng.uniform(-25, 15), 12.0] + 8.0 * d
        pts = np.linspace(a, a + rng.uniform(20, 35) * d, 6)
        sl, f = p.tube(pts, 0.6)
        p.paint(sl, f, "vein", chi_of["vein"], [_L["white_matter"]])

    # calcification: pallidal or choroid plexus (ventricular atrium)
    gp = lm["globus_pallidus"]
    lv_mm = lm["csf"]
    atrium = lv_mm[(np.abs(lv_mm[:, 0] - xmid) > 15) & (lv_mm[:, 1] < thal_mid[1] - 10)
                   & (np.abs(lv_mm[:, 2] - thal_mid[2]) < 12)]
    if rng.uniform() < 0.5 or len(atrium) == 0:
        c = gp[rng.integers(len(gp))]
    else:
        c = atrium[rng.integers(len(atrium))]
    sl, f = p.ellipsoid(c, rng.uniform(1.5, 3.0, 3), _rotation(rng.uniform(0, 180, 3)))
    p.paint(sl, f, "calcification", chi_of["calcification"], list(BRAIN_LABELS))
    # haemorrhage: lobar, in the white matter, random ellipsoid
    wm = lm["white_matter"]
    radii = rng.uniform(4.0, 8.0, 3)
    rot = _rotation(rng.uniform(0, 180, 3))
    for _ in range(50):
        c = wm[rng.integers(len(wm))]
        sl, f = p.ellipsoid(c, radii, rot)
        if sl is not None and (f * (labels[sl] == _L["white_matter"])).sum() > 0.8 * f.sum():
            break
    p.paint(sl, f, "haemorrhage", chi_of["haemorrhage"], list(BRAIN_LABELS))

    chi_in = np.where(brain, chi, 0.0)
    chi_out = np.where(brain, 0.0, chi)
    fat = (labels == _L["fat"]).astype(np.float32)
    return labels, brain, vs, chi_in, chi_out, m0, r2s, tex, fat


def _block_mean(a, k):
    """Mean over blocks of k[i] voxels per axis (edge-padded to whole blocks)."""
    if np.all(k == 1):
        return a
    pad = [(0, (-n) % int(b)) for n, b in zip(a.shape, k)]
    a = np.pad(a, pad, mode="edge")
    s = [n // int(b) for n, b in zip(a.shape, k)]
    return a.reshape(s[0], k[0], s[1], k[1], s[2], k[2]).mean(axis=(1, 3, 5), dtype=np.float32)


def make_head_phantom(shape=(128, 128, 80), voxel_size=(1.5, 1.5, 1.5), seed=0, *,
                      extend_fov=True, neck_mm=0.0, centre_offset_mm=(0.0, 0.0, 0.0)
                      ) -> HeadPhantom:
    """Realistic head phantom on a grid of ``shape`` voxels of ``voxel_size`` (mm, per axis).

    Array axes are RAS+ (``affine`` = diag(voxel_size) with the brain centre at world 0).
    The grid is centred on the brain; ``seed`` draws χ values, lesions, veins, texture and a
    small random scaling (±5 %) and rotation (±3°) of the head. Labels are resampled with
    nearest neighbour, χ / M0 / R2* with a box prefilter (partial volume) and linear
    interpolation.

    Parameters
    ----------
    shape : sequence of 3 int, default (128, 128, 80)
        Grid size (voxels, each ≥ 2).
    voxel_size : sequence of 3 float, default (1.5, 1.5, 1.5)
        Voxel size (mm) per array axis.
    seed : int, default 0
        Seed of everything random.
    extend_fov : bool, default True
        When the FOV cuts the head, also build χ on a grid extended to the whole head
        (``chi_ext``) so the total field includes the sources outside the FOV.
    neck_mm : float, default 0.0
        Length (mm) of a procedural neck below the Zubal head (cervical spine, cord, airway,
        vessels, muscle, fat); 0: none.
    centre_offset_mm : sequence of 3 float, default (0, 0, 0)
        Offset (mm, RAS+) of the FOV centre from the brain centre; e.g. (0, 0, -20) for a
        whole-head FOV that reaches the neck.

    Returns
    -------
    HeadPhantom
        χ (ppm, rel. CSF), labels, masks, M0 (a.u.) and R2* (1/s, 3 T) on the grid.

    Raises
    ------
    ValueError
        ``shape`` not three sizes ≥ 2, or an invalid ``voxel_size``.
    """
    shape = tuple(int(s) for s in np.atleast_1d(shape))
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"shape must be three sizes >= 2 (voxels), got {shape!r}")
    vs = physics.check_voxel_size(voxel_size)
    seed = int(seed)
    neck_mm = float(neck_mm)
    labels_s, brain_s, svs, chi_in_s, chi_out_s, m0_s, r2_s, tex, fat_s = \
        _build_source(seed, neck_mm)
    rng = np.random.default_rng([seed, 7])
    warp = _rotation(rng.normal(0.0, 2.0, 3)) @ np.diag(rng.uniform(0.95, 1.05, 3))
    offset = np.asarray(centre_offset_mm, float)
    shift = _landmarks(neck_mm)["centre"] + rng.uniform(-2.0, 2.0, 3) + warp @ offset

    # partial volume where the target voxel is coarser than the source voxel: block means of
    # k = floor(w) source voxels, then a Gaussian with the variance of the remaining box width
    w = np.asarray(vs) / np.asarray(svs)
    k = np.maximum(1, np.floor(w + 1e-6).astype(int))
    maps = [_block_mean(m, k) for m in (chi_in_s, chi_out_s, m0_s, r2_s, fat_s)]
    sigma = np.sqrt(np.clip((w / k) ** 2 - 1.0, 0.0, None) / 12.0)
    if np.any(sigma > 0.05):
        maps = [ndimage.gaussian_filter(m, sigma, truncate=3.0) for m in maps]
    k_off = ((k - 1) / 2.0)[:, None, None, None]
    k_col = k[:, None, None, None]
    code = labels_s.astype(np.uint8) | (brain_s.astype(np.uint8) << 7)

    # extend the grid (same voxels) to cover the whole head when the FOV cuts it
    n = np.asarray(shape)
    lo_ext = np.zeros(3, int)
    hi_ext = np.zeros(3, int)
    if extend_fov:
        half = (np.asarray(labels_s.shape) - 1) / 2.0 * np.asarray(svs)
        corners = np.array(np.meshgrid(*[[-h, h] for h in half], indexing="ij")).reshape(3, -1).T
        tmm = np.linalg.solve(warp, (corners - shift).T).T  # source box corners, target mm
        idx_lo = np.floor(tmm.min(0) / vs + (n - 1) / 2.0).astype(int)
        idx_hi = np.ceil(tmm.max(0) / vs + (n - 1) / 2.0).astype(int)
        lo_ext = np.maximum(0, -idx_lo)
        hi_ext = np.maximum(0, idx_hi - (n - 1))
    full = tuple(n + lo_ext + hi_ext)
    out = [np.empty(full) for _ in range(len(maps) + 2)]
    code_t = np.empty(full, np.uint8)
    tgt = [(np.arange(-a, m + b) - (m - 1) / 2.0) * d
           for m, a, b, d in zip(shape, lo_ext, hi_ext, vs)]
    for i0 in range(full[0]):  # slab-wise keeps the coordinate arrays small
        g = np.stack(np.meshgrid([tgt[0][i0]], tgt[1], tgt[2], indexing="ij"), -1)
        src_mm = g @ warp.T + shift
        idx = np.moveaxis(_to_index(src_mm, labels_s.shape, svs), -1, 0)
        for m, o in zip(maps, out):
            o[i0] = ndimage.map_coordinates(m, (idx - k_off) / k_col, order=1, mode="nearest")[0]
        for t, o in zip(tex, out[len(maps):]):
            o[i0] = ndimage.map_coordinates(t, idx / _TEX_STEP, order=1, mode="nearest")[0]
        code_t[i0] = ndimage.map_coordinates(code, idx, order=0, mode="constant", cval=0)[0]
    chi_ext = None
    if any(lo_ext) or any(hi_ext):
        chi_ext = (out[0] + out[1]).astype(np.float32)
        fov = tuple(slice(a, a + m) for a, m in zip(lo_ext, shape))
        out = [o[fov] for o in out]
        code_t = code_t[fov]
    chi_in, chi_out, m0, r2s, fat, tex_chi, tex_r2 = out
    labels = (code_t & 127).astype(np.int16)
    tissue = np.isin(labels, [_L[n] for n in _TEXTURED])
    chi_in += np.where(tissue, 0.01 * tex_chi, 0.0)   # ± 0.01 ppm heterogeneity
    r2s *= np.where(tissue, 1.0 + 0.06 * tex_r2, 1.0)  # ± 6 % R2*
    # the brain mask holds brain tissue only: voxels whose partial volume carries bone/air χ
    # (|χ_out| > NONBRAIN_CHI_MAX) are not brain, so the background stays harmonic inside it
    brain_mask = ndimage.binary_fill_holes(code_t >= 128) & (np.abs(chi_out) <= NONBRAIN_CHI_MAX)
    head_mask = ndimage.binary_fill_holes(labels > 0)
    affine = np.diag([*vs, 1.0])
    affine[:3, 3] = offset - np.asarray(vs) * (np.asarray(shape) - 1) / 2.0
    chi = chi_in + chi_out
    if chi_ext is not None:  # the extended grid carries the same χ in the FOV (texture included)
        chi_ext[fov] = chi
    return HeadPhantom(chi=chi, labels=labels, label_names=dict(LABEL_NAMES),
                       brain_mask=brain_mask, head_mask=head_mask, m0=np.clip(m0, 0, None),
                       r2star=np.clip(r2s, 0, None), voxel_size=vs, affine=affine,
                       chi_in=np.where(brain_mask, chi_in, 0.0), seed=seed, chi_ext=chi_ext,
                       ext_offset=tuple(int(a) for a in lo_ext),
                       fat_fraction=np.clip(fat, 0.0, 1.0).astype(np.float32))


#: field of view (mm, RAS+ axes) of a whole-head 3D GRE: vertex to upper neck, ear to ear,
#: nose to occiput
WHOLE_HEAD_FOV_MM = (192.0, 224.0, 200.0)
#: neck below the Zubal head (mm) of the whole-head phantom
WHOLE_HEAD_NECK_MM = 60.0


def make_whole_head_phantom(voxel_size=(1.0, 1.0, 1.0), seed=0, *, fov_mm=WHOLE_HEAD_FOV_MM,
                            neck_mm=WHOLE_HEAD_NECK_MM) -> HeadPhantom:
    """Head phantom in a whole-head field of view ``fov_mm``: from 4 mm above the vertex down
    through the skull base into the neck (``neck_mm`` of procedural neck below the Zubal head).

    Parameters
    ----------
    voxel_size : sequence of 3 float, default (1, 1, 1)
        Voxel size (mm) per array axis.
    seed : int, default 0
        Seed of everything random (:func:`make_head_phantom`).
    fov_mm : sequence of 3 float, default :data:`WHOLE_HEAD_FOV_MM`
        Field of view (mm) per axis; the grid has ``round(fov_mm / voxel_size)`` (≥ 2) voxels.
    neck_mm : float, default :data:`WHOLE_HEAD_NECK_MM`
        Procedural neck (mm) below the Zubal head.

    Returns
    -------
    HeadPhantom
        The phantom on the whole-head grid (:func:`make_head_phantom`).

    Raises
    ------
    ValueError
        An invalid ``voxel_size``.
    """
    vs = physics.check_voxel_size(voxel_size)
    fov = np.asarray(fov_mm, float)
    shape = tuple(int(max(2, round(f / v))) for f, v in zip(fov, vs))
    labels, _, svs = _zubal_source(float(neck_mm))
    top = np.nonzero(np.any(labels > 0, axis=(0, 1)))[0][-1]
    top_mm = _to_mm([0, 0, top], labels.shape, svs)[2] - _landmarks(float(neck_mm))["centre"][2]
    offset = (0.0, 0.0, float(top_mm + 4.0 - 0.5 * shape[2] * vs[2]))
    return make_head_phantom(shape, vs, seed, neck_mm=neck_mm, centre_offset_mm=offset)

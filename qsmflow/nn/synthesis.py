"""Training data synthesised on the fly (seedable, CPU or GPU, nothing written to disk).

One sample = (local field in ppm, χ in ppm, brain mask) on a crop at a random voxel size:

1. a base χ map: the 2016 challenge COSMOS map (1.06 mm iso, B0 along axis 2; read from the
   shared data folder, never shipped) and/or the project's head phantom
   (:func:`qsmflow.sims.phantom.make_head_phantom`, several seeds → varied anatomy) when available;
2. a random rigid pose (rotation ≤ ``max_rot_deg``, flips of axes 0/1) plus a smooth random
   elastic displacement (``elastic_mm``), evaluated directly on the target grid: the base is
   resampled once with ``grid_sample`` (trilinear), with box supersampling along axes whose target
   voxel is coarser than the base voxel (partial-volume averaging, no aliasing);
3. contrast changes: global scale and a smooth multiplicative field (local contrast);
4. random ellipsoids / spheres / cuboids / cylinders with random orientation and ± χ inside the
   brain (bleeds, calcifications);
5. the random voxel size: (0.5–1.0, 0.5–1.0, 2.0–4.0) mm as in Meta-QSM, or with probability
   ``p_iso`` near-isotropic 1 mm (0.9–1.1), or a fixed one (Mesa-QSM);
6. forward field with the dipole kernel *of that voxel size* (B0 along axis 2) on a region
   ``margin`` × the crop (zero-padded FFT), Gaussian noise, then the central crop.

Options for what real local fields carry (issue 13 item 5), all off by default:

- ``n_veins``: curved tubes (quadratic Bézier centre lines, radius ``vein_radius_mm``, a soft
  partial-volume edge one voxel wide, χ ``vein_chi`` replacing the tissue) added before the
  forward field (:func:`tube_occupancy`);
- ``bg_residual_ppm``: a background-removal residual of that RMS in the mask, harmonic inside
  it: solid harmonics of degree 1–2 plus the fields of point dipoles outside the mask (near its
  edge where the region has room, else on a shell around the region) (:func:`harmonic_residual`);
- ``erode_mm``: the mask eroded by a ball of that radius after the forward field, as the
  pipeline's background removal erodes it (χ outside the eroded mask still makes field).

All random draws come from ``torch.Generator`` objects seeded per sample on the CPU, so a sample
is the same on CPU and GPU (up to float rounding). Each option above draws from its own generator
(seeded from the sample's seed), so switching one on changes nothing else in the sample.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import physics
from ..masking import erode_ball

#: voxel size of the 2016 challenge data (the headers are wrong, see shared/data/README.md)
COSMOS_VOXEL_MM = (1.06, 1.06, 1.06)


def shared_data_dir(path=None) -> Path:
    """The shared data folder: ``path`` if given, else ``$QSMFLOW_SHARED/data``, else the repo's
    ``../shared/data``.

    Parameters
    ----------
    path : str or Path, optional
        Folder to use (``~`` expanded); empty or None for the fallbacks.

    Returns
    -------
    Path
        The folder (not checked to exist).
    """
    if path:
        return Path(path).expanduser()
    env = os.environ.get("QSMFLOW_SHARED")
    if env:
        return Path(env) / "data"
    return Path(__file__).resolve().parents[3] / "shared" / "data"


# --------------------------------------------------------------------------------------------
# physics in torch (GPU-capable); numerics identical to physics.dipole_kernel / forward_field
# --------------------------------------------------------------------------------------------
def dipole_kernel_torch(shape, voxel_size, b0_dir=(0.0, 0.0, 1.0), device=None,
                        dtype=torch.float32, half=False) -> torch.Tensor:
    """D(k) = 1/3 − (k·b̂)²/|k|² on the FFT grid of ``shape`` (mm voxels); D(0) = 0.

    ``half=True`` returns the last axis cut to ``n // 2 + 1`` (for ``rfftn``).

    Parameters
    ----------
    shape : sequence of 3 int
        FFT grid size (X, Y, Z).
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    b0_dir : sequence of 3 float, default (0, 0, 1)
        B0 direction in voxel axes (normalised here).
    device : torch.device or str, optional
        Device of the result (default: torch's default).
    dtype : torch.dtype, default torch.float32
        Dtype of the result (computed in float64).
    half : bool, default False
        Return the ``rfftn`` half grid.

    Returns
    -------
    torch.Tensor, shape (X, Y, Z) or (X, Y, Z // 2 + 1)
        The dimensionless kernel D.

    Raises
    ------
    ValueError
        If ``voxel_size`` or ``b0_dir`` is invalid.
    """
    vs = physics.check_voxel_size(voxel_size)
    b = physics.check_b0_dir(b0_dir)
    ks = [torch.fft.fftfreq(int(n), d=d, dtype=torch.float64, device=device)
          for n, d in zip(shape, vs)]
    if half:
        ks[2] = torch.fft.rfftfreq(int(shape[2]), d=vs[2], dtype=torch.float64, device=device)
    kx, ky, kz = torch.meshgrid(*ks, indexing="ij")
    k2 = kx**2 + ky**2 + kz**2
    kb = kx * b[0] + ky * b[1] + kz * b[2]
    k2[0, 0, 0] = 1.0
    d = 1.0 / 3.0 - kb**2 / k2
    d[0, 0, 0] = 0.0
    return d.to(dtype)


def forward_field_torch(chi: torch.Tensor, voxel_size, b0_dir=(0.0, 0.0, 1.0),
                        pad_fraction: float = 1.0) -> torch.Tensor:
    """Field (ppm) of ``chi`` (ppm, (..., X, Y, Z)); zero-padded by ``pad_fraction`` × size per
    axis (1.0 = doubling = wrap-free, as :func:`qsmflow.physics.forward_field`).

    Parameters
    ----------
    chi : torch.Tensor, shape (..., X, Y, Z)
        Susceptibility chi (ppm); real floating point.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    b0_dir : sequence of 3 float, default (0, 0, 1)
        B0 direction in voxel axes (normalised here).
    pad_fraction : float, default 1.0
        Zero padding per axis as a fraction of the size (rounded up, then to a fast FFT length).

    Returns
    -------
    torch.Tensor, shape (..., X, Y, Z)
        Field (ppm), on ``chi``'s device.

    Raises
    ------
    ValueError
        If ``voxel_size`` or ``b0_dir`` is invalid.
    """
    shape = chi.shape[-3:]
    pshape = physics.padded_shape(shape, [int(math.ceil(pad_fraction * s)) for s in shape])
    d = dipole_kernel_torch(pshape, voxel_size, b0_dir, chi.device, chi.dtype, half=True)
    f = torch.fft.irfftn(torch.fft.rfftn(chi, s=pshape, dim=(-3, -2, -1)) * d, s=pshape,
                         dim=(-3, -2, -1))
    return f[..., : shape[0], : shape[1], : shape[2]]


# --------------------------------------------------------------------------------------------
# configuration and base volumes
# --------------------------------------------------------------------------------------------
@dataclass
class SynthConfig:
    """Synthesis options (the ``[data]`` table of a training config); lengths in mm, χ in ppm."""

    crop: tuple = (128, 128, 64)
    margin: float = 1.5
    fft_pad: float = 0.5
    sources: tuple = ("cosmos", "phantom")
    n_phantoms: int = 3
    shared_data: str = ""
    voxel_xy: tuple = (0.5, 1.0)
    voxel_z: tuple = (2.0, 4.0)
    p_iso: float = 0.2
    fixed_voxel: tuple | None = None
    max_rot_deg: float = 15.0
    elastic_mm: float = 4.0
    elastic_grid: int = 5
    scale: tuple = (0.7, 1.3)
    local_contrast: float = 0.3
    n_shapes: tuple = (0, 8)
    shape_size_mm: tuple = (1.0, 8.0)
    shape_chi: tuple = (0.05, 0.8)
    noise_ppm: tuple = (0.0, 0.01)
    n_veins: tuple = (0, 0)
    vein_radius_mm: tuple = (0.4, 1.5)
    vein_length_mm: tuple = (10.0, 60.0)
    vein_chi: tuple = (0.2, 0.6)
    bg_residual_ppm: tuple = (0.0, 0.0)
    erode_mm: tuple = (0.0, 0.0)

    @classmethod
    def from_dict(cls, d: dict | None) -> "SynthConfig":
        """Config from a ``[data]`` table (lists become tuples).

        Parameters
        ----------
        d : dict, optional
            Option name → value; missing options keep their defaults.

        Returns
        -------
        SynthConfig

        Raises
        ------
        ValueError
            On an unknown option, or a ``crop`` that is not three sizes >= 16.
        """
        d = dict(d or {})
        names = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - names)
        if bad:
            raise ValueError(f"unknown [data] option(s) {bad}: valid are {sorted(names)}")
        for k, v in d.items():
            if isinstance(v, list):
                d[k] = tuple(v)
        cfg = cls(**d)
        if len(cfg.crop) != 3 or any(int(c) < 16 for c in cfg.crop):
            raise ValueError(f"data.crop must be three sizes >= 16, got {cfg.crop}")
        return cfg


@dataclass
class BaseVolume:
    name: str
    chi: torch.Tensor  # (1, 1, X, Y, Z), ppm, 0 outside brain
    mask: torch.Tensor  # (1, 1, X, Y, Z), float 0/1
    voxel_size: tuple
    centers: np.ndarray = field(repr=False)  # brain voxel coordinates (mm, relative to centre)


def _base_from_arrays(name, chi, mask, vs) -> BaseVolume:
    chi = np.asarray(chi, np.float32) * (np.asarray(mask) > 0)
    m = (np.asarray(mask) > 0)
    idx = np.argwhere(m)[:: max(1, int(m.sum()) // 20000)]
    centre = (np.array(m.shape) - 1) / 2.0
    pts = (idx - centre) * np.asarray(vs)
    return BaseVolume(name, torch.from_numpy(chi)[None, None], torch.from_numpy(m.astype(np.float32))[None, None],
                      tuple(float(v) for v in vs), pts)


def load_cosmos(shared=None) -> BaseVolume:
    """The 2016 challenge COSMOS χ (ppm) × brain mask, 1.06 mm iso, as a :class:`BaseVolume`.

    Parameters
    ----------
    shared : str or Path, optional
        Shared data folder (:func:`shared_data_dir`); the files are ``qsm2016/chi_cosmos.nii.gz``
        and ``qsm2016/msk.nii.gz`` in it.

    Returns
    -------
    BaseVolume
        Named "cosmos", voxel size :data:`COSMOS_VOXEL_MM` (mm).

    Raises
    ------
    ValueError
        If either file is missing.
    """
    import nibabel as nib

    d = shared_data_dir(shared) / "qsm2016"
    f_chi, f_msk = d / "chi_cosmos.nii.gz", d / "msk.nii.gz"
    if not f_chi.exists() or not f_msk.exists():
        raise ValueError(f"COSMOS base not found in {d}: set data.shared_data in the config or "
                         "QSMFLOW_SHARED to the folder holding data/qsm2016")
    chi = nib.load(f_chi).get_fdata(dtype=np.float32)
    msk = nib.load(f_msk).get_fdata(dtype=np.float32)
    return _base_from_arrays("cosmos", chi, msk, COSMOS_VOXEL_MM)


def load_phantoms(n: int, seed: int = 0) -> list[BaseVolume]:
    """``n`` head phantoms with different anatomy seeds; [] (with a warning) if unavailable.

    A phantom that fails to build is skipped with a warning, and no further ones are made.

    Parameters
    ----------
    n : int
        Number of phantoms.
    seed : int, default 0
        Phantom ``i`` uses anatomy seed ``seed + 1000 + i``.

    Returns
    -------
    list of BaseVolume
        Named ``phantom0``, ``phantom1``, ...; at most ``n``.
    """
    try:
        from ..sims.phantom import make_head_phantom
    except ImportError:
        warnings.warn("qsmflow.sims.phantom is not available: synthesising from COSMOS only", stacklevel=2)
        return []
    out = []
    for i in range(int(n)):
        try:
            ph = make_head_phantom(seed=int(seed) + 1000 + i)
            chi = np.asarray(ph.chi_brain if not callable(ph.chi_brain) else ph.chi_brain())
            out.append(_base_from_arrays(f"phantom{i}", chi, ph.brain_mask, ph.voxel_size))
        except Exception as exc:  # a broken phantom must not stop training
            warnings.warn(f"head phantom {i} failed ({exc}); skipping it", stacklevel=2)
            break
    return out


def load_bases(cfg: SynthConfig, seed: int = 0) -> list[BaseVolume]:
    """Base χ volumes named in ``cfg.sources`` ("cosmos", "phantom").

    Parameters
    ----------
    cfg : SynthConfig
        Uses ``sources``, ``shared_data`` (COSMOS) and ``n_phantoms``.
    seed : int, default 0
        Anatomy seed of the phantoms (:func:`load_phantoms`).

    Returns
    -------
    list of BaseVolume
        In the order of ``cfg.sources``.

    Raises
    ------
    ValueError
        On an unknown source, missing COSMOS files, or when no base volume is available.
    """
    bases = []
    for s in cfg.sources:
        if s == "cosmos":
            bases.append(load_cosmos(cfg.shared_data or None))
        elif s == "phantom":
            bases += load_phantoms(cfg.n_phantoms, seed)
        else:
            raise ValueError(f"unknown data source {s!r}: use 'cosmos' and/or 'phantom'")
    if not bases:
        raise ValueError(f"no base volume available from sources {cfg.sources}: add 'cosmos' and "
                         "point data.shared_data at shared/data")
    return bases


# --------------------------------------------------------------------------------------------
# random helpers (CPU generator → deterministic)
# --------------------------------------------------------------------------------------------
def _u(g, lo, hi, n=None):
    if n is None:
        return float(lo + (hi - lo) * torch.rand((), generator=g))
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _rotation(g, max_deg) -> torch.Tensor:
    axis = torch.randn(3, generator=g, dtype=torch.float64)
    axis = axis / axis.norm()
    ang = math.radians(_u(g, -max_deg, max_deg))
    k = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]],
                     dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(ang) * k + (1 - math.cos(ang)) * (k @ k)


def _random_orthonormal(g) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _smooth_field(g, shape, grid, device, n_ch=1) -> torch.Tensor:
    """Smooth random field (n_ch, X, Y, Z), unit-ish std, from a coarse random grid."""
    coarse = torch.randn(1, n_ch, grid, grid, grid, generator=g)
    return F.interpolate(coarse.to(device), size=tuple(shape), mode="trilinear",
                         align_corners=True)[0]


def draw_voxel_size(g: torch.Generator, cfg: SynthConfig) -> tuple:
    """A voxel size (mm) per the config: fixed, near-isotropic 1 mm, or the Meta-QSM range.

    Parameters
    ----------
    g : torch.Generator
        Source of the random draws (CPU).
    cfg : SynthConfig
        ``fixed_voxel`` if set; else with probability ``p_iso`` each axis uniform in 0.9–1.1 mm,
        otherwise axes 0 and 1 uniform in ``voxel_xy`` and axis 2 uniform in ``voxel_z`` (mm).

    Returns
    -------
    tuple of 3 float
        Voxel size (mm) per array axis.
    """
    if cfg.fixed_voxel is not None:
        return tuple(float(v) for v in cfg.fixed_voxel)
    if _u(g, 0, 1) < cfg.p_iso:
        return tuple(float(v) for v in _u(g, 0.9, 1.1, 3))
    xy = _u(g, *cfg.voxel_xy, 2)
    return (float(xy[0]), float(xy[1]), _u(g, *cfg.voxel_z))


# --------------------------------------------------------------------------------------------
# what real local fields carry: veins, background-removal residuals (issue 13 item 5)
# --------------------------------------------------------------------------------------------
def _sub_generator(seed: int, tag: int) -> torch.Generator:
    """A CPU generator of its own for one optional part of sample ``seed``."""
    return torch.Generator().manual_seed(sample_seed(int(seed), 1_000_003 * int(tag)))


def tube_occupancy(coords, points, radius_mm: float, soft_mm: float) -> torch.Tensor:
    """Share (0–1) of each voxel inside a tube of ``radius_mm`` around the polyline ``points``.

    The edge is a linear ramp ``soft_mm`` wide centred on the tube surface (partial volume).

    Parameters
    ----------
    coords : sequence of 3 1-D torch.Tensor
        Voxel centre coordinates (mm) along each array axis (a regular grid).
    points : torch.Tensor, shape (P, 3)
        Vertices of the centre line (mm), P >= 2.
    radius_mm : float
        Tube radius (mm).
    soft_mm : float
        Width (mm) of the edge ramp (> 0).

    Returns
    -------
    torch.Tensor, shape (X, Y, Z)
        Occupancy in [0, 1], dtype and device of ``coords``.
    """
    dt, dev = coords[0].dtype, coords[0].device
    pts = points.to(dev, dt)
    out = torch.zeros(tuple(len(c) for c in coords), dtype=dt, device=dev)
    reach = float(radius_mm) + 0.5 * float(soft_mm)
    lo, hi = pts.amin(0) - reach, pts.amax(0) + reach
    sl = []
    for a, c in enumerate(coords):  # bounding box of the tube on the grid
        i0 = int(torch.searchsorted(c, lo[a].reshape(1)))
        i1 = int(torch.searchsorted(c, hi[a].reshape(1), right=True))
        if i1 <= i0:
            return out
        sl.append(slice(i0, i1))
    x = torch.stack(torch.meshgrid(*[c[s] for c, s in zip(coords, sl)], indexing="ij"), -1)
    dist = torch.full(x.shape[:-1], float("inf"), dtype=dt, device=dev)
    for a, b in zip(pts[:-1], pts[1:]):  # distance to each segment
        ab = b - a
        t = (((x - a) @ ab) / (ab @ ab).clamp(min=1e-12)).clamp(0.0, 1.0)
        dist = torch.minimum(dist, (x - a - t[..., None] * ab).norm(dim=-1))
    out[tuple(sl)] = ((float(radius_mm) - dist) / float(soft_mm) + 0.5).clamp(0.0, 1.0)
    return out


def harmonic_residual(g: torch.Generator, coords, mask: torch.Tensor, voxel_size,
                      rms_ppm: float, n_dipoles: int = 4, min_dist_mm: float = 4.0):
    """A background-removal residual: a field (ppm) harmonic inside ``mask`` with RMS ``rms_ppm``
    there, B0 along array axis 2.

    Random mix of the solid harmonics of degree 1 and 2 (x, y, z, x²−y², y²−z², xy, xz, yz, in
    units of the region's half size) and of ``n_dipoles`` z-dipole fields (3cos²θ − 1)/r³ from
    points outside the mask: half of them at voxels ≥ ``min_dist_mm`` from it when the region
    has such voxels (residuals concentrate near the brain edge), the others on a shell 1.1–2 ×
    the region's half diagonal from its centre.

    Parameters
    ----------
    g : torch.Generator
        Source of the random draws (CPU).
    coords : sequence of 3 1-D torch.Tensor
        Voxel centre coordinates (mm) along each array axis.
    mask : torch.Tensor of bool, shape (X, Y, Z)
        Region where the field must be harmonic and where its RMS is set.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    rms_ppm : float
        RMS of the result inside ``mask`` (ppm).
    n_dipoles : int, default 4
        Number of exterior point sources.
    min_dist_mm : float, default 4.0
        Smallest distance (mm) of a near-edge source from the mask.

    Returns
    -------
    field : torch.Tensor, shape (X, Y, Z)
        The residual (ppm), dtype and device of ``coords`` (not masked).
    sources : torch.Tensor, shape (n_dipoles, 3)
        The dipole positions (mm).
    """
    dt, dev = coords[0].dtype, coords[0].device
    m = mask.bool()
    if not bool(m.any()):
        return (torch.zeros(tuple(len(c) for c in coords), dtype=dt, device=dev),
                torch.zeros(0, 3, dtype=dt, device=dev))
    x = torch.stack(torch.meshgrid(*coords, indexing="ij"), -1)
    half = torch.tensor([float(c[-1] - c[0]) / 2.0 for c in coords], dtype=dt, device=dev)
    centre = torch.stack([(c[0] + c[-1]) / 2.0 for c in coords])
    u = (x - centre) / half.max()
    ux, uy, uz = u.unbind(-1)
    terms = [ux, uy, uz, ux**2 - uy**2, uy**2 - uz**2, ux * uy, ux * uz, uy * uz]
    far = torch.from_numpy(np.argwhere(erode_ball(~m.cpu().numpy(), voxel_size, min_dist_mm)))
    n_near = min(len(far), n_dipoles // 2)
    src = []
    for k in range(int(n_dipoles)):
        if k < n_near:
            src.append(x[tuple(far[int(torch.randint(len(far), (1,), generator=g))])])
        else:
            d = torch.randn(3, generator=g, dtype=torch.float64)
            r = _u(g, 1.1, 2.0) * float(half.norm())
            src.append(centre + (r * d / d.norm()).to(dev, dt))
    for s in src:
        rel = x - s
        r2 = (rel**2).sum(-1).clamp(min=(0.5 * min_dist_mm) ** 2)  # finite outside the mask
        terms.append((3.0 * rel[..., 2] ** 2 / r2 - 1.0) / r2**1.5)
    w = torch.randn(len(terms), generator=g, dtype=torch.float64)
    out = torch.zeros(x.shape[:-1], dtype=dt, device=dev)
    for wi, t in zip(w, terms):
        out = out + float(wi) * t / t[m].pow(2).mean().sqrt().clamp(min=1e-30)
    scale = float(rms_ppm) / float(out[m].pow(2).mean().sqrt().clamp(min=1e-30))
    return out * scale, (torch.stack(src) if src else torch.zeros(0, 3, dtype=dt, device=dev))


# --------------------------------------------------------------------------------------------
# the synthesiser
# --------------------------------------------------------------------------------------------
class Synthesizer:
    """Draw training samples: ``sample(seed, voxel_size=None, crop=None)`` → dict of tensors.

    Keys: ``field`` and ``chi`` (ppm) and ``mask`` (float 0/1), each (1, X, Y, Z) on ``device``,
    and ``voxel_size`` (mm tuple). ``batch(seeds, voxel_size)`` stacks samples sharing one voxel
    size (WP-Conv kernels are per batch).
    """

    def __init__(self, cfg: SynthConfig | dict | None = None, device="cpu", bases=None, seed: int = 0):
        self.cfg = cfg if isinstance(cfg, SynthConfig) else SynthConfig.from_dict(cfg)
        self.device = torch.device(device)
        self.bases = bases if bases is not None else load_bases(self.cfg, seed)
        for b in self.bases:
            b.chi, b.mask = b.chi.to(self.device), b.mask.to(self.device)

    # ---- geometry ----
    def _grid(self, g, base: BaseVolume, region, vs, with_shapes=True):
        cfg, dev = self.cfg, self.device
        rot = _rotation(g, cfg.max_rot_deg)
        flips = torch.tensor([1.0 if _u(g, 0, 1) < 0.5 else -1.0, 1.0 if _u(g, 0, 1) < 0.5 else -1.0, 1.0],
                             dtype=torch.float64)
        rot = rot * flips[None, :]
        centre = torch.from_numpy(base.centers[int(torch.randint(len(base.centers), (1,), generator=g))])
        coords = [(torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0) * d for n, d in zip(region, vs)]
        p = torch.stack(torch.meshgrid(*coords, indexing="ij"), dim=-1).to(dev)  # (X,Y,Z,3) mm
        disp = _smooth_field(g, region, cfg.elastic_grid, dev, 3).permute(1, 2, 3, 0).double()
        q = p @ rot.T.to(dev) + centre.to(dev) + cfg.elastic_mm * disp
        return p, q, rot.to(dev)

    def _sample_base(self, base: BaseVolume, q, vs, offsets):
        """Trilinear sample of base χ and mask at mm points ``q`` (X,Y,Z,3), box-averaged."""
        bshape = base.chi.shape[-3:]
        half = torch.tensor([(n - 1) / 2.0 * d for n, d in zip(bshape, base.voxel_size)],
                            dtype=torch.float64, device=q.device)
        chi_acc = None
        for off in offsets:
            qn = (q + off) / half  # normalised [-1, 1] per base axis (align_corners=True)
            grid = qn.flip(-1)[None].to(base.chi.dtype)  # grid_sample wants (z, y, x) order
            c = F.grid_sample(base.chi, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            chi_acc = c if chi_acc is None else chi_acc + c
        qn = q / half
        m = F.grid_sample(base.mask, qn.flip(-1)[None].to(base.mask.dtype), mode="bilinear",
                          padding_mode="zeros", align_corners=True)
        return (chi_acc / len(offsets))[0, 0], (m[0, 0] > 0.5)

    def _shapes(self, g, chi, mask, p):
        cfg = self.cfg
        n = int(torch.randint(int(cfg.n_shapes[0]), int(cfg.n_shapes[1]) + 1, (1,), generator=g))
        inside = torch.nonzero(mask)
        if n == 0 or len(inside) == 0:
            return chi
        for _ in range(n):
            kind = int(torch.randint(4, (1,), generator=g))
            c = p[tuple(inside[int(torch.randint(len(inside), (1,), generator=g))])]
            r = _random_orthonormal(g).to(p.device, p.dtype)
            a = _u(g, *cfg.shape_size_mm, 3).to(p.device, p.dtype)
            val = _u(g, *cfg.shape_chi) * (1.0 if _u(g, 0, 1) < 0.6 else -1.0)
            u = (p - c) @ r  # coordinates in the shape's frame (mm)
            if kind == 0:  # ellipsoid
                sel = ((u / a) ** 2).sum(-1) <= 1
            elif kind == 1:  # sphere
                sel = (u**2).sum(-1) <= a[0] ** 2
            elif kind == 2:  # cuboid
                sel = (u.abs() / a).amax(-1) <= 1
            else:  # cylinder
                sel = ((u[..., 0] ** 2 + u[..., 1] ** 2) <= a[0] ** 2) & (u[..., 2].abs() <= a[2])
            chi = torch.where(sel & mask, torch.as_tensor(val, dtype=chi.dtype, device=chi.device), chi)
        return chi

    def _veins(self, g, chi, mask, coords, vs):
        """Replace χ by ``vein_chi`` inside random curved tubes starting in the mask."""
        cfg = self.cfg
        n = int(torch.randint(int(cfg.n_veins[0]), int(cfg.n_veins[1]) + 1, (1,), generator=g))
        inside = torch.nonzero(mask)
        if n == 0 or len(inside) == 0:
            return chi
        soft = math.sqrt(sum(v * v for v in vs) / 3.0)  # mm: about one voxel of partial volume
        t = torch.linspace(0.0, 1.0, 9, dtype=torch.float64)[:, None]
        for _ in range(n):
            i = inside[int(torch.randint(len(inside), (1,), generator=g))]
            p0 = torch.stack([c[j] for c, j in zip(coords, i)]).double().cpu()
            d = torch.randn(3, generator=g, dtype=torch.float64)
            length = _u(g, *cfg.vein_length_mm)
            p2 = p0 + length * d / d.norm()
            p1 = (p0 + p2) / 2 + 0.25 * length * torch.randn(3, generator=g, dtype=torch.float64)
            pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # quadratic Bézier
            occ = tube_occupancy(coords, pts, _u(g, *cfg.vein_radius_mm), soft)
            chi = chi + occ.to(chi.dtype) * (_u(g, *cfg.vein_chi) - chi)
        return chi

    def sample(self, seed: int, voxel_size=None, crop=None, shapes: bool = True) -> dict:
        """One sample from ``seed``; ``voxel_size`` (mm) drawn from the config unless given.

        Parameters
        ----------
        seed : int
            Seed of the sample's CPU generator.
        voxel_size : sequence of 3 float, optional
            Voxel size (mm) per array axis (the config's draw is still made, so the other random
            draws come from the same generator stream).
        crop : sequence of 3 int, optional
            Output size (X, Y, Z) (default ``cfg.crop``).
        shapes : bool, default True
            Add the random ellipsoids / spheres / cuboids / cylinders.

        Returns
        -------
        dict
            ``field`` and ``chi`` (ppm) and ``mask`` (0/1), float32 tensors (1, X, Y, Z) on the
            device, ``voxel_size`` (tuple, mm) and ``noise_ppm`` (float, s.d. of the field noise).

        Raises
        ------
        ValueError
            If ``voxel_size`` is invalid.
        """
        cfg = self.cfg
        g = torch.Generator().manual_seed(int(seed))
        vs_drawn = draw_voxel_size(g, cfg)
        vs = physics.check_voxel_size(voxel_size) if voxel_size is not None else vs_drawn
        crop = tuple(int(c) for c in (crop or cfg.crop))
        region = tuple(int(math.ceil(c * cfg.margin)) for c in crop)
        base = self.bases[int(torch.randint(len(self.bases), (1,), generator=g))]
        p, q, rot = self._grid(g, base, region, vs)
        # box supersampling along target axes coarser than the base voxel (partial volume)
        nsub = [max(1, int(math.ceil(v / b - 1e-6))) for v, b in zip(vs, base.voxel_size)]
        offs = [torch.zeros(3, dtype=torch.float64, device=self.device)]
        for ax, ns in enumerate(nsub):
            if ns > 1:
                new = []
                for o in offs:
                    for j in range(ns):
                        d = torch.zeros(3, dtype=torch.float64, device=self.device)
                        d[ax] = ((j + 0.5) / ns - 0.5) * vs[ax]
                        new.append(o + d)
                offs = new
        offs = [o @ rot.T for o in offs]  # target-frame shifts → base frame
        chi, mask = self._sample_base(base, q, vs, offs)
        # contrast changes
        scale = _u(g, *cfg.scale)
        local = 1.0 + cfg.local_contrast * _smooth_field(g, region, 4, self.device)[0].to(chi.dtype)
        chi = chi * scale * local.clamp(min=0.2)
        if shapes:
            chi = self._shapes(g, chi, mask, p.to(chi.dtype))
        chi = chi * mask
        coords = [((torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0) * d).to(self.device, chi.dtype)
                  for n, d in zip(region, vs)]
        if cfg.n_veins[1] > 0:
            chi = self._veins(_sub_generator(seed, 1), chi, mask, coords, vs) * mask
        fld = forward_field_torch(chi, vs, pad_fraction=cfg.fft_pad)
        sigma = _u(g, *cfg.noise_ppm)
        noise = torch.randn(region, generator=g).to(self.device, chi.dtype)
        fld = (fld + sigma * noise) * mask
        if cfg.bg_residual_ppm[1] > 0:
            g2 = _sub_generator(seed, 2)
            res, _ = harmonic_residual(g2, coords, mask, vs, _u(g2, *cfg.bg_residual_ppm))
            fld = fld + res.to(fld.dtype) * mask
        if cfg.erode_mm[1] > 0:  # χ outside the eroded mask keeps its field, as in vivo
            radius = _u(_sub_generator(seed, 3), *cfg.erode_mm)
            k = int(math.ceil(radius / min(vs))) + 1  # the region's border is not a brain edge
            m_np = np.pad(mask.cpu().numpy(), k, mode="edge")
            eroded = torch.from_numpy(erode_ball(m_np, vs, radius)[k:-k, k:-k, k:-k]).to(self.device)
            fld, chi, mask = fld * eroded, chi * eroded, mask & eroded
        sl = tuple(slice((r - c) // 2, (r - c) // 2 + c) for r, c in zip(region, crop))
        return {"field": fld[sl][None].float(), "chi": chi[sl][None].float(),
                "mask": mask[sl][None].float(), "voxel_size": tuple(float(v) for v in vs),
                "noise_ppm": float(sigma)}

    def batch(self, seeds, voxel_size=None, crop=None) -> dict:
        """Stack samples of ``seeds`` sharing one voxel size (drawn from the first seed).

        Parameters
        ----------
        seeds : iterable of int
            One sample per seed (:meth:`sample`).
        voxel_size : sequence of 3 float, optional
            Voxel size (mm) per array axis.
        crop : sequence of 3 int, optional
            Output size (X, Y, Z) (default ``cfg.crop``).

        Returns
        -------
        dict
            ``field``, ``chi`` (ppm) and ``mask`` as tensors (N, 1, X, Y, Z), ``voxel_size``
            (tuple, mm) and ``noise_ppm`` (tensor (N,), s.d. of each sample's field noise).
        """
        seeds = list(seeds)
        if voxel_size is None:
            voxel_size = draw_voxel_size(torch.Generator().manual_seed(int(seeds[0])), self.cfg)
        ss = [self.sample(s, voxel_size, crop) for s in seeds]
        out = {k: torch.stack([s[k] for s in ss]) for k in ("field", "chi", "mask")}
        out["voxel_size"] = ss[0]["voxel_size"]
        out["noise_ppm"] = torch.tensor([s["noise_ppm"] for s in ss], device=self.device)
        return out


def sample_seed(data_seed: int, index: int) -> int:
    """Seed of sample ``index`` of a data set with seed ``data_seed`` (a stable 63-bit mix).

    Parameters
    ----------
    data_seed : int
        Seed of the data set.
    index : int
        Sample index.

    Returns
    -------
    int
        Seed in [0, 2**63).
    """
    x = (int(data_seed) * 0x9E3779B97F4A7C15 + int(index) * 0xBF58476D1CE4E5B9) & 0x7FFFFFFFFFFFFFFF
    x ^= x >> 31
    return int(x & 0x7FFFFFFFFFFFFFFF)


def split_indices(n: int, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Permute ``range(n)`` with ``seed`` and split it train : val = (1 − f) : f.

    Parameters
    ----------
    n : int
        Data set size.
    val_fraction : float, default 0.1
        Fraction f of validation samples (at least one).
    seed : int, default 0
        Seed of the permutation (``numpy.random.default_rng``).

    Returns
    -------
    train, val : ndarray of int
        Disjoint sample indices.

    Raises
    ------
    ValueError
        If ``n`` < 2.
    """
    if n < 2:
        raise ValueError(f"data set size must be >= 2 to split train/validation, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return perm[n_val:], perm[:n_val]

"""Brain masks without FSL: a pretrained brain-extraction network, magnitude-based and
phase-quality-based, combinable.

``deepbet_mask`` (the deepbet network, Fisch et al. 2024, on the echo-combined magnitude,
trimmed to the magnitude foreground: the default for whole-head fields of view),
``magnitude_mask`` (echo-combined magnitude → Otsu threshold → break the scalp off by an
opening in mm → largest component → geodesic reconstruction → hole filling → erosion in mm),
``phase_quality_mask`` (multi-echo fit residual and/or local phase coherence) and
``combine_masks``: arrays in, arrays out (files are the ``BrainMask`` interface's job).
"""

from __future__ import annotations

import functools
import logging
import warnings

import numpy as np
from scipy import ndimage

from . import physics

LOG = logging.getLogger(__name__)

#: brain-mask methods (the app's --masking choices)
#: the masking registry: ``--masking`` name → the functions it may run (their keyword parameters
#: are what ``[params.<name>]`` may set; filled in at the end of the module)
MASK_METHODS: dict = {}

#: smallest extent (mm) along every axis of a field of view that shows a whole brain: below it
#: (slabs, cropped volumes) the network, trained on whole heads, is not used by ``auto``
HEAD_FOV_MIN_MM = 100.0


def erode_ball(mask, voxel_size, radius_mm):
    """Binary erosion by a ball of ``radius_mm`` (mm) on an anisotropic grid (distance transform:
    exact and fast for any radius).

    Voxels outside the array count as outside the mask.

    Parameters
    ----------
    mask : array_like of bool, shape (X, Y, Z)
        Mask to erode.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    radius_mm : float
        Ball radius (mm); <= 0 returns a copy of ``mask``.

    Returns
    -------
    eroded : ndarray of bool, shape (X, Y, Z)
        The voxels farther than ``radius_mm`` from every voxel outside the mask.

    Raises
    ------
    ValueError
        If ``voxel_size`` is not three positive finite values (checked when ``radius_mm`` > 0).
    """
    m = np.asarray(mask, bool)
    if radius_mm <= 0:
        return m.copy()
    d = ndimage.distance_transform_edt(np.pad(m, 1), sampling=physics.check_voxel_size(voxel_size))
    return (d > radius_mm)[1:-1, 1:-1, 1:-1]


def dilate_ball(mask, voxel_size, radius_mm):
    """Binary dilation by a ball of ``radius_mm`` (mm).

    Parameters
    ----------
    mask, voxel_size, radius_mm
        Mask to dilate, voxel size (mm), ball radius (mm), as for :func:`erode_ball`.

    Returns
    -------
    dilated : ndarray of bool, shape (X, Y, Z)
        The voxels within ``radius_mm`` of a mask voxel.
    """
    m = np.asarray(mask, bool)
    if radius_mm <= 0:
        return m.copy()
    return ndimage.distance_transform_edt(~m, sampling=physics.check_voxel_size(voxel_size)) \
        <= radius_mm


def largest_component(mask) -> np.ndarray:
    """The largest 6-connected component of ``mask`` (empty stays empty).

    Parameters
    ----------
    mask : array_like of bool, shape (X, Y, Z)
        Binary mask.

    Returns
    -------
    component : ndarray of bool, shape (X, Y, Z)
        The largest component (on a tie, the first one found in array order).
    """
    lab, n = ndimage.label(mask)
    if n <= 1:
        return lab > 0
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def otsu_threshold(x) -> float:
    """Otsu's threshold of the values ``x`` (256-bin histogram).

    Parameters
    ----------
    x : array_like
        Values (any shape, flattened), e.g. the non-zero magnitude voxels.

    Returns
    -------
    threshold : float
        The histogram bin centre that maximises the between-class variance (unit of ``x``).
    """
    x = np.asarray(x, float).ravel()
    hist, edges = np.histogram(x, bins=256)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def combine_echoes(mag) -> np.ndarray:
    """Root-sum-of-squares over echoes of a (X, Y, Z[, E]) magnitude (a 3D array is returned
    as float).

    Parameters
    ----------
    mag : array_like, shape (X, Y, Z) or (X, Y, Z, E)
        Magnitude (arbitrary units), echoes last.

    Returns
    -------
    combined : ndarray of float, shape (X, Y, Z)
        Echo-combined magnitude (unit of ``mag``).

    Raises
    ------
    ValueError
        If ``mag`` is neither 3D nor 4D.
    """
    m = np.asarray(mag, float)
    if m.ndim == 4:  # without a 4D temporary
        return np.sqrt(np.einsum("xyze,xyze->xyz", m, m))
    if m.ndim != 3:
        raise ValueError(f"magnitude must be 3D or 4D (X, Y, Z[, echoes]), got {m.shape}")
    return m


def r2star_map(mag, te_s, *, dephasing=True) -> np.ndarray:
    """R2* (1/s) by magnitude²-weighted fit of ln(magnitude) over echoes (X, Y, Z, E).

    With ``dephasing`` and ≥ 4 echoes the fit is ``ln m = a − R2*·TE − q·TE²``: the quadratic
    term (q ≥ 0, 1/s²) absorbs intravoxel dephasing in a field gradient G (Hz/voxel),
    ``|sinc(G·TE)| ≈ exp(−π²G²TE²/6)``, which otherwise inflates R2* near air and bone (the
    frontal and temporal lobes, most at 7 T); voxels with q < 0, and 2–3 echoes (too noisy
    for three parameters), get the log-linear fit.

    Parameters
    ----------
    mag : array_like, shape (X, Y, Z, E)
        Multi-echo magnitude (arbitrary units), echoes last.
    te_s : sequence of E float
        Echo times (s), strictly increasing.
    dephasing : bool, default True
        Fit the quadratic dephasing term (with ≥ 4 echoes).

    Returns
    -------
    r2star : ndarray of float, shape (X, Y, Z)
        R2* (1/s); 0 where the fit is undetermined (e.g. zero magnitude).

    Raises
    ------
    ValueError
        If ``mag`` is not 4D with one echo per TE and ≥ 2 echoes, or the echo times are invalid
        (not positive, in ms, not increasing).
    """
    m = np.asarray(mag, float)
    te = physics.check_echo_times(te_s)
    if m.ndim != 4 or m.shape[-1] != te.size or te.size < 2:
        raise ValueError(f"R2* needs a 4D magnitude with one echo per TE (>= 2), got {m.shape} "
                         f"and {te.size} TEs")
    lg = np.log(np.maximum(m, 1e-12 * max(float(m.max()), 1e-30)))
    w = m**2
    # centred, scaled time τ = (TE − t0)/s for conditioning; weighted moments Σw·τ^k, Σw·τ^k·ln m
    t0, s = float(te.mean()), float(np.ptp(te)) or 1.0
    tau = (te - t0) / s
    sw = [np.maximum(w.sum(-1), 1e-30)] + [(w * tau**k).sum(-1) for k in range(1, 5)]
    sl = [(w * tau**k * lg).sum(-1) for k in range(3)]
    d2 = sw[0] * sw[2] - sw[1] ** 2
    ok = d2 > 1e-12 * sw[0] ** 2
    b1 = np.where(ok, (sw[0] * sl[1] - sw[1] * sl[0]) / np.where(ok, d2, 1), 0.0)
    r2 = -b1 / s
    if dephasing and te.size >= 4:
        # 3×3 normal equations [S0 S1 S2; S1 S2 S3; S2 S3 S4]·b = [L0 L1 L2] by Cramer's rule
        s0, s1, s2, s3, s4 = sw
        det = s0 * (s2 * s4 - s3**2) - s1 * (s1 * s4 - s2 * s3) + s2 * (s1 * s3 - s2**2)
        ok3 = det > 1e-9 * s0**3
        dd = np.where(ok3, det, 1.0)
        l0, l1, l2 = sl
        c1 = (s0 * (l1 * s4 - s3 * l2) - l0 * (s1 * s4 - s2 * s3) + s2 * (s1 * l2 - l1 * s2)) / dd
        c2 = (s0 * (s2 * l2 - l1 * s3) - s1 * (s1 * l2 - l1 * s2) + l0 * (s1 * s3 - s2**2)) / dd
        # d(ln m)/dTE at TE = 0 is (c1 + 2·c2·τ(0))/s
        quad = ok3 & (c2 < 0)
        r2 = np.where(quad, -(c1 - 2.0 * c2 * t0 / s) / s, r2)
    return r2


def _central_foreground(fg) -> np.ndarray:
    """The voxels of ``fg`` at least half the largest depth inside the filled head (brain in
    any head or brain FOV)."""
    head = ndimage.binary_fill_holes(fg)
    if head.all():
        return np.asarray(fg, bool)
    d = ndimage.distance_transform_edt(head)
    return fg & (d >= 0.5 * d.max())


def _auto_r2star_max(r2, centre) -> float:
    """Data-derived R2* limit (1/s): 1.6 × the median R2* of the central foreground."""
    ref = float(np.median(r2[centre])) if centre.any() else np.nan
    return 1.6 * ref if np.isfinite(ref) and ref > 0 else np.inf


def magnitude_mask(mag, voxel_size, erode_mm=0.0, *, te_s=None, r2star_max="auto",
                   threshold=None, open_mm=None, fill_holes=True) -> np.ndarray:
    """Brain mask (bool) from magnitude (3D or 4D with echoes last), no FSL.

    1. echoes combined by root-sum-of-squares; 2. foreground = above ``threshold`` (default:
    half of Otsu's threshold of the non-zero voxels — tissue is kept, noise and bone are not)
    and, with ≥ 2 echoes and ``te_s`` given, R2* (:func:`r2star_map`, dephasing-corrected,
    3×3×3 median) below ``r2star_max`` (1/s; ``"auto"``: 1.6 × the median R2* of the central
    head, i.e. ≈ 28 s⁻¹ for brain at 3 T — muscle/scalp/fat lie above — and following B0 by
    itself; a number; ``None`` = off), which cuts the bridges to scalp and face; 3. opening
    by a ball of ``open_mm`` (mm; default 5 with the R2* criterion, 15 without it — single
    echo or no TEs — so that the erosion alone breaks the scalp off through the dark skull),
    largest component = brain; 4. geodesic reconstruction restores the edge inside the foreground;
    5. holes filled (3D and slice-wise, for deep grey matter and veins excluded by R2*);
    6. eroded by ``erode_mm`` (mm).

    Parameters
    ----------
    mag : array_like, shape (X, Y, Z) or (X, Y, Z, E)
        Magnitude (arbitrary units), echoes last.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    erode_mm : float, default 0.0
        Final erosion (mm) of step 6; the largest component is kept after it.
    te_s : sequence of E float, optional
        Echo times (s) of a 4D ``mag``: enables the R2* criterion (≥ 2 echoes).
    r2star_max : "auto", float or None, default "auto"
        R2* limit (1/s) of the foreground, see step 2.
    threshold : float, optional
        Foreground threshold on the echo-combined magnitude (unit of ``mag``); default as in step 2.
    open_mm : float, optional
        Opening radius (mm) of step 3; default 5 with the R2* criterion, else 15.
    fill_holes : bool, default True
        Fill holes (step 5).

    Returns
    -------
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask.

    Raises
    ------
    ValueError
        If ``mag`` is not 3D/4D, contains NaN/Inf or is all zero; no voxel is above the
        threshold; the mask is empty after the erosion; or ``voxel_size``/``te_s`` are invalid.
    """
    vs = physics.check_voxel_size(voxel_size)
    er = float(erode_mm)
    fg, use_r2 = magnitude_foreground(mag, te_s=te_s, r2star_max=r2star_max, threshold=threshold)
    open_mm = (5.0 if use_r2 else 15.0) if open_mm is None else float(open_mm)
    brain = brain_from_foreground(fg, vs, open_mm, fill_holes)
    if er > 0:
        brain = largest_component(erode_ball(brain, vs, er))
    if not brain.any():
        raise ValueError(f"mask is empty after {er} mm erosion: lower erode_mm")
    return brain


def magnitude_foreground(mag, *, te_s=None, r2star_max="auto", threshold=None, within=None):
    """``(foreground, r2star_used)``: voxels above ``threshold`` and, with ≥ 2 echoes and
    ``te_s``, with R2* (3×3×3 median) below ``r2star_max``.

    ``within`` (bool): the foreground is needed there only; R2* is then fitted in the bounding
    box of it and of the central foreground alone (the same result inside ``within``, ~3×
    faster on a whole-head FOV).

    Parameters
    ----------
    mag : array_like, shape (X, Y, Z) or (X, Y, Z, E)
        Magnitude (arbitrary units), echoes last.
    te_s : sequence of E float, optional
        Echo times (s) of a 4D ``mag``: enables the R2* criterion.
    r2star_max : "auto", float or None, default "auto"
        R2* limit (1/s), see :func:`magnitude_mask`; ``None``: no R2* criterion.
    threshold : float, optional
        Threshold on the echo-combined magnitude (unit of ``mag``); default half of Otsu's
        threshold of its non-zero voxels.
    within : array_like of bool, shape (X, Y, Z), optional
        Region where the foreground is needed (outside it the R2* criterion may be skipped).

    Returns
    -------
    foreground : ndarray of bool, shape (X, Y, Z)
        The foreground voxels.
    r2star_used : bool
        Whether the R2* criterion applied.

    Raises
    ------
    ValueError
        If ``mag`` is not 3D/4D, contains NaN/Inf or is all zero; no voxel is in the
        foreground; or ``te_s`` is invalid (when the R2* criterion applies).
    """
    m = combine_echoes(mag)
    if not np.isfinite(m).all():
        raise ValueError("magnitude contains NaN/Inf: replace them (e.g. by 0) first")
    pos = m[m > 0]
    if pos.size == 0:
        raise ValueError("magnitude is all zero: no signal to mask")
    thr = 0.5 * otsu_threshold(pos) if threshold is None else float(threshold)
    fg = m > thr
    use_r2 = (te_s is not None and r2star_max is not None and np.ndim(mag) == 4
              and np.shape(mag)[-1] >= 2)
    if use_r2:
        auto = r2star_max == "auto"
        centre = _central_foreground(fg) if auto else None
        box = (slice(None),) * 3
        if within is not None and np.any(within):
            need = np.asarray(within, bool) | centre if auto else np.asarray(within, bool)
            box = physics.bounding_box(need, 1)  # + the median filter's reach: exact inside
        r2 = np.full(fg.shape, np.inf, np.float64)  # outside the box: not needed, not kept
        r2[box] = ndimage.median_filter(r2star_map(np.asarray(mag)[box], te_s), 3)
        lim = _auto_r2star_max(r2, centre) if auto else float(r2star_max)
        fg &= r2 < lim
    if not fg.any():
        raise ValueError(f"no voxel above the magnitude threshold {thr:g}: lower `threshold`")
    return fg, use_r2


def brain_from_foreground(fg, voxel_size, open_mm, fill_holes=True) -> np.ndarray:
    """The brain out of a foreground that may also hold scalp, face and neck (bool).

    Erosion by a ball of ``open_mm`` (mm) breaks the thin bridges through the skull, the largest
    component is the brain core (the largest component of ``fg`` when the erosion leaves nothing),
    and dilation (1.2 × ``open_mm``) within ``fg`` restores its edge; then the largest component,
    with holes filled (3D and slice-wise) when ``fill_holes``.

    Parameters
    ----------
    fg : array_like of bool, shape (X, Y, Z)
        Foreground.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    open_mm : float
        Erosion radius (mm); <= 0: the largest component of ``fg`` only.
    fill_holes : bool, default True
        Fill holes in 3D and slice-wise along each axis.

    Returns
    -------
    brain : ndarray of bool, shape (X, Y, Z)
        Brain mask.

    Raises
    ------
    ValueError
        If ``voxel_size`` is not three positive finite values.
    """
    vs = physics.check_voxel_size(voxel_size)
    core = largest_component(erode_ball(fg, vs, open_mm)) if open_mm > 0 else largest_component(fg)
    if not core.any():
        core = largest_component(fg)
    brain = dilate_ball(core, vs, open_mm * 1.2) & fg if open_mm > 0 else core
    brain = largest_component(brain)
    if fill_holes:
        brain = ndimage.binary_fill_holes(brain)
        for ax in range(3):  # slice-wise: open-ended holes (ventricles touching a cut FOV)
            brain = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(brain, ax, 0)],
                             axis=0)
            brain = np.moveaxis(brain, 0, ax)
    return brain


def deepbet_available() -> bool:
    """True when the ``deepbet`` package (with its shipped weights) can be imported.

    Returns
    -------
    available : bool
        Whether ``deepbet.bet`` imports.
    """
    try:
        import deepbet.bet  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _deepbet_model():
    import torch
    from deepbet.bet import BrainExtraction

    return BrainExtraction(no_gpu=not torch.cuda.is_available())


def covers_head(shape, voxel_size, min_mm=HEAD_FOV_MIN_MM) -> bool:
    """True when the field of view (``shape`` voxels of ``voxel_size`` mm) is at least
    ``min_mm`` (mm) along every axis: a whole brain can be in it.

    Parameters
    ----------
    shape : sequence of int
        Array shape; the first three entries are used.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    min_mm : float, default :data:`HEAD_FOV_MIN_MM` (100)
        Smallest extent (mm) along every axis.

    Returns
    -------
    covers : bool
        Whether every axis spans at least ``min_mm``.

    Raises
    ------
    ValueError
        If ``voxel_size`` is not three positive finite values.
    """
    vs = physics.check_voxel_size(voxel_size)
    return all(n * d >= min_mm for n, d in zip(shape[:3], vs))


def deepbet_mask(mag, affine, *, te_s=None, r2star_max="auto", threshold=0.5, trim=True,
                 threads=None) -> np.ndarray:
    """Brain mask (bool) by the deepbet network (Fisch et al., Comput Biol Med 2024; weights
    shipped in its PyPI package) on the echo-combined magnitude (3D, or 4D with echoes last).

    The network (trained on T1-weighted whole heads) sees the image reoriented to RAS+ and
    resampled to 256³ voxels, so any voxel size and orientation works; it needs a field of
    view that holds the whole brain (:func:`covers_head`). With ``trim`` the mask is
    intersected with the magnitude foreground, its largest component kept and its holes
    filled — the network's edge is ~1 voxel generous on GRE and takes in the rim of bone and
    air partial volume (3 mm head phantom Dice 0.955 → 0.975).

    Parameters
    ----------
    mag : array_like, shape (X, Y, Z) or (X, Y, Z, E)
        Magnitude (arbitrary units), echoes last.
    affine : array_like, shape (4, 4)
        Voxel-to-world affine (mm) of ``mag``.
    te_s : sequence of E float, optional
        Echo times (s) of a 4D ``mag``: with ``trim``, enables the R2* criterion of
        :func:`magnitude_foreground`.
    r2star_max : "auto", float or None, default "auto"
        R2* limit (1/s) of the trimming foreground, see :func:`magnitude_mask`.
    threshold : float, default 0.5
        Threshold on the network's brain probability (0–1).
    trim : bool, default True
        Intersect with the magnitude foreground (:func:`magnitude_foreground`), keep the
        largest component and fill holes.
    threads : int, optional
        Torch CPU threads (None: torch's default).

    Returns
    -------
    mask : ndarray of bool, shape (X, Y, Z)
        Brain mask on the input grid.

    Raises
    ------
    ValueError
        If ``mag`` is not 3D/4D or contains NaN/Inf, or the network finds no brain (the field
        of view must hold a whole head).
    ImportError
        If torch or deepbet is not installed (see :func:`deepbet_available`).
    """
    import nibabel as nib
    import torch

    m = combine_echoes(mag).astype(np.float32)
    if not np.isfinite(m).all():
        raise ValueError("magnitude contains NaN/Inf: replace them (e.g. by 0) first")
    if threads:
        torch.set_num_threads(int(threads))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, out, _ = _deepbet_model().run(nib.Nifti1Image(m, np.asarray(affine, float)),
                                         threshold=float(threshold))
    brain = np.asarray(out.dataobj) > 0
    if trim and brain.any():
        fg, _ = magnitude_foreground(mag, te_s=te_s, r2star_max=r2star_max, within=brain)
        brain = ndimage.binary_fill_holes(largest_component(brain & fg))
    if not brain.any():
        raise ValueError("deepbet found no brain: the field of view must hold a whole head; "
                         "use --masking magnitude for slabs and cropped volumes")
    return brain


def auto_mask_method(shape, voxel_size) -> str:
    """The mask method ``auto`` runs: "deepbet" when it is installed and the field of view
    covers a head (:func:`covers_head`), else "magnitude".

    Parameters
    ----------
    shape : sequence of int
        Image shape; the first three entries are used.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.

    Returns
    -------
    method : {"deepbet", "magnitude"}
        The method to run.
    """
    if deepbet_available() and covers_head(shape, voxel_size):
        return "deepbet"
    LOG.info("brain mask: magnitude-based (the field of view %s mm is not a whole head, or "
             "deepbet is not installed)", [round(n * d) for n, d in zip(shape[:3], voxel_size)])
    return "magnitude"


def phase_coherence(phase, magnitude=None) -> np.ndarray:
    """Local phase coherence in [0, 1]: |mean of e^{iφ} over the 3×3×3 neighbourhood|
    (magnitude-weighted when given — a 4D magnitude is combined over echoes — normalised by
    the mean magnitude).

    Parameters
    ----------
    phase : array_like, shape (X, Y, Z)
        Phase (rad).
    magnitude : array_like, shape (X, Y, Z) or (X, Y, Z, E), optional
        Magnitude weights (arbitrary units); default uniform.

    Returns
    -------
    coherence : ndarray of float, shape (X, Y, Z)
        Coherence in [0, 1]; 0 where the local mean magnitude is 0.

    Raises
    ------
    ValueError
        If ``magnitude`` is not 3D/4D or its (echo-combined) shape differs from ``phase``'s.
    """
    ph = np.asarray(phase, float)
    w = np.ones(ph.shape) if magnitude is None else combine_echoes(magnitude)
    if w.shape != ph.shape:
        raise ValueError(f"magnitude shape {w.shape} differs from phase shape {ph.shape}")
    z = w * np.exp(1j * ph)
    num = np.abs(ndimage.uniform_filter(z.real, 3) + 1j * ndimage.uniform_filter(z.imag, 3))
    den = ndimage.uniform_filter(w, 3)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def phase_quality_mask(residual=None, *, phase=None, magnitude=None, residual_max_rad=None,
                       coherence_min=0.6, mask=None, voxel_size=None, open_mm=0.0) -> np.ndarray:
    """Phase-quality mask (bool): voxels where the phase is trustworthy.

    A voxel is kept where the residual is at most ``residual_max_rad`` and/or the local phase
    coherence (:func:`phase_coherence`) is at least ``coherence_min``. Criteria given are
    combined with AND (and with ``mask``) and the largest component is kept (holes are not
    filled: an unreliable region inside the brain stays out). With ``voxel_size`` and
    ``open_mm`` > 0 the brain is first separated from scalp and face by
    :func:`brain_from_foreground` (phase-only data: no magnitude mask to do it; at 4.5 mm on the
    head phantom, coherence ≥ 0.9 and 15 mm give Dice 0.87 instead of 0.67).

    Parameters
    ----------
    residual : array_like, shape (X, Y, Z), optional
        Per-voxel RMS residual of the multi-echo fit (rad, :class:`qsmflow.phase.FieldFit`).
    phase : array_like, shape (X, Y, Z), optional
        Phase (rad), e.g. of the first echo, for the coherence criterion.
    magnitude : array_like, shape (X, Y, Z) or (X, Y, Z, E), optional
        Magnitude weighting the coherence (arbitrary units).
    residual_max_rad : float, optional
        Residual limit (rad); default 5× the median residual inside ``mask``.
    coherence_min : float, default 0.6
        Smallest local phase coherence (0–1) kept.
    mask : array_like of bool, shape (X, Y, Z), optional
        Region to restrict the result to (default: the whole volume).
    voxel_size : sequence of 3 float, optional
        Voxel size (mm) per array axis; needed for ``open_mm``.
    open_mm : float, default 0.0
        Opening radius (mm) of :func:`brain_from_foreground`; 0: no opening.

    Returns
    -------
    mask : ndarray of bool, shape (X, Y, Z)
        Phase-quality mask.

    Raises
    ------
    ValueError
        If neither ``residual`` nor ``phase`` is given, the shapes of ``mask``, ``phase`` or
        ``magnitude`` differ from the residual's/phase's, ``residual`` contains NaN/Inf, or
        ``voxel_size`` is invalid.
    """
    if residual is None and phase is None:
        raise ValueError("give the fit residual and/or a phase volume for the quality mask")
    shape = np.shape(residual) if residual is not None else np.shape(phase)
    keep = np.ones(shape, bool) if mask is None else np.asarray(mask, bool).copy()
    if keep.shape != shape:
        raise ValueError(f"mask shape {keep.shape} differs from {shape}")
    if residual is not None:
        r = np.asarray(residual, float)
        if not np.isfinite(r).all():
            raise ValueError("fit residual contains NaN/Inf")
        ref = r[keep] if keep.any() else r
        thr = 5.0 * float(np.median(ref)) if residual_max_rad is None else residual_max_rad
        keep &= r <= thr
    if phase is not None:
        if np.shape(phase) != shape:
            raise ValueError(f"phase shape {np.shape(phase)} differs from {shape}")
        keep &= phase_coherence(phase, magnitude) >= coherence_min
    if voxel_size is not None and open_mm > 0:
        return brain_from_foreground(keep, voxel_size, open_mm, fill_holes=False)
    return largest_component(keep)


def combine_masks(*masks) -> np.ndarray:
    """Intersection of masks (None entries skipped), largest component kept.

    Parameters
    ----------
    *masks : array_like of bool, shape (X, Y, Z), or None
        Masks to intersect.

    Returns
    -------
    mask : ndarray of bool, shape (X, Y, Z)
        The largest component of the intersection.

    Raises
    ------
    ValueError
        If no mask is given, the shapes differ, or the intersection is empty.
    """
    ms = [np.asarray(m, bool) for m in masks if m is not None]
    if not ms:
        raise ValueError("no mask to combine")
    if len({m.shape for m in ms}) > 1:
        raise ValueError(f"mask shapes differ: {[m.shape for m in ms]}")
    out = largest_component(np.logical_and.reduce(ms))
    if not out.any():
        raise ValueError("the combined mask is empty: the masks do not overlap")
    return out


def _accepted(fn, params: dict) -> dict:
    """The entries of ``params`` that ``fn`` takes as keyword arguments."""
    import inspect

    names = inspect.signature(fn).parameters
    return {k: v for k, v in params.items() if k in names}


def brain_mask(method: str, affine, *, magnitude=None, te_s=None, phase=None, residual=None,
               workers: int | None = None, **params) -> tuple[np.ndarray, str]:
    """The brain mask of a ``--masking`` method (a key of :data:`MASK_METHODS`).

    Parameters
    ----------
    method : "auto", "deepbet", "magnitude", "phase-quality" or "combined"
        ``auto``: deepbet for a whole-head field of view, else magnitude
        (:func:`auto_mask_method`); ``combined``: ``auto``'s mask AND the phase-quality mask.
    affine : (4, 4) array
        Voxel-to-world affine (mm) of the images; gives the voxel size.
    magnitude : array, optional
        Magnitude, 3D or 4D with echoes last (needed by every method but phase-quality).
    te_s : sequence of float, optional
        Echo times (s) of a 4D magnitude: enables the R2* criterion.
    phase, residual : array, optional
        Phase of the first echo (rad) and multi-echo fit residual (rad), for phase-quality.
    workers : int, optional
        CPU threads of the deepbet network (default 1).
    **params
        Keyword parameters of the functions the method runs (``MASK_METHODS[method]``); each
        function takes the ones it accepts.

    Returns
    -------
    mask : bool array
    used : str
        The method that ran, e.g. "deepbet" for ``auto`` on a whole head, or
        "magnitude + phase-quality".
    """
    if method not in MASK_METHODS:
        raise ValueError(f"unknown mask method {method!r}: use one of {', '.join(MASK_METHODS)}")
    vs = physics.voxel_size_from_affine(affine)
    mag = None if magnitude is None else np.asarray(magnitude)
    if te_s is not None and (mag is None or mag.ndim != 4 or mag.shape[-1] < 2):
        te_s = None
    extractor = method
    mask = None
    if method in ("auto", "deepbet", "magnitude", "combined"):
        if mag is None:
            raise ValueError(f"--masking {method} needs magnitude images: use "
                             "--masking phase-quality for phase-only data")
        if method in ("auto", "combined"):
            extractor = auto_mask_method(mag.shape, vs)
    if extractor == "deepbet":
        if not deepbet_available():
            raise ValueError("--masking deepbet needs the deepbet package: pip install "
                             "deepbet, or use --masking magnitude")
        mask = deepbet_mask(mag, affine, threads=workers or 1,
                            **{"te_s": te_s, **_accepted(deepbet_mask, params)})
    elif extractor == "magnitude":
        mask = magnitude_mask(mag, vs, **{"te_s": te_s, **_accepted(magnitude_mask, params)})
    if method in ("phase-quality", "combined"):
        kw = _accepted(phase_quality_mask, params)
        if method == "phase-quality":  # no magnitude mask: separate brain from scalp here
            kw = {"voxel_size": vs, "open_mm": 15.0, "coherence_min": 0.9, **kw}
        if residual is not None:
            kw["residual"] = residual
        if phase is not None:
            kw["phase"], kw["magnitude"] = phase, mag
        pq = phase_quality_mask(**kw)
        mask = pq if mask is None else combine_masks(mask, pq)
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise ValueError(f"the {method} brain mask is empty: check the magnitude/phase "
                         "images or choose another --masking")
    return mask, extractor + (" + phase-quality" if method == "combined" else "")


MASK_METHODS.update({
    "auto": (magnitude_mask, deepbet_mask), "deepbet": (deepbet_mask,),
    "magnitude": (magnitude_mask,), "phase-quality": (phase_quality_mask,),
    "combined": (magnitude_mask, deepbet_mask, phase_quality_mask)})

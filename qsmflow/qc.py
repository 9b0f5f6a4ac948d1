"""Quality control of a QSM result from the data alone (no ground truth): metrics and a verdict.

Every metric is a plain function on arrays (χ in ppm, fields in ppm or Hz, masks bool, voxel
size in mm per array axis, B0 direction in voxel axes, the affine RAS+ mm). :func:`qc_metrics`
computes them all for one χ map; :func:`verdict` turns them into ``pass`` / ``warn`` / ``fail``
with one human reason per metric beyond its limit (:data:`LIMITS`). The limits were calibrated
on simulated good and deliberately broken cases (``tests/test_qc.py``: wrong masks that keep the
neck or are dilated, a wrong B0 direction, fields in Hz read as ppm, echo times in ms read as
seconds, a sign flip); see ``docs/bids_app.md`` for what each field means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from . import bgremoval, physics

#: |χ| (ppm) above which a brain voxel is implausible (veins and iron-rich nuclei stay below
#: ~0.5 ppm at the resolution of a clinical scan; haemorrhage can exceed it locally)
CHI_BOUND_PPM = 1.0
#: depth below the top of the mask (mm) beneath which a brain has only the lower cerebellum and
#: brainstem (vertex to the foramen magnum is ~130–150 mm in adults)
INFERIOR_DEPTH_MM = 120.0
#: |D(k)| below which a k-space point lies on the dipole kernel's zero cone
CONE_D_MAX = 0.08


@dataclass(frozen=True)
class Limit:
    """Warn/fail limits of one metric: ``high`` limits fail above, else below."""

    warn: float
    fail: float
    high: bool
    reason: str   # what a value beyond the limit means, for the report

    def level(self, value: float) -> str:
        """Level of ``value`` against these limits.

        Parameters
        ----------
        value : float or None
            Value of the metric (unit of the limits).

        Returns
        -------
        str
            ``"fail"`` beyond ``fail``, ``"warn"`` beyond ``warn``, else ``"pass"`` (also for None or
            a non-finite value); beyond = above when ``high``, else below.
        """
        if value is None or not np.isfinite(value):
            return "pass"
        beyond = (lambda lim: value > lim) if self.high else (lambda lim: value < lim)
        return "fail" if beyond(self.fail) else "warn" if beyond(self.warn) else "pass"


#: metric name → limits (calibrated in tests/test_qc.py; the names are the sidecar's keys)
LIMITS = {
    "ChiOutlierFraction": Limit(
        0.005, 0.03, True, f"of the mask has |χ| > {CHI_BOUND_PPM:g} ppm: a brain mask that "
        "includes non-brain tissue, or a field in Hz read as ppm"),
    "ChiSpread_ppm": Limit(
        0.008, 0.003, False, "robust spread of χ in the mask is implausibly small: echo times "
        "in ms read as seconds, or a field scaled down"),
    "ChiSpreadHigh_ppm": Limit(
        0.12, 0.3, True, "robust spread of χ in the mask is implausibly large: a unit error "
        "(field in Hz read as ppm) or a wrong mask"),
    "ForwardResidual": Limit(
        0.65, 0.85, True, "of the local field is not explained by the χ map (‖M(D∗χ − f)‖/‖Mf‖): "
        "a wrong B0 direction or a field that is not a dipole field"),
    "B0ConeRatio": Limit(
        1.25, 1.6, True, "more local-field energy on the dipole kernel's zero cone than for "
        "another B0 axis: the B0 direction is probably wrong"),
    "ChiTailAsymmetry": Limit(
        1.0, 0.75, False, "χ has a heavier diamagnetic than paramagnetic tail (veins and iron "
        "are paramagnetic): the field sign is probably flipped (vendor phase convention)"),
    "MaskVolume_ml": Limit(
        700.0, 300.0, False, "brain mask volume is small for an adult brain (partial coverage, "
        "or the mask missed the brain)"),
    "MaskVolumeHigh_ml": Limit(
        1900.0, 2600.0, True, "brain mask volume is large for an adult brain: the mask "
        "includes non-brain tissue"),
    "MaskInferiorFraction": Limit(
        0.10, 0.18, True, f"of the mask lies more than {INFERIOR_DEPTH_MM:g} mm below its top: "
        "the mask reaches into the neck"),
    "FieldFitOutlierFraction": Limit(
        0.05, 0.15, True, "of the brain mask has a field-fit residual above 1 rad: the mask "
        "includes tissue with unusable phase (bone, air, fat), or unwrapping failed"),
}


def _sel(x, mask):
    m = np.asarray(mask, bool)
    if np.shape(x) != m.shape:
        raise ValueError(f"array of shape {np.shape(x)} and mask {m.shape} differ")
    if not m.any():
        raise ValueError("the mask is empty")
    return np.asarray(x, float)[m]


def chi_outlier_fraction(chi_ppm, mask, bound_ppm=CHI_BOUND_PPM) -> float:
    """Fraction (0–1) of ``mask`` voxels with |χ| (ppm) above ``bound_ppm``.

    Parameters
    ----------
    chi_ppm : array_like, shape (X, Y, Z)
        Susceptibility (ppm).
    mask : array_like of bool, shape (X, Y, Z)
        Region of the metric.
    bound_ppm : float, optional
        Bound on |χ| (ppm); default :data:`CHI_BOUND_PPM`.

    Returns
    -------
    float
        Fraction of the mask (0–1).

    Raises
    ------
    ValueError
        If the array and ``mask`` differ in shape or ``mask`` is empty.
    """
    return float(np.mean(np.abs(_sel(chi_ppm, mask)) > bound_ppm))


def chi_spread(chi_ppm, mask) -> float:
    """Robust standard deviation of χ in ``mask`` (ppm): 1.4826 × median absolute deviation.

    Parameters
    ----------
    chi_ppm : array_like, shape (X, Y, Z)
        Susceptibility (ppm).
    mask : array_like of bool, shape (X, Y, Z)
        Region of the metric.

    Returns
    -------
    float
        Robust spread of χ (ppm).

    Raises
    ------
    ValueError
        If the array and ``mask`` differ in shape or ``mask`` is empty.
    """
    v = _sel(chi_ppm, mask)
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def chi_tail_asymmetry(chi_ppm, mask, q=0.5) -> float:
    """(P(100−q) − P50) / (P50 − Pq) of χ in ``mask`` (q in %).

    > 1 when the paramagnetic tail (veins, iron) is heavier, as in a brain; < 1 when the sign is
    flipped.

    Parameters
    ----------
    chi_ppm : array_like, shape (X, Y, Z)
        Susceptibility (ppm).
    mask : array_like of bool, shape (X, Y, Z)
        Region of the metric.
    q : float, optional
        Lower percentile (%), between 0 and 50; default 0.5.

    Returns
    -------
    float
        Tail ratio (dimensionless; the denominator is floored at 1e-12 ppm).

    Raises
    ------
    ValueError
        If the array and ``mask`` differ in shape or ``mask`` is empty.
    """
    lo, med, hi = np.percentile(_sel(chi_ppm, mask), [q, 50.0, 100.0 - q])
    return float((hi - med) / max(med - lo, 1e-12))


def forward_residual(chi_ppm, local_field_ppm, mask, voxel_size, b0_dir) -> float:
    """‖M(D∗χ − f)‖ / ‖M f‖ in ``mask``: the fraction of the local field the χ map does not explain.

    Under the dipole model with ``b0_dir``; χ is set to 0 outside ``mask`` before the forward
    model (:func:`qsmflow.physics.forward_field`), and field and model are demeaned in ``mask``
    (D(0) = 0: a constant offset is not a dipole field).

    Parameters
    ----------
    chi_ppm : array_like, shape (X, Y, Z)
        Susceptibility (ppm).
    local_field_ppm : array_like, shape (X, Y, Z)
        Local (background-removed) field (ppm).
    mask : array_like of bool, shape (X, Y, Z)
        Region of the metric.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    b0_dir : sequence of 3 float
        B0 direction in voxel axes.

    Returns
    -------
    float
        Relative residual (0 = fully explained).

    Raises
    ------
    ValueError
        If the field and ``mask`` differ in shape, ``mask`` is empty, χ has NaN/Inf in ``mask``, or
        ``voxel_size`` / ``b0_dir`` is invalid.
    """
    m = np.asarray(mask, bool)
    f = _sel(local_field_ppm, m)
    f = f - f.mean()  # D(0) = 0: a constant offset is not a dipole field
    model = physics.forward_field(np.where(m, chi_ppm, 0.0), voxel_size, b0_dir)[m]
    model = model - model.mean()
    return float(np.linalg.norm(model - f) / max(np.linalg.norm(f), 1e-30))


def highpass(field, mask, voxel_size, radius_mm, pad=8):
    """SHARP high-pass of a field cut to ``mask``, and ``mask`` eroded by the ball.

    ``(C·(field·mask), eroded)``: the SHARP high-pass ``C = δ − SMV(radius_mm)`` (mm) of a field
    (any unit) cut to ``mask``, and ``mask`` eroded by the ball, where ``C`` removes any field
    harmonic in the mask (a background field). Zero-padded by ``pad`` voxels per axis.

    Parameters
    ----------
    field : array_like, shape (X, Y, Z)
        Field (any unit, e.g. ppm or Hz).
    mask : array_like of bool, shape (X, Y, Z)
        Region the field is cut to.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    radius_mm : float
        SMV radius (mm), positive.
    pad : int or sequence of 3 int, optional
        Zero padding (voxels) per axis; default 8.

    Returns
    -------
    cf : ndarray, shape (X, Y, Z)
        ``C·(field·mask)`` (float32, unit of ``field``); meaningful in ``eroded``.
    eroded : ndarray of bool, shape (X, Y, Z)
        Voxels of ``mask`` whose whole ball lies inside it.

    Raises
    ------
    ValueError
        If ``radius_mm`` is not positive or the ball does not fit the padded grid
        (:func:`qsmflow.bgremoval.smv_highpass`).
    """
    m = np.asarray(mask, bool)
    shape = physics.padded_shape(m.shape, pad)
    grid, c_half, me = bgremoval.smv_highpass(shape, physics.pad_array(m, shape), voxel_size,
                                              float(radius_mm))
    cf = grid.conv(grid.pad(np.where(m, field, 0.0)), c_half)
    return physics.crop_array(cf, m.shape), physics.crop_array(me, m.shape)


def forward_residual_total(chi_ppm, total_field_ppm, brain_mask, voxel_size, b0_dir,
                           radius_mm, highpassed=None) -> float:
    """‖M_e·C(D∗χ − f)‖ / ‖M_e·C f‖ for a χ map made from the total field by a single-step method.

    The χ map (ppm) is made from the total field ``f`` (ppm) in ``brain_mask``; this is its own
    data term, with ``C`` and ``M_e`` of :func:`highpass` for ``radius_mm`` (the method's SMV
    radius). χ is set to 0 outside ``brain_mask`` before the forward model.

    Parameters
    ----------
    chi_ppm : array_like, shape (X, Y, Z)
        Susceptibility (ppm).
    total_field_ppm : array_like, shape (X, Y, Z)
        Total field (ppm).
    brain_mask : array_like of bool, shape (X, Y, Z)
        Brain mask of the method.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    b0_dir : sequence of 3 float
        B0 direction in voxel axes.
    radius_mm : float
        SMV radius of the method (mm).
    highpassed : tuple of (ndarray, ndarray), optional
        ``(C·f, M_e)`` when :func:`highpass` of ``f`` was already computed.

    Returns
    -------
    float
        Relative residual (0 = fully explained).

    Raises
    ------
    ValueError
        If χ has NaN/Inf in ``brain_mask``, or ``voxel_size``, ``b0_dir`` or ``radius_mm`` is
        invalid (see :func:`highpass`).
    """
    m = np.asarray(brain_mask, bool)
    cf, me = highpass(total_field_ppm, m, voxel_size, radius_mm) if highpassed is None \
        else highpassed
    model = physics.forward_field(np.where(m, chi_ppm, 0.0), voxel_size, b0_dir)
    cm = highpass(model, m, voxel_size, radius_mm)[0]  # C is linear: C(Dχ − f) = C·Dχ − C·f
    return float(np.linalg.norm((cm - cf)[me]) / max(np.linalg.norm(cf[me]), 1e-30))


def cone_energy(field, mask, voxel_size, b0_dir, d_max=CONE_D_MAX) -> float:
    """Spectral energy of the masked, demeaned field near the dipole kernel's zero cone.

    Near the cone = |D(k)| < ``d_max`` for ``b0_dir``; the energy per k-space point is relative to
    the mean (1 = white): a dipole field has little there (D·χ vanishes on the cone), any unit.
    Only 2 / (smallest field of view) < |k| ≤ 0.5 / (largest voxel side) (1/mm) is used.

    Parameters
    ----------
    field : array_like, shape (X, Y, Z)
        Field (any unit).
    mask : array_like of bool, shape (X, Y, Z)
        Region of the metric.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    b0_dir : sequence of 3 float
        B0 direction in voxel axes.
    d_max : float, optional
        Bound on |D(k)| (dimensionless) that defines the cone; default :data:`CONE_D_MAX`.

    Returns
    -------
    float
        Relative energy on the cone (dimensionless); NaN when no k-space point is on it.

    Raises
    ------
    ValueError
        If ``field`` and ``mask`` differ in shape, ``mask`` is empty, or ``voxel_size`` /
        ``b0_dir`` is invalid.
    """
    m = np.asarray(mask, bool)
    f = np.where(m, np.asarray(field, float) - _sel(field, m).mean(), 0.0)
    spec = np.abs(sfft.rfftn(f, workers=physics.fft_workers())) ** 2
    d = physics.dipole_kernel(f.shape, voxel_size, b0_dir, half=True)
    kx, ky, kz = physics.kspace_grid(f.shape, voxel_size, half=True)
    k = np.sqrt(kx**2 + ky**2 + kz**2)
    # the lowest frequencies carry the mask's own shape (its truncation), not the dipole
    vs = physics.check_voxel_size(voxel_size)
    keep = k > 2.0 / (np.asarray(f.shape) * vs).min()
    # inside the ball every direction is sampled up to the same |k| (thick slices reach a lower
    # Nyquist along their axis, which would skew the cone of one B0 axis against the others)
    keep &= k <= 0.5 / max(vs)
    cone = keep & (np.abs(d) < d_max)
    if not cone.any():
        return float("nan")
    return float(spec[cone].mean() / max(spec[keep].mean(), 1e-30))


def b0_cone_ratio(field, mask, voxel_size, b0_dir) -> float:
    """:func:`cone_energy` for ``b0_dir`` over the lowest of it and the three voxel axes.

    ≈ 1 when ``b0_dir`` is (close to) right, ≫ 1 when another axis fits the field better.

    Parameters
    ----------
    field : array_like, shape (X, Y, Z)
        Local field (any unit).
    mask : array_like of bool, shape (X, Y, Z)
        Region of the metric.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    b0_dir : sequence of 3 float
        B0 direction in voxel axes.

    Returns
    -------
    float
        Ratio (dimensionless, ≥ 1; NaN when the cone of ``b0_dir`` holds no k-space point).

    Raises
    ------
    ValueError
        If ``field`` and ``mask`` differ in shape, ``mask`` is empty, or ``voxel_size`` /
        ``b0_dir`` is invalid.
    """
    b = physics.check_b0_dir(b0_dir)
    own = cone_energy(field, mask, voxel_size, b)
    axes = [cone_energy(field, mask, voxel_size, np.eye(3)[i]) for i in range(3)]
    return float(own / max(min([own, *axes]), 1e-30))


def mask_volume_ml(mask, voxel_size) -> float:
    """Volume of ``mask`` in ml (voxel size in mm).

    Parameters
    ----------
    mask : array_like
        Mask (non-zero = inside).
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.

    Returns
    -------
    float
        Volume (ml).

    Raises
    ------
    ValueError
        If ``voxel_size`` is invalid.
    """
    return float(np.count_nonzero(mask) * np.prod(physics.check_voxel_size(voxel_size)) / 1000.0)


def mask_inferior_fraction(mask, affine, depth_mm=INFERIOR_DEPTH_MM) -> float:
    """Fraction of ``mask`` lying more than ``depth_mm`` (mm) below its most superior voxel.

    ~0.05 for a brain, large when the mask reaches the neck. Measured along the array axis
    closest to superior in the RAS+ ``affine`` (the field of view is planned on the anatomy,
    so this follows the head even when it is tilted in the scanner).

    Parameters
    ----------
    mask : array_like of bool, shape (X, Y, Z)
        Brain mask.
    affine : array_like, shape (4, 4) or (3, 3)
        Voxel → RAS+ world (mm) affine.
    depth_mm : float, optional
        Depth below the top of the mask (mm); default :data:`INFERIOR_DEPTH_MM`.

    Returns
    -------
    float
        Fraction of the mask (0–1).

    Raises
    ------
    ValueError
        If ``mask`` is empty.
    """
    ijk = np.argwhere(np.asarray(mask, bool))
    if not len(ijk):
        raise ValueError("the mask is empty")
    a = np.asarray(affine, float)[:3, :3]
    axis = int(np.argmax(np.abs(a[2])))
    z = ijk[:, axis] * np.linalg.norm(a[:, axis]) * np.sign(a[2, axis])
    return float(np.mean(z < z.max() - depth_mm))


def field_fit_outlier_fraction(residual_rad, mask, limit_rad=1.0) -> float:
    """Fraction of ``mask`` whose multi-echo fit residual exceeds ``limit_rad``.

    The residual is in rad, RMS over echoes: phase the linear-in-TE model cannot explain (bone,
    air, fat, wrap errors).

    Parameters
    ----------
    residual_rad : array_like, shape (X, Y, Z)
        Field-fit residual (rad, RMS over echoes).
    mask : array_like of bool, shape (X, Y, Z)
        Region of the metric.
    limit_rad : float, optional
        Residual limit (rad); default 1.0.

    Returns
    -------
    float
        Fraction of the mask (0–1).

    Raises
    ------
    ValueError
        If the array and ``mask`` differ in shape or ``mask`` is empty.
    """
    return float(np.mean(_sel(residual_rad, mask) > limit_rad))


def qc_metrics(chi_ppm, local_field_ppm, mask, voxel_size, b0_dir, *, brain_mask=None,
               affine=None, fit_residual_rad=None, total_field_radius_mm=None) -> dict:
    """All metrics of one χ map (ppm) and its local field (ppm) in ``mask`` (where χ is valid).

    ``total_field_radius_mm``: χ comes from a single-step method with this SMV radius (mm),
    ``local_field_ppm`` is then the total field in ``brain_mask`` and the field metrics are
    taken on its high-pass (:func:`forward_residual_total`, :func:`highpass`).

    Parameters
    ----------
    chi_ppm : array_like, shape (X, Y, Z)
        Susceptibility (ppm).
    local_field_ppm : array_like, shape (X, Y, Z)
        Local field (ppm), or the total field with ``total_field_radius_mm``.
    mask : array_like of bool, shape (X, Y, Z)
        Where χ is valid (the χ and field metrics).
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    b0_dir : sequence of 3 float
        B0 direction in voxel axes.
    brain_mask : array_like of bool, shape (X, Y, Z), optional
        Mask before background-removal erosion, for the volume and shape metrics; default ``mask``.
    affine : array_like, shape (4, 4), optional
        Voxel → RAS+ world (mm), for ``MaskInferiorFraction`` (skipped without it).
    fit_residual_rad : array_like, shape (X, Y, Z), optional
        Field-fit residual (rad), for ``FieldFitOutlierFraction`` (skipped without it).
    total_field_radius_mm : float, optional
        SMV radius (mm) of the single-step method; default None (a local field is given).

    Returns
    -------
    dict of str to float
        Keys are those of :data:`LIMITS`, values rounded to 5 decimals for a sidecar.

    Raises
    ------
    ValueError
        If an array and its mask differ in shape, a mask is empty, or ``voxel_size``, ``b0_dir``
        or ``total_field_radius_mm`` is invalid.
    """
    m = np.asarray(mask, bool)
    brain = m if brain_mask is None else np.asarray(brain_mask, bool)
    spread = chi_spread(chi_ppm, m)
    vol = mask_volume_ml(brain, voxel_size)
    if total_field_radius_mm is None:
        fwd = forward_residual(chi_ppm, local_field_ppm, m, voxel_size, b0_dir)
        cone = b0_cone_ratio(local_field_ppm, m, voxel_size, b0_dir)
    else:
        cf, me = highpass(local_field_ppm, brain, voxel_size, total_field_radius_mm)
        fwd = forward_residual_total(chi_ppm, local_field_ppm, brain, voxel_size, b0_dir,
                                     total_field_radius_mm, highpassed=(cf, me))
        cone = b0_cone_ratio(cf, me, voxel_size, b0_dir)
    out = {
        "ChiOutlierFraction": chi_outlier_fraction(chi_ppm, m),
        "ChiSpread_ppm": spread, "ChiSpreadHigh_ppm": spread,
        "ForwardResidual": fwd,
        "B0ConeRatio": cone,
        "ChiTailAsymmetry": chi_tail_asymmetry(chi_ppm, m),
        "MaskVolume_ml": vol, "MaskVolumeHigh_ml": vol,
    }
    if affine is not None:
        out["MaskInferiorFraction"] = mask_inferior_fraction(brain, affine)
    if fit_residual_rad is not None:
        out["FieldFitOutlierFraction"] = field_fit_outlier_fraction(fit_residual_rad, brain)
    return {k: round(float(v), 5) for k, v in out.items()}


def _describe(name: str, value: float, limit: Limit, level: str) -> str:
    lim = limit.fail if level == "fail" else limit.warn
    op = ">" if limit.high else "<"
    if name.endswith("Fraction") or name == "ForwardResidual":
        return f"{100 * value:.1f} % {limit.reason} ({level}: {op} {100 * lim:g} %)"
    return f"{name.replace('High', '')} = {value:.4g}: {limit.reason} ({level}: {op} {lim:g})"


def verdict(metrics: dict, limits: dict | None = None) -> dict:
    """Worst level over the metrics present, with one reason per metric beyond its warn limit.

    Returns ``{"Verdict": "pass"|"warn"|"fail", "Reasons": [...], "Metrics": {...}}``; metrics
    without a limit, None or NaN count as pass.

    Parameters
    ----------
    metrics : dict of str to float
        Metric values, e.g. from :func:`qc_metrics`.
    limits : dict of str to Limit, optional
        Limits per metric name; default :data:`LIMITS`.

    Returns
    -------
    dict
        ``Verdict`` (str), ``Reasons`` (list of str), ``Metrics`` (``metrics`` without the
        duplicate ``ChiSpreadHigh_ppm`` and ``*High_ml`` keys).
    """
    limits = LIMITS if limits is None else limits
    rank = {"pass": 0, "warn": 1, "fail": 2}
    worst, reasons = "pass", []
    for name, value in metrics.items():
        if name not in limits:
            continue
        level = limits[name].level(value)
        if level != "pass":
            reasons.append(_describe(name, value, limits[name], level))
            worst = max(worst, level, key=rank.get)
    shown = {k: v for k, v in metrics.items() if not k.endswith("High_ml")
             and k != "ChiSpreadHigh_ppm"}
    return {"Verdict": worst, "Reasons": reasons, "Metrics": shown}


def qc_report(chi_ppm, local_field_ppm, mask, voxel_size, b0_dir, **kw) -> dict:
    """:func:`verdict` of :func:`qc_metrics` (same arguments): the sidecar's ``QC`` entry.

    Parameters
    ----------
    chi_ppm : array_like, shape (X, Y, Z)
        Susceptibility (ppm).
    local_field_ppm : array_like, shape (X, Y, Z)
        Local field (ppm); see :func:`qc_metrics`.
    mask : array_like of bool, shape (X, Y, Z)
        Region of the metric.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    b0_dir : sequence of 3 float
        B0 direction in voxel axes.
    **kw
        Keyword arguments of :func:`qc_metrics`.

    Returns
    -------
    dict
        See :func:`verdict`.

    Raises
    ------
    ValueError
        As :func:`qc_metrics`.
    """
    return verdict(qc_metrics(chi_ppm, local_field_ppm, mask, voxel_size, b0_dir, **kw))

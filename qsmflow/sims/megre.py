"""Multi-echo gradient-echo (MEGRE) simulator and BIDS writer for the head phantom.

Signal model per voxel and echo n (TE_n in s):

    magnitude_n = M0 · exp(−R2* · TE_n)
    phase_n     = φ0 + 2π · f · TE_n + (+β/2 for odd n, −β/2 for even n)     (wrapped to (−π, π])

with f = the total field in Hz (``phantom.total_field_ppm`` → Hz at ``b0_tesla``), φ0 a smooth
transmit/receive phase offset and β = ``bipolar_rad`` (odd − even echo phase difference of a
bipolar readout). Complex Gaussian noise of σ = (mean brain magnitude of echo 1) / ``snr`` is
added to the complex signal, so magnitudes are Rician and phase noise grows as signal decays.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__, physics
from ..bids import bids_path, write_dataset_description, write_participants
from ..io import save_nifti
from .phantom import HeadPhantom, make_head_phantom, make_whole_head_phantom

#: Manufacturer written into the sidecars of simulated data
MANUFACTURER = "qsmflow"
MODEL_NAME = "qsmflow-simulator"
TRUTH_PIPELINE = "qsmflow-truth"

DEFAULT_TE_S = (0.004, 0.008, 0.012, 0.016)


@dataclass
class MEGRE:
    """Simulated multi-echo GRE: ``magnitude`` and ``phase`` (X, Y, Z, E; phase wrapped, rad)."""

    magnitude: np.ndarray
    phase: np.ndarray
    te_s: np.ndarray
    b0_tesla: float
    b0_dir: np.ndarray
    affine: np.ndarray
    voxel_size: tuple
    total_field_hz: np.ndarray
    local_field_ppm: np.ndarray
    phase_offset_rad: np.ndarray
    bipolar_rad: float = 0.0
    noise_sigma: float = 0.0


def smooth_phase_offset(shape, rng) -> np.ndarray:
    """A smooth φ0 map (rad): random constant plus linear and quadratic terms over the FOV.

    Parameters
    ----------
    shape : tuple of int
        Grid size (voxels).
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    ndarray, shape ``shape``
        φ0 (rad, float64, not wrapped): a constant in [−π, π) plus linear (coefficients in
        [−1, 1]) and quadratic ([−0.5, 0.5]) terms in coordinates spanning [−1, 1] per axis.
    """
    g = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij", sparse=True)
    phi = rng.uniform(-np.pi, np.pi) + sum(rng.uniform(-1.0, 1.0) * x for x in g)
    phi = phi + sum(rng.uniform(-0.5, 0.5) * x * x for x in g)
    return np.broadcast_to(phi, shape).astype(float)


#: chemical shift of the main (methylene) fat peak relative to water (ppm)
FAT_SHIFT_PPM = -3.4

#: R2*(B0) / R2*(3 T) of brain tissue, from the T2* of grey and white matter at 1.5, 3 and 7 T
#: of Peters et al., MRI 25:748 (2007): linear interpolation, extrapolated at the ends
_R2STAR_RATIO = ((1.5, 0.8), (3.0, 1.0), (7.0, 2.0))


def r2star_at_field(r2star_3t, b0_tesla):
    """R2* (1/s) at ``b0_tesla`` (T) of tissue whose R2* at 3 T is ``r2star_3t`` (1/s).

    The ratio R2*(B0) / R2*(3 T) is interpolated linearly in B0 between 1.5, 3 and 7 T
    (Peters et al. 2007), extrapolated beyond, and at least 0.1.

    Parameters
    ----------
    r2star_3t : float or array_like
        R2* at 3 T (1/s).
    b0_tesla : float
        Field strength (T).

    Returns
    -------
    ndarray
        R2* at ``b0_tesla`` (1/s), shape of ``r2star_3t``.
    """
    b, r = np.array(_R2STAR_RATIO).T
    b0 = float(b0_tesla)
    i = 0 if b0 < b[1] else 1
    ratio = r[i] + (r[i + 1] - r[i]) * (b0 - b[i]) / (b[i + 1] - b[i])
    return np.asarray(r2star_3t) * max(ratio, 0.1)


def receive_bias(shape, rng, amplitude=0.2):
    """Smooth multiplicative receive-coil sensitivity (mean 1 over the FOV): brighter towards
    the FOV's periphery (a head array) with a random linear tilt; ``amplitude`` ≈ the relative
    change from centre to edge.

    Parameters
    ----------
    shape : tuple of int
        Grid size (voxels).
    rng : numpy.random.Generator
        Random generator (the tilt).
    amplitude : float, default 0.2
        Strength (unitless) of the bias: exp(amplitude·q).

    Returns
    -------
    ndarray, shape ``shape``
        Sensitivity (float32, unitless), mean 1.
    """
    g = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij", sparse=True)
    q = 0.5 * sum(x * x for x in g) + sum(rng.uniform(-0.4, 0.4) * x for x in g)
    b = np.exp(float(amplitude) * q)
    return (b / b.mean()).astype(np.float32)


def simulate_megre(phantom: HeadPhantom, te_s=DEFAULT_TE_S, b0_tesla=3.0, b0_dir=None, snr=100,
                   phase_offset=True, bipolar_rad=0.0, seed=0, dephasing=True, *,
                   scale_r2star=False, fat_shift=False, bias=0.0) -> MEGRE:
    """Simulate MEGRE magnitude and phase of ``phantom`` (see the module docstring).

    ``R2*`` is used as given (the phantom's values are for 3 T) unless ``scale_r2star``.

    Parameters
    ----------
    phantom : HeadPhantom
        The phantom (χ, M0, R2*, masks, affine).
    te_s : sequence of float, default :data:`DEFAULT_TE_S`
        Echo times (s), strictly increasing.
    b0_tesla : float, default 3.0
        Field strength (T).
    b0_dir : sequence of 3 float, optional
        B0 direction in voxel axes; default from ``phantom.affine``.
    snr : float or None, default 100
        Mean brain magnitude of echo 1 / noise σ; None, 0 or inf: no noise.
    phase_offset : bool, default True
        Add a smooth φ0 (:func:`smooth_phase_offset`).
    bipolar_rad : float or ndarray, shape (X, Y, Z), default 0.0
        Odd − even echo phase difference β (rad) of a bipolar readout, scalar or map.
    seed : int or numpy.random.SeedSequence, default 0
        Seed of the noise, φ0 and bias.
    dephasing : bool, default True
        Attenuate the magnitude by intravoxel dephasing in the total field's gradient
        (:func:`dephasing_factor`), as a real scan does near air and bone.
    scale_r2star : bool, default False
        Use R2* at ``b0_tesla`` (:func:`r2star_at_field`) instead of the 3 T values.
    fat_shift : bool, default False
        The fat signal (``phantom.fat_fraction``) precesses at :data:`FAT_SHIFT_PPM` (water–fat
        beating in the phase, as in any real head).
    bias : float, default 0.0
        Amplitude of a smooth receive-coil sensitivity (:func:`receive_bias`) on the magnitude;
        0: none.

    Returns
    -------
    MEGRE
        Magnitude (a.u.) and wrapped phase (rad), float32, shape (X, Y, Z, E), with the true total
        field (Hz), local field (ppm), φ0 (rad) and noise σ (magnitude units).

    Raises
    ------
    ValueError
        Invalid ``te_s``, ``b0_tesla`` or ``b0_dir``; ``bipolar_rad`` neither scalar nor a map of
        the phantom's shape; a negative ``snr``.
    """
    te = physics.check_echo_times(te_s)
    b0 = physics.check_field_strength(b0_tesla)
    b = physics.b0_direction_from_affine(phantom.affine) if b0_dir is None else \
        physics.check_b0_dir(b0_dir)
    rng = np.random.default_rng(seed)
    shape = phantom.shape
    f_hz = physics.ppm_to_hz(phantom.total_field_ppm(b), b0)
    local = phantom.local_field_ppm(b)
    phi0 = smooth_phase_offset(shape, rng) if phase_offset else np.zeros(shape)
    beta = np.asarray(bipolar_rad, dtype=float)
    if beta.ndim not in (0, 3) or (beta.ndim == 3 and beta.shape != shape):
        raise ValueError(f"bipolar_rad must be a scalar or a {shape} map (rad), got shape "
                         f"{beta.shape}")
    mag = np.empty(shape + (te.size,), np.float32)
    pha = np.empty(shape + (te.size,), np.float32)
    grads = dephasing_gradients(f_hz) if dephasing else [np.zeros(shape)]
    r2s = r2star_at_field(phantom.r2star, b0) if scale_r2star else phantom.r2star
    m0 = phantom.m0 * receive_bias(shape, rng, bias) if bias else phantom.m0
    ff = phantom.fat_fraction if fat_shift and phantom.fat_fraction is not None else None
    f_fat = physics.ppm_to_hz(FAT_SHIFT_PPM, b0)

    def water_fat(t):  # complex water + fat signal fraction at TE t (s)
        return 1.0 if ff is None else (1.0 - ff) + ff * np.exp(2j * np.pi * f_fat * t)

    mag1 = m0 * np.exp(-r2s * te[0]) * dephasing_factor(grads, te[0]) * np.abs(water_fat(te[0]))
    brain = phantom.brain_mask if phantom.brain_mask.any() else phantom.head_mask
    sigma = 0.0
    if snr:
        if not snr > 0:
            raise ValueError(f"snr must be positive (mean brain signal / noise σ), got {snr!r}")
        sigma = float(mag1[brain].mean() / snr) if np.isfinite(snr) else 0.0
    for n, t in enumerate(te):
        wf = water_fat(t)
        m = m0 * np.exp(-r2s * t) * dephasing_factor(grads, t) * np.abs(wf)
        p = phi0 + 2.0 * np.pi * f_hz * t + (0.5 if n % 2 == 0 else -0.5) * beta + np.angle(wf)
        if sigma > 0:
            s = m * np.exp(1j * p) + sigma * (rng.standard_normal(shape)
                                              + 1j * rng.standard_normal(shape))
            mag[..., n] = np.abs(s)
            pha[..., n] = np.angle(s)
        else:
            mag[..., n] = m
            pha[..., n] = physics.wrap(p)
    return MEGRE(magnitude=mag, phase=pha, te_s=te, b0_tesla=b0, b0_dir=b, affine=phantom.affine,
                 voxel_size=phantom.voxel_size, total_field_hz=f_hz, local_field_ppm=local,
                 phase_offset_rad=phi0, bipolar_rad=float(beta) if beta.ndim == 0 else beta,
                 noise_sigma=sigma)


def dephasing_gradients(field_hz) -> list:
    """Field change across one voxel (Hz per voxel) along each array axis.

    Parameters
    ----------
    field_hz : array_like, shape (X, Y, Z)
        Field (Hz).

    Returns
    -------
    list of ndarray, shape (X, Y, Z)
        |∂f/∂i| (Hz per voxel, central differences) per array axis.
    """
    return [np.abs(g) for g in np.gradient(np.asarray(field_hz, float))]


def dephasing_factor(grads, te_s) -> np.ndarray:
    """Intravoxel dephasing: signal fraction left at ``te_s`` (s) when the field varies
    linearly across the voxel by ``grads`` (Hz per voxel, per axis), Π sinc(G·TE) — the
    signal loss near air and bone that makes real magnitude masks avoid those voxels.

    Parameters
    ----------
    grads : sequence of ndarray
        Field change across one voxel (Hz per voxel) per axis (:func:`dephasing_gradients`).
    te_s : float
        Echo time (s).

    Returns
    -------
    ndarray, shape of ``grads[0]``
        Π |sinc(G·TE)| (NumPy's normalised sinc), in [0, 1].
    """
    out = np.ones(grads[0].shape)
    for g in grads:
        out *= np.abs(np.sinc(g * te_s))
    return out


def oblique_affine(shape, voxel_size, oblique_deg=0.0) -> np.ndarray:
    """RAS+ affine of ``voxel_size`` (mm) rotated by ``oblique_deg`` about the left–right axis
    (a pitched head / tilted slab), centred on the array centre.

    Parameters
    ----------
    shape : sequence of 3 int
        Grid size (voxels); its centre maps to world 0.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis.
    oblique_deg : float, default 0.0
        Rotation (degrees) about the left–right (x) axis.

    Returns
    -------
    ndarray, shape (4, 4)
        Voxel → world (mm) affine.

    Raises
    ------
    ValueError
        An invalid ``voxel_size``.
    """
    vs = np.asarray(physics.check_voxel_size(voxel_size))
    a = np.deg2rad(float(oblique_deg))
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(vs)
    aff[:3, 3] = -aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return aff


def _listify(x):
    if x is None:
        return [None]
    return [x] if isinstance(x, (str, int)) else list(x)


_README = """# {name}

Simulated multi-echo gradient-echo (MEGRE) data of a numerical head phantom, written by
qsmflow {version} (`qsmflow.sims.megre.write_bids_dataset`). Anatomy: the Zubal segmented head with
procedurally added deep grey nuclei, veins, a calcification and a haemorrhage; susceptibility
in ppm relative to CSF, air +9.4 ppm, bone -2 ppm. Magnitude = M0 exp(-R2* TE) with Rician
noise and intravoxel dephasing, phase = phi0 + 2 pi f TE (radians, wrapped). Field strength {b0} T, echo times {te} s,
voxel size {vs} mm, oblique angle {obl} deg, SNR {snr}, seed {seed}.

Ground truth (susceptibility, total and local field, brain mask, tissue labels) is in
`derivatives/{truth}/`.
"""


def write_bids_dataset(root, subjects=("01",), sessions=None, runs=None, shape=(128, 128, 80),
                       voxel_size=(1.5, 1.5, 1.5), te_s=DEFAULT_TE_S, b0_tesla=3.0, snr=100,
                       oblique_deg=0.0, seed=0, *, bipolar_rad=0.0, phase_offset=True,
                       name="qsmflow simulated MEGRE", whole_head=False, realistic=False,
                       contrast=None) -> Path:
    """Write a BIDS raw dataset of simulated MEGRE plus ground truth; returns ``root``.

    Raw: ``sub-X[/ses-Y]/anat/sub-X[_ses-Y][_run-Z]_echo-N_part-{mag,phase}_MEGRE.nii.gz`` +
    JSON (EchoTime s, MagneticFieldStrength T, Manufacturer, phase ``Units: rad``). Truth:
    ``derivatives/qsmflow-truth/`` with ``desc-truth_Chimap`` (brain χ, ppm, CSF = 0),
    ``desc-wholehead_Chimap`` (χ of the whole FOV), ``desc-brain_mask``, ``desc-truth_dseg``
    (+ ``desc-truth_dseg.tsv`` at the top), ``desc-truth_R2starmap`` in ``anat/``;
    ``fmap/…desc-total_fieldmap`` (Hz) and ``desc-local_fieldmap`` (ppm), each with a
    ``_magnitude`` (noise-free echo 1). Each subject is a different phantom (seed + 101·index);
    sessions and runs of a subject share the anatomy and differ in noise and φ0.

    Parameters
    ----------
    root : str or Path
        Dataset folder (created).
    subjects : str, int or sequence, default ("01",)
        Subject labels (without ``sub-``).
    sessions, runs : str, int, sequence or None, optional
        Session / run labels; None: no ``ses-`` / ``run-`` entity.
    shape : sequence of 3 int, default (128, 128, 80)
        Grid size (voxels); ignored with ``whole_head``.
    voxel_size : sequence of 3 float, default (1.5, 1.5, 1.5)
        Voxel size (mm) per array axis.
    te_s : sequence of float, default :data:`DEFAULT_TE_S`
        Echo times (s).
    b0_tesla : float, default 3.0
        Field strength (T).
    snr : float or None, default 100
        SNR of echo 1 in the brain (:func:`simulate_megre`).
    oblique_deg : float, default 0.0
        Tilt (degrees) of the acquisition about the left–right axis (B0 then oblique in voxel axes).
    seed : int, default 0
        Base seed of phantoms and noise.
    bipolar_rad : float, default 0.0
        Odd − even echo phase difference (rad).
    phase_offset : bool, default True
        Add a smooth φ0.
    name : str, default "qsmflow simulated MEGRE"
        Dataset name (dataset_description.json, README).
    whole_head : bool, default False
        The FOV of :func:`qsmflow.sims.phantom.make_whole_head_phantom` (vertex to neck).
    realistic : bool, default False
        R2* at ``b0_tesla``, fat chemical shift and a receive bias (:func:`realistic_settings`: the
        settings of :func:`simulate_megre` a real scan has).
    contrast : dict, optional
        A :func:`with_contrast` table for the non-brain tissue.

    Returns
    -------
    Path
        ``root``.

    Raises
    ------
    ValueError
        Invalid ``te_s``, ``b0_tesla``, ``voxel_size`` or ``shape``; no subject; or as
        :func:`simulate_megre`.
    """
    root = Path(root)
    te = physics.check_echo_times(te_s)
    b0 = physics.check_field_strength(b0_tesla)
    subjects = [str(s) for s in _listify(subjects)]
    if not subjects or subjects == ["None"]:
        raise ValueError("subjects must name at least one subject, e.g. ('01',)")
    sessions = _listify(sessions)
    runs = _listify(runs)
    truth = root / "derivatives" / TRUTH_PIPELINE
    write_dataset_description(root, name, "raw", Authors=["qsmflow simulator"], generated_by=[
        {"Name": MODEL_NAME, "Version": __version__,
         "Description": "qsmflow.sims.megre.write_bids_dataset"}])
    (root / "README").write_text(_README.format(
        name=name, version=__version__, b0=b0, te=[float(t) for t in te],
        vs=tuple(voxel_size), obl=oblique_deg, snr=snr, seed=seed, truth=TRUTH_PIPELINE))
    write_participants(root, subjects)
    write_dataset_description(truth, f"{name}: ground truth", "derivative", generated_by=[
        {"Name": MODEL_NAME, "Version": __version__}], Authors=["qsmflow simulator"])
    (truth / "README").write_text(
        f"# Ground truth of {name}\n\nTrue susceptibility (ppm, CSF = 0), total (Hz) and local "
        "(ppm) field, brain mask, tissue labels and R2* of the simulated phantom in the parent "
        "dataset.\n")
    _write_dseg_tsv(truth)

    sim_kw = realistic_settings(b0) if realistic else {}
    for si, sub in enumerate(subjects):
        ph = (make_whole_head_phantom(voxel_size, seed=int(seed) + 101 * si) if whole_head
              else make_head_phantom(shape, voxel_size, seed=int(seed) + 101 * si))
        ph = dataclasses.replace(ph, affine=oblique_affine(ph.shape, ph.voxel_size, oblique_deg))
        if contrast:
            ph = with_contrast(ph, contrast)
        b = physics.b0_direction_from_affine(ph.affine)
        for sei, ses in enumerate(sessions):
            for ri, run in enumerate(runs):
                ents = {"sub": sub, "ses": ses, "run": run}
                sim = simulate_megre(ph, te, b0, b, snr=snr, phase_offset=phase_offset,
                                     bipolar_rad=bipolar_rad,
                                     seed=np.random.SeedSequence([int(seed), si, sei, ri]),
                                     **sim_kw)
                _write_raw(root, ents, sim)
                _write_truth(truth, ents, ph, sim)
    return root


def _write_raw(root, ents, sim: MEGRE):
    common = {"MagneticFieldStrength": sim.b0_tesla, "Manufacturer": MANUFACTURER,
              "ManufacturersModelName": MODEL_NAME,
              "ImagingFrequency": physics.GAMMA_BAR_MHZ_PER_T * sim.b0_tesla,
              "MRAcquisitionType": "3D", "PulseSequenceType": "Gradient Echo",
              "RepetitionTime": round(float(sim.te_s[-1]) + 0.01, 6), "FlipAngle": 15}
    for n, t in enumerate(sim.te_s):
        e = {**ents, "echo": n + 1}
        side = {**common, "EchoTime": float(t), "EchoNumber": n + 1}
        save_nifti(bids_path(root, {**e, "part": "mag"}, "MEGRE"), sim.magnitude[..., n],
                   sim.affine, sidecar=side)
        save_nifti(bids_path(root, {**e, "part": "phase"}, "MEGRE"), sim.phase[..., n],
                   sim.affine, sidecar={**side, "Units": "rad"})


def _write_dseg_tsv(truth: Path):
    from .phantom import LABEL_NAMES, TISSUE_PROPERTIES

    lines = ["index\tname\tchi_ppm_nominal\tr2star_hz"]
    lines += [f"{k}\t{v}\t{TISSUE_PROPERTIES[v][0]:g}\t{TISSUE_PROPERTIES[v][3]:g}"
              for k, v in LABEL_NAMES.items()]
    truth.mkdir(parents=True, exist_ok=True)
    (truth / "desc-truth_dseg.tsv").write_text("\n".join(lines) + "\n")


def _write_truth(truth: Path, ents, ph: HeadPhantom, sim: MEGRE):
    src = {"B0_dir": [float(v) for v in sim.b0_dir], "MagneticFieldStrength": sim.b0_tesla}
    items = [
        ({"desc": "truth"}, "Chimap", ph.chi_brain, {
            "Units": "ppm", "Description": "true susceptibility of brain tissue, 0 outside the "
            "brain mask", "SusceptibilityReference": "CSF = 0 ppm"}),
        ({"desc": "wholehead"}, "Chimap", ph.chi, {
            "Units": "ppm", "Description": "true susceptibility of the whole FOV incl. air and "
            "bone (the source of the total field); the medium beyond the FOV is air",
            "SusceptibilityReference": "CSF = 0 ppm", "AirSusceptibility": 9.4}),
        ({"desc": "brain"}, "mask", ph.brain_mask, {"Type": "Brain"}),
        ({"desc": "truth"}, "dseg", ph.labels.astype(np.int16), {
            "Description": "tissue labels, see desc-truth_dseg.tsv"}),
        ({"desc": "truth"}, "R2starmap", ph.r2star, {"Units": "1/s"}),
    ]
    # field maps go to fmap/ beside a magnitude (noise-free echo 1), as BIDS wants
    mag1 = ph.m0 * np.exp(-ph.r2star * sim.te_s[0])
    for desc, data, units, text, stripped in (
            ("total", sim.total_field_hz, "Hz", "total field (background + local)", False),
            ("local", sim.local_field_ppm, "ppm", "true local field: dipole field of "
             "desc-truth_Chimap (ppm of B0)", True)):
        items.append(({"desc": desc}, "fieldmap", data, {"Units": units, "Description": text,
                                                         "SkullStripped": stripped}))
        items.append(({"desc": desc}, "magnitude", mag1, {
            "Description": "noise-free magnitude of echo 1", "EchoTime": float(sim.te_s[0]),
            "SkullStripped": False}))
    for extra, suffix, data, side in items:
        side = {"SkullStripped": extra.get("desc") in ("truth", "brain"), **side, **src}
        dtype = "fmap" if suffix in ("fieldmap", "magnitude") else "anat"
        save_nifti(bids_path(truth, {**ents, **extra}, suffix, datatype=dtype), data, sim.affine,
                   sidecar=side)


def truth_file(bids_dir, subject: str, desc: str, suffix: str, datatype: str = "anat") -> Path:
    """Path of a ground-truth file that :func:`write_bids_dataset` wrote (one session and run).

    Parameters
    ----------
    bids_dir : str or Path
        The simulated raw dataset.
    subject : str
        Subject label without ``sub-``.
    desc, suffix : str
        E.g. ``("truth", "Chimap")`` (brain χ, ppm) or ``("brain", "mask")``.
    datatype : str, default "anat"
        ``"fmap"`` for the fields.

    Returns
    -------
    Path
        ``bids_dir/derivatives/qsmflow-truth/sub-<subject>/<datatype>/...`` (not checked).
    """
    return bids_path(Path(bids_dir) / "derivatives" / TRUTH_PIPELINE,
                     {"sub": subject, "desc": desc}, suffix, datatype=datatype)


def realistic_settings(b0_tesla) -> dict:
    """:func:`simulate_megre` options of a realistic scan at ``b0_tesla`` (T): R2* at that
    field, fat chemical shift, receive bias 0.3 (≤ 3 T) or 0.5 (7 T: stronger B1 effects).

    Parameters
    ----------
    b0_tesla : float
        Field strength (T).

    Returns
    -------
    dict
        Keyword arguments ``scale_r2star``, ``fat_shift`` and ``bias`` of :func:`simulate_megre`.
    """
    return {"scale_r2star": True, "fat_shift": True,
            "bias": 0.3 if float(b0_tesla) <= 3.0 else 0.5}


#: echo times (s) of the whole-head cases per field strength (T)
_TE_S = {1.5: (0.005, 0.012, 0.019, 0.026, 0.033), 3.0: (0.004, 0.009, 0.014, 0.019, 0.024),
         7.0: (0.003, 0.006, 0.009, 0.012, 0.015)}


def _case(voxel_size, b0_tesla, oblique_deg=0.0) -> dict:
    return {"voxel_size": voxel_size, "b0_tesla": b0_tesla, "te_s": _TE_S[b0_tesla],
            "oblique_deg": oblique_deg}


#: the whole-head test and benchmark cases: :func:`write_bids_dataset` / :func:`simulate_case`
#: settings (voxel size mm, B0 T, echo times s, oblique angle deg about left–right)
WHOLE_HEAD_CASES = {
    "3T-1mm": _case((1.0, 1.0, 1.0), 3.0),
    "7T-1mm": _case((1.0, 1.0, 1.0), 7.0),
    "1.5T-1mm": _case((1.0, 1.0, 1.0), 1.5),
    "3T-0.75x0.75x2mm": _case((0.75, 0.75, 2.0), 3.0),
    "3T-0.76x0.76x3mm": _case((0.76, 0.76, 3.0), 3.0),
    "3T-1mm-oblique18": _case((1.0, 1.0, 1.0), 3.0, 18.0),
}


#: M0 (a.u.) and R2* (1/s at 3 T) that make non-brain tissue look like brain on magnitude and
#: R2* (the hard case for a brain mask): soft tissue, muscle, cord and fat of the head and neck
BRAIN_LIKE_CONTRAST = {"soft_tissue": (0.85, 18.0), "muscle": (0.8, 20.0),
                       "spinal_cord": (0.8, 20.0), "fat": (1.0, 15.0)}


def with_contrast(phantom: HeadPhantom, contrast: dict) -> HeadPhantom:
    """A copy of ``phantom`` whose non-brain voxels of the named tissues get new
    ``(M0, R2* at 3 T)`` (e.g. :data:`BRAIN_LIKE_CONTRAST`); χ is unchanged.

    Parameters
    ----------
    phantom : HeadPhantom
        The phantom (not modified).
    contrast : dict
        ``{tissue name: (M0 (a.u.), R2* (1/s, 3 T))}``, names from
        :data:`qsmflow.sims.phantom.LABEL_NAMES`.

    Returns
    -------
    HeadPhantom
        The modified copy.

    Raises
    ------
    KeyError
        An unknown tissue name.
    """
    from .phantom import LABEL_NAMES

    ids = {v: k for k, v in LABEL_NAMES.items()}
    m0, r2 = phantom.m0.copy(), phantom.r2star.copy()
    for name, (m, r) in contrast.items():
        sel = (phantom.labels == ids[name]) & ~phantom.brain_mask
        m0[sel], r2[sel] = m, r
    return dataclasses.replace(phantom, m0=m0, r2star=r2)


def simulate_case(case, seed=0, snr=80, coarsen=1.0, contrast=None):
    """``(phantom, MEGRE)`` of a :data:`WHOLE_HEAD_CASES` entry, realistic settings, with the
    voxel size multiplied by ``coarsen`` (e.g. 2 for fast tests).

    Parameters
    ----------
    case : str
        A key of :data:`WHOLE_HEAD_CASES` (voxel size mm, B0 T, echo times s, oblique angle deg).
    seed : int, default 0
        Seed of phantom and noise.
    snr : float, default 80
        SNR of echo 1 in the brain (:func:`simulate_megre`).
    coarsen : float, default 1.0
        Factor on the case's voxel size.
    contrast : dict, optional
        A :func:`with_contrast` table (e.g. :data:`BRAIN_LIKE_CONTRAST`).

    Returns
    -------
    phantom : HeadPhantom
        The whole-head phantom, with the case's oblique affine.
    sim : MEGRE
        The simulated acquisition.

    Raises
    ------
    KeyError
        An unknown ``case``.
    """
    c = WHOLE_HEAD_CASES[case]
    vs = tuple(float(coarsen) * v for v in c["voxel_size"])
    ph = make_whole_head_phantom(vs, seed=seed)
    ph = dataclasses.replace(ph, affine=oblique_affine(ph.shape, vs, c["oblique_deg"]))
    if contrast:
        ph = with_contrast(ph, contrast)
    sim = simulate_megre(ph, c["te_s"], c["b0_tesla"], snr=snr, seed=seed,
                         **realistic_settings(c["b0_tesla"]))
    return ph, sim


def make_demo_dataset(root, n_subjects=2, seed=0) -> Path:
    """A small demo BIDS dataset (3 mm, 68×84×64 voxels covering the head, 4 echoes, 3 T,
    SNR 100, B0 along the third array axis) with ground truth; a few seconds per subject.

    Not oblique: on a 3 mm grid an oblique B0 makes the simulated field of the 9.4 ppm air edges
    ring at the grid frequency, a simulation artefact that costs ~20 points of χ NRMSE; oblique
    data are simulated with ``write_bids_dataset``.

    Parameters
    ----------
    root : str or Path
        Dataset folder (created).
    n_subjects : int, default 2
        Number of subjects (``sub-01``, ``sub-02``, ...), ≥ 1.
    seed : int, default 0
        Base seed.

    Returns
    -------
    Path
        ``root``.

    Raises
    ------
    ValueError
        ``n_subjects`` < 1.
    """
    n = int(n_subjects)
    if n < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects!r}")
    return write_bids_dataset(root, subjects=[f"{i + 1:02d}" for i in range(n)],
                              shape=(68, 84, 64), voxel_size=(3.0, 3.0, 3.0), te_s=DEFAULT_TE_S,
                              b0_tesla=3.0, snr=100, oblique_deg=0.0, seed=seed,
                              name="qsmflow demo")
